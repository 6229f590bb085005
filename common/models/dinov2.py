"""DINOv2 ViT backbones (facebookresearch/dinov2) in Flax linen, numerically equal to the PyTorch hub models.

Usage:
  module = dinov2.make("vitb14")                       # or models.load("dinov2_vitb14", converted_dir)
  out = module.apply(variables, images)                # images (B, H, W, 3), ImageNet-normalised, H, W % 14 == 0
  out["x_norm_clstoken"], out["x_norm_patchtokens"]    # (B, D), (B, H/14 * W/14, D)

The layer layout and names follow the hub's `DinoVisionTransformer` (`blocks_i/attn/qkv`, `ls1/gamma`, ...), and
the details that matter for parity are kept: exact (erf) GELU, two-pass LayerNorm variance (eps 1e-6), and the
positional-embedding resampling of the hub models, which differs between plain and register variants.

`CONVERTER` reads the official hub checkpoints, chunked (`blocks.c.i.*`) and training checkpoints
(`teacher.`/`module.`/`backbone.` prefixes), and Hugging Face `Dinov2Model` / `Dinov2WithRegistersModel` state
dicts (both the transformers 4.x and 5.x parameter names).

Scale (`scan_layers`, `remat`): `scan_layers=True` runs the blocks under `nn.scan`, so a 40-block ViT-g compiles
one block instead of 40, and its params are stacked on a leading axis: `blocks/attn/qkv/kernel` (depth, D, 3D)
instead of `blocks_i/attn/qkv/kernel`. A stacked leaf cannot be partly frozen, so with `scan_trainable_blocks`
= N (0 < N < depth) the blocks are two stacks, `blocks_frozen` (the first depth - N) and `blocks` (the last N).
Converted checkpoints stay in the unrolled layout; `pyloop_to_scan` / `scan_to_pyloop` / `adapt_layout` move
variables between the layouts. `remat` ("full" or "dots_saveable") recomputes block activations in the backward
pass instead of keeping them.
"""

import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common import convert
from common import image_ops
from common import models
from common import tree

_f32 = jnp.float32
_dense_init = nn.initializers.truncated_normal(0.02)  # near the reference init; pretrained weights replace it

# What the backward pass keeps of a block. "full" keeps only the block input (one extra forward per block);
# "dots_saveable" also keeps the weight matmuls (qkv, proj, fc1/fc2 or w12/w3) and recomputes the rest,
# including the attention QK^T / AV products, which have batch dims.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def attention_implementation(dtype, head_dim: int, backend: str | None = None) -> str | None:
  """`implementation` for jax.nn.dot_product_attention: "cudnn" where its fused kernel applies, else None (XLA).

  cuDNN raises instead of falling back (on float32, on a head dim over 128 or not a multiple of 8, without a
  GPU), so the choice is made here from static facts. `backend` defaults to jax.default_backend(), which is
  "gpu" for CUDA (and also for ROCm, which has no cuDNN: not a platform this project runs on).
  """
  backend = jax.default_backend() if backend is None else backend
  if backend == "gpu" and jnp.dtype(dtype) in _CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= 128:
    return "cudnn"
  return None


class Attention(nn.Module):
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    head_dim = d // self.num_heads
    qkv = nn.Dense(3 * d, dtype=self.dtype, param_dtype=_f32, kernel_init=_dense_init, name="qkv")(x)
    # Columns are [q | k | v], each head-major, as in the torch (B, N, 3, H, hd) reshape.
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.num_heads, head_dim), 2, 0)
    # cuDNN's fused kernel on GPU in bf16/fp16; otherwise XLA, whose logits and softmax stay float32.
    out = jax.nn.dot_product_attention(q, k, v, scale=head_dim ** -0.5,
                                       implementation=attention_implementation(q.dtype, head_dim))
    return nn.Dense(d, dtype=self.dtype, param_dtype=_f32, kernel_init=_dense_init, name="proj")(out.reshape(b, n, d))


