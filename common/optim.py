"""Optimisers, schedules and parameter freezing from an ml_collections config.

Config (all trainers share the layout):
  config.optim (defaults in common.config.optim_config) = dict(name="adamw", lr=3e-4, weight_decay=1e-4, b1=0.9, b2=0.999, momentum=0.9,
                      clip_grad_norm=1.0,                       # 0 disables clipping
                      schedule="cosine",                         # cosine | constant
                      warmup_steps=0, warmup_epochs=0.0,         # either; epochs win when > 0
                      freeze=("backbone/.*",))                   # regexes on '/'-joined param paths
Reduce-on-plateau is driven by an evaluation metric (config.plateau, see common.trainer): it multiplies
whatever this schedule gives.
Frozen parameters are split off before differentiation, so they get neither gradients nor optimizer
state. Parameters are a nested dict; the trainable part is a flat {"a/b/kernel": array} dict.
"""

import re
from typing import Sequence

import ml_collections
import optax

from common.tree import flatten, unflatten


def trainable_mask(params, freeze: Sequence[str]) -> dict[str, bool]:
  """{path: trainable?} for every parameter leaf, given regexes (full match) of frozen paths."""
  patterns = [re.compile(p) for p in freeze]
  return {k: not any(p.fullmatch(k) for p in patterns) for k in flatten(params)}


def with_frozen(freeze: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
  """`freeze` plus the patterns of `extra` it lacks: deriving a config twice (a recorded config.json run
  again) gives the same patterns."""
  return tuple(freeze) + tuple(p for p in extra if p not in tuple(freeze))


def split_params(params, mask: dict[str, bool]):
  """(trainable_flat, frozen_flat) from a nested params dict."""
  flat = flatten(params)
  return ({k: v for k, v in flat.items() if mask[k]}, {k: v for k, v in flat.items() if not mask[k]})


def merge_params(trainable_flat, frozen_flat):
  return unflatten({**frozen_flat, **trainable_flat})


def steps_from(config, name: str, steps_per_epoch: int, default: int = 0) -> int:
  """Resolves a duration given as `<name>_steps` or `<name>_epochs` (epochs win when > 0)."""
  epochs = config.get(f"{name}_epochs", 0) or 0
  if epochs > 0:
    return max(1, int(round(epochs * steps_per_epoch)))
  return int(config.get(f"{name}_steps", default) or default)


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
  warmup = steps_from(cfg, "warmup", steps_per_epoch)
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup_steps=warmup,
                                              decay_steps=max(total_steps, warmup + 1), end_value=0.0)
  if cfg.schedule == "constant":
    if warmup == 0:
      return optax.constant_schedule(cfg.lr)
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)],
                                [warmup])
  raise ValueError(f"unknown optim.schedule {cfg.schedule!r}; use cosine or constant (reduce-on-plateau: "
                   "set config.plateau.metric)")


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
  """Returns (optax transformation, lr schedule)."""
  schedule = make_schedule(cfg, total_steps, steps_per_epoch)
  if cfg.name == "adam":  # torch.optim.Adam: weight_decay is an L2 term added to the gradient
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(schedule, b1=cfg.b1, b2=cfg.b2))
  elif cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  elif cfg.name == "sgd":
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                      optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=False))
  else:
    raise ValueError(f"unknown optim.name {cfg.name!r}; use adam, adamw or sgd")
  parts = []
  if cfg.clip_grad_norm:
    parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
  parts.append(opt)
  return optax.chain(*parts), schedule
