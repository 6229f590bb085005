"""DSR super-resolution front end: shapes, torch-exact pixel shuffle and resizes, training signal, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import convert
from common import image_ops
from common import models
from facerec import dsr

torch = pytest.importorskip("torch")
F = torch.nn.functional
from benchmarks.torch_facerec import DSR as TorchDSR  # pylint: disable=wrong-import-position

TINY = dict(features=8, num_blocks=2)


def _init(module, size, seed=0):
  return jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, size, size, 3)))


@pytest.mark.parametrize("in_size", [16, 14])
def test_shapes_and_stages(in_size):
  module = dsr.DSR(in_size=in_size, out_size=112, **TINY)
  variables = _init(module, in_size)
  assert sorted(k for k in variables["params"] if k.startswith("upsample")) == ["upsample_0", "upsample_1",
                                                                                "upsample_2"]
  out = jax.jit(module.apply)(variables, jnp.full((2, in_size, in_size, 3), 0.5))
  assert out.shape == (2, 112, 112, 3) and out.dtype == jnp.float32
  assert dsr.num_upsamplings(16, 112) == dsr.num_upsamplings(14, 112) == 3
  assert dsr.num_upsamplings(28, 112) == 2 and dsr.num_upsamplings(112, 112) == 0


def test_default_config_size_and_bfloat16():
  module = dsr.DSR(dtype=jnp.bfloat16)
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  leaves = jax.tree.leaves(variables)
  # head 1,792 + 8 blocks x 73,856 + trunk_out 36,928 + 3 upsamplers x 147,712 + tail 1,731
  assert sum(v.size for v in leaves) == 1_074_435
  assert all(v.dtype == jnp.float32 for v in leaves)
  out = jax.eval_shape(module.apply, variables, jnp.zeros((3, 16, 16, 3)))
  assert out.shape == (3, 112, 112, 3) and out.dtype == jnp.float32


def test_wrong_input_size():
  module = dsr.DSR(**TINY)
  with pytest.raises(ValueError, match="DSR built for 16x16 inputs got 20x20; set model in_size or resize"):
    _init(module, 20)
  variables = _init(module, 16)
  with pytest.raises(ValueError, match="got 14x14"):
    module.apply(variables, jnp.zeros((1, 14, 14, 3)))
  with pytest.raises(ValueError, match="NHWC RGB"):
    module.apply(variables, jnp.zeros((1, 16, 16)))


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_matches_torch(r):
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 4 * r * r)).astype(np.float32)
  ref = F.pixel_shuffle(torch.from_numpy(x.transpose(0, 3, 1, 2)), r).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(np.asarray(dsr.pixel_shuffle(jnp.asarray(x), r)), ref)


def test_untrained_is_torch_bicubic():
  """The tail starts at zero, so an untrained DSR returns exactly the bicubic skip."""
  x = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  module = dsr.DSR(**TINY)
  out = np.asarray(module.apply(_init(module, 16), jnp.asarray(x)))
  ref = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(112, 112), mode="bicubic",
                      align_corners=False).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(out, ref, atol=1e-5)


TORCH_RULES = convert.Converter(rules=(
    convert.Rule(r"blocks\.(\d+)\.(conv[12])\.weight", r"params/blocks_\1/\2/kernel", convert.conv),
    convert.Rule(r"blocks\.(\d+)\.(conv[12])\.bias", r"params/blocks_\1/\2/bias"),
    convert.Rule(r"upsample\.(\d+)\.weight", r"params/upsample_\1/kernel", convert.conv),
    convert.Rule(r"upsample\.(\d+)\.bias", r"params/upsample_\1/bias"),
    convert.Rule(r"(head|trunk_out|tail)\.weight", r"params/\1/kernel", convert.conv),
    convert.Rule(r"(head|trunk_out|tail)\.bias", r"params/\1/bias"),
))


@pytest.mark.parametrize("in_size", [16, 14])
def test_forward_matches_torch_port(in_size):
  """A torch EDSR with nn.PixelShuffle converts with plain conv transposes (what a future converter would do)."""
  torch.manual_seed(0)
  net = TorchDSR(in_size=in_size, **TINY).eval()
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  module = dsr.DSR(in_size=in_size, **TINY)
  expected = convert.flatten(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, in_size, in_size, 3))))
  variables = convert.convert_state_dict(sd, TORCH_RULES, expected)
  x = np.random.default_rng(1).uniform(size=(2, in_size, in_size, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  out = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(x)))
  err = np.abs(out - ref).max()
  print(f"DSR {in_size}->112 vs torch: max abs err {err:.3g} (output scale {np.abs(ref).max():.3g})")
  bicubic = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(112, 112), mode="bicubic",
                          align_corners=False).numpy().transpose(0, 2, 3, 1)
  assert np.abs(ref - bicubic).max() > 0.05  # the learned branch contributes (torch's tail is not zero-initialised)
  assert err < 1e-5


def test_l1_training_reduces_loss():
  # blocky 32x32 images (4x4 constant patches) that bicubic upsampling of their 8x8 block means cannot reproduce;
  # 8 -> 28 runs the x4 upsampler and the final resize, like the default 16 -> 128 -> 112
  hr = np.kron(np.random.default_rng(0).uniform(size=(4, 8, 8, 3)), np.ones((1, 4, 4, 1))).astype(np.float32)
  lr = jnp.asarray(hr.reshape(4, 8, 4, 8, 4, 3).mean(axis=(2, 4)))
  target = image_ops.resize_bicubic_torch(jnp.asarray(hr), (28, 28), antialias=True)
  module = dsr.DSR(in_size=8, out_size=28, features=8, num_blocks=1)
  params = _init(module, 8)["params"]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.abs(module.apply({"params": p}, lr) - target)))(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for _ in range(30):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses


def test_registry_round_trip(tmp_path):
  kwargs = dict(in_size=14, **TINY)
  entry = models.get("dsr")
  assert entry.converter is None
  module = entry.build(**kwargs)
  variables = _init(module, 14)
  # non-zero tail so the saved values matter
  variables = jax.tree.map(lambda v: v + 0.01 * jax.random.normal(jax.random.key(1), v.shape), variables)
  models.save(str(tmp_path / "dsr"), "dsr", kwargs, variables)
  loaded_module, loaded = models.load("dsr", str(tmp_path / "dsr"))
  assert loaded_module == module
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 14, 14, 3)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(loaded_module.apply(loaded, x)), np.asarray(module.apply(variables, x)))
