"""facerec data: subject folders, gallery/probe protocol, VLR degradation, P x K batches, synthetic faces."""

import json
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
import threadpoolctl

from common import data as common_data
from facerec import data, synthetic
from tests.conftest import REPO, subprocess_env

S = 32  # image size of the hand-built folders: small keeps the tests fast


def _write(path, size=(S, S), mode="RGB", value=None, seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
  arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8) if value is None else \
      np.full((size[1], size[0], channels), value, np.uint8)
  Image.fromarray(arr[..., 0] if mode == "L" else arr).save(path)  # PIL infers L / RGB / RGBA from the shape
  return arr


def _folder(root, counts: dict, ext=".png"):
  """root/<subject>/<k>.png for {subject: count}; files created in reverse order (sorting must not rely on it)."""
  for s, n in counts.items():
    for k in reversed(range(n)):
      _write(os.path.join(root, s, f"{k:02d}{ext}"), seed=hash((s, k)) % 1000)
  return str(root)


@pytest.fixture
def warnings_log(caplog):
  caplog.set_level(logging.WARNING)
  return lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------------------------
# SubjectFolder
# ----------------------------------------------------------------------------------------------
def test_subject_folder_labels_sorting_and_rgb(tmp_path):
  root = tmp_path / "faces"
  _folder(root, {"bob": 3, "al": 2})
  _write(root / "cy" / "b.PNG", mode="L", value=100)
  rgba = _write(root / "cy" / "a.png", mode="RGBA")
  Image.fromarray(np.full((S, S, 3), 50, np.uint8)).save(root / "cy" / "c.JPEG")
  (root / "cy" / "notes.txt").write_text("not an image")
  (root / ".cache").mkdir()
  _write(root / ".cache" / "x.png")  # hidden folders are not subjects

  src = data.SubjectFolder(str(root), image_size=S)
  assert src.subjects == ["al", "bob", "cy"]
  names = [os.path.relpath(f, root) for f in src.files]
  assert names == ["al/00.png", "al/01.png", "bob/00.png", "bob/01.png", "bob/02.png",
                   "cy/a.png", "cy/b.PNG", "cy/c.JPEG"]
  np.testing.assert_array_equal(src.labels, [0, 0, 1, 1, 1, 2, 2, 2])
  assert src.labels.dtype == np.int32 and len(src) == 8
  np.testing.assert_array_equal(src.subject_indices(1), [2, 3, 4])

  el = src[5]
  assert el["image"].shape == (S, S, 3) and el["image"].dtype == np.float32
  assert el["label"] == 2 and el["label"].dtype == np.int32 and el["index"] == 5 and el["index"].dtype == np.int32
  np.testing.assert_allclose(el["image"], rgba[..., :3] / 255, atol=1e-6)  # alpha dropped
  np.testing.assert_allclose(src[6]["image"], np.full((S, S, 3), 100 / 255), atol=1e-6)  # grey -> 3 equal channels
  assert abs(src[7]["image"].mean() - 50 / 255) < 0.02  # jpeg, lossy
  assert 0 <= src[0]["image"].min() and src[0]["image"].max() <= 1

  assert repr(src) == "SubjectFolder(faces, subjects=3, images=8, image_size=32, resize=False)"
  assert repr(data.SubjectFolder(str(root), image_size=S)) == repr(src)  # stable: grain compares it on restore
  again = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(again[3]["image"], src[3]["image"])


def test_subject_folder_missing_and_empty(tmp_path, warnings_log):
  with pytest.raises(data.DataError, match=r"nowhere: no such folder"):
    data.SubjectFolder(str(tmp_path / "nowhere"))
  (tmp_path / "flat").mkdir()
  _write(tmp_path / "flat" / "loose.png")
  with pytest.raises(data.DataError, match=r"no subject folders; expected .*/<subject_id>/"):
    data.SubjectFolder(str(tmp_path / "flat"), image_size=S)
  for s in ("a", "b"):
    (tmp_path / "empty" / s).mkdir(parents=True)
  with pytest.raises(data.DataError, match=r"none of its 2 subject folders holds \.png/\.jpg/\.jpeg images"):
    data.SubjectFolder(str(tmp_path / "empty"), image_size=S)

  _folder(tmp_path / "some", {"a": 2, "c": 1})
  (tmp_path / "some" / "b").mkdir()
  src = data.SubjectFolder(str(tmp_path / "some"), image_size=S)
  assert src.subjects == ["a", "c"] and len(src) == 3
  (msg,) = warnings_log()
  assert "skipping 1 subject folder(s) with no .png/.jpg/.jpeg images: b" in msg


