"""Two processes on localhost (jax.distributed over gloo, 1 CPU device each) vs one process with 2 devices."""

import subprocess
import sys

import jax
import numpy as np

from common import checkpoint

from tests.conftest import REPO, subprocess_env


def test_two_processes_match_one_process_two_devices(tmp_path):
  args = ["-m", "tests.toy_main", "--config", "tests/toy_config.py:steps=6", "--config.eval_every_steps=3",
          "--config.ckpt_every_steps=6"]
  one = subprocess.run([sys.executable, *args, "--workdir", str(tmp_path / "one")], cwd=REPO,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-2000:]
  # 1 CPU device per process: drop the 2-fake-device flag the test session uses.
  env = subprocess_env(XLA_FLAGS="", JAX_PLATFORMS="cpu")
  two = subprocess.run(["launch/local.sh", "2", sys.executable, *args, "--workdir", str(tmp_path / "two")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert two.returncode == 0, two.stderr[-3000:]
  assert "process 1/2" in two.stderr  # really distributed, as logged by maybe_initialize_distributed
  (a, _), (b, _) = checkpoint.load_trained_params(tmp_path / "one"), checkpoint.load_trained_params(tmp_path / "two")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    # Same batches and order; only the all-reduce summation order may differ. Measured: 0.0 (bitwise equal) on jax 0.10.2 CPU.
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
  # metrics are written by process 0 only: one row per log step, not two
  rows = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
  assert sum('"train/loss"' in r for r in rows) == 3
