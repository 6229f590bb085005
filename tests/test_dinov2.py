"""DINOv2 (common.models.dinov2) against Hugging Face's PyTorch Dinov2Model / Dinov2WithRegistersModel, plus the
checkpoint formats the converter accepts.

HF's plain `Dinov2Model` resizes the pos-embed with `size=` while the hub models (our reference) use scale factors
(n + 0.1) / 37, so for plain models off 518 px the HF reference gets the hub's `interpolate_pos_encoding` patched in.
`Dinov2WithRegistersModel` already matches the hub register models. (The real hub code, facebookresearch/dinov2 at
b8931f7 without xFormers, was also run once against this port with random weights: S/14 and 2-block g/14, plain and
reg4, block_chunks 0 and 4, 518/224/224x336/560x700 px: <= 1.6e-5 on normalised tokens, <= 3.6e-5 on x_prenorm.)
"""

import functools
import math
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from common import convert
from common import models
from common.models import dinov2

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

HF_SHAPES = {"vits14": (384, 6), "vitb14": (768, 12), "vitg14": (1536, 24)}  # hidden size, heads


def _randomize(model):
  """Perturbs every weight so that nothing sits at its init (zero mask/register tokens, unit LayerScale...)."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      # Large tokens / pos-embed make the pos-embed resampling and the token layout show in the outputs.
      scale = 1.0 if "token" in name or "position" in name else 0.02 if p.ndim > 1 else 0.2
      p.add_(torch.randn(p.shape, generator=gen) * scale)


def _hub_interpolate_pos_encoding(self, embeddings, height, width):
  """facebookresearch/dinov2 `interpolate_pos_encoding` of the plain hub models (offset 0.1, no antialias)."""
  n = self.position_embeddings.shape[1] - 1
  if embeddings.shape[1] - 1 == n and height == width:
    return self.position_embeddings
  m, h0, w0 = int(math.sqrt(n)), height // 14, width // 14
  pos = self.position_embeddings.float()
  grid = F.interpolate(pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2), mode="bicubic", antialias=False,
                       scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m))
  assert grid.shape[-2:] == (h0, w0)
  return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)


def _hf_model(hidden, heads, depth, registers, swiglu=False):
  cfg = dict(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, image_size=518, patch_size=14,
             use_swiglu_ffn=swiglu)
  torch.manual_seed(0)
  if registers:
    model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **cfg))
  else:
    model = transformers.Dinov2Model(transformers.Dinov2Config(**cfg))
  _randomize(model.eval())
  return model


def _state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _convert(name, sd, **kwargs):
  entry = models.get(name)
  expected = convert.flatten(models.abstract_variables(entry, kwargs))
  return entry.build(**kwargs), convert.convert_state_dict(sd, entry.converter, expected)


# Block layouts: the unrolled blocks_i, one scanned stack, and two stacks (blocks_frozen + the last block in
# `blocks`, as when only the last block trains). Scanned variables come from the converted (unrolled) ones.
LAYOUTS = {"unrolled": {}, "scan": dict(scan_layers=True),
           "scan_split": dict(scan_layers=True, scan_trainable_blocks=1)}


@functools.lru_cache(maxsize=1)  # tests come grouped by model; keep one model alive at a time
def _hf_pair(variant, registers, depth):
  """(HF reference resampling like the hub, converted variables in the unrolled layout)."""
  hidden, heads = HF_SHAPES[variant]
  hf = _hf_model(hidden, heads, depth, registers, swiglu=variant == "vitg14")
  _, variables = _convert(_name(variant, registers), _state_dict(hf), depth=depth)
  if not registers:
    hf.embeddings.interpolate_pos_encoding = types.MethodType(_hub_interpolate_pos_encoding, hf.embeddings)
  return hf, variables


def _name(variant, registers):
  return f"dinov2_{variant}{'_reg' if registers else ''}"


def _pair(variant, registers, depth, layout="unrolled"):
  """(HF reference, jitted apply, variables) with the JAX model in `layout` (a LAYOUTS key)."""
  hf, variables = _hf_pair(variant, registers, depth)
  module = models.get(_name(variant, registers)).build(depth=depth, **LAYOUTS[layout])
  if module.scan_layers:
    variables = dinov2.pyloop_to_scan(variables, dinov2.scan_splits(depth, module.scan_trainable_blocks))
  return hf, jax.jit(module.apply, static_argnames="n_intermediate"), variables


@functools.lru_cache(maxsize=1)  # the layouts of one case run in a row against the same reference
def _reference(variant, registers, depth, hw):
  hf, _ = _hf_pair(variant, registers, depth)
  x = _images(1 if hw == SQUARE else 2, hw)
  ref = _run_hf(hf, x)
  r = 4 if registers else 0
  with torch.no_grad():  # the last two blocks' patch tokens after the final norm, as n_intermediate=2 gives them
    inter = [hf.layernorm(ref.hidden_states[-2 + i])[:, 1 + r:].numpy() for i in range(2)]
  return x, ref.last_hidden_state.numpy(), ref.hidden_states[-1].numpy(), inter


def _images(batch, hw, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, *hw, 3)).astype(np.float32)


def _run_hf(model, x, masks=None):
  with torch.no_grad():
    out = model(torch.from_numpy(x).permute(0, 3, 1, 2),
                bool_masked_pos=None if masks is None else torch.from_numpy(masks), output_hidden_states=True)
  return out


def _max_err(a, b):
  return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


# Max abs errors measured on a 2-core CPU (fp32; torch 2.13, jax 0.10.2), over cls / registers / patch tokens /
# the last two intermediates, and (in brackets) over x_prenorm, whose values are larger (unrolled layout; the
# scanned layouts are listed below the table):
#   S/14           518: 5.0e-6 (9.1e-6)   224: 4.9e-6 (8.3e-6)   224x336: 5.0e-6 (8.6e-6)
#   S/14 reg4      518: 4.5e-6 (8.6e-6)   224: 5.0e-6 (7.4e-6)   224x336: 4.3e-6 (8.1e-6)
#   B/14           518: 8.5e-6 (2.3e-5)   224: 7.3e-6 (2.3e-5)   224x336: 9.1e-6 (2.1e-5)
#   g/14 2 blocks                         224: 1.4e-5 (2.6e-5)   224x336: 1.1e-5 (2.8e-5)
#   g/14 reg4 2 bl.                                              224x336: 1.3e-5 (2.6e-5)
# Checked once and left out to keep the file near 60 s: g/14 2 blocks at 518: 1.1e-5 (3.2e-5); B/14 reg4 at all
# three sizes: <= 7.6e-6 (2.2e-5); g/14 reg4 at 224: 1.2e-5 (2.9e-5).
# Scanned layouts (one stack on every case, blocks_frozen + blocks on SPLIT_CASES): the same max errors as
# unrolled to all printed digits; a later run gave, in each of its layouts, S/14 518: 3.8e-6 (7.4e-6),
# B/14 224: 6.2e-6 (1.5e-5), g/14 reg4 2 bl. 224x336: 8.8e-6 (1.8e-5).
SQUARE, SMALL, NON_SQUARE = (518, 518), (224, 224), (224, 336)
CASES = [
    ("vits14", False, 12, SQUARE), ("vits14", False, 12, SMALL), ("vits14", False, 12, NON_SQUARE),
    ("vits14", True, 12, SQUARE), ("vits14", True, 12, SMALL), ("vits14", True, 12, NON_SQUARE),
    ("vitb14", False, 12, SQUARE), ("vitb14", False, 12, SMALL), ("vitb14", False, 12, NON_SQUARE),
    ("vitg14", False, 2, SMALL), ("vitg14", False, 2, NON_SQUARE),
    ("vitg14", True, 2, NON_SQUARE),
]
# Every case in the unrolled and the one-stack scanned layout; two stacks (the intermediates then span both) on
# one case per variant. The layouts of a case run in a row, so the torch reference runs once.
SPLIT_CASES = {("vits14", True, 12, NON_SQUARE), ("vitb14", False, 12, SMALL), ("vitg14", True, 2, NON_SQUARE)}
LAYOUT_CASES = [(*case, layout) for case in CASES for layout in LAYOUTS
                if layout != "scan_split" or case in SPLIT_CASES]


@pytest.mark.parametrize("variant,registers,depth,hw,layout", LAYOUT_CASES)
def test_parity_with_transformers(variant, registers, depth, hw, layout):
  _, apply, variables = _pair(variant, registers, depth, layout)
  x, seq, prenorm, inter = _reference(variant, registers, depth, hw)
  out = apply(variables, x, n_intermediate=2)
  r = 4 if registers else 0
  errs = {
      "cls": _max_err(out["x_norm_clstoken"], seq[:, 0]),
      "reg": _max_err(out["x_norm_regtokens"], seq[:, 1:1 + r]) if r else 0.0,
      "patch": _max_err(out["x_norm_patchtokens"], seq[:, 1 + r:]),
      "prenorm": _max_err(out["x_prenorm"], prenorm),
  }
  for i, got in enumerate(out["intermediates"]):
    errs[f"inter{i}"] = _max_err(got, inter[i].reshape(x.shape[0], hw[0] // 14, hw[1] // 14, -1))
  print(variant, registers, hw, layout, errs)
  assert out["x_norm_patchtokens"].shape == (x.shape[0], hw[0] // 14 * hw[1] // 14, HF_SHAPES[variant][0])
  assert max(errs.values()) <= 1e-4, errs


def test_plain_models_resample_like_the_hub_not_like_hf():
  # The parity cases compare against hub-style resampling; HF's own size-based resize is measurably different.
  emb = _hf_model(96, 2, 1, registers=False).embeddings
  tokens = torch.zeros(1, 1 + 16 * 16, 96)
  hf_style = emb.interpolate_pos_encoding(tokens, 224, 224)
  hub_style = _hub_interpolate_pos_encoding(emb, tokens, 224, 224)
  assert float((hf_style - hub_style).detach().abs().max()) > 1e-2


@pytest.mark.parametrize("registers", [False, True])
def test_masks_replace_patch_tokens(registers):
  hf = _hf_model(96, 2, 2, registers)
  module, variables = _convert("dinov2_vits14_reg" if registers else "dinov2_vits14", _state_dict(hf),
                               embed_dim=96, num_heads=2, depth=2)
  if not registers:
    hf.embeddings.interpolate_pos_encoding = types.MethodType(_hub_interpolate_pos_encoding, hf.embeddings)
  x = _images(2, SMALL, seed=1)
  masks = np.random.default_rng(2).random((2, 256)) < 0.4
  ref = _run_hf(hf, x, masks).last_hidden_state.numpy()
  apply = jax.jit(module.apply)
  out = apply(variables, x, masks=jnp.asarray(masks))
  r = 4 if registers else 0
  assert _max_err(out["x_norm_clstoken"], ref[:, 0]) <= 1e-4
  assert _max_err(out["x_norm_patchtokens"], ref[:, 1 + r:]) <= 1e-4
  assert _max_err(out["x_norm_clstoken"], apply(variables, x)["x_norm_clstoken"]) > 1e-2  # the mask token went in


# --- checkpoint formats, on a tiny model (the converter only sees names and shapes) -------------------------------


def _tiny_hf(registers, swiglu, depth=4):
  return _state_dict(_hf_model(96, 2, depth, registers, swiglu))


def _hub_from_hf(sd, depth, swiglu):
  """The hub (.pth) layout, written out independently of the converter (keys as in facebookresearch/dinov2)."""
  hub = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
         "mask_token": sd["embeddings.mask_token"],
         "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
         "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
         "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
  if "embeddings.register_tokens" in sd:
    hub["register_tokens"] = sd["embeddings.register_tokens"]
  for i in range(depth):
    src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
    hub[dst + "ls1.gamma"] = sd[src + "layer_scale1.lambda1"]
    hub[dst + "ls2.gamma"] = sd[src + "layer_scale2.lambda1"]
    for t in ("weight", "bias"):
      hub[dst + f"norm1.{t}"], hub[dst + f"norm2.{t}"] = sd[src + f"norm1.{t}"], sd[src + f"norm2.{t}"]
      hub[dst + f"attn.qkv.{t}"] = np.concatenate([sd[src + f"attention.{p}_proj.{t}"] for p in "qkv"])
      hub[dst + f"attn.proj.{t}"] = sd[src + f"attention.o_proj.{t}"]
      if swiglu:
        hub[dst + f"mlp.w12.{t}"] = np.concatenate([sd[src + f"mlp.{p}_proj.{t}"] for p in ("gate", "up")])
        hub[dst + f"mlp.w3.{t}"] = sd[src + f"mlp.down_proj.{t}"]
      else:
        hub[dst + f"mlp.fc1.{t}"], hub[dst + f"mlp.fc2.{t}"] = sd[src + f"mlp.fc1.{t}"], sd[src + f"mlp.fc2.{t}"]
  return hub


def _hf_v4_names(sd):
  """The transformers 4.x spelling (what the facebook/dinov2-* hub files hold)."""
  out = {}
  for k, v in sd.items():
    for new, old in (("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                     ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
                     ("mlp.down_proj", "mlp.weights_out")):
      k = k.replace(new, old)
    if ".mlp.up_proj." in k:
      continue
    if ".mlp.gate_proj." in k:
      k, v = k.replace("gate_proj", "weights_in"), np.concatenate([v, sd[k.replace("gate_proj", "up_proj")]])
    out[k] = v
  return out


def _leaves(variables):
  return convert.flatten(jax.tree.map(np.asarray, variables))


@pytest.mark.parametrize("registers,swiglu", [(False, False), (True, True)])
def test_checkpoint_formats_convert_identically(registers, swiglu):
  depth = 4
  name = ("dinov2_vitg14" if swiglu else "dinov2_vits14") + ("_reg" if registers else "")
  kw = dict(embed_dim=96, num_heads=2, depth=depth)
  hf = _tiny_hf(registers, swiglu, depth)
  hub = _hub_from_hf(hf, depth, swiglu)
  # block_chunks=2 (as in training configs): blocks.<chunk>.<global index>.*
  chunked = {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // 2}.{m[1]}.", k): v for k, v in hub.items()}
  assert "blocks.1.3.attn.qkv.weight" in chunked
  training = {**{f"teacher.backbone.{k}": v for k, v in chunked.items()},
              **{f"student.backbone.{k}": v + 1 for k, v in hub.items()},  # must be ignored: the teacher is used
              "teacher.dino_head.last_layer.weight": np.zeros((8, 96), np.float32)}
  formats = {"hub": hub, "chunked": chunked, "training": training, "ddp": {f"module.{k}": v for k, v in hub.items()},
             "hf_v4": _hf_v4_names(hf), "hf_task_model": {f"dinov2.{k}": v for k, v in hf.items()}}
  _, want = _convert(name, hf, **kw)
  want = _leaves(want)
  for fmt, sd in formats.items():
    got = _leaves(_convert(name, sd, **kw)[1])
    assert got.keys() == want.keys(), fmt
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=f"{fmt}: {k}")


def test_conversion_errors_list_the_offending_keys():
  kw = dict(embed_dim=96, num_heads=2, depth=2)
  hub = _hub_from_hf(_tiny_hf(False, False, 2), 2, False)
  bad = dict(hub, pos_embed=hub["pos_embed"][:, :257])
  del bad["blocks.1.ls2.gamma"]
  bad["blocks.0.attn.extra.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(convert.ConversionError) as e:
    _convert("dinov2_vits14", bad, **kw)
  msg = str(e.value)
  assert "params/blocks_1/ls2/gamma" in msg and "params/pos_embed (1, 257, 96) vs model (1, 1370, 96)" in msg
  assert "blocks.0.attn.extra.weight" in msg
  hf = _tiny_hf(False, False, 2)
  del hf["encoder.layer.0.attention.k_proj.weight"]  # q/v cannot be fused into qkv: they are reported
  with pytest.raises(convert.ConversionError, match="encoder.layer.0.attention.q_proj.weight"):
    _convert("dinov2_vits14", hf, **kw)
  with pytest.raises(convert.ConversionError, match="register_tokens"):  # a reg checkpoint into a plain model
    _convert("dinov2_vits14", _tiny_hf(True, False, 2), **kw)


# --- module behaviour --------------------------------------------------------------------------------------------


def test_registry_and_overrides():
  for variant, (d, _) in HF_SHAPES.items():
    for suffix, r in (("", 0), ("_reg", 4)):
      module = models.get(f"dinov2_{variant}{suffix}").build(depth=2)
      assert (module.embed_dim, module.depth, module.num_register_tokens) == (d, 2, r)
  assert models.get("dinov2_vitl14").build().embed_dim == 1024
  # ViT-g's SwiGLU width: the hub's 4096 (w12 8192 wide), the same formula as HF's use_swiglu_ffn.
  hf_cfg = transformers.Dinov2Config(hidden_size=1536, num_attention_heads=24, use_swiglu_ffn=True)
  assert transformers.models.dinov2.modeling_dinov2.Dinov2SwiGLUFFN(hf_cfg).gate_proj.out_features == 4096
  params = models.abstract_variables(models.get("dinov2_vitg14"), {"depth": 1})["params"]["blocks_0"]["mlp"]
  assert params["w12"]["kernel"].shape == (1536, 8192) and params["w3"]["kernel"].shape == (4096, 1536)


def test_input_checks_and_dtypes():
  kw = dict(embed_dim=96, num_heads=2, depth=2)
  module, variables = _convert("dinov2_vits14_reg", _tiny_hf(True, False, 2), **kw)
  x = jnp.asarray(_images(1, (28, 42)))
  with pytest.raises(ValueError, match="multiples of 14"):
    jax.eval_shape(module.apply, variables, jnp.zeros((1, 220, 224, 3)))
  with pytest.raises(ValueError, match="masks"):
    jax.eval_shape(functools.partial(module.apply, masks=jnp.zeros((1, 5), bool)), variables, x)
  out = jax.eval_shape(functools.partial(module.apply, n_intermediate=2), variables, x)
  assert out["x_norm_regtokens"].shape == (1, 4, 96) and out["x_prenorm"].shape == (1, 1 + 4 + 6, 96)
  assert [a.shape for a in out["intermediates"]] == [(1, 2, 3, 96)] * 2
  # bfloat16 compute keeps float32 params (the same checkpoint loads) and stays close to float32.
  abstract = models.abstract_variables(models.get("dinov2_vits14_reg"), dict(kw, dtype="bfloat16"))
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(abstract))
  ref = jax.jit(module.apply)(variables, x)["x_norm_patchtokens"]
  low = jax.jit(module.clone(dtype="bfloat16").apply)(variables, x)["x_norm_patchtokens"]
  assert low.dtype == jnp.bfloat16 and _max_err(low, ref) < 0.1
