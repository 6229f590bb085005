"""Can the host feed the device? Input-pipeline throughput of each trainer against what one H100 would consume.

  python -m benchmarks.run pipeline_ear_teacher | pipeline_distill_teacher | pipeline_distill_student |
      pipeline_facerec_dsr | pipeline_facerec_finetune | pipelines [--workers N] [--batches B] --out FILE.json

Per trainer, at its default config (full-size models) on data written by the synthetic generators at realistic
sizes (224 px ears, 256 px distill images, 112 px faces):
  host: images/s of the trainer's own host work (`task.train_source` + `task.train_transforms`, batched) on one
        thread (the per-core figure), of its grain pipeline with N workers, and with the split kept on the
        devices (data_on_device: the host only shuffles row numbers);
  demand: images/s one H100 would consume at 40% of its 989 TFLOP/s dense bf16 peak, from XLA's cost analysis
        of the trainer's real jitted train_step (`trainer.build(config, task)`, lowered, not run);
  headroom: (host images/s per core x 16 cores) / demand. The 16-core figure is an extrapolation from the 1 (and
        N) cores measured here, not a measurement: > 1 means 16 host cores could keep one H100 busy.
"""

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from common import data, models, parallel, trainer

H100_BF16_PEAK = 989e12
TARGET_MFU = 0.4
CORES = 16
NAMES = ("ear_teacher", "distill_teacher", "distill_student", "facerec_dsr", "facerec_finetune")


# ----------------------------------------------------------------------------------------------
# Data at realistic sizes (cached under --data_dir: generating it takes a minute)
# ----------------------------------------------------------------------------------------------
def _ear_data(root: str, smoke: bool) -> str:
  from ear_teacher import synthetic  # pylint: disable=import-outside-toplevel
  out = os.path.join(root, "ears_smoke" if smoke else "ears_224")
  if not os.path.isfile(os.path.join(out, "val.npy")):
    synthetic.main(["--out", out, "--num_identities", "8" if smoke else "64", "--images_per_identity", "4",
                    "--val_identities", "2" if smoke else "4", "--size", "56" if smoke else "224", "--seed", "0"])
  return out


def _distill_data(root: str, smoke: bool) -> str:
  from distill import synthetic  # pylint: disable=import-outside-toplevel
  out = os.path.join(root, "distill_smoke" if smoke else "distill_256")
  if not os.path.isdir(os.path.join(out, "val")):
    synthetic.write_dataset(out, size=64 if smoke else 256, counts=dict(train=32 if smoke else 256, val=16, test=8))
  return out


def _face_data(root: str, smoke: bool) -> str:
  from facerec import synthetic  # pylint: disable=import-outside-toplevel
  out = os.path.join(root, "faces_smoke" if smoke else "faces_112")
  if not os.path.isdir(os.path.join(out, "val")):
    synthetic.write_dataset(out, subjects=8 if smoke else 32, images=8, test_subjects=2, eval_images=5)
  return out


def _random_vgg(root: str) -> str:
  """A VGG16 model directory with random weights: the perceptual term's FLOPs count like the real one's."""
  from common.models import vgg  # pylint: disable=import-outside-toplevel
  out = os.path.join(root, "vgg16_random")
  if not os.path.isdir(out):
    module, variables = models.load_or_init("random", vgg.VGG16(), (1, 64, 64, 3), 0)
    models.save(out, "vgg16", {}, variables)
  return out


# ----------------------------------------------------------------------------------------------
# Each trainer's config and task, exactly as its command builds them
# ----------------------------------------------------------------------------------------------
def _records(src: str, prepare, **kw) -> str:
  """The ArrayRecord copy of `src` (made once, next to it), for data.format=arrayrecord."""
  dst = src.rstrip("/").removesuffix(".npy") + ".records"
  if not os.path.isdir(dst):
    prepare(src, dst, **kw)
  return dst