class Mlp(nn.Module):
  hidden: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=_f32, kernel_init=_dense_init, name=name)
    h = nn.gelu(dense(self.hidden, "fc1")(x), approximate=False)  # torch nn.GELU() is the exact erf form
    return dense(x.shape[-1], "fc2")(h)


class SwiGLU(nn.Module):
  """`SwiGLUFFNFused` of ViT-g: w12 holds [gate | value] halves, out = w3(silu(gate) * value)."""
  hidden: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=_f32, kernel_init=_dense_init, name=name)
    gate, value = jnp.split(dense(2 * self.hidden, "w12")(x), 2, axis=-1)
    return dense(x.shape[-1], "w3")(nn.silu(gate) * value)


class LayerScale(nn.Module):
  @nn.compact
  def __call__(self, x):
    # 1e-5 is DINOv2's training init (`layerscale`); pretrained gammas come from the checkpoint.
    gamma = self.param("gamma", nn.initializers.constant(1e-5), (x.shape[-1],), _f32)
    return x * gamma.astype(x.dtype)


def _layer_norm(dtype, name):
  # Two-pass variance: DINOv2's residual stream carries high-norm outlier tokens, where E[x^2] - E[x]^2 loses digits.
  return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype, param_dtype=_f32, name=name)


class Block(nn.Module):
  num_heads: int
  mlp_ratio: float
  ffn: str
  dtype: Any

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    attn = Attention(self.num_heads, self.dtype, name="attn")
    x = x + LayerScale(name="ls1")(attn(_layer_norm(self.dtype, "norm1")(x)))
    if self.ffn == "swiglu":
      # Two thirds of the MLP width, rounded up to a multiple of 8: 4096 for ViT-g (D=1536).
      mlp = SwiGLU((int(int(d * self.mlp_ratio) * 2 / 3) + 7) // 8 * 8, self.dtype, name="mlp")
    else:
      mlp = Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")
    return x + LayerScale(name="ls2")(mlp(_layer_norm(self.dtype, "norm2")(x)))


class DinoV2(nn.Module):
  """DINOv2 ViT. Takes ImageNet-normalised NHWC images (mean 0.485/0.456/0.406, std 0.229/0.224/0.225)."""
  embed_dim: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  ffn: str = "mlp"  # "mlp" (fc1/GELU/fc2, ViT-S/B/L) or "swiglu" (w12/w3, ViT-g)
  num_register_tokens: int = 0  # 4 for the *_reg hub models; also selects their pos-embed resampling
  patch_size: int = 14
  img_size: int = 518  # pos_embed covers (img_size // patch_size)**2 patches (37 x 37 for the hub models)
  dtype: Any = "float32"  # compute dtype (name or jnp dtype); params are always float32
  scan_layers: bool = False  # nn.scan over the blocks, params stacked on a leading axis (module docstring)
  remat: str = "none"  # "none" | "full" | "dots_saveable": what the backward pass keeps (REMAT_POLICIES)
  # scan_layers only: 0 < N < depth scans `blocks_frozen` (depth - N blocks) then `blocks` (the last N), so the
  # last N blocks can train while the others stay frozen; any other value scans one `blocks` stack.
  scan_trainable_blocks: int = -1

  def _pos_embed(self, pos_embed, h, w):
    """The hub's `interpolate_pos_encoding` for an h x w patch grid, (1, 1 + h*w, D) float32."""
    n = pos_embed.shape[1] - 1
    if h * w == n and h == w:
      return pos_embed
    m = math.isqrt(n)
    grid = pos_embed[0, 1:].reshape(m, m, -1)
    if self.num_register_tokens:
      # Register models: size-based, antialiased.
      grid = image_ops.resize_bicubic_torch(grid, (h, w), antialias=True)
    else:
      # Plain models keep the dino kludge: scale factors (h + 0.1) / m. torch maps coordinates with that factor,
      # so this is *not* a resize to (h, w) (HF's Dinov2Model does the latter and differs off 518 px).
      grid = image_ops.resize_bicubic_torch(grid, scale_factor=((h + 0.1) / m, (w + 0.1) / m))
    assert grid.shape[:2] == (h, w), grid.shape
    return jnp.concatenate([pos_embed[:, :1], grid.reshape(1, h * w, -1)], axis=1)

  @nn.compact
  def __call__(self, images, *, masks=None, train: bool = False, n_intermediate: int = 0):
    """Runs the backbone.

    Args:
      images: (B, H, W, 3) float, ImageNet-normalised; H and W multiples of `patch_size` (non-square is fine).
      masks: optional (B, H/14 * W/14) bool; True patches are replaced by `mask_token` (iBOT masking).
      train: accepted for the common trainer interface; the model has no dropout or drop-path, so it changes
        nothing (freezing is the optimizer's business).
      n_intermediate: also return the outputs of the last n blocks.

    Returns:
      dict with `x_norm_clstoken` (B, D), `x_norm_regtokens` (B, R, D), `x_norm_patchtokens` (B, h*w, D),
      `x_prenorm` (B, 1 + R + h*w, D), the whole sequence before the final norm, and with n_intermediate > 0
      `intermediates`: a list of n (B, h, w, D) arrays, the last n blocks' patch tokens after the final norm
      (the hub's `get_intermediate_layers(x, n, reshape=True)`, channels last).
    """
    del train
    dtype = jnp.dtype(self.dtype)
    d, p, r = self.embed_dim, self.patch_size, self.num_register_tokens
    if images.ndim != 4 or images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f"DinoV2 expects (B, H, W, C) images with H and W multiples of {p}, got {images.shape}")
    if not 0 <= n_intermediate <= self.depth:
      raise ValueError(f"n_intermediate={n_intermediate} must be in [0, depth={self.depth}]")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}; choose from {', '.join(REMAT_POLICIES)}")
    b, h, w = images.shape[0], images.shape[1] // p, images.shape[2] // p
    n_pos = (self.img_size // p) ** 2

    # Stored with the torch shapes, so checkpoints convert without reshapes.
    cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), _f32)
    pos_embed = self.param("pos_embed", nn.initializers.truncated_normal(0.02), (1, 1 + n_pos, d), _f32)
    mask_token = self.param("mask_token", nn.initializers.zeros, (1, d), _f32)
    register_tokens = self.param("register_tokens", nn.initializers.normal(1e-6), (1, r, d), _f32) if r else None

    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=dtype, param_dtype=_f32,
                name="patch_embed")(images.astype(dtype))
    x = x.reshape(b, h * w, d)  # row-major over (h, w), like torch's flatten(2).transpose(1, 2)
    if masks is not None:
      if masks.shape != (b, h * w):
        raise ValueError(f"masks must be (B, n_patches) = {(b, h * w)}, got {masks.shape}")
      x = jnp.where(masks[..., None], mask_token.astype(dtype), x)
    x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(dtype), (b, 1, d)), x], axis=1)
    x = x + self._pos_embed(pos_embed, h, w).astype(dtype)
    if r:  # registers sit after cls and get no positional embedding
      x = jnp.concatenate([x[:, :1], jnp.broadcast_to(register_tokens.astype(dtype), (b, r, d)), x[:, 1:]], axis=1)

    block = Block
    if self.remat != "none":
      # CSE prevention only matters outside scan (jax.checkpoint docs); under scan it just costs speed.
      block = nn.remat(Block, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)
    make_block = lambda name: block(self.num_heads, self.mlp_ratio, self.ffn, dtype, name=name)
    outputs = []  # per block; None where a scanned stack emitted nothing
    if self.scan_layers:
      start = 0
      for name, n in scan_splits(self.depth, self.scan_trainable_blocks):
        # A stack emits its per-block outputs only when some of the last n_intermediate blocks are in it:
        # stacked ViT-g outputs are about 1 GB at batch 32 in bf16.
        emit = start + n > self.depth - n_intermediate

        def body(mdl, x, emit=emit):
          x = mdl(x)
          return x, (x if emit else None)

        x, ys = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True}, length=n)(make_block(name), x)
        outputs += [ys[i] for i in range(n)] if emit else [None] * n
        start += n
    else:
      for i in range(self.depth):
        x = make_block(f"blocks_{i}")(x)
        outputs.append(x)

    norm = _layer_norm(dtype, "norm")
    x_norm = norm(x)
    out = {
        "x_norm_clstoken": x_norm[:, 0],
        "x_norm_regtokens": x_norm[:, 1:1 + r],
        "x_norm_patchtokens": x_norm[:, 1 + r:],
        "x_prenorm": x,
    }
    if n_intermediate:
      out["intermediates"] = [norm(y[:, 1 + r:]).reshape(b, h, w, d) for y in outputs[-n_intermediate:]]
    return out


