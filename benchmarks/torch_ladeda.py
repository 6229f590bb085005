"""Plain-torch LaDeDa9 and Tiny-LaDeDa, and the torch half of the LaDeDa benchmark workloads.

The models are written from the architecture description (shared/research/ladeda.md), with the module names,
hence state-dict keys, of the official `networks/LaDeDa.py` / `networks/Tiny_LaDeDa.py`. They are the reference
of the Flax parity tests (tests/test_ladeda.py) and the PyTorch twins of `ladeda_*` / `tiny_ladeda_*` in
benchmarks/workloads.py, which imports this module only inside its torch factories (torch is a test extra).

Both models return the (B, 1, h, w) patch-logit map with `pool=False`; the image logit is its mean, which equals the
official pooled path (`pool=True`: an H x H average pool of the features, then `fc`) on square inputs.
"""

import contextlib
import re

import torch
from torch import nn
from torch.nn import functional as F

from distill import models as dm


def preprocess(x, kind):
  if kind == "raw":
    return x
  if kind == "NPR":  # nearest down x0.5 then up x2, as the official `interpolate`
    down = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
    return x - F.interpolate(down, scale_factor=2.0, mode="nearest", recompute_scale_factor=True)
  k = torch.tensor(dm.GRAD_KERNELS[kind], dtype=x.dtype, device=x.device).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
  with torch.autocast(x.device.type, enabled=False):  # float32 under a bf16 autocast too, as distill.models does
    return F.conv2d(x, k, groups=3, padding="same")


