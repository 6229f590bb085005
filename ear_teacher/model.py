"""The ear VAE teacher: DINOv2 -> attention-pooling encoder -> (mu, logvar) -> z -> conv decoder.

    images [0,1] ──ImageNet norm──> DINOv2 ──patch+cls tokens──> EarEncoder ──> mu, logvar (latent 1024)
    z = mu + eps * exp(logvar / 2)   (AE mode: z = mu)   ──> Decoder ──> reconstruction [0,1], input size

`backbone + encoder` is the part that later transfers to detection (spec 000, phase 2): `encode()`
runs only that, and `export_encoder` in ear_teacher/train.py saves exactly those parameters.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.data import IMAGENET_MEAN, IMAGENET_STD
from common import models
from common.models import dinov2

_f32 = jnp.float32


class EarEncoder(nn.Module):
  """Attention over the backbone's tokens with a learned query, then an MLP to mu and logvar."""
  latent_dim: int = 1024
  hidden_dim: int = 1024
  num_heads: int = 8
  dtype: Any = "float32"

  @nn.compact
  def __call__(self, tokens):  # tokens: (B, 1 + N, D), normalised cls + patch tokens
    dtype = jnp.dtype(self.dtype)
    b, _, d = tokens.shape
    query = self.param("query", nn.initializers.normal(0.02), (1, 1, d), _f32)
    pooled = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=dtype, param_dtype=_f32,
                                             name="attn")(jnp.broadcast_to(query, (b, 1, d)).astype(dtype), tokens)
    # The cls token rides along as a residual so the pooled code starts from DINOv2's global summary.
    h = nn.LayerNorm(dtype=dtype, param_dtype=_f32, name="norm")(pooled[:, 0] + tokens[:, 0])
    h = nn.gelu(nn.Dense(self.hidden_dim, dtype=dtype, param_dtype=_f32, name="fc1")(h), approximate=False)
    h = nn.gelu(nn.Dense(self.hidden_dim, dtype=dtype, param_dtype=_f32, name="fc2")(h), approximate=False)
    mu = nn.Dense(self.latent_dim, dtype=dtype, param_dtype=_f32, name="mu")(h)
    # logvar starts near 0 and is clipped so exp() cannot overflow early in training.
    logvar = nn.Dense(self.latent_dim, dtype=dtype, param_dtype=_f32, kernel_init=nn.initializers.zeros,
                      name="logvar")(h)
    return mu.astype(_f32), jnp.clip(logvar.astype(_f32), -10.0, 10.0)


