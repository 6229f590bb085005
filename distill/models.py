"""LaDeDa (teacher) and Tiny-LaDeDa (student) deepfake detectors in Flax linen, importing the official weights.

Cavia et al., "Real-Time Deepfake Detection in the Real-World" (arXiv 2406.09398); official PyTorch code
`barcavia/RealTime-DeepfakeDetection-in-the-RealWorld` (`networks/LaDeDa.py`, `networks/Tiny_LaDeDa.py`). This is a
reimplementation from the architecture description in shared/research/ladeda.md, not a copy of that code
(which is under the Yissum research-only licence; so are the official weights converted with the rules below).

Both models map an NHWC batch to a per-patch logit map and pool it to one image logit by the **mean**:

    module = LaDeDa()                                           # LaDeDa9 (BagNet-9); or models.load("ladeda9", dir)
    logit, aux = module.apply(variables, images)                # images (B, H, W, 3), ImageNet-normalised
    logit.shape == (B,); aux["patch_logits"].shape == (B, h, w)  # 256x256 -> 31x31 (LaDeDa), 126x126 (Tiny)
    score = jax.nn.sigmoid(logit)                                # 1 = fake, 0 = real

* **LaDeDa9** (`LaDeDa`): NPR preprocessing (`x - nearest_up(nearest_down(x))`, each 2x2 block minus its top-left
  pixel; H and W must be even), stem conv1 1x1 -> conv2 3x3 -> bn1 (torch momentum 0.001) -> ReLU (no max-pool, no
  stride), then ResNet-50 bottlenecks [3, 4, 6, 3] with stage strides [2, 2, 2, 1] whose conv2 is 3x3 only in block 0
  of layer1/layer2 (`kernel3`) and 1x1 elsewhere, all padding 0 / VALID, then `fc` (2048 -> 1) per location. Every
  output cell sees one 9x9 input patch at stride 8 (anchored top-left). The residual of a block whose 3x3 conv
  shrank the map is cropped at the bottom/right, as in BagNet.
* **Tiny-LaDeDa** (`TinyLaDeDa`): fixed 3x3 depthwise gradient filter (`right_diag` by default, zero padding 1),
  conv1 1x1 (3 -> 8) -> conv2 3x3 -> bn1 (momentum 0.001) -> ReLU -> layer1.0: conv1 1x1 -> bn1 -> ReLU ->
  conv2 3x3 stride 2 -> bn2 -> ReLU (no conv3 / residual) -> `fc` (8 -> 1) per location. 1,297 parameters;
  receptive field 7x7 at stride 2.

The image logit is the mean of the patch-logit map. The official pooled path averages the features and then applies
`fc`, identical because `fc` is affine, but it uses an H x H pooling window and breaks on non-square inputs; the
mean of the map works for any size. Both outputs are float32 whatever the compute `dtype`.

`dtype` (e.g. "bfloat16") is the compute dtype of the convs and the residual stream; params and BatchNorm statistics
stay float32. Kept in float32: the input normalisation and NPR / gradient preprocessing (differences of nearly equal
neighbouring pixels: bf16 rounds a normalised pixel of ~2 by up to ~0.008, half of one 8-bit level (0.017), which is
the whole residual in smooth regions), BatchNorm statistics and normalisation (Flax upcasts, rounding only the
output), and the head (fc per location and the mean over the map, a negligible share of the FLOPs). The trunk's
bf16 rounding is ~2^-8 per layer; how far that moves the logits is the network's own sensitivity, which is large
for random narrow weights (tests/test_bf16.py states the measured errors).

Input: the official pipeline feeds ImageNet-normalised RGB (torchvision `Normalize`), which is what the models expect
by default (like `common.models.dinov2`); `normalize_input=True` takes RGB in [0, 1] and normalises here instead.
Official test-time input is the full 256x256 resize (no crop); training used 224 crops.

Checkpoints are raw PyTorch state dicts (`common.torch_io` also strips `module.` and unwraps `state_dict`/`model`
wrappers if present). Keys map one to one: `layer1.0.conv2.weight` -> `params/layer1_0/conv2/kernel`,
`layer1.0.downsample.1.running_var` -> `batch_stats/layer1_0/downsample_1/var`, `num_batches_tracked` is dropped.

    python -m common.convert --model ladeda9 --src WildRF_LaDeDa.pth --dst /ckpts/ladeda9_wildrf
    python -m common.convert --model tiny_ladeda --src WildRF_Tiny_LaDeDa.pth --dst /ckpts/tiny_ladeda_wildrf

BatchNorm: eps 1e-5; Flax momentum = 1 - torch momentum (0.9, and 0.999 for the stem `bn1`). In training mode the
running variance is updated with the biased batch variance (torch uses the unbiased one; the factor n/(n-1), with
n = batch x height x width, is negligible here).
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common import convert
from common import models

_f32 = jnp.float32

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# 3x3 cross-correlation kernels of the official gradient preprocessings (rows = image rows, top to bottom).
GRAD_KERNELS = {
    "x_grad": ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1)),
    "y_grad": ((-1, -2, -1), (0, 0, 0), (1, 2, 1)),
    "left_diag": ((0, 1, 2), (-1, 0, 1), (-2, -1, 0)),
    "right_diag": ((-2, -1, 0), (-1, 0, 1), (0, 1, 2)),
}
PREPROCESS_TYPES = ("raw", "NPR") + tuple(GRAD_KERNELS)


def npr(x: jax.Array) -> jax.Array:
  """Neighbouring-pixel residual: x minus its nearest-neighbour 0.5x-down, 2x-up copy (NHWC, even H and W).

  Equals torch `x - interpolate(interpolate(x, scale_factor=0.5, 'nearest'), scale_factor=2, 'nearest')`: each
  pixel minus the top-left pixel of its 2x2 block. Odd sizes fail in the official code; they are rejected here.
  """
  _, h, w, _ = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"NPR preprocessing needs even height and width, got {h}x{w}")
  corner = jnp.repeat(jnp.repeat(x[:, ::2, ::2], 2, axis=1), 2, axis=2)
  return x - corner


def grad_filter(x: jax.Array, kind: str) -> jax.Array:
  """Per-channel 3x3 cross-correlation with a fixed gradient kernel, zero padding 1 (torch padding='same')."""
  c = x.shape[-1]
  k = np.asarray(GRAD_KERNELS[kind], np.float32)[:, :, None, None]  # HWIO, one input channel per group
  k = jnp.asarray(np.tile(k, (1, 1, 1, c)), x.dtype)
  return jax.lax.conv_general_dilated(x, k, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
                                      precision=jax.lax.Precision.HIGHEST)


def preprocess(x: jax.Array, kind: str) -> jax.Array:
  if kind == "raw":
    return x
  if kind == "NPR":
    return npr(x)
  if kind in GRAD_KERNELS:
    return grad_filter(x, kind)
  raise ValueError(f"preprocess_type must be one of {PREPROCESS_TYPES}, got {kind!r}")


# Official init N(0, sqrt(2 / (kh*kw*out))), i.e. He fan-out normal (only matters when training from scratch).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, dtype, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="VALID", use_bias=False,
                 kernel_init=_conv_init, dtype=dtype, param_dtype=_f32, name=name)


def _bn(train: bool, dtype, name: str, torch_momentum: float = 0.1) -> nn.BatchNorm:
  # Flax computes batch statistics and the normalisation in float32 (force_float32_reductions) and keeps the
  # running statistics in float32; `dtype` only rounds the output.
  return nn.BatchNorm(use_running_average=not train, momentum=1.0 - torch_momentum, epsilon=1e-5, dtype=dtype,
                      param_dtype=_f32, name=name)


def _input(x, normalize_input: bool, kind: str, dtype):
  """Optional ImageNet normalisation and the fixed preprocessing, both in float32, then the compute dtype.

  NPR and the gradient filters subtract neighbouring pixels; done in bf16, the inputs' rounding (up to 2^-8 of
  each pixel, half an 8-bit level) would swamp the one-level residuals of smooth regions. In float32 only the
  residual itself is rounded, to 2^-8 of its own size."""
  x = jnp.asarray(x, _f32)
  if normalize_input:
    x = (x - jnp.array(IMAGENET_MEAN, _f32)) / jnp.array(IMAGENET_STD, _f32)
  return preprocess(x, kind).astype(dtype)


def _head(x):
  """fc per location -> (image logit (B,), patch logits (B, h, w)), computed and returned in float32.

  The logits feed BCE and the teacher-student distillation losses, and a bf16 fc would round each to 8 bits;
  one C -> 1 dot per location is a negligible share of the FLOPs, so the head needs no low-precision path."""
  fc = nn.Dense(1, kernel_init=nn.initializers.normal(0.02), bias_init=nn.initializers.zeros, dtype=_f32,
                param_dtype=_f32, name="fc")
  patch = fc(x.astype(_f32))[..., 0]
  return patch.mean(axis=(1, 2)), patch


class Bottleneck(nn.Module):
  """torchvision v1.5-style bottleneck (stride on conv2) with padding 0 and a bottom/right-cropped residual."""
  planes: int
  stride: int = 1
  kernel_size: int = 1
  downsample: bool = False
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = nn.relu(_bn(train, self.dtype, "bn1")(_conv(self.planes, 1, 1, self.dtype, "conv1")(x)))
    out = _conv(self.planes, self.kernel_size, self.stride, self.dtype, "conv2")(out)
    out = nn.relu(_bn(train, self.dtype, "bn2")(out))
    out = _bn(train, self.dtype, "bn3")(_conv(4 * self.planes, 1, 1, self.dtype, "conv3")(out))
    residual = x
    if self.downsample:
      residual = _conv(4 * self.planes, 1, self.stride, self.dtype, "downsample_0")(x)
      residual = _bn(train, self.dtype, "downsample_1")(residual)
    # A VALID 3x3 conv leaves `out` smaller than the shortcut: drop the shortcut's last rows/columns (BagNet).
    # Cropping each axis by its own difference equals the official width-based crop wherever that one works.
    residual = residual[:, :out.shape[1], :out.shape[2]]
    return nn.relu(out + residual)


class LaDeDa(nn.Module):
  """BagNet-style LaDeDa; the defaults build `LaDeDa9` (9x9 patches at stride 8).

  `kernel3[i]` = number of leading blocks of stage i with a 3x3 conv2 (LaDeDa33/17/9/5: (1,1,1,1) / (1,1,1,0) /
  (1,1,0,0) / (1,0,0,0)). Returns `(logit (B,), {"patch_logits": (B, h, w)})`.
  """
  layers: Sequence[int] = (3, 4, 6, 3)
  strides: Sequence[int] = (2, 2, 2, 1)
  kernel3: Sequence[int] = (1, 1, 0, 0)
  preprocess_type: str = "NPR"
  width: int = 64  # stem / layer1 planes (the original's 64); smaller only for tests and CPU demos
  stem_bn_momentum: float = 0.001  # torch momentum of the stem bn1 (the original's); from-scratch demos use 0.1
  normalize_input: bool = False  # False: input already ImageNet-normalised (official pipeline); True: RGB in [0, 1]
  dtype: Any = _f32  # compute dtype; params are float32

  @nn.compact
  def __call__(self, x, *, train: bool = False, frozen_stages: int = 0):
    """`frozen_stages` = k: the stem (stage 0) and layer1..layer{k-1} keep BatchNorm in inference mode even when
    `train` is set, so the parts frozen for fine-tuning neither normalise with batch statistics nor update their
    running ones (the seed's `unfreeze_blocks` = N: frozen_stages = 5 - N)."""
    x = _input(x, self.normalize_input, self.preprocess_type, self.dtype)
    x = _conv(self.width, 1, 1, self.dtype, "conv1")(x)
    x = _conv(self.width, 3, 1, self.dtype, "conv2")(x)  # no BN/ReLU between the two stem convs
    x = nn.relu(_bn(train and frozen_stages <= 0, self.dtype, "bn1", torch_momentum=self.stem_bn_momentum)(x))
    inplanes = self.width
    for stage, (n_blocks, stride, k3) in enumerate(zip(self.layers, self.strides, self.kernel3)):
      planes = self.width * 2 ** stage
      stage_train = train and frozen_stages <= stage + 1
      for i in range(n_blocks):
        x = Bottleneck(planes, stride=stride if i == 0 else 1, kernel_size=3 if i < k3 else 1,
                       downsample=i == 0 and (stride != 1 or inplanes != 4 * planes), dtype=self.dtype,
                       name=f"layer{stage + 1}_{i}")(x, stage_train)
        inplanes = 4 * planes
    logit, patch = _head(x)
    return logit, {"patch_logits": patch}


class TinyLaDeDa(nn.Module):
  """Tiny-LaDeDa student: 4 convs of 8 channels, receptive field 7x7 at stride 2. Same outputs as `LaDeDa`."""
  preprocess_type: str = "right_diag"
  width: int = 8
  stem_bn_momentum: float = 0.001  # torch momentum of the stem bn1 (the original's); from-scratch demos use 0.1
  normalize_input: bool = False  # False: input already ImageNet-normalised (official pipeline); True: RGB in [0, 1]
  dtype: Any = _f32  # compute dtype; params are float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = _input(x, self.normalize_input, self.preprocess_type, self.dtype)
    x = _conv(self.width, 1, 1, self.dtype, "conv1")(x)
    x = _conv(self.width, 3, 1, self.dtype, "conv2")(x)
    x = nn.relu(_bn(train, self.dtype, "bn1", torch_momentum=self.stem_bn_momentum)(x))
    x = TinyBlock(self.width, dtype=self.dtype, name="layer1_0")(x, train)
    logit, patch = _head(x)
    return logit, {"patch_logits": patch}


class TinyBlock(nn.Module):
  """Tiny-LaDeDa's `layer1.0`: conv1 1x1 -> bn1 -> ReLU -> conv2 3x3 stride 2 -> bn2 -> ReLU (no conv3/residual)."""
  planes: int
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(_bn(train, self.dtype, "bn1")(_conv(self.planes, 1, 1, self.dtype, "conv1")(x)))
    return nn.relu(_bn(train, self.dtype, "bn2")(_conv(self.planes, 3, 2, self.dtype, "conv2")(x)))


def patch_map_size(h: int, w: int, model: str = "ladeda9") -> tuple[int, int]:
  """Patch-logit map size for an H x W input (LaDeDa9: 256 -> 31, 224 -> 27; Tiny: 256 -> 126)."""
  def one(n: int) -> int:
    if model == "tiny_ladeda":
      return (n - 2 - 3) // 2 + 1
    n = n - 2  # stem 3x3
    n = (n - 3) // 2 + 1  # layer1.0 3x3 stride 2
    n = (n - 3) // 2 + 1  # layer2.0 3x3 stride 2
    return math.ceil(n / 2)  # layer3.0 1x1 stride 2
  return one(h), one(w)


def _bn_rules(torch_prefix: str, flax_path: str) -> list[convert.Rule]:
  return [
      convert.Rule(torch_prefix + r"\.weight", f"params/{flax_path}/scale"),
      convert.Rule(torch_prefix + r"\.bias", f"params/{flax_path}/bias"),
      convert.Rule(torch_prefix + r"\.running_mean", f"batch_stats/{flax_path}/mean"),
      convert.Rule(torch_prefix + r"\.running_var", f"batch_stats/{flax_path}/var"),
  ]


# One rule table serves both models (Tiny's keys are a subset of LaDeDa's layout); strictness comes from the
# model's own variables, so a Tiny checkpoint never loads into LaDeDa or the reverse.
CONVERTER = convert.Converter(
    rules=(
        convert.Rule(r"(conv[12])\.weight", r"params/\1/kernel", convert.conv),
        *_bn_rules(r"(bn1)", r"\1"),
        convert.Rule(r"layer(\d)\.(\d+)\.(conv[123])\.weight", r"params/layer\1_\2/\3/kernel", convert.conv),
        *_bn_rules(r"layer(\d)\.(\d+)\.(bn[123])", r"layer\1_\2/\3"),
        convert.Rule(r"layer(\d)\.(\d+)\.downsample\.0\.weight", r"params/layer\1_\2/downsample_0/kernel",
                     convert.conv),
        *_bn_rules(r"layer(\d)\.(\d+)\.downsample\.1", r"layer\1_\2/downsample_1"),
        convert.Rule(r"fc\.weight", "params/fc/kernel", convert.linear),
        convert.Rule(r"fc\.bias", "params/fc/bias"),
    ),
    ignore=(r"(.*\.)?num_batches_tracked",),
)

models.register(models.ModelEntry(
    name="ladeda9",
    build=LaDeDa,
    input_shape=(1, 256, 256, 3),
    converter=CONVERTER,
    description="LaDeDa9 deepfake detector (BagNet-9 on NPR, 9x9 patch logits, mean-pooled); "
                "WildRF_LaDeDa.pth / ForenSynth_LaDeDa.pth",
))

models.register(models.ModelEntry(
    name="tiny_ladeda",
    build=TinyLaDeDa,
    input_shape=(1, 256, 256, 3),
    converter=CONVERTER,  # one rule table serves both layouts
    description="Tiny-LaDeDa student (right_diag gradient, 4 convs x 8 ch, 1,297 params, mean-pooled patch logits); "
                "WildRF_Tiny_LaDeDa.pth / ForenSynth_Tiny_LaDeDa.pth",
))
