"""common.progress.track: lines at the right times with the right percent, rate and ETA; items unchanged."""

import subprocess
import sys

from absl import logging
import pytest

from common import progress
from tests.conftest import subprocess_env


class FakeClock:
  """Time moves only when the loop body says so (0.25 s steps are exact in binary floating point)."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_percent_rate_eta_and_final_line():
  clock, lines = FakeClock(), []
  out = []
  for item in progress.track(list(range(100)), desc="check", unit="files", every_s=10.0, log=lines.append,
                             clock=clock):
    out.append(item)
    clock.now += 0.25  # 4 files/s
  assert out == list(range(100))
  # 10 s = 40 files: 60 left at 4/s = 15 s; then 80 files at 20 s; the loop ends at 25 s.
  assert lines == ["check: 40/100 (40%) | 4.0 files/s | ETA 00:00:15",
                   "check: 80/100 (80%) | 4.0 files/s | ETA 00:00:05",
                   "check: 100 files in 25.0 s (4.0 files/s)"]


def test_without_total_no_percent_or_eta():
  clock, lines = FakeClock(), []
  items = (x * x for x in range(30))  # a generator: no len()
  out = []
  for item in progress.track(items, every_s=5.0, log=lines.append, clock=clock):
    out.append(item)
    clock.now += 0.5
  assert out == [x * x for x in range(30)]
  assert lines == ["10 items | 2.0 items/s", "20 items | 2.0 items/s", "30 items | 2.0 items/s",
                   "30 items in 15.0 s (2.0 items/s)"]
  assert not any("%" in l or "ETA" in l for l in lines)


def test_explicit_total_for_an_iterator_long_eta_and_slow_rate():
  clock, lines = FakeClock(), []
  for _ in progress.track(iter(range(3)), total=10_000, desc="slow", every_s=60.0, log=lines.append, clock=clock):
    clock.now += 64.0  # 1/64 items/s: 9999 items left -> 639936 s
  assert lines[0] == "slow: 1/10000 (0%) | 0.0156 items/s | ETA 177:45:36"
  assert lines[-1] == "slow: 3/10000 items in 192.0 s (0.0156 items/s)"  # stopped short of the total


def test_quiet_cases():
  clock, lines = FakeClock(), []
  assert list(progress.track([7], log=lines.append, clock=clock)) == [7]
  assert list(progress.track([], log=lines.append, clock=clock)) == []
  assert lines == []  # one item or none: nothing worth a line
  # A consumer that stops early gets no final line.
  for item in progress.track(range(5), log=lines.append, clock=clock):
    if item == 2:
      break
  assert lines == []


def test_default_logger_is_absl_info(monkeypatch):
  got = []
  monkeypatch.setattr(logging, "info", lambda msg, *args: got.append(msg % args if args else msg))
  clock = FakeClock()
  for _ in progress.track(range(3), desc="convert", unit="tensors", clock=clock):
    clock.now += 1.0
  assert got == ["convert: 3 tensors in 3.0 s (1.0 tensors/s)"]


def test_only_process_zero_logs(monkeypatch):
  jax = pytest.importorskip("jax")
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  lines = []
  assert list(progress.track(range(3), every_s=0.0, log=lines.append)) == [0, 1, 2]
  assert lines == []


def test_format_duration():
  assert progress.format_duration(0) == "00:00:00"
  assert progress.format_duration(3661.4) == "01:01:01"
  assert progress.format_duration(float("inf")) == "--:--:--"


def test_import_is_light():
  code = "import sys; import common.progress; print('jax' in sys.modules, 'numpy' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ["False", "False"]
