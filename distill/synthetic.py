"""Synthetic real/fake images whose only reliable cue is the upsampling trace that NPR and LaDeDa look for.

Real and fake images share one content distribution: a shaded two-colour background with low-frequency value noise,
then soft-edged ellipses, some carrying stripe textures, composited back to front. Content is a function of
continuous coordinates, so the same scene can be sampled on any pixel grid.

* **Real**: the scene sampled at full resolution, plus camera-like grain (luminance-correlated Gaussian noise) at
  full resolution, so every pixel carries its own high-frequency content.
* **Fake**: the scene sampled at 1/2 (sometimes 1/4) resolution with grain at that resolution, upsampled x2 per
  step by a generator-like layer, then a little full-resolution noise. The grain is split so that the per-pixel
  noise variance equals the real one after the upsampler's variance gain: mean, std and colour histograms match
  real images, and only the local correlations (2x2 blocks, phase-dependent gains, smoothing) differ.

Upsamplers ("generators"): `nearest` (exactly NPR's target: each 2x2 block is constant before the final noise),
`tconv` (zero insertion + a fixed 3-tap transposed-conv kernel whose two output phases have different gains: a
checkerboard, i.e. spectral peaks at Nyquist) and `bilinear` (smooth, no block structure). Train/val and
`test/seen_generators` use nearest + tconv; `test/unseen_generator` uses bilinear, a cross-generator shift like
WildRF's cross-platform test.

CLI::

    python -m distill.synthetic --out DIR [--size 64] [--train 600] [--val 200] [--test 200] [--seed 0]

writes DIR/{train,val}/{0_real,1_fake}/NNNNN.png, DIR/test/{seen_generators,unseen_generator}/{0_real,1_fake}/
and DIR/dataset.json (the parameters). Counts are per split, or per test subset, half real and half fake.
Generation is deterministic in (seed, size, counts).
"""

import argparse
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from common import progress

# Split -> (subset, upsampler kinds of its fakes). Fakes cycle through the kinds, so each is equally common.
SPLITS = {
    "train": (None, ("nearest", "tconv")),
    "val": (None, ("nearest", "tconv")),
    "test": (("seen_generators", ("nearest", "tconv")), ("unseen_generator", ("bilinear",))),
}
QUARTER_FRACTION = 0.25  # fakes rendered at 1/4 resolution (two x2 upsampling steps)
GRAIN = (0.006, 0.03)  # per-pixel noise std range (on [0, 1] intensities), identical for real and fake
POST_NOISE = (0.0, 0.35)  # fraction of a fake's noise variance added after upsampling (hides the blocks)
TCONV = (0.52, 0.96)  # transposed-conv taps (a, c, a): odd outputs gain 2a = 1.04, even outputs c = 0.96
NUM_SHAPES = 6


# ----------------------------------------------------------------------------------------------
# Scenes (vectorised over a batch; coordinates in [0, 1], pixel centres at (i + 0.5) / res)
# ----------------------------------------------------------------------------------------------
def sample_scenes(rng: np.random.Generator, n: int) -> dict:
  """Draws the content parameters of n scenes (float32 arrays, bool masks)."""
  def colours(*shape):  # natural-ish: a luminance plus a moderate chroma offset
    return np.clip(rng.uniform(0.1, 0.9, shape + (1,)) + rng.normal(0, 0.12, shape + (3,)), 0, 1)

  k = NUM_SHAPES
  scenes = dict(
      bg=colours(n, 2),                                       # gradient end colours
      bg_dir=rng.uniform(0, 2 * np.pi, n),
      bg_noise=rng.normal(0, 1, (n, 6, 6)),                   # value-noise grid, 5x5 cells
      bg_noise_amp=rng.uniform(0.03, 0.12, n),
      present=rng.uniform(size=(n, k)) < 0.8,
      centre=rng.uniform(0.05, 0.95, (n, k, 2)),
      radius=rng.uniform(0.06, 0.32, (n, k, 2)),
      angle=rng.uniform(0, np.pi, (n, k)),
      colour=colours(n, k),
      edge=rng.uniform(0.3, 2.0, (n, k)) / 64,               # edge softness: 0.3 to 2 pixels at 64 px
      shade=rng.normal(0, 0.15, (n, k, 2)),                   # linear shading across the shape
      stripes=rng.uniform(size=(n, k)) < 0.35,
      stripe_freq=rng.uniform(3, 10, (n, k)),                 # cycles per image: < Nyquist at 1/4 of 64 px
      stripe_dir=rng.uniform(0, 2 * np.pi, (n, k)),
      stripe_amp=rng.uniform(0.05, 0.2, (n, k)),
  )
  return {name: v if v.dtype == bool else v.astype(np.float32) for name, v in scenes.items()}


