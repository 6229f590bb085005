"""Named benchmark workloads: what `python -m benchmarks.run NAME` times, in JAX and (where one exists) in PyTorch.

A `Workload` holds two factories, `make_jax(batch, device, variant, dtype="float32", **overrides) -> (fn, args)`
and the same for torch (or None). The runner times `fn(*args)` and places nothing itself: a factory puts its
arrays / modules on `device` (a `jax.Device`, or a `torch.device`). `variant` is one of `variants` (None when the
workload has none); `overrides` are test-only shrinkers such as `depth=1`.

`dtype` is the run's compute dtype ("float32" | "bfloat16", `python -m benchmarks.run --dtype`); parameters stay
float32 in both frameworks. JAX: the models' `dtype` field, or the config key a trainer reads (model.dtype,
teacher.model.dtype, ...); torch: the twin's forward (and loss) under `torch.autocast(..., torch.bfloat16)`
(`torch_autocast`), its backward and optimizer step outside, as torch's mixed-precision recipe has them.

JAX `fn` may be a plain function or a `jax.jit` wrapper; pass the wrapper when it needs `donate_argnums` or static
arguments, since the runner lowers and compiles exactly that object (`fn.lower(*args).compile()`).

A train-step workload times the trainer's own step, never one written for the benchmark
(benchmarks/train_steps.py): make the subsystem's config and Task over a source of the benchmark's examples, then

  def _ladeda_train_jax(batch, device, variant=None, dtype="float32"):
    config = teacher_config.get_config()                        # at `batch` and `dtype`, shrunk by the overrides
    task = distill_train.teacher_task(config, source, source)    # source: `batch` examples, as the data gives them
    return train_steps.train_step(config, task, device)

  register(Workload("ladeda_train", "LaDeDa9 fine-tuning step ...", _ladeda_train_jax, stateful=True))

(`fn` is then `trainer.build(config, task).train_step`, jitted with the state donated, and `args` = (state, the
global batch the trainer's host pipeline makes of the source, rng, constants).)

`stateful=True` says that `fn` returns `(new_state, aux)`: the runner feeds `new_state` back as `args[0]` of the
next call (the donated old state is gone), for JAX and torch alike; a torch train step updating its model in place
just returns the model. `images_per_step` defaults to the batch size.
"""

import dataclasses
import functools
import math
import os
import re
import tempfile
from typing import Any, Callable

import jax
import numpy as np
from PIL import Image

from benchmarks import ear_vae, train_steps
from common import convert, models
from common import data as common_data
from common.data import IMAGENET_MEAN, IMAGENET_STD
from common.models import dinov2
from configs.distill import student as student_config
from configs.distill import teacher as teacher_config
from configs.facerec import finetune as finetune_config
from distill import models as ladeda_models
from distill import train as distill_train
from facerec import dsr as dsr_lib
from facerec import models as facerec_models
from facerec import train as facerec_train


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


def torch_autocast(device, dtype: str):
  """() -> the context a torch twin runs its forward and loss under: autocast to bfloat16 on `device` (a
  torch.device) for a bfloat16 run, a disabled one (no-op) for float32. Parameters stay float32, as in JAX."""
  import torch  # pylint: disable=import-outside-toplevel

  return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


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


def _dinov2_jax(batch: int, device: Any, variant: str, dtype: str = "float32", depth: int | None = None):
  # The HF model's random weights, converted: both frameworks compute the same network. (At 224 px the plain
  # models' pos-embed resampling differs slightly between HF and the hub port; the cost is the same.)
  name, kw = f"dinov2_{_DINOV2[variant][0]}", {"depth": depth} if depth else {}
  entry = models.get(name)
  sd = {k: v.detach().cpu().numpy() for k, v in _hf_dinov2(variant, depth).state_dict().items()}
  variables = convert.convert_state_dict(sd, entry.converter, convert.flatten(models.abstract_variables(entry, kw)))
  module = entry.build(**kw, dtype=dtype)

  def forward(variables, images):
    out = module.apply(variables, images)
    return out["x_norm_clstoken"], out["x_norm_patchtokens"]  # what HF returns: pooler_output, last_hidden_state

  return jax.jit(forward), jax.device_put((variables, _images(batch, variant)), device)


