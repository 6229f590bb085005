"""Synthetic faces: a stand-in for the VLR face data set with real identity structure.

Each identity is a parametric face: oval shape and chin taper, skin tone, hair colour, hairline and
volume, eye spacing / size / shape / slant, iris colour, eyebrows, nose and mouth, plus FINE detail a few
pixels across at 112 px: moles, a skin texture (two sinusoidal gratings, 3-5 px wavelength) and a radial
iris pattern. Each image re-renders the identity under a new pose (rotation, shift, scale, horizontal
squash for yaw), illumination (directional gradient, brightness, contrast, white balance), expression
(smile, mouth opening, eye openness, brow raise, gaze) and noise on a random background.

Between-identity differences in the coarse parts are kept modest and the per-image nuisances large, so
identity is easy to tell at 112 px (fine detail) but much harder at 16 px, where a pixel averages a 7x7
block and the fine detail is gone (tests/test_facerec_data.py measures both).

Rendering is numpy only: every part is a signed distance (or soft mask) over the pixel grid, composited
with anti-aliased edges, channels first; a 112 px face takes about 3 ms on one CPU core.

CLI::

    python -m facerec.synthetic --out DIR [--subjects 40] [--images 8] [--eval_images N]
        [--test_subjects 20] [--size 112] [--seed 0]

writes DIR/train/<subject>/NNN.png and DIR/val/<subject>/NNN.png over the same subjects (different images),
DIR/test/<subject>/NNN.png over new subjects, and DIR/dataset.json with the parameters. val and test have
`eval_images` per subject (default max(images, 5): the seed's gallery of 3 plus at least 2 probes).
"""

import argparse
import json
import os
import shutil
import time

import numpy as np
from PIL import Image

from common import progress

SPLITS = {"train": 1, "val": 2, "test": 3}  # a split's code in the per-image seed

# Eye colours (brown, dark brown, hazel, green, blue, grey): a fine cue, the iris is ~6 px across at 112.
_IRIS = np.array([[0.40, 0.25, 0.12], [0.22, 0.13, 0.07], [0.50, 0.40, 0.18],
                  [0.30, 0.45, 0.25], [0.28, 0.42, 0.62], [0.45, 0.50, 0.55]])


def sample_identity(rng: np.random.Generator) -> dict:
  """Draws the parameters of one face identity, in face-local units (see `_ZOOM`)."""
  tone = rng.uniform()
  skin = (1 - tone) * np.array([0.86, 0.70, 0.58]) + tone * np.array([0.70, 0.52, 0.40])
  return _float32(dict(
      face_w=rng.uniform(0.53, 0.58), face_h=rng.uniform(0.68, 0.74),  # oval half-axes
      taper=rng.uniform(0.10, 0.25),  # how much narrower the jaw is than the cheeks
      skin=skin * rng.uniform(0.97, 1.03, 3),
      hair=rng.uniform(0.12, 0.35) * np.array([1.0, 0.75, 0.55]) ** rng.uniform(0.5, 1.5),
      hairline=rng.uniform(0.42, 0.55), part=rng.uniform(-0.3, 0.3),
      dip=rng.uniform(0.1, 0.5),  # how fast the hairline falls away from the parting
      volume=rng.uniform(0.05, 0.11), sides=rng.uniform(-0.15, 0.25),  # hair around / beside the face
      eye_x=rng.uniform(0.195, 0.225), eye_y=rng.uniform(0.04, 0.07),
      eye_w=rng.uniform(0.08, 0.095), eye_h=rng.uniform(0.034, 0.044),
      slant=rng.uniform(-0.15, 0.15),  # canthal tilt, radians
      iris_r=rng.uniform(0.033, 0.040), iris=_IRIS[rng.integers(len(_IRIS))] * rng.uniform(0.9, 1.1, 3),
      spokes=rng.integers(5, 12), spoke_phase=rng.uniform(0, 2 * np.pi), spoke_amp=rng.uniform(0.35, 0.6),
      brow_gap=rng.uniform(0.05, 0.07), brow_t=rng.uniform(0.028, 0.042), brow_arch=rng.uniform(0.0, 0.04),
      brow_len=rng.uniform(0.12, 0.15), brow_slope=rng.uniform(-0.12, 0.12),
      nose_y=rng.uniform(-0.20, -0.16), nose_w=rng.uniform(0.045, 0.06),
      mouth_y=rng.uniform(-0.45, -0.41), mouth_w=rng.uniform(0.14, 0.17),
      lip_u=rng.uniform(0.02, 0.03), lip_l=rng.uniform(0.026, 0.038), smile=rng.uniform(-0.01, 0.015),
      lips=skin * np.array([1.0, 0.72, 0.72]) * rng.uniform(0.85, 1.0),
      # Fine detail. Moles: x, y, radius, darkness (a fifth of them absent).
      moles=np.stack([rng.uniform(-0.4, 0.4, 5), rng.uniform(-0.55, 0.35, 5), rng.uniform(0.014, 0.024, 5),
                      rng.uniform(0.35, 0.6, 5) * (rng.uniform(size=5) < 0.8)], 1),
      # Skin texture, two gratings: frequency (3-5 px wavelength at 112), orientation, phase, amplitude.
      texture=np.stack([1 / rng.uniform(0.035, 0.06, 2), rng.uniform(0, np.pi, 2), rng.uniform(0, 2 * np.pi, 2),
                        rng.uniform(0.05, 0.09, 2)], 1),
  ))


