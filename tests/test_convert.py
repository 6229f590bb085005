"""Converter framework: rules applied strictly, atomic output, CLI, `init_from` and `models.load`."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import checkpoint, convert, models, tree
from tests.conftest import REPO, subprocess_env

torch = pytest.importorskip("torch")


class TinyConvBN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, epsilon=1e-5, momentum=0.9, name="bn")(x)
    return nn.Dense(2, name="fc")(nn.relu(x).mean((1, 2)))


class TorchTiny(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    self.bn = torch.nn.BatchNorm2d(4)
    self.fc = torch.nn.Linear(4, 2)

  def forward(self, x):
    return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


TINY = models.register(models.ModelEntry(
    name="test_tiny_convbn", build=lambda **kw: TinyConvBN(**kw), input_shape=(1, 8, 8, 3),
    converter=convert.Converter(
        rules=[convert.Rule(r"conv\.weight", "params/conv/kernel", convert.conv),
               convert.Rule(r"conv\.bias", "params/conv/bias"),
               convert.Rule(r"bn\.weight", "params/bn/scale"),
               convert.Rule(r"bn\.bias", "params/bn/bias"),
               convert.Rule(r"bn\.running_mean", "batch_stats/bn/mean"),
               convert.Rule(r"bn\.running_var", "batch_stats/bn/var"),
               convert.Rule(r"fc\.weight", "params/fc/kernel", convert.linear),
               convert.Rule(r"fc\.bias", "params/fc/bias")],
        ignore=[r".*num_batches_tracked"])))


def torch_model():
  torch.manual_seed(0)
  m = TorchTiny().eval()
  with torch.no_grad():  # non-trivial running stats so the BatchNorm mapping is really exercised
    m.bn.running_mean.uniform_(-1, 1)
    m.bn.running_var.uniform_(0.5, 2)
    m.bn.weight.uniform_(0.5, 2)
  return m


def test_converted_tiny_model_matches_torch(tmp_path):
  m = torch_model()
  src = tmp_path / "tiny.pth"
  torch.save({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}, "epoch": 7}, src)
  convert.convert_file("test_tiny_convbn", str(src), str(tmp_path / "out"))
  module, variables = models.load("test_tiny_convbn", str(tmp_path / "out"))
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  ref = m(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
  got = np.asarray(module.apply(variables, x))
  np.testing.assert_allclose(got, ref, atol=1e-5)  # measured ~1e-7


def test_safetensors_source(tmp_path):
  from safetensors.torch import save_file
  m = torch_model()
  save_file(m.state_dict(), str(tmp_path / "tiny.safetensors"))
  convert.convert_file("test_tiny_convbn", str(tmp_path / "tiny.safetensors"), str(tmp_path / "out"))
  _, variables = models.load(str(tmp_path / "out"))
  np.testing.assert_array_equal(variables["batch_stats"]["bn"]["mean"], m.bn.running_mean.numpy())


def test_mismatches_give_a_diff_and_write_nothing(tmp_path):
  sd = torch_model().state_dict()
  sd.pop("fc.bias")
  sd["extra.weight"] = torch.zeros(3)
  sd["conv.weight"] = torch.zeros(5, 3, 3, 3)
  src = tmp_path / "bad.pth"
  torch.save(sd, src)
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_file("test_tiny_convbn", str(src), str(tmp_path / "out"))
  msg = str(e.value)
  assert "missing in checkpoint (1): params/fc/bias" in msg
  assert "unexpected (not in model) (1): extra.weight" in msg
  assert "shape mismatch (1): params/conv/kernel (3, 3, 3, 5) vs model (3, 3, 3, 4)" in msg
  assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == ["bad.pth"]


def test_existing_destination_is_never_overwritten(tmp_path):
  torch.save(torch_model().state_dict(), tmp_path / "a.pth")
  (tmp_path / "out").mkdir()
  with pytest.raises(models.ModelError, match="already exists"):
    convert.convert_file("test_tiny_convbn", str(tmp_path / "a.pth"), str(tmp_path / "out"))


def test_init_from_subtree_with_dont_load(tmp_path):
  torch.save(torch_model().state_dict(), tmp_path / "a.pth")
  convert.convert_file("test_tiny_convbn", str(tmp_path / "a.pth"), str(tmp_path / "conv"))
  _, ref = models.load(str(tmp_path / "conv"))
  fresh = jax.device_get(TinyConvBN().init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))["params"])
  params = {"backbone": fresh, "head": {"kernel": np.ones((2, 2), np.float32)}}
  out = checkpoint.load_init_from(params, str(tmp_path / "conv"), into="backbone", dont_load=["fc/.*"])
  np.testing.assert_array_equal(out["backbone"]["conv"]["kernel"], ref["params"]["conv"]["kernel"])
  np.testing.assert_array_equal(out["backbone"]["fc"]["kernel"], fresh["fc"]["kernel"])  # dont_load kept init
  np.testing.assert_array_equal(out["head"]["kernel"], 1.0)
  with pytest.raises(tree.MismatchError, match="missing in checkpoint"):
    checkpoint.load_init_from({"backbone": {**fresh, "new": {"w": np.zeros(2)}}}, str(tmp_path / "conv"), "backbone")
  with pytest.raises(tree.MismatchError, match="no subtree 'encoder'"):
    checkpoint.load_init_from(params, str(tmp_path / "conv"), into="encoder")
  with pytest.raises(models.ModelError, match="not a saved model directory"):
    checkpoint.load_init_from(params, str(tmp_path), into="backbone")


def test_cli_converts_vgg16_and_refuses_bad_input(tmp_path):
  # A torchvision-layout VGG16 state dict (features + classifier, which the converter drops).
  cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
  sd, cin, idx = {}, 3, 0
  for v in cfg:
    if v == "M":
      idx += 1
      continue
    sd[f"features.{idx}.weight"] = torch.randn(v, cin, 3, 3) * 0.01
    sd[f"features.{idx}.bias"] = torch.zeros(v)
    cin, idx = v, idx + 2
  sd["classifier.0.weight"] = torch.zeros(8, 8)
  torch.save(sd, tmp_path / "vgg16.pth")
  cli = lambda *a: subprocess.run([sys.executable, "-m", "common.convert", *a], cwd=REPO, env=subprocess_env(),
                                  capture_output=True, text=True, timeout=300)
  r = cli("--model", "vgg16", "--src", str(tmp_path / "vgg16.pth"), "--dst", str(tmp_path / "vgg"))
  assert r.returncode == 0, r.stderr
  _, variables = models.load("vgg16", str(tmp_path / "vgg"))
  np.testing.assert_allclose(variables["params"]["features_28"]["kernel"],
                             sd["features.28.weight"].numpy().transpose(2, 3, 1, 0))
  r = cli("--model", "vgg16", "--src", str(tmp_path / "missing.pth"), "--dst", str(tmp_path / "x"))
  assert r.returncode == 2 and "missing.pth" in r.stderr and len(r.stderr.strip().splitlines()) == 1
  r = cli("--model", "nope", "--src", str(tmp_path / "vgg16.pth"), "--dst", str(tmp_path / "y"))
  assert r.returncode == 2 and "unknown model 'nope'" in r.stderr
  assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
