"""Times a named workload in JAX and, where it has one, its PyTorch twin, in one process on one device.

  python -m benchmarks.run dinov2_forward [--variant s14_224|...|all|a,b] [--device cpu|gpu] [--batch N|N1,N2]
      [--repeats R] [--warmup W] [--precision highest|default] [--dtype float32|bfloat16] --out FILE.json

Per framework: compile time (JAX: lower + compile, apart from the steps; torch eager: the first call), then W
untimed warm-up steps, then R timed steps (each synchronised: block_until_ready / cuda.synchronize), summarised as
median / p10 / p90 / min / max, images/s at the median, peak memory and, on known GPUs, model FLOPs utilisation.
The JSON holds one record per variant (a list when several run) and explains its own fields (`definitions`).

--dtype bfloat16 computes in bfloat16 with float32 parameters in both frameworks: JAX through the models' `dtype`
field (or the trainer config's), torch under torch.autocast (forward and loss; backward and optimizer outside);
MFU is then taken against the GPU's bf16 peak. A framework that fails (an out-of-memory batch, a torch twin's
missing import) is recorded as such, the other one still runs, and the command exits 1 after writing the JSON.
benchmarks/gpu_suite.sh runs every workload in both dtypes on a GPU.
"""

import argparse
import ctypes
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import resource
import sys
import time
import traceback

_T0 = time.perf_counter()  # progress lines count from here (imports included)

# JAX would otherwise grab 75% of the GPU up front, leaving torch too little in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from benchmarks import workloads  # pylint: disable=wrong-import-position

try:
  import torch  # pylint: disable=wrong-import-position
except ImportError:  # torch is a test extra; JAX-only runs still work
  torch = None

# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets, by device-kind substring; the first match wins.
_H100_SXM = {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}
PEAK_FLOPS = (("H100 PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12}), ("H100", _H100_SXM),
              ("H200", _H100_SXM))

DEFINITIONS = {
    "compile_s": "JAX: seconds of jit(f).lower(args) + .compile(), apart from any step (lower_s is the tracing "
                 "part); torch (eager): seconds of the first call, which holds its one-off set-up",
    "step_s": "seconds per synchronised step over `repeats` calls after `warmup` untimed ones: median, p10, p90, "
              "min, max and every sample",
    "images_per_s": "images_per_step / step_s.median",
    "peak_memory_bytes": "see peak_memory_method",
    "flops_per_step": "XLA cost analysis of the compiled JAX step (custom calls such as cuDNN kernels count 0); "
                      "the torch MFU uses the same count",
    "mfu": "flops_per_step / step_s.median / peak_flops_per_s; null on CPU and on GPUs missing from the table",
    "jax_over_torch_images_per_s": "jax images_per_s / torch images_per_s (> 1: JAX is faster)",
    "dtype": "config.dtype: compute dtype of both frameworks (parameters float32); config.torch_autocast: the "
             "autocast dtype of the torch forward and loss, null when off",
    "hlo_has_bf16": "the compiled JAX step holds bfloat16 values: false in a bfloat16 run means the dtype did not "
                    "reach the model",
    "skipped": "in place of a framework's numbers: why it did not run (no twin, no torch / CUDA, a missing import)",
    "failed": "in place of a framework's numbers: the exception it raised (e.g. out of memory)",
    "setup_s": "seconds the workload's factory took (weights, data, model directories, the trainer's init), "
               "before compile_s",
}


def _progress(msg: str) -> None:
  """A timestamped line on stderr as each phase ends: a run killed by the GPU suite's timeout still shows where
  its time went."""
  print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _rss_start():
  gc.collect()
  try:
    # Freed heap stays resident under glibc; returning it first keeps the previous run from hiding this one's peak.
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets the peak RSS (VmHWM), so the second framework gets a peak of its own
    return "VmHWM", _status_kib("VmRSS")
  except (OSError, AttributeError):  # not Linux / glibc
    return "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_peak(start) -> tuple[int, str]:
  how, base = start
  if how == "VmHWM":
    return (_status_kib("VmHWM") - base) * 1024, ("process peak RSS (VmHWM, reset first) minus RSS before compile; "
                                                  "weights and inputs were already resident")
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, (
      "growth of the process max RSS (getrusage) over compile + steps; 0 if below an earlier framework's peak")


def _steps(fn, args, n, stateful, sync):
  """Calls fn n times, feeding a stateful fn's new state back; returns the seconds per call and the last args."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    out = fn(*args)
    sync(out)
    times.append(time.perf_counter() - t0)
    if stateful:
      args = (out[0], *args[1:])
  return times, args


def _summary(times, images) -> dict:
  t = np.asarray(times)
  step = {"median": float(np.median(t)), "p10": float(np.percentile(t, 10)), "p90": float(np.percentile(t, 90)),
          "min": float(t.min()), "max": float(t.max()), "all": [float(x) for x in t]}
  return {"step_s": step, "images_per_s": images / step["median"]}


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and cost.get("flops", 0) > 0 else None


def _time_jax(wl, variant, batch, opts, device, overrides) -> dict:
  t_setup = time.perf_counter()
  fn, args = wl.make_jax(batch, device, variant, dtype=opts.dtype, **overrides)
  fn = fn if hasattr(fn, "lower") else jax.jit(fn)
  setup_s = time.perf_counter() - t_setup
  _progress(f"jax set-up {setup_s:.1f} s")
  rss = _rss_start()
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  _progress(f"jax lower {t1 - t0:.1f} s, compile {t2 - t1:.1f} s")
  _, args = _steps(compiled, args, opts.warmup, wl.stateful, jax.block_until_ready)
  times, _ = _steps(compiled, args, opts.repeats, wl.stateful, jax.block_until_ready)
  _progress(f"jax {opts.warmup} + {opts.repeats} steps, median {np.median(times):.4f} s")
  out = {"setup_s": setup_s, "compile_s": t2 - t0, "lower_s": t1 - t0,
         **_summary(times, wl.images_per_step(batch)), "flops_per_step": _flops(compiled),
         "hlo_has_bf16": "bf16[" in compiled.as_text()}
  if opts.device == "gpu":
    out["peak_memory_bytes"] = device.memory_stats()["peak_bytes_in_use"]
    out["peak_memory_method"] = "jax memory_stats peak_bytes_in_use: since process start, weights included"
  else:
    out["peak_memory_bytes"], out["peak_memory_method"] = _rss_peak(rss)
  return out


def _time_torch(wl, variant, batch, opts, overrides) -> dict:
  gpu = opts.device == "gpu"
  t_setup = time.perf_counter()
  fn, args = wl.make_torch(batch, torch.device("cuda" if gpu else "cpu"), variant, dtype=opts.dtype, **overrides)
  setup_s = time.perf_counter() - t_setup
  _progress(f"torch set-up {setup_s:.1f} s")
  sync = (lambda out: torch.cuda.synchronize()) if gpu else (lambda out: None)
  if gpu:
    torch.cuda.reset_peak_memory_stats()
  rss = _rss_start()
  (first,), args = _steps(fn, args, 1, wl.stateful, sync)
  _progress(f"torch first call {first:.1f} s")
  _, args = _steps(fn, args, opts.warmup, wl.stateful, sync)
  times, _ = _steps(fn, args, opts.repeats, wl.stateful, sync)
  _progress(f"torch {opts.warmup} + {opts.repeats} steps, median {np.median(times):.4f} s")
  out = {"setup_s": setup_s, "compile_s": first, **_summary(times, wl.images_per_step(batch))}
  if gpu:
    out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    out["peak_memory_method"] = "torch.cuda.max_memory_allocated, reset before the first call; weights included"
  else:
    out["peak_memory_bytes"], out["peak_memory_method"] = _rss_peak(rss)
  return out


def _torch_skip_reason(wl, opts) -> str | None:
  if wl.make_torch is None:
    return f"workload {wl.name} has no PyTorch implementation"
  if torch is None:
    return "torch is not installed"
  if opts.device == "gpu" and not torch.cuda.is_available():
    return f"torch {torch.__version__} sees no CUDA device"
  return None


def _environment(device) -> dict:
  def version(pkg):
    try:
      return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      return None

  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
  except OSError:
    cpu = platform.processor() or None
  return {
      "versions": {p: version(p) for p in ("jax", "jaxlib", "flax", "torch", "transformers")},
      "python": platform.python_version(), "platform": platform.platform(),
      "jax_device": str(device), "device_kind": device.device_kind, "cpu_model": cpu,
      "torch_device": torch.cuda.get_device_name() if torch and device.platform == "gpu" else None,
      "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
      "torch_num_threads": torch.get_num_threads() if torch else None,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def _guarded(framework: str, time_fn) -> dict:
  """time_fn() or, when it raises, {"failed": the exception}: one framework's failure (an out-of-memory batch, a
  compile error) leaves the other's numbers in the record. A missing import is a skip: the torch twins need
  packages (transformers) that a JAX image may lack."""
  try:
    return time_fn()
  except ImportError as e:
    return {"skipped": f"{framework} side cannot import {e.name or ''}: {e}"}
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    if torch is not None and torch.cuda.is_available():
      torch.cuda.empty_cache()  # an out-of-memory torch half leaves its cache to the rest of the process
    return {"failed": f"{type(e).__name__}: {e}"[:2000]}


def bench(wl, variant, batch, opts, device, overrides) -> dict:
  dtype = getattr(opts, "dtype", "float32")  # callers building opts by hand (tests) predate --dtype
  opts = argparse.Namespace(**{**vars(opts), "dtype": dtype})
  column = "bf16" if dtype == "bfloat16" else "fp32" if opts.precision == "highest" else "tf32"
  known = [t[column] for key, t in PEAK_FLOPS if key in device.device_kind and opts.device == "gpu"]
  peak = known[0] if known else None
  skip = _torch_skip_reason(wl, opts)
  record = {
      "workload": wl.name, "variant": variant, "description": wl.description,
      "config": {"device": opts.device, "batch": batch, "images_per_step": wl.images_per_step(batch),
                 "repeats": opts.repeats, "warmup": opts.warmup, "precision": opts.precision, "dtype": dtype,
                 "torch_autocast": "bfloat16" if dtype == "bfloat16" and not skip else None,
                 "overrides": overrides},
      "peak_flops_per_s": peak, "peak_flops_basis": f"{device.device_kind}, {column}, dense" if peak else None,
  }
  results = {"jax": _guarded("jax", lambda: _time_jax(wl, variant, batch, opts, device, overrides))}
  results["torch"] = {"skipped": skip} if skip else _guarded(
      "torch", lambda: _time_torch(wl, variant, batch, opts, overrides))
  flops = results["jax"].get("flops_per_step")
  for r in results.values():
    if "step_s" in r:
      r["mfu"] = flops / r["step_s"]["median"] / peak if flops and peak else None
  record.update(results)
  record["jax_over_torch_images_per_s"] = (
      results["jax"]["images_per_s"] / results["torch"]["images_per_s"]
      if all("step_s" in r for r in results.values()) else None)
  record["environment"] = _environment(device)
  record["definitions"] = DEFINITIONS
  return record


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0].startswith("pipeline"):  # input pipelines vs device demand: benchmarks/pipelines.py
    from benchmarks import pipelines  # pylint: disable=import-outside-toplevel
    name = argv[0].removeprefix("pipeline_").removeprefix("pipelines")
    return pipelines.main(([name] if name else []) + argv[1:])
  p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0],
                              epilog="input pipelines: pipelines (all) or pipeline_<trainer>, see benchmarks/pipelines.py")
  p.add_argument("name", choices=workloads.names())
  p.add_argument("--variant", help="one of the workload's variants, a comma list, or 'all'")
  p.add_argument("--device", choices=("cpu", "gpu"), help="default: gpu when JAX sees one, else cpu")
  p.add_argument("--batch", type=lambda s: [int(x) for x in s.split(",")],
                 help="N, or one N per variant (comma list); default: the workload's")
  p.add_argument("--repeats", type=int)
  p.add_argument("--warmup", type=int)
  p.add_argument("--precision", choices=("highest", "default"), default="highest",
                 help="highest: true fp32 matmuls/convs; default: TF32 allowed on GPU in both frameworks")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="compute dtype of both frameworks (parameters stay float32): JAX the models' dtype, torch "
                      "autocast; bfloat16 takes MFU against the bf16 peak (and usually goes with --precision "
                      "default: what stays float32 may use TF32, as benchmarks/gpu_suite.sh runs it)")
  p.add_argument("--depth", type=int, help=argparse.SUPPRESS)  # tests: shrink the model
  p.add_argument("--out", required=True)
  opts = p.parse_args(argv)

  has_gpu = any(d.platform == "gpu" for d in jax.devices())
  opts.device = opts.device or ("gpu" if has_gpu else "cpu")
  if opts.device == "gpu" and not has_gpu:
    sys.exit(f"benchmarks.run: --device gpu, but JAX sees no GPU (devices: {jax.devices()})")
  wl = workloads.get(opts.name)
  variants = list(wl.variants) if opts.variant == "all" else (opts.variant or wl.default_variant or "").split(",")
  variants = [v or None for v in variants]
  if wl.variants and not set(variants) <= set(wl.variants):
    p.error(f"--variant {opts.variant}: {wl.name} has variants {', '.join(wl.variants)} (or 'all')")
  batches = opts.batch or [wl.default_batch]
  if len(batches) not in (1, len(variants)):
    p.error(f"--batch: give one value or one per variant ({len(variants)})")
  opts.repeats = opts.repeats or wl.default_repeats
  opts.warmup = wl.default_warmup if opts.warmup is None else opts.warmup

  jax.config.update("jax_default_matmul_precision", opts.precision)
  if torch is not None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = opts.precision == "default"
  device = jax.devices(opts.device)[0]
  _progress(f"imports and {device.platform} set-up done")
  overrides = {"depth": opts.depth} if opts.depth else {}
  records = []
  for variant, batch in zip(variants, batches * len(variants) if len(batches) == 1 else batches):
    with jax.default_device(device):
      records.append(bench(wl, variant, batch, opts, device, overrides))
    r = records[-1]
    jax_part = (f"jax {r['jax']['images_per_s']:.2f} img/s (compile {r['jax']['compile_s']:.2f} s)"
                if "step_s" in r["jax"] else _not_run("jax", r["jax"]))
    torch_part = (f"torch {r['torch']['images_per_s']:.2f} img/s (first call {r['torch']['compile_s']:.2f} s)"
                  if "step_s" in r["torch"] else _not_run("torch", r["torch"]))
    ratio = r["jax_over_torch_images_per_s"]
    print(f"{wl.name} {variant} batch {batch} {opts.dtype} on {opts.device}: {jax_part}, {torch_part}"
          + (f", jax/torch {ratio:.2f}" if ratio else ""), flush=True)
  with open(opts.out, "w") as f:
    json.dump(records[0] if len(records) == 1 else records, f, indent=2)
  failed = [" ".join(filter(None, (r["variant"], fw))) for r in records for fw in ("jax", "torch") if "failed" in r[fw]]
  if failed:
    sys.exit(f"benchmarks.run {wl.name}: {', '.join(failed)} failed (recorded in {opts.out})")


def _not_run(framework: str, result: dict) -> str:
  return (f"{framework} skipped: {result['skipped']}" if "skipped" in result
          else f"{framework} FAILED: {result['failed']}")


if __name__ == "__main__":
  main()
