"""Progress lines for long loops that are not training (data checks, synthetic data, conversion).

    for path in progress.track(paths, desc="check images", unit="files"):
      ...
    # INFO  check images: 120/500 (24%) | 35.2 files/s | ETA 00:00:11      (at most every `every_s` seconds)
    # INFO  check images: 500 files in 14.2 s (35.2 files/s)                (once, at the end)

Only process 0 logs, so a multi-host job prints one line per step, not one per host. Importing this module
imports no jax: the host index is read lazily, and only when jax is already loaded.
"""

import math
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from absl import logging

T = TypeVar("T")


def _is_process_zero() -> bool:
  # A program that has not imported jax is single-process; importing it here would cost seconds and could
  # initialise the backend before jax.distributed.initialize.
  if "jax" not in sys.modules:
    return True
  return sys.modules["jax"].process_index() == 0


def format_duration(seconds: float) -> str:
  """HH:MM:SS (hours grow past 99 rather than wrap); "--:--:--" when unknown or infinite."""
  if not math.isfinite(seconds) or seconds < 0:
    return "--:--:--"
  s = int(round(seconds))
  return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _rate(rate: float) -> str:
  return f"{rate:.1f}" if rate >= 1 else f"{rate:.3g}"  # 0.0123 items/s should not print as 0.0


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "items",
          every_s: float = 10.0, log: Callable[[str], None] | None = None,
          clock: Callable[[], float] = time.perf_counter) -> Iterator[T]:
  """Yields the items of `iterable` unchanged, logging progress at most every `every_s` seconds.

  Args:
    iterable: the loop's items (a list, range, generator, `pool.map(...)`).
    total: expected item count, for the percentage and ETA; defaults to len(iterable), none for an iterator.
    desc: what the loop does, the start of every line.
    unit: the plural noun of one item ("files", "images").
    every_s: least wall time between two progress lines; the first comes after `every_s`.
    log: called with each line; default absl logging.info. Either way only process 0 logs.
    clock: seconds, monotonic (tests pass a fake one).

  A final line with the count, time and rate follows when the loop completes over more than one item (not
  when the consumer stops early or raises).
  """
  if total is None:
    try:
      total = len(iterable)  # type: ignore[arg-type]
    except TypeError:
      total = None
  emit = log if log is not None else logging.info
  enabled = None  # decided at the first line: the host index is only looked up when there is something to say
  prefix = f"{desc}: " if desc else ""
  start = last = clock()
  n = 0

  def say(line):
    nonlocal enabled
    if enabled is None:
      enabled = _is_process_zero()
    if enabled:
      emit(line)

  for item in iterable:
    yield item
    n += 1
    now = clock()
    if now - last >= every_s:
      last = now
      elapsed = now - start
      rate = n / elapsed if elapsed > 0 else math.inf
      if total:
        eta = (total - n) / rate if rate > 0 else math.inf
        say(f"{prefix}{n}/{total} ({100 * n // total}%) | {_rate(rate)} {unit}/s | ETA {format_duration(eta)}")
      else:
        say(f"{prefix}{n} {unit} | {_rate(rate)} {unit}/s")
  if n > 1:
    elapsed = clock() - start
    count = f"{n}/{total}" if total and n != total else f"{n}"
    rate = f" ({_rate(n / elapsed)} {unit}/s)" if elapsed > 0 else ""
    say(f"{prefix}{count} {unit} in {elapsed:.1f} s{rate}")
