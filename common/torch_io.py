"""Reads PyTorch checkpoints into numpy arrays without torch and without running pickled code.

Supported inputs:
  * torch.save files in the zip format (torch >= 1.6; `.pth`/`.pt`/`.bin`): an archive holding
    `<prefix>/data.pkl` (the pickled object graph), `<prefix>/data/<key>` (raw storage bytes) and
    optionally `<prefix>/byteorder`.
  * `.safetensors` files (bf16 comes back as `ml_dtypes.bfloat16`).

data.pkl is read by `_RestrictedUnpickler`, whose `find_class` resolves only an allowlist of globals
(OrderedDict, torch's tensor/parameter rebuild functions, storage and dtype names, torch.Size) to
pure-numpy stand-ins; any other global raises `UnsafeCheckpointError` before it is imported, so a
malicious checkpoint cannot execute code. Storage locations (cpu, cuda:0, mps, ...) are ignored:
every tensor is materialised on the host as an independent C-contiguous array.

Public API: `load_state_dict(path)`, `unwrap_state_dict(obj, path)`, `CheckpointError`,
`UnsafeCheckpointError`.
"""

import collections
import io
import operator
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

Array = np.ndarray

_RESAVE_HINT = "re-save the state_dict with torch.save(model.state_dict(), ...)"

# Legacy typed-storage class names (what torch.save writes for common dtypes) -> element dtype.
# UntypedStorage holds raw bytes; `_rebuild_tensor_v3` then names the tensor dtype explicitly.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}
# Dtypes without a legacy storage class; torch pickles them as `torch.<name>` for _rebuild_tensor_v3.
_TENSOR_DTYPES = {
    "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
}
_REBUILD_FUNCTIONS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                      "_rebuild_parameter_with_state")
# Checkpoint wrappers that hold the model weights one level down, e.g. {"state_dict": sd, "epoch": 3}.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


class CheckpointError(ValueError):
  """A checkpoint that cannot be read; the message is one line naming the file and the fix."""


class UnsafeCheckpointError(CheckpointError):
  """data.pkl references a global outside the allowlist (it could execute code if unpickled)."""


def _one_line(exc: BaseException) -> str:
  text = str(exc).strip().splitlines()
  return f"{type(exc).__name__}: {text[0] if text else ''}"


def _strided_copy(storage: Array, offset: int, size: tuple, stride: tuple) -> Array:
  """torch's `tensor.set_(storage, offset, size, stride)` as an independent C-contiguous numpy array."""
  offset = operator.index(offset)
  size = tuple(operator.index(n) for n in size)
  stride = tuple(operator.index(s) for s in stride)
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise ValueError(f"tensor rebuilt from {type(storage).__name__}, not from a storage")
  if len(size) != len(stride) or min((offset, *size, *stride)) < 0:
    raise ValueError(f"invalid tensor layout offset={offset} size={size} stride={stride}")
  if 0 in size:
    return np.empty(size, storage.dtype)
  # as_strided does no bounds checking, so a hostile layout could read foreign memory: check the extent.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise ValueError(f"tensor (offset={offset}, size={size}, stride={stride}) overruns its "
                     f"storage of {storage.size} elements")
  view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * storage.itemsize for s in stride))
  # Copy so that views of one storage (and transposed tensors) become contiguous, independent arrays.
  return np.array(view, order="C", copy=True)


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a torch zip archive's data.pkl, resolving only allowlisted globals to numpy stand-ins.

  Stand-ins are bound methods, builtin types or plain strings: setattr on those fails, so a pickle's
  BUILD opcode cannot alter them (e.g. a function's __defaults__) to influence later loads.
  """

  def __init__(self, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(io.BytesIO(archive.read(f"{prefix}/data.pkl")))
    self._archive, self._prefix, self._path = archive, prefix, path
    byteorder_record = f"{prefix}/byteorder"
    # Files without a byteorder record predate it and were written on little-endian hosts.
    self._swap_bytes = (byteorder_record in archive.namelist()
                        and archive.read(byteorder_record).strip() == b"big")
    self._storages: dict[str, bytes] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name in _REBUILD_FUNCTIONS:
      return getattr(self, name)
    if (module == "torch" and (name in _STORAGE_DTYPES or name in _TENSOR_DTYPES)
        or module == "torch.storage" and name == "UntypedStorage"):
      return name  # a token; persistent_load / _rebuild_tensor_v3 map it to a dtype
    if module == "torch" and name == "Size":
      return tuple
    raise UnsafeCheckpointError(f"{self._path}: refused to unpickle '{module}.{name}' (only tensors and plain "
                                f"containers are allowed; {_RESAVE_HINT})")

  def _native(self, array: Array) -> Array:
    return array.byteswap() if self._swap_bytes and array.dtype.itemsize > 1 else array

  def persistent_load(self, pid: Any) -> Array:
    """('storage', storage_type, key, location, numel) -> 1-D array over the bytes of `data/<key>`."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise ValueError(f"unsupported persistent id {pid!r:.80}")
    _, storage_type, key, _location, numel = pid  # location (cpu, cuda:0, ...) is irrelevant on the host
    dtype = np.dtype(_STORAGE_DTYPES[storage_type])
    key = str(key)
    if key not in self._storages:
      record = f"{self._prefix}/data/{key}"
      try:
        self._storages[key] = self._archive.read(record)
      except KeyError:
        raise CheckpointError(f"{self._path}: storage record '{record}' is missing (truncated or corrupt "
                              f"archive; re-download or re-save the checkpoint)") from None
    return self._native(np.frombuffer(self._storages[key], dtype, count=operator.index(numel)))

  def _rebuild_tensor(self, storage, storage_offset, size, stride):
    return _strided_copy(storage, storage_offset, size, stride)

  def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    del requires_grad, backward_hooks, metadata  # autograd state has no numpy meaning
    return _strided_copy(storage, storage_offset, size, stride)

  def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                         metadata=None):
    del requires_grad, backward_hooks, metadata
    # The storage is raw bytes (UntypedStorage); reinterpret them as the named dtype first.
    typed = self._native(storage.view(_TENSOR_DTYPES[dtype]))
    return _strided_copy(typed, storage_offset, size, stride)

  def _rebuild_parameter(self, data, requires_grad, backward_hooks):
    del requires_grad, backward_hooks
    return data

  def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
    del requires_grad, backward_hooks, state
    return data


