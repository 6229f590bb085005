"""The JAX half of every `*_train` workload: the trainer's own jitted step, built through the subsystem's Task.

A step written out again for the benchmark would drift from what trains (optimizer, freezing, loss terms, the
augmentation the step does on the device); so the factories make the subsystem's config (shrunk by their test-only
overrides) and its `trainer.Task` (e.g. `distill.train.teacher_task`) over a source of the benchmark's examples, and
`train_step` here returns `common.trainer.build(config, task).train_step`, the exact object `trainer.train` calls:
jitted, state donated, `(state, global batch, rng, constants) -> (state, metrics)`, with the batch the trainer's own
host pipeline makes of those examples.
"""

import os

import jax
import numpy as np

from common import checkpoint, data, models, parallel, trainer


def save_model(directory: str, name: str, kwargs: dict, variables) -> str:
  """`variables` as the model directory `directory/name` (what common.convert writes); returns its path.

  The benchmarks draw their random weights once for JAX and torch; saved like this, a task loads them through
  its real path (teacher.weights, init_from, perceptual.vgg_path) instead of having them handed in. The compute
  dtype is not saved (models.module_kwargs leaves it out): the task takes it from its config, as in a real run.
  """
  path = os.path.join(directory, name)
  models.save(path, name, kwargs, variables)
  return path


def host_batch(config, task: trainer.Task) -> dict:
  """The first config.batch_size examples of task.train_source through the task's host transforms, stacked: the
  local batch trainer.train would place (in source order, not the task's shuffled or P x K one, so that a torch
  twin can be given the same examples). The host transforms are deterministic: the step does the random ones."""
  return {k: v[:config.batch_size] for k, v in data.materialise(task.train_source, task.train_transforms).items()}


def train_step(config, task: trainer.Task, device):
  """(fn, args) for benchmarks.run: `fn` = trainer.build(config, task).train_step on a mesh of `device` alone (the
  runner times one device), `args` = (initial state, `host_batch` as the global batch, train rng, constants).

  The state starts as `trainer.train` starts a run without a checkpoint: the task's init, then the weights of
  config.init_from (params and BatchNorm statistics) when it names a directory. Call it while the files the task
  and config name still exist.
  """
  trainer.apply_derived_config(config, task)
  mesh = jax.sharding.Mesh(np.array([device]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  built = trainer.build(config, task, mesh=mesh)
  state = built.init_state()
  src = config.init_from
  if src.path:
    params = checkpoint.load_init_from(parallel.to_host(state["params"]), src.path, src.into, src.dont_load)
    state["params"] = parallel.from_host(params, built.state_sharding["params"])
    model_state = checkpoint.load_init_from_collections(parallel.to_host(state["model_state"]), src.path, src.into,
                                                        src.dont_load)
    state["model_state"] = parallel.from_host(model_state, built.state_sharding["model_state"])
  batch = parallel.to_global(host_batch(config, task), mesh)
  return built.train_step, (state, batch, built.train_rng, built.constants)
