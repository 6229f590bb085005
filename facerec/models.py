"""EdgeFace face-recognition backbones (EdgeNeXt + low-rank linears) in Flax linen, importing the released weights.

George et al., "EdgeFace: Efficient Face Recognition Model for Edge Devices" (IEEE T-BIOM 2024); official code
`otroshi/edgeface` (BSD-3-Clause), which builds timm's EdgeNeXt (Apache-2.0) and swaps its linears for low-rank
pairs. This is a reimplementation from the architecture description in shared/research/edgeface.md, not a
copy of either code base. The released weights are CC BY-NC-SA 4.0 (non-commercial, share-alike).

    module = EdgeFace(**VARIANTS["edgeface_xs_gamma_06"])      # or models.load("edgeface_xs_gamma_06", dir)
    emb = module.apply(variables, images)                      # images (B, 112, 112, 3) RGB, see "Input"
    emb.shape == (B, 512); emb.dtype == float32                # NOT L2-normalised (callers normalise for cosine)

Input: a 112x112 RGB face aligned to the ArcFace 5-point template, normalised as the original `ToTensor()` +
`Normalize([0.5]*3, [0.5]*3)`, i.e. `x / 255 * 2 - 1` in [-1, 1] (not the ImageNet mean/std of timm's default cfg).
That is what the module expects by default; `normalize_input=True` takes RGB in [0, 1] (the `common.data`
convention) and maps it to [-1, 1] here. Other sizes work if both sides are >= 32 px (maps: /4, /8, /16, /32,
floored, so 112 -> 28, 14, 7, 3); the released models were trained at 112.

Architecture (timm `edgenext_*` defaults, all LayerNorms eps 1e-6 over channels, exact GELU, no BatchNorm):
* stem: 4x4/4 conv -> LayerNorm. Stages 2-4 start with LayerNorm -> 2x2/2 conv (`downsample_0/1`).
* conv encoder (`ConvEncoder`): depthwise kxk conv (k = 3, 5, 7, 9 per stage) -> LayerNorm -> Mlp (C -> 4C, GELU,
  4C -> C) -> x layer-scale `gamma` -> + input.
* SDTA encoder (`SDTAEncoder`, the last block of stages 2-4): channels split into `scales` chunks of ceil(C/scales)
  (torch `chunk`), Res2Net-style chain of depthwise 3x3 convs over all but the last chunk; tokens (+ Fourier positional
  encoding in stage 2 only) -> `x + gamma_xca * XCA(LayerNorm(x))` -> LayerNorm -> Mlp -> x `gamma` -> + block input.
* XCA: qkv linear (bias) -> q, k, v as (B, heads, C/heads, N); q, k L2-normalised over tokens; channel-by-channel
  attention `softmax(q k^T * temperature)` with a learnable per-head temperature; `attn @ v` -> proj linear.
* head: global average pool -> LayerNorm -> `fc` to the 512-d embedding.
* `rank_ratio` (the `_gamma_` variants): every linear, including the head `fc` (the original's "head" name guard never
  fires in timm), is a `LowRankDense`: linear1 (in -> r, no bias) -> linear2 (r -> out, bias), no activation between,
  r = max(2, int(min(in, out) * rank_ratio)). Convolutions stay dense. `rank_ratio=None` gives plain Dense layers.

Drop-path/dropout rates are 0 in the original, so `train` changes nothing; it is accepted for the trainer API.
Initialisation follows timm (truncated normal std 0.02 for convs/linears, zero biases, layer scales 1e-6); only
matters when training from scratch.

`dtype` (e.g. "bfloat16") is the compute dtype of the convs, linears and the residual stream; params stay float32.
Kept in float32 where low precision would cost accuracy: LayerNorm statistics and normalisation (Flax upcasts,
rounding only the output), XCA's q/k L2 normalisation, q k^T and softmax (cosines scaled by a learned temperature,
then exponentiated), the depthwise convs' accumulation (as a GPU conv does; see `DepthwiseConv`), the bias,
layer-scale and positional-encoding adds (their gradients are sums over batch and space; see `Dense`), and the
whole head (pool, LayerNorm, fc). The embedding is float32. Measured bf16 vs float32, random weights, all four
variants: embedding cosine >= 0.99997, max error <= 0.8% of the largest component (tests/test_bf16.py).

Checkpoints are raw flat state dicts with keys `model.<timm key>` (the `model.` prefix, from the EdgeFace wrapper,
is optional here so a bare backbone state dict converts too). Keys map one to one:
`model.stages.1.blocks.2.xca.qkv.linear2.weight` -> `params/stages_1/blocks_2/xca/qkv/linear2/kernel` (transposed),
`...conv_dw.weight` (C, 1, k, k) -> `.../conv_dw/kernel` (k, k, 1, C), LayerNorm `weight` -> `scale`,
`xca.temperature` keeps its (heads, 1, 1) shape. Every released entry is a parameter (no buffers), so nothing is
ignored; the dynamically quantised `_q` checkpoints are not supported (they fail conversion with a key diff).

    python -m common.convert --model edgeface_xs_gamma_06 --src edgeface_xs_gamma_06.pt --dst /ckpts/edgeface_xs
    python -m common.convert --model edgeface_s_gamma_05 --src edgeface_s_gamma_05.pt --dst /ckpts/edgeface_s
    python -m common.convert --model edgeface_base --src edgeface_base.pt --dst /ckpts/edgeface_base
    python -m common.convert --model edgeface_xxs --src edgeface_xxs.pt --dst /ckpts/edgeface_xxs
"""

