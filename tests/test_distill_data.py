"""distill.data (real/fake image folders, LaDeDa transforms) and distill.synthetic (a data set with real signal)."""

import json
import logging
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common import data as common_data
from distill import data
from distill import synthetic
from tests.conftest import REPO, subprocess_env


def _image(h=12, w=10, seed=0):
  return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _folder(path, num_real=3, num_fake=3, names=("0_real", "1_fake"), ext=".png"):
  """Writes num_real / num_fake small RGB images of varied sizes under path/{names}."""
  for n, name in zip((num_real, num_fake), names):
    os.makedirs(path / name, exist_ok=True)
    for i in range(n):
      Image.fromarray(_image(10 + 2 * i, 8 + i, seed=i)).save(path / name / f"{i:03d}{ext}")
  return path


@pytest.fixture
def warnings_log(caplog):
  caplog.set_level(logging.WARNING)
  return caplog


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [("real", "fake"), ("0_real", "1_fake")])
def test_layouts_labels_and_items(tmp_path, names):
  _folder(tmp_path / "train", 2, 3, names)
  # Every extension, in any case; other files and folders are ignored.
  Image.fromarray(_image(seed=9)).save(tmp_path / "train" / names[1] / "x.JPG", format="JPEG")
  for ext, fmt in ((".jpeg", "JPEG"), (".BMP", "BMP"), (".webp", "WEBP")):
    Image.fromarray(_image(seed=8)).save(tmp_path / "train" / names[0] / f"y{ext}", format=fmt)
  (tmp_path / "train" / names[0] / "notes.txt").write_text("not an image")
  (tmp_path / "train" / names[0] / "._000.png").write_bytes(b"macOS resource fork")
  os.makedirs(tmp_path / "train" / names[0] / "thumbs")
  os.makedirs(tmp_path / "train" / "__MACOSX" / names[0])

  (name, src), = data.split_sources(tmp_path, "train").items()
  assert name == "train" and src.name == "train"
  assert (src.num_real, src.num_fake, len(src)) == (5, 4, 9)
  assert src.labels.dtype == np.int32 and src.labels.tolist() == [0] * 5 + [1] * 4
  assert [os.path.basename(f) for f in src.files[:5]] == ["000.png", "001.png", "y.BMP", "y.jpeg", "y.webp"]
  item = src[np.int64(1)]
  assert item["image"].dtype == np.float32 and item["image"].shape == (12, 9, 3)  # the file's own size
  np.testing.assert_array_equal(item["image"], _image(12, 9, seed=1) / np.float32(255))
  assert item["label"] == 0 and item["label"].dtype == np.int32 and item["index"] == 1
  assert item["index"].dtype == np.int32
  assert src[8]["label"] == 1 and 0 <= src[8]["image"].min() and src[8]["image"].max() <= 1
  assert repr(src) == f"ImageFolderSource({str(tmp_path / 'train')!r}, real=5, fake=4)"


def test_nested_subsets_and_concatenation(tmp_path):
  for platform, (r, f) in {"reddit": (2, 2), "twitter": (3, 1), "facebook": (1, 1)}.items():
    _folder(tmp_path / "test" / platform, r, f)
  for cls in ("airplane", "cat"):  # ForenSynth: one more level
    _folder(tmp_path / "train" / "progan" / cls, 2, 2)
  _folder(tmp_path / "train" / "stylegan", 1, 1)

  test = data.split_sources(tmp_path, "test")
  assert list(test) == ["facebook", "reddit", "twitter"]
  assert [(s.name, s.num_real, s.num_fake) for s in test.values()] == [
      ("facebook", 1, 1), ("reddit", 2, 2), ("twitter", 3, 1)]
  assert list(data.split_sources(tmp_path, "train")) == ["progan/airplane", "progan/cat", "stylegan"]

  whole = data.split_source(tmp_path, "test")
  assert (len(whole), whole.num_real, whole.num_fake, whole.name) == (10, 6, 4, "test")
  assert whole.files == [f for s in test.values() for f in s.files]
  assert whole.labels.tolist() == [l for s in test.values() for l in s.labels.tolist()]
  assert whole[5]["image"].shape == test["reddit"][3]["image"].shape and whole[5]["label"] == 1
  assert repr(whole) == f"ImageFolderSource({str(tmp_path / 'test')!r}, real=6, fake=4)"
  assert data.split_source(tmp_path, "train").files == [
      f for s in data.split_sources(tmp_path, "train").values() for f in s.files]


