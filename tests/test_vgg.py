"""VGG16 trunk: parity with a torch trunk laid out exactly like torchvision's `vgg16().features`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from common import convert
from common import models
from common.models import vgg

jax.config.update("jax_default_matmul_precision", "highest")

# torchvision cfg "D"; "M" = MaxPool2d(2, 2). torchvision is not installed here, so the layer order of
# `torchvision.models.vgg16().features` is rebuilt by hand; state-dict keys then match index for index.
_CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# `features` index of the ReLU closing each block.
_TORCH_TAP_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}


def torch_features():
  layers, c_in = [], 3
  for v in _CFG_D:
    if v == "M":
      layers.append(tnn.MaxPool2d(kernel_size=2, stride=2))
    else:
      conv = tnn.Conv2d(c_in, v, kernel_size=3, padding=1)
      # torchvision's own init keeps activations O(1) through all 13 layers (torch's default init shrinks them
      # ~3x per block); random biases so a mis-mapped bias shows up.
      tnn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
      tnn.init.normal_(conv.bias, std=0.1)
      layers += [conv, tnn.ReLU(inplace=True)]
      c_in = v
  return tnn.Sequential(*layers)


def torch_taps(features, x_nhwc):
  mean = torch.tensor(vgg.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(vgg.IMAGENET_STD).view(1, 3, 1, 1)
  x = (torch.from_numpy(x_nhwc).permute(0, 3, 1, 2) - mean) / std
  out = {}
  with torch.no_grad():
    for i, layer in enumerate(features):
      x = layer(x)
      for name, idx in _TORCH_TAP_INDEX.items():
        if i == idx:
          out[name] = x.permute(0, 2, 3, 1).numpy().copy()
  return out


@pytest.fixture(scope="module")
def converted():
  torch.manual_seed(0)
  features = torch_features().eval()
  state_dict = {f"features.{k}": v.numpy() for k, v in features.state_dict().items()}
  # A full torchvision vgg16 checkpoint also carries the classifier; the converter must drop it. The shapes
  # are the real ones, as zero-stride views so they cost no memory.
  for idx, shape in ((0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))):
    state_dict[f"classifier.{idx}.weight"] = np.broadcast_to(np.float32(0.01), shape)
    state_dict[f"classifier.{idx}.bias"] = np.zeros(shape[:1], np.float32)
  entry = models.get("vgg16")
  expected = convert.flatten(models.abstract_variables(entry))
  variables = convert.convert_state_dict(state_dict, entry.converter, expected)
  return features, variables


# Measured max|jax - torch| / max|torch| on CPU, fp32, torch seed 0 (64x64 | 48x80; tap scales 1-2):
#   relu1_2 2.9e-7 | 3.2e-7, relu2_2 8.2e-7 | 7.3e-7, relu3_3 1.6e-6 | 1.9e-6,
#   relu4_3 2.8e-6 | 2.8e-6, relu5_3 2.1e-6 | 2.2e-6   (worst over torch seeds 0-2: 2.8e-6).
# 1e-5 leaves ~3.5x headroom for other conv algorithms; a wrong transpose, bias or layer order is O(1).
_REL_TOL = 1e-5


@pytest.mark.parametrize("hw", [(64, 64), (48, 80)])
def test_parity_with_torch(converted, hw):
  features, variables = converted
  x = np.random.default_rng(1).uniform(0.0, 1.0, (2, *hw, 3)).astype(np.float32)
  ref = torch_taps(features, x)
  out = jax.jit(vgg.VGG16().apply)(variables, jnp.asarray(x))
  assert list(out) == list(vgg.TAPS)
  for name in vgg.TAPS:
    assert out[name].shape == ref[name].shape, name
    scale = np.abs(ref[name]).max()
    err = np.abs(np.asarray(out[name]) - ref[name]).max()
    assert scale > 0, name  # a dead tap would make the comparison vacuous
    assert err <= _REL_TOL * scale, f"{name}: max abs err {err:.3g} vs scale {scale:.3g}"


def test_params_read_like_torchvision(converted):
  _, variables = converted
  assert sorted(variables["params"], key=lambda k: int(k.split("_")[1])) == [
      f"features_{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
  assert variables["params"]["features_0"]["kernel"].shape == (3, 3, 3, 64)
  assert variables["params"]["features_28"]["kernel"].dtype == np.float32


def test_stops_after_deepest_tap(converted):
  _, variables = converted
  x = jnp.full((1, 32, 32, 3), 0.5)
  module = vgg.VGG16(taps=("relu2_2", "relu1_2"))
  params = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
  assert sorted(params) == ["features_0", "features_2", "features_5", "features_7"]
  # Deeper params in a full checkpoint are simply unused, so one converted checkpoint serves any tap set.
  out = jax.jit(module.apply)(variables, x)
  assert list(out) == ["relu1_2", "relu2_2"]
  np.testing.assert_array_equal(out["relu2_2"], jax.jit(vgg.VGG16().apply)(variables, x)["relu2_2"])


def test_bfloat16_compute_keeps_float32_params():
  x = jnp.full((1, 32, 32, 3), 0.5)
  module = vgg.VGG16(taps=("relu1_2",), dtype=jnp.bfloat16)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  assert variables["params"]["features_0"]["kernel"].dtype == jnp.float32
  assert jax.eval_shape(module.apply, variables, x)["relu1_2"].dtype == jnp.bfloat16


def test_unknown_tap_rejected():
  with pytest.raises(ValueError, match="taps"):
    jax.eval_shape(vgg.VGG16(taps=("relu3_1",)).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
