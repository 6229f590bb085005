"""The `ear_vae_train` workload: one ear VAE teacher train step (forward, every loss term, backward, AdamW).

The recipe is configs/ear_teacher/default.py at 224 px: DINOv2-S/14 backbone (random weights; all of it trainable,
backbone_trainable_blocks -1, where the config's default 0 freezes it), attention-pooling head to a 1024-d latent,
conv decoder (512, 256, 128, 64, 32), and the balanced loss: centre-weighted focal L1 + VGG16 perceptual
(relu1_2..relu4_3) + 0.4 (1 - SSIM) + 0.1 edge + 5e-6 KL + 0.1 contrastive, under AdamW (lr 3e-4, weight decay
1e-4, a constant schedule instead of the warm-up + cosine) with gradient clipping at 1.0.

JAX times the trainer's own step (benchmarks/train_steps.py): `common.trainer.build` on the task of
`ear_teacher.train.make_task`, which reads the images (uint8) and the random VGG16 from files, as a real run does;
the step also augments the batch (reflect-pad crop, flip, brightness / contrast) on the device. Torch trains on the
images as they are.

The PyTorch twin is the same network and the same math written independently in plain torch: HF
`transformers.Dinov2Model` (sdpa attention), nn.MultiheadAttention pooling, a torch decoder, a hand-built
VGG16 trunk, the loss formulas of ear_teacher/losses.py re-derived with torch ops, torch.optim.AdamW and
clip_grad_norm_. It is not numerically identical to the JAX step: the trained networks start from different
random initialisations (each framework's own). The VGG16 loss network is a fixed constant, so both sides
load the same random He-initialised weights (torchvision's init), which keeps the perceptual terms comparable.

`dtype` (the run's --dtype): JAX computes the VAE and the VGG in it (config model.dtype and perceptual.dtype);
torch runs the forward passes and the loss under autocast to it, backward and AdamW outside. Parameters stay
float32 in both.

Test-only overrides: `depth` (backbone blocks), `image_size` and `decoder_channels` (image_size must be a
multiple of 14 and of 2 ** len(decoder_channels), e.g. 56 with (64, 32, 16)).
"""

import os
import tempfile

import numpy as np

from benchmarks import train_steps
from common import convert, models
from common.data import IMAGENET_MEAN, IMAGENET_STD
from common.models import dinov2
from common.models import vgg as vgg_lib
from configs.ear_teacher import default
from ear_teacher import train as train_lib

_VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # torchvision cfg "D": (width, convs) per block


def _config(depth, image_size, decoder_channels, dtype="float32"):
  """The default ear teacher config with the test-only shrinkers applied, the backbone trainable, a constant
  learning rate, and the VAE and its VGG loss network computing in `dtype`."""
  c = default.get_config()
  c.model.dtype = c.perceptual.dtype = dtype
  if depth:
    c.model.backbone.depth = depth
  if image_size:
    c.image_size = image_size  # model.image_size references it
  if decoder_channels:
    c.model.decoder_channels = tuple(decoder_channels)
  stages = len(c.model.decoder_channels)
  if c.image_size % 14 or c.image_size % 2 ** stages:
    raise ValueError(f"image_size {c.image_size} must be a multiple of 14 and of 2**{stages} "
                     f"(decoder_channels {tuple(c.model.decoder_channels)})")
  # A benchmark times steady-state steps: no warm-up ramp or decay to change the arithmetic between calls.
  c.optim.schedule, c.optim.warmup_epochs = "constant", 0.0
  c.backbone_trainable_blocks = -1  # the whole network trains (the torch twin's AdamW covers every parameter)
  return c


def _images(batch: int, size: int) -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _vgg_layers(taps):
  """torchvision's VGG16 `features` up to the deepest tap, in order: ("conv", c_in, c_out, tap | None) / ("pool",).

  Each conv is followed by its ReLU (torchvision index + 1); `tap` names the ReLU closing a block when requested.
  """
  last = max(vgg_lib.TAPS.index(t) for t in taps)
  layers, c_in = [], 3
  for block, (width, convs) in enumerate(_VGG16_BLOCKS[:last + 1]):
    if block:
      layers.append(("pool",))
    for i in range(convs):
      tap = vgg_lib.TAPS[block] if i == convs - 1 and vgg_lib.TAPS[block] in taps else None
      layers.append(("conv", c_in, width, tap))
      c_in = width
  return layers