def test_missing_paths_and_classes_are_one_line_errors(tmp_path):
  with pytest.raises(data.DataError, match=r"nowhere: data root not found"):
    data.split_sources(tmp_path / "nowhere", "train")
  _folder(tmp_path / "train")
  os.makedirs(tmp_path / "val")
  with pytest.raises(data.DataError, match=r"split 'test' not found; .* has \['train', 'val'\]"):
    data.split_source(tmp_path, "test")
  with pytest.raises(data.DataError, match=r"val: no folder with real/ .* no sub-folders"):
    data.split_sources(tmp_path, "val")

  _folder(tmp_path / "val" / "only_real", 2, 0)
  os.rmdir(tmp_path / "val" / "only_real" / "1_fake")
  with pytest.raises(data.DataError, match=r"only_real: no fake class folder \(looked for 'fake' and '1_fake'; "
                                           r"found \['0_real'\]\)"):
    data.split_sources(tmp_path, "val")
  os.makedirs(tmp_path / "val" / "only_real" / "1_fake")
  with pytest.raises(data.DataError, match=r"1_fake: no images"):
    data.split_sources(tmp_path, "val")
  _folder(tmp_path / "val" / "only_real", 0, 1, names=("real", "1_fake"))
  with pytest.raises(data.DataError, match=r"both 'real' and '0_real' hold real images; merge them"):
    data.ImageFolderSource(tmp_path / "val" / "only_real")
  with pytest.raises(data.DataError, match=r"not a directory"):
    data.ImageFolderSource(tmp_path / "missing")
  assert issubclass(data.DataError, ValueError)  # callers catching ValueError keep working


