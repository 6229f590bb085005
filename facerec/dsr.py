"""DSR: the super-resolution front end that turns a very-low-resolution face into a 112x112 face for EdgeFace.

"DSR" is not a published model here but the seed's name for a deep SR stage in front of a frozen or fine-tuned
recogniser (spec 004; shared/research/edgeface.md section 5). This is the EDSR skeleton (Lim et al. 2017) it
describes, trained by us (no PyTorch weights, so no converter):

    x (B, s, s, 3) in [0, 1]
    head:  conv3x3 3 -> F                                                   (on x - 0.5, see below)
    trunk: num_blocks x [conv3x3 -> ReLU -> conv3x3, x 0.1, + input] -> conv3x3, + head output    (at s x s)
    up:    n x [conv3x3 F -> 4F -> pixel shuffle x2]                        n = ceil(log2(out_size / s))
    tail:  conv3x3 F -> 3; if s * 2^n > out_size, an antialiased bicubic resize down to out_size
    out = tail + bicubic_upsample(x)                                        (B, out_size, out_size, 3)

    module = DSR()                                           # 16 -> 112, F=64, 8 blocks; or models.load("dsr", dir)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    sr = module.apply(variables, lr_faces)                   # (B, 112, 112, 3) float32, NOT clipped

Design choices:
* No BatchNorm and residual scaling 0.1 (EDSR): BN hurts SR (it normalises away the intensity range the output
  must reproduce) and the 0.1 keeps a deep unnormalised trunk stable.
* Global bicubic skip: the network predicts only the residual over bicubic upsampling, and the last conv is
  zero-initialised, so an untrained DSR is exactly bicubic (a sane starting point for joint fine-tuning with a
  recogniser, and the baseline it must beat). The head sees `x - 0.5` so zero padding at the border reads as
  mid-grey rather than black.
* 16 -> 112 is x7, not a power of two: the upsampler goes x8 to 128 and the 3-channel tail is bicubic-resized
  to 112 (torch `interpolate(mode="bicubic", antialias=True)`, via common.image_ops). A centre crop or
  Idiap's valid 5x5 convs (edgeface.md 5.1) would also reach 112 but keep only the central 112/128 of the field
  of view, while the 16x16 input and the 112x112 HR target cover the same face: a translation-equivariant
  conv net cannot learn that 8/7 zoom, so every output pixel would be spatially misaligned with its target.
  The resize keeps geometry exact and costs nothing to learn. 14 -> 112 is exactly x8: no resize.
* Pixel shuffle follows torch `nn.PixelShuffle` channel order (channel c * r^2 + i * r + j goes to sub-pixel
  (i, j) of output channel c), so a converter from a torch DSR only needs the usual OIHW -> HWIO transposes.
* Output range: bicubic overshoots (a = -0.75) and the residual is unconstrained, so values slightly outside
  [0, 1] occur. The module does not clip: a clip would zero the pixel-loss gradient exactly where the output
  is most wrong. Clip at use (`jnp.clip(sr, 0, 1)`) before saving images; EdgeFace(normalize_input=True) takes
  the unclipped output as is (x * 2 - 1, a slightly wider range than trained on).

`dtype` is the compute dtype of the convs and the EDSR trunk (params stay float32). The image itself never passes
through it: the bicubic skip, the tail's resize and the output are float32, so bf16 only rounds the predicted
residual (by ~2^-8 of its size, far below one 8-bit level) and the centred input x - 0.5 (by up to 2^-10, a
quarter of a level). The conv biases are added in float32 (`facerec.models.Conv`): their gradients sum over up to
B x 128 x 128 positions, which a bf16 accumulator cannot (the tail bias came out at 0.2x its float32 gradient).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from common import image_ops
from common import models
from facerec.models import Conv  # nn.Conv that adds its bias in float32 (bf16 bias gradients; see the module doc)

_f32 = jnp.float32


def pixel_shuffle(x, r: int):
  """NHWC sub-pixel rearrangement equal to torch `F.pixel_shuffle(x, r)` on the NCHW transpose.

  (B, H, W, C * r * r) -> (B, H * r, W * r, C): output[b, h * r + i, w * r + j, c] = x[b, h, w, c * r * r + i * r + j].
  """
  b, h, w, c = x.shape
  if c % (r * r):
    raise ValueError(f"pixel_shuffle: {c} channels are not a multiple of {r}^2")
  x = x.reshape(b, h, w, c // (r * r), r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # (B, H, i, W, j, C)
  return x.reshape(b, h * r, w * r, c // (r * r))


def num_upsamplings(in_size: int, out_size: int) -> int:
  """Number of x2 pixel-shuffle stages to reach at least out_size."""
  if out_size < in_size:
    raise ValueError(f"DSR upsamples: out_size {out_size} < in_size {in_size}")
  n = 0
  while in_size << n < out_size:
    n += 1
  return n


class ResBlock(nn.Module):
  features: int
  res_scale: float = 0.1
  dtype: Any = _f32

  @nn.compact
  def __call__(self, x):
    conv = lambda name: Conv(self.features, (3, 3), dtype=self.dtype, param_dtype=_f32, name=name)
    y = conv("conv2")(nn.relu(conv("conv1")(x)))
    return x + self.res_scale * y


class DSR(nn.Module):
  """(B, in_size, in_size, 3) RGB in [0, 1] -> (B, out_size, out_size, 3) float32, unclipped (see module doc)."""
  in_size: int = 16
  out_size: int = 112
  features: int = 64
  num_blocks: int = 8
  res_scale: float = 0.1  # EDSR's residual scaling
  dtype: Any = _f32  # compute dtype; params are float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    del train  # no BatchNorm or dropout
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"DSR expects NHWC RGB images (B, H, W, 3), got shape {images.shape}")
    if images.shape[1:3] != (self.in_size, self.in_size):
      raise ValueError(f"DSR built for {self.in_size}x{self.in_size} inputs got {images.shape[1]}x{images.shape[2]}; "
                       "set model in_size or resize")
    n_up = num_upsamplings(self.in_size, self.out_size)
    conv = lambda f, name, **kw: Conv(f, (3, 3), dtype=self.dtype, param_dtype=_f32, name=name, **kw)

    x = jnp.asarray(images, _f32)
    head = conv(self.features, "head")((x - 0.5).astype(self.dtype))
    y = head
    for i in range(self.num_blocks):
      y = ResBlock(self.features, self.res_scale, self.dtype, name=f"blocks_{i}")(y)
    y = conv(self.features, "trunk_out")(y) + head
    for i in range(n_up):
      y = pixel_shuffle(conv(4 * self.features, f"upsample_{i}")(y), 2)
    y = conv(3, "tail", kernel_init=nn.initializers.zeros)(y).astype(_f32)
    if y.shape[1] != self.out_size:
      y = image_ops.resize_bicubic_torch(y, (self.out_size, self.out_size), antialias=True)
    skip = image_ops.resize_bicubic_torch(x, (self.out_size, self.out_size))
    return skip + y


models.register(models.ModelEntry(
    name="dsr",
    build=DSR,
    input_shape=lambda kw: (1, kw.get("in_size", 16), kw.get("in_size", 16), 3),
    converter=None,  # trained here; a torch EDSR would convert with conv transposes only (see pixel_shuffle)
    description="DSR face super-resolution (EDSR trunk, pixel-shuffle x2 stages, bicubic skip): "
                "in_size^2 RGB [0, 1] -> out_size^2 RGB",
))
