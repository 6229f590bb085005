"""Plain-torch EdgeFace and DSR, and the torch half of the facerec benchmark workloads.

timm is not usable here, so `EdgeFace` rebuilds the module tree of otroshi/edgeface's `get_model(...)`
(`TimmFRWrapperV2(edgenext_*)` after `replace_linear_with_lowrank_2`) by hand, from shared/research/edgeface.md;
its `state_dict()` has the original keys (`model.stages.1.blocks.2.xca.qkv.linear2.weight`, ...), so
facerec.models.CONVERTER takes it as it takes a released checkpoint. `DSR` is facerec.dsr.DSR written with torch
ops (nn.PixelShuffle, F.interpolate) under the keys a torch port would use (`blocks.0.conv1.weight`, ...).

They are the references of the Flax parity tests (tests/test_edgeface.py, tests/test_dsr.py) and the PyTorch twins
of `edgeface_embed`, `facerec_contrastive_train` and `dsr_forward` in benchmarks/workloads.py, which imports this
module only inside its torch factories (torch is a test extra).
"""

import contextlib
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from facerec import dsr as dsr_lib


# --- EdgeFace (EdgeNeXt + LoRaLin) ----------------------------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
  def forward(self, x):  # NCHW, normalised over C
    return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                        self.eps).permute(0, 3, 1, 2)


class LoRaLin(nn.Module):
  def __init__(self, d_in, d_out, rank, bias=True):
    super().__init__()
    self.linear1 = nn.Linear(d_in, rank, bias=False)
    self.linear2 = nn.Linear(rank, d_out, bias=bias)

  def forward(self, x):
    return self.linear2(self.linear1(x))


def make_linear(d_in, d_out, ratio):
  return nn.Linear(d_in, d_out) if ratio is None else LoRaLin(d_in, d_out, max(2, int(min(d_in, d_out) * ratio)))


class Mlp(nn.Module):
  def __init__(self, dim, hidden, ratio):
    super().__init__()
    self.fc1 = make_linear(dim, hidden, ratio)
    self.act = nn.GELU()
    self.fc2 = make_linear(hidden, dim, ratio)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class ConvBlock(nn.Module):
  def __init__(self, dim, k, ratio):
    super().__init__()
    self.conv_dw = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, 4 * dim, ratio)
    self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

  def forward(self, x):
    y = self.conv_dw(x).permute(0, 2, 3, 1)
    y = self.gamma * self.mlp(self.norm(y))
    return x + y.permute(0, 3, 1, 2)


class PosEnc(nn.Module):
  def __init__(self, dim, hidden=32, temperature=10000):
    super().__init__()
    self.token_projection = nn.Conv2d(2 * hidden, dim, 1)
    self.hidden, self.temperature = hidden, temperature

  def forward(self, b, h, w):
    device = self.token_projection.weight.device
    ones = torch.ones(b, h, w, device=device)
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    d = torch.arange(self.hidden, dtype=torch.float32, device=device)
    d = self.temperature ** (2 * torch.div(d, 2, rounding_mode="floor") / self.hidden)
    px, py = x[..., None] / d, y[..., None] / d
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return self.token_projection(torch.cat((py, px), dim=3).permute(0, 3, 1, 2))


