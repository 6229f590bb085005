"""The training loop every subsystem shares.

A subsystem trainer supplies a `Task` (how to init variables, the loss, its data, its evaluation and
the config values it derives) and calls `train(config, workdir, task)`. The loop owns everything else:
mesh and shardings, the optimizer (with freezing), the jitted donated `train_step(state, batch, rng)`,
resume order, NaN checks, logging, evaluation cadence, checkpoints, preemption and profiling.
`build(config, task)` gives the same step and initial state without the loop (benchmarks time it).

Train state is a plain dict: {"step", "params", "opt_state", "model_state", "control"}; `opt_state` covers
only the trainable (non-frozen) parameters, `model_state` holds non-trained collections (e.g. batch_stats),
`control` the evaluation-driven lr scale and early-stopping counters (config.plateau / config.early_stop),
checkpointed with the rest so a resumed run continues them exactly.
"""

import dataclasses
import functools
import os
import signal
import time
from typing import Any, Callable, Iterable, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from common import checkpoint, config as config_lib, data, metrics as metrics_lib, optim, parallel


@dataclasses.dataclass
class Task:
  # rng -> Flax variables {"params": ..., other collections...}; traced under jit/eval_shape.
  init_variables: Callable[[jax.Array], dict]
  # (params, batch, ctx: StepContext) -> (loss, (metrics dict of scalars, new model_state)).
  loss_fn: Callable
  train_source: Any
  train_transforms: Sequence = ()
  # Optional sampler: `len(order)` examples per epoch, `order.indices(epoch, seed)` the source indices of that
  # epoch in global order (e.g. P x K identity batches); default a seeded shuffle per epoch.
  train_order: Any = None
  # (state, step) -> dict of scalar metrics (and HWC image arrays, sent to TensorBoard); host function,
  # called at eval steps and at the end.
  eval_fn: Callable[[dict, int], dict] | None = None
  # Called once after the (re)start with the state, e.g. to log what was loaded.
  on_start: Callable[[dict], None] | None = None
  # Arrays every step needs but nobody trains (a perceptual VGG, a distillation teacher): placed
  # replicated once, passed to each step as an argument (not baked into the program as constants),
  # and never optimised or checkpointed.
  constants: Any = None
  # (batch, rng) -> batch inside the jitted step, batched on the devices: per-example randomness (crops, flips,
  # colour jitter, VLR degradation) and uint8 -> float normalisation, so the host only decodes and batches.
  # The rng is the step's own (folded with the step number), so resumes are exact.
  device_transform: Callable[[dict, jax.Array], dict] | None = None
  # config -> {"dotted.key": value}: values the task derives (freeze patterns, init_from). Applied before
  # config.json is written, so the recorded config is the one that ran; must give the same values when
  # applied to its own output (a recorded config run again).
  derive_config: Callable[[ml_collections.ConfigDict], dict] | None = None


@flax.struct.dataclass
class StepContext:
  rng: jax.Array  # already folded with the step
  step: jax.Array  # traced int32, e.g. for loss-weight ramps such as the distillation alpha
  model_state: Any  # non-trained collections (batch_stats); return the updated one
  constants: Any  # Task.constants
  total_steps: int = flax.struct.field(pytree_node=False, default=0)  # the run's length, for schedules in losses


class Preempted(Exception):
  """Raised out of `train` after a SIGTERM was handled by saving a checkpoint."""


_AUGMENT_STREAM = 0x61756700  # folded into the step key for device_transform: its own random stream


