"""Merges the JSONs of benchmarks/gpu_suite.sh into OUT_DIR/gpu_suite.json and a markdown table OUT_DIR/gpu_suite.md.

  python -m benchmarks.gpu_table OUT_DIR
  python -m benchmarks.gpu_table --failure OUT_DIR/NAME_DTYPE.json --workload NAME --dtype DTYPE --batch N \\
      --reason "timed out after 40 s" [--log OUT_DIR/logs/NAME_DTYPE.log]

Every OUT_DIR/*.json other than gpu_suite.json is a `python -m benchmarks.run` record (or a list of them), or a
failure record the suite writes with --failure when a run left no JSON (a crash, a timeout, the suite's time budget
spent): those become rows saying so, as do frameworks a record marks skipped or failed. A row's status is "ok" when
JAX ran and torch ran or had nothing to run (skipped), else "failed". Standard library only, so that the table is
still written when the environment cannot import JAX or torch.
"""

import argparse
import datetime
import glob
import json
import os
import sys

SUITE_JSON, SUITE_MD = "gpu_suite.json", "gpu_suite.md"
COLUMNS = ("workload", "dtype", "batch", "JAX img/s", "torch img/s", "JAX/torch", "JAX MFU", "torch MFU",
           "JAX peak memory", "torch peak memory", "JAX compile s", "torch 1st call s")
_DTYPE_ORDER = {"float32": 0, "bfloat16": 1}


def _error_line(log: str | None) -> str | None:
  """The last line of `log` that names an error (a Python exception, XLA's RESOURCE_EXHAUSTED), else its last."""
  if not log or not os.path.exists(log):
    return None
  with open(log, errors="replace") as f:
    lines = [line.strip() for line in f.read().splitlines()[-400:] if line.strip()]
  hits = [line for line in lines if "Error" in line or "error:" in line or "RESOURCE_EXHAUSTED" in line]
  return (hits or lines or [None])[-1]


def write_failure(path: str, workload: str, dtype: str, batch: int | None, reason: str, log: str | None) -> dict:
  record = {"workload": workload, "variant": None, "config": {"dtype": dtype, "batch": batch},
            "failed": reason, "error": _error_line(log), "log": log}
  with open(path, "w") as f:
    json.dump(record, f, indent=2)
  return record


def _framework(r: dict | None) -> dict:
  """One framework's cells: numbers when it ran, else why not."""
  if not r:
    return {"status": "missing"}
  if "step_s" not in r:
    return {"status": "skipped" if "skipped" in r else "failed", "why": r.get("skipped") or r.get("failed")}
  return {"status": "ok", "images_per_s": r["images_per_s"], "mfu": r.get("mfu"),
          "peak_memory_bytes": r.get("peak_memory_bytes"), "compile_s": r.get("compile_s")}


def row(record: dict, source: str) -> dict:
  """The summary row of one benchmarks.run record or suite failure record."""
  config = record.get("config", {})
  out = {"workload": record.get("workload"), "variant": record.get("variant"), "dtype": config.get("dtype"),
         "batch": config.get("batch"), "precision": config.get("precision"), "source": source}
  if "failed" in record and "jax" not in record:  # the run left no record of its own
    error = record["failed"] + (f" ({record['error']})" if record.get("error") else "")
    return {**out, "status": "failed", "error": error}
  jax, torch = _framework(record.get("jax")), _framework(record.get("torch"))
  ok = jax["status"] == "ok" and torch["status"] in ("ok", "skipped")
  out.update(status="ok" if ok else "failed", jax=jax, torch=torch,
             jax_over_torch=record.get("jax_over_torch_images_per_s"),
             hlo_has_bf16=(record.get("jax") or {}).get("hlo_has_bf16"),
             device_kind=(record.get("environment") or {}).get("device_kind"))
  return out


def load_rows(out_dir: str) -> tuple[list[dict], dict]:
  rows, records = [], {}
  for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
    name = os.path.basename(path)
    if name == SUITE_JSON:
      continue
    try:
      with open(path) as f:
        data = json.load(f)
    except (OSError, ValueError) as e:  # a run killed while writing
      stem = name.removesuffix(".json")
      rows.append({"workload": stem, "dtype": None, "batch": None, "source": name, "status": "failed",
                   "error": f"unreadable JSON: {e}"})
      continue
    records[name] = data
    rows += [row(r, name) for r in (data if isinstance(data, list) else [data])]
  rows.sort(key=lambda r: (r["workload"] or "", r.get("variant") or "", _DTYPE_ORDER.get(r["dtype"], 2)))
  return rows, records


