"""Tiny classifier config for the foundation tests: python -m tests.toy_main --config tests/toy_config.py --workdir W."""

from common import config as config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, steps=12)
  c = config_lib.base_config()
  c.batch_size = 8
  c.total_steps = a.steps
  c.log_every_steps = 2
  c.eval_every_steps = 6
  c.ckpt_every_steps = 3
  c.best_metric, c.best_mode = "val/loss", "min"
  c.optim.name, c.optim.lr, c.optim.schedule, c.optim.warmup_steps = "adam", 0.05, "cosine", 2
  c.num_train, c.num_val, c.image_size = 128, 37, 8  # 37: the last eval batch is partial
  c.nan_at_step = -1
  c.device_flip = False  # flip on the device (Task.device_transform) instead of on the host
  c.freeze_head = False  # derived into optim.freeze by the task (the Task.derive_config hook)
  return c