VARIANTS = {
    "vits14": dict(embed_dim=384, depth=12, num_heads=6),
    "vitb14": dict(embed_dim=768, depth=12, num_heads=12),
    "vitl14": dict(embed_dim=1024, depth=24, num_heads=16),
    "vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}


def make(variant: str, **overrides) -> DinoV2:
  """A DINOv2 module for a VARIANTS key; overrides replace fields (e.g. depth=2, num_register_tokens=4)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown DINOv2 variant {variant!r}; choose from {sorted(VARIANTS)}")
  return DinoV2(**{**VARIANTS[variant], **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint conversion. Every format is first rewritten to the hub layout (the keys of the official .pth files);
# the rules then map hub keys to Flax paths.

_HF_RENAMES = [  # Hugging Face Dinov2Model / Dinov2WithRegistersModel -> hub, for the keys that map one to one
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.(norm[12])\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.(?:o_proj|output\.dense)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.w12.\2"),  # transformers 4.x
    (r"encoder\.layer\.(\d+)\.mlp\.(?:weights_out|down_proj)\.(weight|bias)", r"blocks.\1.mlp.w3.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]
# Split HF tensors that the hub keeps fused: (regex with the layer index and the part, hub name, part order).
_HF_MERGES = [
    (r"encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(q_proj|k_proj|v_proj|query|key|value)\.(weight|bias)",
     "attn.qkv", (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"))),
    (r"encoder\.layer\.(\d+)\.mlp\.(gate_proj|up_proj)\.(weight|bias)", "mlp.w12", (("gate_proj",), ("up_proj",))),
]
# Wrappers around a backbone state dict: DDP, the training checkpoint's teacher (the evaluated model) and its
# backbone (dropping dino_head/ibot_head), HF task models. Each is stripped only when present.
_WRAPPERS = ("module.", "teacher.", "backbone.", "dinov2.", "dinov2_with_registers.")


def _from_hf(sd: dict) -> dict:
  out, parts = {}, {}
  for key, value in sd.items():
    for pattern, hub_name, order in _HF_MERGES:
      m = re.fullmatch(pattern, key)
      if m:
        rank = next(i for i, names in enumerate(order) if m.group(2) in names)
        parts.setdefault((f"blocks.{m.group(1)}.{hub_name}.{m.group(3)}", len(order)), {})[rank] = (key, value)
        break
    else:
      for pattern, target in _HF_RENAMES:
        m = re.fullmatch(pattern, key)
        if m:
          out[m.expand(target)] = value
          break
      else:
        out[key] = value  # left for the strict check to report
  for (hub_key, n), got in parts.items():
    if len(got) == n:
      out[hub_key] = np.concatenate([np.asarray(got[i][1]) for i in range(n)], axis=0)
    else:  # incomplete q/k/v or gate/up: keep the pieces so the error names them
      out.update(dict(got.values()))
  return out


def to_hub_layout(state_dict: dict) -> dict:
  """Rewrites any supported DINOv2 state dict to the hub's flat `blocks.i.*` layout (the converter's preprocess)."""
  sd = dict(state_dict)
  for prefix in _WRAPPERS:
    if any(k.startswith(prefix) for k in sd):
      sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  if any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd):
    sd = _from_hf(sd)
  # block_chunks > 0 nests blocks as blocks.<chunk>.<global index>; the index alone identifies the block.
  return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}


CONVERTER = convert.Converter(
    rules=[
        convert.Rule(r"(cls_token|pos_embed|mask_token|register_tokens)", r"params/\1"),
        convert.Rule(r"patch_embed\.proj\.weight", "params/patch_embed/kernel", convert.conv),
        convert.Rule(r"patch_embed\.proj\.bias", "params/patch_embed/bias"),
        convert.Rule(r"blocks\.(\d+)\.(norm[12])\.weight", r"params/blocks_\1/\2/scale"),
        convert.Rule(r"blocks\.(\d+)\.(norm[12])\.bias", r"params/blocks_\1/\2/bias"),
        convert.Rule(r"blocks\.(\d+)\.(attn|mlp)\.(qkv|proj|fc1|fc2|w12|w3)\.weight", r"params/blocks_\1/\2/\3/kernel",
                     convert.linear),
        convert.Rule(r"blocks\.(\d+)\.(attn|mlp)\.(qkv|proj|fc1|fc2|w12|w3)\.bias", r"params/blocks_\1/\2/\3/bias"),
        convert.Rule(r"blocks\.(\d+)\.(ls[12])\.gamma", r"params/blocks_\1/\2/gamma"),
        convert.Rule(r"norm\.weight", "params/norm/scale"),
        convert.Rule(r"norm\.bias", "params/norm/bias"),
    ],
    preprocess=to_hub_layout,
)


# ---------------------------------------------------------------------------------------------------------------
# Layouts. CONVERTER writes the unrolled `blocks_i` layout, and converted directories stay in it; a scanned model
# takes them through `adapt_layout` (or pyloop_to_scan directly). Exports of a scanned run hold the stacks.

_BLOCK_KEY = re.compile(r"blocks_(\d+)")
_STACKS = ("blocks_frozen", "blocks")  # in block order


def scan_splits(depth: int, trainable_blocks: int = -1) -> tuple[tuple[str, int], ...]:
  """The stacks of a scanned DinoV2 as ((name, number of blocks), ...) in block order."""
  if 0 < trainable_blocks < depth:
    return (("blocks_frozen", depth - trainable_blocks), ("blocks", trainable_blocks))
  return (("blocks", depth),)


def _on_params(variables, fn):
  """fn applied to the params: `variables` is a model's variables ({"params": ...}) or its params alone."""
  return {**variables, "params": fn(variables["params"])} if "params" in variables else fn(variables)