def build_task(name: str, data_dir: str, smoke: bool = False, fmt: str = "folder"):
  """(config, task) of trainer `name` at its default config (`smoke`: the CPU-test config), reading the data as
  files (fmt="folder", .npy for the ear teacher) or as prepared ArrayRecord shards (fmt="arrayrecord")."""
  arg = "smoke" if smoke else ""
  records = fmt == "arrayrecord"
  if name == "ear_teacher":
    from configs.ear_teacher import default  # pylint: disable=import-outside-toplevel
    from ear_teacher import train  # pylint: disable=import-outside-toplevel
    c = default.get_config(arg)
    ears = _ear_data(data_dir, smoke)
    c.train_npy, c.val_npy = os.path.join(ears, "train.npy"), os.path.join(ears, "val.npy")
    if records:
      from ear_teacher import prepare_data  # pylint: disable=import-outside-toplevel
      c.train_npy, c.val_npy = (_records(p, prepare_data.prepare) for p in (c.train_npy, c.val_npy))
      c.data.format = "arrayrecord"
    c.perceptual.vgg_path = _random_vgg(data_dir)
    task = train.make_task(c, tempfile.mkdtemp(prefix="bench-ear-"))[0]
  elif name.startswith("distill_"):
    from configs.distill import student, teacher  # pylint: disable=import-outside-toplevel
    from distill import train  # pylint: disable=import-outside-toplevel
    c = (teacher if name == "distill_teacher" else student).get_config(",".join(filter(None, [arg, "teacher=random"])))
    c.data.root = _distill_data(data_dir, smoke)
    if records:
      from distill import prepare_data  # pylint: disable=import-outside-toplevel
      c.data.root, c.data.format = _records(c.data.root, prepare_data.prepare), "arrayrecord"
    make = train.teacher_task if name == "distill_teacher" else train.student_task
    task = make(c, *train.train_val_sources(c))
  elif name.startswith("facerec_"):
    from configs.facerec import dsr, finetune  # pylint: disable=import-outside-toplevel
    from facerec import train  # pylint: disable=import-outside-toplevel
    c = (dsr if name == "facerec_dsr" else finetune).get_config(arg)
    faces = _face_data(data_dir, smoke)
    c.data.train_root, c.data.val_root = os.path.join(faces, "train"), os.path.join(faces, "val")
    if records:
      from facerec import prepare_data  # pylint: disable=import-outside-toplevel
      c.data.train_root, c.data.val_root = (_records(p, prepare_data.prepare) for p in (c.data.train_root,
                                                                                        c.data.val_root))
      c.data.format = "arrayrecord"
    c.edgeface.weights, c.dsr.weights = "random", "random"
    make = train.dsr_task if name == "facerec_dsr" else train.finetune_task
    task = make(c, *train.train_sources(c))
  else:
    raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(NAMES)}")
  trainer.apply_derived_config(c, task)
  return c, task


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------
def host_images_per_s_one_core(config, task, images: int) -> float:
  """Images/s of the host's per-example work on one thread: read + decode + the trainer's host transforms +
  batching, over shuffled examples (grain's read-ahead threads would overlap it, hiding the per-core cost)."""
  local = parallel.local_batch_size(config.batch_size)
  order = np.random.default_rng(0).permutation(max(images, local))
  t0, done = time.perf_counter(), 0
  for start in range(0, len(order) - local + 1, local):
    rows = []
    for i in order[start:start + local] % len(task.train_source):
      element = task.train_source[int(i)]
      for t in task.train_transforms:
        element = t.map(element)
      rows.append(element)
    {k: np.stack([r[k] for r in rows]) for k in rows[0]}  # pylint: disable=expression-not-assigned
    done += local
  return done / (time.perf_counter() - t0)


