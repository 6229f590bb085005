"""Small PNG plots drawn with PIL (histograms, curves): reports stay readable without a matplotlib dependency."""

from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE = ((220, 60, 60), (40, 150, 40), (50, 90, 220), (230, 140, 20), (140, 60, 180), (20, 160, 170))


class _Axes:
  """Pixel mapping of a data rectangle [x0, x1] x [y0, y1] with ticks and a title."""

  def __init__(self, draw, size, xlim, ylim, title=""):
    self.draw, (self.w, self.h) = draw, size
    self.left, self.right, self.top, self.bottom = 50, self.w - 15, 30, self.h - 40
    self.xlim, self.ylim = xlim, ylim
    draw.line([(self.left, self.bottom), (self.right, self.bottom)], fill="black")
    draw.line([(self.left, self.top), (self.left, self.bottom)], fill="black")
    for x in np.linspace(*xlim, 5):
      px = self.px(x, ylim[0])[0]
      draw.line([(px, self.bottom), (px, self.bottom + 5)], fill="black")
      draw.text((px - 12, self.bottom + 8), f"{x:.3g}", fill="black")
    for y in np.linspace(*ylim, 5):
      py = self.px(xlim[0], y)[1]
      draw.line([(self.left - 5, py), (self.left, py)], fill="black")
      draw.text((4, py - 6), f"{y:.3g}", fill="black")
    if title:
      draw.text((self.left, 8), title, fill="black")

  def px(self, x, y):
    fx = (x - self.xlim[0]) / max(self.xlim[1] - self.xlim[0], 1e-12)
    fy = (y - self.ylim[0]) / max(self.ylim[1] - self.ylim[0], 1e-12)
    return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)


def histogram_png(path: str, series: Mapping[str, np.ndarray], value_range: Sequence[float] | None = None,
                  bins: int = 40, title: str = "", size=(640, 360)) -> None:
  """Overlaid histograms (fraction per bin), one colour per named series, legend with each series' mean."""
  arrays = {k: np.asarray(v, np.float64).ravel() for k, v in series.items()}
  finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()] + [np.zeros(1)])
  lo, hi = value_range if value_range is not None else (finite.min(), finite.max())
  hi = hi if hi > lo else lo + 1.0
  hists = {k: np.histogram(a, bins=bins, range=(lo, hi)) for k, a in arrays.items()}
  fracs = {k: c / max(c.sum(), 1) for k, (c, _) in hists.items()}
  top = max([f.max() for f in fracs.values()] + [1e-8])
  img = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(img)
  axes = _Axes(draw, size, (lo, hi), (0.0, top), title)
  for i, (name, (_, edges)) in enumerate(hists.items()):
    colour = PALETTE[i % len(PALETTE)]
    for f, e0, e1 in zip(fracs[name], edges[:-1], edges[1:]):
      (x0, y0), (x1, y1) = axes.px(e0, f), axes.px(e1, 0.0)
      draw.rectangle([x0 + 1, y0, max(x1 - 1, x0 + 1), y1], outline=colour)
    mean = arrays[name].mean() if arrays[name].size else float("nan")
    draw.text((axes.right - 230, axes.top + 14 * i), f"{name}: mean {mean:.3f} (n={arrays[name].size})", fill=colour)
  img.save(path)


def curves_png(path: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], xlim=(0.0, 1.0), ylim=(0.0, 1.0),
               title: str = "", diagonal: bool = False, size=(480, 480)) -> None:
  """Polylines (e.g. ROC curves: x = false-positive rate, y = true-positive rate), one colour per named curve."""
  img = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(img)
  axes = _Axes(draw, size, xlim, ylim, title)
  if diagonal:
    draw.line([axes.px(xlim[0], ylim[0]), axes.px(xlim[1], ylim[1])], fill=(170, 170, 170))
  for i, (name, (xs, ys)) in enumerate(curves.items()):
    colour = PALETTE[i % len(PALETTE)]
    points = [axes.px(float(x), float(y)) for x, y in zip(xs, ys)]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    draw.text((axes.left + 10, axes.top + 14 * i), name, fill=colour)
  img.save(path)
