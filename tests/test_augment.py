"""On-device augmentation (common.augment, facerec.augment) against the host transforms for the same draws,
and the random wrappers' distributions, determinism and independence from how the batch is sharded."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import augment
from common import data as common_data
from common import parallel
from facerec import augment as face_augment
from facerec import data as face_data


def _host(transform, images, seeds):
  """The host transform applied per image, image i drawing from default_rng(seeds[i])."""
  return np.stack([transform.random_map({"image": img}, np.random.default_rng(s))["image"]
                   for img, s in zip(images, seeds)])


def _coords(b, h, w):
  """(b, h, w, 2) int32 images holding each pixel's (row, column): crops and flips can be read back."""
  grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).astype(np.int32)
  return np.broadcast_to(grid, (b, h, w, 2))


def _windows(crops, images, size, pad):
  """(b, top, left) bool: which windows of the reflect-padded images each crop equals."""
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))  # b, t, l, c, i, j
  return (windows == np.asarray(crops).transpose(0, 3, 1, 2)[:, None, None]).all((3, 4, 5))


def _sharded(x):
  return jax.device_put(x, parallel.data_sharding(parallel.make_mesh()))


# ----------------------------------------------------------------------------------------------
# Deterministic cores == host transforms for the same draw
# ----------------------------------------------------------------------------------------------
def test_to_float_and_normalize_match_host():
  u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  host = np.asarray(u8, np.float32) / 255.0  # as the sources decode
  np.testing.assert_array_equal(np.asarray(jax.jit(augment.to_float)(u8)), host)
  assert augment.to_float(host.astype(np.float64)).dtype == jnp.float32
  with pytest.raises(TypeError, match="uint8 or float"):
    augment.to_float(np.zeros((1, 2, 2, 3), np.int32))
  want = np.stack([common_data.Normalize().map({"image": im})["image"] for im in host])
  for x in (host, u8):
    np.testing.assert_allclose(np.asarray(jax.jit(augment.normalize)(x)), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pad", [0, 3])
def test_crop_at_matches_host(pad):
  rng = np.random.default_rng(0)
  u8 = rng.integers(0, 256, (6, 13, 17, 3), dtype=np.uint8)  # not square: catches swapped axes
  images = u8.astype(np.float32) / 255.0
  size, seeds = 9, range(6)
  want = _host(common_data.RandomCrop(size, pad), images, seeds)
  # Replay the host's draws: top, then left, each uniform over the valid offsets of the padded image.
  draws = [np.random.default_rng(s) for s in seeds]
  top = np.array([r.integers(0, 13 + 2 * pad - size + 1) for r in draws])
  left = np.array([r.integers(0, 17 + 2 * pad - size + 1) for r in draws])
  crop = jax.jit(augment.crop_at, static_argnums=(3, 4))
  np.testing.assert_array_equal(np.asarray(crop(images, top, left, size, pad)), want)
  out8 = crop(u8, top, left, size, pad)  # uint8 stays uint8: crop first, convert after
  assert out8.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(augment.to_float(out8)), want)


def test_flip_where_matches_host():
  images = np.random.default_rng(1).random((16, 5, 7, 3), dtype=np.float32)
  seeds = range(100, 116)
  want = _host(common_data.RandomFlip(0.3), images, seeds)
  mask = np.array([np.random.default_rng(s).random() < 0.3 for s in seeds])
  assert 0 < mask.sum() < len(mask)
  np.testing.assert_array_equal(np.asarray(jax.jit(augment.flip_where)(images, mask)), want)


def test_apply_brightness_contrast_matches_host():
  images = np.random.default_rng(2).random((8, 11, 11, 3), dtype=np.float32)
  brightness, contrast, seeds = 0.3, 0.6, range(8)  # wide enough to clip some pixels
  want = _host(common_data.RandomBrightnessContrast(brightness, contrast), images, seeds)
  draws = [np.random.default_rng(s) for s in seeds]
  c = np.array([1.0 + r.uniform(-contrast, contrast) for r in draws])  # host order: contrast, then brightness
  b = np.array([r.uniform(-brightness, brightness) for r in draws])
  got = np.asarray(jax.jit(augment.apply_brightness_contrast)(images, b, c))
  assert got.dtype == np.float32 and ((want == 0) | (want == 1)).any()
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # float32 sums of the mean in another order


