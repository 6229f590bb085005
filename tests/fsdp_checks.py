"""FSDP checks on 8 fake CPU devices, run by tests/test_fsdp.py in a subprocess (the suite itself has 2 devices).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.fsdp_checks CASE WORKDIR

Prints one JSON line with the measurements; the test asserts on them.
"""

import json
import os
import sys

import jax
import numpy as np

from common import checkpoint, parallel, trainer
from tests import toy_config, toy_main
from tests.conftest import set_dotted

jax.config.update("jax_default_matmul_precision", "highest")


def toy(workdir, steps, **mesh):
  c = set_dotted(toy_config.get_config(), total_steps=steps, eval_every_steps=100, ckpt_every_steps=2,
                 log_every_steps=1, keep_best=0, fsdp_min_size=1, **{f"mesh.{k}": v for k, v in mesh.items()})
  state = trainer.train(c, workdir, toy_main.make_task(c))
  specs = {"/".join(str(getattr(p, "key", p)) for p in path): str(x.sharding.spec)
           for path, x in jax.tree_util.tree_leaves_with_path(state["params"])}
  return parallel.to_host(state["params"]), specs


def equivalence(workdir):
  """3 steps with data=2 x fsdp=4 against data=8: the same training up to reduction order."""
  sharded, specs = toy(os.path.join(workdir, "fsdp"), 3, data=2, fsdp=4)
  plain, _ = toy(os.path.join(workdir, "dp"), 3, data=8, fsdp=1)
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)))
  scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(plain))
  return {"max_abs_diff": diff, "max_abs_param": scale, "specs": specs}


def reshard(workdir):
  """A checkpoint saved under FSDP resumes under pure data parallelism, and the reverse."""
  out = {}
  for name, first, second in (("fsdp_to_dp", {"data": 1, "fsdp": 8}, {"data": 8, "fsdp": 1}),
                              ("dp_to_fsdp", {"data": 8, "fsdp": 1}, {"data": 1, "fsdp": 8})):
    w = os.path.join(workdir, name)
    toy(w, 2, **first)  # saves step 2
    saved, _ = checkpoint.load_trained_params(w, 2)
    resumed, specs = toy(w, 4, **second)  # restores step 2 onto the other layout, trains 2 more steps
    c = set_dotted(toy_config.get_config(), fsdp_min_size=1, **{f"mesh.{k}": v for k, v in second.items()})
    built = trainer.build(c, toy_main.make_task(c))
    restored, _ = checkpoint.Checkpointer(os.path.join(w, "checkpoints")).restore(
        checkpoint.abstract_like(built.abstract_state, built.state_sharding), None, step=2)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved),
                                                    jax.tree.leaves(parallel.to_host(restored["params"]))))
    out[name] = {"restored_equals_saved": same, "specs_after": specs,
                 "finite": all(np.isfinite(x).all() for x in jax.tree.leaves(resumed))}
  return out


def giant(workdir):
  """A full fine-tune step of a DINOv2-g/14-shaped ear VAE (width 1536, 1 block) with fsdp=8."""
  del workdir
  jax.config.update("jax_disable_most_optimizations", True)  # compile time, not run time, dominates here
  from configs.ear_teacher import default  # pylint: disable=import-outside-toplevel
  from ear_teacher import synthetic, train  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  data_dir = tempfile.mkdtemp()
  synthetic.main(["--out", data_dir, "--num_identities", "4", "--images_per_identity", "4", "--val_identities", "2",
                  "--size", "56"])
  c = default.get_config("smoke")
  c = set_dotted(c, train_npy=os.path.join(data_dir, "train.npy"), val_npy=os.path.join(data_dir, "val.npy"),
                 batch_size=8, backbone_trainable_blocks=-1, **{"model.backbone.variant": "vitg14",
                                                                "model.backbone.depth": 1, "mesh.data": 1,
                                                                "mesh.fsdp": 8})
  task = train.make_task(c, data_dir)[0]
  trainer.apply_derived_config(c, task)
  built = trainer.build(c, task)
  state = built.init_state()

  def nbytes(tree, per_device):
    total = 0
    for x in jax.tree.leaves(tree):
      shape = x.sharding.shard_shape(x.shape) if per_device else x.shape
      total += int(np.prod(shape)) * x.dtype.itemsize
    return total

  trained = {"params": state["params"], "opt_state": state["opt_state"]}
  per_device, replicated = nbytes(trained, True), nbytes(trained, False)
  host = next(iter(__import__("common.data", fromlist=["x"]).train_iterator(
      task.train_source, local_batch=8, transforms=task.train_transforms, seed=0)))
  batch = parallel.to_global(host, built.mesh)
  compiled = built.train_step.lower(state, batch, built.train_rng, built.constants).compile()
  mem = compiled.memory_analysis()
  state, metrics = built.train_step(state, batch, built.train_rng, built.constants)
  loss = float(parallel.to_host(metrics["loss"]))
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  return {"params": params, "bytes_per_device": per_device, "bytes_replicated": replicated, "loss": loss,
          "memory_analysis": {k: int(getattr(mem, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                                "temp_size_in_bytes", "generated_code_size_in_bytes")
                              if mem is not None and hasattr(mem, k)}}


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  case, workdir = sys.argv[1], sys.argv[2]
  cases = {"equivalence": equivalence, "reshard": reshard, "giant": giant}
  print(json.dumps({name: cases[name](os.path.join(workdir, name)) for name in case.split(",")}))
