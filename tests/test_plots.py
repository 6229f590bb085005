"""common.plots and its callers: readable PNGs written atomically, with labelled axes and informative legends."""

import os

import numpy as np
from PIL import Image
import pytest
from sklearn import metrics as skm

from common import plots
from distill import metrics
from facerec import protocol


def _readable_png(path, size=None):
  assert os.path.getsize(path) > 0
  with Image.open(path) as img:
    assert img.format == "PNG"
    if size is not None:
      assert img.size == size
    pixels = np.asarray(img.convert("RGB"))
  assert (pixels != 255).any()  # something was drawn
  assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]  # no temp file left


def _labelled(info):
  assert info["title"] and info["xlabel"] and info["ylabel"]


def test_histogram_png(tmp_path):
  rng = np.random.default_rng(0)
  path = str(tmp_path / "hist.png")
  info = plots.histogram_png(path, {"a": rng.normal(size=300), "b": np.r_[rng.normal(1, size=50), np.nan],
                                    "empty": np.zeros(0)},
                             title="two series", xlabel="score", vlines={"cut 0.5": 0.5, "never": np.inf})
  _readable_png(path, size=(640, 360))
  _labelled(info)
  assert info["xlabel"] == "score"
  assert info["legend"][0].startswith("a: mean") and "n=300" in info["legend"][0]
  assert "n=50" in info["legend"][1] and "1 non-finite" in info["legend"][1]
  assert info["legend"][2] == "empty: empty"
  assert info["legend"][3:] == ["cut 0.5", "never"]  # a non-finite marker keeps its legend entry


def test_curves_png_and_figure(tmp_path):
  x = np.linspace(0, 1, 11)
  path = str(tmp_path / "curves.png")
  info = plots.curves_png(path, {"sqrt": (x, np.sqrt(x)), "none": (np.zeros(0), np.zeros(0))}, title="t",
                          diagonal=True, xlabel="fpr", ylabel="tpr", aucs={"sqrt": 2 / 3}, markers=True)
  _readable_png(path, size=(480, 480))
  assert info == {"title": "t", "xlabel": "fpr", "ylabel": "tpr", "legend": ["sqrt (AUC 0.667)", "none", "chance"]}
  fig = plots.curves_figure({"line": (x, x)})  # build without writing: defaults are still labelled
  assert plots.describe(fig)["xlabel"] and plots.describe(fig)["ylabel"]


def test_save_png_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / "plot.png"
  path.write_bytes(b"previous")
  fig = plots.histogram_figure({"a": np.arange(5.0)})

  def broken(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(fig, "savefig", broken)
  with pytest.raises(RuntimeError, match="disk full"):
    plots.save_png(fig, str(path))
  assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["plot.png"]


def test_roc_legend_has_auc(tmp_path):
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 2, 200)
  good = labels * 2.0 + rng.normal(size=200)
  path = str(tmp_path / "roc.png")
  info = metrics.roc_png(path, {"teacher": (good, labels), "one class": (good[:10], np.ones(10, int))})
  _readable_png(path)
  _labelled(info)
  assert info["legend"][0] == f"teacher (AUC {skm.roc_auc_score(labels, good):.3f})"
  assert "no ROC: one class" in info["legend"][1] and "AUC" not in info["legend"][1]


def test_logit_histogram_labelled(tmp_path):
  path = str(tmp_path / "logits.png")
  info = metrics.logit_histogram_png(path, [-2.0, -1.0, 1.0, 3.0], [0, 0, 1, 1])
  _readable_png(path)
  _labelled(info)
  assert [t.split(":")[0] for t in info["legend"]] == ["real", "fake"]


def test_score_distribution_marks_threshold_and_eer(tmp_path):
  rng = np.random.default_rng(0)
  gen, imp = rng.uniform(0.3, 1, 200), rng.uniform(-0.3, 0.5, 2000)
  path = str(tmp_path / "scores.png")
  info = protocol.score_distribution_png(path, {"model": (gen, imp)}, threshold=0.35)
  _readable_png(path, size=(640, 360))
  _labelled(info)
  eer, eer_threshold = protocol.equal_error_rate(gen, imp)
  assert "threshold 0.35" in info["legend"]
  assert f"model: EER {eer:.1%} at {eer_threshold:.2f}" in info["legend"]
  assert sum("genuine" in t for t in info["legend"]) == 1 and sum("impostor" in t for t in info["legend"]) == 1
  info = protocol.score_distribution_png(path, {"a": (gen, imp), "b": (gen, np.zeros(0))}, threshold=None)
  assert not any(t.startswith("threshold") for t in info["legend"])
  assert [t for t in info["legend"] if "EER" in t][0].startswith("a: EER")  # b has no impostors: no EER line