class Decoder(nn.Module):
  """z -> (s0, s0, C0) grid -> [2x upsample, conv3x3, GroupNorm, SiLU] per stage -> RGB in [0, 1]."""
  image_size: int = 224
  channels: Sequence[int] = (512, 256, 128, 64, 32)  # one 2x stage each: 224 = 7 * 2**5
  dtype: Any = "float32"

  @nn.compact
  def __call__(self, z):
    dtype = jnp.dtype(self.dtype)
    stages = len(self.channels)
    s0, rem = divmod(self.image_size, 2 ** stages)
    if rem or s0 == 0:
      raise ValueError(f"decoder: image_size {self.image_size} must be a multiple of 2**{stages} "
                       f"(one 2x upsampling per entry of decoder.channels={tuple(self.channels)})")
    x = nn.Dense(s0 * s0 * self.channels[0], dtype=dtype, param_dtype=_f32, name="proj")(z.astype(dtype))
    x = x.reshape(z.shape[0], s0, s0, self.channels[0])
    for i, ch in enumerate(self.channels):
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")  # nearest + conv: no checkerboard artefacts
      x = nn.Conv(ch, (3, 3), dtype=dtype, param_dtype=_f32, name=f"up{i}_conv")(x)
      x = nn.GroupNorm(num_groups=min(32, ch // 2), dtype=dtype, param_dtype=_f32, name=f"up{i}_norm")(x)
      x = nn.silu(x)
      x = nn.Conv(ch, (3, 3), dtype=dtype, param_dtype=_f32, name=f"up{i}_conv2")(x)
      x = nn.silu(x)
    x = nn.Conv(3, (3, 3), dtype=dtype, param_dtype=_f32, name="to_rgb")(x)
    return jax.nn.sigmoid(x.astype(_f32))


class EarTeacherEncoder(nn.Module):
  """The transferable part: images [0,1] -> DINOv2 tokens -> EarEncoder -> (mu, logvar), float32."""
  backbone_variant: str = "vits14"
  backbone_overrides: dict | None = None  # e.g. {"depth": 2, "num_register_tokens": 4}
  latent_dim: int = 1024
  hidden_dim: int = 1024
  num_heads: int = 8
  image_size: int = 224
  dtype: Any = "float32"

  @nn.compact
  def __call__(self, images):
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"the ear encoder expects {self.image_size}x{self.image_size} images, got "
                       f"{images.shape[1:3]}; resize in the input pipeline (config.image_size)")
    x = (images - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
    feats = dinov2.make(self.backbone_variant, dtype=self.dtype, **(self.backbone_overrides or {}),
                        name="backbone")(x)
    tokens = jnp.concatenate([feats["x_norm_clstoken"][:, None], feats["x_norm_patchtokens"]], axis=1)
    return EarEncoder(self.latent_dim, self.hidden_dim, self.num_heads, self.dtype, name="head")(tokens)


class EarVAE(nn.Module):
  encoder: EarTeacherEncoder
  decoder: Decoder
  ae_mode: bool = False  # z = mu: a plain autoencoder (spec 001, option B)

  def encode(self, images):
    return self.encoder(images)

  def __call__(self, images, *, train: bool = False):
    """Returns {"recon", "mu", "logvar", "z"}. Sampling uses the "reparam" rng (train and not ae_mode)."""
    mu, logvar = self.encoder(images)
    if train and not self.ae_mode:
      eps = jax.random.normal(self.make_rng("reparam"), mu.shape, mu.dtype)
      z = mu + eps * jnp.exp(0.5 * logvar)
    else:
      z = mu
    return {"recon": self.decoder(z), "mu": mu, "logvar": logvar, "z": z}


def encoder_kwargs(cfg) -> dict:
  """JSON-able constructor arguments of the encoder (also stored with an exported encoder)."""
  bb = cfg.backbone
  overrides = {k: v for k, v in (("depth", bb.depth), ("num_register_tokens", bb.registers)) if v}
  # Only what differs from DinoV2's defaults, so unrolled runs keep the kwargs (and exports) they had. The split
  # follows the trained blocks: a stacked leaf cannot be partly frozen (dinov2.scan_splits).
  if bb.get("scan_layers", False):
    overrides.update(scan_layers=True, scan_trainable_blocks=bb.trainable_blocks)
  if bb.get("remat", "none") != "none":
    overrides["remat"] = bb.remat
  return dict(backbone_variant=cfg.backbone.variant, backbone_overrides=overrides, latent_dim=cfg.latent_dim,
              hidden_dim=cfg.encoder_hidden, num_heads=cfg.encoder_heads, image_size=cfg.image_size,
              dtype=cfg.dtype)


def from_config(cfg) -> EarVAE:
  """`cfg` is config.model (see configs/ear_teacher/default.py)."""
  return EarVAE(encoder=EarTeacherEncoder(**encoder_kwargs(cfg)),
                decoder=Decoder(cfg.image_size, tuple(cfg.decoder_channels), cfg.dtype), ae_mode=cfg.ae_mode)


# An exported encoder loads anywhere with common.models.load("ear_teacher_encoder", DIR); it is native,
# so there is no PyTorch converter.
models.register(models.ModelEntry(
    name="ear_teacher_encoder", build=lambda **kw: EarTeacherEncoder(**kw), input_shape=lambda kw: (1, kw.get("image_size", 224), kw.get("image_size", 224), 3),
    converter=None, description="ear VAE teacher encoder (DINOv2 + attention head) -> (mu, logvar)"))
