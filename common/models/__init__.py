"""Registry of models that import PyTorch weights or are exported by a trainer, and the API to load them.

A model module registers a `ModelEntry` beside its definition (architecture + converter rules). The core
names no subsystem: a saved model directory records the module that builds it, and the registered names
are discovered through the `jaxvision.models` entry points of installed packages (pyproject.toml), so a
new family only adds its module there. Outside the trainers, a converted checkpoint is used as:

    from common import models
    module, variables = models.load("dinov2_vits14", "/ckpts/dinov2_s")   # dir written by common.convert
    out = module.apply(variables, images)                                  # images NHWC float32

A model directory holds `variables/` (an Orbax checkpoint of the Flax variables, float32) and `model.json`
({"model": name, "module": "pkg.mod", "kwargs": {...}}) so the module is rebuilt exactly as saved.
"""

import dataclasses
import importlib
from importlib import metadata
import inspect
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

from common import tree

ENTRY_POINT_GROUP = "jaxvision.models"
_REGISTRY: dict[str, "ModelEntry"] = {}


class ModelError(ValueError):
  """Unknown model name, or a checkpoint directory that is not a saved model."""


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  name: str
  build: Callable[..., Any]  # (**kwargs) -> flax.linen.Module
  input_shape: Any  # example NHWC input shape for init, or a function of the build kwargs returning one
  converter: Any  # common.convert.Converter; None for native models (e.g. an exported encoder)
  description: str = ""
  module: str = ""  # the Python module that registers it (filled in by `register`)
  # (loaded variables, the model's own tree) -> loaded, before the strict merge: rewrites a saved layout into
  # the target's (e.g. unrolled DINOv2 blocks stacked for a scanned model); None: layouts must match.
  adapt: Callable[[Any, Any], Any] | None = None


def register(entry: ModelEntry) -> ModelEntry:
  """Called at import time of the defining module, which is recorded so saved directories can name it."""
  caller = inspect.currentframe().f_back.f_globals["__name__"]
  entry = dataclasses.replace(entry, module=entry.module or caller)
  _REGISTRY[entry.name] = entry
  return entry


def _import_registered() -> None:
  for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
    importlib.import_module(ep.value)


def names() -> list[str]:
  _import_registered()
  return sorted(_REGISTRY)


def get(name: str, module: str | None = None) -> ModelEntry:
  """The entry of `name`, importing `module` (as recorded in model.json) or the registered packages first."""
  if name not in _REGISTRY and module:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      raise ModelError(f"model {name!r} is built by module {module!r}, which cannot be imported ({e}); "
                       "install the package that provides it") from e
  if name not in _REGISTRY:
    _import_registered()
  if name not in _REGISTRY:
    raise ModelError(f"unknown model {name!r}; registered models: {', '.join(names())} (models register through "
                     f"the {ENTRY_POINT_GROUP!r} entry points: pip install -e .)")
  return _REGISTRY[name]


def module_kwargs(module, **override) -> dict:
  """A linen module's constructor fields minus the compute dtype, as saved next to its weights."""
  kw = {f: getattr(module, f) for f in module.__dataclass_fields__ if f not in ("parent", "name", "dtype")}
  return {**kw, **override}


def load_or_init(weights: str, init_module, input_shape, seed: int, names: tuple[str, ...] = (), **override):
  """(module, host variables) of a saved model directory `weights`, or of `init_module` freshly initialised
  from `seed` when `weights` is "random" (demos and tests). `names` restricts which models the directory may
  hold; `override` replaces saved constructor fields that do not change the variables (see `load`)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  if weights == "random":
    # jitted: an eager init compiles every op on its own (tens of seconds on CPU)
    variables = jax.jit(init_module.init)(jax.random.key(seed), jnp.zeros(input_shape, jnp.float32))
    return init_module, jax.tree.map(np.asarray, variables)
  meta = read_meta(weights)
  if names and meta["model"] not in names:
    raise ModelError(f"{weights} holds {meta['model']!r}, expected {' or '.join(names)}")
  module, variables = load(weights, **override)
  return module, jax.tree.map(np.asarray, variables)


def abstract_variables(entry: ModelEntry, kwargs: Mapping | None = None):
  """The model's variables as ShapeDtypeStructs (no FLOPs, no memory)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  kwargs = dict(kwargs or {})
  module = entry.build(**kwargs)
  shape = entry.input_shape(kwargs) if callable(entry.input_shape) else entry.input_shape
  x = jnp.zeros(shape, jnp.float32)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), x))


def save(dst: str, name: str, kwargs: Mapping, variables, overwrite: bool = False) -> None:
  """Writes a model directory atomically (a temp dir renamed into place).

  Converted checkpoints are never overwritten; exports of a training run (`overwrite=True`) replace the
  previous export only once the new one is complete.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  entry = get(name)
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise ModelError(f"{dst} already exists; choose a new --dst (converted checkpoints are never overwritten)")
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(dst) + "-", dir=parent)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, "variables"), variables)
      ckptr.wait_until_finished()
    with open(os.path.join(tmp, "model.json"), "w") as f:
      json.dump({"model": name, "module": entry.module, "kwargs": dict(kwargs)}, f, indent=2)
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    if os.path.exists(dst):
      old = dst + ".old"
      shutil.rmtree(old, ignore_errors=True)
      os.rename(dst, old)
      os.rename(tmp, dst)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _tuples(value):
  """JSON gives lists; module fields are tuples (hashable, so a module can key a cache or a jit)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def read_meta(path: str) -> dict:
  meta_path = os.path.join(path, "model.json")
  if not os.path.isfile(meta_path):
    raise ModelError(f"{path} is not a saved model directory (no model.json); create it with python -m common.convert "
                     "or take a trainer's export")
  with open(meta_path) as f:
    meta = json.load(f)
  meta["kwargs"] = _tuples(meta.get("kwargs", {}))
  return meta


def module_of(path: str):
  """The module a model directory was saved from, rebuilt from its model.json (no weights read)."""
  meta = read_meta(path)
  return get(meta["model"], meta.get("module")).build(**meta["kwargs"])


def load_variables(path: str):
  """Restores the variables tree of a model directory (checked by the caller against the model)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  path = os.path.abspath(path)
  var_dir = os.path.join(path, "variables")
  if not os.path.isdir(var_dir):
    raise ModelError(f"{path} has no variables/ checkpoint; re-run python -m common.convert")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(var_dir)


def load(name_or_path: str, path: str | None = None, **override):
  """`load(NAME, DIR)` or `load(DIR)` -> (module, variables), checked strictly against the model.

  `override` replaces saved constructor fields that do not change the variables (e.g. `dtype`).
  """
  if path is None:
    name, path = None, name_or_path
  else:
    name = name_or_path
  meta = read_meta(path)
  if name is not None and meta["model"] != name:
    raise ModelError(f"{path} holds {meta['model']!r}, not {name!r}")
  entry = get(meta["model"], meta.get("module"))
  kwargs = {**meta["kwargs"], **override}
  module = entry.build(**kwargs)
  abstract = abstract_variables(entry, kwargs)
  loaded = load_variables(path)
  if entry.adapt is not None:
    loaded = entry.adapt(loaded, abstract)
  variables = tree.merge_strict(abstract, loaded, source=path)
  return module, variables
