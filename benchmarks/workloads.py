"""Named benchmark workloads: what `python -m benchmarks.run NAME` times, in JAX and (where one exists) in PyTorch.

A `Workload` holds two factories, `make_jax(batch, device, variant, **overrides) -> (fn, args)` and the same for
torch (or None). The runner times `fn(*args)` and places nothing itself: a factory puts its arrays / modules on
`device` (a `jax.Device`, or a `torch.device`). `variant` is one of `variants` (None when the
workload has none); `overrides` are test-only shrinkers such as `depth=1`.

JAX `fn` may be a plain function or a `jax.jit` wrapper; pass the wrapper when it needs `donate_argnums` or static
arguments, since the runner lowers and compiles exactly that object (`fn.lower(*args).compile()`).

Adding a workload, e.g. a train step `state, metrics = step(state, batch)`:

  def _ear_vae_jax(batch, device, variant=None):
    state, step, data = ...                                   # TrainState, the step function, one batch of arrays
    # Donating the state lets XLA update the parameters in place, as in training.
    return jax.jit(step, donate_argnums=0), jax.device_put((state, data), device)

  register(Workload("ear_vae_train", "ear VAE train step (fwd + bwd + optimizer), 128 px", _ear_vae_jax,
                    stateful=True, default_batch=32))

`stateful=True` says that `fn` returns `(new_state, aux)`: the runner feeds `new_state` back as `args[0]` of the
next call (the donated old state is gone), for JAX and torch alike; a torch train step updating its model in place
just returns the model. `images_per_step` defaults to the batch size.
"""

import dataclasses
import functools
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import ear_vae
from common import convert
from common import models
from common.models import dinov2
from distill import models as ladeda_models
from facerec import dsr as dsr_lib
from facerec import losses as facerec_losses
from facerec import models as facerec_models


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  description: str
  make_jax: Callable[..., tuple[Callable, tuple]]
  make_torch: Callable[..., tuple[Callable, tuple]] | None = None
  variants: tuple[str, ...] = ()
  default_variant: str | None = None
  images_per_step: Callable[[int], int] = lambda batch: batch
  stateful: bool = False  # fn returns (new_state, aux) and new_state replaces args[0]
  dtype: str = "float32"  # compute dtype: picks the peak-FLOPs column for MFU
  default_batch: int = 8
  default_repeats: int = 10
  default_warmup: int = 2


_REGISTRY: dict[str, Workload] = {}


def register(workload: Workload) -> Workload:
  _REGISTRY[workload.name] = workload
  return workload


