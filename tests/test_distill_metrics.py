"""Distillation metrics: binary report on hand-computed cases, logit statistics, the seed's verdict thresholds at
their boundaries, the logit-scale diagnosis, and the PNG reports."""

import math

from absl import logging
import numpy as np
from PIL import Image
import pytest

from distill import metrics


def test_binary_report_perfect_and_inverted():
  logits = np.array([-3.0, -1.0, -0.5, 0.5, 2.0, 4.0])
  labels = np.array([0, 0, 0, 1, 1, 1])
  r = metrics.binary_report(logits, labels)
  assert r == {"auc": 1.0, "ap": 1.0, "accuracy": 1.0, "real_accuracy": 1.0, "fake_accuracy": 1.0,
               "n_real": 3, "n_fake": 3}
  r = metrics.binary_report(-logits, labels)
  assert r["auc"] == 0.0 and r["accuracy"] == 0.0 and r["real_accuracy"] == 0.0 and r["fake_accuracy"] == 0.0
  # Inverted: the fakes rank last, so precision at the k-th fake is k / (3 + k): AP = mean(1/4, 2/5, 3/6).
  assert r["ap"] == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 3)


def test_binary_report_hand_computed_mixed_case():
  # Ranking (high to low): f(3) r(2) f(1) r(-1) f(-2) r(-3).
  logits = np.array([3.0, 2.0, 1.0, -1.0, -2.0, -3.0])
  labels = np.array([1, 0, 1, 0, 1, 0])
  r = metrics.binary_report(logits, labels)
  assert r["auc"] == pytest.approx(6 / 9)  # fakes beat reals in (3>2,3>-1,3>-3, 1>-1,1>-3, -2>-3) = 6 pairs
  assert r["ap"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 3)
  # Predicted fake: the three positive logits -> correct on f(3), f(1), r(-1), r(-3): 4 of 6.
  assert r["accuracy"] == pytest.approx(4 / 6)
  assert r["real_accuracy"] == pytest.approx(2 / 3) and r["fake_accuracy"] == pytest.approx(2 / 3)
  # The threshold is on sigmoid(logit): 0.5 <=> logit >= 0 (a logit of 0 counts as fake); 0.9 <=> logit >= 2.197.
  assert metrics.binary_report([0.0], [1])["accuracy"] == 1.0
  r = metrics.binary_report(logits, labels, threshold=0.9)
  assert r["fake_accuracy"] == pytest.approx(1 / 3) and r["real_accuracy"] == 1.0  # r(2) is now below it


def test_binary_report_random_scores_near_chance():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 20000)
  r = metrics.binary_report(rng.normal(size=labels.size), labels)
  assert abs(r["auc"] - 0.5) < 0.02 and abs(r["accuracy"] - 0.5) < 0.02
  assert abs(r["ap"] - labels.mean()) < 0.02  # AP of random scores = prevalence
  assert r["n_real"] + r["n_fake"] == labels.size


