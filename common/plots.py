"""Small PNG report plots (histograms, curves) drawn with matplotlib.

Figures are built as `matplotlib.figure.Figure` and rendered by the Agg canvas directly: no pyplot, so no global
backend or open-figure registry is touched (safe in headless jobs, threads and after other code picked a
backend), and a figure is freed as soon as it goes out of scope. Each `*_png` function writes its file
atomically (temp file in the same folder, then os.replace) so a reader never sees half a PNG, and returns
`describe(figure)`: the title, axis labels and legend texts, for logs and tests.
"""

import os
import uuid
from typing import Mapping, Sequence

from matplotlib import figure as mpl_figure
from matplotlib.backends import backend_agg
import numpy as np

_DPI = 100  # size is given in pixels; figsize = size / dpi keeps PNGs at exactly that size
_LINE_STYLES = ("--", ":", "-.")


def _new_figure(size) -> tuple[mpl_figure.Figure, object]:
  fig = mpl_figure.Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, layout="constrained")
  backend_agg.FigureCanvasAgg(fig)  # attaches itself as fig.canvas
  ax = fig.add_subplot()
  ax.grid(True, alpha=0.3)
  return fig, ax


def describe(fig: mpl_figure.Figure) -> dict:
  """{"title", "xlabel", "ylabel", "legend": [texts]} of a one-axes figure: what a reader of the PNG sees."""
  ax = fig.axes[0]
  legend = ax.get_legend()
  return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
          "legend": [t.get_text() for t in legend.get_texts()] if legend else []}


def save_png(fig: mpl_figure.Figure, path: str) -> None:
  """Writes `fig` to `path` via a same-folder temp file and os.replace, so `path` is never half written."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # a command's workdir may not exist yet
  tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                     f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    with open(tmp, "wb") as f:  # open(), not mkstemp: the file gets the umask's permissions, not 0600
      fig.savefig(f, format="png", dpi=_DPI)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _vlines(ax, vlines: Mapping[str, float] | None, first_colour: int):
  """Labelled vertical markers (thresholds); a non-finite one still gets its legend entry, without a line."""
  for j, (label, x) in enumerate((vlines or {}).items()):
    style = dict(color=f"C{first_colour + j}", linestyle=_LINE_STYLES[j % len(_LINE_STYLES)], linewidth=1.5,
                 label=label)
    if np.isfinite(x):
      ax.axvline(float(x), **style)
    else:
      ax.plot([], [], **style)


def histogram_figure(series: Mapping[str, np.ndarray], value_range: Sequence[float] | None = None, bins: int = 40,
                     title: str = "", size=(640, 360), xlabel: str = "value",
                     ylabel: str = "fraction of series per bin",
                     vlines: Mapping[str, float] | None = None) -> mpl_figure.Figure:
  """Overlaid step histograms of fractions (series of different sizes compare), legend with mean and count.

  Non-finite values are left out (and counted in the legend); values outside `value_range` fall off the axis.
  `vlines` maps a legend label to an x position, e.g. {"threshold 0.35": 0.35}.
  """
  arrays = {k: np.asarray(v, np.float64).ravel() for k, v in series.items()}
  finite = {k: a[np.isfinite(a)] for k, a in arrays.items()}
  pooled = np.concatenate([np.zeros(0)] + list(finite.values()))
  if value_range is not None:
    lo, hi = map(float, value_range)
  else:
    lo, hi = (float(pooled.min()), float(pooled.max())) if pooled.size else (0.0, 1.0)
  hi = hi if hi > lo else lo + 1.0
  edges = np.linspace(lo, hi, bins + 1)
  fig, ax = _new_figure(size)
  for i, (name, a) in enumerate(finite.items()):
    label = f"{name}: mean {a.mean():.3f} (n={a.size})" if a.size else f"{name}: empty"
    if a.size < arrays[name].size:
      label += f", {arrays[name].size - a.size} non-finite"
    weights = np.full(a.size, 1.0 / max(a.size, 1))
    ax.hist(a, bins=edges, weights=weights, histtype="step", linewidth=1.5, color=f"C{i}", label=label)
  _vlines(ax, vlines, len(finite))
  ax.set_xlim(lo, hi)
  ax.set_ylim(bottom=0.0)
  ax.set_title(title, fontsize="medium")
  ax.set(xlabel=xlabel, ylabel=ylabel)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small", loc="best")
  return fig


def histogram_png(path: str, series: Mapping[str, np.ndarray], value_range: Sequence[float] | None = None,
                  bins: int = 40, title: str = "", size=(640, 360), xlabel: str = "value",
                  ylabel: str = "fraction of series per bin", vlines: Mapping[str, float] | None = None) -> dict:
  """Writes `histogram_figure(...)` to `path`; returns its `describe`."""
  fig = histogram_figure(series, value_range, bins, title, size, xlabel, ylabel, vlines)
  save_png(fig, path)
  return describe(fig)


def curves_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], xlim=(0.0, 1.0), ylim=(0.0, 1.0),
                  title: str = "", diagonal: bool = False, size=(480, 480), xlabel: str = "x", ylabel: str = "y",
                  aucs: Mapping[str, float] | None = None, markers: bool = False) -> mpl_figure.Figure:
  """Named polylines (e.g. ROC curves: x = false-positive rate, y = true-positive rate), one legend entry each.

  `aucs[name]`, when given, is appended to that curve's legend entry as "AUC 0.934"; an empty curve still gets
  its legend entry (e.g. "no ROC: one class"). `diagonal` draws the chance line y = x.
  """
  fig, ax = _new_figure(size)
  for i, (name, (xs, ys)) in enumerate(curves.items()):
    label = f"{name} (AUC {aucs[name]:.3f})" if aucs and name in aucs else name
    ax.plot(np.asarray(xs, np.float64), np.asarray(ys, np.float64), color=f"C{i}", linewidth=1.8, label=label,
            marker="o" if markers else None, markersize=3)
  if diagonal:
    ax.plot([xlim[0], xlim[1]], [ylim[0], ylim[1]], color="0.6", linestyle="--", linewidth=1, label="chance")
  ax.set_xlim(*xlim)
  ax.set_ylim(*ylim)
  ax.set_title(title, fontsize="medium")
  ax.set(xlabel=xlabel, ylabel=ylabel)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small", loc="lower right" if diagonal else "best")
  return fig


def curves_png(path: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], xlim=(0.0, 1.0), ylim=(0.0, 1.0),
               title: str = "", diagonal: bool = False, size=(480, 480), xlabel: str = "x", ylabel: str = "y",
               aucs: Mapping[str, float] | None = None, markers: bool = False) -> dict:
  """Writes `curves_figure(...)` to `path`; returns its `describe`."""
  fig = curves_figure(curves, xlim, ylim, title, diagonal, size, xlabel, ylabel, aucs, markers)
  save_png(fig, path)
  return describe(fig)
