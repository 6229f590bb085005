"""Ear VAE model and config presets (tiny shapes, no training)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.ear_teacher import default
from ear_teacher import model as model_lib


def tiny(ae_mode=False):
  c = default.get_config("smoke").model
  c.ae_mode = ae_mode
  return model_lib.from_config(c)


def test_shapes_and_reparameterisation():
  m = tiny()
  x = jnp.asarray(np.random.default_rng(0).random((2, 56, 56, 3)), jnp.float32)
  v = m.init({"params": jax.random.key(0), "reparam": jax.random.key(1)}, x, train=True)
  a = m.apply(v, x, train=True, rngs={"reparam": jax.random.key(2)})
  b = m.apply(v, x, train=True, rngs={"reparam": jax.random.key(3)})
  assert a["recon"].shape == x.shape and a["mu"].shape == (2, 64)
  assert float(a["recon"].min()) >= 0 and float(a["recon"].max()) <= 1
  assert not np.allclose(a["z"], b["z"])  # sampled: z = mu + eps * sigma
  np.testing.assert_allclose(a["mu"], b["mu"])
  ev = m.apply(v, x, train=False)
  np.testing.assert_array_equal(ev["z"], ev["mu"])  # eval decodes the mean


def test_ae_mode_is_deterministic():
  m = tiny(ae_mode=True)
  x = jnp.zeros((2, 56, 56, 3))
  v = m.init({"params": jax.random.key(0)}, x, train=True)  # no "reparam" rng needed at all
  out = m.apply(v, x, train=True)
  np.testing.assert_array_equal(out["z"], out["mu"])


def test_strategy_presets():
  assert default.get_config().loss.kl == 5e-6 and not default.get_config().model.ae_mode
  assert default.get_config("strategy=pure_recon").loss.kl == 1e-7
  assert default.get_config("strategy=heavy_reg").loss.kl == 1e-4
  ae = default.get_config("strategy=ae")
  assert ae.loss.kl == 0.0 and ae.model.ae_mode
  c = default.get_config()
  assert (c.loss.l1, c.loss.perceptual, c.loss.ssim, c.loss.edge, c.loss.contrastive, c.loss.center_weight) == (
      1.0, 1.0, 0.4, 0.1, 0.1, 3.0)
  assert c.model.latent_dim == 1024 and c.image_size == 224
  with pytest.raises(ValueError, match="strategy"):
    default.get_config("strategy=nope")


def test_wrong_image_size_is_a_clear_error():
  m = tiny()
  with pytest.raises(ValueError, match="expects 56x56"):
    m.init({"params": jax.random.key(0), "reparam": jax.random.key(0)}, jnp.zeros((1, 42, 42, 3)))


def test_bfloat16_compute_keeps_float32_params():
  c = default.get_config("smoke").model
  c.dtype = "bfloat16"
  m = model_lib.from_config(c)
  x = jnp.asarray(np.random.default_rng(0).random((2, 56, 56, 3)), jnp.float32)
  v = m.init({"params": jax.random.key(0), "reparam": jax.random.key(1)}, x)
  assert {leaf.dtype for leaf in jax.tree.leaves(v["params"])} == {jnp.dtype(jnp.float32)}
  out = m.apply(v, x)
  ref = model_lib.from_config(default.get_config("smoke").model).apply(v, x)
  assert out["mu"].dtype == jnp.float32 and out["recon"].dtype == jnp.float32  # heads cast back to float32
  # bf16 keeps ~3 significant digits: close to the fp32 model, not equal to it
  err = float(jnp.max(jnp.abs(out["recon"] - ref["recon"])))
  assert 0 < err < 0.05, err
