"""common.image_ops.resize_bicubic_torch against torch.nn.functional.interpolate(mode="bicubic")."""

import functools

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import image_ops

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

# 37 x 37 is the DINOv2 pos-embed grid: 16/24 = 224/336 px (down), 40/50/74 = 560/700/1036 px (up).
OUT_SIZES = [(16, 16), (16, 24), (24, 16), (37, 37), (40, 50), (74, 74), (5, 3)]
# Measured on N(0, 1) data (torch 2.13 CPU): max abs error <= 1.1e-6 on every path below; the weights themselves
# agree to 1 float32 ulp (bit-exact with antialias). Computing the weights in float64 instead gives ~1e-5.
TOL = 1e-5


def _torch_resize(x, **kw):
  y = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), mode="bicubic", align_corners=False, **kw)
  return y.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def grid():
  return np.random.default_rng(0).standard_normal((2, 37, 37, 8)).astype(np.float32)


@pytest.mark.parametrize("out_hw", OUT_SIZES)
def test_scale_factor_path_matches_torch(grid, out_hw):
  # The plain DINOv2 hub models: scale factors (n + 0.1) / 37, not an output size.
  scale = tuple((n + 0.1) / 37 for n in out_hw)
  ref = _torch_resize(grid, scale_factor=scale)
  out = np.asarray(image_ops.resize_bicubic_torch(grid, scale_factor=scale))
  assert out.shape == ref.shape == (2, *out_hw, 8)
  np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("out_hw", OUT_SIZES)
def test_size_path_matches_torch(grid, out_hw, antialias):
  ref = _torch_resize(grid, size=out_hw, antialias=antialias)
  out = np.asarray(image_ops.resize_bicubic_torch(grid, out_hw, antialias=antialias))
  np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("kw", [dict(scale_factor=(0.5, 1.7)), dict(out_hw=(12, 20), antialias=True),
                                dict(out_hw=(61, 33))])
def test_non_square_hwc_under_jit(kw):
  x = np.random.default_rng(1).standard_normal((30, 45, 3)).astype(np.float32)
  torch_kw = {"size": kw["out_hw"]} if "out_hw" in kw else {"scale_factor": kw["scale_factor"]}
  ref = _torch_resize(x[None], antialias=kw.get("antialias", False), **torch_kw)[0]
  out = np.asarray(jax.jit(functools.partial(image_ops.resize_bicubic_torch, **kw))(x))
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


def test_scale_factor_differs_from_size():
  # Why the scale-factor path exists: at 16x16 the two mappings differ by up to ~0.2 grid cells.
  x = np.random.default_rng(2).standard_normal((37, 37, 4)).astype(np.float32)
  by_scale = image_ops.resize_bicubic_torch(x, scale_factor=16.1 / 37)
  by_size = image_ops.resize_bicubic_torch(x, (16, 16))
  assert by_scale.shape == by_size.shape and np.abs(np.asarray(by_scale - by_size)).max() > 0.1


def test_dtype_and_errors():
  x = np.ones((1, 8, 8, 2), np.float32)
  out = image_ops.resize_bicubic_torch(x.astype(jax.numpy.bfloat16), (4, 4), antialias=True)
  assert out.dtype == jax.numpy.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), 1.0)  # weights sum to one
  with pytest.raises(ValueError, match="exactly one"):
    image_ops.resize_bicubic_torch(x, (4, 4), scale_factor=0.5)
  with pytest.raises(ValueError, match="exactly one"):
    image_ops.resize_bicubic_torch(x)
  with pytest.raises(ValueError, match="empty"):
    image_ops.resize_bicubic_torch(x, scale_factor=0.1)