def host_images_per_s(config, task, workers: int, batches: int, on_device: bool = False) -> float:
  """Images/s of the trainer's grain pipeline in this process (warm-up batches, then `batches` timed); with
  workers > 0 it includes grain's read-ahead, so it is an upper bound on N cores' rate."""
  local = parallel.local_batch_size(config.batch_size)
  if on_device:  # the host's whole per-step work when the split lives on the devices
    it = data.train_iterator(data.RowSource(task.train_source), local_batch=local, seed=0, order=task.train_order)
  else:
    it = data.train_iterator(task.train_source, local_batch=local, transforms=task.train_transforms, seed=0,
                             worker_count=workers, order=task.train_order)
  for _ in range(max(2, batches)):  # warm-up: start workers, fill their buffers
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * local / (time.perf_counter() - t0)


def flops_per_image(config, task) -> float:
  """XLA's cost analysis of the trainer's jitted train_step on one global batch, per image (lowered only)."""
  built = trainer.build(config, task)
  element = task.train_source[0]
  for t in task.train_transforms:  # the host transforms of the trainer are deterministic after this issue
    element = t.map(element)
  batch = {k: jax.ShapeDtypeStruct((config.batch_size, *np.shape(v)), np.asarray(v).dtype) for k, v in element.items()}
  consts = None if built.constants is None else jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                             built.constants)
  lowered = built.train_step.lower(built.abstract_state, batch, built.train_rng, consts)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / config.batch_size


def measure(name: str, data_dir: str, workers: int, batches: int, smoke: bool = False) -> dict:
  config, task = build_task(name, data_dir, smoke)
  per_core = host_images_per_s_one_core(config, task, batches * parallel.local_batch_size(config.batch_size))
  out = {"pipeline": name, "batch_size": config.batch_size, "host_images_per_s_1_core": per_core}
  if workers:
    out[f"host_images_per_s_{workers}_workers"] = host_images_per_s(config, task, workers, batches)
  out["host_images_per_s_data_on_device"] = host_images_per_s(config, task, 0, batches, on_device=True)
  r_config, r_task = build_task(name, data_dir, smoke, fmt="arrayrecord")
  out["host_images_per_s_1_core_arrayrecord"] = host_images_per_s_one_core(
      r_config, r_task, batches * parallel.local_batch_size(config.batch_size))
  flops = flops_per_image(config, task)
  demand = TARGET_MFU * H100_BF16_PEAK / flops
  out.update(gflop_per_image=flops / 1e9, h100_demand_images_per_s=demand,
             headroom_16_cores=per_core * CORES / demand,
             headroom_16_cores_arrayrecord=out["host_images_per_s_1_core_arrayrecord"] * CORES / demand,
             headroom_16_cores_data_on_device=out["host_images_per_s_data_on_device"] * CORES / demand)
  return out


def table(rows: list[dict]) -> str:
  lines = ["| trainer | GFLOP/image | H100 demand at 40% MFU | host img/s per core: files / ArrayRecord | "
           "headroom (x16 cores, extrapolated): files / ArrayRecord / data on device |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['pipeline']} | {r['gflop_per_image']:.1f} | {r['h100_demand_images_per_s']:,.0f} | "
                 f"{r['host_images_per_s_1_core']:,.0f} / {r['host_images_per_s_1_core_arrayrecord']:,.0f} | "
                 f"{r['headroom_16_cores']:.2f} / {r['headroom_16_cores_arrayrecord']:.2f} / "
                 f"{r['headroom_16_cores_data_on_device']:.0f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", nargs="*", default=list(NAMES), help=f"pipelines (default all): {', '.join(NAMES)}")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="grain workers for the N-core figure")
  parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "jaxvision-bench-data"))
  parser.add_argument("--smoke", action="store_true", help="the CPU-test configs (tiny models, tiny data)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags; this is not an absl app
  rows = [measure(n, args.data_dir, args.workers, args.batches, args.smoke) for n in args.names]
  report = {"pipelines": rows, "cores_extrapolated_to": CORES, "h100_bf16_peak_flops": H100_BF16_PEAK,
            "target_mfu": TARGET_MFU, "host": {"cpu_count": os.cpu_count(), "backend": jax.default_backend()},
            "note": "x16 cores is an extrapolation from the 1 (and N) cores measured here"}
  print(table(rows))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
