"""The workflow's measuring commands: diagnose / evaluate the teacher, check logit scales, evaluate the student.

Each writes a JSON report (and PNGs) into --workdir and prints its verdict; see the README table for the
seed script each replaces. They read the same config files as the trainers (configs/distill/*.py).

* `diagnose_teacher` (stage 0): teacher on val (resize + centre crop): AUC, AP, accuracy, real/fake accuracy,
  image- and patch-logit statistics, ROC and logit-histogram PNGs, the seed's verdict (> 0.65 good,
  0.55-0.65 marginal, < 0.55 must fine-tune).
* `evaluate_teacher` (stage 2): the same measurement, read with the distillation recommendation
  (>= 0.65 distil; 0.55-0.65 limited; < 0.55 BCE only).
* `diagnose_logits`: teacher patch maps vs the student's maps pooled onto the teacher grid (student from
  config.student.weights, else a fresh init: the scale at the start of training), with spec 003's verdicts.
* `evaluate_student`: the student on every test subset (full resized image, no crop), AUC / AP / accuracy /
  real and fake accuracy per subset and overall, the teacher beside it when one is configured, and
  images/s of teacher and student on this machine.
"""

import json
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from common import parallel
from distill import data, losses, metrics, train


def _write_json(workdir: str, name: str, report: dict) -> str:
  path = os.path.join(workdir, name)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
  return path


def _say(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def _val_source(config):
  if not config.data.root:
    raise ValueError("set --config.data.root to the dataset folder (it needs a val/ split)")
  return train.split_source(config, config.data.val_split)


def _teacher_report(config, workdir: str, prefix: str) -> dict:
  hw = (config.data.crop, config.data.crop)
  source = _val_source(config)
  module, variables = train.load_teacher(config, hw)
  variables = parallel.replicate(variables, parallel.make_mesh())
  out = train.predict(module, variables, source, train.val_transforms(config), config, maps=True)
  report = {"teacher_weights": config.teacher.weights, "teacher_path": train.teacher_path(config),
            "val": repr(source), **metrics.binary_report(out["logit"], out["label"]),
            "image_logits": metrics.logit_stats(out["logit"]),
            "patch_logits": metrics.logit_stats(out["patch_logits"]),
            "patch_logits_real": metrics.logit_stats(out["patch_logits"][out["label"] == 0]),
            "patch_logits_fake": metrics.logit_stats(out["patch_logits"][out["label"] == 1])}
  if jax.process_index() == 0:
    metrics.roc_png(os.path.join(workdir, f"{prefix}_roc.png"), {"teacher": (out["logit"], out["label"])})
    metrics.logit_histogram_png(os.path.join(workdir, f"{prefix}_logits.png"), out["logit"], out["label"],
                                title="teacher image logits on val")
  return report


def diagnose_teacher(config, workdir: str) -> dict:
  """Stage 0: is the (pretrained) teacher informative on this data?"""
  report = _teacher_report(config, workdir, "teacher")
  report["verdict"], report["message"] = metrics.teacher_verdict(report["auc"])
  path = _write_json(workdir, "teacher_diagnosis.json", report)
  _say(f"teacher on val: AUC {report['auc']:.4f}  AP {report['ap']:.4f}  acc {report['accuracy']:.4f} "
       f"(real {report['real_accuracy']:.4f}, fake {report['fake_accuracy']:.4f})")
  _say(f"patch logits: min {report['patch_logits']['min']:.3g} max {report['patch_logits']['max']:.3g} "
       f"mean {report['patch_logits']['mean']:.3g} std {report['patch_logits']['std']:.3g}")
  _say(f"VERDICT [{report['verdict']}]: {report['message']}\nreport: {path}")
  return report


def evaluate_teacher(config, workdir: str) -> dict:
  """Stage 2: the (fine-tuned) teacher's AUC and whether to distil from it."""
  report = _teacher_report(config, workdir, "teacher_eval")
  report["recommendation"], report["message"] = metrics.distillation_recommendation(report["auc"])
  path = _write_json(workdir, "teacher_evaluation.json", report)
  _say(f"teacher on val: AUC {report['auc']:.4f}  AP {report['ap']:.4f}  acc {report['accuracy']:.4f}")
  _say(f"RECOMMENDATION [{report['recommendation']}]: {report['message']}\nreport: {path}")
  return report


def diagnose_logits(config, workdir: str) -> dict:
  """Teacher vs aligned student logit ranges, MSE and scale ratio on val (spec 003, step 2)."""
  hw = (config.data.crop, config.data.crop)
  source, mesh, tf = _val_source(config), parallel.make_mesh(), train.val_transforms(config)
  teacher, t_vars = train.load_teacher(config, hw)
  student, s_vars = train.load_student(config, hw)
  t_vars, s_vars = parallel.replicate(t_vars, mesh), parallel.replicate(s_vars, mesh)
  t_maps = train.predict(teacher, t_vars, source, tf, config, maps=True)["patch_logits"]
  s_maps = train.predict(student, s_vars, source, tf, config, maps=True)["patch_logits"]
  aligned = np.asarray(losses.align_to_teacher(jnp.asarray(s_maps), t_maps.shape[1:]))
  report = {"teacher_weights": config.teacher.weights, "student_weights": config.student.weights or "fresh init",
            "teacher_map": list(t_maps.shape[1:]), "student_map": list(s_maps.shape[1:]),
            **metrics.logit_diagnosis(t_maps, aligned)}
  path = _write_json(workdir, "logit_diagnosis.json", report)
  t, s = report["teacher"], report["student"]
  _say(f"teacher patch logits: [{t['min']:.3g}, {t['max']:.3g}] mean {t['mean']:.3g} std {t['std']:.3g}")
  _say(f"student (aligned):    [{s['min']:.3g}, {s['max']:.3g}] mean {s['mean']:.3g} std {s['std']:.3g}")
  _say(f"MSE {report['mse']:.4g} (normalised maps: {report['mse_normalized']:.4g}); range ratio "
       f"{report['range_ratio']:.3g}, std ratio {report['std_ratio']:.3g}")
  for v in report["verdicts"]:
    _say(f"VERDICT: {v}")
  _say(f"report: {path}")
  return report


def throughput(module, variables, hw, batch: int, repeats: int) -> float:
  """Images/s of a jitted eval forward pass on this machine's default device (after one warm-up call)."""
  fwd = jax.jit(lambda v, x: module.apply(v, x)[0])
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *hw, 3)), jnp.float32)
  variables = jax.device_put(variables)
  fwd(variables, x).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = fwd(variables, x)
  out.block_until_ready()
  return batch * repeats / (time.perf_counter() - t0)