# ----------------------------------------------------------------------------------------------
# Random wrappers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pad", [0, 2])
def test_random_crop_and_flip_distribution(pad):
  b, h, w, size = 1024, 12, 14, 8
  images = _coords(b, h, w)

  @jax.jit
  def crop_flip(x, rng):
    k_crop, k_flip = jax.random.split(rng)
    return augment.random_flip(augment.random_crop(x, k_crop, size, pad), k_flip)

  out = np.asarray(crop_flip(images, jax.random.key(0)))
  assert out.shape == (b, size, size, 2) and out.dtype == np.int32
  np.testing.assert_array_equal(out, np.asarray(crop_flip(images, jax.random.key(0))))
  assert not np.array_equal(out, np.asarray(crop_flip(images, jax.random.key(1))))
  # Every example is exactly one window of the padded coordinate image, either as is or mirrored (no mirrored
  # window is also a window: it would need a run of `size` decreasing columns); the offsets cover their range.
  plain, mirrored = _windows(out, images, size, pad), _windows(out[:, :, ::-1], images, size, pad)
  assert (plain.sum((1, 2)) + mirrored.sum((1, 2)) == 1).all()
  flipped = mirrored.any((1, 2))
  _, top, left = np.nonzero(plain | mirrored)
  for offset, n in ((top, h + 2 * pad - size + 1), (left, w + 2 * pad - size + 1)):
    counts = np.bincount(offset, minlength=n)
    assert len(counts) == n and counts.min() > 0.6 * b / n and counts.max() < 1.4 * b / n, counts
  assert abs(flipped.mean() - 0.5) < 4 * np.sqrt(0.25 / b)
  if not pad:
    flip = jax.jit(augment.random_flip, static_argnums=2)
    rate = (np.asarray(flip(images[:, :1], jax.random.key(2), 0.2))[:, 0, 0, 1] != 0).mean()
    assert abs(rate - 0.2) < 4 * np.sqrt(0.16 / b)
  with pytest.raises(ValueError, match="larger than the image"):
    augment.random_crop(images, jax.random.key(0), h + 2 * pad + 1, pad)


def test_random_brightness_contrast_draws():
  b, brightness, contrast = 2048, 0.1, 0.2
  images = np.where(np.arange(8) < 4, 0.375, 0.625).astype(np.float32).reshape(1, 1, 8, 1).repeat(b, 0)
  out = np.asarray(jax.jit(augment.brightness_contrast, static_argnums=(2, 3))(images, jax.random.key(3),
                                                                               brightness, contrast))
  assert out.shape == images.shape and out.dtype == np.float32
  # Two levels around a mean of exactly 0.5: their gap is 0.25 c, their midpoint 0.5 + b (no clipping here).
  lo, hi = out[:, 0, 0, 0], out[:, 0, -1, 0]
  c, bright = (hi - lo) / 0.25, (hi + lo) / 2 - 0.5
  for v, low, high in ((c, 1 - contrast, 1 + contrast), (bright, -brightness, brightness)):
    assert low - 1e-5 <= v.min() and v.max() <= high + 1e-5
    assert v.min() < low + 0.05 * (high - low) and v.max() > high - 0.05 * (high - low)  # the whole range
  assert abs(np.corrcoef(c, bright)[0, 1]) < 0.1  # independent draws


def test_pipeline_uint8_jit_and_sharding_invariance():
  """The trainer's use: uint8 batch in, one key, crop -> flip -> float -> colour -> normalize, under jit."""
  assert jax.config.jax_threefry_partitionable  # what makes sharded draws equal the unsharded ones

  def pipeline(x, rng):
    k_crop, k_flip, k_bc = jax.random.split(rng, 3)
    x = augment.random_flip(augment.random_crop(x, k_crop, 24, 2), k_flip)
    return augment.normalize(augment.brightness_contrast(augment.to_float(x), k_bc, 0.1, 0.1))

  # One compile for both: converting first gives the same images, as the draws do not depend on the dtype.
  both = jax.jit(lambda x, rng: (pipeline(x, rng), pipeline(augment.to_float(x), rng)))
  u8 = np.random.default_rng(4).integers(0, 256, (16, 28, 28, 3), dtype=np.uint8)
  key = jax.random.key(5)
  out, out_float = both(u8, key)
  assert out.shape == (16, 24, 24, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out_float), np.asarray(out), rtol=0, atol=1e-6)
  sharded = _sharded(u8)
  assert len(sharded.sharding.device_set) == 2
  np.testing.assert_array_equal(np.asarray(both(sharded, key)[0]), np.asarray(out))
  # Per example: no two examples of a batch of identical images come out the same.
  same = both(np.broadcast_to(u8[:1], u8.shape), key)[0].reshape(16, -1)
  assert len(np.unique(np.asarray(same), axis=0)) == 16