import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
from flax.linen import dtypes as flax_dtypes
import jax
import jax.numpy as jnp
import numpy as np

from common import convert
from common import models

_f32 = jnp.float32
_LN_EPS = 1e-6
_init = nn.initializers.truncated_normal(0.02)

# Variant -> EdgeFace kwargs (otroshi/edgeface `get_model` names; timm edgenext_x_small / edgenext_small /
# edgenext_base / edgenext_xx_small). All four keep timm's shared defaults (the EdgeFace fields' defaults):
# global_block_counts (0, 1, 1, 1), so the SDTA block is the last of stages 2-4 (blocks.2/8/2, XXS blocks.1/5/1);
# kernel_sizes (3, 5, 7, 9); d2_scales (2, 2, 3, 4). Base and XXS are not `_gamma_` models: dense linears.
VARIANTS = {
    "edgeface_xs_gamma_06": dict(dims=(32, 64, 100, 192), depths=(3, 3, 9, 3), heads=(4, 4, 4, 4), rank_ratio=0.6),
    "edgeface_s_gamma_05": dict(dims=(48, 96, 160, 304), depths=(3, 3, 9, 3), heads=(8, 8, 8, 8), rank_ratio=0.5),
    "edgeface_base": dict(dims=(80, 160, 288, 584), depths=(3, 3, 9, 3), heads=(8, 8, 8, 8), rank_ratio=None),
    "edgeface_xxs": dict(dims=(24, 48, 88, 168), depths=(2, 2, 6, 2), heads=(4, 4, 4, 4), rank_ratio=None),
}
MIN_SIZE = 32  # smaller inputs leave an empty stage-4 map


def low_rank(in_features: int, out_features: int, rank_ratio: float) -> int:
  """The original's rank rule, float truncation included (int(100 * 0.6) == 60, int(192 * 0.6) == 115)."""
  return max(2, int(min(in_features, out_features) * rank_ratio))


def _layer_norm(dtype, name):
  # Two-pass variance, as torch's layer_norm (the fast E[x^2] - E[x]^2 form loses ~1e-6 relative).
  return nn.LayerNorm(epsilon=_LN_EPS, use_fast_variance=False, dtype=dtype, param_dtype=_f32, name=name)


def _promote_all_but_bias(inputs, kernel, bias=None, dtype=None, inexact=True):
  """Flax `promote_dtype` for Dense / Conv that leaves the bias in its float32 param dtype (see `Dense`)."""
  inputs, kernel = flax_dtypes.promote_dtype(inputs, kernel, dtype=dtype, inexact=inexact)
  return inputs, kernel, bias


class Dense(nn.Dense):
  """nn.Dense (same parameters and output dtype) that adds its float32 bias before rounding to `dtype`.

  Flax casts the bias to `dtype`, so the bias gradient (the transpose of the broadcast add) sums the cotangent over
  batch and space in `dtype`. A bf16 sum stalls once it is ~256x its terms, and XLA's CPU backend does accumulate a
  bf16 reduction in bf16: the DSR's tail-bias gradient came out at 0.2x the float32 value, EdgeFace's at ~0.9x
  (whether a GPU reduction does depends on XLA's emitter). A float32 bias makes the add, and so that sum, float32
  on every backend; the rounding back to `dtype` fuses into the add.
  """
  promote_dtype: Any = _promote_all_but_bias

  def __call__(self, x):
    y = super().__call__(x)
    return y if self.dtype is None else y.astype(self.dtype)


