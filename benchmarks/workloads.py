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
