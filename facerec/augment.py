"""VLR degradation on device: `facerec.data.Degradation` for a whole batch inside the jitted train step.

Same model as the host transform (`AddVLR`): per example, blur sigma ~ U(blur_sigma) and noise std ~
U(noise_std); blur + down-sampling as one (vlr, S) matrix per axis, D @ G(sigma) with D from
`facerec.data._down_matrix` and G a jnp port of `facerec.data._gauss_matrix`; two batched einsums; noise
N(0, 1) * std at VLR; clip. `degrade_with` takes the draws explicitly and matches `Degradation.apply` for
the same draw to float32 rounding (~1e-6); `degrade` draws them from one key with batched calls over the
batch axis, so the result does not depend on how the batch is sharded (jax_threefry_partitionable).
"""

import jax
import jax.numpy as jnp
import numpy as np

from common import augment
from facerec import data

# Explicit, not the global default: TF32 matmuls on GPU would put ~1e-3 errors in the VLR pixels, and these
# products are ~1e8 flops per batch of 64 faces, nothing next to the model.
_HIGHEST = jax.lax.Precision.HIGHEST


def gauss_matrix(n: int, sigma: jax.Array) -> jax.Array:
  """(B, n, n) Gaussian blur matrices for sigma (B,): `facerec.data._gauss_matrix` in float32.

  Taps past 4 sigma and past the border dropped, rows renormalised; sigma <= 0 is the identity.
  """
  sigma = jnp.asarray(sigma, jnp.float32)[:, None, None]
  d = (np.arange(n)[:, None] - np.arange(n)[None, :]).astype(np.float32)
  s = jnp.where(sigma > 0, sigma, 1.0)  # no 0/0 in the branch that jnp.where discards (NaN gradients, FPEs)
  w = jnp.exp(-0.5 * (d / s) ** 2) * (np.abs(d) <= 4 * s)
  w = w / w.sum(-1, keepdims=True)
  return jnp.where(sigma > 0, w, jnp.eye(n, dtype=jnp.float32))


def _blur_down(n: int, sigma: jax.Array, degradation: data.Degradation) -> jax.Array:
  """(B, vlr, n) rows of blur-then-down-sample: D @ G(sigma), D fixed (float64 on the host, cast once)."""
  down = data._down_matrix(n, degradation.vlr_size, degradation.down)  # pylint: disable=protected-access
  down = jnp.asarray(down, jnp.float32)
  return jnp.einsum("ij,bjk->bik", down, gauss_matrix(n, sigma), precision=_HIGHEST)


def _check_size(shape, degradation: data.Degradation) -> None:
  h, w = shape[1:3]
  if min(h, w) < degradation.vlr_size:  # static shapes: raised at trace time
    raise ValueError(f"Degradation to {degradation.vlr_size} px of {h}x{w} images: it would up-sample")


def degrade_with(hr: jax.Array, sigma: jax.Array, std: jax.Array, noise: jax.Array,
                 degradation: data.Degradation) -> jax.Array:
  """HR faces (B, H, W, C) in [0, 1] (or uint8) -> VLR (B, vlr, vlr, C) float32, for given draws.

  sigma, std: (B,) (or scalars); noise: N(0, 1) of shape (B, vlr, vlr, C). `Degradation.apply` per example.
  """
  hr = augment.to_float(hr)
  b, h, w = hr.shape[:3]
  _check_size(hr.shape, degradation)
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (b,))
  std = jnp.broadcast_to(jnp.asarray(std, jnp.float32), (b,))
  rows = _blur_down(h, sigma, degradation)
  cols = rows if w == h else _blur_down(w, sigma, degradation)
  vlr = jnp.einsum("bih,bhwc->biwc", rows, hr, precision=_HIGHEST)
  vlr = jnp.einsum("bjw,biwc->bijc", cols, vlr, precision=_HIGHEST)
  vlr = vlr + std[:, None, None, None] * jnp.asarray(noise, jnp.float32)
  return jnp.clip(vlr, 0.0, 1.0)


def draw(rng: jax.Array, batch: int, degradation: data.Degradation, channels: int = 3):
  """Per-example (sigma (B,), std (B,), noise (B, vlr, vlr, C)) from `degradation`'s ranges."""
  k_sigma, k_std, k_noise = jax.random.split(rng, 3)
  s_lo, s_hi = data._range(degradation.blur_sigma, "blur_sigma")  # pylint: disable=protected-access
  n_lo, n_hi = data._range(degradation.noise_std, "noise_std")  # pylint: disable=protected-access
  sigma = jax.random.uniform(k_sigma, (batch,), minval=s_lo, maxval=s_hi)
  std = jax.random.uniform(k_std, (batch,), minval=n_lo, maxval=n_hi)
  shape = (batch, degradation.vlr_size, degradation.vlr_size, channels)
  if n_hi > 0:
    # Drawn as (B, vlr^2 C) and reshaped: still batch-major (sharding-independent), but partitionable threefry
    # over a 4-D shape compiles ~3x slower than over 2-D (seconds on CPU).
    noise = jax.random.normal(k_noise, (batch, int(np.prod(shape[1:])))).reshape(shape)
  else:  # no noise configured: skip generating normals that would be multiplied by zero
    noise = jnp.zeros(shape, jnp.float32)
  return sigma, std, noise


def degrade(hr: jax.Array, rng: jax.Array, degradation: data.Degradation) -> jax.Array:
  """`facerec.data.AddVLR` for a batch (B, S, S, C) -> (B, vlr, vlr, C): a fresh draw per example."""
  _check_size(hr.shape, degradation)  # before drawing
  return degrade_with(hr, *draw(rng, hr.shape[0], degradation, hr.shape[-1]), degradation)