def test_subject_folder_corrupt_files(tmp_path, warnings_log):
  root = _folder(tmp_path / "f", {"a": 10, "b": 10})
  (tmp_path / "f" / "a" / "zz_empty.png").write_bytes(b"")
  with open(tmp_path / "f" / "b" / "03.png", "r+b") as f:  # truncate: the PNG chunk structure breaks
    f.truncate(200)
  with pytest.raises(data.DataError, match=r"2 of 21 images are unreadable \(more than max_bad_fraction=0.01\): "
                                           r".*zz_empty\.png .*b/03\.png .*raise max_bad_fraction"):
    data.SubjectFolder(root, image_size=S)

  src = data.SubjectFolder(root, image_size=S, max_bad_fraction=0.1)
  assert len(src) == 19 and src.subjects == ["a", "b"]
  assert not any(f.endswith(("zz_empty.png", "b/03.png")) for f in src.files)
  (msg,) = warnings_log()
  assert "dropping 2 unreadable image(s) of 21" in msg and "zz_empty.png" in msg

  # A file that breaks after the check (or whose body is corrupt past the header) fails by name on read.
  (tmp_path / "f" / "a" / "00.png").write_bytes(b"garbage")
  with pytest.raises(data.DataError, match=r"a/00\.png: cannot decode .*re-export or delete this file"):
    src[0]


def test_subject_folder_wrong_size_and_resize(tmp_path):
  root = _folder(tmp_path / "f", {"a": 2})
  _write(tmp_path / "f" / "a" / "big.png", size=(64, 48))
  with pytest.raises(data.DataError, match=r"a/big\.png is 64x48, not 32x32 \(1 of 3 images are off-size\); "
                                           r"align/resize faces to 32x32, or pass resize=True"):
    data.SubjectFolder(root, image_size=S)
  with pytest.raises(data.DataError, match=r"not 112x112 .*align/resize faces to 112x112, or pass resize=True"):
    data.SubjectFolder(root)
  src = data.SubjectFolder(root, image_size=S, resize=True)
  big = src[src.files.index(os.path.join(root, "a", "big.png"))]["image"]
  assert big.shape == (S, S, 3) and big.dtype == np.float32 and 0 <= big.min() and big.max() <= 1


# ----------------------------------------------------------------------------------------------
# Protocol: gallery / probes, subject overlap
# ----------------------------------------------------------------------------------------------
def test_gallery_probe_split_known_answer(tmp_path, warnings_log):
  root = _folder(tmp_path / "val", {"s1": 5, "s2": 4, "s3": 3, "s4": 1, "s5": 6})
  src = data.SubjectFolder(root, image_size=S)
  gallery, probes = data.gallery_probe_split(src)
  name = lambda i: os.path.relpath(src.files[i], root)  # pylint: disable=unnecessary-lambda-assignment
  assert [name(i) for i in gallery] == ["s1/00.png", "s1/01.png", "s1/02.png", "s2/00.png", "s2/01.png", "s2/02.png",
                                        "s5/00.png", "s5/01.png", "s5/02.png"]
  assert [name(i) for i in probes] == ["s1/03.png", "s1/04.png", "s2/03.png", "s5/03.png", "s5/04.png", "s5/05.png"]
  (msg,) = warnings_log()  # ONE warning for all skipped subjects
  assert "2 of 5 subjects have fewer than 4 images" in msg and "s3 (3), s4 (1)" in msg

  gallery1, probes1 = data.gallery_probe_split(src, gallery_per_subject=1)
  assert len(gallery1) == 5 - 1 and len(probes1) == 5 + 4 + 3 + 6 - 4  # s4 (1 image) skipped
  with pytest.raises(data.DataError, match=r"no subject has more than 6 images, .*lower gallery_per_subject"):
    data.gallery_probe_split(src, gallery_per_subject=6)

  # Probes read through a Subset keep their own index, so the deterministic VLR does not depend on the view.
  sub = data.Subset(src, probes, "probes")
  assert len(sub) == 6 and sub[1]["index"] == probes[1]
  add = data.AddVLRDeterministic(seed=3)
  np.testing.assert_array_equal(add.map(sub[1])["vlr"], add.map(src[int(probes[1])])["vlr"])
  assert "probes" in repr(sub) and pickle.loads(pickle.dumps(sub))[0]["index"] == probes[0]