def test_binary_report_single_class(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  r = metrics.binary_report([1.0, -2.0, 3.0], [1, 1, 1])
  assert math.isnan(r["auc"]) and math.isnan(r["ap"]) and math.isnan(r["real_accuracy"])
  assert r["fake_accuracy"] == pytest.approx(2 / 3) and r["n_real"] == 0 and r["n_fake"] == 3
  assert len(warnings) == 1 and "only one class" in warnings[0]


@pytest.mark.parametrize("logits,labels,match", [
    ([], [], "empty"),
    ([0.1, np.nan], [0, 1], "NaN/inf"),
    ([0.1, np.inf], [0, 1], "NaN/inf"),
    ([0.1, 0.2], [0, 1, 1], "labels"),
    ([0.1, 0.2], [0, 2], "0 \\(real\\) or 1"),
])
def test_binary_report_rejects_bad_input(logits, labels, match):
  with pytest.raises(ValueError, match=match):
    metrics.binary_report(logits, labels)


def test_logit_stats():
  values = np.arange(101, dtype=np.float32).reshape(1, 101) - 50  # -50..50: percentile p is p - 50 exactly
  s = metrics.logit_stats(values)
  assert (s["min"], s["max"], s["mean"], s["n"]) == (-50.0, 50.0, 0.0, 101)
  assert s["std"] == pytest.approx(np.std(np.arange(101), ddof=1))
  for p in (1, 5, 25, 50, 75, 95, 99):
    assert s[f"p{p}"] == pytest.approx(p - 50)
  assert metrics.logit_stats([2.5])["std"] == 0.0
  for bad in ([], [1.0, np.nan], [np.inf]):
    with pytest.raises(ValueError):
      metrics.logit_stats(bad)


@pytest.mark.parametrize("auc,level", [(0.9, "good"), (0.6500001, "good"), (0.65, "marginal"), (0.6, "marginal"),
                                       (0.55, "marginal"), (0.5499999, "bad"), (0.3, "bad")])
def test_teacher_verdict_boundaries(auc, level):
  got, message = metrics.teacher_verdict(auc)
  assert got == level and message.endswith(metrics.TEACHER_VERDICTS[level]) and f"{auc:.4f}" in message


@pytest.mark.parametrize("auc,level", [(0.9, "ready"), (0.65, "ready"), (0.6499999, "limited"), (0.55, "limited"),
                                       (0.5499999, "skip"), (0.1, "skip")])
def test_distillation_recommendation_boundaries(auc, level):
  got, message = metrics.distillation_recommendation(auc)
  assert got == level and message.endswith(metrics.DISTILLATION_RECOMMENDATIONS[level])


def test_verdicts_reject_undefined_auc():
  for fn in (metrics.teacher_verdict, metrics.distillation_recommendation):
    for bad in (float("nan"), float("inf"), 1.5):
      with pytest.raises(ValueError):
        fn(bad)


def test_logit_diagnosis_each_verdict():
  rng = np.random.default_rng(1)
  teacher = rng.normal(0, 1, (4, 27, 27))
  ok = metrics.logit_diagnosis(teacher, teacher + rng.normal(0, 0.3, teacher.shape))
  assert ok["verdicts"] == [metrics.LOGITS_OK] and ok["mse"] < 0.2
  assert ok["range_ratio"] == pytest.approx(1.0, abs=0.3) and ok["std_ratio"] == pytest.approx(1.0, abs=0.1)
  assert ok["teacher"]["n"] == teacher.size

  # spec 003's example: student in [-10, 10], teacher in [-0.5, 0.5] -> mismatch (20x), MSE ~33: not dominating.
  t = rng.uniform(-0.5, 0.5, (4, 27, 27))
  s = 20 * t + rng.normal(0, 0.01, t.shape)
  d = metrics.logit_diagnosis(t, s)
  assert d["verdicts"] == [metrics.SCALE_MISMATCH] and d["range_ratio"] == pytest.approx(20, rel=0.01)
  assert d["mse_normalized"] < 1e-3  # the same maps up to scale: normalising fixes it

  # Same scale, but far apart: MSE > 100 with no range mismatch.
  d = metrics.logit_diagnosis(teacher * 10, -teacher * 10)
  assert d["verdicts"] == [metrics.LOSS_DOMINATES] and d["range_ratio"] == pytest.approx(1.0)

  # Both, and the mismatch is symmetric (a student 5x narrower than its teacher is one too).
  d = metrics.logit_diagnosis(teacher * 50, teacher * 5)
  assert d["verdicts"] == [metrics.SCALE_MISMATCH, metrics.LOSS_DOMINATES]
  assert d["range_ratio"] == pytest.approx(0.1) and d["std_ratio"] == pytest.approx(0.1)
  # The limit is 3x (spec 003: "3x+").
  assert metrics.logit_diagnosis(teacher, 3.01 * teacher)["verdicts"] == [metrics.SCALE_MISMATCH]
  assert metrics.logit_diagnosis(teacher, 2.99 * teacher)["verdicts"] == [metrics.LOGITS_OK]


def test_logit_diagnosis_rejects_bad_input():
  t = np.zeros((2, 27, 27))
  with pytest.raises(ValueError, match="align"):
    metrics.logit_diagnosis(t, np.zeros((2, 110, 110)))
  with pytest.raises(ValueError, match="NaN/inf"):
    metrics.logit_diagnosis(t, np.full(t.shape, np.nan))
  with pytest.raises(ValueError, match="empty"):
    metrics.logit_diagnosis(np.zeros((0, 27, 27)), np.zeros((0, 27, 27)))
  # Constant maps: equal (zero) ranges are not a mismatch; a constant teacher against a varying student is.
  assert metrics.logit_diagnosis(t, t)["range_ratio"] == 1.0
  assert metrics.logit_diagnosis(t, np.random.default_rng(2).normal(size=t.shape))["range_ratio"] == math.inf


def test_pngs_written(tmp_path):
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 2, 200)
  good = labels * 2.0 + rng.normal(size=200)
  roc = tmp_path / "roc.png"
  metrics.roc_png(str(roc), {"teacher": (good, labels), "student": (rng.normal(size=200), labels),
                             "one class": (good[:10], np.ones(10, int))})
  hist = tmp_path / "hist.png"
  metrics.logit_histogram_png(str(hist), good, labels, title="teacher logits")
  for path in (roc, hist):
    assert path.stat().st_size > 1000
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.ndim == 3 and (img != 255).any()  # something was drawn
  with pytest.raises(ValueError):
    metrics.roc_png(str(roc), {})
  with pytest.raises(ValueError):
    metrics.logit_histogram_png(str(hist), [np.nan], [1])