def _stack(leaves):
  if isinstance(leaves[0], jax.ShapeDtypeStruct):  # abstract trees (eval_shape) restack too
    if any(x.shape != leaves[0].shape for x in leaves):
      raise ValueError(f"cannot stack shapes {sorted({x.shape for x in leaves})}")
    return jax.ShapeDtypeStruct((len(leaves), *leaves[0].shape), leaves[0].dtype)
  return np.stack([np.asarray(x) for x in leaves])


def _unstack(leaf) -> list:
  if not leaf.shape:
    raise ValueError("a stacked parameter cannot be a scalar")
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return [jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)] * leaf.shape[0]
  return list(np.asarray(leaf))


def pyloop_to_scan(variables, splits):
  """Unrolled `blocks_0 .. blocks_{depth-1}` -> the stacks `splits` (as `scan_splits` gives them), each leaf
  stacked on a new leading axis in block order. Everything else passes through. Raises ValueError when the
  blocks do not fill the stacks exactly or differ in structure/shape."""
  def fn(params):
    blocks = {int(m[1]): v for k, v in params.items() if (m := _BLOCK_KEY.fullmatch(k))}
    depth = sum(n for _, n in splits)
    if sorted(blocks) != list(range(depth)):
      raise ValueError(f"pyloop_to_scan: stacks {splits} need blocks_0..blocks_{depth - 1}, "
                       f"got blocks {sorted(blocks)}")
    out = {k: v for k, v in params.items() if not _BLOCK_KEY.fullmatch(k)}
    start = 0
    for name, n in splits:
      flats = [tree.flatten(blocks[i]) for i in range(start, start + n)]
      if any(f.keys() != flats[0].keys() for f in flats):
        raise ValueError(f"pyloop_to_scan: blocks {start}..{start + n - 1} do not hold the same parameters")
      out[name] = tree.unflatten({k: _stack([f[k] for f in flats]) for k in flats[0]})
      start += n
    return out
  return _on_params(variables, fn)