def make_train_step(loss_fn, tx, mask: dict[str, bool], schedule, total_steps: int = 0,
                    device_transform=None) -> Callable:
  """Builds `train_step(state, batch, rng, constants, table) -> (state, metrics)`; jit and donate it at the
  call site. With `table` (a split kept on the devices) the batch holds only `row` indices into it."""

  def train_step(state, batch, rng, constants=None, table=None):
    step = state["step"]
    step_rng = jax.random.fold_in(rng, step)  # a fresh, reproducible key per step
    if table is not None:
      batch = {**{k: v[batch["row"]] for k, v in table.items()}, **{k: v for k, v in batch.items() if k != "row"}}
    if device_transform is not None:
      batch = device_transform(batch, jax.random.fold_in(step_rng, _AUGMENT_STREAM))
    ctx = StepContext(rng=step_rng, step=step, model_state=state["model_state"], constants=constants,
                      total_steps=total_steps)
    trainable, frozen = optim.split_params(state["params"], mask)

    def objective(t):
      return loss_fn(optim.merge_params(t, frozen), batch, ctx)

    (loss, (measurements, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, state["opt_state"], trainable)
    # Reduce-on-plateau: scaling the final updates = scaling the lr (decoupled weight decay included).
    lr_scale = state["control"]["lr_scale"]
    updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
    trainable = optax.apply_updates(trainable, updates)
    grad_norm = optax.global_norm(grads)
    measurements = dict(measurements, loss=loss, grad_norm=grad_norm, param_norm=optax.global_norm(trainable),
                        update_norm=optax.global_norm(updates),
                        lr=schedule(step) * lr_scale)
    measurements["finite"] = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = dict(step=step + 1, params=optim.merge_params(trainable, frozen), opt_state=opt_state,
                     model_state=model_state, control=state["control"])
    return new_state, measurements

  return train_step


@functools.lru_cache(maxsize=64)
def _jitted_sums(per_example_fn):
  def masked_sums(state, batch):
    values = per_example_fn(state, batch)
    mask = batch["mask"]
    return {k: jnp.sum(v * mask) for k, v in values.items()}, jnp.sum(mask)
  return jax.jit(masked_sums)


@functools.lru_cache(maxsize=64)
def _jitted_gather(fn, mesh):
  return jax.jit(lambda st, b: (fn(st, b), b["mask"]), out_shardings=parallel.replicated(mesh))


def evaluate(per_example_fn, state, batches: Iterable[dict], mesh=None) -> dict[str, float]:
  """Exact means over a whole split: `per_example_fn(state, batch) -> {name: (B,) values}`.

  `state` holds device arrays (the train state, or variables placed with `parallel.replicate`); the
  batches (from `data.eval_batches`, padded, with `mask`) are laid out on the same mesh (or `mesh` when the
  state holds none). Compiled once per `per_example_fn`, so build that function once, not per evaluation.
  """
  mesh = parallel.mesh_of(state) if mesh is None else mesh
  fn = _jitted_sums(per_example_fn)
  totals, count = None, 0.0
  for batch in batches:
    sums, n = parallel.to_host(fn(state, parallel.to_global(batch, mesh)))
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
    count += float(n)
  return {k: float(v) / count for k, v in totals.items()}


def predict(fn, state, batches: Iterable[dict], mesh=None) -> dict[str, np.ndarray]:
  """Per-example outputs over a whole split, on every process: `fn(state, batch) -> {name: (B, ...) arrays}`.

  `state` and `batches` as for `evaluate`; outputs are gathered to every process (replicated out_shardings)
  and padded rows dropped, so rows follow the source order. For scores that need the whole split (AUC,
  gallery-probe identification), not for huge outputs.
  """
  mesh = parallel.mesh_of(state) if mesh is None else mesh
  gathered = _jitted_gather(fn, mesh)
  parts, masks = [], []
  for batch in batches:
    out, mask = parallel.to_host(gathered(state, parallel.to_global(batch, mesh)))
    parts.append(out)
    masks.append(mask > 0)
  if not parts:
    return {}
  keep = np.concatenate(masks)
  return {k: np.concatenate([p[k] for p in parts])[keep] for k in parts[0]}


def _every(step: int, every: int, total: int) -> bool:
  return step == total or (every > 0 and step % every == 0)


class _PreemptionFlag:
  """SIGTERM sets a flag; all processes agree on it at sync points (a host allgather)."""

  def __init__(self):
    self.local = False
    self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step and exiting")
    self.local = True

  def is_set(self, step: int, sync_every: int) -> bool:
    if jax.process_count() == 1:
      return self.local
    if step % sync_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return bool(np.max(multihost_utils.process_allgather(np.int32(self.local))))

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def initial_control() -> dict:
  """Counters of the evaluation-driven controls; `*_best` hold sign-adjusted values (larger is better)."""
  return dict(lr_scale=jnp.ones((), jnp.float32), plateau_best=jnp.full((), -jnp.inf, jnp.float32),
              plateau_bad=jnp.zeros((), jnp.int32), stop_best=jnp.full((), -jnp.inf, jnp.float32),
              stop_bad=jnp.zeros((), jnp.int32))


def update_control(control: dict, eval_metrics: dict, config) -> tuple[dict, bool]:
  """Host-side plateau / early-stopping bookkeeping after one evaluation: (new control, stop now?)."""
  control = {k: np.asarray(v) for k, v in control.items()}
  stop = False

  def observe(cfg, prefix):
    if not cfg.metric:
      return None
    if cfg.metric not in eval_metrics:
      raise ValueError(f"config.{'plateau' if prefix == 'plateau' else 'early_stop'}.metric={cfg.metric!r} is not "
                       f"an evaluation metric; available: {', '.join(sorted(eval_metrics))}")
    if cfg.mode not in ("min", "max"):
      raise ValueError(f"{prefix} mode must be 'min' or 'max', got {cfg.mode!r}")
    value = float(eval_metrics[cfg.metric]) * (1.0 if cfg.mode == "max" else -1.0)
    if value > control[f"{prefix}_best"]:
      control[f"{prefix}_best"], control[f"{prefix}_bad"] = np.float32(value), np.int32(0)
    else:
      control[f"{prefix}_bad"] = np.int32(control[f"{prefix}_bad"] + 1)
    return int(control[f"{prefix}_bad"])

  bad = observe(config.plateau, "plateau")
  if bad is not None and bad > config.plateau.patience:
    new_scale = max(float(control["lr_scale"]) * config.plateau.factor, config.plateau.min_scale)
    if new_scale < control["lr_scale"]:
      metrics_lib.log_info("%s did not improve for %d evaluations: lr scale %.3g -> %.3g", config.plateau.metric,
                           bad, float(control["lr_scale"]), new_scale)
    control["lr_scale"], control["plateau_bad"] = np.float32(new_scale), np.int32(0)
  bad = observe(config.early_stop, "stop")
  if bad is not None and bad >= config.early_stop.patience:
    metrics_lib.log_info("early stopping: %s did not improve for %d evaluations", config.early_stop.metric, bad)
    stop = True
  return control, stop


def apply_derived_config(config, task: Task) -> dict:
  """Writes the task's derived values into `config` (in place); returns them."""
  derived = dict(task.derive_config(config)) if task.derive_config is not None else {}
  with config.unlocked():
    config_lib.set_dotted(config, **derived)
  return derived


@dataclasses.dataclass
class Built:
  """What `build` makes: the trainer's own jitted step and state, ready to run or to time."""
  mesh: jax.sharding.Mesh
  abstract_state: Any  # ShapeDtypeStructs of the train state
  state_sharding: Any
  init_state: Callable[[], dict]  # () -> a fresh sharded train state (jitted)
  train_step: Callable  # jitted, donated: (state, global batch, rng, constants[, table]) -> (state, metrics)
  train_rng: jax.Array  # replicated; the step folds in the step number
  constants: Any  # Task.constants on the devices (None when the task has none)
  mask: dict[str, bool]  # trainable (True) / frozen per '/'-joined parameter path
  durations: dict[str, int]  # steps_per_epoch, total, log_every, eval_every, ckpt_every


def build(config, task: Task, mesh=None) -> Built:
  """Mesh, shardings, optimizer with freezing, and the jitted donated train step, from config + task.

  `train` runs the loop on top of it; benchmarks call it to time exactly the step that trains.
  Expects the task's derived config values to be applied already (`apply_derived_config`).
  """
  mesh = parallel.make_mesh(config.get("mesh")) if mesh is None else mesh
  min_size = config.get("fsdp_min_size", parallel.FSDP_MIN_SIZE)
  epoch_examples = len(task.train_order) if task.train_order is not None else len(task.train_source)
  steps_per_epoch = max(1, epoch_examples // config.batch_size)
  durations = {"steps_per_epoch": steps_per_epoch}
  for name in ("total", "log_every", "eval_every", "ckpt_every"):
    durations[name] = optim.steps_from(config, name, steps_per_epoch)
  total_steps = durations["total"]
  tx, schedule = optim.make_optimizer(config.optim, total_steps, steps_per_epoch)

  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  abstract_params = jax.eval_shape(task.init_variables, init_rng)["params"]
  mask = optim.trainable_mask(abstract_params, config.optim.freeze)

  def init_state(rng):
    variables = dict(task.init_variables(rng))
    params = variables.pop("params")
    trainable, _ = optim.split_params(params, mask)
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable), model_state=variables,
                control=initial_control())

  abstract_state = jax.eval_shape(init_state, init_rng)
  state_sharding = parallel.param_sharding(mesh, abstract_state, min_size)
  jitted_init = jax.jit(init_state, out_shardings=state_sharding)
  train_step = jax.jit(make_train_step(task.loss_fn, tx, mask, schedule, total_steps, task.device_transform),
                       donate_argnums=(0,),
                       out_shardings=(state_sharding, parallel.replicated(mesh)))
  constants = None if task.constants is None else parallel.from_host(
      task.constants, parallel.param_sharding(mesh, task.constants, min_size))
  return Built(mesh=mesh, abstract_state=abstract_state, state_sharding=state_sharding,
               init_state=lambda: jitted_init(init_rng), train_step=train_step,
               train_rng=parallel.from_host(train_rng, parallel.replicated(mesh)), constants=constants, mask=mask,
               durations=durations)


