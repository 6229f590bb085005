"""Devices: multi-host start-up, the global mesh and the shardings every trainer uses.

One mesh spans all devices of all processes with axes `data` and `fsdp` (config.mesh, default all `data`).
Batches are split over both; parameters, optimizer state and step constants are replicated over `data`
and, above a size threshold, sharded over `fsdp` on their largest divisible dimension (`param_sharding`,
big_vision's fsdp strategy): the trainers are the same for pure data parallelism and FSDP.
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


MESH_AXES = ("data", "fsdp")


def make_mesh(axes=None) -> jax.sharding.Mesh:
  """The mesh over all devices of all processes: `axes` {"data": n, "fsdp": m} (config.mesh; -1 = the rest).

  Batches are split over both axes (every device gets its own rows); parameters and optimizer state are
  replicated over `data` and, above a size threshold, sharded over `fsdp` (see `param_sharding`).
  """
  axes = dict(axes or {"data": -1, "fsdp": 1})
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; use {', '.join(MESH_AXES)}")
  return _mesh(tuple(int(axes.get(a, 1)) for a in MESH_AXES))


@functools.cache
def _mesh(sizes: tuple[int, ...]) -> jax.sharding.Mesh:  # cached: every caller shares one mesh object
  n = jax.device_count()
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if known <= 0 or n % known:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} does not fit the {n} devices; make the product of "
                     f"the axes divide {n} (e.g. --config.mesh.data=-1 --config.mesh.fsdp={n})")
  sizes = tuple(n // known if s == -1 else s for s in sizes)
  if int(np.prod(sizes)) != n:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} covers {int(np.prod(sizes))} of the {n} devices; "
                     "set one axis to -1")
  # Auto axes keep classic GSPMD semantics (jax>=0.10 make_mesh defaults to Explicit axes).
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(sizes))


def mesh_of(tree) -> jax.sharding.Mesh:
  """The mesh the device arrays of `tree` live on (a train state, or variables placed by `replicate`)."""
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding):
      return leaf.sharding.mesh
  raise ValueError("no device arrays on a mesh in this tree; place host values with parallel.replicate first")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh) -> NamedSharding:
  """Batch rows over every device: data parallel, and FSDP's 'each device its own rows'."""
  return NamedSharding(mesh, P(tuple(a for a in mesh.axis_names if a in MESH_AXES)))


FSDP_MIN_SIZE = 2 ** 14  # leaves smaller than this (biases, norms, small convs) stay replicated: not worth a gather


def leaf_spec(shape, fsdp: int, min_size: int = FSDP_MIN_SIZE) -> P:
  """big_vision's fsdp rule: shard the largest dimension that `fsdp` divides, if the leaf is large enough."""
  if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()  # no dimension divides: replicated


def param_sharding(mesh, tree, min_size: int = FSDP_MIN_SIZE):
  """Shardings for parameters / optimizer state / constants: replicated over `data`, large leaves sharded over
  `fsdp` (when the mesh has it) on their largest divisible dimension. Trainers never change for it."""
  fsdp = dict(zip(mesh.axis_names, mesh.devices.shape)).get("fsdp", 1)
  return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(np.shape(x), fsdp, min_size)), tree)


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


def _host_value(x):
  if not isinstance(x, jax.Array):
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(jax.device_get(x.addressable_data(0)))  # no gather needed
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))  # sharded over this process's devices: assembled here
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))  # FSDP shards on other hosts


def to_host(tree):
  """Device values -> whole numpy arrays on every process (metrics, eval sums, FSDP-sharded parameters)."""
  return jax.tree.map(_host_value, tree)


def replicate(tree, mesh):
  """Host values (identical on every process) -> device arrays replicated over `mesh`'s devices."""
  return from_host(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def from_host(tree, shardings):
  """Identical host values on every process -> global arrays with `shardings` (works multi-process,
  where device_put onto non-addressable devices is not allowed)."""
  return jax.jit(lambda t: t, out_shardings=shardings)(tree)
