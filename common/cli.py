"""The command line every entry point shares: --config / --workdir, logging, and errors a user can fix.

    python -m <pkg>.<command> --config configs/<pkg>/<name>.py[:arg] --workdir DIR [--config.key=value ...]

`--config` takes a `get_config(arg)` file or a run's recorded DIR/config.json. Configs are locked: an
override of an unknown key, or of the wrong type, is a flag-parsing error before anything runs.
"""

import logging as std_logging
import os
import sys
from typing import Callable

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

from common import config as config_lib, metrics, parallel, trainer

# Errors a user can fix from the message alone: shown as one line, exit code 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


class _ConfigFileOrJson(config_flags_impl.ConfigFileFlagParser):
  """`--config x.py[:arg]` as ml_collections does, or a recorded `config.json`."""

  def parse(self, path):
    if isinstance(path, str) and path.endswith(".json"):
      config = config_lib.from_json(path)
      if self._lock_config:
        config.lock()
      return config
    return super().parse(path)


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter from orbax/grain/jax internals; our own progress lines and all warnings stay."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax", "absl"))


def quiet_logging() -> None:
  """INFO for our own lines, warnings only from library internals."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())


def run_main(command: Callable[[ml_collections.ConfigDict, str], object]) -> None:
  """Defines --config/--workdir and runs `command(config, workdir)` under absl.

  Trainers write DIR/config.json once their inputs are checked and the derived values are in
  (common.trainer.train); every command writes it again when it succeeds, so an input error leaves nothing
  behind and the file always holds the config that ran.
  """
  config_flag = config_flags.DEFINE_config_file("config", None, "get_config(arg) file, e.g. configs/x/default.py:smoke, "
                                                "or a run's config.json", lock_config=True)
  flags.FLAGS["config"].parser = _ConfigFileOrJson(name="config", lock_config=True)
  workdir_flag = flags.DEFINE_string("workdir", None, "output directory (checkpoints, metrics, config.json)")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logging()
    config, workdir = config_flag.value, os.path.abspath(workdir_flag.value)
    try:
      parallel.maybe_initialize_distributed(force=config.get("distributed", False))
      command(config, workdir)
      metrics.write_config(config, workdir)
    except trainer.Preempted as e:  # a clean exit: the scheduler restarts us and we resume
      logging.warning("%s", e)
    except USER_ERRORS as e:
      msg = str(e).strip() or type(e).__name__
      print(f"error: {msg}", file=sys.stderr)
      sys.exit(2)

  app.run(main)