def test_subject_overlap(tmp_path):
  g = _folder(tmp_path / "train", {"a": 1, "b": 1, "c": 1, "d": 1})
  p = _folder(tmp_path / "val", {"b": 1, "c": 1, "e": 1})
  (tmp_path / "val" / "f").mkdir()  # no images: not a subject
  out = data.subject_overlap(g, p)
  assert out == {"gallery": 4, "probe": 3, "both": 2, "only_gallery": 2, "only_probe": 1,
                 "only_gallery_names": ["a", "d"], "only_probe_names": ["e"], "overlap": 2 / 3}
  assert data.subject_overlap(data.SubjectFolder(g, image_size=S), p) == out
  other = _folder(tmp_path / "other", {"x": 1})
  with pytest.raises(data.DataError, match=r"share no subject id; name each subject's folder the same in both"):
    data.subject_overlap(g, other)
  with pytest.raises(data.DataError, match="no such folder"):
    data.subject_overlap(g, str(tmp_path / "missing"))


# ----------------------------------------------------------------------------------------------
# Degradation
# ----------------------------------------------------------------------------------------------
def test_degradation_shapes_ranges_determinism():
  hr = np.random.default_rng(0).random((112, 112, 3)).astype(np.float32)
  for down in ("area", "bicubic"):
    deg = data.Degradation(down=down)
    vlr = deg(hr, np.random.default_rng(1))
    assert vlr.shape == (16, 16, 3) and vlr.dtype == np.float32 and 0 <= vlr.min() and vlr.max() <= 1
    np.testing.assert_array_equal(vlr, deg(hr, np.random.default_rng(1)))
    assert not np.array_equal(vlr, deg(hr, np.random.default_rng(2)))
    flat = data.Degradation(down=down, noise_std=0.0)(np.full((112, 112, 3), 0.3, np.float32), np.random.default_rng(0))
    np.testing.assert_allclose(flat, 0.3, atol=1e-6)  # blur and resampling weights sum to one, borders included
  # Known answer: no blur, no noise, 112 -> 16 area = the mean of each 7x7 block.
  exact = data.Degradation(blur_sigma=0.0, noise_std=0.0)(hr, np.random.default_rng(0))
  np.testing.assert_allclose(exact, hr.reshape(16, 7, 16, 7, 3).mean((1, 3)), atol=1e-6)
  cubic = data.Degradation(blur_sigma=0.0, noise_std=0.0, down="bicubic")(hr, np.random.default_rng(0))
  pil = np.stack([np.asarray(Image.fromarray(hr[..., c]).resize((16, 16), Image.BICUBIC)) for c in range(3)], -1)
  np.testing.assert_allclose(cubic, np.clip(pil, 0, 1), atol=1e-5)
  assert data.Degradation(vlr_size=14)(hr, np.random.default_rng(0)).shape == (14, 14, 3)
  assert data.Degradation(vlr_size=20)(hr[:, :100], np.random.default_rng(0)).shape == (20, 20, 3)
  # More blur removes more detail.
  sharp = data.Degradation(vlr_size=56, blur_sigma=0.0, noise_std=0.0)(hr, np.random.default_rng(0))
  soft = data.Degradation(vlr_size=56, blur_sigma=1.5, noise_std=0.0)(hr, np.random.default_rng(0))
  assert soft.std() < 0.8 * sharp.std()
  for bad in (dict(down="nearest"), dict(blur_sigma=(2.0, 1.0)), dict(noise_std=-0.1)):
    with pytest.raises(ValueError, match="Degradation"):
      data.Degradation(**bad)
  with pytest.raises(ValueError, match="would up-sample"):
    data.Degradation()(hr[:8, :8], np.random.default_rng(0))


