"""Per-example training augmentation on device: batched jax.numpy ops for the jitted train step.

The host transforms in `common.data` (`RandomCrop`, `RandomFlip`, `RandomBrightnessContrast`, `Normalize`)
draw per image in grain workers; these do the same on a whole batch (B, H, W, C) from one jax PRNG key,
inside `jit`, so the host only decodes and ships (uint8) images. Every random op is a thin wrapper that
draws once per example with batched `jax.random` calls over the batch axis and calls a deterministic core
taking the draws explicitly (`crop_at`, `flip_where`, `apply_brightness_contrast`); the cores are what the
tests compare with the host transforms for the same draw.

Sharding: with `jax_threefry_partitionable` (the default in this jax), a batched draw of shape (B,) is the
same numbers whether the batch is one array or sharded over devices or processes, so a multi-process run
augments exactly as a single-process one. Give each op its own key (`jax.random.split`), e.g.

    k_crop, k_flip, k_bc = jax.random.split(rng, 3)
    x = random_crop(batch["image"], k_crop, 224)        # uint8 in, uint8 out: crop before converting
    x = random_flip(x, k_flip)
    x = normalize(brightness_contrast(to_float(x), k_bc, 0.1, 0.1))
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.data import IMAGENET_MEAN, IMAGENET_STD


def _u8_to_float(x: jax.Array) -> jax.Array:
  """x / 255 for uint8 x, correctly rounded like numpy's float32 division (checked on all 256 values).

  XLA rewrites a division by a constant into a multiplication by its reciprocal, 1 ulp off for half the
  values; a lookup table is exact but, as a gather fused into the consumers, 8x slower on CPU. Instead:
  x / 255 = x * 0x010101 / 2^24 + (x / 255) / 2^24, whose first term is exact in float32 (< 2^24) and whose
  second only has to land on the right side of the first's rounding boundary. Integer ops and power-of-two
  scalings leave XLA nothing to reassociate; an FMA contraction of the add is exact too.
  """
  hi = (x.astype(jnp.int32) * 0x010101).astype(jnp.float32) * np.float32(2.0 ** -24)
  return hi + x.astype(jnp.float32) * np.float32(2.0 ** -32 * 256 / 255)


def to_float(images: jax.Array) -> jax.Array:
  """uint8 -> float32 in [0, 1], bit-equal to the host sources' x / 255; float input is cast to float32."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return _u8_to_float(images)
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"to_float: expected uint8 or float images, got {images.dtype}")
  return images.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Crop
# ----------------------------------------------------------------------------------------------
def crop_at(images: jax.Array, top: jax.Array, left: jax.Array, size: int, pad: int = 0) -> jax.Array:
  """Crops (B, H, W, C) -> (B, size, size, C) at per-example `top`, `left` (B,) of the reflect-padded image.

  Offsets are in padded coordinates, as `common.data.RandomCrop` draws them; the dtype is kept (crop uint8
  before `to_float`: a quarter of the bytes to move).
  """
  images = jnp.asarray(images)
  if pad:
    images = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")  # np.pad's "reflect"
  # vmap(dynamic_slice) lowers to one gather of a whole (size, size, C) window per example, indexed by B start
  # points: a memory-bound copy. A per-pixel gather builds and reads an index per output pixel (~9x slower on
  # CPU for uint8); one-hot matmuls do B*size*H*W*C MACs per axis (~100x slower on CPU) and are inexact under
  # GPU's default TF32 matmuls. dynamic_slice clamps out-of-range starts; the wrapper only draws valid ones.
  window = (size, size, images.shape[-1])
  return jax.vmap(lambda im, t, l: jax.lax.dynamic_slice(im, (t, l, 0), window))(
      images, jnp.asarray(top, jnp.int32), jnp.asarray(left, jnp.int32))


def random_crop(images: jax.Array, rng: jax.Array, size: int, pad: int = 0) -> jax.Array:
  """`common.data.RandomCrop` per example: reflect-pad by `pad`, crop size x size at a uniform top/left."""
  b, h, w = images.shape[:3]
  n_top, n_left = h + 2 * pad - size + 1, w + 2 * pad - size + 1
  if min(n_top, n_left) < 1:
    raise ValueError(f"random_crop({size}, pad={pad}) of {h}x{w} images: the crop is larger than the image")
  k_top, k_left = jax.random.split(rng)
  top = jax.random.randint(k_top, (b,), 0, n_top)
  left = jax.random.randint(k_left, (b,), 0, n_left)
  return crop_at(images, top, left, size, pad)


# ----------------------------------------------------------------------------------------------
# Flip
# ----------------------------------------------------------------------------------------------
def flip_where(images: jax.Array, mask: jax.Array) -> jax.Array:
  """Flips horizontally the examples where `mask` (B,) is true."""
  images = jnp.asarray(images)
  return jnp.where(jnp.asarray(mask)[:, None, None, None], images[:, :, ::-1], images)


def random_flip(images: jax.Array, rng: jax.Array, prob: float = 0.5) -> jax.Array:
  """`common.data.RandomFlip` per example: flip when u < prob, u ~ U[0, 1)."""
  return flip_where(images, jax.random.uniform(rng, (images.shape[0],)) < prob)


# ----------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------
def apply_brightness_contrast(images: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
  """(x - mean) * c + mean + b per example (mean over the whole image), clipped to [0, 1]; float32 out.

  The formula and float32 arithmetic of `common.data.RandomBrightnessContrast`, with b, c of shape (B,).
  """
  x = to_float(images)
  b = jnp.asarray(b, jnp.float32)[:, None, None, None]
  c = jnp.asarray(c, jnp.float32)[:, None, None, None]
  mean = x.mean((1, 2, 3), keepdims=True)
  return jnp.clip((x - mean) * c + mean + b, 0.0, 1.0)


def brightness_contrast(images: jax.Array, rng: jax.Array, brightness: float = 0.1,
                        contrast: float = 0.1) -> jax.Array:
  """`common.data.RandomBrightnessContrast` per example: c ~ U(1 - contrast, 1 + contrast), b ~ U(+-brightness)."""
  n = images.shape[0]
  k_c, k_b = jax.random.split(rng)
  c = 1.0 + jax.random.uniform(k_c, (n,), minval=-contrast, maxval=contrast)
  b = jax.random.uniform(k_b, (n,), minval=-brightness, maxval=brightness)
  return apply_brightness_contrast(images, b, c)


def normalize(images: jax.Array, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> jax.Array:
  """(x - mean) / std per channel in float32, as `common.data.Normalize` (uint8 input is `to_float`ed first)."""
  return (to_float(images) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