def _vgg_state_dict(taps) -> dict[str, np.ndarray]:
  """Random VGG16 trunk weights as a torchvision `features.*` state dict: He-normal (fan_out) kernels, zero biases."""
  rng = np.random.default_rng(0)
  sd, index = {}, 0
  for layer in _vgg_layers(taps):
    if layer[0] == "conv":
      _, c_in, c_out, _ = layer
      sd[f"features.{index}.weight"] = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2 / (9 * c_out))).astype(
          np.float32)
      sd[f"features.{index}.bias"] = np.zeros(c_out, np.float32)
      index += 2  # conv + ReLU
    else:
      index += 1
  return sd


# --- JAX ----------------------------------------------------------------------------------------------------------

def make_jax(batch: int, device, variant=None, dtype="float32", depth=None, image_size=None, decoder_channels=None):
  del variant
  c = _config(depth, image_size, decoder_channels, dtype)
  c.batch_size = batch
  taps = tuple(c.perceptual.taps)
  vgg = convert.convert_state_dict(_vgg_state_dict(taps), vgg_lib.CONVERTER,
                                   convert.flatten(models.abstract_variables(models.get("vgg16"), {"taps": taps})),
                                   source="random vgg16")
  with tempfile.TemporaryDirectory(prefix="bench-ear-") as tmp:
    # make_task reads its images and VGG from files: the batch as both splits, the VGG as a converted vgg16
    # directory. The step augments the images itself (crop, flip, brightness / contrast), as in training.
    c.train_npy = c.val_npy = os.path.join(tmp, "images.npy")
    np.save(c.train_npy, _images(batch, c.image_size))
    c.perceptual.vgg_path = train_steps.save_model(tmp, "vgg16", {"taps": taps}, vgg)
    task, _, _, _ = train_lib.make_task(c, tmp)
    return train_steps.train_step(c, task, device)


# --- PyTorch ------------------------------------------------------------------------------------------------------
# Modules are plain containers (nn.ModuleDict / nn.Sequential) and the forward passes are functions, so that torch
# stays an optional import of this file: JAX-only environments still run the JAX half.

def _torch_vae(cfg):
  """Parameters of the EarVAE in torch: backbone, head (attention pooling + MLP), decoder (proj + stages)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  arch = dinov2.VARIANTS[cfg.backbone.variant]
  d = arch["embed_dim"]
  # image_size 518: the hub models' 37x37 position table, resampled to the input's grid as in JAX; layer scale
  # starts at DINOv2's training init 1e-5, as common.models.dinov2 does (HF's default is 1.0).
  backbone = transformers.Dinov2Model(transformers.Dinov2Config(
      hidden_size=d, num_hidden_layers=cfg.backbone.depth or arch["depth"], num_attention_heads=arch["num_heads"],
      image_size=518, patch_size=14, layerscale_value=1e-5, attn_implementation="sdpa"))
  head = nn.ModuleDict(dict(
      attn=nn.MultiheadAttention(d, cfg.encoder_heads, batch_first=True),
      norm=nn.LayerNorm(d, eps=1e-6),  # Flax's default epsilon
      fc1=nn.Linear(d, cfg.encoder_hidden), fc2=nn.Linear(cfg.encoder_hidden, cfg.encoder_hidden),
      mu=nn.Linear(cfg.encoder_hidden, cfg.latent_dim), logvar=nn.Linear(cfg.encoder_hidden, cfg.latent_dim)))
  head.register_parameter("query", nn.Parameter(0.02 * torch.randn(1, 1, d)))
  nn.init.zeros_(head.logvar.weight)  # logvar starts near 0, as in ear_teacher.model

  channels = tuple(cfg.decoder_channels)
  s0 = cfg.image_size // 2 ** len(channels)
  stages, c_in = [], channels[0]
  for ch in channels:
    stages += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, ch, 3, padding=1),
               nn.GroupNorm(min(32, ch // 2), ch, eps=1e-6), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU()]
    c_in = ch
  decoder = nn.Sequential(*stages, nn.Conv2d(c_in, 3, 3, padding=1), nn.Sigmoid())
  # proj's outputs are read as (C0, s0, s0) rather than JAX's (s0, s0, C0): a fixed relabelling of its units.
  proj = nn.Linear(cfg.latent_dim, channels[0] * s0 * s0)
  return nn.ModuleDict(dict(backbone=backbone, head=head, proj=proj, decoder=decoder))


def _torch_vae_forward(m, pixels, mean, std, grid):
  """pixels (B, 3, H, W) in [0, 1] -> recon, mu, logvar (the train-mode EarVAE: z sampled); grid = (C0, s0, s0)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch.nn import functional as F  # pylint: disable=import-outside-toplevel

  tokens = m.backbone(pixel_values=(pixels - mean) / std).last_hidden_state  # normalised cls + patch tokens
  head = m.head
  pooled, _ = head.attn(head.query.expand(tokens.shape[0], -1, -1), tokens, tokens, need_weights=False)
  h = head.norm(pooled[:, 0] + tokens[:, 0])
  h = F.gelu(head.fc2(F.gelu(head.fc1(h))))  # exact (erf) GELU, as nn.gelu(approximate=False)
  mu, logvar = head.mu(h), head.logvar(h).clamp(-10.0, 10.0)
  z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
  return m.decoder(m.proj(z).view(-1, *grid)), mu, logvar