class XCA(nn.Module):
  def __init__(self, dim, heads, ratio):
    super().__init__()
    self.heads = heads
    self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
    self.qkv = make_linear(dim, 3 * dim, ratio)
    self.proj = make_linear(dim, dim, ratio)

  def forward(self, x):
    b, n, c = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 4, 1).unbind(0)
    attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
    return self.proj((attn.softmax(-1) @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class SDTA(nn.Module):
  def __init__(self, dim, scales, heads, pos, ratio):
    super().__init__()
    width = math.ceil(dim / scales)
    self.convs = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1, groups=width)
                                for _ in range(max(1, scales - 1))])
    self.pos_embd = PosEnc(dim) if pos else None
    self.norm_xca = nn.LayerNorm(dim, eps=1e-6)
    self.gamma_xca = nn.Parameter(1e-6 * torch.ones(dim))
    self.xca = XCA(dim, heads, ratio)
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, 4 * dim, ratio)
    self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

  def forward(self, x):
    shortcut = x
    spx = x.chunk(len(self.convs) + 1, dim=1)
    outs, sp = [], spx[0]
    for i, conv in enumerate(self.convs):
      sp = conv(sp if i == 0 else sp + spx[i])
      outs.append(sp)
    x = torch.cat(outs + [spx[-1]], 1)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w).permute(0, 2, 1)
    if self.pos_embd is not None:
      x = x + self.pos_embd(b, h, w).reshape(b, c, h * w).permute(0, 2, 1)
    x = x + self.gamma_xca * self.xca(self.norm_xca(x))
    x = self.gamma * self.mlp(self.norm(x.reshape(b, h, w, c)))
    return shortcut + x.permute(0, 3, 1, 2)


class Stage(nn.Module):
  def __init__(self, c_in, c_out, depth, i, heads, ratio):
    super().__init__()
    self.downsample = (nn.Sequential(LayerNorm2d(c_in, eps=1e-6), nn.Conv2d(c_in, c_out, 2, stride=2))
                       if i else nn.Identity())
    k, scales, pos, n_global = (3, 5, 7, 9)[i], (2, 2, 3, 4)[i], i == 1, (0, 1, 1, 1)[i]
    self.blocks = nn.Sequential(*[ConvBlock(c_out, k, ratio) if j < depth - n_global
                                  else SDTA(c_out, scales, heads, pos, ratio) for j in range(depth)])

  def forward(self, x):
    return self.blocks(self.downsample(x))


class EdgeNeXt(nn.Module):
  def __init__(self, dims, depths, heads, ratio, emb=512):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
    self.stages = nn.Sequential(*[Stage(dims[max(i - 1, 0)], dims[i], depths[i], i, heads[i], ratio)
                                  for i in range(4)])
    self.head = nn.Module()
    self.head.norm = LayerNorm2d(dims[-1], eps=1e-6)
    self.head.fc = make_linear(dims[-1], emb, ratio)  # the 'head' guard never fires: head.fc is low-rank too

  def forward(self, x):
    x = self.stages(self.stem(x)).mean((2, 3), keepdim=True)
    return self.head.fc(self.head.norm(x).flatten(1))


class EdgeFace(nn.Module):
  """TimmFRWrapperV2: the net lives in `.model`. Kwargs as facerec.models.VARIANTS; NCHW input in [-1, 1]."""

  def __init__(self, dims, depths, heads, rank_ratio, embedding_dim=512):
    super().__init__()
    self.model = EdgeNeXt(dims, depths, heads, rank_ratio, embedding_dim)

  def forward(self, x):
    return self.model(x)


# --- DSR ------------------------------------------------------------------------------------------------------------
class DSR(nn.Module):
  """facerec.dsr.DSR in torch (same kwargs and output, NCHW): keys head, blocks.i.conv{1,2}, trunk_out,
  upsample.i, tail."""

  def __init__(self, in_size=16, out_size=112, features=64, num_blocks=8, res_scale=0.1):
    super().__init__()
    conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1)
    self.head = conv(3, features)
    self.blocks = nn.ModuleList()
    for _ in range(num_blocks):
      block = nn.Module()
      block.conv1, block.conv2 = conv(features, features), conv(features, features)
      self.blocks.append(block)
    self.trunk_out = conv(features, features)
    self.upsample = nn.ModuleList([conv(features, 4 * features)
                                   for _ in range(dsr_lib.num_upsamplings(in_size, out_size))])
    self.shuffle = nn.PixelShuffle(2)
    self.tail = conv(features, 3)
    self.out_size, self.res_scale = out_size, res_scale

  def forward(self, x):
    head = self.head(x - 0.5)
    y = head
    for b in self.blocks:
      y = y + self.res_scale * b.conv2(torch.relu(b.conv1(y)))
    y = self.trunk_out(y) + head
    for conv in self.upsample:
      y = self.shuffle(conv(y))
    # float32 from the tail on, as facerec.dsr.DSR: under autocast only the trunk's convs run in bfloat16, the
    # resize and the bicubic skip never do (CPU has no bfloat16 antialiased bicubic either).
    y = self.tail(y).float()
    size = (self.out_size, self.out_size)
    if y.shape[-1] != self.out_size:
      y = F.interpolate(y, size=size, mode="bicubic", align_corners=False, antialias=True)
    return y + F.interpolate(x, size=size, mode="bicubic", align_corners=False)


