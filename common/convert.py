"""PyTorch -> Flax checkpoint conversion: a rule table per model, applied strictly.

A converter is data: an ordered list of `Rule(pattern, target, transform)`. Each torch key must fully
match exactly one rule's regex (the first that matches wins); the target is a '/'-separated Flax path
that starts with the variable collection ("params/..." or "batch_stats/...") and may use the regex
groups (`\\1`). Every produced leaf is checked against the model's own variables (from `eval_shape`),
so a converted checkpoint loads strictly or not at all.

CLI:  python -m common.convert --model dinov2_vits14 --src dinov2_vits14_pretrain.pth --dst /ckpts/dinov2_s
      [--model_kwargs '{"depth": 2}']
The destination is written atomically: an Orbax checkpoint of the variables plus `model.json` naming
the registered model and its kwargs, so `common.models.load(dst)` rebuilds the module. torch is never
imported (checkpoints are read by `common.torch_io`).
"""

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import Callable, Mapping, Sequence

import numpy as np

from common import models, progress, torch_io
from common.tree import flatten, format_diff, unflatten  # pylint: disable=unused-import (re-exported)

Array = np.ndarray


def identity(x: Array) -> Array:
  return x


def linear(x: Array) -> Array:
  """torch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
  return np.ascontiguousarray(x.T)


def conv(x: Array) -> Array:
  """torch Conv2d weight (O, I, kh, kw) -> Flax Conv kernel (kh, kw, I, O)."""
  return np.ascontiguousarray(x.transpose(2, 3, 1, 0))


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str  # regex that must fully match a torch key
  target: str  # Flax path "collection/mod/.../leaf"; may use regex groups (\1, \2)
  transform: Callable[[Array], Array] = identity


@dataclasses.dataclass(frozen=True)
class Converter:
  rules: Sequence[Rule]
  ignore: Sequence[str] = ()  # regexes of torch keys dropped on purpose (e.g. num_batches_tracked)
  # State-dict level hook run first, e.g. to rename a foreign layout (HF -> hub) or merge q/k/v.
  preprocess: Callable[[dict[str, Array]], dict[str, Array]] | None = None


class ConversionError(ValueError):
  """Raised with a readable diff when a checkpoint does not fit the model."""


def apply_rules(state_dict: Mapping[str, Array], converter: Converter) -> tuple[dict[str, Array], list[str]]:
  """Renames/transforms torch keys into flat Flax paths. Returns (flat, unmatched torch keys)."""
  sd = dict(state_dict)
  if converter.preprocess is not None:
    sd = converter.preprocess(sd)
  compiled = [(re.compile(r.pattern), r) for r in converter.rules]
  ignored = [re.compile(p) for p in converter.ignore]
  flat, unmatched = {}, []
  for key, value in progress.track(sd.items(), total=len(sd), desc="convert", unit="tensors"):
    if any(p.fullmatch(key) for p in ignored):
      continue
    for regex, rule in compiled:
      m = regex.fullmatch(key)
      if m:
        flat[m.expand(rule.target)] = rule.transform(np.asarray(value))
        break
    else:
      unmatched.append(key)
  return flat, unmatched


def convert_state_dict(state_dict: Mapping[str, Array], converter: Converter, expected: Mapping[str, object],
                       source: str = "checkpoint") -> dict:
  """Converts a torch state dict into a nested Flax variables dict, strictly.

  `expected` maps flat Flax paths to anything with `.shape`/`.dtype` (e.g. `jax.eval_shape` leaves).
  Raises ConversionError listing missing / unexpected / mis-shaped keys; nothing is returned then.
  """
  flat, unmatched = apply_rules(state_dict, converter)
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(unmatched) + sorted(set(flat) - set(expected))
  mismatched = [f"{k} {tuple(flat[k].shape)} vs model {tuple(expected[k].shape)}"
                for k in sorted(set(flat) & set(expected)) if tuple(flat[k].shape) != tuple(expected[k].shape)]
  if missing or unexpected or mismatched:
    raise ConversionError(format_diff(missing, unexpected, mismatched, source))
  return unflatten({k: v.astype(expected[k].dtype) for k, v in flat.items()})


def convert_file(model_name: str, src: str, dst: str, model_kwargs: Mapping | None = None) -> None:
  """Reads `src` (torch zip / safetensors), converts it for a registered model, writes `dst` atomically."""
  entry = models.get(model_name)
  if entry.converter is None:
    raise models.ModelError(f"{model_name!r} is a native model with no PyTorch weights to convert")
  model_kwargs = dict(model_kwargs or {})
  state_dict = torch_io.load_state_dict(src)
  expected = flatten(models.abstract_variables(entry, model_kwargs))
  variables = convert_state_dict(state_dict, entry.converter, expected, source=src)
  models.save(dst, model_name, model_kwargs, variables)


def main(argv: Sequence[str] | None = None) -> int:
  convertible = [n for n in models.names() if models.get(n).converter is not None]
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   epilog="registered models: " + ", ".join(convertible))
  parser.add_argument("--model", required=True, help="registered model name (listed below)")
  parser.add_argument("--src", required=True, help="PyTorch checkpoint (.pth/.pt/.bin zip format or .safetensors)")
  parser.add_argument("--dst", required=True, help="output directory (must not exist)")
  parser.add_argument("--model_kwargs", default="{}", help="JSON dict of constructor overrides, e.g. '{\"depth\": 2}'")
  args = parser.parse_args(argv)
  try:
    kwargs = json.loads(args.model_kwargs)
    if not isinstance(kwargs, dict):
      raise ValueError("--model_kwargs must be a JSON object")
    convert_file(args.model, args.src, args.dst, kwargs)
  except (ConversionError, torch_io.CheckpointError, models.ModelError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {os.path.abspath(args.dst)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