def test_add_vlr_transforms_and_upsample():
  rng = np.random.default_rng(0)
  el = {"image": rng.random((112, 112, 3)).astype(np.float32), "label": np.int32(1), "index": np.int32(7)}
  out = data.AddVLR().random_map(el, np.random.default_rng(5))
  assert out["vlr"].shape == (16, 16, 3) and out["image"] is el["image"] and out["label"] == 1
  det = data.AddVLRDeterministic(seed=0)
  a, b = det.map(el)["vlr"], det.map(dict(el))["vlr"]
  np.testing.assert_array_equal(a, b)  # same (seed, index) -> same probe, every run and model
  assert not np.array_equal(a, det.map({**el, "index": np.int32(8)})["vlr"])
  assert not np.array_equal(a, data.AddVLRDeterministic(seed=1).map(el)["vlr"])
  with pytest.raises(KeyError, match="add an 'index' field"):
    det.map({"image": el["image"]})
  for t in (data.AddVLR(), det, data.Degradation(down="bicubic")):
    assert pickle.loads(pickle.dumps(t)).__dict__ == t.__dict__

  up = data.upsample_bicubic(np.stack([a, b]))
  assert up.shape == (2, 112, 112, 3) and float(up.min()) >= 0 and float(up.max()) <= 1
  np.testing.assert_allclose(np.asarray(data.upsample_bicubic(np.full((16, 16, 3), 0.4, np.float32))), 0.4,
                             atol=1e-5)
  assert data.upsample_bicubic(a[None], size=64).shape == (1, 64, 64, 3)


def test_deterministic_vlr_through_eval_batches(tmp_path):
  src = data.SubjectFolder(_folder(tmp_path / "f", {"a": 3, "b": 3}), image_size=S)
  deg = data.Degradation(vlr_size=8)
  vlrs = []
  for batch in (2, 4):
    it = common_data.eval_batches(src, global_batch=batch, local_batch=batch,
                                  transforms=[data.AddVLRDeterministic(deg, seed=0)])
    got = [(i, v) for b in it for i, v, m in zip(b["index"], b["vlr"], b["mask"]) if m]
    vlrs.append(np.stack([v for _, v in sorted(got, key=lambda x: int(x[0]))]))
  np.testing.assert_array_equal(vlrs[0], vlrs[1])


# ----------------------------------------------------------------------------------------------
# P x K order
# ----------------------------------------------------------------------------------------------
def _check_blocks(pk, idx, labels, counts):
  b, k = pk.batch_size, pk.images_per_subject
  assert len(idx) % len(pk) == 0 and len(pk) % b == 0
  for block in idx.reshape(-1, b):
    groups = block.reshape(-1, k)  # subject-major: K consecutive images of one subject
    subj = labels[groups]
    assert (subj == subj[:, :1]).all()
    assert len(np.unique(subj[:, 0])) == b // k  # P distinct subjects
    for g, s in zip(groups, subj[:, 0]):
      if counts[s] >= k:
        assert len(set(g)) == k  # without replacement
      else:
        assert set(g) == set(np.flatnonzero(labels == s))  # every image, plus repeats


