"""Image resampling that reproduces PyTorch exactly, for ports whose weights were trained against torch ops.

`jax.image.resize(method="cubic")` is not `torch.nn.functional.interpolate(mode="bicubic")`: JAX uses the
Keys kernel (a=-0.5), drops out-of-image taps and antialiases by default, while torch uses a=-0.75 with
border-clamped taps and no low-pass filter (and a different formula again with `antialias=True`). Positional
embeddings resized the wrong way shift features measurably, so models such as DINOv2 use this module instead.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _fma(a, b, c) -> np.ndarray:
  """float32 a * b + c rounded once, as ATen's kernels are compiled (with FMA contraction)."""
  return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Cubic convolution kernel (Keys) with parameter `a`, support [-2, 2], evaluated like ATen in float32."""
  a = np.float32(a)
  x = np.abs(x).astype(np.float32)
  near = _fma(_fma(a + 2, x, -(a + 3)) * x, x, 1)
  far = _fma(_fma(_fma(a, x, -5 * a), x, 8 * a), x, -4 * a)
  return np.where(x < 1, near, np.where(x < 2, far, 0)).astype(np.float32)


@functools.lru_cache(maxsize=256)
def _weights(in_size: int, out_size: int, scale_factor: float | None, antialias: bool) -> np.ndarray:
  """The (out_size, in_size) float32 matrix of one separable pass.

  Follows ATen's CPU kernel (UpSampleKernel.cpp) step by step, including its float32 arithmetic and fused
  multiply-adds: source coordinates near 37 carry ~4e-6 of float32 rounding, and computing them in float64
  instead shows up as ~1e-5 differences in the output.
  """
  f32 = np.float32
  # area_pixel_compute_scale (align_corners=False): a given factor wins over the size ratio.
  scale = f32(1.0 / scale_factor) if scale_factor is not None else f32(in_size) / f32(out_size)
  w = np.zeros((out_size, in_size), np.float64)
  if not antialias:
    # upsample_bicubic2d: a=-0.75 on taps floor(src)-1 .. floor(src)+2, indices clamped to the border.
    src = _fma(scale, np.arange(out_size, dtype=f32) + f32(0.5), -0.5)
    idx = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - idx.astype(f32), f32(0), f32(1))
    taps = (_cubic(t + f32(1), -0.75), _cubic(t, -0.75), _cubic(f32(1) - t, -0.75), _cubic(f32(1) - t + f32(1), -0.75))
    for j, k in enumerate(taps):
      np.add.at(w, (np.arange(out_size), np.clip(idx - 1 + j, 0, in_size - 1)), k)
    return w.astype(f32)
  # _upsample_bicubic2d_aa (PIL-style): a=-0.5, the kernel widened by `scale` when downsampling, taps outside
  # the image dropped and the remaining weights renormalised.
  support = f32(2.0 * scale) if scale >= 1 else f32(2.0)
  inv = f32(1.0 / float(scale)) if scale >= 1 else f32(1.0)
  max_taps = int(np.ceil(support)) * 2 + 1
  for i in range(out_size):
    center = f32(float(scale) * (i + 0.5))
    lo = max(int(float(center - support) + 0.5), 0)
    size = min(max(min(int(float(center + support) + 0.5), in_size) - lo, 0), max_taps)
    x = (np.arange(lo, lo + size).astype(f32) - center).astype(np.float64) + 0.5
    k = _cubic((x * float(inv)).astype(f32), -0.5)
    total = f32(0)
    for v in k:  # sequential float32 sum, as in the kernel
      total += v
    w[i, lo:lo + size] = k / total if total != 0 else k
  return w.astype(f32)


def resize_bicubic_torch(x: jax.Array, out_hw: Sequence[int] | None = None, *,
                         scale_factor: float | Sequence[float] | None = None, antialias: bool = False) -> jax.Array:
  """Bicubic resize equal to `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`.

  Args:
    x: float array (..., H, W, C), e.g. NHWC or HWC. Computed in at least float32 and returned in x.dtype.
    out_hw: output (height, width); like torch, give exactly one of `out_hw` and `scale_factor`.
    scale_factor: a float or (sh, sw). As in torch, the output size is floor(in * s) but source coordinates are
      mapped with 1/s, not in/out, so `scale_factor=s` differs from `out_hw=floor(in * s)` unless in * s is whole.
    antialias: torch's `antialias=True` path (a=-0.5, kernel widened when downsampling, weights renormalised
      at the borders); `False` is the classic a=-0.75 kernel with border-clamped taps.

  Returns:
    (..., out_h, out_w, C) in x.dtype.

  The resize is two matrix products whose weights are built in numpy from the static shapes (cached), so it
  is jit-friendly and differentiable; on N(0, 1) data it matches torch's CPU kernel to about 1e-6.
  """
  if x.ndim < 3:
    raise ValueError(f"expected (..., H, W, C), got shape {x.shape}")
  if (out_hw is None) == (scale_factor is None):
    raise ValueError("give exactly one of out_hw and scale_factor")
  in_hw = x.shape[-3:-1]
  if scale_factor is not None:
    scales = tuple(scale_factor) if isinstance(scale_factor, Sequence) else (scale_factor, scale_factor)
    scales = tuple(float(s) for s in scales)
    out_hw = tuple(int(np.floor(n * s)) for n, s in zip(in_hw, scales))
  else:
    scales = (None, None)
    out_hw = tuple(int(n) for n in out_hw)
  if min(out_hw) < 1:
    raise ValueError(f"output size {out_hw} from input {in_hw} is empty")
  compute = jnp.promote_types(x.dtype, jnp.float32)
  wh, ww = (jnp.asarray(_weights(n, m, s, antialias), compute) for n, m, s in zip(in_hw, out_hw, scales))
  hi = jax.lax.Precision.HIGHEST  # never let TF32/bf16 passes change a resize
  y = jnp.einsum("pw,...hwc->...hpc", ww, x.astype(compute), precision=hi)  # width first, like ATen
  y = jnp.einsum("oh,...hpc->...opc", wh, y, precision=hi)
  return y.astype(x.dtype)
