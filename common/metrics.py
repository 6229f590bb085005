"""What a run writes besides checkpoints: config.json, JSONL + TensorBoard events (TF-free), process 0 only."""

import json
import os
import time

from absl import logging
import jax
import numpy as np


def write_config(config, workdir: str) -> None:
  """DIR/config.json (atomically, from process 0): pass it back with --config to repeat the run."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, ".config.json.tmp")
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, os.path.join(workdir, "config.json"))


class MetricWriter:
  """Appends `{"step": s, "time": t, **metrics}` rows to workdir/metrics.jsonl and TensorBoard events.

  On processes other than 0 every method is a no-op, so trainers call it unconditionally.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

    os.makedirs(workdir, exist_ok=True)
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), "time": time.time()}
    for k, v in metrics.items():
      v = float(np.asarray(v))
      row[k] = v
      self.tb.add_scalar(k, v, step)
    self.jsonl.write(json.dumps(row) + "\n")

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """HWC float in [0,1] or uint8."""
    if self.active:
      self.tb.add_image(tag, np.asarray(image), step, dataformats="HWC")

  def flush(self) -> None:
    if self.active:
      self.jsonl.flush()
      self.tb.flush()

  def close(self) -> None:
    if self.active:
      self.jsonl.close()
      self.tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def log_info(msg: str, *args) -> None:
  if jax.process_index() == 0:
    logging.info(msg, *args)
