"""ArrayRecord copies of the folder / .npy data sets: same items as the original sources, clear errors on damage."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from common import data as common_data
from common import records
from distill import data as distill_data
from distill import prepare_data as distill_prep
from distill import synthetic as distill_synth
from ear_teacher import data as ear_data
from ear_teacher import prepare_data as ear_prep
from ear_teacher import synthetic as ear_synth
from facerec import data as face_data
from facerec import prepare_data as face_prep
from facerec import synthetic as face_synth
from tests.conftest import REPO, subprocess_env


def _same_items(a, b, keys):
  assert len(a) == len(b) and len(a) > 0
  for i in range(len(a)):
    x, y = a[i], b[i]
    assert sorted(x) == sorted(y) == sorted(keys), (sorted(x), sorted(y))
    assert x["image"].dtype == y["image"].dtype == np.float32
    np.testing.assert_array_equal(x["image"], y["image"])
    for k in keys:
      if k != "image":
        assert x[k] == y[k] and type(x[k]) is type(y[k]), (i, k, x[k], y[k])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  """Small synthetic data sets of all three subsystems, and their record copies (made through the CLIs)."""
  base = tmp_path_factory.mktemp("prep")
  ear_synth.main(["--out", str(base / "ear"), "--num_identities", "4", "--images_per_identity", "4",
                  "--val_identities", "2", "--size", "24"])
  distill_synth.write_dataset(str(base / "dist"), size=24, counts=dict(train=16, val=8, test=8))
  face_synth.write_dataset(str(base / "face"), subjects=6, images=5, test_subjects=2, size=32)
  distill_prep.main(["--src", str(base / "dist"), "--dst", str(base / "dist_rec")])
  face_prep.main(["--src", str(base / "face" / "val"), "--dst", str(base / "face_rec"), "--image_size", "32",
                  "--num_shards", "3"])
  return base


# ----------------------------------------------------------------------------------------------
# Same items as the original sources
# ----------------------------------------------------------------------------------------------
def test_ear_records_match_npy_source(synth, tmp_path):
  # The real entry point once (python -m); ids are picked up from train_ids.npy next to the images.
  dst = tmp_path / "ear_rec"
  r = subprocess.run([sys.executable, "-m", "ear_teacher.prepare_data", "--src", str(synth / "ear" / "train.npy"),
                      "--dst", str(dst)], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and "with ids from" in r.stdout, r.stderr[-2000:]
  npy = ear_data.NpyImageSource(synth / "ear" / "train.npy", synth / "ear" / "train_ids.npy")
  rec = ear_prep.open_records(dst)
  _same_items(npy, rec, ["image", "index", "id"])
  np.testing.assert_array_equal(rec.ids, npy.ids)
  assert rec.ids.dtype == np.int64 and rec.shape == npy.shape
  assert "tensorflow" not in sys.modules

  # Greyscale (N, H, W) stays one channel on disk and reads back as NpyImageSource's 3 channels; float [0, 1]
  # data is stored as round(x * 255).
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
  np.save(tmp_path / "grey.npy", grey)
  ear_prep.prepare(tmp_path / "grey.npy", tmp_path / "grey_rec")
  assert records.RecordSource(tmp_path / "grey_rec").image_shape == (6, 7, 1)
  _same_items(ear_data.NpyImageSource(tmp_path / "grey.npy"), ear_prep.open_records(tmp_path / "grey_rec"),
              ["image", "index"])
  floats = rng.random((3, 4, 4, 3)).astype(np.float32)
  np.save(tmp_path / "float.npy", floats)
  ear_prep.prepare(tmp_path / "float.npy", tmp_path / "float_rec")
  got = np.stack([x["image"] for x in ear_prep.open_records(tmp_path / "float_rec")])
  np.testing.assert_array_equal(got, np.rint(floats.astype(np.float64) * 255).astype(np.float32) / 255)


def test_distill_records_match_folders(synth):
  root, rec = str(synth / "dist"), str(synth / "dist_rec")
  for split in ("train", "val", "test"):
    folders = distill_data.split_sources(root, split)
    recs = distill_prep.split_sources_records(rec, split)
    assert list(folders) == list(recs)  # subset names and order
    for name in folders:
      _same_items(folders[name], recs[name], ["image", "label", "index"])
      assert recs[name].files == [os.path.relpath(f, root) for f in folders[name].files]
    whole, whole_rec = distill_data.split_source(root, split), distill_prep.split_source_records(rec, split)
    _same_items(whole, whole_rec, ["image", "label", "index"])
    np.testing.assert_array_equal(whole.labels, whole_rec.labels)
    assert (whole.num_real, whole.num_fake) == (whole_rec.num_real, whole_rec.num_fake)
  assert list(distill_prep.split_sources_records(rec, "test")) == ["seen_generators", "unseen_generator"]
  with pytest.raises(distill_data.DataError, match=r"split 'nope' not found"):
    distill_prep.split_source_records(rec, "nope")


def test_distill_mixed_sizes_are_resized_as_pil_resize(tmp_path):
  rng = np.random.default_rng(1)
  for k, (cls, size) in enumerate([("0_real", (20, 12)), ("0_real", (9, 9)), ("1_fake", (16, 30)),
                                    ("1_fake", (9, 9))]):
    os.makedirs(tmp_path / "src" / "val" / cls, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(tmp_path / "src" / "val" / cls / f"{k}.png")
  summary = distill_prep.prepare(tmp_path / "src", tmp_path / "rec")  # default: mixed sizes -> 256 x 256
  assert [(s["subset"], s["shape"], s["resized"]) for s in summary] == [("val", (256, 256, 3), True)]
  folder = distill_data.split_source(tmp_path / "src", "val")
  rec = distill_prep.split_source_records(tmp_path / "rec", "val")
  resize = distill_data.PilResize(256)
  for i in range(len(folder)):
    np.testing.assert_array_equal(rec[i]["image"], resize.map(folder[i])["image"])
  distill_prep.prepare(tmp_path / "src", tmp_path / "rec16", image_size=16)  # explicit size: every image
  assert distill_prep.split_source_records(tmp_path / "rec16", "val")[0]["image"].shape == (16, 16, 3)


def test_facerec_records_match_subject_folder(synth):
  folder = face_data.SubjectFolder(synth / "face" / "val", image_size=32)
  rec = face_prep.subject_records(synth / "face_rec")
  _same_items(folder, rec, ["image", "label", "index"])
  assert rec.subjects == folder.subjects and rec.image_size == folder.image_size == 32
  assert rec.files == [os.path.relpath(f, folder.root) for f in folder.files]
  np.testing.assert_array_equal(rec.labels, folder.labels)
  for label in range(len(folder.subjects)):
    np.testing.assert_array_equal(rec.subject_indices(label), folder.subject_indices(label))
  for a, b in zip(face_data.gallery_probe_split(folder), face_data.gallery_probe_split(rec)):
    np.testing.assert_array_equal(a, b)
  order, order_rec = (face_data.PKOrder(s.labels, batch_size=6, images_per_subject=3) for s in (folder, rec))
  np.testing.assert_array_equal(order.indices(1, 7), order_rec.indices(1, 7))
  assert face_data.subject_overlap(folder, rec)["overlap"] == 1.0
  with pytest.raises(face_data.DataError, match="share no subject"):  # a record source next to a folder root
    face_data.subject_overlap(rec, synth / "face" / "test")
  back = pickle.loads(pickle.dumps(rec))
  assert repr(back) == repr(rec)
  np.testing.assert_array_equal(back[7]["image"], rec[7]["image"])


# ----------------------------------------------------------------------------------------------
# grain: same batches, checkpointed state
# ----------------------------------------------------------------------------------------------
def test_grain_round_trip_and_iterator_checkpoint(synth):
  folder = distill_data.split_source(synth / "dist", "train")
  make = lambda: common_data.train_iterator(distill_prep.split_source_records(synth / "dist_rec", "train"),
                                            local_batch=4, seed=0)
  it_folder, it = common_data.train_iterator(folder, local_batch=4, seed=0), make()
  for _ in range(3):
    a, b = next(it_folder), next(it)
    for k in ("image", "label", "index"):
      np.testing.assert_array_equal(a[k], b[k])

  # The iterator state as common.checkpoint stores it (grain's JSON state), restored into a fresh iterator over a
  # freshly opened source; orbax's part is covered by test_train_loop.
  saved = json.dumps(it.get_state())
  expected = [next(it) for _ in range(6)]  # crosses the epoch boundary (4 batches per epoch)
  resumed = make()
  resumed.set_state(json.loads(saved))
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["index"], want["index"])


# ----------------------------------------------------------------------------------------------
# Errors: one line, naming the file
# ----------------------------------------------------------------------------------------------
def _one_line_error(excinfo, *parts):
  msg = str(excinfo.value)
  assert "\n" not in msg, msg
  for p in parts:
    assert str(p) in msg, (p, msg)
  return msg


def test_cli_errors_are_one_line_and_leave_no_partial_output(synth, tmp_path, capsys):
  taken = tmp_path / "taken"
  (taken / "x").mkdir(parents=True)
  clis = {ear_prep: str(synth / "ear" / "val.npy"), distill_prep: str(synth / "dist"),
          face_prep: str(synth / "face" / "val")}
  for module, src in clis.items():
    for argv, expected in ((["--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "out")],
                            [str(tmp_path / "missing")]),
                           (["--src", src, "--dst", str(taken)], [str(taken), "not an empty folder"]),
                           (["--dst", str(tmp_path / "out")], ["required", "--src"])):
      capsys.readouterr()
      with pytest.raises(SystemExit) as e:
        module.main(argv)
      err = capsys.readouterr().err
      assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (module.__name__, err)
      assert all(x in err for x in expected), (module.__name__, expected, err)
  assert sorted(os.listdir(tmp_path)) == ["taken"] and os.listdir(taken) == ["x"]

  # A failure half-way (the third example has the wrong shape) leaves no DST and no temporary folder.
  examples = ({"image": np.zeros((4, 5 if i < 2 else 4, 3), np.uint8), "label": i, "file": f"{i}.png"}
              for i in range(4))
  with pytest.raises(records.RecordError) as e:
    records.write_records(tmp_path / "half", examples, image_shape=(4, 5, 3), fields={"label": "int", "file": "str"})
  _one_line_error(e, tmp_path / "half", "example 2 file='2.png'", "(4, 4, 3) uint8", "(4, 5, 3)")
  assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_damaged_record_dirs_fail_with_the_file_named(synth, tmp_path):
  good = synth / "face_rec"
  meta = json.loads((good / records.META).read_text())
  shards = [s["file"] for s in meta["shards"]]
  assert len(shards) == 3

  with pytest.raises(records.RecordError) as e:
    face_prep.subject_records(tmp_path / "nowhere")
  _one_line_error(e, tmp_path / "nowhere", "not a prepared dataset", "python -m facerec.prepare_data")
  (tmp_path / "empty").mkdir()
  with pytest.raises(records.RecordError) as e:
    distill_prep.split_source_records(tmp_path, "empty")
  _one_line_error(e, "not a prepared dataset", "python -m distill.prepare_data")
  with pytest.raises(records.RecordError) as e:
    ear_prep.open_records(tmp_path / "empty")
  _one_line_error(e, "no records.json", "python -m ear_teacher.prepare_data")

  def copy(name):
    dst = tmp_path / name
    shutil.copytree(good, dst)
    return dst

  truncated = copy("truncated")
  shard = truncated / shards[1]
  os.truncate(shard, os.path.getsize(shard) // 2)
  with pytest.raises(records.RecordError) as e:
    face_prep.subject_records(truncated)
  _one_line_error(e, shard, "truncated or corrupt")

  wrong_count = copy("wrong_count")
  bad_meta = dict(meta, shards=[dict(s, count=s["count"] + (i == 2)) for i, s in enumerate(meta["shards"])])
  (wrong_count / records.META).write_text(json.dumps(bad_meta))
  with pytest.raises(records.RecordError) as e:
    face_prep.subject_records(wrong_count)
  _one_line_error(e, wrong_count / shards[2], f"says {meta['shards'][2]['count'] + 1}")
  (wrong_count / records.META).write_text(json.dumps(dict(meta, count=meta["count"] + 1)))
  with pytest.raises(records.RecordError) as e:
    face_prep.subject_records(wrong_count)
  _one_line_error(e, wrong_count / records.META, f"count {meta['count'] + 1}")

  # Damage inside a record passes the open check and fails at read time, naming the shard.
  flipped = copy("flipped")
  with open(flipped / shards[0], "r+b") as f:  # byte 1000: inside the first records (shards end in padding)
    f.seek(1000)
    block = f.read(64)
    f.seek(1000)
    f.write(bytes(b ^ 0xFF for b in block))
  src = face_prep.subject_records(flipped)
  with pytest.raises(records.RecordError) as e:
    for i in range(meta["shards"][0]["count"]):
      src[i]
  _one_line_error(e, flipped / shards[0], "cannot be read or decoded")

  # A shard of the wrong image size (another data set's) decodes to the wrong byte count.
  other = tmp_path / "other"
  records.write_records(other, ({"image": np.zeros((8, 8, 3), np.uint8), "label": 0, "subject": "s", "file": "f"}
                                for _ in range(meta["shards"][1]["count"])),
                        image_shape=(8, 8, 3), fields={"label": "int", "subject": "str", "file": "str"}, name="faces")
  swapped = copy("swapped")
  shutil.copy(next(other.glob("*.array_record-*")), swapped / shards[1])
  src = face_prep.subject_records(swapped)
  with pytest.raises(records.RecordError) as e:
    src[meta["shards"][0]["count"]]  # first record of shard 1
  _one_line_error(e, swapped / shards[1], "record 0")
  assert "tensorflow" not in sys.modules
