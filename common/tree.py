"""Nested variable dicts as flat {"a/b/leaf": array} dicts, and the strict merge every loader uses.

Pure numpy: the registry, the converters, checkpoints and optimisers all build on it, and it imports
none of them.
"""

import re
from typing import Mapping, Sequence

import numpy as np


class MismatchError(ValueError):
  """Weights whose keys or shapes do not fit the model (the message holds the diff)."""


def flatten(tree: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


def unflatten(flat: Mapping[str, object]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def format_diff(missing, unexpected, mismatched, source: str) -> str:
  """One readable message listing every mismatch (capped per kind so it stays readable)."""
  lines = [f"{source}: checkpoint does not match the model"]
  for title, items in (("missing in checkpoint", missing), ("unexpected (not in model)", unexpected),
                       ("shape mismatch", mismatched)):
    if items:
      shown = ", ".join(str(i) for i in items[:12])
      more = f" ... and {len(items) - 12} more" if len(items) > 12 else ""
      lines.append(f"  {title} ({len(items)}): {shown}{more}")
  return "\n".join(lines)


def merge_strict(reference, loaded, dont_load: Sequence[str] = (), source: str = "checkpoint"):
  """Returns `reference`'s structure filled from `loaded`, raising on any mismatch.

  `reference` is the model's own tree (arrays or ShapeDtypeStructs). Keys matching a `dont_load`
  regex keep the reference value and may be absent from `loaded`; every other key must be present in
  both with the same shape. Extra keys in `loaded` are an error unless they match `dont_load`.
  """
  ref, got = flatten(reference), flatten(loaded)
  skip = [re.compile(p) for p in dont_load]
  skipped = lambda k: any(p.fullmatch(k) for p in skip)
  missing = sorted(k for k in ref if k not in got and not skipped(k))
  unexpected = sorted(k for k in got if k not in ref and not skipped(k))
  mismatched = [f"{k} {tuple(np.shape(got[k]))} vs model {tuple(ref[k].shape)}" for k in sorted(ref)
                if k in got and not skipped(k) and tuple(np.shape(got[k])) != tuple(ref[k].shape)]
  if missing or unexpected or mismatched:
    raise MismatchError(format_diff(missing, unexpected, mismatched, source) +
                        "\n  (fix: convert the matching model, or list keys in dont_load)")
  out = {k: (ref[k] if skipped(k) else np.asarray(got[k]).astype(ref[k].dtype)) for k in ref}
  return unflatten(out)