class Bottleneck(nn.Module):
  def __init__(self, inplanes, planes, stride=1, downsample=None, kernel_size=1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size, stride=stride, padding=0, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.downsample = downsample

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    residual = x if self.downsample is None else self.downsample(x)
    diff = residual.size(-1) - out.size(-1)  # the official crop: width difference, used on both axes
    if diff:
      residual = residual[:, :, :-diff, :-diff]
    return torch.relu(out + residual)


class LaDeDa(nn.Module):
  """LaDeDa9: blocks [3,4,6,3], strides [2,2,2,1], kernel3 [1,1,0,0]; `layers` and `width` as in distill.models."""

  def __init__(self, preprocess_type="NPR", width=64, layers=(3, 4, 6, 3)):
    super().__init__()
    self.preprocess_type = preprocess_type
    self.conv1 = nn.Conv2d(3, width, 1, bias=False)
    self.conv2 = nn.Conv2d(width, width, 3, padding=0, bias=False)
    self.bn1 = nn.BatchNorm2d(width, momentum=0.001)
    inplanes = width
    for stage, (n, stride, k3) in enumerate(zip(layers, (2, 2, 2, 1), (1, 1, 0, 0))):
      planes = width * 2 ** stage
      downsample = None
      if stride != 1 or inplanes != 4 * planes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(4 * planes))
      blocks = [Bottleneck(inplanes, planes, stride, downsample, 3 if k3 > 0 else 1)]
      inplanes = 4 * planes
      blocks += [Bottleneck(inplanes, planes, kernel_size=3 if i < k3 else 1) for i in range(1, n)]
      setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
    self.fc = nn.Linear(inplanes, 1)

  def features(self, x):
    x = torch.relu(self.bn1(self.conv2(self.conv1(preprocess(x, self.preprocess_type)))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  def forward(self, x, pool=True):
    x = self.features(x)
    if pool:  # the official pooled path: an HxH average pool (square inputs only), flatten, fc
      return self.fc(F.avg_pool2d(x, x.size(2), stride=1).flatten(1))
    return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TinyBlock(nn.Module):
  def __init__(self, planes=8):
    super().__init__()
    self.conv1 = nn.Conv2d(planes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=2, padding=0, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)

  def forward(self, x):
    return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class Tiny(nn.Module):
  def __init__(self, preprocess_type="right_diag", width=8):
    super().__init__()
    self.preprocess_type = preprocess_type
    self.conv1 = nn.Conv2d(3, width, 1, bias=False)
    self.conv2 = nn.Conv2d(width, width, 3, padding=0, bias=False)
    self.bn1 = nn.BatchNorm2d(width, momentum=0.001)
    self.layer1 = nn.Sequential(TinyBlock(width))
    self.fc = nn.Linear(width, 1)  # the released checkpoints' fc (features_dim = 8)

  def features(self, x):
    x = torch.relu(self.bn1(self.conv2(self.conv1(preprocess(x, self.preprocess_type)))))
    return self.layer1(x)

  def forward(self, x, pool=True):
    x = self.features(x)
    if pool:
      return self.fc(F.avg_pool2d(x, x.size(2), stride=1).flatten(1))
    return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# --- the torch half of the benchmark workloads --------------------------------------------------------------------
# The factories in benchmarks/workloads.py draw the weights (a numpy state dict in this layout) and the data, and
# call these; each returns `(fn, args)` for benchmarks.run, arrays and modules already on `device`. `autocast` is
# a () -> context manager (benchmarks.workloads.torch_autocast) that the forward and the loss run under: the
# run's compute dtype; backward and the optimizer step run outside it.

def build(name: str, state_dict, device, **kwargs) -> nn.Module:
  """"ladeda9" | "tiny_ladeda" (kwargs: LaDeDa's `width`, `layers`) with `state_dict` (numpy arrays, the official
  keys) loaded strictly."""
  model = LaDeDa(**kwargs) if name == "ladeda9" else Tiny(**kwargs)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its conv algorithms, as XLA autotunes
  return model.to(device)


def to_device(images, labels, device):
  """NHWC numpy images -> NCHW tensor; labels (B,) -> float32, as BCE-with-logits takes them."""
  pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  return pixels, (None if labels is None else torch.from_numpy(labels).float().to(device))


def image_logit_and_map(model, pixels):
  patch = model(pixels, pool=False)[:, 0]
  return patch.mean((1, 2)), patch


def forward(model, images, device, autocast=contextlib.nullcontext):
  pixels, _ = to_device(images, None, device)

  def fn(model, pixels):
    with torch.inference_mode(), autocast():
      return image_logit_and_map(model, pixels)

  return fn, (model.eval(), pixels)


def frozen(model: nn.Module, freeze) -> list[nn.Module]:
  """The modules of `model` whose parameters all match a regex of `freeze` (common.optim's patterns on Flax
  paths: torch `layer1.0.conv1.weight` is matched as `layer1_0/conv1/weight`)."""
  patterns = [re.compile(p) for p in freeze]
  flax_path = lambda name: re.sub(r"\.(\d+)(?=\.|$)", r"_\1", name).replace(".", "/")
  return [m for name, m in model.named_modules() if list(m.parameters(recurse=False)) and all(
      any(p.fullmatch(flax_path(f"{name}.{k}")) for p in patterns) for k, _ in m.named_parameters(recurse=False))]


def finetune(model, images, labels, device, lr: float, weight_decay: float, freeze=(),
             autocast=contextlib.nullcontext):
  """As distill.train.teacher_task: BCE-with-logits on the image logit, Adam with L2 weight decay (added to the
  gradient) on the parameters not matched by `freeze`; frozen modules get no gradient and their BatchNorms run on
  running statistics (eval mode), the others' in train mode."""
  model.train()
  for m in frozen(model, freeze):
    m.requires_grad_(False).eval()
  opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)

  def train_step(model, pixels, labels):
    opt.zero_grad(set_to_none=True)
    with autocast():
      logit, _ = image_logit_and_map(model, pixels)
      loss = F.binary_cross_entropy_with_logits(logit, labels)
    loss.backward()
    opt.step()
    return model, loss.detach()

  return train_step, (model, *to_device(images, labels, device))


def distill(student, teacher, images, labels, device, lr: float, alpha_distill: float, alpha_task: float,
            autocast=contextlib.nullcontext):
  """Student BN in train mode; frozen teacher in eval mode; alpha_distill MSE(pooled student map, teacher map) +
  alpha_task BCE(student logit, label); Adam."""
  opt = torch.optim.Adam(student.parameters(), lr=lr)
  teacher = teacher.eval().requires_grad_(False)

  def train_step(student, pixels, labels):
    opt.zero_grad(set_to_none=True)
    with autocast():
      with torch.no_grad():
        t_map = teacher(pixels, pool=False)[:, 0]
      logit, s_map = image_logit_and_map(student, pixels)
      pooled = F.adaptive_avg_pool2d(s_map[:, None], t_map.shape[-2:])[:, 0]
      loss = (alpha_distill * F.mse_loss(pooled, t_map)
              + alpha_task * F.binary_cross_entropy_with_logits(logit, labels))
    loss.backward()
    opt.step()
    return student, loss.detach()

  return train_step, (student.train(), *to_device(images, labels, device))
