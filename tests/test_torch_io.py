"""Tests for common.torch_io: torch-free, code-execution-free checkpoint reading.

torch is used here only to write reference checkpoints (and to confirm that crafted files are ones torch
itself accepts); the module under test never imports it (see test_module_works_without_torch).
"""

import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from common import torch_io
from common.torch_io import CheckpointError, UnsafeCheckpointError

torch = pytest.importorskip("torch")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(obj, path, **kwargs):
  torch.save(obj, path, **kwargs)
  return str(path)


def _rewrite_zip(src, dst, edit):
  """Copies zip `src` to `dst`; `edit(name, data)` returns the new bytes for a record, or None to drop it."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    for name in zin.namelist():
      data = edit(name, zin.read(name))
      if data is not None:
        zout.writestr(name, data)
  return str(dst)


def _replace_data_pkl(src, dst, payload: bytes):
  return _rewrite_zip(src, dst, lambda name, data: payload if name.endswith("/data.pkl") else data)


def _reference_state_dict():
  torch.manual_seed(0)
  bn = torch.nn.BatchNorm2d(4)
  bn(torch.randn(2, 4, 3, 3))  # training-mode forward: non-trivial running stats, num_batches_tracked == 1
  shared = torch.arange(12, dtype=torch.float32)
  sd = {
      **{f"conv.{k}": v for k, v in torch.nn.Conv2d(3, 4, 3).state_dict().items()},
      **{f"fc.{k}": v for k, v in torch.nn.Linear(5, 2).state_dict().items()},
      **{f"bn.{k}": v for k, v in bn.state_dict().items()},
      "half": torch.randn(3, 2).half(),
      "bf16": torch.randn(5).bfloat16(),
      "long": torch.arange(-3, 3, dtype=torch.int64),
      "mask": torch.tensor([True, False, True]),
      "transposed": torch.randn(3, 4).t(),  # non-contiguous: stride (1, 4)
      "view_a": shared[2:6],  # two overlapping views of one storage, with offsets
      "view_b": shared[5:11].view(2, 3),
      "empty": torch.zeros(0, 3),
      "scalar": torch.tensor(2.5),
      "param": torch.nn.Parameter(torch.randn(2)),  # pickled via _rebuild_parameter
      "u16": torch.tensor([1, 65535], dtype=torch.uint16),  # pickled via _rebuild_tensor_v3
      "f8": torch.tensor([0.5, -2.0], dtype=torch.float8_e4m3fn),
  }
  return sd


def _expected(t):
  """Reference numpy value of a torch tensor, as `load_state_dict` should return it."""
  t = t.detach()
  if t.dtype == torch.bfloat16:
    return t.float().numpy().astype(ml_dtypes.bfloat16)
  if t.dtype == torch.float8_e4m3fn:
    return t.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
  return t.numpy()


def _assert_matches(loaded, sd):
  assert sorted(loaded) == sorted(sd)
  for k, t in sd.items():
    want = _expected(t)
    assert loaded[k].dtype == want.dtype, k
    assert loaded[k].shape == want.shape, k
    assert loaded[k].flags.c_contiguous, k
    # Compare bytes: exact, and meaningful for dtypes numpy cannot compare (float8) or NaN payloads.
    np.testing.assert_array_equal(loaded[k].reshape(-1).view(np.uint8), want.reshape(-1).view(np.uint8), err_msg=k)


def test_round_trip_torch_zip(tmp_path):
  sd = _reference_state_dict()
  loaded = torch_io.load_state_dict(_save(sd, tmp_path / "model.pth"))
  _assert_matches(loaded, sd)
  assert loaded["bn.num_batches_tracked"].shape == () and loaded["bn.num_batches_tracked"] == 1
  assert loaded["bf16"].dtype == ml_dtypes.bfloat16
  # Views of one storage come back as independent copies.
  assert loaded["view_a"][3] == loaded["view_b"][0, 0] == 5
  loaded["view_a"][3] = -1
  assert loaded["view_b"][0, 0] == 5


def test_big_endian_archive(tmp_path):
  sd = {"w": torch.randn(3, 2), "b": torch.randn(4)}  # all float32, so every record swaps as '<f4'
  src = _save(sd, tmp_path / "le.pth")

  def to_big_endian(name, data):
    if name.endswith("/byteorder"):
      return b"big"
    if "/data/" in name:
      return np.frombuffer(data, "<f4").astype(">f4").tobytes()
    return data

  path = _rewrite_zip(src, tmp_path / "be.pth", to_big_endian)
  from_torch = torch.load(path, weights_only=True)  # torch agrees the crafted file holds the same tensors
  _assert_matches({k: _expected(v) for k, v in from_torch.items()}, sd)
  _assert_matches(torch_io.load_state_dict(path), sd)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 3, "arch": "resnet"},
    lambda sd: {"model": sd},
    lambda sd: {"model_state_dict": collections.OrderedDict((f"module.{k}", v) for k, v in sd.items()),
                "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1}]}},
    lambda sd: collections.OrderedDict((f"module.{k}", v) for k, v in sd.items()),
    lambda sd: {"module": {"backbone": {k.split(".", 1)[1]: v for k, v in sd.items()}}},
], ids=["state_dict+epoch", "model", "model_state_dict+optimizer+DataParallel", "DataParallel", "nested"])
def test_wrappers_unwrap(tmp_path, wrap):
  sd = {f"backbone.{k}": v for k, v in torch.nn.Linear(3, 2).state_dict().items()}
  _assert_matches(torch_io.load_state_dict(_save(wrap(sd), tmp_path / "ckpt.pt")), sd)


def test_no_tensors_is_an_error(tmp_path):
  path = _save({"epoch": 3, "model": {}}, tmp_path / "meta.pt")
  with pytest.raises(CheckpointError, match="no tensors found"):
    torch_io.load_state_dict(path)


def test_cuda_location(tmp_path):
  sd = {"w": torch.randn(2, 3), "bf16": torch.randn(4).bfloat16()}
  src = _save(sd, tmp_path / "cpu.pth")

  def retag(name, data):
    if not name.endswith("/data.pkl"):
      return data
    # BINUNICODE 'cpu' -> 'cuda:0' (torch memoises the string, so it is written once). Pickle
    # opcodes carry no absolute offsets, so splicing in a longer string keeps the stream valid.
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    assert data.count(cpu) == 1
    return data.replace(cpu, cuda)

  path = _rewrite_zip(src, tmp_path / "cuda.pth", retag)
  locations = []
  torch.load(path, map_location=lambda storage, loc: locations.append(loc) or storage, weights_only=True)
  assert set(locations) == {"cuda:0"}  # torch itself sees CUDA storages
  from_torch = torch.load(path, map_location="cpu", weights_only=True)
  _assert_matches({k: _expected(v) for k, v in from_torch.items()}, sd)
  _assert_matches(torch_io.load_state_dict(path), sd)


def test_safetensors_round_trip(tmp_path):
  safetensors_torch = pytest.importorskip("safetensors.torch")
  sd = {"w": torch.randn(3, 4), "b": torch.randn(4).bfloat16(), "i": torch.arange(5)}
  path = tmp_path / "model.safetensors"
  safetensors_torch.save_file(sd, str(path))
  _assert_matches(torch_io.load_state_dict(path), sd)


class _Exploit:
  """Unpickling this calls `func(arg)`: the classic pickle code-execution payload."""

  def __init__(self, func, arg):
    self.func, self.arg = func, arg

  def __reduce__(self):
    return self.func, (self.arg,)


# Protocol 2 (what torch.save uses) names builtins by their Python 2 module, __builtin__.
@pytest.mark.parametrize("func, refused", [(os.system, f"{os.system.__module__}.system"), (exec, "__builtin__.exec")])
def test_malicious_pickle_is_refused(tmp_path, func, refused):
  marker = tmp_path / "pwned"
  command = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
  payload = pickle.dumps({"weight": _Exploit(func, command)}, protocol=2)
  path = _replace_data_pkl(_save({"weight": torch.ones(2)}, tmp_path / "ok.pth"), tmp_path / "model.pth", payload)
  with pytest.raises(UnsafeCheckpointError, match=f"refused to unpickle '{refused}'") as err:
    torch_io.load_state_dict(path)
  assert path in str(err.value) and "\n" not in str(err.value)
  assert not marker.exists()
  pickle.loads(payload)  # control: the same payload really does run code when unpickled normally
  assert marker.exists()


def test_plain_and_legacy_pickles_are_refused(tmp_path):
  marker = tmp_path / "pwned"
  plain = tmp_path / "plain.pkl"
  plain.write_bytes(pickle.dumps(_Exploit(os.system, f"touch {marker}"), protocol=2))
  legacy = _save({"w": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  for path in (str(plain), legacy):
    with pytest.raises(CheckpointError, match="legacy") as err:
      torch_io.load_state_dict(path)
    assert path in str(err.value)
  assert not marker.exists()


def test_out_of_bounds_layout_is_rejected(tmp_path):
  """A hostile stride must not make as_strided read past the storage."""

  class Storage:  # pickled as a persistent id, like torch's own storages
    pass

  class Tensor:
    def __reduce__(self):
      return torch._utils._rebuild_tensor_v2, (Storage(), 0, (2, 2), (1000, 1), False, collections.OrderedDict())

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, Storage) else None

  buf = io.BytesIO()
  Pickler(buf, protocol=2).dump({"w": Tensor()})
  path = _replace_data_pkl(_save({"w": torch.ones(4)}, tmp_path / "ok.pth"), tmp_path / "bad.pth", buf.getvalue())
  with pytest.raises(CheckpointError, match="overruns its storage"):
    torch_io.load_state_dict(path)


def _damaged_files(tmp_path):
  good = _save({"w": torch.arange(64, dtype=torch.float32) + 0.5}, tmp_path / "good.pth")
  raw = open(good, "rb").read()
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(raw[: len(raw) // 2])
  flipped = bytearray(raw)
  flipped[raw.find((np.arange(64, dtype=np.float32) + 0.5).tobytes()) + 10] ^= 0xFF  # breaks the record's CRC
  bad_crc = tmp_path / "bad_crc.pth"
  bad_crc.write_bytes(bytes(flipped))
  garbage = tmp_path / "garbage.bin"
  garbage.write_bytes(b"this is not a checkpoint")
  empty = tmp_path / "empty.pt"
  empty.write_bytes(b"")
  no_pkl = tmp_path / "no_pkl.pth"
  with zipfile.ZipFile(no_pkl, "w") as z:
    z.writestr("archive/readme.txt", "hello")
  no_storage = _rewrite_zip(good, tmp_path / "no_storage.pth", lambda n, d: None if "/data/" in n else d)
  bad_safetensors = tmp_path / "bad.safetensors"
  bad_safetensors.write_bytes(b"\xff" * 16)
  return {
      "missing": (tmp_path / "missing.pth", "no such file"),
      "directory": (tmp_path, "not a regular file"),
      "truncated": (truncated, "corrupt or truncated zip"),
      "bad_crc": (bad_crc, "corrupt checkpoint"),
      "garbage": (garbage, "not a torch.save zip"),
      "empty": (empty, "not a torch.save zip"),
      "no_pkl": (no_pkl, "no '<prefix>/data.pkl'"),
      "no_storage": (no_storage, "storage record 'good/data/0' is missing"),
      "bad_safetensors": (bad_safetensors, "unreadable safetensors"),
  }


def test_damaged_files_raise_checkpoint_error(tmp_path):
  for case, (path, expected) in _damaged_files(tmp_path).items():
    with pytest.raises(CheckpointError) as err:
      torch_io.load_state_dict(path)
    message = str(err.value)
    assert str(path) in message and expected in message and "\n" not in message, (case, message)


def test_module_works_without_torch(tmp_path):
  path = _save({"state_dict": {"w": torch.arange(6).view(2, 3)}}, tmp_path / "model.pth")
  code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
          "from common import torch_io\n"
          f"sd = torch_io.load_state_dict({path!r})\n"
          "print(sorted(sd), sd['w'].tolist())")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "['w'] [[0, 1, 2], [3, 4, 5]]"
