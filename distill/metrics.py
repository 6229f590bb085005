"""Host-side evaluation of the LaDeDa teacher and Tiny-LaDeDa student: metrics, the seed's verdicts, PNG reports.

Numpy / scikit-learn on gathered logits, never inside a jitted step. Labels: 0 = real, 1 = fake; a logit is
scored with sigmoid(logit) (the official `validate.py`: accuracy at 0.5, sklearn AP, real/fake accuracy, AUC).

The staged workflow of spec 002/003 reads these numbers through fixed thresholds:

* `teacher_verdict(auc)` (stage 0, diagnose): > 0.65 good, skip fine-tuning; 0.55-0.65 marginal, consider
  fine-tuning; < 0.55 not informative (domain shift), fine-tune.
* `distillation_recommendation(auc)` (stage 2, after fine-tuning): >= 0.65 ready to distil; 0.55-0.65 proceed,
  results may be limited; < 0.55 skip distillation and train the student with BCE only.
* `logit_diagnosis(teacher_maps, student_aligned_maps)` (spec 003, step 2): logit ranges that differ by 3x or
  more mean a scale mismatch (normalise before the MSE, or lower alpha_distill); an MSE above 100 means the
  distillation term drowns the BCE (spec 003's run: MSE ~450 against a BCE of ~0.7).

The seed's two AUC scales disagree at exactly 0.65 (marginal at stage 0, ready at stage 2); both are kept.
"""

from typing import Mapping

from absl import logging
import numpy as np
from scipy import special
from sklearn import metrics as skm

from common import plots

# Seed thresholds (spec 002): the teacher is good above GOOD_AUC and uninformative below MIN_AUC.
GOOD_AUC = 0.65
MIN_AUC = 0.55

TEACHER_VERDICTS = {
    "good": f"AUC > {GOOD_AUC}: the teacher is informative; skip fine-tuning",
    "marginal": f"{MIN_AUC} <= AUC <= {GOOD_AUC}: the teacher is marginal; consider fine-tuning it",
    "bad": f"AUC < {MIN_AUC}: the teacher is not informative on this data (domain shift); it must be fine-tuned",
}

DISTILLATION_RECOMMENDATIONS = {
    "ready": f"AUC >= {GOOD_AUC}: the teacher is ready for distillation",
    "limited": f"{MIN_AUC} <= AUC < {GOOD_AUC}: distillation can proceed, but results may be limited",
    "skip": f"AUC < {MIN_AUC}: skip distillation; train the student with BCE only (alpha_distill 0, alpha_task 1)",
}

# spec 003, step 2: what counts as a scale mismatch / a dominating distillation term.
SCALE_RATIO_LIMIT = 3.0
MSE_LIMIT = 100.0
SCALE_MISMATCH = "logit scale mismatch: normalise before MSE or lower alpha_distill"
LOSS_DOMINATES = "distillation loss dominates: BCE signal lost"
LOGITS_OK = "ok: logit scales comparable and MSE moderate"


def _finite(values, name: str) -> np.ndarray:
  """float64 copy of `values`, raising on an empty array or any NaN/inf (a diverged model, not a metric)."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    raise ValueError(f"{name} is empty")
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.isfinite(x)))
    raise ValueError(f"{name} has {bad} NaN/inf value(s) out of {x.size}")
  return x


def _logits_labels(logits, labels) -> tuple[np.ndarray, np.ndarray]:
  x = _finite(logits, "logits").ravel()
  y = np.asarray(labels).ravel()
  if y.shape != x.shape:
    raise ValueError(f"{x.size} logits but {y.size} labels")
  if not np.all((y == 0) | (y == 1)):
    raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {np.unique(y)[:10]}")
  return x, y.astype(np.int64)


def _auc_ap(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  if y.min() == y.max():
    logging.warning("only one class (%s) among %d labels: AUC and AP are undefined (nan)",
                    "fake" if y[0] else "real", y.size)
    return float("nan"), float("nan")
  return float(skm.roc_auc_score(y, x)), float(skm.average_precision_score(y, x))


def binary_report(logits, labels, threshold: float = 0.5) -> dict:
  """auc, ap, accuracy, real_accuracy, fake_accuracy, n_real, n_fake for image logits and 0/1 labels.

  A prediction is fake when sigmoid(logit) >= threshold. AUC and AP are rank statistics, so they use the logits
  directly (no saturation ties: sigmoid rounds logits above ~37 to exactly 1.0 in float64). With one class only,
  AUC/AP are NaN (logged) and the accuracy of the missing class is NaN.
  """
  x, y = _logits_labels(logits, labels)
  pred = special.expit(x) >= threshold
  real, fake = y == 0, y == 1
  auc, ap = _auc_ap(x, y)
  return {
      "auc": auc,
      "ap": ap,
      "accuracy": float(np.mean(pred == y)),
      "real_accuracy": float(np.mean(~pred[real])) if real.any() else float("nan"),
      "fake_accuracy": float(np.mean(pred[fake])) if fake.any() else float("nan"),
      "n_real": int(real.sum()),
      "n_fake": int(fake.sum()),
  }


def logit_stats(values) -> dict:
  """min, max, mean, std (unbiased, as torch `.std()`; 0 for one value), percentiles p1..p99, n of all values."""
  x = _finite(values, "values").ravel()
  q = np.percentile(x, [1, 5, 25, 50, 75, 95, 99])
  stats = {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()),
           "std": float(x.std(ddof=1)) if x.size > 1 else 0.0}
  stats.update({f"p{p}": float(v) for p, v in zip((1, 5, 25, 50, 75, 95, 99), q)})
  stats["n"] = int(x.size)
  return stats


def _check_auc(auc) -> float:
  auc = float(auc)
  if not np.isfinite(auc):
    raise ValueError(f"AUC is {auc}: undefined (e.g. the evaluation set has only one class)")
  if not 0.0 <= auc <= 1.0:
    raise ValueError(f"AUC must lie in [0, 1], got {auc}")
  return auc


def teacher_verdict(auc) -> tuple[str, str]:
  """("good" | "marginal" | "bad", message) for a teacher's validation AUC (spec 002, stage 0)."""
  auc = _check_auc(auc)
  level = "good" if auc > GOOD_AUC else "marginal" if auc >= MIN_AUC else "bad"
  return level, f"teacher AUC {auc:.4f}. {TEACHER_VERDICTS[level]}"