def get(name: str) -> Workload:
  if name not in _REGISTRY:
    raise KeyError(f"unknown workload {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)


# --- dinov2_forward -----------------------------------------------------------------------------------------------

_DINOV2 = {"s14_224": ("vits14", 224), "s14_518": ("vits14", 518), "b14_224": ("vitb14", 224),
           "b14_518": ("vitb14", 518)}  # variant -> (common.models.dinov2 variant, image side)


@functools.lru_cache(maxsize=1)  # make_jax and make_torch of one variant share it; one model alive at a time
def _hf_dinov2(variant: str, depth: int | None):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  arch = dinov2.VARIANTS[_DINOV2[variant][0]]
  cfg = transformers.Dinov2Config(hidden_size=arch["embed_dim"], num_hidden_layers=depth or arch["depth"],
                                  num_attention_heads=arch["num_heads"], image_size=518, patch_size=14,
                                  attn_implementation="sdpa")
  torch.manual_seed(0)
  return transformers.Dinov2Model(cfg).eval()


def _images(batch: int, variant: str) -> np.ndarray:
  side = _DINOV2[variant][1]
  return np.random.default_rng(0).standard_normal((batch, side, side, 3)).astype(np.float32)


def _dinov2_jax(batch: int, device: Any, variant: str, depth: int | None = None):
  # The HF model's random weights, converted: both frameworks compute the same network. (At 224 px the plain
  # models' pos-embed resampling differs slightly between HF and the hub port; the cost is the same.)
  name, kw = f"dinov2_{_DINOV2[variant][0]}", {"depth": depth} if depth else {}
  entry = models.get(name)
  sd = {k: v.detach().cpu().numpy() for k, v in _hf_dinov2(variant, depth).state_dict().items()}
  variables = convert.convert_state_dict(sd, entry.converter, convert.flatten(models.abstract_variables(entry, kw)))
  module = entry.build(**kw)

  def forward(variables, images):
    out = module.apply(variables, images)
    return out["x_norm_clstoken"], out["x_norm_patchtokens"]  # what HF returns: pooler_output, last_hidden_state

  return jax.jit(forward), jax.device_put((variables, _images(batch, variant)), device)


def _dinov2_torch(batch: int, device: Any, variant: str, depth: int | None = None):
  import torch  # pylint: disable=import-outside-toplevel

  model = _hf_dinov2(variant, depth).to(device)
  pixels = torch.from_numpy(_images(batch, variant)).permute(0, 3, 1, 2).contiguous().to(device)

  def forward(model, pixels):
    with torch.inference_mode():
      out = model(pixel_values=pixels)
    return out.pooler_output, out.last_hidden_state

  return forward, (model, pixels)


register(Workload(
    name="dinov2_forward",
    description=("DINOv2 inference forward on random images, fp32. JAX: common.models.dinov2 "
                 "(Flax, jitted); torch: transformers Dinov2Model, eval, inference_mode, sdpa attention; the same "
                 "random weights (HF init, converted). Variant: ViT size and image side (s14_518 = ViT-S/14, 518 px)."),
    make_jax=_dinov2_jax,
    make_torch=_dinov2_torch,
    variants=tuple(_DINOV2),
    default_variant="s14_224",
))


# --- ear_vae_train (benchmarks/ear_vae.py) ------------------------------------------------------------------------

register(Workload(
    name="ear_vae_train",
    description=("ear VAE teacher train step at 224 px, fp32: DINOv2-S/14 (random init, fully trainable) + attention "
                 "head -> 1024-d latent -> conv decoder; L1 (centre + focal weights), VGG16 perceptual "
                 "(relu1_2..relu4_3, random weights), SSIM, edge, KL, contrastive; AdamW lr 3e-4, clip 1.0. JAX: "
                 "ear_teacher + common.trainer.make_train_step, jitted, state donated; torch: the same network and "
                 "losses in plain torch (transformers Dinov2Model, sdpa), torch.optim.AdamW, clip_grad_norm_."),
    make_jax=ear_vae.make_jax,
    make_torch=ear_vae.make_torch,
    stateful=True,
    default_batch=16,
))


# --- LaDeDa9 / Tiny-LaDeDa: ladeda_forward, ladeda_train, tiny_ladeda_forward, tiny_ladeda_distill_train ---------
# JAX: distill.models (Flax); torch: benchmarks/torch_ladeda.py. Both load one set of random weights, drawn in numpy
# in the official torch layout and converted with distill.models.CONVERTER, so both compute the same function on the
# same inputs (tests/test_benchmarks.py checks it). The train steps are written out here, not taken from a trainer.
# Test-only overrides, LaDeDa9 only: `width` (stem width, 64) and `depth` (at most this many blocks per stage, of
# [3, 4, 6, 3]); all models: `image_size` (even).

_TEST_SIZE = 256  # official test-time input: the full 256x256 resize (LaDeDa9 map 31x31, Tiny 126x126)
_CROP = 224  # training crops (LaDeDa9 map 27x27, Tiny 110x110)
_FINETUNE = dict(lr=1e-4, weight_decay=1e-4)  # the official LaDeDa trainer's defaults (torch Adam: L2 decay)
_DISTILL = dict(lr=1e-3, alpha=0.05)  # loss = alpha MSE(pooled student map, teacher map) + (1 - alpha) BCE
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _ladeda_kwargs(name: str, width: int | None = None, depth: int | None = None) -> dict:
  """Build kwargs of `name`, shared by distill.models and benchmarks.torch_ladeda; Tiny ignores the shrinkers."""
  kw = {}
  if name == "ladeda9" and width:
    kw["width"] = width
  if name == "ladeda9" and depth:
    kw["layers"] = tuple(min(depth, n) for n in ladeda_models.LaDeDa.layers)
  return kw


@functools.lru_cache(maxsize=2)
def _ladeda_state_dict(name: str, width: int | None, depth: int | None) -> dict[str, np.ndarray]:
  """Random `name` weights as a torch state dict (official keys and shapes), read off the Flax variables' shapes.

  He fan-out conv kernels (the official init), fc N(0, 0.02), and BatchNorm affine parameters and running
  statistics away from their (1, 0, 0, 1) init, so that an eval-mode BN is not an identity.
  """
  rng = np.random.default_rng(0)
  abstract = convert.flatten(models.abstract_variables(models.get(name), _ladeda_kwargs(name, width, depth)))
  sd = {}
  for path, leaf in sorted(abstract.items()):
    _, *modules, last = path.split("/")
    prefix = ".".join(re.sub(r"_(\d+)$", r".\1", m) for m in modules)  # layer1_0/downsample_1 -> layer1.0.downsample.1
    shape = leaf.shape
    if last == "kernel" and len(shape) == 4:  # HWIO -> OIHW
      kh, kw, c_in, c_out = shape
      value = rng.standard_normal((c_out, c_in, kh, kw)) * np.sqrt(2 / (kh * kw * c_out))
    elif last == "kernel":  # Dense (in, out) -> Linear (out, in)
      value = 0.02 * rng.standard_normal(shape[::-1])
    elif last == "scale":
      value = rng.uniform(0.5, 1.5, shape)
    elif last == "bias":
      value = 0.1 * rng.standard_normal(shape)
    elif last == "mean":
      value = 0.3 * rng.standard_normal(shape)
      sd[prefix + ".num_batches_tracked"] = np.array(0, np.int64)
    else:  # var
      value = rng.uniform(0.5, 2.0, shape)
    sd[f"{prefix}.{_TORCH_LEAF[last]}"] = value.astype(np.float32)
  return sd


def _ladeda_variables(name: str, width: int | None, depth: int | None):
  entry = models.get(name)
  kw = _ladeda_kwargs(name, width, depth)
  return convert.convert_state_dict(_ladeda_state_dict(name, width, depth), entry.converter,
                                    convert.flatten(models.abstract_variables(entry, kw)))


def _ladeda_data(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """ImageNet-normalised-like NHWC images (the models' expected input) and 0/1 labels, float32."""
  rng = np.random.default_rng(1)
  return (rng.standard_normal((batch, size, size, 3)).astype(np.float32),
          rng.integers(0, 2, batch).astype(np.float32))


def adaptive_avg_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """torch F.adaptive_avg_pool2d on (B, H, W) maps: output cell i averages input rows [floor(i H / h),
  ceil((i + 1) H / h)), likewise columns; computed as (h, H) @ x @ (W, w) with exact averaging matrices."""
  def averaging(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
      lo, hi = i * n_in // n_out, -(-(i + 1) * n_in // n_out)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return m

  rows, cols = averaging(x.shape[1], out_hw[0]), averaging(x.shape[2], out_hw[1])
  return jnp.einsum("ih,bhw,jw->bij", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def _ladeda_forward_jax(name, batch, device, variant=None, width=None, depth=None, image_size=None):
  del variant
  module = models.get(name).build(**_ladeda_kwargs(name, width, depth))
  images, _ = _ladeda_data(batch, image_size or _TEST_SIZE)

  def forward(variables, images):
    logit, aux = module.apply(variables, images)  # eval mode: BN on running statistics
    return logit, aux["patch_logits"]

  return jax.jit(forward), jax.device_put((_ladeda_variables(name, width, depth), images), device)


def _ladeda_forward_torch(name, batch, device, variant=None, width=None, depth=None, image_size=None):
  del variant
  from benchmarks import torch_ladeda  # pylint: disable=import-outside-toplevel

  images, _ = _ladeda_data(batch, image_size or _TEST_SIZE)
  model = torch_ladeda.build(name, _ladeda_state_dict(name, width, depth), device, **_ladeda_kwargs(name, width, depth))
  return torch_ladeda.forward(model, images, device)


def _bce(logit, label):
  return optax.sigmoid_binary_cross_entropy(logit, label).mean()


def _train_state(variables, tx) -> dict:
  return dict(params=variables["params"], batch_stats=variables["batch_stats"],
              opt_state=tx.init(variables["params"]))


def _ladeda_train_jax(batch, device, variant=None, width=None, depth=None, image_size=None):
  del variant
  module = ladeda_models.LaDeDa(**_ladeda_kwargs("ladeda9", width, depth))
  # torch Adam's weight_decay is L2 added to the gradient before the moments, i.e. this chain (not adamw).
  tx = optax.chain(optax.add_decayed_weights(_FINETUNE["weight_decay"]), optax.adam(_FINETUNE["lr"]))

  def train_step(state, images, labels):
    def loss_fn(params):
      (logit, _), new = module.apply({"params": params, "batch_stats": state["batch_stats"]}, images, train=True,
                                     mutable=["batch_stats"])
      return _bce(logit, labels), new["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return dict(params=optax.apply_updates(state["params"], updates), batch_stats=batch_stats,
                opt_state=opt_state), loss

  images, labels = _ladeda_data(batch, image_size or _CROP)
  state = _train_state(_ladeda_variables("ladeda9", width, depth), tx)
  return jax.jit(train_step, donate_argnums=0), jax.device_put((state, images, labels), device)


def _ladeda_train_torch(batch, device, variant=None, width=None, depth=None, image_size=None):
  del variant
  from benchmarks import torch_ladeda  # pylint: disable=import-outside-toplevel

  images, labels = _ladeda_data(batch, image_size or _CROP)
  model = torch_ladeda.build("ladeda9", _ladeda_state_dict("ladeda9", width, depth), device,
                             **_ladeda_kwargs("ladeda9", width, depth))
  return torch_ladeda.finetune(model, images, labels, device, **_FINETUNE)


def _distill_train_jax(batch, device, variant=None, width=None, depth=None, image_size=None):
  del variant
  student, teacher = ladeda_models.TinyLaDeDa(), ladeda_models.LaDeDa(**_ladeda_kwargs("ladeda9", width, depth))
  tx = optax.adam(_DISTILL["lr"])
  alpha = _DISTILL["alpha"]

  def train_step(state, images, labels, teacher_variables):
    _, t_aux = teacher.apply(teacher_variables, images)  # eval mode, not differentiated: a step argument
    t_map = t_aux["patch_logits"]

    def loss_fn(params):
      (logit, aux), new = student.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                                        train=True, mutable=["batch_stats"])
      mse = jnp.mean((adaptive_avg_pool(aux["patch_logits"], t_map.shape[1:]) - t_map) ** 2)
      return alpha * mse + (1 - alpha) * _bce(logit, labels), new["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return dict(params=optax.apply_updates(state["params"], updates), batch_stats=batch_stats,
                opt_state=opt_state), loss

  images, labels = _ladeda_data(batch, image_size or _CROP)
  state = _train_state(_ladeda_variables("tiny_ladeda", None, None), tx)
  args = (state, images, labels, _ladeda_variables("ladeda9", width, depth))
  return jax.jit(train_step, donate_argnums=0), jax.device_put(args, device)


def _distill_train_torch(batch, device, variant=None, width=None, depth=None, image_size=None):
  del variant
  from benchmarks import torch_ladeda  # pylint: disable=import-outside-toplevel

  images, labels = _ladeda_data(batch, image_size or _CROP)
  student = torch_ladeda.build("tiny_ladeda", _ladeda_state_dict("tiny_ladeda", None, None), device)
  teacher = torch_ladeda.build("ladeda9", _ladeda_state_dict("ladeda9", width, depth), device,
                               **_ladeda_kwargs("ladeda9", width, depth))
  return torch_ladeda.distill(student, teacher, images, labels, device, **_DISTILL)


_SAME_WEIGHTS = ("the same random weights (numpy, official torch layout, converted with distill.models.CONVERTER) "
                 "and inputs in both")

register(Workload(
    name="ladeda_forward",
    description=("LaDeDa9 inference at 256 px (the official test input), fp32, eval mode; output: image logit and "
                 f"31x31 patch-logit map. JAX: distill.models.LaDeDa, jitted; torch: benchmarks.torch_ladeda, "
                 f"inference_mode; {_SAME_WEIGHTS}."),
    make_jax=functools.partial(_ladeda_forward_jax, "ladeda9"),
    make_torch=functools.partial(_ladeda_forward_torch, "ladeda9"),
    default_batch=32,
))

register(Workload(
    name="ladeda_train",
    description=("LaDeDa9 fine-tuning train step on 224 px crops, fp32: BCE-with-logits on the mean-pooled image "
                 "logit, every parameter trainable, BatchNorm in train mode (batch statistics, running stats "
                 "updated), Adam lr 1e-4 with L2 weight decay 1e-4 (torch Adam weight_decay; JAX "
                 "chain(add_decayed_weights, adam)). JAX: jitted, state donated; torch: torch.optim.Adam; "
                 f"{_SAME_WEIGHTS}."),
    make_jax=_ladeda_train_jax,
    make_torch=_ladeda_train_torch,
    stateful=True,
    default_batch=32,
))

register(Workload(
    name="tiny_ladeda_forward",
    description=("Tiny-LaDeDa inference at 256 px, fp32, eval mode; output: image logit and 126x126 patch-logit "
                 f"map. JAX: distill.models.TinyLaDeDa, jitted; torch: benchmarks.torch_ladeda, inference_mode; "
                 f"{_SAME_WEIGHTS}."),
    make_jax=functools.partial(_ladeda_forward_jax, "tiny_ladeda"),
    make_torch=functools.partial(_ladeda_forward_torch, "tiny_ladeda"),
    default_batch=256,
))

register(Workload(
    name="tiny_ladeda_distill_train",
    description=("Tiny-LaDeDa distillation train step on 224 px crops, fp32: frozen LaDeDa9 teacher forward in "
                 "eval mode inside the step (27x27 map), student in train mode (BatchNorm batch statistics, running "
                 "stats updated); loss 0.05 MSE(student 110x110 map adaptive-average-pooled to 27x27, teacher map) "
                 "+ 0.95 BCE-with-logits(student image logit, label); Adam lr 1e-3. JAX: jitted, state donated, "
                 "teacher variables a step argument; torch: teacher under no_grad, F.adaptive_avg_pool2d, "
                 f"torch.optim.Adam; {_SAME_WEIGHTS}."),
    make_jax=_distill_train_jax,
    make_torch=_distill_train_torch,
    stateful=True,
    default_batch=32,
))


# --- facerec: edgeface_embed, facerec_contrastive_train, dsr_forward ----------------------------------------------
# JAX: facerec.models.EdgeFace / facerec.dsr.DSR (Flax); torch: benchmarks/torch_facerec.py. One set of random
# weights per model, drawn in numpy in the Flax layout (`_facerec_weights`) and renamed to torch keys
# (`_torch_layout`); torch loads them strictly (load_state_dict) and the JAX EdgeFace takes them back through
# facerec.models.CONVERTER, as it would a released checkpoint (the DSR has no torch checkpoints, hence no converter:
# JAX uses the drawn variables as they are). Both frameworks compute the same function on the same inputs
# (tests/test_benchmarks.py checks it). Test-only override: `depth` (the runner's --depth): at most this many blocks
# per EdgeFace stage (the last, SDTA, block of stages 2-4 is kept) and this many DSR residual blocks.

_EDGEFACE = {"xs": "edgeface_xs_gamma_06", "s": "edgeface_s_gamma_05"}  # variant -> facerec.models.VARIANTS name
_FACE, _VLR = 112, 16  # EdgeFace input side; very-low-resolution side (facerec configs: data.degradation.vlr_size)
_CONTRASTIVE = dict(lr=1e-5, temperature=0.07)  # configs/facerec/finetune.py: plain Adam, no decay or clipping
_SUBJECT_IMAGES = 4  # P x K batches: finetune.images_per_subject consecutive images per subject


def _edgeface_kwargs(variant: str, depth: int | None = None) -> dict:
  kw = dict(facerec_models.VARIANTS[_EDGEFACE[variant]])
  if depth:
    kw["depths"] = tuple(min(depth, n) for n in kw["depths"])
  return kw


def _dsr_kwargs(depth: int | None = None) -> dict:
  return dict(in_size=_VLR, out_size=_FACE, **({"num_blocks": depth} if depth else {}))


@functools.lru_cache(maxsize=4)
def _facerec_abstract(name: str, variant: str | None, depth: int | None) -> dict:
  """Flat ShapeDtypeStructs of the Flax "edgeface" (`variant`) or "dsr"."""
  entry, kw = ((models.get(_EDGEFACE[variant]), _edgeface_kwargs(variant, depth)) if name == "edgeface"
               else (models.get("dsr"), _dsr_kwargs(depth)))
  return convert.flatten(models.abstract_variables(entry, kw))


@functools.lru_cache(maxsize=4)
def _facerec_weights(name: str, variant: str | None, depth: int | None) -> dict[str, np.ndarray]:
  """Random flat Flax variables of "edgeface" (`variant`) or "dsr": kernels N(0, 1 / fan_in), LayerNorm scales
  1 + N(0, 0.2^2) and biases N(0, 0.1^2), other biases N(0, 0.05^2), layer scales U(0.1, 0.5), XCA temperatures
  U(2, 10): far from the init's 1e-6 layer scales, under which each block is nearly an identity and a wrongly
  wired branch would not show in the parity tests."""
  abstract = _facerec_abstract(name, variant, depth)
  rng = np.random.default_rng(0)
  flat = {}
  for path, leaf in sorted(abstract.items()):
    last, shape = path.rsplit("/", 1)[1], leaf.shape
    layer_norm = path.rsplit("/", 1)[0] + "/scale" in abstract  # LayerNorm bias, beside a scale
    if last == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))  # HWIO or (in, out): fan_in = all but O
    elif last == "scale":
      value = 1 + 0.2 * rng.standard_normal(shape)
    elif last == "bias":
      value = (0.1 if layer_norm else 0.05) * rng.standard_normal(shape)
    elif last in ("gamma", "gamma_xca"):
      value = rng.uniform(0.1, 0.5, shape)
    elif last == "temperature":
      value = rng.uniform(2.0, 10.0, shape)
    else:
      raise ValueError(f"_facerec_weights: no rule for {path}")
    flat[path] = value.astype(np.float32)
  return flat


def _torch_layout(flat: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
  """Flat Flax variables -> a torch state dict: `params/stages_1/blocks_2/xca/qkv/linear2/kernel` ->
  `{prefix}stages.1.blocks.2.xca.qkv.linear2.weight`; kernels transposed (HWIO -> OIHW, (in, out) -> (out, in)),
  LayerNorm scales -> weight, other leaves (bias, gamma, temperature) as they are."""
  sd = {}
  for path, value in flat.items():
    _, *modules, last = path.split("/")
    if last == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    names = [re.sub(r"_(\d+)$", r".\1", m) for m in modules] + [{"kernel": "weight", "scale": "weight"}.get(last, last)]
    sd[prefix + ".".join(names)] = np.ascontiguousarray(value)
  return sd


def _edgeface_jax_variables(variant: str, depth: int | None):
  sd = _torch_layout(_facerec_weights("edgeface", variant, depth), prefix="model.")
  return convert.convert_state_dict(sd, facerec_models.CONVERTER, _facerec_abstract("edgeface", variant, depth),
                                    source=f"random {_EDGEFACE[variant]}")


def _torch_edgeface(variant: str, depth: int | None, device):
  from benchmarks import torch_facerec  # pylint: disable=import-outside-toplevel

  sd = _torch_layout(_facerec_weights("edgeface", variant, depth), prefix="model.")
  return torch_facerec.build(torch_facerec.EdgeFace(**_edgeface_kwargs(variant, depth)), sd, device)


def _torch_dsr(depth: int | None, device):
  from benchmarks import torch_facerec  # pylint: disable=import-outside-toplevel

  sd = _torch_layout(_facerec_weights("dsr", None, depth))
  return torch_facerec.build(torch_facerec.DSR(**_dsr_kwargs(depth)), sd, device)


def _face_data(batch: int) -> dict[str, np.ndarray]:
  """NHWC float32: `face` in [-1, 1] (EdgeFace's own input convention), `hr` in [0, 1] (the trainer's) and its
  `vlr` 16x16 area-downsampled version; `labels` int32 P x K subject ids (4 consecutive images per subject)."""
  rng = np.random.default_rng(1)
  hr = rng.uniform(0.0, 1.0, (batch, _FACE, _FACE, 3)).astype(np.float32)
  f = _FACE // _VLR
  return {"face": hr * 2 - 1, "hr": hr, "vlr": hr.reshape(batch, _VLR, f, _VLR, f, 3).mean(axis=(2, 4)),
          "labels": (np.arange(batch) // _SUBJECT_IMAGES).astype(np.int32)}


def _edgeface_embed_jax(batch, device, variant, depth=None):
  module = models.get(_EDGEFACE[variant]).build(**_edgeface_kwargs(variant, depth))
  args = (_edgeface_jax_variables(variant, depth), _face_data(batch)["face"])
  return jax.jit(module.apply), jax.device_put(args, device)


def _edgeface_embed_torch(batch, device, variant, depth=None):
  from benchmarks import torch_facerec  # pylint: disable=import-outside-toplevel

  return torch_facerec.inference(_torch_edgeface(variant, depth, device), _face_data(batch)["face"], device)


def _dsr_forward_jax(batch, device, variant=None, depth=None):
  del variant
  variables = convert.unflatten(_facerec_weights("dsr", None, depth))
  return jax.jit(dsr_lib.DSR(**_dsr_kwargs(depth)).apply), jax.device_put((variables, _face_data(batch)["vlr"]), device)


def _dsr_forward_torch(batch, device, variant=None, depth=None):
  del variant
  from benchmarks import torch_facerec  # pylint: disable=import-outside-toplevel

  return torch_facerec.inference(_torch_dsr(depth, device), _face_data(batch)["vlr"], device)


def _contrastive_train_jax(batch, device, variant=None, depth=None):
  del variant
  # As facerec.train.finetune (loss=contrastive, DSR frozen): EdgeFace takes [0, 1] images (normalize_input).
  # One EdgeFace pass over [DSR(VLR); HR] (the trainer makes two of B, the same function): half the graph to compile.
  edgeface = models.get(_EDGEFACE["xs"]).build(**_edgeface_kwargs("xs", depth), normalize_input=True)
  net = dsr_lib.DSR(**_dsr_kwargs(depth))
  tx, temperature = optax.adam(_CONTRASTIVE["lr"]), _CONTRASTIVE["temperature"]

  def train_step(state, vlr, hr, labels, dsr_variables):
    sr = net.apply(dsr_variables, vlr)  # frozen: a step argument, not differentiated

    def loss_fn(params):
      e_sr, e_hr = jnp.split(edgeface.apply({"params": params}, jnp.concatenate([sr, hr]), train=True), 2)
      return facerec_losses.cross_resolution_infonce(e_sr, e_hr, labels, temperature=temperature)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return dict(params=optax.apply_updates(state["params"], updates), opt_state=opt_state), loss

  params = _edgeface_jax_variables("xs", depth)["params"]
  data = _face_data(batch)
  args = (dict(params=params, opt_state=tx.init(params)), data["vlr"], data["hr"], data["labels"],
          convert.unflatten(_facerec_weights("dsr", None, depth)))
  return jax.jit(train_step, donate_argnums=0), jax.device_put(args, device)


def _contrastive_train_torch(batch, device, variant=None, depth=None):
  del variant
  from benchmarks import torch_facerec  # pylint: disable=import-outside-toplevel

  data = _face_data(batch)
  return torch_facerec.contrastive_finetune(_torch_edgeface("xs", depth, device), _torch_dsr(depth, device),
                                            data["vlr"], data["hr"], data["labels"], device, **_CONTRASTIVE)


_FACEREC_WEIGHTS = ("the same random weights in both (numpy, converted with facerec.models.CONVERTER for the JAX "
                    "EdgeFace, loaded strictly into the torch modules) and the same inputs")

register(Workload(
    name="edgeface_embed",
    description=("EdgeFace embedding at 112x112 (inputs in [-1, 1]), fp32, eval mode; output: the (B, 512) "
                 "unnormalised embeddings. JAX: facerec.models.EdgeFace, jitted; torch: benchmarks.torch_facerec "
                 f"(EdgeNeXt + LoRaLin as otroshi/edgeface), inference_mode; {_FACEREC_WEIGHTS}. Variant: xs = "
                 "edgeface_xs_gamma_06 (1.77 M parameters), s = edgeface_s_gamma_05 (3.65 M)."),
    make_jax=_edgeface_embed_jax,
    make_torch=_edgeface_embed_torch,
    variants=tuple(_EDGEFACE),
    default_variant="xs",
    default_batch=32,
))

register(Workload(
    name="facerec_contrastive_train",
    description=("EdgeFace fine-tuning step of facerec.finetune_contrastive, fp32: frozen DSR (16 -> 112, 64 "
                 "features, 8 blocks) on the VLR batch, EdgeFace-XS (edgeface_xs_gamma_06, input [0, 1] mapped "
                 "to [-1, 1]) embeds the DSR output and the HR batch in one pass of 2B (the trainer: two of B); "
                 "supervised-contrastive InfoNCE (SupCon, temperature 0.07) over the 2B embeddings, labels P x K "
                 "(4 images per subject); Adam lr 1e-5 on the EdgeFace parameters only. images_per_s counts batch "
                 "samples (each an HR face and its 16x16 version: 2 EdgeFace images, trained through, and 1 DSR "
                 "image). JAX: facerec.losses.cross_resolution_infonce, "
                 "jitted, state donated, DSR variables a step argument; torch: DSR under no_grad, SupConLoss "
                 f"in plain torch, torch.optim.Adam; {_FACEREC_WEIGHTS}."),
    make_jax=_contrastive_train_jax,
    make_torch=_contrastive_train_torch,
    stateful=True,
    default_batch=16,
))

register(Workload(
    name="dsr_forward",
    description=("DSR super-resolution inference 16x16 -> 112x112 (facerec.dsr defaults: 64 features, 8 residual "
                 "blocks, 3 pixel-shuffle x2 stages to 128, antialiased bicubic to 112, bicubic skip), fp32. JAX: "
                 "facerec.dsr.DSR, jitted; torch: benchmarks.torch_facerec.DSR (nn.PixelShuffle, F.interpolate), "
                 f"inference_mode; {_FACEREC_WEIGHTS}."),
    make_jax=_dsr_forward_jax,
    make_torch=_dsr_forward_torch,
    default_batch=16,
))