# ----------------------------------------------------------------------------------------------
# facerec: VLR degradation on device
# ----------------------------------------------------------------------------------------------
def test_gauss_matrix_matches_host():
  sigmas = np.array([0.0, 0.3, 0.5, 1.0, 1.37, 2.9])
  got = np.asarray(jax.jit(face_augment.gauss_matrix, static_argnums=0)(40, sigmas))
  want = np.stack([face_data._gauss_matrix(40, s) for s in sigmas])  # pylint: disable=protected-access
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("deg, hw", [
    (face_data.Degradation(down="area"), (112, 112)),
    (face_data.Degradation(down="bicubic", noise_std=(0.0, 0.05)), (112, 112)),
    (face_data.Degradation(vlr_size=14, blur_sigma=(0.0, 2.5)), (112, 112)),  # fractional area weights
    (face_data.Degradation(vlr_size=20, down="bicubic"), (112, 100)),
])
def test_degrade_with_matches_host(deg, hw):
  b = 6
  hr = np.random.default_rng(6).random((b, *hw, 3), dtype=np.float32)
  draws = [deg.draw(np.random.default_rng(s)) for s in range(b)]
  draws[0] = (0.0, 0.0, np.zeros_like(draws[0][2]))  # no blur, no noise: identity G, the std == 0 branch
  want = np.stack([deg.apply(x, *d) for x, d in zip(hr, draws)])
  sigma, std, noise = (np.stack(v) for v in zip(*draws))
  got = np.asarray(jax.jit(face_augment.degrade_with, static_argnums=4)(hr, sigma, std, noise, deg))
  assert got.shape == want.shape == (b, deg.vlr_size, deg.vlr_size, 3) and got.dtype == np.float32
  err = np.abs(got - want).max()
  assert err < 1e-6, f"device vs host degradation: max abs error {err:.2e}"  # float32 vs float64: ~3e-7 seen


def test_degrade_random():
  deg = face_data.Degradation()
  b = 64
  hr = np.random.default_rng(7).random((b, 112, 112, 3), dtype=np.float32)
  # One compile: the wrapper, the core on the wrapper's own draws, and those draws.
  run = jax.jit(lambda hr, k, deg: (face_augment.degrade(hr, k, deg),
                                    face_augment.degrade_with(hr, *face_augment.draw(k, b, deg), deg),
                                    face_augment.draw(k, b, deg)), static_argnums=2)
  key = jax.random.key(8)
  out, core, (sigma, std, noise) = run(hr, key, deg)
  assert out.shape == (b, 16, 16, 3) and out.dtype == jnp.float32
  assert 0 <= float(out.min()) and float(out.max()) <= 1
  np.testing.assert_array_equal(np.asarray(core), np.asarray(out))
  np.testing.assert_array_equal(np.asarray(run(hr, key, deg)[0]), np.asarray(out))
  assert not np.array_equal(np.asarray(run(hr, jax.random.key(9), deg)[0]), np.asarray(out))
  np.testing.assert_array_equal(np.asarray(run(_sharded(hr), key, deg)[0]), np.asarray(out))
  # Draws lie in the configured ranges, one per example.
  sigma, std, noise = (np.asarray(v) for v in (sigma, std, noise))
  assert 0.5 <= sigma.min() and sigma.max() <= 1.5 and 0 <= std.min() and std.max() <= 0.02
  assert len(np.unique(sigma)) == b and len(np.unique(std)) == b
  assert noise.shape == (b, 16, 16, 3) and abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05
  # uint8 faces are converted as the sources decode them; a fixed range without noise draws no noise.
  u8 = (hr * 255).astype(np.uint8)
  fixed = face_data.Degradation(blur_sigma=1.0, noise_std=0.0)
  np.testing.assert_allclose(
      np.asarray(jax.jit(face_augment.degrade, static_argnums=2)(u8, key, fixed)),
      np.stack([fixed(x, np.random.default_rng(0)) for x in u8.astype(np.float32) / 255.0]), rtol=0, atol=2e-6)
  with pytest.raises(ValueError, match="would up-sample"):
    face_augment.degrade(hr[:, :8, :8], key, deg)