def evaluate_student(config, workdir: str) -> dict:
  """The student (and teacher, when configured) on every test subset, plus images/s of both."""
  if not config.student.weights:
    raise ValueError("set --config.student.weights to a student export (W/student_export of distill.train_student)")
  if not config.data.root:
    raise ValueError("set --config.data.root to the dataset folder (it needs a test/ split)")
  hw = (config.data.resize, config.data.resize)
  student, s_vars = train.load_student(config, hw)
  teacher = None
  if config.teacher.weights != "random" and (config.teacher.weights not in train.TEACHER_NAMES
                                              or config.teacher.paths[config.teacher.weights]):
    teacher, t_vars = train.load_teacher(config, hw)
  subsets = train.split_source(config, config.data.test_split, subsets=True)
  tf = data.eval_transforms(config.data.resize, None, resample=config.data.resample)  # the full image, as the original
  mesh = parallel.make_mesh()
  s_dev = parallel.replicate(s_vars, mesh)
  t_dev = parallel.replicate(t_vars, mesh) if teacher is not None else None
  report = {"student_weights": config.student.weights, "subsets": {}}
  all_out = {"student": [], "teacher": []}
  roc = {}
  for name, source in subsets.items():
    out = train.predict(student, s_dev, source, tf, config)
    entry = {"images": len(source), "student": metrics.binary_report(out["logit"], out["label"])}
    all_out["student"].append(out)
    roc[f"student {name}"] = (out["logit"], out["label"])
    if teacher is not None:
      t_out = train.predict(teacher, t_dev, source, tf, config)
      entry["teacher"] = metrics.binary_report(t_out["logit"], t_out["label"])
      all_out["teacher"].append(t_out)
    report["subsets"][name] = entry
    _say(f"{name:>24s}: student AUC {entry['student']['auc']:.4f} AP {entry['student']['ap']:.4f} "
         f"acc {entry['student']['accuracy']:.4f} (real {entry['student']['real_accuracy']:.4f}, fake "
         f"{entry['student']['fake_accuracy']:.4f})" +
         (f" | teacher AUC {entry['teacher']['auc']:.4f}" if teacher is not None else ""))
  for who, outs in all_out.items():
    if outs:
      report[f"overall_{who}"] = metrics.binary_report(np.concatenate([o["logit"] for o in outs]),
                                                       np.concatenate([o["label"] for o in outs]))
  b, r = config.eval.throughput_batch, config.eval.throughput_repeats
  report["images_per_sec"] = {"device": str(jax.devices()[0]), "batch": b, "image_size": list(hw),
                              "student": throughput(student, s_vars, hw, b, r)}
  if teacher is not None:
    report["images_per_sec"]["teacher"] = throughput(teacher, t_vars, hw, b, r)
  ips = report["images_per_sec"]
  _say(f"overall: student AUC {report['overall_student']['auc']:.4f}" +
       (f", teacher AUC {report['overall_teacher']['auc']:.4f}" if teacher is not None else ""))
  _say(f"images/s on {ips['device']}: student {ips['student']:.1f}" +
       (f", teacher {ips['teacher']:.1f} ({ips['student'] / ips['teacher']:.1f}x)" if teacher is not None else ""))
  if jax.process_index() == 0:
    metrics.roc_png(os.path.join(workdir, "student_roc.png"), roc)
  path = _write_json(workdir, "student_evaluation.json", report)
  _say(f"report: {path}")
  logging.info("student evaluation written to %s", path)
  return report
