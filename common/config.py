"""Config building blocks for `get_config(arg)` files; imports nothing but ml_collections.

    python -m <pkg>.<command> --config configs/<pkg>/<name>.py[:arg] --workdir DIR [--config.key=value ...]
    python -m <pkg>.<command> --config DIR/config.json --workdir DIR2       # re-run a recorded run

Config files return an ml_collections.ConfigDict built on `base_config()`; `arg` is parsed with
`parse_arg` ("smoke", "smoke,res=64"). Loading a config never pulls in jax or a trainer, so a config can
be read, printed and compared anywhere (the command line is handled by `common.cli`).
"""

import json

import ml_collections


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


def optim_config() -> ml_collections.ConfigDict:
  """config.optim, read by common.optim: adam (torch: L2 on the gradient) | adamw | sgd, cosine | constant,
  warmup as steps or epochs, clipping (0: off), and `freeze` regexes on '/'-joined parameter paths."""
  return ml_collections.ConfigDict(dict(
      name="adamw", lr=3e-4, weight_decay=1e-4, b1=0.9, b2=0.999, momentum=0.9, clip_grad_norm=1.0,
      schedule="cosine", warmup_steps=0, warmup_epochs=0.0, freeze=()))


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
  c.prefetch = 2  # global batches in flight to the devices (host->device copies overlap the step)
  # Keep the whole uint8 train split on every device and gather each batch inside the step (the host only
  # shuffles row numbers): for splits that fit in accelerator memory (100k faces at 112 px: 3.8 GB).
  c.data_on_device = False
  c.preemption_sync_every = 10  # multi-process only: steps between SIGTERM agreement
  # Devices as a (data, fsdp) mesh; -1 takes the rest. fsdp > 1 shards parameters, optimizer state and step
  # constants of at least fsdp_min_size elements over that axis (ZeRO-3 style); batches split over both axes.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.fsdp_min_size = 2 ** 14
  c.optim = optim_config()
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


def set_dotted(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
  """Sets fields by dotted keys passed as keyword names, e.g. set_dotted(c, **{"optim.lr": 0.1}); returns c."""
  for key, value in values.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _tuples(value):
  """JSON has only lists; configs use tuples for sequences (hashable, as module attributes need)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def from_json(path: str) -> ml_collections.ConfigDict:
  """The config a run recorded in DIR/config.json, ready to run again."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except OSError as e:
    raise FileNotFoundError(f"cannot read config {path}: {e.strerror}") from e
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); pass a config.json written by a run, or a .py config") from e
  if not isinstance(raw, dict):
    raise ValueError(f"{path} holds a JSON {type(raw).__name__}, not a config object")
  return ml_collections.ConfigDict(_tuples(raw))