def scan_to_pyloop(variables):
  """Scanned stacks (`blocks_frozen` then `blocks`; either may be absent) -> unrolled `blocks_i`. Unrolled
  variables come back unchanged."""
  def fn(params):
    if any(k in params for k in _STACKS) and any(_BLOCK_KEY.fullmatch(k) for k in params):
      raise ValueError("scan_to_pyloop: the params hold both stacks and unrolled blocks_i")
    out = {k: v for k, v in params.items() if k not in _STACKS}
    i = 0
    for name in _STACKS:
      if name not in params:
        continue
      flat = {k: _unstack(v) for k, v in tree.flatten(params[name]).items()}
      lengths = {len(v) for v in flat.values()}
      if len(lengths) != 1:
        raise ValueError(f"scan_to_pyloop: {name} leaves have different leading lengths {sorted(lengths)}")
      for j in range(lengths.pop()):
        out[f"blocks_{i}"] = tree.unflatten({k: v[j] for k, v in flat.items()})
        i += 1
    return out
  return _on_params(variables, fn)


def layout_of(variables) -> tuple[tuple[str, int], ...] | None:
  """The scanned stacks ((name, n), ...) of variables or params, None for the unrolled layout."""
  params = variables.get("params", variables)
  stacks = tuple((name, next(iter(tree.flatten(params[name]).values())).shape[0]) for name in _STACKS if name in params)
  return stacks or None