def sample_image(rng: np.random.Generator, variation: float = 1.0) -> dict:
  """Draws one image's nuisances: pose, light, expression, background and noise.

  `variation` scales every nuisance around its neutral value (1: the default spread; 0: every image of a
  subject renders identically up to noise-free pose). Lower it for short CPU runs that must learn quickly.
  """
  v = float(variation)
  mix = lambda neutral, x: neutral + v * (x - neutral)  # the draw, pulled towards the neutral value
  squash = mix(1.0, rng.uniform(0.86, 1.0))
  return _float32(dict(
      angle=np.deg2rad(v * rng.uniform(-7, 7)), shift=v * rng.uniform(-0.05, 0.05, 2),
      scale=mix(1.0, rng.uniform(0.93, 1.07)),
      squash=squash, yaw=rng.choice([-1, 1]) * (1 - squash) * 0.6,  # inner features move with the turn
      light=rng.uniform(0, 2 * np.pi), light_k=v * rng.uniform(0.0, 0.35),
      brightness=mix(1.0, rng.uniform(0.8, 1.15)), contrast=mix(1.0, rng.uniform(0.85, 1.15)),
      white=mix(1.0, rng.uniform(0.93, 1.07, 3)),
      smile=mix(0.01, rng.uniform(-0.015, 0.035)), mouth_open=v * rng.uniform(0, 0.02) * (rng.uniform() < 0.3),
      eye_open=mix(0.85, rng.uniform(0.55, 1.1)), brow_raise=mix(0.005, rng.uniform(-0.01, 0.02)),
      gaze=v * rng.uniform(-0.012, 0.012, 2),
      background=mix(0.5, rng.uniform(0.15, 0.85) * rng.uniform(0.85, 1.15, 3)), bg_ramp=v * rng.uniform(-0.2, 0.2, 2),
      noise=mix(0.004, rng.uniform(0.004, 0.015)),
  ))


def _float32(params: dict) -> dict:
  # NumPy 2 promotes float32 arrays with float64 *scalars* to float64; float32 parameters keep the whole
  # render in float32, twice as fast.
  return {k: np.asarray(v, np.float32) if np.ndim(v) else np.float32(v) for k, v in params.items()}


# Face-local units -> canvas units ([-1, 1] across the image): puts the eyes (+-0.21, 0.05) and the mouth
# (0, -0.43) where the ArcFace 112x112 alignment template has them (eyes 35 px apart at row 52, mouth at
# row 92), so the crops look like the aligned faces a pretrained recogniser expects.
_ZOOM = 1.5


def _fill(d, px):
  """Anti-aliased coverage of the region d < 0 (d a distance in local units, px one pixel)."""
  return np.clip(0.5 - d / px, 0.0, 1.0)


def _over(img, alpha, color):
  """Composites `color` ((3,) or (3, H, W)) over `img` (3, H, W), a view updated in place, with coverage `alpha`.

  Channels come first: numpy broadcasts over a trailing axis of 3 about 30x slower.
  """
  color = np.asarray(color, np.float32)
  img += alpha * ((color[:, None, None] if color.ndim == 1 else color) - img)


