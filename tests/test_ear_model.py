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


def test_backbone_scale_options_default_off():
  c = default.get_config()
  assert (c.model.backbone.scan_layers, c.model.backbone.remat) == (False, "none")
  # Unrolled runs keep the encoder kwargs (and so the exports) they had.
  assert model_lib.encoder_kwargs(c.model)["backbone_overrides"] == {}
  assert model_lib.encoder_kwargs(default.get_config("smoke").model)["backbone_overrides"] == {"depth": 1}
  # The scanned split is the trained-block count itself (a config reference), whichever side is set.
  c.backbone_trainable_blocks = 2
  assert c.model.backbone.trainable_blocks == 2
  c.model.backbone.trainable_blocks = 3
  assert c.backbone_trainable_blocks == 3


def _scanned_cfg(trainable_blocks, depth=3, **backbone):
  c = default.get_config("smoke")
  c.backbone_trainable_blocks = trainable_blocks
  c.model.backbone.depth = depth
  c.model.backbone.scan_layers = True
  for k, v in backbone.items():
    c.model.backbone[k] = v
  return c


def test_scanned_backbone_matches_unrolled():
  c = _scanned_cfg(1, remat="full")
  scanned = model_lib.from_config(c.model)
  assert scanned.encoder.backbone_overrides == {"depth": 3, "scan_layers": True, "scan_trainable_blocks": 1,
                                                "remat": "full"}
  c.model.backbone.scan_layers, c.model.backbone.remat = False, "none"
  unrolled = model_lib.from_config(c.model)
  x = jnp.asarray(np.random.default_rng(0).random((2, 56, 56, 3)), jnp.float32)
  v = jax.jit(unrolled.init)({"params": jax.random.key(0)}, x)
  abstract = jax.eval_shape(scanned.init, {"params": jax.random.key(0)}, x)
  bb = abstract["params"]["encoder"]["backbone"]
  assert bb["blocks_frozen"]["attn"]["qkv"]["kernel"].shape == (2, 384, 1152)
  assert bb["blocks"]["attn"]["qkv"]["kernel"].shape == (1, 384, 1152)
  # The unrolled backbone restacked (what init_from does through dinov2.adapt_layout) gives the same model.
  params = jax.tree.map(np.asarray, v["params"])
  params["encoder"]["backbone"] = model_lib.dinov2.adapt_layout(params["encoder"]["backbone"], bb)
  assert jax.tree.structure(params) == jax.tree.structure(abstract["params"])
  want = jax.jit(unrolled.apply)(v, x)
  got = jax.jit(scanned.apply)({"params": params}, x)
  for k in ("recon", "mu", "logvar"):
    np.testing.assert_allclose(got[k], want[k], atol=1e-5, err_msg=k)


@pytest.mark.parametrize("trainable,want", [
    (1, ["blocks", "norm"]),  # the last block's stack and the final norm
    (3, ["blocks", "norm"]),  # every block (one stack), embeddings frozen
    (-1, ["blocks", "cls_token", "mask_token", "norm", "patch_embed", "pos_embed"]),
    (0, []),
])
def test_freeze_patterns_follow_the_scanned_stacks(trainable, want):
  from ear_teacher import train  # pylint: disable=import-outside-toplevel
  from common import optim  # pylint: disable=import-outside-toplevel
  c = _scanned_cfg(trainable)
  model = model_lib.from_config(c.model)
  backbone = model_lib.dinov2.make(c.model.backbone.variant, **model.encoder.backbone_overrides)
  params = jax.eval_shape(model.init, {"params": jax.random.key(0)}, jnp.zeros((1, 56, 56, 3)))["params"]
  pats = train.backbone_freeze_patterns(trainable, 3, backbone.scan_trainable_blocks)
  mask = optim.trainable_mask(params, pats)
  prefix = "encoder/backbone/"
  got = sorted({k[len(prefix):].split("/")[0] for k, on in mask.items() if on and k.startswith(prefix)})
  assert got == want
  assert all(on for k, on in mask.items() if not k.startswith(prefix))  # head and decoder always train
  if trainable == 1:
    assert "blocks_frozen" in {k[len(prefix):].split("/")[0] for k in mask if k.startswith(prefix)}


def test_freeze_patterns_reject_a_stack_split_elsewhere():
  from ear_teacher import train  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="stacks its last 1 blocks apart"):
    train.backbone_freeze_patterns(2, 4, scan_split=1)  # e.g. a replayed config.json edited on one side only
  with pytest.raises(ValueError, match="backbone is one stack"):
    train.backbone_freeze_patterns(2, 4, scan_split=-1)
  # -1 and 0 need no split; the unrolled layout is unchanged
  assert train.backbone_freeze_patterns(-1, 4, scan_split=1) == ()
  assert train.backbone_freeze_patterns(0, 4, scan_split=-1) == ("encoder/backbone/.*",)
  assert train.backbone_freeze_patterns(2, 4)[-1] == "encoder/backbone/blocks_(0|1)/.*"