def _value_noise(grid: np.ndarray, c: np.ndarray) -> np.ndarray:
  """Smooth noise from per-scene grids (n, g+1, g+1), sampled at coordinates c (res,) on both axes."""
  cells = grid.shape[1] - 1
  t = c * cells
  i = np.minimum(t.astype(int), cells - 1)
  f = t - i.astype(np.float32)
  f = f * f * (3 - 2 * f)  # smoothstep: no creases at cell borders
  rows = grid[:, i] * (1 - f)[None, :, None] + grid[:, i + 1] * f[None, :, None]
  return rows[:, :, i] * (1 - f) + rows[:, :, i + 1] * f


def _render_chunk(s: dict, c: np.ndarray) -> np.ndarray:
  # Channels-first (n, 3, H, W) inside: numpy broadcasts a length-3 last axis about 10x slower.
  y, x = c[:, None], c[None, :]

  def col(name, *idx):  # per-scene values broadcast over (channel, y, x)
    v = s[name][(slice(None), *idx)]
    return v.reshape(v.shape + (1,) * (4 - v.ndim))

  d = col("bg_dir")
  t = np.clip(0.5 + (x - 0.5) * np.cos(d) + (y - 0.5) * np.sin(d), 0, 1)
  img = col("bg", 0) + (col("bg", 1) - col("bg", 0)) * t
  img *= 1 + col("bg_noise_amp") * _value_noise(s["bg_noise"], c)[:, None]
  for j in range(s["centre"].shape[1]):
    dx, dy = x - col("centre", j, 0), y - col("centre", j, 1)
    cos, sin = np.cos(col("angle", j)), np.sin(col("angle", j))
    rx, ry = col("radius", j, 0), col("radius", j, 1)
    u, v = (cos * dx + sin * dy) / rx, (cos * dy - sin * dx) / ry
    # Approximate signed distance to the ellipse boundary, then a linear ramp of `edge` width.
    dist = (np.sqrt(u * u + v * v) - 1) * np.minimum(rx, ry)
    alpha = np.clip(0.5 - dist / col("edge", j), 0, 1) * col("present", j)
    shade = 1 + col("shade", j, 0) * u + col("shade", j, 1) * v
    if s["stripes"][:, j].any():
      sd = col("stripe_dir", j)
      phase = (2 * np.pi) * col("stripe_freq", j) * (np.cos(sd) * x + np.sin(sd) * y)
      shade *= 1 + (col("stripes", j) * col("stripe_amp", j)) * np.sin(phase)
    img += alpha * (col("colour", j) * shade - img)  # "over" compositing
  return img.transpose(0, 2, 3, 1)


def render(scenes: dict, res: int, chunk: int = 64) -> np.ndarray:
  """Samples the scenes on a res x res pixel grid: float32 (n, res, res, 3), roughly in [0, 1]."""
  c = ((np.arange(res) + 0.5) / res).astype(np.float32)
  n = len(scenes["bg"])
  out = np.empty((n, res, res, 3), np.float32)
  # Chunks keep the temporaries in cache.
  for i in range(0, n, chunk):
    out[i:i + chunk] = _render_chunk({k: v[i:i + chunk] for k, v in scenes.items()}, c)
  return out


