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
from typing import Any, Callable

import jax
import numpy as np

from benchmarks import ear_vae
from common import convert
from common import models
from common.models import dinov2


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
