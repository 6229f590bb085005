"""Checkpoints: Orbax CheckpointManager for training state, strict loading for pretrained weights.

Resume order, used by every trainer (`common.trainer.train`):
  1. the latest checkpoint in `workdir/checkpoints` (preemption / restart),
  2. else `config.init_from.path`, a directory written by `python -m common.convert`, loaded strictly
     into the subtree `config.init_from.into` with `config.init_from.dont_load` regexes left at init,
  3. else scratch.
Training checkpoints hold the train state and the grain iterator state together, so a resumed run sees
exactly the batches it would have seen. `export_best` turns the best evaluated one into a model directory.
"""

import os
from typing import Callable, Sequence

from absl import logging
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from common import metrics as metrics_lib, models
from common.tree import MismatchError, flatten, merge_strict, unflatten


def load_init_from(params, path: str, into: str = "", dont_load: Sequence[str] = ()):
  """Loads a converted model directory's `params` into the subtree `into` ('a/b') of `params`."""
  meta = models.read_meta(path)  # clear error when `path` is not a converted directory
  entry = models.get(meta["model"], meta.get("module"))
  loaded = models.load_variables(path)
  if "params" not in loaded:
    raise MismatchError(f"{path}: no 'params' collection in the converted checkpoint")
  sub = params
  for part in filter(None, into.split("/")):
    if part not in sub:
      raise MismatchError(f"init_from.into={into!r}: the model has no subtree {part!r} "
                          f"(top-level keys: {', '.join(sub)})")
    sub = sub[part]
  source = loaded["params"] if entry.adapt is None else entry.adapt(loaded["params"], sub)  # e.g. restack blocks
  merged = merge_strict(sub, source, dont_load, source=path)
  if not into:
    return merged
  flat = flatten(params)
  flat = {k: v for k, v in flat.items() if not k.startswith(into.strip("/") + "/")}
  flat.update({f"{into.strip('/')}/{k}": v for k, v in flatten(merged).items()})
  return unflatten(flat)


def load_init_from_collections(model_state: dict, path: str, into: str = "", dont_load: Sequence[str] = ()) -> dict:
  """Fills non-trained collections (e.g. `batch_stats`) of `model_state` from a converted directory, strictly.

  Only collections the directory holds are loaded; the others keep their init values (logged), so weights
  converted without running statistics still initialise a model that has them.
  """
  loaded = models.load_variables(path)
  out = dict(model_state)
  for name, tree in model_state.items():
    if name not in loaded:
      logging.warning("init_from %s has no %r collection: it stays at its initial values", path, name)
      continue
    sub = tree
    for part in filter(None, into.split("/")):
      sub = sub.get(part, {}) if isinstance(sub, dict) else {}
    if into and not sub:
      continue  # the subtree `into` has no such collection (e.g. a BatchNorm-free backbone)
    merged = merge_strict(sub, loaded[name], dont_load, source=f"{path} [{name}]")
    if not into:
      out[name] = merged
    else:
      flat = {k: v for k, v in flatten(tree).items() if not k.startswith(into.strip("/") + "/")}
      flat.update({f"{into.strip('/')}/{k}": v for k, v in flatten(merged).items()})
      out[name] = unflatten(flat)
  return out


class Checkpointer:
  """Async Orbax manager keeping the latest N steps plus the best K by a metric."""

  def __init__(self, directory: str, keep_latest: int = 2, keep_best: int = 0, best_metric: str = "",
               best_mode: str = "min", async_save: bool = True):
    policies = [ocp.checkpoint_managers.LatestN(keep_latest)]
    if keep_best and best_metric:
      sign = 1.0 if best_mode == "max" else -1.0  # BestN keeps the largest values
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: sign * float(m[best_metric]), n=keep_best, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save, create=True,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
    # Orbax needs absolute paths, and every host must see the same (shared) directory.
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iter=None, metrics: dict | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics or None, force=True)

  def restore(self, abstract_state, data_iter=None, step: int | None = None):
    """Restores (state, data_iter) at `step` (default latest) onto `abstract_state`'s shardings."""
    step = self.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("restored checkpoint step %d from %s", step, self.directory)
    return restored["state"], (restored["data"] if data_iter is not None else None)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings, for Orbax restores."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def available_steps(workdir: str) -> list[int]:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir} has no checkpoints/; train first or pass the run's --workdir")
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  if not steps:
    raise FileNotFoundError(f"{directory} holds no finished checkpoint")
  return steps


def best_step(workdir: str, metric: str, mode: str = "max") -> int:
  """The saved step with the best logged `metric` (from metrics.jsonl); the latest step if none was logged."""
  steps = available_steps(workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  rows = metrics_lib.read_jsonl(path) if os.path.isfile(path) else []
  scored = {r["step"]: r[metric] for r in rows if metric in r and r["step"] in steps and np.isfinite(r[metric])}
  if not scored:
    return steps[-1]
  pick = max if mode == "max" else min
  return pick(scored, key=lambda s: (scored[s], s))


def load_trained_params(workdir: str, step: int | None = None):
  """A training run's params as host numpy arrays (latest step by default), for evaluation and export."""
  state, step = load_trained_state(workdir, step)
  return state["params"], step


def load_trained_state(workdir: str, step: int | None = None):
  """A training run's whole state dict as host numpy arrays (latest step by default).

  Restores onto one local device whatever topology saved it (e.g. a multi-host run read on a laptop).
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  steps = available_steps(workdir)
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{directory} has no step {step}; available: {steps}")
  path = os.path.join(directory, str(step), "state")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata.tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    restored = ckptr.restore(path, target)
  return jax.tree.map(np.asarray, restored), step


def export_best(workdir: str, config, name: str, kwargs: dict, pick: Callable[[dict], dict], dst: str) -> dict:
  """Saves `pick(state)` of the best evaluated checkpoint (by config.best_metric) as the model directory `dst`.

  `name` is the registered model and `kwargs` its constructor fields (`models.module_kwargs`). The export
  replaces an earlier one atomically (a rerun or resumed run exports again). Returns the picked state.
  """
  step = best_step(workdir, config.best_metric, config.best_mode) if config.best_metric else None
  state, step = load_trained_state(workdir, step)
  if jax.process_index() == 0:
    models.save(dst, name, kwargs, pick(state), overwrite=True)
    metrics_lib.log_info("exported step %d (%s) to %s", step,
                         f"best {config.best_metric}" if config.best_metric else "latest", dst)
  return state