def _torch_vgg(taps):
  """(trunk, {layer index: tap}) with the shared weights of `_vgg_state_dict`; frozen (a loss network)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  layers, tap_at = [], {}
  for layer in _vgg_layers(taps):
    if layer[0] == "pool":
      layers.append(nn.MaxPool2d(2, 2))
      continue
    _, c_in, c_out, tap = layer
    layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
    if tap:
      tap_at[len(layers) - 1] = tap
  trunk = nn.Sequential(*layers)
  trunk.load_state_dict({k.removeprefix("features."): torch.from_numpy(v) for k, v in _vgg_state_dict(taps).items()})
  return trunk.requires_grad_(False).eval(), tap_at


def _torch_vgg_features(trunk, tap_at, x, mean, std) -> list:
  x = (x - mean) / std
  feats = []
  for i, layer in enumerate(trunk):
    x = layer(x)
    if i in tap_at:
      feats.append(x)  # the next layer (conv or pool) is out of place, so the in-place ReLUs don't touch taps
  return feats


def _torch_weight_map(size: int, center_weight: float, device):
  """losses.spatial_weight_map in torch: 1 + (cw - 1) exp(-r^2 / (2 * 0.5^2)) on [-1, 1] coordinates, mean 1."""
  import torch  # pylint: disable=import-outside-toplevel

  u = 2.0 * (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size - 1.0
  bump = torch.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / (2 * 0.5 ** 2))
  m = 1.0 + (center_weight - 1.0) * bump
  return (m / m.mean()).view(1, 1, size, size)


def _torch_gaussian_window(size: int = 11, sigma: float = 1.5, device=None):
  import torch  # pylint: disable=import-outside-toplevel

  x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
  w = torch.exp(-0.5 * (x / sigma) ** 2)
  return w / w.sum()


def _torch_weighted_mean(err, weights):
  """Per-sample sum(w e) / sum(w) over (C, H, W), averaged over the batch."""
  weights = weights.expand_as(err)
  return ((weights * err).sum((1, 2, 3)) / weights.sum((1, 2, 3))).mean()


def _torch_ssim(x, y, taps, k1=0.01, k2=0.03):
  """Per-image Gaussian-window SSIM over the 'valid' region, (co)variances taken on per-channel-centred images."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch.nn import functional as F  # pylint: disable=import-outside-toplevel

  c, k = x.shape[1], taps.shape[0]
  off_x, off_y = x.mean((2, 3), keepdim=True), y.mean((2, 3), keepdim=True)
  xc, yc = x - off_x, y - off_y
  stats = torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], 1)
  n = stats.shape[1]
  stats = F.conv2d(stats, taps.view(1, 1, k, 1).expand(n, 1, k, 1), groups=n)  # separable, depthwise, no padding
  stats = F.conv2d(stats, taps.view(1, 1, 1, k).expand(n, 1, 1, k), groups=n)
  mu_xc, mu_yc, e_xx, e_yy, e_xy = stats.split(c, 1)
  var_x, var_y, cov = e_xx - mu_xc * mu_xc, e_yy - mu_yc * mu_yc, e_xy - mu_xc * mu_yc
  mu_x, mu_y = mu_xc + off_x, mu_yc + off_y
  c1, c2 = k1 ** 2, k2 ** 2  # max_val 1
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
  return ssim_map.mean((1, 2, 3))


