"""Devices: multi-host start-up, the global mesh and the shardings every trainer uses.

One mesh spans all devices of all processes with a single `data` axis. Batches are split over it and
parameters are replicated; `param_sharding` is the one place to extend for FSDP (shard large leaves
over `data` as well) without touching the trainers.
"""

import functools
import os

from absl import logging
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# Launchers (launch/*.sh) set these; a plain single-host run sets none and never calls initialize().
_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize_distributed(force: bool = False) -> None:
  """Calls `jax.distributed.initialize()` only when the environment (or `force`) asks for it.

  Local / SLURM launchers export JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; on Cloud TPU
  VMs and SLURM jax can also auto-detect, which `JAX_DISTRIBUTED=1` (or config.distributed=True) requests.
  """
  env = {k: os.environ.get(k) for k in _DIST_ENV}
  if env["JAX_COORDINATOR_ADDRESS"]:
    missing = [k for k, v in env.items() if not v]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} are not; set all three "
                       "(launch/local.sh and launch/slurm.sbatch do)")
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(env["JAX_NUM_PROCESSES"]),
                               process_id=int(env["JAX_PROCESS_ID"]))
  elif force or os.environ.get("JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()  # cluster auto-detection (Cloud TPU, SLURM)
  else:
    return
  logging.info("jax.distributed: process %d/%d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


@functools.cache
def make_mesh() -> jax.sharding.Mesh:
  """The one mesh of this process (all devices of all processes); cached, so every caller shares it."""
  # Auto axes keep classic GSPMD semantics (jax>=0.10 make_mesh defaults to Explicit axes).
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def mesh_of(tree) -> jax.sharding.Mesh:
  """The mesh the device arrays of `tree` live on (a train state, or variables placed by `replicate`)."""
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding):
      return leaf.sharding.mesh
  raise ValueError("no device arrays on a mesh in this tree; place host values with parallel.replicate first")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def param_sharding(mesh, tree):
  """Sharding for parameters / optimizer state: replicated (data parallel). FSDP would go here."""
  return jax.tree.map(lambda _: replicated(mesh), tree)


def local_batch_size(global_batch: int) -> int:
  """The per-process share of a global batch; errors clearly when it cannot be split evenly."""
  n_dev, n_proc = jax.device_count(), jax.process_count()
  if global_batch % n_dev:
    raise ValueError(f"batch_size={global_batch} does not divide by the {n_dev} devices; "
                     f"set --config.batch_size to a multiple of {n_dev}")
  return global_batch // n_proc


def to_global(batch: dict, mesh) -> dict:
  """Process-local numpy batch -> global jax.Arrays sharded over `data` (no host gather)."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def to_host(tree):
  """Fully replicated device values -> numpy on every process (metrics, eval sums)."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x.addressable_data(0)) if isinstance(x, jax.Array) else x),
                      tree)


def replicate(tree, mesh):
  """Host values (identical on every process) -> device arrays replicated over `mesh`'s devices."""
  return from_host(tree, param_sharding(mesh, tree))


def from_host(tree, shardings):
  """Identical host values on every process -> global arrays with `shardings` (works multi-process,
  where device_put onto non-addressable devices is not allowed)."""
  return jax.jit(lambda t: t, out_shardings=shardings)(tree)