def _num(x, fmt: str) -> str:
  return "–" if x is None else format(x, fmt)


def _gib(x) -> str:
  return "–" if x is None else f"{x / 2 ** 30:.2f} GiB"


def _cells(fw: dict, key: str, fmt) -> str:
  if fw["status"] != "ok":
    return fw["status"]
  return fmt(fw[key])


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")  # error messages inside a table cell


def markdown(rows: list[dict], title: str) -> str:
  lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  notes = []
  for r in rows:
    name = r["workload"] + (f" ({r['variant']})" if r.get("variant") else "")
    head = [name, r["dtype"] or "?", _num(r["batch"], "d")]
    if "jax" not in r:
      lines.append("| " + " | ".join(head + [f"**failed**: {_cell(r['error'])}"] + ["–"] * (len(COLUMNS) - 4)) + " |")
      continue
    jax, torch = r["jax"], r["torch"]
    pct = lambda x: _num(None if x is None else 100 * x, ".1f") + ("" if x is None else " %")
    cells = [_cells(jax, "images_per_s", lambda x: f"{x:,.1f}"), _cells(torch, "images_per_s", lambda x: f"{x:,.1f}"),
             _num(r["jax_over_torch"], ".2f"), _cells(jax, "mfu", pct), _cells(torch, "mfu", pct),
             _cells(jax, "peak_memory_bytes", _gib), _cells(torch, "peak_memory_bytes", _gib),
             _cells(jax, "compile_s", lambda x: _num(x, ".1f")), _cells(torch, "compile_s", lambda x: _num(x, ".1f"))]
    lines.append("| " + " | ".join(head + cells) + " |")
    for fw_name, fw in (("JAX", jax), ("torch", torch)):
      if fw["status"] in ("skipped", "failed"):
        notes.append(f"{name} {r['dtype']}: {fw_name} {fw['status']}: {fw['why']}")
    if r["dtype"] == "bfloat16" and r.get("hlo_has_bf16") is False:
      notes.append(f"{name} bfloat16: the compiled JAX step holds no bfloat16 value (the dtype did not reach it)")
  lines += ["", "img/s at the median step; MFU = XLA's FLOPs of the JAX step / median step time / the GPU's dense "
            "peak for the row (bfloat16: bf16 peak; float32: fp32 peak under --precision highest, TF32 under "
            "default); peak memory: JAX peak_bytes_in_use since process start, torch max_memory_allocated over its "
            "steps; JAX compile s: lower + compile; torch 1st call s: its first (untimed) step. Every field: the "
            "per-run JSONs and gpu_suite.json."]
  if notes:
    lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
  return "\n".join(lines) + "\n"


def merge(out_dir: str) -> dict:
  rows, records = load_rows(out_dir)
  kinds = sorted({r.get("device_kind") for r in rows if r.get("device_kind")})
  env = next((rec.get("environment") for recs in records.values() for rec in (recs if isinstance(recs, list)
                                                                               else [recs]) if rec.get("environment")),
             None)
  suite = {"generated_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device_kinds": kinds, "environment": env, "columns": list(COLUMNS), "rows": rows, "records": records,
           "failed": sum(r["status"] != "ok" for r in rows)}
  with open(os.path.join(out_dir, SUITE_JSON), "w") as f:
    json.dump(suite, f, indent=2)
  title = "GPU suite: JAX vs PyTorch" + (f" on {', '.join(kinds)}" if kinds else "")
  with open(os.path.join(out_dir, SUITE_MD), "w") as f:
    f.write(markdown(rows, title))
  return suite


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_table", description=__doc__.split("\n")[0])
  p.add_argument("out_dir", nargs="?")
  p.add_argument("--failure", metavar="PATH", help="write a failure record to PATH instead of merging")
  p.add_argument("--workload")
  p.add_argument("--dtype")
  p.add_argument("--batch", type=int)
  p.add_argument("--reason")
  p.add_argument("--log")
  opts = p.parse_args(argv)
  if opts.failure:
    write_failure(opts.failure, opts.workload, opts.dtype, opts.batch, opts.reason or "failed", opts.log)
    return
  if not opts.out_dir:
    p.error("OUT_DIR is required")
  suite = merge(opts.out_dir)
  print(f"{len(suite['rows'])} rows ({suite['failed']} failed): {os.path.join(opts.out_dir, SUITE_MD)}")
  with open(os.path.join(opts.out_dir, SUITE_MD)) as f:
    sys.stdout.write(f.read())


if __name__ == "__main__":
  main()
