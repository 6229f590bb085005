"""Test set-up: 2 fake CPU devices (set before jax is imported) and exact fp32 matmuls."""

import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same train steps several times (resume, restart, CLI runs): a persistent compilation
# cache, inherited by subprocesses through the environment, turns the repeats into cache hits.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jaxvision-test-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

jax.config.update("jax_default_matmul_precision", "highest")

from absl import flags  # pylint: disable=wrong-import-position

# grain workers read absl flags; mark them parsed for in-process use.
flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**extra) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  return env


from common.config import set_dotted  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA's optimisation passes cost far more compile time than they save on a workflow test's few tiny steps."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