def adapt_layout(variables, reference):
  """`variables` (either layout) rewritten to the layout of `reference`, the target model's own tree (arrays or
  ShapeDtypeStructs), for a strict merge afterwards. Either may be a variables dict or its params alone.

  This is what a loader calls between reading a DINOv2 checkpoint and `tree.merge_strict`. Variables that do not
  restack cleanly (a checkpoint of another model) come back unchanged, so the strict merge names the keys.
  """
  target = layout_of(reference)
  if layout_of(variables) == target:
    return variables
  try:
    unrolled = scan_to_pyloop(variables)
    return unrolled if target is None else pyloop_to_scan(unrolled, target)
  except ValueError:
    return variables




def _builder(variant: str, fixed: dict):
  return lambda **kw: make(variant, **{**fixed, **kw})


for _variant in VARIANTS:
  for _suffix, _fixed in (("", {}), ("_reg", {"num_register_tokens": 4})):
    models.register(models.ModelEntry(
        name=f"dinov2_{_variant}{_suffix}",
        build=_builder(_variant, _fixed),
        input_shape=(1, 224, 224, 3),
        converter=CONVERTER,
        description=f"DINOv2 {_variant}{' with 4 registers' if _suffix else ''} (facebookresearch/dinov2 hub weights)",
        adapt=adapt_layout,
    ))