def train(config, workdir: str, task: Task) -> dict:
  """Runs (or resumes) training to `config.total_steps|epochs`; returns the final state.

  Before anything is written the task's derived values and the resolved durations go into `config`, and
  DIR/config.json records it: passed back with --config it repeats the run.
  """
  workdir = os.path.abspath(workdir)
  derived = apply_derived_config(config, task)
  run = build(config, task)
  mesh, state_sharding, durations = run.mesh, run.state_sharding, run.durations
  total_steps = durations["total"]
  log_every, eval_every, ckpt_every = durations["log_every"], durations["eval_every"], durations["ckpt_every"]
  with config.unlocked():  # record the step counts the epochs resolved to
    for name in ("total", "log_every", "eval_every", "ckpt_every"):
      config[f"{name}_steps"] = durations[name]
  for key, value in derived.items():
    metrics_lib.log_info("derived config: %s = %r", key, value)
  local_batch = parallel.local_batch_size(config.batch_size)
  n_frozen = sum(not m for m in run.mask.values())
  metrics_lib.log_info("%d parameter tensors, %d frozen by optim.freeze", len(run.mask), n_frozen)
  table = None
  if config.get("data_on_device", False):
    # The whole (host-transformed, uint8) split on every device; the host only shuffles row numbers, in the
    # same order (and with the same checkpointable state) as it would shuffle the examples.
    table = parallel.replicate(data.materialise(task.train_source, task.train_transforms), mesh)
    host_iter = data.train_iterator(data.RowSource(task.train_source), local_batch=local_batch, seed=config.seed,
                                    order=task.train_order)
  else:
    host_iter = data.train_iterator(task.train_source, local_batch=local_batch, transforms=task.train_transforms,
                                    seed=config.seed, worker_count=config.worker_count, order=task.train_order)
  # Batches go to the devices `prefetch` steps ahead, overlapping the copies with the running step.
  train_iter = data.DevicePrefetch(host_iter, lambda b: parallel.to_global(b, mesh), depth=config.get("prefetch", 2))
  metrics_lib.write_config(config, workdir)  # inputs checked: the first file this run writes
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep_latest=config.keep_ckpts,
                                 keep_best=config.keep_best, best_metric=config.best_metric,
                                 best_mode=config.best_mode)

  # Resume order: workdir checkpoint > config.init_from (converted weights, strict) > scratch.
  if ckpt.latest_step() is not None:
    state, train_iter = ckpt.restore(checkpoint.abstract_like(run.abstract_state, state_sharding), train_iter)
  else:
    state = run.init_state()
    if config.init_from.path:
      params = checkpoint.load_init_from(parallel.to_host(state["params"]), config.init_from.path,
                                         config.init_from.into, config.init_from.dont_load)
      state["params"] = parallel.from_host(params, state_sharding["params"])
      # Non-trained collections (BatchNorm statistics) come along when the source has them.
      model_state = checkpoint.load_init_from_collections(parallel.to_host(state["model_state"]),
                                                          config.init_from.path, config.init_from.into,
                                                          config.init_from.dont_load)
      state["model_state"] = parallel.from_host(model_state, state_sharding["model_state"])
      metrics_lib.log_info("initialised %r from %s", config.init_from.into or "all params", config.init_from.path)
  if task.on_start is not None:
    task.on_start(state)

  train_step, train_rng, constants = run.train_step, run.train_rng, run.constants
  writer = metrics_lib.MetricWriter(workdir)
  preempt = _PreemptionFlag()
  # Collectives dispatched ahead on CPU can deadlock XLA's rendezvous on few cores: block there.
  block_each_step = jax.default_backend() == "cpu"

  step = int(parallel.to_host(state["step"]))
  first_step, last_log_step, t_log, wait_log = step, step, time.perf_counter(), train_iter.wait_seconds
  all_finite, acc = jnp.bool_(True), None
  try:
    while step < total_steps:
      if preempt.is_set(step, config.preemption_sync_every):
        _check_finite(all_finite, last_log_step, step)
        ckpt.save(step, state, train_iter)
        ckpt.wait()
        raise Preempted(f"preempted at step {step}; checkpoint saved in {ckpt.directory}")
      if config.profile.num_steps and step == config.profile.start_step:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      state, m = train_step(state, next(train_iter), train_rng, constants, table)
      step += 1
      if block_each_step:
        jax.block_until_ready(m)
      if config.profile.num_steps and step == config.profile.start_step + config.profile.num_steps:
        jax.profiler.stop_trace()
      all_finite = all_finite & m.pop("finite")
      acc = m if acc is None else jax.tree.map(jnp.add, acc, m)

      if _every(step, log_every, total_steps):
        _check_finite(all_finite, last_log_step, step)
        n = step - last_log_step
        means = {f"train/{k}": float(v) / n for k, v in parallel.to_host(acc).items()}
        dt = time.perf_counter() - t_log
        steps_s = n / dt
        eta = (total_steps - step) / steps_s
        # Time blocked on the host pipeline: near 0 when the input keeps up, near 1 when the run is input-bound.
        wait_fraction = (train_iter.wait_seconds - wait_log) / max(dt, 1e-9)
        writer.write(step, {**means, "perf/steps_per_sec": steps_s, "perf/images_per_sec": steps_s * config.batch_size,
                            "perf/input_wait_fraction": wait_fraction})
        metrics_lib.log_info("step %d/%d | loss %.5g | %.2f steps/s | %.1f img/s | input wait %.0f%% | ETA %s", step,
                             total_steps, means["train/loss"], steps_s, steps_s * config.batch_size,
                             100 * wait_fraction, time.strftime("%H:%M:%S", time.gmtime(eta)))
        acc, last_log_step, t_log, wait_log = None, step, time.perf_counter(), train_iter.wait_seconds

      eval_metrics = None
      if task.eval_fn is not None and _every(step, eval_every, total_steps):
        eval_metrics = task.eval_fn(state, step)
        # HWC arrays in the result are images (e.g. reconstruction grids) for TensorBoard.
        images = {k: v for k, v in eval_metrics.items() if np.ndim(v) == 3}
        eval_metrics = {k: v for k, v in eval_metrics.items() if k not in images}
        writer.write(step, eval_metrics)
        for tag, image in images.items():
          writer.write_image(step, tag, image)
        metrics_lib.log_info("eval step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in eval_metrics.items()))
        t_log, wait_log = time.perf_counter(), train_iter.wait_seconds  # keep eval time out of the throughput

      stop = False
      if eval_metrics:
        control, stop = update_control(parallel.to_host(state["control"]), eval_metrics, config)
        state["control"] = parallel.from_host(control, state_sharding["control"])
        writer.write(step, {"control/lr_scale": float(control["lr_scale"])})

      # Evaluated states are always saved with their metrics, so best-K ranks only what was measured.
      if _every(step, ckpt_every, total_steps) or (eval_metrics and config.keep_best) or stop:
        _check_finite(all_finite, last_log_step, step)  # never save a non-finite state
        ckpt.save(step, state, train_iter, metrics=eval_metrics)
      if stop:
        break
    writer.flush()
    metrics_lib.log_info("trained steps %d..%d", first_step, step)
  finally:
    preempt.restore()
    ckpt.close()
    writer.close()
  return state


def _check_finite(all_finite, last_checked: int, step: int) -> None:
  if not bool(parallel.to_host(all_finite)):
    raise FloatingPointError(f"loss or gradients became nan or inf somewhere within steps [{last_checked}, {step}]; "
                             "no checkpoint of that state was written (lower optim.lr or check the data)")