def test_pk_order_invariants():
  counts = np.array([6, 4, 4, 9, 2, 5, 1, 7, 4, 3])  # subjects 4, 6, 9 have fewer than K = 4 images
  labels = np.repeat(np.arange(10), counts).astype(np.int32)
  pk = data.PKOrder(labels, batch_size=16, images_per_subject=4)
  assert len(pk) == len(labels) // 16 * 16 == 32 and pk.subjects_per_batch == 4
  e0 = pk.indices(0, seed=0)
  _check_blocks(pk, e0, labels, counts)
  np.testing.assert_array_equal(e0, pk.indices(0, seed=0))  # deterministic in (epoch, seed)
  assert not np.array_equal(e0, pk.indices(1, seed=0)) and not np.array_equal(e0, pk.indices(0, seed=1))
  seen = np.concatenate([pk.indices(e, 0) for e in range(4)])
  _check_blocks(pk, seen, labels, counts)
  assert set(labels[seen]) == set(range(10))
  # Subjects and their images are dealt in rounds: with 8 subjects x 4 images and 2 batches of 4 x 4, one
  # epoch is a permutation of the data set.
  even = data.PKOrder(np.repeat(np.arange(8), 4), batch_size=16, images_per_subject=4)
  np.testing.assert_array_equal(np.sort(even.indices(5, 0)), np.arange(32))
  assert "batch_size=16" in repr(pk) and np.array_equal(pickle.loads(pickle.dumps(pk)).indices(2, 3), pk.indices(2, 3))

  # A data set smaller than one batch still gives one batch per epoch; K = 1 is plain distinct-subject batches.
  small = data.PKOrder(np.arange(4), batch_size=8, images_per_subject=2)
  assert len(small) == 8 and len(set(small.indices(0, 0).reshape(4, 2)[:, 0])) == 4
  assert len(set(data.PKOrder(labels, 8, 1).indices(0, 0)[:8])) == 8

  with pytest.raises(data.DataError, match=r"batch_size 18 is not a multiple of images_per_subject 4"):
    data.PKOrder(labels, batch_size=18, images_per_subject=4)
  with pytest.raises(data.DataError, match=r"10 subjects, fewer than the P = 11 .*lower batch_size"):
    data.PKOrder(labels, batch_size=44, images_per_subject=4)


def test_pk_order_drives_train_iterator(tmp_path):
  src = data.SubjectFolder(_folder(tmp_path / "f", {f"s{i}": 2 + i % 3 for i in range(6)}), image_size=S)
  pk = data.PKOrder(src.labels, batch_size=8, images_per_subject=2)
  it = common_data.train_iterator(src, local_batch=8, order=pk, seed=0,
                                  transforms=[data.AddVLR(data.Degradation(vlr_size=8))])
  for _ in range(3):
    batch = next(it)
    assert batch["vlr"].shape == (8, 8, 8, 3)
    pairs = batch["label"].reshape(4, 2)
    assert (pairs[:, 0] == pairs[:, 1]).all() and len(set(pairs[:, 0])) == 4


# ----------------------------------------------------------------------------------------------
# Synthetic faces
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synth") / "faces")
  meta = synthetic.write_dataset(out, subjects=30, images=6, test_subjects=3, seed=0)
  return out, meta


def test_synthetic_layout(synth):
  out, meta = synth
  assert sorted(os.listdir(out)) == ["dataset.json", "test", "train", "val"]
  with open(os.path.join(out, "dataset.json")) as f:
    saved = json.load(f)
  assert saved["subjects"] == 30 and saved["images"] == 6 and saved["eval_images"] == 6 and saved["seed"] == 0
  assert saved["splits"]["test"] == {"subjects": 3, "images_per_subject": 6}
  train, val, test = (data.SubjectFolder(os.path.join(out, s)) for s in ("train", "val", "test"))
  assert train.subjects == val.subjects and len(train.subjects) == 30 and not set(test.subjects) & set(train.subjects)
  assert len(train) == 180 and len(val) == 180 and len(test) == 18
  assert data.subject_overlap(os.path.join(out, "train"), os.path.join(out, "val"))["overlap"] == 1.0
  gallery, probes = data.gallery_probe_split(val)
  assert len(gallery) == 90 and len(probes) == 90
  assert not np.array_equal(train[0]["image"], val[0]["image"])  # same subject, different image
  assert not os.path.exists(out + ".partial")
  with pytest.raises(FileExistsError, match="not empty"):
    synthetic.write_dataset(out, subjects=2)
  with pytest.raises(ValueError, match="gallery of 3 plus at least 1 probe"):
    synthetic.write_dataset(out + "_x", eval_images=3)