# --- the torch half of the benchmark workloads ----------------------------------------------------------------------
# The factories in benchmarks/workloads.py draw the weights (numpy state dicts in these layouts) and the data
# (NHWC numpy), and call these; each returns `(fn, args)` for benchmarks.run, arrays and modules on `device`.
# `autocast` is a () -> context manager (benchmarks.workloads.torch_autocast) that the forward passes and the
# loss run under: the run's compute dtype; backward and the optimizer step run outside it.

def build(module: nn.Module, state_dict, device) -> nn.Module:
  """`module` with `state_dict` (numpy arrays) loaded strictly, on `device`, in eval mode."""
  module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its conv algorithms, as XLA autotunes
  return module.to(device).eval()


def to_nchw(images: np.ndarray, device) -> torch.Tensor:
  return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)


def inference(model: nn.Module, images: np.ndarray, device, autocast=contextlib.nullcontext):
  """fn(model, x) = model(x) under inference_mode and `autocast`; x the NCHW tensor of the NHWC `images`."""
  def fn(model, x):
    with torch.inference_mode(), autocast():
      return model(x)

  return fn, (model, to_nchw(images, device))


def supcon_loss(features, labels, temperature: float, base_temperature: float):
  """Supervised contrastive loss, HobbitLong/SupContrast `SupConLoss` semantics on (N, d) features (normalised
  here): per anchor, the mean over its positives (same label, itself excluded) of the log-softmax over all other
  samples, times -temperature / base_temperature; the mean over the anchors that have a positive."""
  z = F.normalize(features, dim=1)
  logits = z @ z.T / temperature
  logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # numerical stability; cancels out
  others = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
  positive = (labels[:, None] == labels[None, :]) & others
  log_prob = logits - torch.log((torch.exp(logits) * others).sum(1, keepdim=True))
  n_pos = positive.sum(1)
  mean_log_prob_pos = (positive * log_prob).sum(1) / n_pos.clamp(min=1)
  return -(temperature / base_temperature) * mean_log_prob_pos[n_pos > 0].mean()


def contrastive_finetune(edgeface, dsr, vlr, hr, labels, device, lr: float, temperature: float,
                         autocast=contextlib.nullcontext):
  """facerec.train.finetune's contrastive step: frozen DSR (no_grad) on the VLR batch; EdgeFace (input in [0, 1],
  mapped to [-1, 1] as EdgeFace(normalize_input=True)) embeds the DSR output and the HR batch in two passes of B;
  SupCon over the 2B embeddings with labels [labels; labels] (= losses.cross_resolution_infonce); Adam on
  EdgeFace's parameters."""
  opt = torch.optim.Adam(edgeface.parameters(), lr=lr)
  dsr = dsr.eval().requires_grad_(False)

  def train_step(edgeface, vlr, hr, labels):
    opt.zero_grad(set_to_none=True)
    with autocast():
      with torch.no_grad():
        sr = dsr(vlr)
      e_sr, e_hr = edgeface(sr * 2 - 1), edgeface(hr * 2 - 1)
      loss = supcon_loss(torch.cat([e_sr, e_hr]), torch.cat([labels, labels]), temperature, temperature)
    loss.backward()
    opt.step()
    return edgeface, loss.detach()

  labels = torch.from_numpy(labels).to(device)
  return train_step, (edgeface.train(), to_nchw(vlr, device), to_nchw(hr, device), labels)