def test_unreadable_files_are_dropped_below_the_threshold_and_fatal_above(tmp_path, warnings_log):
  _folder(tmp_path, 5, 5)
  (tmp_path / "1_fake" / "garbage.png").write_bytes(b"\x00\x01 not a png")
  png = (tmp_path / "0_real" / "000.png").read_bytes()
  (tmp_path / "0_real" / "truncated.png").write_bytes(png[:len(png) // 2])  # valid header, cut body
  src = data.ImageFolderSource(tmp_path, max_bad_fraction=0.2)
  assert (src.num_real, src.num_fake) == (5, 5)
  assert not any("garbage" in f or "truncated" in f for f in src.files)
  msg, = [m for m in _warnings(warnings_log) if "unreadable" in m]
  assert "skipping 2 unreadable image(s) of 12" in msg and "garbage.png" in msg and "truncated.png" in msg

  with pytest.raises(data.DataError, match=r"2 of 12 images \(16.7%\) are unreadable, more than "
                                           r"max_bad_fraction=0.01 \(e.g. .*garbage.png"):
    data.ImageFolderSource(tmp_path)

  # A file that breaks after the check (or whose body the header check cannot see) fails at read time, by name.
  src = data.ImageFolderSource(tmp_path, max_bad_fraction=0.2)
  (tmp_path / "0_real" / "001.png").write_bytes(b"gone")
  with pytest.raises(data.DataError, match=r"001.png: cannot decode"):
    src[1]


def test_imbalance_warns_with_counts(tmp_path, warnings_log):
  _folder(tmp_path / "train" / "a", 1, 4)
  _folder(tmp_path / "train" / "b", 4, 1)
  sources = data.split_sources(tmp_path, "train")
  assert len(sources) == 2
  warned = [m for m in _warnings(warnings_log) if "imbalance" in m]
  assert len(warned) == 2 and "1 real vs 4 fake" in warned[0] and "4 real vs 1 fake" in warned[1]
  warnings_log.clear()
  # The union of the two lopsided subsets is balanced: training on it is fine, so nothing is logged.
  assert data.split_source(tmp_path, "train").num_real == 5
  assert not [m for m in _warnings(warnings_log) if "imbalance" in m]
  data.split_sources(tmp_path, "train", imbalance_ratio=5)
  assert not [m for m in _warnings(warnings_log) if "imbalance" in m]


def test_grey_palette_and_alpha_images_become_rgb(tmp_path):
  _folder(tmp_path, 1, 1)
  grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
  Image.fromarray(grey, "L").save(tmp_path / "0_real" / "grey.png")
  rgba = np.dstack([_image(6, 8), np.full((6, 8), 7, np.uint8)])
  Image.fromarray(rgba, "RGBA").save(tmp_path / "1_fake" / "rgba.png")
  Image.fromarray(_image(6, 8)).convert("P").save(tmp_path / "1_fake" / "palette.png")
  src = data.ImageFolderSource(tmp_path)
  by_name = {os.path.basename(f): src[i]["image"] for i, f in enumerate(src.files)}
  for name in ("grey.png", "rgba.png", "palette.png"):
    assert by_name[name].shape == (6, 8, 3) and by_name[name].dtype == np.float32
  np.testing.assert_array_equal(by_name["grey.png"], np.repeat(grey[..., None], 3, -1) / np.float32(255))
  np.testing.assert_array_equal(by_name["rgba.png"], rgba[..., :3] / np.float32(255))  # alpha dropped


def test_source_pickles_and_feeds_grain_pipelines(tmp_path):
  _folder(tmp_path / "train", 4, 4)
  src = data.split_source(tmp_path, "train")
  back = pickle.loads(pickle.dumps(src))
  assert repr(back) == repr(src) and back.files == src.files
  np.testing.assert_array_equal(back[3]["image"], src[3]["image"])

  it = common_data.train_iterator(src, local_batch=4, transforms=data.train_transforms(16), seed=0)
  batch = next(it)
  assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8 and batch["label"].shape == (4,)
  batches = list(common_data.eval_batches(src, global_batch=6, local_batch=6, transforms=data.eval_transforms(16, 12)))
  assert [b["image"].shape for b in batches] == [(6, 12, 12, 3)] * 2
  assert np.concatenate([b["mask"] for b in batches]).sum() == 8
  assert sorted(np.concatenate([b["index"] for b in batches])[:8].tolist()) == list(range(8))


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------
def test_transforms_shapes_normalisation_and_torchvision_resize():
  img = _image(50, 30, seed=3)
  el = {"image": img / np.float32(255), "label": np.int32(1)}
  mean, std = np.float32(common_data.IMAGENET_MEAN), np.float32(common_data.IMAGENET_STD)

  # torchvision Resize on a PIL image = PIL bilinear (antialiased) on uint8: PilResize must match it exactly.
  resized = data.PilResize(40).map(el)["image"]
  want = np.asarray(Image.fromarray(img).resize((40, 40), Image.BILINEAR)) / np.float32(255)
  np.testing.assert_array_equal(resized, want)
  assert data.PilResize((50, 30)).map(el) is el  # already that size: untouched

  # Training: the host resizes to uint8 bytes (exactly torchvision's PIL resize), the step crops, flips and
  # normalises them on the device.
  host = el
  for t in data.train_transforms(resize=40):
    host = t.map(host)
  assert host["image"].dtype == np.uint8 and host["label"] == 1
  np.testing.assert_array_equal(host["image"], np.asarray(Image.fromarray(img).resize((40, 40), Image.BILINEAR)))
  batch = {"image": np.stack([host["image"]] * 8)}
  out = np.asarray(jax.jit(data.device_train_transform(32))(batch, jax.random.key(0))["image"])
  assert out.shape == (8, 32, 32, 3) and out.dtype == np.float32
  # Every crop is a window of the resized image, normalised with ImageNet statistics (maybe flipped).
  windows = [want[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
  for raw in out * std + mean:
    assert any(np.allclose(raw, w, atol=1e-6) or np.allclose(raw, w[:, ::-1], atol=1e-6) for w in windows)
  assert len({o.tobytes() for o in out}) > 1  # a draw per example
  assert [type(t).__name__ for t in data.train_transforms(40)] == ["PilResize"]
  assert [type(t).__name__ for t in data.train_transforms(40, resample="float_bicubic")] == ["Resize", "ToUint8"]

  val = el
  for t in data.eval_transforms(resize=40, crop=32):
    val = t.map(val)
  np.testing.assert_allclose(val["image"], (want[4:36, 4:36] - mean) / std, rtol=1e-6)
  test = el
  for t in data.eval_transforms(resize=40, crop=None):
    test = t.map(test)
  np.testing.assert_allclose(test["image"], (want - mean) / std, rtol=1e-6)
  # The float bicubic resize of common.data stays available.
  assert isinstance(data.eval_transforms(40, None, resample="float_bicubic")[0], common_data.Resize)
  for t in data.train_transforms(40) + data.eval_transforms(40, None, resample="bicubic"):
    assert type(pickle.loads(pickle.dumps(t))) is type(t)


# ----------------------------------------------------------------------------------------------
# Synthetic data set
# ----------------------------------------------------------------------------------------------
def _residual_features(x):
  """Per-image log energies of NPR-style residuals (each pixel minus its 2x2 block's top-left pixel, or minus the
  block mean), on the block grid and shifted by one pixel, plus their aligned-minus-shifted contrasts."""
  x = x.mean(-1)

  def energies(z):
    z = z[:, :z.shape[1] // 2 * 2, :z.shape[2] // 2 * 2]
    up = lambda b: np.repeat(np.repeat(b, 2, 1), 2, 2)
    blocks = z.reshape(len(z), z.shape[1] // 2, 2, z.shape[2] // 2, 2)
    return (np.log(((z - up(z[:, ::2, ::2])) ** 2).mean((1, 2)) + 1e-8),
            np.log(((z - up(blocks.mean((2, 4)))) ** 2).mean((1, 2)) + 1e-8))

  (npr, mean2), (npr_s, mean2_s) = energies(x), energies(x[:, 1:, 1:])
  return np.stack([npr, mean2, npr - npr_s, mean2 - mean2_s], 1)


def _global_features(x):
  """Per-image mean and std per channel plus an 8-bin colour histogram per channel."""
  bins = np.minimum((x * 8).astype(int), 7) + 8 * np.arange(3) + 24 * np.arange(len(x))[:, None, None, None]
  hist = np.bincount(bins.ravel(), minlength=24 * len(x)).reshape(len(x), 24) / (x.shape[1] * x.shape[2])
  return np.concatenate([x.mean((1, 2)), x.std((1, 2)), hist], 1)


def _arrays(src):
  return np.stack([src[i]["image"] for i in range(len(src))]), src.labels


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  return synthetic.write_dataset(tmp_path_factory.mktemp("syn") / "ds", size=64,
                                 counts=dict(train=400, val=200, test=100), seed=0)


def test_synthetic_layout_metadata_and_determinism(synthetic_dir, tmp_path):
  assert sorted(os.listdir(synthetic_dir)) == ["dataset.json", "test", "train", "val"]
  assert list(data.split_sources(synthetic_dir, "test")) == ["seen_generators", "unseen_generator"]
  for split, n in (("train", 400), ("val", 200)):
    src = data.split_source(synthetic_dir, split, max_bad_fraction=0)
    assert (src.num_real, src.num_fake) == (n // 2, n // 2)
  assert src[0]["image"].shape == (64, 64, 3)
  info = json.loads(open(os.path.join(synthetic_dir, "dataset.json")).read())
  assert info["size"] == 64 and info["seed"] == 0 and info["counts"] == dict(train=400, val=200, test=100)
  assert info["fake_upsamplers"]["test/unseen_generator"] == ["bilinear"]

  small = dict(train=6, val=4, test=4)
  a = synthetic.write_dataset(tmp_path / "a", size=16, counts=small, seed=5)
  b = synthetic.write_dataset(tmp_path / "b", size=16, counts=small, seed=5)
  c = synthetic.write_dataset(tmp_path / "c", size=16, counts=small, seed=6)
  files = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
  assert len(files) == 6 + 4 + 2 * 4 + 1
  read = lambda root, f: open(os.path.join(root, f), "rb").read()
  assert all(read(a, f) == read(b, f) for f in files)
  assert any(read(a, f) != read(c, f) for f in files if f.endswith(".png"))
  with pytest.raises(FileExistsError, match="not an empty folder"):
    synthetic.write_dataset(a, size=16, counts=small)
  with pytest.raises(ValueError, match="multiple of 4"):
    synthetic.write_dataset(tmp_path / "d", size=18, counts=small)
  assert not os.path.exists(tmp_path / "d")
  assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]  # no temporary folders left behind


def test_synthetic_fakes_differ_only_in_local_correlations(synthetic_dir):
  """Residual energies separate real from fake on held-out data; global colour statistics do not."""
  x_train, y_train = _arrays(data.split_source(synthetic_dir, "train"))
  x_val, y_val = _arrays(data.split_source(synthetic_dir, "val"))
  aucs = {}
  for name, features in (("residual", _residual_features), ("global", _global_features)):
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(features(x_train), y_train)
    aucs[name] = roc_auc_score(y_val, clf.decision_function(features(x_val)))
  print("synthetic val AUC", aucs)  # shown with pytest -s
  assert aucs["residual"] > 0.9, aucs
  assert 0.35 < aucs["global"] < 0.65, aucs
  # Same per-pixel statistics by construction: mean and std of reals and fakes agree closely.
  real, fake = x_train[y_train == 0], x_train[y_train == 1]
  assert abs(real.mean() - fake.mean()) < 0.03 and abs(real.std((1, 2)).mean() - fake.std((1, 2)).mean()) < 0.02


def test_generate_shapes_and_kinds():
  real, fake, kinds = synthetic.generate(np.random.default_rng(0), 3, 4, 16, ("nearest", "tconv"))
  assert real.shape == (3, 16, 16, 3) and fake.shape == (4, 16, 16, 3) and real.dtype == fake.dtype == np.uint8
  assert kinds.tolist() == ["nearest", "tconv", "nearest", "tconv"]


def test_upsamplers_and_noise_gains():
  rng = np.random.default_rng(0)
  x = rng.random((1, 3, 4, 1)).astype(np.float32)
  np.testing.assert_array_equal(synthetic.upsample2(x, "nearest")[0, ::2, ::2], x[0])
  np.testing.assert_array_equal(synthetic.upsample2(x, "nearest")[0, 1::2, 1::2], x[0])
  bil = synthetic.upsample2(x, "bilinear")
  want = np.asarray(Image.fromarray(x[0, ..., 0], "F").resize((8, 6), Image.BILINEAR))
  np.testing.assert_allclose(bil[0, ..., 0], want, atol=1e-5)  # same as PIL / torch align_corners=False
  for kind in ("nearest", "tconv", "bilinear"):
    noise = rng.standard_normal((64, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(synthetic.upsample2(noise, kind).var(), synthetic.noise_gain(kind), rtol=0.05)
  with pytest.raises(ValueError, match="unknown upsampler"):
    synthetic.upsample2(x, "pixelshuffle")


def test_synthetic_cli(tmp_path):
  out = tmp_path / "cli"
  proc = subprocess.run([sys.executable, "-m", "distill.synthetic", "--out", str(out), "--size", "16",
                         "--train", "4", "--val", "2", "--test", "2", "--seed", "3"],
                        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, check=True)
  assert "wrote" in proc.stdout
  assert {k: len(v) for k, v in data.split_sources(out, "test").items()} == {
      "seen_generators": 2, "unseen_generator": 2}
  assert len(data.split_source(out, "train")) == 4
  assert json.loads((out / "dataset.json").read_text())["seed"] == 3
