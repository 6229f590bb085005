"""Config plumbing shared by every entry point.

    python -m <pkg>.main --config configs/<pkg>/<name>.py[:arg] --workdir DIR [--config.key=value ...]

Config files are `get_config(arg)` returning an ml_collections.ConfigDict built on `base_config()`;
`arg` is parsed with `parse_arg` ("smoke", "smoke,res=64"). Configs are locked: an override of an
unknown key, or of the wrong type, is a flag-parsing error before anything runs.
"""

import logging as std_logging
import os
import sys
from typing import Callable

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections import config_flags

from common import optim, parallel, trainer


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'smoke,res=64' -> ConfigDict(smoke=True, res=64) typed by `defaults` (flags without '=' are True)."""
  out = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    if key not in out:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(sorted(out))}")
    kind = type(out[key])
    out[key] = True if not _ else (value.lower() in ("1", "true", "yes") if kind is bool else kind(value))
  return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
  """Keys every trainer understands. Durations: `<name>_steps` or `<name>_epochs` (epochs win if > 0)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 32  # global, over all devices and hosts
  c.total_steps, c.total_epochs = 1000, 0.0
  c.log_every_steps, c.log_every_epochs = 50, 0.0
  c.eval_every_steps, c.eval_every_epochs = 500, 0.0
  c.ckpt_every_steps, c.ckpt_every_epochs = 500, 0.0
  c.keep_ckpts = 2  # latest N
  c.keep_best = 1  # plus best K by best_metric (0: off)
  c.best_metric, c.best_mode = "", "min"
  c.worker_count = 0  # grain worker processes (0: in the main process)
  c.preemption_sync_every = 10  # multi-process only: steps between SIGTERM agreement
  c.optim = optim.default_config()
  c.init_from = ml_collections.ConfigDict(dict(path="", into="", dont_load=()))
  # Evaluation-driven control, each off while its metric is "" (metric names as eval_fn returns them):
  # plateau: torch ReduceLROnPlateau, the lr is multiplied by `factor` (not below `min_scale` x the schedule)
  #   when more than `patience` evaluations in a row did not improve on the best;
  # early_stop: training ends (saving the state) after `patience` evaluations in a row without improvement.
  c.plateau = ml_collections.ConfigDict(dict(metric="", mode="max", factor=0.1, patience=2, min_scale=1e-4))
  c.early_stop = ml_collections.ConfigDict(dict(metric="", mode="max", patience=5))
  c.profile = ml_collections.ConfigDict(dict(start_step=10, num_steps=0))  # num_steps=0: no trace
  c.distributed = False  # force jax.distributed.initialize() (auto-detected cluster)
  return c


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


# Errors a user can fix from the message alone: shown as one line, exit code 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter from orbax/grain/jax internals; our own progress lines and all warnings stay."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax", "absl"))


def quiet_logging() -> None:
  """INFO for our own lines, warnings only from library internals."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())


def run_main(train_fn: Callable[[ml_collections.ConfigDict, str], object]) -> None:
  """Defines --config/--workdir and runs `train_fn(config, workdir)` under absl."""
  config_flag = config_flags.DEFINE_config_file("config", None, "get_config(arg) file, e.g. configs/x/default.py:smoke",
                                                lock_config=True)
  workdir_flag = flags.DEFINE_string("workdir", None, "output directory (checkpoints, metrics, config.json)")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logging()
    config, workdir = config_flag.value, os.path.abspath(workdir_flag.value)
    try:
      parallel.maybe_initialize_distributed(force=config.get("distributed", False))
      write_config(config, workdir)
      train_fn(config, workdir)
    except trainer.Preempted as e:  # a clean exit: the scheduler restarts us and we resume
      logging.warning("%s", e)
    except USER_ERRORS as e:
      msg = str(e).strip() or type(e).__name__
      print(f"error: {msg}", file=sys.stderr)
      sys.exit(2)

  app.run(main)
