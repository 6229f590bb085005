"""Registry of models that import PyTorch weights, and the public API to load them.

Each model module registers a `ModelEntry` beside its definition (architecture + converter rules).
Outside the trainers, a converted checkpoint is used as:

    from common import models
    module, variables = models.load("dinov2_vits14", "/ckpts/dinov2_s")   # dir written by common.convert
    out = module.apply(variables, images)                                  # images NHWC float32

A converted directory holds `variables/` (an Orbax checkpoint of the Flax variables, float32) and
`model.json` ({"model": name, "kwargs": {...}}) so the module is rebuilt exactly as converted.
"""

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

# Modules that register models on import. Subsystem packages register theirs here too.
_MODEL_MODULES = (
    "common.models.dinov2",
    "common.models.vgg",
    "ear_teacher.model",
    "distill.models",
    "facerec.models",
    "facerec.dsr",
)

_REGISTRY: dict[str, "ModelEntry"] = {}


class ModelError(ValueError):
  """Unknown model name, or a checkpoint directory that is not a converted model."""


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  name: str
  build: Callable[..., Any]  # (**kwargs) -> flax.linen.Module
  input_shape: Any  # example NHWC input shape for init, or a function of the build kwargs returning one
  converter: Any  # common.convert.Converter; None for native models (e.g. an exported encoder)
  description: str = ""


def register(entry: ModelEntry) -> ModelEntry:
  _REGISTRY[entry.name] = entry
  return entry


def _import_all() -> None:
  for mod in _MODEL_MODULES:
    try:
      importlib.import_module(mod)
    except ModuleNotFoundError as e:
      if e.name != mod and not mod.startswith(e.name + "."):  # a missing dependency inside a module surfaces
        raise


def names() -> list[str]:
  _import_all()
  return sorted(_REGISTRY)


def get(name: str) -> ModelEntry:
  if name not in _REGISTRY:
    _import_all()
  if name not in _REGISTRY:
    raise ModelError(f"unknown model {name!r}; registered models: {', '.join(names())}")
  return _REGISTRY[name]


def abstract_variables(entry: ModelEntry, kwargs: Mapping | None = None):
  """The model's variables as ShapeDtypeStructs (no FLOPs, no memory)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  kwargs = dict(kwargs or {})
  module = entry.build(**kwargs)
  shape = entry.input_shape(kwargs) if callable(entry.input_shape) else entry.input_shape
  x = jnp.zeros(shape, jnp.float32)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), x))


def save(dst: str, name: str, kwargs: Mapping, variables) -> None:
  """Writes a converted model directory atomically (a temp dir renamed into place)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  dst = os.path.abspath(dst)
  if os.path.exists(dst):
    raise ModelError(f"{dst} already exists; choose a new --dst (converted checkpoints are never overwritten)")
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(dst) + "-", dir=parent)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, "variables"), variables)
      ckptr.wait_until_finished()
    with open(os.path.join(tmp, "model.json"), "w") as f:
      json.dump({"model": name, "kwargs": dict(kwargs)}, f, indent=2)
    os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def read_meta(path: str) -> dict:
  meta_path = os.path.join(path, "model.json")
  if not os.path.isfile(meta_path):
    raise ModelError(f"{path} is not a converted model directory (no model.json); create it with python -m common.convert")
  with open(meta_path) as f:
    return json.load(f)


def load_variables(path: str):
  """Restores the variables tree of a converted directory (checked by the caller against the model)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  path = os.path.abspath(path)
  var_dir = os.path.join(path, "variables")
  if not os.path.isdir(var_dir):
    raise ModelError(f"{path} has no variables/ checkpoint; re-run python -m common.convert")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(var_dir)


def load(name_or_path: str, path: str | None = None):
  """`load(NAME, DIR)` or `load(DIR)` -> (module, variables), checked strictly against the model."""
  from common import checkpoint  # pylint: disable=import-outside-toplevel

  if path is None:
    name, path = None, name_or_path
  else:
    name = name_or_path
  meta = read_meta(path)
  if name is not None and meta["model"] != name:
    raise ModelError(f"{path} holds {meta['model']!r}, not {name!r}")
  entry = get(meta["model"])
  module = entry.build(**meta["kwargs"])
  abstract = abstract_variables(entry, meta["kwargs"])
  variables = checkpoint.merge_strict(abstract, load_variables(path), source=path)
  return module, variables