def _norm(a, b):
  return np.sqrt(a * a + b * b)  # np.hypot guards against overflow, 4x slower


def _ellipse(x, y, cx, cy, ax, ay):
  """Approximate signed distance to an axis-aligned ellipse (exact for circles)."""
  return (_norm((x - cx) / ax, (y - cy) / ay) - 1.0) * min(ax, ay)


def render_face(p: dict, q: dict, rng: np.random.Generator, size: int) -> np.ndarray:
  """Renders identity `p` under nuisances `q` as uint8 (size, size, 3); `rng` draws only the pixel noise."""
  c = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
  gx, gy = np.meshgrid(c, -c)  # y up, row 0 at the top
  # Canvas -> face-local coordinates: undo shift, scale and rotation; the squash narrows the face (yaw).
  zoom = q["scale"] * _ZOOM
  cos, sin = np.cos(q["angle"]), np.sin(q["angle"])
  dx, dy = (gx - q["shift"][0]) / zoom, (gy - q["shift"][1]) / zoom
  x = (cos * dx + sin * dy) / q["squash"]
  y = -sin * dx + cos * dy
  px = 2.0 / (size * zoom)  # one pixel in local units: the anti-aliasing width

  def box(lx, ly, r):
    """Slices of the pixels within local distance r of the local point (lx, ly): small parts are drawn there
    only (the squash only shrinks distances, so the box is conservative)."""
    cx = zoom * (cos * lx * q["squash"] - sin * ly) + q["shift"][0]
    cy = zoom * (sin * lx * q["squash"] + cos * ly) + q["shift"][1]
    col, row, rad = (cx + 1) / 2 * size - 0.5, (1 - cy) / 2 * size - 0.5, r * zoom * size / 2 + 2
    return (slice(int(max(0, row - rad)), int(max(0, row + rad + 1))),
            slice(int(max(0, col - rad)), int(max(0, col + rad + 1))))

  img = q["background"][:, None, None] * (1 + q["bg_ramp"][0] * gx + q["bg_ramp"][1] * gy)  # (3, S, S)

  # Neck, back hair, face oval.
  _over(img, _fill(np.maximum(np.abs(x) - 0.3, y + 0.4), px), p["skin"] * 0.75)
  w, h, v = p["face_w"], p["face_h"], p["volume"]
  head = _ellipse(x, y, 0, 0.06, w + v, h + 0.6 * v)
  _over(img, _fill(np.maximum(head, p["sides"] - y), px), p["hair"])
  rho = _norm(x / (w * (1 - p["taper"] * np.clip(-y / h, 0, 1) ** 1.5)), y / h)
  face = _fill((rho - 1) * w, px)
  # Skin: roundness shading and the identity's texture, in face coordinates so both move with the face.
  skin = 1 - 0.22 * np.minimum(rho, 1) ** 4
  for freq, theta, phase, amp in p["texture"]:
    skin *= 1 + amp * np.sin((2 * np.pi * freq) * (x * np.cos(theta) + y * np.sin(theta)) + phase)
  _over(img, face, p["skin"][:, None, None] * skin)
  for mx, my, r, dark in p["moles"]:
    sl = box(mx, my, 2 * r)
    img[(slice(None),) + sl] *= 1 - dark * _fill(_norm(x[sl] - mx, y[sl] - my) - r, px)
  # Hair over the forehead, down to a hairline that falls away from the parting.
  line = p["hairline"] - 0.6 * p["dip"] * (x - p["part"]) ** 2
  _over(img, _fill(line - y, px) * _fill(head, px), p["hair"])

  # Inner features shift sideways with the head turn; the nose, sticking out, shifts more.
  yaw = q["yaw"]
  for side in (-1.0, 1.0):
    # Eye: an almond opened by the expression and tilted by the identity's slant; iris with radial pattern.
    ex, ey = side * p["eye_x"], p["eye_y"]
    sl = box(ex + yaw, ey, 1.3 * p["eye_w"])
    xs, ys, view = x[sl] - yaw, y[sl], img[(slice(None),) + sl]
    ca, sa = np.cos(side * p["slant"]), np.sin(side * p["slant"])
    u, t = ca * (xs - ex) + sa * (ys - ey), -sa * (xs - ex) + ca * (ys - ey)
    eye_h = p["eye_h"] * q["eye_open"]
    almond = _ellipse(u, t * (1 + 0.6 * np.abs(u) / p["eye_w"]), 0, 0, p["eye_w"], eye_h)
    inside = _fill(almond, px)
    _over(view, _fill(almond - 0.012, px) * 0.35, p["skin"] * 0.6)  # socket shadow
    _over(view, inside, [0.93, 0.91, 0.88])
    iu, it = u - q["gaze"][0], t - q["gaze"][1]
    ir = _norm(iu, it)
    spokes = 1 + p["spoke_amp"] * np.sin(p["spokes"] * np.arctan2(it, iu) + p["spoke_phase"])
    iris = p["iris"][:, None, None] * (spokes * (0.75 + 0.5 * ir / p["iris_r"]))
    iris = np.where(ir < 0.45 * p["iris_r"], np.float32(0.05), iris)  # pupil
    _over(view, inside * _fill(ir - p["iris_r"], px), iris)
    _over(view, _fill(np.abs(almond) - 0.005, px) * (t > -0.3 * eye_h), [0.12, 0.08, 0.06])  # upper lid, lashes

    # Eyebrow: a thick arc above the eye, in hair colour. Distance to the curve ~ vertical offset (it is
    # nearly flat), with rounded ends.
    inner = ex - side * 0.5 * p["brow_len"]
    lo, hi = sorted((inner, inner + side * p["brow_len"]))
    by = ey + p["eye_h"] + p["brow_gap"] + q["brow_raise"]
    sl = box((lo + hi) / 2 + yaw, by + p["brow_arch"], 0.6 * p["brow_len"] + p["brow_t"])
    xs, ys = x[sl] - yaw, y[sl]
    s = np.clip((xs - inner) * side / p["brow_len"], 0, 1)  # 0 at the inner end, 1 at the outer
    arc = by + p["brow_arch"] * 4 * s * (1 - s) + p["brow_slope"] * p["brow_len"] * s
    brow = _norm(np.maximum(np.maximum(lo - xs, xs - hi), 0), ys - arc) - p["brow_t"] * (1 - 0.4 * s) / 2
    _over(img[(slice(None),) + sl], _fill(brow, px) * 0.9, p["hair"] * 0.85)

  # Nose: shading beside the bridge, nostrils, a highlight on the tip.
  nyaw = 1.6 * yaw
  sl = box(nyaw, (p["eye_y"] + p["nose_y"]) / 2, 0.2)
  xn, ys = x[sl] - nyaw, y[sl]
  ridge = np.exp(-((np.abs(xn) - p["nose_w"] * 0.7) / 0.02) ** 2) * (ys < p["eye_y"]) * (ys > p["nose_y"])
  tip = np.exp(-(_norm(xn, ys - p["nose_y"] - 0.03) / 0.03) ** 2)
  view = img[(slice(None),) + sl]
  view *= (1 - 0.12 * ridge) * (1 + 0.08 * tip)
  for side in (-1.0, 1.0):
    nostril = _ellipse(xn, ys, side * p["nose_w"] * 0.55, p["nose_y"] - 0.012, 0.022, 0.011)
    _over(view, _fill(nostril, px) * 0.8, p["skin"] * 0.35)

  # Mouth: lips around a centre line bent by the smile, a dark gap when open.
  sl = box(yaw, p["mouth_y"], p["mouth_w"] + 0.02)
  xs, ys = x[sl] - yaw, y[sl]
  s = np.minimum((xs / p["mouth_w"]) ** 2, 1)
  mid = p["mouth_y"] + (p["smile"] + q["smile"]) * s
  top = mid + q["mouth_open"] / 2 + p["lip_u"] * (1 - s) * (1 - 0.25 * np.exp(-(xs / 0.02) ** 2))  # cupid's bow
  bottom = mid - q["mouth_open"] / 2 - p["lip_l"] * (1 - s)
  within = _fill(np.abs(xs) - p["mouth_w"], px)
  view = img[(slice(None),) + sl]
  _over(view, within * _fill(np.maximum(ys - top, bottom - ys), px), p["lips"])
  _over(view, within * _fill(np.abs(ys - mid) - q["mouth_open"] / 2 - 0.003, px), [0.25, 0.08, 0.08])

  # Illumination and sensor noise.
  img *= q["brightness"] * (1 + q["light_k"] * (gx * np.cos(q["light"]) + gy * np.sin(q["light"])))
  img *= q["white"][:, None, None]
  mean = img.mean()
  # Uniform noise of the drawn std: 5x cheaper to draw than Gaussian and as good a nuisance.
  noise = (rng.random(img.shape, np.float32) - 0.5) * np.float32(np.sqrt(12) * q["noise"])
  img = (img - mean) * q["contrast"] + mean + noise
  return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def generate(subjects, images: int, size: int = 112, seed: int = 0, split: str = "train",
             variation: float = 1.0) -> np.ndarray:
  """Renders `images` images of each subject id in `subjects`: uint8 (len(subjects), images, size, size, 3).

  Identity k is drawn from rng([seed, k, 0, 0]) and image j of it in `split` from rng([seed, k, code, j]),
  so a subject is the same face in every split and call, and splits never share an image.
  """
  out = np.empty((len(subjects), images, size, size, 3), np.uint8)
  for a, k in enumerate(progress.track(subjects, desc=f"render {split} faces", unit="subjects")):
    identity = sample_identity(np.random.default_rng([seed, k, 0, 0]))
    for j in range(images):
      rng = np.random.default_rng([seed, k, SPLITS[split], j])
      out[a, j] = render_face(identity, sample_image(rng, variation), rng, size)
  return out