def _dinov2_torch(batch: int, device: Any, variant: str, dtype: str = "float32", depth: int | None = None):
  import torch  # pylint: disable=import-outside-toplevel

  model = _hf_dinov2(variant, depth).to(device)
  pixels = torch.from_numpy(_images(batch, variant)).permute(0, 3, 1, 2).contiguous().to(device)
  autocast = torch_autocast(device, dtype)

  def forward(model, pixels):
    with torch.inference_mode(), autocast():
      out = model(pixel_values=pixels)
    return out.pooler_output, out.last_hidden_state

  return forward, (model, pixels)


register(Workload(
    name="dinov2_forward",
    description=("DINOv2 inference forward on random images. JAX: common.models.dinov2 "
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
    description=("ear VAE teacher train step at 224 px, configs/ear_teacher/default.py with "
                 "backbone_trainable_blocks -1 and a constant lr: DINOv2-S/14 (random init, fully trainable) + "
                 "attention head -> 1024-d latent -> conv decoder; L1 (centre + focal weights), VGG16 perceptual "
                 "(relu1_2..relu4_3, random weights), SSIM, edge, KL, contrastive; AdamW lr 3e-4, clip 1.0. JAX: the "
                 "trainer's step (common.trainer.build on ear_teacher.train.make_task), jitted, state donated, VGG a "
                 "step constant, on uint8 images that it augments itself (pad-crop, flip, brightness / contrast); "
                 "torch: the same network and losses in plain torch (transformers Dinov2Model, sdpa), "
                 "torch.optim.AdamW, clip_grad_norm_, on the images as they are."),
    make_jax=ear_vae.make_jax,
    make_torch=ear_vae.make_torch,
    stateful=True,
    default_batch=16,
))


# --- LaDeDa9 / Tiny-LaDeDa: ladeda_forward, ladeda_train, tiny_ladeda_forward, tiny_ladeda_distill_train ---------
# JAX: distill.models (Flax); torch: benchmarks/torch_ladeda.py. Both load one set of random weights, drawn in numpy
# in the official torch layout and converted with distill.models.CONVERTER, so both compute the same function on the
# same inputs (tests/test_benchmarks.py checks it). The train steps are distill.train's (teacher_task, student_task)
# through common.trainer.build, on configs/distill/teacher.py and student.py; the JAX side loads the weights from
# model directories (teacher.weights, init_from) as a run does, and the torch twins take lr, weight decay, frozen
# stages and loss weights from the same configs. Test-only overrides, LaDeDa9 only: `width` (stem width, 64) and
# `depth` (at most this many blocks per stage, of [3, 4, 6, 3]); all models: `image_size` (even; train steps: the
# crop and the resize it is taken from).

_TEST_SIZE = 256  # official test-time input: the full 256x256 resize (LaDeDa9 map 31x31, Tiny 126x126)
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


def _saved_ladeda(directory: str, name: str, width: int | None, depth: int | None) -> str:
  return train_steps.save_model(directory, name, _ladeda_kwargs(name, width, depth),
                                _ladeda_variables(name, width, depth))


def _uint8_images(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
  """Random (batch, size, size, 3) uint8 images, mirror-symmetric (even `size`): the random flip a train step does
  on the device leaves them unchanged, so a torch twin fed the same images trains on the same pixels."""
  half = rng.integers(0, 256, (batch, size, size // 2, 3), dtype=np.uint8)
  return np.concatenate([half, half[:, :, ::-1]], axis=2)


def _normalized(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 ImageNet-normalised, the models' input (distill.data's Normalize)."""
  return ((images / np.float32(255) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).astype(np.float32)


def _ladeda_data(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images (`_uint8_images`) and int32 0/1 labels, as distill.data's sources give them (images in [0, 1])."""
  rng = np.random.default_rng(1)
  return _uint8_images(rng, batch, size), rng.integers(0, 2, batch).astype(np.int32)


def _ladeda_forward_jax(name, batch, device, variant=None, dtype="float32", width=None, depth=None, image_size=None):
  del variant
  module = models.get(name).build(**_ladeda_kwargs(name, width, depth), dtype=dtype)
  images = _normalized(_ladeda_data(batch, image_size or _TEST_SIZE)[0])

  def forward(variables, images):
    logit, aux = module.apply(variables, images)  # eval mode: BN on running statistics
    return logit, aux["patch_logits"]

  return jax.jit(forward), jax.device_put((_ladeda_variables(name, width, depth), images), device)


def _ladeda_forward_torch(name, batch, device, variant=None, dtype="float32", width=None, depth=None,
                          image_size=None):
  del variant
  from benchmarks import torch_ladeda  # pylint: disable=import-outside-toplevel

  images = _normalized(_ladeda_data(batch, image_size or _TEST_SIZE)[0])
  model = torch_ladeda.build(name, _ladeda_state_dict(name, width, depth), device, **_ladeda_kwargs(name, width, depth))
  return torch_ladeda.forward(model, images, device, torch_autocast(device, dtype))


def _distill_config(get_config, batch: int, dtype: str, image_size: int | None):
  """configs/distill/{teacher,student}.py (full size) at `batch`, teacher and student computing in `dtype`;
  `image_size` shrinks the crop and the resize (then equal: the step's random crop keeps the whole image)."""
  c = get_config()
  c.batch_size = batch
  c.teacher.model.dtype = c.student.model.dtype = dtype
  if image_size:
    c.data.resize = c.data.crop = image_size
  return c


def _distill_step(make_task, config, device):
  """The trainer's step of distill.train's `make_task` (teacher_task | student_task) on one batch of
  config.data.resize images; the step crops, flips and normalises them."""
  images, labels = _ladeda_data(config.batch_size, config.data.resize)
  source = common_data.ArraySource("bench", image=images / np.float32(255), label=labels,
                                   index=np.arange(len(labels), dtype=np.int32))
  return train_steps.train_step(config, make_task(config, source, source), device)


def _torch_crops(config) -> tuple[np.ndarray, np.ndarray]:
  """The torch twins' batch: the JAX step's images, centre-cropped to config.data.crop and normalised, and labels."""
  images, labels = _ladeda_data(config.batch_size, config.data.resize)
  top = (config.data.resize - config.data.crop) // 2
  return _normalized(images[:, top:top + config.data.crop, top:top + config.data.crop]), labels


def _ladeda_train_jax(batch, device, variant=None, dtype="float32", width=None, depth=None, image_size=None):
  del variant
  c = _distill_config(teacher_config.get_config, batch, dtype, image_size)
  with tempfile.TemporaryDirectory(prefix="bench-ladeda-") as tmp:
    # A teacher directory: teacher_task fine-tunes its architecture and starts from its weights (init_from).
    c.teacher.weights = _saved_ladeda(tmp, "ladeda9", width, depth)
    return _distill_step(distill_train.teacher_task, c, device)


def _ladeda_train_torch(batch, device, variant=None, dtype="float32", width=None, depth=None, image_size=None):
  del variant
  from benchmarks import torch_ladeda  # pylint: disable=import-outside-toplevel

  c = _distill_config(teacher_config.get_config, batch, dtype, image_size)
  images, labels = _torch_crops(c)
  model = torch_ladeda.build("ladeda9", _ladeda_state_dict("ladeda9", width, depth), device,
                             **_ladeda_kwargs("ladeda9", width, depth))
  # The trainable set of teacher_task: the config's freeze patterns plus those its unfreeze_blocks derive.
  freeze = distill_train.teacher_freeze_patterns(c.teacher.unfreeze_blocks) + tuple(c.optim.freeze)
  return torch_ladeda.finetune(model, images, labels, device, lr=c.optim.lr, weight_decay=c.optim.weight_decay,
                               freeze=freeze, autocast=torch_autocast(device, dtype))


def _distill_train_jax(batch, device, variant=None, dtype="float32", width=None, depth=None, image_size=None):
  del variant
  c = _distill_config(student_config.get_config, batch, dtype, image_size)
  with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
    c.teacher.weights = _saved_ladeda(tmp, "ladeda9", width, depth)  # the frozen teacher, a step constant
    c.init_from.path = _saved_ladeda(tmp, "tiny_ladeda", None, None)  # the student's start, as stage 2 loads stage 1
    return _distill_step(distill_train.student_task, c, device)


def _distill_train_torch(batch, device, variant=None, dtype="float32", width=None, depth=None, image_size=None):
  del variant
  from benchmarks import torch_ladeda  # pylint: disable=import-outside-toplevel

  c = _distill_config(student_config.get_config, batch, dtype, image_size)
  images, labels = _torch_crops(c)
  student = torch_ladeda.build("tiny_ladeda", _ladeda_state_dict("tiny_ladeda", None, None), device)
  teacher = torch_ladeda.build("ladeda9", _ladeda_state_dict("ladeda9", width, depth), device,
                               **_ladeda_kwargs("ladeda9", width, depth))
  return torch_ladeda.distill(student, teacher, images, labels, device, lr=c.optim.lr,
                              alpha_distill=c.student.alpha_distill, alpha_task=c.student.alpha_task,
                              autocast=torch_autocast(device, dtype))


_SAME_WEIGHTS = ("the same random weights (numpy, official torch layout, converted with distill.models.CONVERTER) "
                 "and inputs in both")

register(Workload(
    name="ladeda_forward",
    description=("LaDeDa9 inference at 256 px (the official test input), eval mode; output: image logit and "
                 f"31x31 patch-logit map. JAX: distill.models.LaDeDa, jitted; torch: benchmarks.torch_ladeda, "
                 f"inference_mode; {_SAME_WEIGHTS}."),
    make_jax=functools.partial(_ladeda_forward_jax, "ladeda9"),
    make_torch=functools.partial(_ladeda_forward_torch, "ladeda9"),
    default_batch=32,
))

register(Workload(
    name="ladeda_train",
    description=("LaDeDa9 fine-tuning train step of distill.train.teacher_task (configs/distill/teacher.py) on "
                 "224 px crops: BCE-with-logits on the mean-pooled image logit; teacher.unfreeze_blocks 1: "
                 "layer4 and fc train (layer4's BatchNorm in train mode: batch statistics, running stats updated), "
                 "the stem and layer1-3 are frozen (no gradient, BatchNorm on running statistics); Adam lr 1e-4 "
                 "with L2 weight decay 1e-4 on the trainable parameters (torch Adam weight_decay; JAX "
                 "chain(add_decayed_weights, adam)). JAX: the trainer's step (common.trainer.build), jitted, state "
                 "donated, weights loaded through init_from, on uint8 256 px images that it crops (random 224), "
                 "flips and normalises itself; torch: the centre crops, normalised, frozen modules requires_grad off "
                 f"and in eval mode, torch.optim.Adam over the trainable ones; {_SAME_WEIGHTS}."),
    make_jax=_ladeda_train_jax,
    make_torch=_ladeda_train_torch,
    stateful=True,
    default_batch=32,
))

register(Workload(
    name="tiny_ladeda_forward",
    description=("Tiny-LaDeDa inference at 256 px, eval mode; output: image logit and 126x126 patch-logit "
                 f"map. JAX: distill.models.TinyLaDeDa, jitted; torch: benchmarks.torch_ladeda, inference_mode; "
                 f"{_SAME_WEIGHTS}."),
    make_jax=functools.partial(_ladeda_forward_jax, "tiny_ladeda"),
    make_torch=functools.partial(_ladeda_forward_torch, "tiny_ladeda"),
    default_batch=256,
))

register(Workload(
    name="tiny_ladeda_distill_train",
    description=("Tiny-LaDeDa distillation train step of distill.train.student_task (configs/distill/student.py) "
                 "on 224 px crops: frozen LaDeDa9 teacher forward in eval mode inside the step (27x27 map), "
                 "student in train mode (BatchNorm batch statistics, running stats updated); loss 0.05 MSE(student "
                 "110x110 map adaptive-average-pooled to 27x27, teacher map) + 0.95 BCE-with-logits(student image "
                 "logit, label); Adam lr 1e-3. JAX: the trainer's step (common.trainer.build), jitted, state donated, "
                 "teacher variables the step's constants, on uint8 256 px images that it crops (random 224), flips "
                 "and normalises itself; torch: the centre crops, normalised, teacher under no_grad, "
                 f"F.adaptive_avg_pool2d, torch.optim.Adam; {_SAME_WEIGHTS}."),
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
# (tests/test_benchmarks.py checks it). The train step is facerec.train.finetune_task's through common.trainer.build,
# on configs/facerec/finetune.py: the JAX side loads the EdgeFace (init_from) and the DSR from model directories, as a
# run does, and the torch twin takes lr and temperature from the same config. Test-only override: `depth` (the
# runner's --depth): at most this many blocks per EdgeFace stage (the last, SDTA, block of stages 2-4 is kept) and
# this many DSR residual blocks.

_EDGEFACE = {"xs": "edgeface_xs_gamma_06", "s": "edgeface_s_gamma_05"}  # variant -> facerec.models.VARIANTS name
_FACE, _VLR = 112, 16  # EdgeFace input side; very-low-resolution side (facerec configs: data.degradation.vlr_size)


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


def _face_data(batch: int, images_per_subject: int = 1) -> dict[str, np.ndarray]:
  """NHWC faces: `u8` uint8 (`_uint8_images`), float32 `face` in [-1, 1] (EdgeFace's own input convention), `hr` in
  [0, 1] (the trainer's) and its `vlr` 16x16 area-downsampled version; `labels` int32 P x K subject ids
  (`images_per_subject` consecutive images per subject)."""
  u8 = _uint8_images(np.random.default_rng(1), batch, _FACE)
  hr = u8 / np.float32(255)
  f = _FACE // _VLR
  return {"u8": u8, "face": hr * 2 - 1, "hr": hr, "vlr": hr.reshape(batch, _VLR, f, _VLR, f, 3).mean(axis=(2, 4)),
          "labels": (np.arange(batch) // images_per_subject).astype(np.int32)}


def _edgeface_embed_jax(batch, device, variant, dtype="float32", depth=None):
  module = models.get(_EDGEFACE[variant]).build(**_edgeface_kwargs(variant, depth), dtype=dtype)
  args = (_edgeface_jax_variables(variant, depth), _face_data(batch)["face"])
  return jax.jit(module.apply), jax.device_put(args, device)


def _edgeface_embed_torch(batch, device, variant, dtype="float32", depth=None):
  from benchmarks import torch_facerec  # pylint: disable=import-outside-toplevel

  return torch_facerec.inference(_torch_edgeface(variant, depth, device), _face_data(batch)["face"], device,
                                 torch_autocast(device, dtype))


def _dsr_forward_jax(batch, device, variant=None, dtype="float32", depth=None):
  del variant
  variables = convert.unflatten(_facerec_weights("dsr", None, depth))
  module = dsr_lib.DSR(**_dsr_kwargs(depth), dtype=dtype)
  return jax.jit(module.apply), jax.device_put((variables, _face_data(batch)["vlr"]), device)


def _dsr_forward_torch(batch, device, variant=None, dtype="float32", depth=None):
  del variant
  from benchmarks import torch_facerec  # pylint: disable=import-outside-toplevel

  return torch_facerec.inference(_torch_dsr(depth, device), _face_data(batch)["vlr"], device,
                                 torch_autocast(device, dtype))


def _contrastive_config(batch: int, dtype: str):
  """configs/facerec/finetune.py (contrastive, DSR frozen) at `batch`, EdgeFace and DSR computing in `dtype`, with
  the VLR degradation fixed."""
  c = finetune_config.get_config()
  c.batch_size = batch
  c.edgeface.dtype = c.dsr.model.dtype = dtype
  # P x K batches need K | batch: a test batch of 2 is one subject's 2 images.
  c.finetune.images_per_subject = math.gcd(batch, c.finetune.images_per_subject)
  # One draw for every face (blur sigma mid-range, no noise; the config draws sigma in [0.5, 1.5] and a noise std
  # in [0, 0.02] per face): the step still blurs and down-samples each face on the device (it only skips drawing
  # the noise), and the torch twin can be given the very VLR faces the JAX step makes.
  c.data.degradation.blur_sigma, c.data.degradation.noise_std = (1.0, 1.0), (0.0, 0.0)
  return c


def _write_faces(root: str, faces: np.ndarray, per_subject: int) -> None:
  """uint8 faces as a facerec.data.SubjectFolder: root/<subject>/<j>.png, `per_subject` consecutive faces each."""
  for i, face in enumerate(faces):
    folder = os.path.join(root, f"{i // per_subject:04d}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(face).save(os.path.join(folder, f"{i % per_subject:03d}.png"), compress_level=1)


def _contrastive_train_jax(batch, device, variant=None, dtype="float32", depth=None):
  del variant
  c = _contrastive_config(batch, dtype)
  k = c.finetune.images_per_subject
  faces = _face_data(batch, k)["u8"]
  with tempfile.TemporaryDirectory(prefix="bench-facerec-") as tmp:
    # The faces as the train folder, and as a val folder with a gallery of 3 and a probe per subject (the task
    # splits it); the weights as model directories, as converted / exported ones come.
    c.data.train_root, c.data.val_root = os.path.join(tmp, "train"), os.path.join(tmp, "val")
    _write_faces(c.data.train_root, faces, k)
    repeats = -(-4 // k)
    _write_faces(c.data.val_root, np.repeat(faces, repeats, axis=0), k * repeats)
    c.edgeface.weights = train_steps.save_model(tmp, _EDGEFACE["xs"], _edgeface_kwargs("xs", depth),
                                                _edgeface_jax_variables("xs", depth))
    c.dsr.weights = train_steps.save_model(tmp, "dsr", _dsr_kwargs(depth),
                                           convert.unflatten(_facerec_weights("dsr", None, depth)))
    return train_steps.train_step(c, facerec_train.finetune_task(c, *facerec_train.train_sources(c)), device)


def _contrastive_train_torch(batch, device, variant=None, dtype="float32", depth=None):
  del variant
  from benchmarks import torch_facerec  # pylint: disable=import-outside-toplevel

  c = _contrastive_config(batch, dtype)
  data = _face_data(batch, c.finetune.images_per_subject)
  degrade = facerec_train.degradation(c)  # fixed: the VLR faces of the JAX step
  vlr = np.stack([degrade(hr, np.random.default_rng(0)) for hr in data["hr"]])
  return torch_facerec.contrastive_finetune(_torch_edgeface("xs", depth, device), _torch_dsr(depth, device), vlr,
                                            data["hr"], data["labels"], device, lr=c.optim.lr,
                                            temperature=c.finetune.temperature,
                                            autocast=torch_autocast(device, dtype))


_FACEREC_WEIGHTS = ("the same random weights in both (numpy, converted with facerec.models.CONVERTER for the JAX "
                    "EdgeFace, loaded strictly into the torch modules) and the same inputs")

register(Workload(
    name="edgeface_embed",
    description=("EdgeFace embedding at 112x112 (inputs in [-1, 1]), eval mode; output: the (B, 512) "
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
    description=("EdgeFace fine-tuning step of facerec.train.finetune_task (configs/facerec/finetune.py, "
                 "loss=contrastive): frozen DSR (16 -> 112, 64 features, 8 blocks) on the VLR batch, "
                 "EdgeFace-XS (edgeface_xs_gamma_06, input [0, 1] mapped to [-1, 1]) embeds the DSR output and the "
                 "HR batch in two passes of B; supervised-contrastive InfoNCE (SupCon, temperature 0.07) over the 2B "
                 "embeddings, labels P x K (4 images per subject); Adam lr 1e-5 on the EdgeFace parameters only. "
                 "images_per_s counts batch samples (each an HR face and its 16x16 version: 2 EdgeFace images, "
                 "trained through, and 1 DSR image). JAX: the trainer's step (common.trainer.build), jitted, state "
                 "donated, on the uint8 HR faces of a face folder: it flips them and makes their VLR versions itself "
                 "(blur sigma fixed at 1.0 and no noise here, so that torch can be given the same VLR faces); "
                 "EdgeFace loaded through init_from, DSR variables the step's constants; torch: DSR under no_grad, "
                 f"SupConLoss in plain torch, torch.optim.Adam; {_FACEREC_WEIGHTS}."),
    make_jax=_contrastive_train_jax,
    make_torch=_contrastive_train_torch,
    stateful=True,
    default_batch=16,
))

register(Workload(
    name="dsr_forward",
    description=("DSR super-resolution inference 16x16 -> 112x112 (facerec.dsr defaults: 64 features, 8 residual "
                 "blocks, 3 pixel-shuffle x2 stages to 128, antialiased bicubic to 112, bicubic skip). JAX: "
                 "facerec.dsr.DSR, jitted; torch: benchmarks.torch_facerec.DSR (nn.PixelShuffle, F.interpolate), "
                 f"inference_mode; {_FACEREC_WEIGHTS}."),
    make_jax=_dsr_forward_jax,
    make_torch=_dsr_forward_torch,
    default_batch=16,
))