# ----------------------------------------------------------------------------------------------
# Camera noise and generator-like upsampling (x2 per step, along H and W)
# ----------------------------------------------------------------------------------------------
def camera_noise(rng: np.random.Generator, shape: tuple, std: np.ndarray) -> np.ndarray:
  """Camera-like noise: half of the variance shared by the channels (luminance), half per channel (chroma)."""
  z = (rng.standard_normal(shape[:-1] + (1,), np.float32) + rng.standard_normal(shape, np.float32)) / np.sqrt(2)
  return z * std.reshape((-1,) + (1,) * (len(shape) - 1)).astype(np.float32)


def _up_axis(x: np.ndarray, kind: str, axis: int) -> np.ndarray:
  nxt = np.concatenate([np.delete(x, 0, axis), np.take(x, [-1], axis)], axis)  # x[i + 1], edge replicated
  prv = np.concatenate([np.take(x, [0], axis), np.delete(x, -1, axis)], axis)  # x[i - 1]
  if kind == "nearest":
    even, odd = x, x
  elif kind == "tconv":  # zero insertion then taps (a, c, a): even outputs see x[i] once, odd ones x[i] and x[i+1]
    a, c = TCONV
    even, odd = c * x, a * (x + nxt)
  elif kind == "bilinear":  # align_corners=False, as torch / PIL bilinear x2
    even, odd = 0.75 * x + 0.25 * prv, 0.75 * x + 0.25 * nxt
  else:
    raise ValueError(f"unknown upsampler {kind!r}; use nearest, tconv or bilinear")
  out = np.stack([even, odd], axis + 1)
  return out.reshape(x.shape[:axis] + (2 * x.shape[axis],) + x.shape[axis + 1:])


def upsample2(x: np.ndarray, kind: str) -> np.ndarray:
  """x2 upsampling of (n, h, w, c) images along h and w."""
  return _up_axis(_up_axis(x, kind, 1), kind, 2)


def noise_gain(kind: str) -> float:
  """Per-pixel variance of upsample2(white noise of variance 1), averaged over output phases."""
  a, c = TCONV
  per_axis = {"nearest": 1.0, "tconv": (c ** 2 + 2 * a ** 2) / 2, "bilinear": 0.75 ** 2 + 0.25 ** 2}[kind]
  return per_axis ** 2


# ----------------------------------------------------------------------------------------------
# Data set
# ----------------------------------------------------------------------------------------------
def generate(rng: np.random.Generator, num_real: int, num_fake: int, size: int, kinds: tuple[str, ...]):
  """Returns (real uint8 (num_real, size, size, 3), fake uint8 (num_fake, ...), fake upsampler kinds)."""
  if size % 4:
    raise ValueError(f"size {size} must be a multiple of 4 (fakes are rendered at 1/4 resolution too)")
  real_scenes = sample_scenes(rng, num_real)
  real_std = rng.uniform(*GRAIN, num_real)
  real = render(real_scenes, size) + camera_noise(rng, (num_real, size, size, 3), real_std)

  fake_scenes = sample_scenes(rng, num_fake)
  fake_std = rng.uniform(*GRAIN, num_fake)
  post = rng.uniform(*POST_NOISE, num_fake)
  kind = np.array([kinds[i % len(kinds)] for i in range(num_fake)])
  steps = np.where(rng.uniform(size=num_fake) < QUARTER_FRACTION, 2, 1)
  fake = np.empty((num_fake, size, size, 3), np.float32)
  for k in kinds:
    for s in (1, 2):
      idx = np.flatnonzero((kind == k) & (steps == s))
      if not len(idx):
        continue
      scenes = {name: v[idx] for name, v in fake_scenes.items()}
      low = size >> s
      # Grain drawn at low resolution is scaled so that after s upsampling steps its variance is (1 - post) of
      # the real grain's; the post-upsampling noise brings the rest.
      pre_std = fake_std[idx] * np.sqrt((1 - post[idx]) / noise_gain(k) ** s)
      x = render(scenes, low) + camera_noise(rng, (len(idx), low, low, 3), pre_std)
      for _ in range(s):
        x = upsample2(x, k)
      fake[idx] = x + camera_noise(rng, x.shape, fake_std[idx] * np.sqrt(post[idx]))
  to_u8 = lambda v: (np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8)
  return to_u8(real), to_u8(fake), kind