class Conv(nn.Conv):
  """nn.Conv with `Dense`'s float32 bias add (same parameters and output dtype)."""
  promote_dtype: Any = _promote_all_but_bias

  def __call__(self, x):
    y = super().__call__(x)
    return y if self.dtype is None else y.astype(self.dtype)


class LowRankDense(nn.Module):
  """EdgeFace `LoRaLin`: linear1 (no bias) to `rank`, then linear2 (bias) to `features`."""
  features: int
  rank: int
  use_bias: bool = True
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x):
    x = Dense(self.rank, use_bias=False, kernel_init=_init, dtype=self.dtype, param_dtype=_f32, name="linear1")(x)
    return Dense(self.features, use_bias=self.use_bias, kernel_init=_init, dtype=self.dtype, param_dtype=_f32,
                 name="linear2")(x)


def _linear(in_features, features, rank_ratio, dtype, name, use_bias=True):
  if rank_ratio is None:
    return Dense(features, use_bias=use_bias, kernel_init=_init, dtype=dtype, param_dtype=_f32, name=name)
  return LowRankDense(features, low_rank(in_features, features, rank_ratio), use_bias, dtype, name=name)


class Mlp(nn.Module):
  hidden: int
  rank_ratio: Optional[float]
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    x = _linear(dim, self.hidden, self.rank_ratio, self.dtype, "fc1")(x)
    x = nn.gelu(x, approximate=False)
    return _linear(self.hidden, dim, self.rank_ratio, self.dtype, "fc2")(x)


def _layer_scale(module, name, dim, y, dtype):
  """gamma * y, the product in float32: gamma's gradient sums over batch and space (see `Dense`)."""
  return (module.param(name, nn.initializers.constant(1e-6), (dim,), _f32) * y).astype(dtype)


class DepthwiseConv(nn.Module):
  """k x k depthwise conv with zero 'same' padding and bias; parameters as nn.Conv's (kernel (k, k, 1, C), bias).

  On CPU, XLA's grouped convolution runs 30-80x slower than k*k shifted multiply-adds at EdgeFace's shapes
  (e.g. 48 ms vs ~1 ms for 32x14x14x64, k=5), so the CPU backend takes the shifts; accelerators keep the conv.
  Both compute the same function in any `dtype`: a low-precision conv accumulates in float32 and rounds once
  (XLA CPU upcasts a bf16 conv to f32; GPU convs accumulate in f32), so the shifts do too. Summing k*k = 81
  products in bfloat16 instead rounds at every add: ~10x the conv's error (2e-2 vs 2e-3 relative at k=9).
  """
  kernel_size: int
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x):
    c, k = x.shape[-1], self.kernel_size
    p = k // 2
    kernel = self.param("kernel", _init, (k, k, 1, c), _f32).astype(self.dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), _f32)  # added in float32, as in `Dense`
    x = x.astype(self.dtype)
    if jax.default_backend() == "cpu":
      h, w = x.shape[1:3]
      xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).astype(_f32)
      k32 = kernel.astype(_f32)  # products of bf16 values are exact in f32: only the sum rounds, once, below
      y = sum(xp[:, i:i + h, j:j + w, :] * k32[i, j, 0] for i in range(k) for j in range(k)).astype(self.dtype)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((p, p), (p, p)), feature_group_count=c,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (y + bias).astype(self.dtype)


class ConvEncoder(nn.Module):
  """EdgeNeXt conv encoder (timm `ConvBlock`): dw conv -> LN -> Mlp -> gamma -> + input."""
  kernel_size: int
  rank_ratio: Optional[float]
  expand_ratio: int = 4
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    y = DepthwiseConv(self.kernel_size, self.dtype, name="conv_dw")(x)
    y = _layer_norm(self.dtype, "norm")(y)
    y = Mlp(self.expand_ratio * dim, self.rank_ratio, self.dtype, name="mlp")(y)
    return x + _layer_scale(self, "gamma", dim, y, self.dtype)