def _load_torch_zip(path: str) -> Any:
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
      if not pickles:
        raise CheckpointError(f"{path}: zip archive has no '<prefix>/data.pkl' record, so it is not a torch.save "
                              f"checkpoint; {_RESAVE_HINT}")
      return _RestrictedUnpickler(archive, pickles[0][:-len("/data.pkl")], path).load()
  except CheckpointError:
    raise
  except Exception as e:  # zip CRC/format errors and malformed pickles alike mean a damaged file
    raise CheckpointError(f"{path}: corrupt checkpoint ({_one_line(e)}); re-download or re-save it") from e


def _load_safetensors(path: str) -> dict[str, Array]:
  # Imported here so that torch zip checkpoints load even where safetensors is not installed.
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  try:
    return safetensors.numpy.load_file(path)  # bf16 -> ml_dtypes.bfloat16
  except Exception as e:
    raise CheckpointError(f"{path}: unreadable safetensors file ({_one_line(e)}); re-download or re-export it") from e


def load_state_dict(path: str | os.PathLike) -> dict[str, Array]:
  """Loads a torch zip checkpoint or a .safetensors file as a flat {name: numpy array} dict.

  Wrappers such as {"state_dict": ..., "epoch": 3} are removed by `unwrap_state_dict`. Raises
  `CheckpointError` (one line naming the file and the fix) for missing, corrupt, legacy or unsafe files.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file; check the checkpoint path")
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: not a regular file (a directory?); pass the checkpoint file itself")
  if path.endswith(".safetensors"):
    return unwrap_state_dict(_load_safetensors(path), path)
  with open(path, "rb") as f:
    magic = f.read(4)
  if zipfile.is_zipfile(path):
    return unwrap_state_dict(_load_torch_zip(path), path)
  if magic.startswith(b"PK"):
    raise CheckpointError(f"{path}: corrupt or truncated zip archive; re-download or re-save the checkpoint")
  if magic[:1] == b"\x80":  # pickle protocol opcode: the pre-1.6 torch.save format or a bare pickle
    raise CheckpointError(f"{path}: legacy (pre-zip) torch.save file or plain pickle is not supported; load it with "
                          f"torch >= 1.6 and {_RESAVE_HINT}")
  raise CheckpointError(f"{path}: not a torch.save zip archive or .safetensors file; {_RESAVE_HINT}")


def _contains_array(obj: Any) -> bool:
  if isinstance(obj, np.ndarray):
    return True
  return isinstance(obj, dict) and any(_contains_array(v) for v in obj.values())


def _flatten(obj: dict, prefix: str, out: dict[str, Array]) -> None:
  for key, value in obj.items():
    name = f"{prefix}{key}"
    if isinstance(value, np.ndarray):
      out[name] = value
    elif isinstance(value, dict):
      _flatten(value, f"{name}.", out)
    # Other leaves (ints, strings, lists, None) are metadata, not weights: dropped.


def unwrap_state_dict(obj: Any, path: str) -> dict[str, Array]:
  """Reduces an unpickled checkpoint to a flat {name: array} state dict.

  1. While `obj` is a dict in which exactly one of "state_dict", "model_state_dict", "model", "module"
     maps to a dict containing arrays, descend into it (siblings such as "epoch" or "optimizer" are dropped).
     With several such keys the choice is ambiguous, so nothing is descended into.
  2. Flatten nested dicts, joining keys with '.', and drop non-array leaves.
  3. If every key starts with "module." (torch DataParallel), strip that prefix.
  Entries such as BatchNorm's `num_batches_tracked` are kept. `path` is only used in error messages.
  """
  while isinstance(obj, dict):
    inner = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict) and _contains_array(obj[k])]
    if len(inner) != 1:
      break
    obj = obj[inner[0]]
  flat: dict[str, Array] = {}
  if isinstance(obj, dict):
    _flatten(obj, "", flat)
  if not flat:
    found = f"top-level keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path}: no tensors found in the checkpoint ({found}); {_RESAVE_HINT}")
  if all(k.startswith("module.") for k in flat):
    flat = {k[len("module."):]: v for k, v in flat.items()}
  return flat
