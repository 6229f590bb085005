"""LaDeDa9 / Tiny-LaDeDa: parity with plain-torch models laid out like the official `networks/LaDeDa.py` and
`networks/Tiny_LaDeDa.py` (module names, hence state-dict keys, as in the released checkpoints)."""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from benchmarks.torch_ladeda import LaDeDa as TorchLaDeDa
from benchmarks.torch_ladeda import Tiny as TorchTiny
from benchmarks.torch_ladeda import preprocess as torch_preprocess
from common import convert
from common import models
from distill import models as dm

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


# ---------------------------------------------------------------------------------------------------------------
# Torch references: benchmarks/torch_ladeda.py (official module names, hence state-dict keys).

def randomize(model, seed):
  """Official conv init, random fc, and non-trivial BN affine params and running stats; eval mode."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.Conv2d):
        m.weight.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
      elif isinstance(m, tnn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.3)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(1234)
      elif isinstance(m, tnn.Linear):
        m.weight.normal_(0, 0.05)
        m.bias.normal_(0, 0.1)
  return model.eval()


def to_numpy_state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def convert_for(name, state_dict):
  entry = models.get(name)
  expected = convert.flatten(models.abstract_variables(entry))
  return convert.convert_state_dict(state_dict, entry.converter, expected)


def torch_ref(model, x_nhwc):
  """Float64 torch reference: (image logit (B,), patch map (B, h, w), fp32 official pooled logit or None).

  The reference runs in float64 because random weights make `fc` cancel heavily (sum |w f| is ~160x the logit
  for LaDeDa9), so fp32 torch itself is ~2e-5 (relative to the map) off the exact result. The image logit is the
  map mean; the official fp32 pooled path (an HxH average pool, square inputs only) is returned for comparison.
  """
  x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
  with torch.no_grad():
    patch = copy.deepcopy(model).double()(x.double(), pool=False)[:, 0].numpy()
    pooled = model(x, pool=True)[:, 0].numpy() if x.shape[2] == x.shape[3] else None
  return patch.mean((1, 2)), patch, pooled


def assert_close(got, ref, rel_tol, what, scale=None):
  """max|got - ref| <= rel_tol * scale, the scale defaulting to max|ref|."""
  got = np.asarray(got, np.float64)
  assert got.shape == ref.shape, (what, got.shape, ref.shape)
  scale = np.abs(ref).max() if scale is None else scale
  err = np.abs(got - ref).max()
  assert scale > 0, what
  assert err <= rel_tol * scale, f"{what}: max abs err {err:.3g} vs scale {scale:.3g} ({err / scale:.2g} rel)"


def check_parity(module, variables, model, x, rel_tol):
  ref_logit, ref_patch, pooled = torch_ref(model, x)
  logit, aux = jax.jit(module.apply)(variables, jnp.asarray(x))
  assert logit.dtype == jnp.float32 and aux["patch_logits"].dtype == jnp.float32
  # The image logit is a mean of the map, so its error is judged on the map's scale (the mean itself may be
  # near 0 after cancellation).
  scale = np.abs(ref_patch).max()
  assert_close(aux["patch_logits"], ref_patch, rel_tol, "patch logits")
  assert_close(logit, ref_logit, rel_tol, "image logit", scale)
  if pooled is not None:
    assert_close(logit, pooled.astype(np.float64), rel_tol, "image logit vs official pooled path", scale)
  assert np.ptp(ref_patch) > 0.1 * scale  # the map really varies across patches
  return aux["patch_logits"].shape


# ---------------------------------------------------------------------------------------------------------------
# LaDeDa9

@pytest.fixture(scope="module")
def ladeda():
  model = randomize(TorchLaDeDa(), seed=0)
  sd = to_numpy_state_dict(model)
  return model, sd, convert_for("ladeda9", sd)


def test_ladeda_state_dict_layout(ladeda):
  _, sd, variables = ladeda
  # The released checkpoints: 321 entries, 13,641,793 parameters (fc included).
  assert len(sd) == 321
  assert sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
             ) == 13_641_793
  assert variables["params"]["layer1_0"]["conv2"]["kernel"].shape == (3, 3, 64, 64)
  assert variables["params"]["layer3_0"]["conv2"]["kernel"].shape == (1, 1, 256, 256)
  assert variables["params"]["layer4_0"]["downsample_0"]["kernel"].shape == (1, 1, 1024, 2048)
  np.testing.assert_array_equal(variables["batch_stats"]["layer2_0"]["downsample_1"]["var"],
                                sd["layer2.0.downsample.1.running_var"])
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].T)


# Measured max|jax - torch_f64| / max|map| on CPU, fp32 jax (torch seed 0, input rng 1; maps ~23, features ~400,
# sum |w f| ~ 4000, so fp32 noise is ~1e-5: fp32 torch itself is 2.2e-5 | 1.3e-5 off the float64 map):
#   48x48 (5x5 map): patch map 1.4e-5, image logit 1.2e-6, vs the official fp32 pooled path 6.4e-6
#   40x56 (4x6 map): patch map 1.1e-5, image logit 4.2e-7
# 1e-4 leaves ~7x headroom; a wrong transpose, crop, BN mapping or preprocessing is O(1).
_LADEDA_REL_TOL = 1e-4


@pytest.mark.parametrize("hw", [(48, 48), (40, 56)])
def test_ladeda_parity_with_torch(ladeda, hw):
  model, _, variables = ladeda
  x = np.random.default_rng(1).normal(size=(2 if hw[0] == hw[1] else 1, *hw, 3)).astype(np.float32)
  shape = check_parity(dm.LaDeDa(), variables, model, x, _LADEDA_REL_TOL)
  assert shape == (x.shape[0], *dm.patch_map_size(*hw))


def test_ladeda_map_sizes_and_odd_input():
  module = dm.LaDeDa()
  for hw, want in (((256, 256), (31, 31)), ((224, 224), (27, 27)), ((256, 320), (31, 39)), ((10, 10), (1, 1))):
    out = jax.eval_shape(lambda s=hw: module.init_with_output(jax.random.key(0), jnp.zeros((1, *s, 3))))
    assert out[0][1]["patch_logits"].shape == (1, *want)
    assert dm.patch_map_size(*hw) == want
  with pytest.raises(ValueError, match="even"):  # NPR needs even sizes (the official code fails too)
    jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 33, 32, 3)))


def test_npr_matches_torch_interpolate():
  x = np.random.default_rng(2).normal(size=(1, 6, 10, 3)).astype(np.float32)
  ref = torch_preprocess(torch.from_numpy(x).permute(0, 3, 1, 2), "NPR").permute(0, 2, 3, 1).numpy()
  got = np.asarray(dm.npr(jnp.asarray(x)))
  np.testing.assert_array_equal(got, ref)
  assert np.all(got[:, ::2, ::2] == 0)


# ---------------------------------------------------------------------------------------------------------------
# Tiny-LaDeDa

def tiny(preprocess_type="right_diag", seed=3):
  model = randomize(TorchTiny(preprocess_type), seed=seed)
  sd = to_numpy_state_dict(model)
  return model, sd, convert_for("tiny_ladeda", sd)


# Measured max|jax - torch_f64| / max|map| on CPU, fp32 jax (maps ~1): right_diag 32x32 map 3.7e-7 / image 1.8e-8
# (vs official pooled 3.4e-8), 24x40 map 2.9e-7 / image 2.9e-8; raw, NPR, x/y_grad, left_diag at 32x32 <= 3e-7.
_TINY_REL_TOL = 1e-5


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_tiny_parity_with_torch(hw):
  model, sd, variables = tiny()
  assert len(sd) == 21 and sum(v.size for k, v in sd.items() if k.endswith(("weight", "bias"))) == 1297
  x = np.random.default_rng(4).normal(size=(2 if hw[0] == hw[1] else 1, *hw, 3)).astype(np.float32)
  shape = check_parity(dm.TinyLaDeDa(), variables, model, x, _TINY_REL_TOL)
  assert shape == (x.shape[0], *dm.patch_map_size(*hw, model="tiny_ladeda"))


@pytest.mark.parametrize("kind", ["raw", "NPR", "x_grad", "y_grad", "left_diag"])
def test_tiny_other_preprocessings(kind):
  model, _, variables = tiny(kind)
  x = np.random.default_rng(5).normal(size=(1, 32, 32, 3)).astype(np.float32)
  check_parity(dm.TinyLaDeDa(preprocess_type=kind), variables, model, x, _TINY_REL_TOL)


def test_tiny_train_mode_matches_torch_and_updates_stats():
  """Batch statistics in train mode, and running-stat updates with torch momenta 0.001 (stem) and 0.1."""
  model, _, variables = tiny(seed=6)
  model.train()
  x = np.random.default_rng(7).normal(size=(2, 24, 24, 3)).astype(np.float32)
  ref = model(torch.from_numpy(x).permute(0, 3, 1, 2), pool=False)[:, 0].detach().numpy()
  (_, aux), updates = dm.TinyLaDeDa().apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  assert_close(aux["patch_logits"], ref, _TINY_REL_TOL, "train-mode patch logits")
  stats = updates["batch_stats"]
  for flax_path, bn in ((("bn1",), model.bn1), (("layer1_0", "bn2"), model.layer1[0].bn2)):
    node = stats
    for p in flax_path:
      node = node[p]
    np.testing.assert_allclose(node["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    # torch updates the variance with the unbiased batch variance, Flax with the biased one: off by
    # momentum * var / (n - 1), n = batch * h * w (>= 2 * 10 * 10 here), well under 1e-3 relative.
    np.testing.assert_allclose(node["var"], bn.running_var.numpy(), rtol=1e-3)
  assert not np.allclose(stats["layer1_0"]["bn2"]["mean"], variables["batch_stats"]["layer1_0"]["bn2"]["mean"])


def test_normalize_input_and_bfloat16():
  _, _, variables = tiny()
  rgb = np.random.default_rng(8).uniform(size=(1, 16, 16, 3)).astype(np.float32)
  normed = (rgb - np.array(dm.IMAGENET_MEAN, np.float32)) / np.array(dm.IMAGENET_STD, np.float32)
  a, _ = dm.TinyLaDeDa(normalize_input=True).apply(variables, rgb)
  b, _ = dm.TinyLaDeDa().apply(variables, normed)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  module = dm.TinyLaDeDa(dtype=jnp.bfloat16)
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert abstract["params"]["conv1"]["kernel"].dtype == jnp.float32
  logit, aux = jax.eval_shape(module.apply, abstract, jnp.zeros((1, 16, 16, 3)))
  assert logit.dtype == jnp.float32 and aux["patch_logits"].dtype == jnp.float32


# ---------------------------------------------------------------------------------------------------------------
# Strict conversion

def test_wrong_or_missing_keys_raise():
  _, sd, _ = tiny()
  renamed = dict(sd)
  renamed["layer1.0.bnX.weight"] = renamed.pop("layer1.0.bn1.weight")
  with pytest.raises(convert.ConversionError, match="layer1.0.bnX.weight"):
    convert_for("tiny_ladeda", renamed)
  missing = {k: v for k, v in sd.items() if k != "bn1.running_var"}
  with pytest.raises(convert.ConversionError, match="batch_stats/bn1/var"):
    convert_for("tiny_ladeda", missing)
  reshaped = {**sd, "fc.weight": np.zeros((1, 32), np.float32)}  # the constructor's unused 8*4 fc
  with pytest.raises(convert.ConversionError, match="shape mismatch"):
    convert_for("tiny_ladeda", reshaped)
  with pytest.raises(convert.ConversionError, match="missing in checkpoint"):  # a Tiny checkpoint is not LaDeDa9
    convert_for("ladeda9", sd)


def test_ladeda_missing_block_raises(ladeda):
  _, sd, _ = ladeda
  dropped = {k: v for k, v in sd.items() if not k.startswith("layer3.5.")}
  with pytest.raises(convert.ConversionError, match="layer3_5"):
    convert_for("ladeda9", dropped)