def fourier_positions(h: int, w: int, hidden_dim: int = 32, temperature: float = 10000.0) -> np.ndarray:
  """(h, w, 2 * hidden_dim) sin/cos features of the normalised row/column index: [y features, x features],
  channel d of each half is sin (d even) or cos (d odd) of pos / temperature ** (2 * (d // 2) / hidden_dim)."""
  scale, eps = 2 * math.pi, 1e-6
  y = np.arange(1, h + 1, dtype=np.float64) / (h + eps) * scale
  x = np.arange(1, w + 1, dtype=np.float64) / (w + eps) * scale
  d = np.arange(hidden_dim)
  freq = temperature ** (2 * (d // 2) / hidden_dim)

  def feats(pos):
    a = pos[:, None] / freq
    return np.where(d % 2 == 0, np.sin(a), np.cos(a))

  fy = np.broadcast_to(feats(y)[:, None, :], (h, w, hidden_dim))
  fx = np.broadcast_to(feats(x)[None, :, :], (h, w, hidden_dim))
  return np.concatenate([fy, fx], axis=-1).astype(np.float32)


class PositionalEncodingFourier(nn.Module):
  """(h * w, dim) projected Fourier positions; SDTA runs it in float32 (one 1x1 conv per step, not per image)."""
  hidden_dim: int = 32
  dtype: Any = _f32

  @nn.compact
  def __call__(self, h: int, w: int, dim: int):
    pos = jnp.asarray(fourier_positions(h, w, self.hidden_dim), self.dtype)[None]
    pos = Conv(dim, (1, 1), kernel_init=_init, dtype=self.dtype, param_dtype=_f32, name="token_projection")(pos)
    return pos.reshape(h * w, dim)


class XCA(nn.Module):
  """Cross-covariance attention: a (C/heads) x (C/heads) attention map per head, over L2-normalised tokens."""
  heads: int
  rank_ratio: Optional[float]
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    if c % self.heads:
      raise ValueError(f"XCA: {c} channels do not split into {self.heads} heads")
    temperature = self.param("temperature", nn.initializers.ones, (self.heads, 1, 1), _f32)
    qkv = _linear(c, 3 * c, self.rank_ratio, self.dtype, "qkv")(x)
    qkv = qkv.reshape(b, n, 3, self.heads, c // self.heads).transpose(2, 0, 3, 4, 1)  # (3, B, heads, d, N)
    q, k, v = qkv[0], qkv[1], qkv[2]

    def l2n(t):  # torch F.normalize(dim=-1): t / max(|t|, 1e-12); in float32 for low-precision compute
      t = t.astype(_f32)
      return t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-12)

    attn = jnp.einsum("bhcn,bhdn->bhcd", l2n(q), l2n(k)) * temperature
    attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhcd,bhdn->bhcn", attn, v)  # (B, heads, d, N)
    out = out.transpose(0, 3, 1, 2).reshape(b, n, c)
    return _linear(c, c, self.rank_ratio, self.dtype, "proj")(out)


class SDTAEncoder(nn.Module):
  """EdgeNeXt split depth-wise transpose attention encoder (timm `SplitTransposeBlock`)."""
  scales: int
  heads: int
  use_pos_emb: bool
  rank_ratio: Optional[float]
  expand_ratio: int = 4
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    n_convs = max(1, self.scales - 1)
    width = math.ceil(c / (n_convs + 1))  # torch.chunk(n_convs + 1): chunks of ceil(C / n), the last one smaller
    if width * n_convs >= c:
      raise ValueError(f"SDTA: {c} channels cannot be chunked into {n_convs + 1} parts")
    chunks = jnp.split(x, [width * (i + 1) for i in range(n_convs)], axis=-1)
    outs, sp = [], chunks[0]
    for i in range(n_convs):
      if i:
        sp = sp + chunks[i]
      sp = DepthwiseConv(3, self.dtype, name=f"convs_{i}")(sp)
      outs.append(sp)
    outs.append(chunks[-1])
    y = jnp.concatenate(outs, axis=-1).reshape(b, h * w, c)

    if self.use_pos_emb:
      # Added in float32: the positions' gradient sums over the batch (see `Dense`).
      y = (y + PositionalEncodingFourier(dtype=_f32, name="pos_embd")(h, w, c)[None]).astype(self.dtype)
    attn = XCA(self.heads, self.rank_ratio, self.dtype, name="xca")(_layer_norm(self.dtype, "norm_xca")(y))
    y = y + _layer_scale(self, "gamma_xca", c, attn, self.dtype)
    y = y.reshape(b, h, w, c)

    y = _layer_norm(self.dtype, "norm")(y)
    y = Mlp(self.expand_ratio * c, self.rank_ratio, self.dtype, name="mlp")(y)
    return x + _layer_scale(self, "gamma", c, y, self.dtype)


class Stage(nn.Module):
  dim: int
  depth: int
  num_global: int
  heads: int
  scales: int
  kernel_size: int
  use_pos_emb: bool
  downsample: bool
  rank_ratio: Optional[float]
  expand_ratio: int = 4
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x):
    if self.downsample:
      x = _layer_norm(self.dtype, "downsample_0")(x)
      x = Conv(self.dim, (2, 2), strides=(2, 2), padding="VALID", kernel_init=_init, dtype=self.dtype,
                  param_dtype=_f32, name="downsample_1")(x)
    for j in range(self.depth):
      if j < self.depth - self.num_global:
        x = ConvEncoder(self.kernel_size, self.rank_ratio, self.expand_ratio, self.dtype, name=f"blocks_{j}")(x)
      else:
        x = SDTAEncoder(self.scales, self.heads, self.use_pos_emb, self.rank_ratio, self.expand_ratio, self.dtype,
                        name=f"blocks_{j}")(x)
    return x


class Head(nn.Module):
  """Global average pool -> LayerNorm -> fc, always in float32 whatever the trunk's compute dtype.

  The embedding is compared by cosine against fixed thresholds; a bf16 fc would round every component to 8
  bits, and the head is well under 1% of the FLOPs (one C x 512 matmul per image), so float32 is free."""
  features: int
  rank_ratio: Optional[float]

  @nn.compact
  def __call__(self, x):
    x = x.astype(_f32).mean(axis=(1, 2))
    x = _layer_norm(_f32, "norm")(x)
    return _linear(x.shape[-1], self.features, self.rank_ratio, _f32, "fc")(x)


class EdgeFace(nn.Module):
  """NHWC face images -> (B, embedding_dim) float32 embeddings (not normalised). Defaults: edgeface_xs_gamma_06."""
  dims: Sequence[int] = (32, 64, 100, 192)
  depths: Sequence[int] = (3, 3, 9, 3)
  heads: Sequence[int] = (4, 4, 4, 4)
  rank_ratio: Optional[float] = 0.6  # None: dense linears (edgeface_base / edgeface_xxs layout)
  global_block_counts: Sequence[int] = (0, 1, 1, 1)
  kernel_sizes: Sequence[int] = (3, 5, 7, 9)
  d2_scales: Sequence[int] = (2, 2, 3, 4)
  use_pos_emb: Sequence[bool] = (False, True, False, False)
  expand_ratio: int = 4
  embedding_dim: int = 512
  normalize_input: bool = False  # False: input already in [-1, 1] (official pipeline); True: RGB in [0, 1]
  dtype: Any = _f32  # compute dtype; params are float32, the embedding is returned in float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    del train  # no dropout / drop-path / BatchNorm in the original
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"EdgeFace expects NHWC RGB images (B, H, W, 3), got shape {images.shape}")
    if min(images.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"EdgeFace needs images of at least {MIN_SIZE}x{MIN_SIZE} (trained at 112x112), got "
                       f"{images.shape[1]}x{images.shape[2]}; resize or super-resolve low-resolution faces first")
    x = jnp.asarray(images, _f32)
    if self.normalize_input:
      x = x * 2.0 - 1.0
    x = x.astype(self.dtype)
    x = Conv(self.dims[0], (4, 4), strides=(4, 4), padding="VALID", kernel_init=_init, dtype=self.dtype,
                param_dtype=_f32, name="stem_0")(x)
    x = _layer_norm(self.dtype, "stem_1")(x)
    for i in range(4):
      x = Stage(self.dims[i], self.depths[i], self.global_block_counts[i], self.heads[i], self.d2_scales[i],
                self.kernel_sizes[i], self.use_pos_emb[i], downsample=i > 0, rank_ratio=self.rank_ratio,
                expand_ratio=self.expand_ratio, dtype=self.dtype, name=f"stages_{i}")(x)
    return Head(self.embedding_dim, self.rank_ratio, name="head")(x)