def _subsets(split: str) -> list[tuple[str | None, tuple[str, ...]]]:
  spec = SPLITS[split]
  return [spec] if spec[0] is None else list(spec)


def _upsamplers_by_folder() -> dict[str, list[str]]:
  return {"/".join(filter(None, (split, subset))): list(kinds) for split in SPLITS for subset, kinds in _subsets(split)}


def _write_pngs(folder: str, images: np.ndarray, desc: str = ""):
  os.makedirs(folder)
  for i, img in enumerate(progress.track(images, desc=desc or f"write {folder}", unit="images")):
    Image.fromarray(img).save(os.path.join(folder, f"{i:05d}.png"), compress_level=1)


def write_dataset(out: str, size: int = 64, counts: dict | None = None, seed: int = 0) -> str:
  """Writes the data set under `out` (which must be absent or empty) and returns `out`.

  counts: {"train": n, "val": n, "test": n}, images per split (per subset for test), half real, half fake.
  Everything is written to a sibling temporary folder first, so `out` never holds a half-written data set.
  """
  counts = dict(train=600, val=200, test=200) if counts is None else dict(counts)
  out = os.path.normpath(os.fspath(out))
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise FileExistsError(f"{out}: exists and is not an empty folder; choose a new --out or delete it")
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
  try:
    for split_id, split in enumerate(SPLITS):
      n = counts.get(split, 0)
      for sub_id, (subset, kinds) in enumerate(_subsets(split) if n else []):
        # Own stream per (split, subset): changing one split's count leaves the others' images unchanged.
        rng = np.random.default_rng([seed, split_id, sub_id])
        real, fake, _ = generate(rng, n - n // 2, n // 2, size, kinds)
        folder = os.path.join(tmp, split, *([subset] if subset else []))
        name = "/".join(filter(None, (split, subset)))
        _write_pngs(os.path.join(folder, "0_real"), real, desc=f"write {name}/0_real")
        _write_pngs(os.path.join(folder, "1_fake"), fake, desc=f"write {name}/1_fake")
    info = dict(
        generator="distill.synthetic", size=size, counts=counts, seed=seed, labels={"0_real": 0, "1_fake": 1},
        fake_upsamplers=_upsamplers_by_folder(),
        quarter_resolution_fraction=QUARTER_FRACTION, grain_std=GRAIN, post_noise_variance_fraction=POST_NOISE,
        tconv_taps=[TCONV[0], TCONV[1], TCONV[0]],
        note="fakes: scene rendered at 1/2 or 1/4 resolution + grain, upsampled, + a little noise; reals: same "
             "scene distribution at full resolution + the same per-pixel grain variance")
    with open(os.path.join(tmp, "dataset.json"), "w") as f:
      json.dump(info, f, indent=2)
    if os.path.isdir(out):
      os.rmdir(out)  # empty, checked above
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output folder (absent or empty)")
  parser.add_argument("--size", type=int, default=64, help="image side, a multiple of 4")
  parser.add_argument("--train", type=int, default=600, help="training images (half real)")
  parser.add_argument("--val", type=int, default=200, help="validation images (half real)")
  parser.add_argument("--test", type=int, default=200, help="images per test subset (half real)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  counts = dict(train=args.train, val=args.val, test=args.test)
  write_dataset(args.out, size=args.size, counts=counts, seed=args.seed)
  print(f"wrote {counts} images of {args.size}px (test: per subset) to {args.out}")


if __name__ == "__main__":
  main()