def _torch_loss_terms(recon, x, mu, logvar, feats_recon, feats_x, wmap, window, cfg_loss) -> dict:
  """The ear_teacher.losses terms as batch means, on NCHW tensors."""
  import torch  # pylint: disable=import-outside-toplevel

  err = (recon - x).abs()
  weights = wmap
  if cfg_loss.focal:
    with torch.no_grad():  # focal weights choose where the loss looks; they are not optimised
      rel = err / (err.mean((1, 2, 3), keepdim=True) + 1e-6)
      focal = (1.0 + rel) ** cfg_loss.focal_gamma
      weights = weights * (focal / focal.mean((1, 2, 3), keepdim=True))
  d = recon - x
  dx, dy = (d[..., 1:] - d[..., :-1]).abs(), (d[..., 1:, :] - d[..., :-1, :]).abs()
  wx, wy = 0.5 * (wmap[..., 1:] + wmap[..., :-1]), 0.5 * (wmap[..., 1:, :] + wmap[..., :-1, :])
  b = mu.shape[0]
  z = mu * torch.rsqrt((mu * mu).sum(-1, keepdim=True).clamp_min(1e-16))
  off_diagonal = 1.0 - torch.eye(b, device=mu.device)
  return {
      "l1": _torch_weighted_mean(err, weights),
      "ssim": (1.0 - _torch_ssim(recon, x, window)).mean(),
      "edge": _torch_weighted_mean(dx, wx) + _torch_weighted_mean(dy, wy),
      "kl": (-0.5 * (1.0 + logvar - mu * mu - logvar.exp()).sum(-1)).mean(),
      "contrastive": ((z @ z.T).abs() * off_diagonal).sum() / max(b * (b - 1), 1),
      "perceptual": sum((fr - fx).abs().mean() for fr, fx in zip(feats_recon, feats_x)) / len(feats_recon),
  }


def make_torch(batch: int, device, variant=None, dtype="float32", depth=None, image_size=None,
               decoder_channels=None):
  del variant
  import torch  # pylint: disable=import-outside-toplevel

  c = _config(depth, image_size, decoder_channels)
  size = c.image_size
  torch.manual_seed(0)
  model = _torch_vae(c.model).to(device).train()
  trunk, tap_at = _torch_vgg(c.perceptual.taps)
  trunk = trunk.to(device)
  # torch's AdamW decays decoupled from the gradient, as optax.adamw; eps 1e-8 is both defaults.
  opt = torch.optim.AdamW(model.parameters(), lr=c.optim.lr, betas=(c.optim.b1, c.optim.b2),
                          weight_decay=c.optim.weight_decay)
  weights = train_lib.weights_of(c.loss, have_vgg=True)
  mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
  # Fixed per shape, like the constants XLA folds into the JAX program.
  wmap = _torch_weight_map(size, c.loss.center_weight, device)
  window = _torch_gaussian_window(device=device)
  channels = c.model.decoder_channels
  grid = (channels[0], size // 2 ** len(channels), size // 2 ** len(channels))
  # bfloat16: the forward passes and the loss under autocast (the VGG too, as JAX's perceptual.dtype has it); a
  # disabled autocast for float32. (benchmarks.workloads.torch_autocast, not imported: workloads imports this file.)
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def train_step(model, pixels):
    opt.zero_grad(set_to_none=True)
    with autocast():
      recon, mu, logvar = _torch_vae_forward(model, pixels, mean, std, grid)
      feats_r = _torch_vgg_features(trunk, tap_at, recon, mean, std)
      feats_x = _torch_vgg_features(trunk, tap_at, pixels, mean, std)
      terms = _torch_loss_terms(recon, pixels, mu, logvar, feats_r, feats_x, wmap, window, c.loss)
      loss = sum(weights[k] * v for k, v in terms.items() if weights[k])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), c.optim.clip_grad_norm)
    opt.step()
    return model, loss.detach()

  pixels = torch.from_numpy(_images(batch, size) / np.float32(255)).permute(0, 3, 1, 2).contiguous().to(device)
  return train_step, (model, pixels)
