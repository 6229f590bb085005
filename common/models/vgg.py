"""VGG16 `features` trunk (torchvision cfg "D") for perceptual losses, importing torchvision weights.

Only the convolutional trunk is built: 13 conv3x3 (padding 1) + ReLU layers in five blocks separated by 2x2
max-pools; the classifier and the 5th pool are never needed for feature taps. Conv modules are named after
their torchvision index (`features_0`, `features_2`, ..., `features_28`), so the parameter tree reads like
the torch state dict and the converter is a pure rename + OIHW->HWIO transpose.

Weights: torchvision `VGG16_Weights.IMAGENET1K_V1` (vgg16-397923af.pth), which expects RGB in [0, 1]
normalised with the ImageNet mean/std; `normalize_input=True` applies that normalisation here. (The
IMAGENET1K_FEATURES weights expect 0-255 input instead; don't mix them with this normalisation.)

    python -m common.convert --model vgg16 --src vgg16-397923af.pth --dst /ckpts/vgg16
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from common import convert
from common import models

# The ReLU tap closing each block, in depth order.
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
# torchvision `features` indices of the convs in each block (ReLUs and pools occupy the indices between).
_BLOCK_CONVS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
_BLOCK_WIDTHS = (64, 128, 256, 512, 512)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16(nn.Module):
  """NHWC images -> {tap name: activation} for the requested `taps`.

  Computation stops after the deepest requested tap, so its parameters (and those of deeper convs) only
  exist up to that block. Activations come out in `dtype`; params are always float32.

  In bfloat16 only the input normalisation stays float32: ReLU and max-pool are exact in any dtype and there is
  no normalisation layer. The taps stay in `dtype` (they are loss features, not outputs, and half the memory of
  the activations a perceptual loss keeps); `losses.perceptual_loss` upcasts before subtracting, but the taps'
  own rounding (2^-8 relative) is a floor under |f(recon) - f(x)| once the reconstruction is close.
  """
  taps: Sequence[str] = TAPS
  normalize_input: bool = True  # input RGB in [0, 1]; False: the caller already normalised it
  dtype: Any = jnp.float32  # compute dtype (e.g. bfloat16 for a cheaper perceptual loss)

  @nn.compact
  def __call__(self, x):
    unknown = [t for t in self.taps if t not in TAPS]
    if unknown or not self.taps:
      raise ValueError(f"taps must be a non-empty subset of {TAPS}, got {tuple(self.taps)}")
    last = max(TAPS.index(t) for t in self.taps)

    x = jnp.asarray(x, jnp.float32)
    if self.normalize_input:
      x = (x - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
    x = x.astype(self.dtype)

    out = {}
    for block, (convs, width) in enumerate(zip(_BLOCK_CONVS[:last + 1], _BLOCK_WIDTHS)):
      if block:
        # torch MaxPool2d(2, 2) floors odd sizes, as does VALID padding.
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
      for idx in convs:
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=jnp.float32,
                    name=f"features_{idx}")(x)
        x = nn.relu(x)
      if TAPS[block] in self.taps:
        out[TAPS[block]] = x
    return {t: out[t] for t in TAPS if t in out}


CONVERTER = convert.Converter(
    rules=(
        convert.Rule(r"features\.(\d+)\.weight", r"params/features_\1/kernel", convert.conv),
        convert.Rule(r"features\.(\d+)\.bias", r"params/features_\1/bias"),
    ),
    # A full torchvision vgg16 checkpoint also holds the ImageNet classifier; the trunk never uses it.
    ignore=(r"classifier\..*",),
)

models.register(models.ModelEntry(
    name="vgg16",
    build=VGG16,
    input_shape=(1, 64, 64, 3),
    converter=CONVERTER,
    description="torchvision VGG16 features trunk (IMAGENET1K_V1), taps relu1_2..relu5_3, for perceptual losses",
))