def test_synthetic_determinism():
  a = synthetic.generate(range(4), 2, 48, seed=0, split="val")
  assert a.shape == (4, 2, 48, 48, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, synthetic.generate(range(4), 2, 48, seed=0, split="val"))
  np.testing.assert_array_equal(a[2:3], synthetic.generate([2], 2, 48, seed=0, split="val"))  # per-subject streams
  assert not np.array_equal(a, synthetic.generate(range(4), 2, 48, seed=1, split="val"))
  assert not np.array_equal(a, synthetic.generate(range(4), 2, 48, seed=0, split="train"))


def _features(images):
  """Simple identity features: local power spectrum in polar bins (fine, pose-tolerant) + 8x8 colour means."""
  n = len(images)
  g = images.mean(-1)[:, 24:88, 24:88]
  g = (g - g.mean((1, 2), keepdims=True)) * np.outer(np.hanning(64), np.hanning(64))
  power = np.abs(np.fft.fftshift(np.fft.fft2(g), axes=(1, 2))) ** 2
  f = np.fft.fftshift(np.fft.fftfreq(64))
  fy, fx = np.meshgrid(f, f, indexing="ij")
  radius = np.minimum((np.hypot(fx, fy) / 0.5 * 8).astype(int), 7)
  angle = np.minimum((np.mod(np.arctan2(fy, fx), np.pi) / np.pi * 12).astype(int), 11)
  bins = (radius * 12 + angle).ravel()
  spectrum = np.stack([np.bincount(bins, weights=p.ravel(), minlength=96) for p in power])
  coarse = images.reshape(n, 8, 14, 8, 14, 3).mean((2, 4)).reshape(n, -1)
  return np.concatenate([np.log(spectrum + 1e-6), coarse], 1)


def _identification(train_x, train_y, test_x, test_y):
  scaler = StandardScaler().fit(train_x)
  with threadpoolctl.threadpool_limits(1):  # multi-threaded BLAS on a busy test machine: 30x slower
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(train_x), train_y)
  return clf.score(scaler.transform(test_x), test_y)


def test_synthetic_identity_signal_is_fine_detail(synth):
  """Identify val images of the train subjects: easy at 112 px, much harder after 16 px VLR and back.

  Measured (30 subjects, 6 train / 6 val images each, logistic regression): 0.87 at 112 px, 0.39 at 16 px,
  chance 0.033.
  """
  out, _ = synth
  train, val = data.SubjectFolder(os.path.join(out, "train")), data.SubjectFolder(os.path.join(out, "val"))
  hr_train, hr_val = (np.stack([src[i]["image"] for i in range(len(src))]) for src in (train, val))
  degrade = data.AddVLRDeterministic(seed=0)

  def vlr(images):
    small = np.stack([degrade.map({"image": im, "index": i})["vlr"] for i, im in enumerate(images)])
    return np.asarray(data.upsample_bicubic(small))

  acc_hr = _identification(_features(hr_train), train.labels, _features(hr_val), val.labels)
  acc_vlr = _identification(_features(vlr(hr_train)), train.labels, _features(vlr(hr_val)), val.labels)
  chance = 1 / len(train.subjects)
  print(f"identification: 112 px {acc_hr:.3f}, 16 px {acc_vlr:.3f}, chance {chance:.3f}")
  assert acc_hr >= 0.8
  assert acc_vlr <= acc_hr - 0.3
  assert acc_vlr >= 3 * chance  # coarse identity is still there, only confusable
  assert chance < 0.05


def test_synthetic_cli(tmp_path):
  out = tmp_path / "cli"
  args = [sys.executable, "-m", "facerec.synthetic", "--out", str(out), "--subjects", "3", "--images", "2",
          "--test_subjects", "2", "--size", "32", "--seed", "1"]
  res = subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, check=True)
  assert "wrote 3 subjects" in res.stdout
  assert sorted(os.listdir(out / "train")) == ["0000", "0001", "0002"]
  assert sorted(os.listdir(out / "test")) == ["0003", "0004"]
  assert sorted(os.listdir(out / "train" / "0001")) == ["000.png", "001.png"]
  assert len(os.listdir(out / "val" / "0001")) == 5  # gallery 3 + 2 probes
  assert Image.open(out / "val" / "0001" / "004.png").size == (32, 32)
  again = subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
  assert again.returncode != 0 and "exists and is not empty" in again.stderr