def distillation_recommendation(auc) -> tuple[str, str]:
  """("ready" | "limited" | "skip", message) for a (fine-tuned) teacher's validation AUC (spec 002, stage 2)."""
  auc = _check_auc(auc)
  level = "ready" if auc >= GOOD_AUC else "limited" if auc >= MIN_AUC else "skip"
  return level, f"teacher AUC {auc:.4f}. {DISTILLATION_RECOMMENDATIONS[level]}"


def _ratio(num: float, den: float) -> float:
  """num / den with 0 / 0 = 1 (two constant maps have the same scale) and x / 0 = inf."""
  if den == 0.0:
    return 1.0 if num == 0.0 else float("inf")
  return num / den


def logit_diagnosis(teacher_maps, student_aligned_maps) -> dict:
  """spec 003's logit-scale check on teacher patch maps and student maps already aligned to the teacher grid.

  Returns {"teacher": logit_stats, "student": logit_stats, "mse", "mse_normalized" (the MSE after
  `losses.normalize_map` on both, i.e. what `normalize=True` would train on), "range_ratio" and "std_ratio"
  (student / teacher), "verdicts": [SCALE_MISMATCH and/or LOSS_DOMINATES, or LOGITS_OK]}. A range ratio >= 3 or
  <= 1/3 is a mismatch either way round.
  """
  t = _finite(teacher_maps, "teacher maps")
  s = _finite(student_aligned_maps, "student maps")
  if t.shape != s.shape:
    raise ValueError(f"teacher maps {t.shape} and student maps {s.shape} differ: align the student first "
                     "(losses.align_to_teacher)")
  t_stats, s_stats = logit_stats(t), logit_stats(s)
  mse = float(np.mean((s - t) ** 2))
  norm = lambda z: (z - z.mean()) / ((z.std(ddof=1) if z.size > 1 else 0.0) + 1e-8)
  mse_normalized = float(np.mean((norm(s) - norm(t)) ** 2))
  range_ratio = _ratio(s_stats["max"] - s_stats["min"], t_stats["max"] - t_stats["min"])
  std_ratio = _ratio(s_stats["std"], t_stats["std"])
  verdicts = []
  if range_ratio >= SCALE_RATIO_LIMIT or range_ratio <= 1.0 / SCALE_RATIO_LIMIT:
    verdicts.append(SCALE_MISMATCH)
  if mse > MSE_LIMIT:
    verdicts.append(LOSS_DOMINATES)
  if not verdicts:
    verdicts.append(LOGITS_OK)
  return {"teacher": t_stats, "student": s_stats, "mse": mse, "mse_normalized": mse_normalized,
          "range_ratio": range_ratio, "std_ratio": std_ratio, "verdicts": verdicts}


def roc_png(path: str, named: Mapping[str, tuple]) -> dict:
  """ROC curves, one per name -> (logits, labels), with each AUC in the legend; a one-class set gets no curve.

  Returns the plot's `plots.describe` (title, axis labels, legend texts).
  """
  if not named:
    raise ValueError("roc_png needs at least one (logits, labels) pair")
  curves, aucs = {}, {}
  for name, (logits, labels) in named.items():
    x, y = _logits_labels(logits, labels)
    if y.min() == y.max():
      logging.warning("%s: only one class, no ROC curve", name)
      curves[f"{name} (no ROC: one class)"] = (np.zeros(0), np.zeros(0))
      continue
    fpr, tpr, _ = skm.roc_curve(y, x)
    curves[name], aucs[name] = (fpr, tpr), float(skm.roc_auc_score(y, x))
  return plots.curves_png(path, curves, title="ROC: fake detected vs real flagged", diagonal=True,
                          xlabel="false-positive rate (real called fake)",
                          ylabel="true-positive rate (fake called fake)", aucs=aucs)


def logit_histogram_png(path: str, logits, labels, title: str = "") -> dict:
  """Overlaid histograms of the real (label 0) and fake (label 1) logits, with each class's mean and count."""
  x, y = _logits_labels(logits, labels)
  return plots.histogram_png(path, {"real": x[y == 0], "fake": x[y == 1]}, title=title or "logits: real vs fake",
                             xlabel="logit (> 0: fake)", ylabel="fraction of class per bin")