def write_dataset(out: str, subjects: int = 40, images: int = 8, test_subjects: int = 20, size: int = 112,
                  seed: int = 0, eval_images: int | None = None, variation: float = 1.0) -> dict:
  """Writes the train/val/test folders and dataset.json under `out`; returns the json's content.

  Everything is written to `out`.partial first and renamed at the end, so `out` never holds half a data set.
  """
  eval_images = max(images, 5) if eval_images is None else eval_images
  if eval_images < 4:
    raise ValueError(f"eval_images={eval_images}: val/test need a gallery of 3 plus at least 1 probe per subject")
  if os.path.exists(out) and os.listdir(out):
    raise FileExistsError(f"{out} exists and is not empty; pick a new --out or delete it")
  start = time.time()
  tmp = out.rstrip("/") + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  ids = {"train": range(subjects), "val": range(subjects), "test": range(subjects, subjects + test_subjects)}
  for split, split_ids in ids.items():
    faces = generate(split_ids, images if split == "train" else eval_images, size, seed, split, variation)
    for k, per_subject in zip(split_ids, faces):
      folder = os.path.join(tmp, split, f"{k:04d}")
      os.makedirs(folder)
      for j, face in enumerate(per_subject):  # compression level 1: noisy pixels gain little from more
        Image.fromarray(face).save(os.path.join(folder, f"{j:03d}.png"), compress_level=1)
  meta = dict(generator="facerec.synthetic", subjects=subjects, images=images, eval_images=eval_images,
              test_subjects=test_subjects, size=size, seed=seed, variation=variation,
              splits={s: dict(subjects=len(v), images_per_subject=images if s == "train" else eval_images)
                      for s, v in ids.items()})
  with open(os.path.join(tmp, "dataset.json"), "w") as f:
    json.dump(meta, f, indent=2)
  if os.path.exists(out):
    os.rmdir(out)  # empty (checked above)
  os.replace(tmp, out)
  meta["seconds"] = time.time() - start
  return meta


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output directory (new or empty)")
  parser.add_argument("--subjects", type=int, default=40, help="subjects in train and val")
  parser.add_argument("--images", type=int, default=8, help="train images per subject")
  parser.add_argument("--eval_images", type=int, default=None, help="val/test images per subject (max(images, 5))")
  parser.add_argument("--test_subjects", type=int, default=20, help="new subjects in test")
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--variation", type=float, default=1.0, help="nuisance strength (pose, light, ...), 0-1")
  args = parser.parse_args(argv)
  meta = write_dataset(args.out, args.subjects, args.images, args.test_subjects, args.size, args.seed,
                       args.eval_images, args.variation)
  print(f"wrote {args.subjects} subjects x {args.images} train / {meta['eval_images']} val images and "
        f"{args.test_subjects} test subjects x {meta['eval_images']} at {args.size} px to {args.out} "
        f"in {meta['seconds']:.1f}s")


if __name__ == "__main__":
  main()
