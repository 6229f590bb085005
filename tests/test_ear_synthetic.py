"""Tests for the synthetic ear generator and the .npy image source."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from ear_teacher.data import NpyImageSource
from ear_teacher.synthetic import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ears():
    """16 identities x 5 images at 32 px: enough for the statistics below."""
    return generate(16, 5, 32, seed=0)


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ears")
    subprocess.run(
        [sys.executable, "-m", "ear_teacher.synthetic", "--out", str(out),
         "--num_identities", "6", "--images_per_identity", "3", "--val_identities", "2",
         "--size", "24", "--seed", "3"],
        cwd=REPO, check=True, capture_output=True)
    return out


def test_shapes_dtypes_and_determinism(ears):
    images, ids = ears
    assert images.shape == (80, 32, 32, 3) and images.dtype == np.uint8
    assert ids.shape == (80,) and ids.dtype == np.int32
    assert np.array_equal(np.unique(ids), np.arange(16))
    again, again_ids = generate(16, 5, 32, seed=0)
    assert np.array_equal(images, again) and np.array_equal(ids, again_ids)
    assert not np.array_equal(images, generate(16, 5, 32, seed=1)[0])


def test_identity_is_independent_of_batch():
    # An identity's ear depends only on (seed, id), so id_offset yields new ears
    # and the same id renders identically whatever else is generated with it.
    a, _ = generate(3, 2, 24, seed=0)
    b, b_ids = generate(2, 2, 24, seed=0, id_offset=1)
    assert np.array_equal(b_ids, [1, 1, 2, 2])
    assert np.array_equal(a[2:], b)


def test_cli_writes_disjoint_splits(cli_dir):
    assert sorted(os.listdir(cli_dir)) == ["train.npy", "train_ids.npy", "val.npy", "val_ids.npy"]
    train, val = np.load(cli_dir / "train.npy"), np.load(cli_dir / "val.npy")
    train_ids, val_ids = np.load(cli_dir / "train_ids.npy"), np.load(cli_dir / "val_ids.npy")
    assert train.shape == (18, 24, 24, 3) and val.shape == (6, 24, 24, 3)
    assert train.dtype == val.dtype == np.uint8
    assert train_ids.dtype == val_ids.dtype == np.int32
    assert len(train_ids) == 18 and len(val_ids) == 6
    assert not set(train_ids) & set(val_ids)


def test_same_identity_images_are_closer(ears):
    images, ids = ears
    # L2 distance between 16x16 greyscale thumbnails.
    grey = images.astype(np.float64).mean(-1)
    thumbs = grey.reshape(len(grey), 16, 2, 16, 2).mean((2, 4)).reshape(len(grey), -1)
    dist = np.sqrt(((thumbs[:, None] - thumbs[None]) ** 2).mean(-1))
    same = ids[:, None] == ids[None]
    within = dist[same & ~np.eye(len(ids), dtype=bool)].mean()
    across = dist[~same].mean()
    assert within < 0.8 * across, (within, across)


def test_images_are_not_trivial(ears):
    images, _ = ears
    x = images.astype(np.float64) / 255
    assert (x.std(axis=(1, 2, 3)) > 0.03).all()
    grad = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3)) + np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
    assert (grad > 0.01).all(), grad.min()
    grey = (images[..., 0] == images[..., 1]).all((1, 2)) & (images[..., 1] == images[..., 2]).all((1, 2))
    assert 0 < grey.sum() < len(images)  # both greyscale and colour images occur


# --- NpyImageSource ---------------------------------------------------------


def _save(tmp_path, name, arr):
    path = tmp_path / name
    np.save(path, arr)
    return path


def _rejects(path, ids_path=None):
    """Asserts a one-line ValueError that names the offending file."""
    with pytest.raises(ValueError) as err:
        NpyImageSource(path, ids_path=ids_path)
    message = str(err.value)
    assert os.path.basename(ids_path or path) in message and "\n" not in message, message
    return message


def test_source_rejects_bad_inputs(tmp_path):
    ok = np.zeros((4, 8, 8, 3), np.uint8)
    _rejects(tmp_path / "missing.npy")
    (tmp_path / "garbage.npy").write_bytes(b"this is not an npy file")
    _rejects(tmp_path / "garbage.npy")
    truncated = _save(tmp_path, "truncated.npy", ok).read_bytes()[:-10]
    (tmp_path / "truncated.npy").write_bytes(truncated)
    _rejects(tmp_path / "truncated.npy")
    np.savez(tmp_path / "archive.npz", images=ok)
    _rejects(tmp_path / "archive.npz")
    _rejects(_save(tmp_path, "flat.npy", np.zeros((4, 64), np.uint8)))
    _rejects(_save(tmp_path, "five_d.npy", np.zeros((4, 8, 8, 3, 1), np.uint8)))
    _rejects(_save(tmp_path, "rgba.npy", np.zeros((4, 8, 8, 4), np.uint8)))
    _rejects(_save(tmp_path, "empty.npy", np.zeros((0, 8, 8, 3), np.uint8)))
    _rejects(_save(tmp_path, "int32.npy", np.zeros((4, 8, 8, 3), np.int32)))
    assert "[0,1]" in _rejects(_save(tmp_path, "float255.npy", np.full((4, 8, 8, 3), 255.0, np.float32)))
    _rejects(_save(tmp_path, "negative.npy", np.full((4, 8, 8, 3), -0.5, np.float64)))
    nan = np.zeros((4, 8, 8, 3), np.float32)
    nan[3, 1, 2, 0] = np.nan
    assert "NaN" in _rejects(_save(tmp_path, "nan.npy", nan))
    images = _save(tmp_path, "ok.npy", ok)
    _rejects(images, ids_path=_save(tmp_path, "short_ids.npy", np.arange(3)))
    _rejects(images, ids_path=tmp_path / "missing_ids.npy")


def test_source_reads_uint8_float_and_grey(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    item = NpyImageSource(_save(tmp_path, "rgb.npy", rgb))[2]
    assert item["index"] == 2 and item["image"].dtype == np.float32
    np.testing.assert_allclose(item["image"], rgb[2] / 255.0, atol=1e-6)

    grey = rng.random((5, 6, 7)).astype(np.float16)
    for name, arr in [("grey.npy", grey), ("grey1.npy", grey[..., None])]:
        image = NpyImageSource(_save(tmp_path, name, arr))[4]["image"]
        assert image.shape == (6, 7, 3) and image.dtype == np.float32
        for c in range(3):
            np.testing.assert_array_equal(image[..., c], grey[4].astype(np.float32))

    source = NpyImageSource(_save(tmp_path, "f64.npy", rgb / 255.0),
                            ids_path=_save(tmp_path, "ids.npy", np.arange(5, dtype=np.int32) * 10))
    assert len(source) == 5 and source[3]["id"] == 30
    np.testing.assert_allclose(source[3]["image"], rgb[3] / 255.0, atol=1e-6)
    with pytest.raises(IndexError):
        source[5]


def test_source_pickles_without_data(cli_dir):
    source = NpyImageSource(cli_dir / "val.npy", ids_path=cli_dir / "val_ids.npy")
    first = source[1]  # opens the memmap in this process
    blob = pickle.dumps(source)
    assert len(blob) < 2000  # the path travels, not the images
    clone = pickle.loads(blob)
    assert repr(clone) == repr(source)
    assert "val.npy" in repr(source) and "(6, 24, 24, 3)" in repr(source)
    item = clone[1]
    np.testing.assert_array_equal(item["image"], first["image"])
    assert item["index"] == 1 and item["id"] == first["id"]