# --- converter: original (timm-in-wrapper) state-dict keys -> Flax paths -------------------------------------------
_M = r"(?:model\.)?"  # EdgeFace's TimmFRWrapperV2 keeps the timm net in `.model`; a bare timm state dict works too
_B = _M + r"stages\.(\d+)\.blocks\.(\d+)\."
_BT = r"params/stages_\1/blocks_\2/"
_LIN = r"(mlp|xca)\.(fc1|fc2|qkv|proj)\."

CONVERTER = convert.Converter(rules=(
    convert.Rule(_M + r"stem\.0\.weight", "params/stem_0/kernel", convert.conv),
    convert.Rule(_M + r"stem\.0\.bias", "params/stem_0/bias"),
    convert.Rule(_M + r"stem\.1\.weight", "params/stem_1/scale"),
    convert.Rule(_M + r"stem\.1\.bias", "params/stem_1/bias"),
    convert.Rule(_M + r"stages\.(\d+)\.downsample\.0\.weight", r"params/stages_\1/downsample_0/scale"),
    convert.Rule(_M + r"stages\.(\d+)\.downsample\.0\.bias", r"params/stages_\1/downsample_0/bias"),
    convert.Rule(_M + r"stages\.(\d+)\.downsample\.1\.weight", r"params/stages_\1/downsample_1/kernel", convert.conv),
    convert.Rule(_M + r"stages\.(\d+)\.downsample\.1\.bias", r"params/stages_\1/downsample_1/bias"),
    convert.Rule(_B + r"(gamma|gamma_xca)", _BT + r"\3"),
    # depthwise (C, 1, k, k) -> (k, k, 1, C): the same OIHW -> HWIO transpose as a dense conv
    convert.Rule(_B + r"conv_dw\.weight", _BT + "conv_dw/kernel", convert.conv),
    convert.Rule(_B + r"conv_dw\.bias", _BT + "conv_dw/bias"),
    convert.Rule(_B + r"convs\.(\d+)\.weight", _BT + r"convs_\3/kernel", convert.conv),
    convert.Rule(_B + r"convs\.(\d+)\.bias", _BT + r"convs_\3/bias"),
    convert.Rule(_B + r"pos_embd\.token_projection\.weight", _BT + "pos_embd/token_projection/kernel", convert.conv),
    convert.Rule(_B + r"pos_embd\.token_projection\.bias", _BT + "pos_embd/token_projection/bias"),
    convert.Rule(_B + r"(norm|norm_xca)\.weight", _BT + r"\3/scale"),
    convert.Rule(_B + r"(norm|norm_xca)\.bias", _BT + r"\3/bias"),
    convert.Rule(_B + r"xca\.temperature", _BT + "xca/temperature"),
    convert.Rule(_B + _LIN + r"linear([12])\.weight", _BT + r"\3/\4/linear\5/kernel", convert.linear),
    convert.Rule(_B + _LIN + r"linear2\.bias", _BT + r"\3/\4/linear2/bias"),
    convert.Rule(_B + _LIN + r"weight", _BT + r"\3/\4/kernel", convert.linear),  # dense (rank_ratio=None)
    convert.Rule(_B + _LIN + r"bias", _BT + r"\3/\4/bias"),
    convert.Rule(_M + r"head\.norm\.weight", "params/head/norm/scale"),
    convert.Rule(_M + r"head\.norm\.bias", "params/head/norm/bias"),
    convert.Rule(_M + r"head\.fc\.linear([12])\.weight", r"params/head/fc/linear\1/kernel", convert.linear),
    convert.Rule(_M + r"head\.fc\.linear2\.bias", "params/head/fc/linear2/bias"),
    convert.Rule(_M + r"head\.fc\.weight", "params/head/fc/kernel", convert.linear),
    convert.Rule(_M + r"head\.fc\.bias", "params/head/fc/bias"),
))

for _name, _cfg in VARIANTS.items():
  models.register(models.ModelEntry(
      name=_name,
      build=functools.partial(EdgeFace, **_cfg),
      input_shape=(1, 112, 112, 3),
      converter=CONVERTER,
      description=f"EdgeFace {_name} (EdgeNeXt, "
                  + (f"low-rank linears rank_ratio={_cfg['rank_ratio']}" if _cfg["rank_ratio"] else "dense linears")
                  + "): 112x112 face in [-1, 1] -> 512-d embedding",
  ))
