"""Face data for very-low-resolution (VLR) recognition: subject folders, the gallery/probe protocol, VLR
degradation and P x K identity batches (spec 004).

Data sets are folders of aligned 112x112 faces, one sub-folder per subject:

    root/<subject_id>/*.png|jpg|jpeg      (extensions case-insensitive; files sorted by name)

`SubjectFolder` is a grain random-access source over such a folder. Every file is header-checked when the
source is built, so a bad data set fails (or is cleaned, with a warning) before training starts, not
inside a grain worker.

Evaluation follows the seed's protocol: within each subject, the first 3 images by file name are the HR
gallery and the rest are probes, degraded to VLR (`gallery_probe_split`, `AddVLRDeterministic`). When the
gallery and the probes come from two roots instead, `subject_overlap` checks that they share subjects
(the seed once evaluated a split whose ids did not line up).

`Degradation` turns an HR face into a VLR one: Gaussian blur (optics / motion), area or bicubic
down-sampling, sensor noise. `upsample_bicubic` brings VLR faces back to 112 px for the "direct-feed"
baseline, which shared/research/edgeface.md section 5.4 says to always report next to a super-resolution
(DSR) pipeline.

Contrastive fine-tuning needs several images of each subject in every batch: `PKOrder` gives
`common.data.train_iterator(order=...)` epochs of P subjects x K images blocks.
"""

from concurrent import futures
import dataclasses
import functools
import os
from typing import Sequence

from absl import logging
import grain
import jax.numpy as jnp
import numpy as np
from PIL import Image

from common import image_ops
from common import progress

EXTENSIONS = (".png", ".jpg", ".jpeg")
_SHOW = 5  # names listed in messages before "... (N more)"


class DataError(ValueError):
  """A data set problem the user must fix; the one-line message names the path and the fix."""


def _few(names: Sequence[str]) -> str:
  shown = ", ".join(str(n) for n in names[:_SHOW])
  return shown + (f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def _header(path: str):
  """(width, height) if PIL can parse and verify the file's header, else the error text.

  `verify` checks structure (PNG chunk CRCs, JPEG markers) without decoding pixels, so a data set of
  many thousand faces is checked in seconds; a file that passes but still fails to decode is reported
  by name in `SubjectFolder.__getitem__`.
  """
  try:
    with Image.open(path) as im:
      size = im.size
      im.verify()
    return size
  except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError, ...)
    return f"{type(e).__name__}: {e}"


def _image_files(folder: str) -> list[str]:
  return sorted(f for f in os.listdir(folder)
                if f.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def _subject_dirs(root: str) -> list[str]:
  if not os.path.isdir(root):
    raise DataError(f"{root}: no such folder; pass a folder holding one sub-folder of face images per subject")
  # Hidden folders (.ipynb_checkpoints, .cache) are tool debris, never subjects.
  subjects = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
  if not subjects:
    raise DataError(f"{root}: no subject folders; expected {root}/<subject_id>/*.png|jpg|jpeg")
  return subjects


class SubjectFolder:
  """Random-access source over root/<subject_id>/*.{png,jpg,jpeg} for grain.

  Element i is {"image": float32 (S, S, 3) RGB in [0, 1], "label": int32 index into `subjects`,
  "index": int32 i}. Greyscale, palette and RGBA files are converted to RGB (alpha dropped).

  Attributes:
    subjects: subject ids (folder names), sorted; only folders with at least one readable image.
    files: image paths, subject-major (in `subjects` order) and sorted by file name within a subject.
    labels: int32 (len(files),), the subject index of each file.

  Construction checks every header: unreadable files are dropped with one warning listing them, unless
  they are more than `max_bad_fraction` of the folder (then DataError). Faces must already be S x S
  (aligned crops); `resize=True` resizes others bicubically instead of failing.
  """

  def __init__(self, root: str, *, image_size: int = 112, resize: bool = False, max_bad_fraction: float = 0.01,
               name: str | None = None):
    self.root = os.path.normpath(os.fspath(root))
    self.image_size, self.resize = image_size, resize
    self.name = name or os.path.basename(self.root)
    subject_dirs = _subject_dirs(self.root)
    listed = {s: _image_files(os.path.join(self.root, s)) for s in subject_dirs}
    empty = [s for s in subject_dirs if not listed[s]]
    if len(empty) == len(subject_dirs):
      raise DataError(f"{self.root}: none of its {len(subject_dirs)} subject folders holds .png/.jpg/.jpeg "
                      f"images (e.g. {os.path.join(self.root, empty[0])}); put each subject's faces in its folder")
    if empty:
      logging.warning("%s: skipping %d subject folder(s) with no .png/.jpg/.jpeg images: %s",
                      self.root, len(empty), _few(empty))

    paths = [os.path.join(self.root, s, f) for s in subject_dirs for f in listed[s]]
    with futures.ThreadPoolExecutor(16) as pool:  # file I/O bound; helps most on network storage
      headers = list(progress.track(pool.map(_header, paths), total=len(paths),
                                    desc=f"{self.root}: checking images", unit="files"))
    bad = [f"{p} ({h})" for p, h in zip(paths, headers) if isinstance(h, str)]
    if len(bad) > max_bad_fraction * len(paths):
      raise DataError(f"{self.root}: {len(bad)} of {len(paths)} images are unreadable (more than max_bad_fraction="
                      f"{max_bad_fraction}): {_few(bad)}; re-export or delete them, or raise max_bad_fraction")
    if bad:
      logging.warning("%s: dropping %d unreadable image(s) of %d: %s", self.root, len(bad), len(paths), _few(bad))
    good = [(p, h) for p, h in zip(paths, headers) if not isinstance(h, str)]
    wrong = [(p, h) for p, h in good if h != (image_size, image_size)]
    if wrong and not resize:
      (path, (w, h)), n = wrong[0], len(wrong)
      raise DataError(f"{path} is {w}x{h}, not {image_size}x{image_size} ({n} of {len(good)} images are off-size); "
                      f"align/resize faces to {image_size}x{image_size}, or pass resize=True")

    self.files = [p for p, _ in good]
    subject_of = [os.path.basename(os.path.dirname(p)) for p in self.files]
    self.subjects = sorted(set(subject_of))  # a folder whose every file was bad is no subject
    position = {s: k for k, s in enumerate(self.subjects)}
    self.labels = np.array([position[s] for s in subject_of], np.int32)
    self._starts = np.searchsorted(self.labels, np.arange(len(self.subjects) + 1)).astype(np.int64)

  def subject_indices(self, label: int) -> np.ndarray:
    """Indices of subject `label`'s images, in file-name order."""
    return np.arange(self._starts[label], self._starts[label + 1])

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    path = self.files[int(i)]
    try:
      with Image.open(path) as im:
        im = im.convert("RGB")
    except Exception as e:  # the header passed at construction: a truncated body, or the file changed since
      raise DataError(f"{path}: cannot decode ({type(e).__name__}: {e}); re-export or delete this file") from e
    size = self.image_size
    if im.size != (size, size):
      if not self.resize:
        raise DataError(f"{path} is {im.size[0]}x{im.size[1]}, not {size}x{size}; "
                        f"align/resize faces to {size}x{size}, or pass resize=True")
      im = im.resize((size, size), Image.BICUBIC)
    return {"image": np.asarray(im, np.float32) / np.float32(255), "label": self.labels[int(i)],
            "index": np.int32(i)}

  def __repr__(self):  # grain checks repr(source) on restore: keep it stable
    return (f"SubjectFolder({self.name}, subjects={len(self.subjects)}, images={len(self.files)}, "
            f"image_size={self.image_size}, resize={self.resize})")


class Subset:
  """`source` restricted to `indices` (e.g. the probes of `gallery_probe_split`).

  Elements keep their own "index" (the position in `source`), so `AddVLRDeterministic` degrades a probe
  the same way whichever subset or batch size it is read through.
  """

  def __init__(self, source, indices: np.ndarray, name: str = "subset"):
    self.source, self.indices, self.name = source, np.asarray(indices, np.int64), name

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]

  def __repr__(self):
    return f"Subset({self.source!r}, {self.name}, n={len(self.indices)})"


# ----------------------------------------------------------------------------------------------
# Evaluation protocol
# ----------------------------------------------------------------------------------------------
def gallery_probe_split(folder: SubjectFolder, gallery_per_subject: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """The seed's protocol: per subject, the first `gallery_per_subject` images by file name are the HR gallery
  and the rest are probes. Subjects without at least one probe are left out (one warning names them).

  Returns (gallery indices, probe indices) into `folder`, both subject-major.
  """
  gallery, probes, skipped = [], [], []
  for label, subject in enumerate(folder.subjects):
    idx = folder.subject_indices(label)
    if len(idx) <= gallery_per_subject:
      skipped.append(f"{subject} ({len(idx)})")
      continue
    gallery.append(idx[:gallery_per_subject])
    probes.append(idx[gallery_per_subject:])
  if not gallery:
    raise DataError(f"{folder.root}: no subject has more than {gallery_per_subject} images, so none has both a "
                    f"gallery of {gallery_per_subject} and a probe; add images or lower gallery_per_subject")
  if skipped:
    logging.warning("%s: %d of %d subjects have fewer than %d images (gallery %d + 1 probe) and are left out of "
                    "the gallery/probe split: %s", folder.root, len(skipped), len(folder.subjects),
                    gallery_per_subject + 1, gallery_per_subject, _few(skipped))
  return np.concatenate(gallery), np.concatenate(probes)


def _subjects_of(data) -> tuple[str, list[str]]:
  if isinstance(data, SubjectFolder):
    return data.root, data.subjects
  root = os.path.normpath(os.fspath(data))
  return root, [s for s in _subject_dirs(root) if _image_files(os.path.join(root, s))]


def subject_overlap(gallery_root, probe_root) -> dict:
  """Which subject ids a gallery and a probe set (roots or `SubjectFolder`s) share.

  Closed-set identification scores a probe against its own subject's gallery entry, so a probe subject
  missing from the gallery can only be a miss. Returns counts ("gallery", "probe", "both", "only_gallery",
  "only_probe"), the first few names of each "only_*" set ("only_gallery_names", "only_probe_names") and
  "overlap", the fraction of probe subjects present in the gallery. DataError when they share none.
  """
  g_root, g = _subjects_of(gallery_root)
  p_root, p = _subjects_of(probe_root)
  both = sorted(set(g) & set(p))
  if not both:
    raise DataError(f"gallery {g_root} ({len(g)} subjects, e.g. {_few(g[:3])}) and probes {p_root} ({len(p)}, e.g. "
                    f"{_few(p[:3])}) share no subject id; name each subject's folder the same in both")
  only_g, only_p = sorted(set(g) - set(p)), sorted(set(p) - set(g))
  return {"gallery": len(g), "probe": len(p), "both": len(both), "only_gallery": len(only_g),
          "only_probe": len(only_p), "only_gallery_names": only_g[:_SHOW], "only_probe_names": only_p[:_SHOW],
          "overlap": len(both) / len(p)}


# ----------------------------------------------------------------------------------------------
# VLR degradation
# ----------------------------------------------------------------------------------------------
def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


@functools.lru_cache(maxsize=32)
def _down_matrix(n: int, m: int, kind: str) -> np.ndarray:
  """(m, n) matrix of one separable n -> m down-sampling pass.

  "area": each output pixel is the mean of the input area it covers, fractional overlaps at its edges, as
  cv2.INTER_AREA (PIL's BOX and torch's adaptive pooling count whole pixels instead; all agree for integer
  factors such as 112 -> 16). "bicubic": PIL's antialiased bicubic (Keys a=-0.5 widened by the scale, taps
  past the border dropped, rows renormalised), equal to PIL's `resize(BICUBIC)` to 1e-7.
  """
  scale = n / m
  lo = np.arange(m)[:, None] * scale  # output pixel i covers [i * scale, (i + 1) * scale) of the input
  j = np.arange(n)[None, :]
  if kind == "area":
    w = np.clip(np.minimum(j + 1, lo + scale) - np.maximum(j, lo), 0, None)
  else:
    w = _cubic((j + 0.5 - (lo + scale / 2)) / max(scale, 1.0))
  return w / w.sum(1, keepdims=True)


def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
  """(n, n) Gaussian blur; taps past the border dropped and rows renormalised (no dark frame)."""
  if sigma <= 0:
    return np.eye(n)
  d = np.arange(n)[:, None] - np.arange(n)[None, :]
  w = np.exp(-0.5 * (d / sigma) ** 2) * (np.abs(d) <= 4 * sigma)
  return w / w.sum(1, keepdims=True)


def _range(value, what: str) -> tuple[float, float]:
  lo, hi = (value, value) if np.isscalar(value) else tuple(value)
  if not 0 <= lo <= hi:
    raise ValueError(f"Degradation {what}={value!r}: need 0 <= low <= high (or one number)")
  return float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class Degradation:
  """HR face (S, S, 3) in [0, 1] -> VLR face (vlr_size, vlr_size, 3) float32 in [0, 1].

  Blur with a Gaussian of sigma ~ U(blur_sigma) (in HR pixels), down-sample ("area" or antialiased
  "bicubic"), add N(0, std) noise with std ~ U(noise_std) at VLR, clip. Each range may be one number
  (fixed). Blur and down-sampling are one (vlr, S) matrix per axis, so a call costs two small matmuls.
  """
  vlr_size: int = 16
  blur_sigma: float | tuple[float, float] = (0.5, 1.5)
  noise_std: float | tuple[float, float] = (0.0, 0.02)
  down: str = "area"

  def __post_init__(self):
    _range(self.blur_sigma, "blur_sigma")
    _range(self.noise_std, "noise_std")
    if self.down not in ("area", "bicubic"):
      raise ValueError(f"Degradation down={self.down!r}: use 'area' or 'bicubic'")
    if self.vlr_size < 1:
      raise ValueError(f"Degradation vlr_size={self.vlr_size}: must be >= 1")

  def _check(self, hr) -> tuple[int, int]:
    h, w = hr.shape[:2]
    if min(h, w) < self.vlr_size:
      raise ValueError(f"Degradation to {self.vlr_size} px of a {h}x{w} image: it would up-sample")
    return h, w

  def draw(self, rng: np.random.Generator, channels: int = 3) -> tuple[float, float, np.ndarray]:
    """One example's random draw: (sigma, std, noise), noise N(0, 1) of shape (vlr, vlr, channels).

    Split from `apply` so `facerec.augment.degrade_with` can be checked against the host for the same draw.
    The rng calls and their order are those of the original single `__call__` (seeded probes unchanged):
    with std == 0 no noise is drawn and `noise` is zeros.
    """
    sigma = rng.uniform(*_range(self.blur_sigma, "blur_sigma"))
    std = rng.uniform(*_range(self.noise_std, "noise_std"))
    shape = (self.vlr_size, self.vlr_size, channels)
    # normal(0, std) is 0 + std * standard_normal from the same stream, so scaling in `apply` is bit-identical.
    noise = rng.standard_normal(shape) if std > 0 else np.zeros(shape)
    return sigma, std, noise

  def apply(self, hr: np.ndarray, sigma: float, std: float, noise: np.ndarray) -> np.ndarray:
    """The degradation for a given draw (see `draw`), in float64 -> float32."""
    h, w = self._check(hr)
    # einsum's own loops, not BLAS: these products are tiny, and a multi-threaded BLAS call on a busy
    # machine (grain workers) costs 10x the arithmetic in thread hand-offs.
    rows = np.einsum("ij,jk->ik", _down_matrix(h, self.vlr_size, self.down), _gauss_matrix(h, sigma))
    cols = rows if w == h else np.einsum("ij,jk->ik", _down_matrix(w, self.vlr_size, self.down),
                                         _gauss_matrix(w, sigma))
    vlr = np.einsum("ih,hwc->iwc", rows, np.asarray(hr, np.float64))
    vlr = np.einsum("jw,iwc->ijc", cols, vlr)
    vlr = vlr + std * noise if std > 0 else vlr
    return np.clip(vlr, 0.0, 1.0).astype(np.float32)

  def __call__(self, hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    self._check(hr)  # before drawing, as before the draw/apply split
    return self.apply(hr, *self.draw(rng, hr.shape[-1]))


class AddVLR(grain.transforms.RandomMap):
  """Training: element[vlr_key] = degradation(element[key]) with a fresh draw per element and epoch.

  Put it after any flip/crop of the HR image so the pair stays aligned.
  """

  def __init__(self, degradation: Degradation | None = None, key: str = "image", vlr_key: str = "vlr"):
    self.degradation, self.key, self.vlr_key = degradation or Degradation(), key, vlr_key

  def random_map(self, element, rng: np.random.Generator):
    return {**element, self.vlr_key: self.degradation(element[self.key], rng)}


class AddVLRDeterministic(grain.transforms.Map):
  """Evaluation: like `AddVLR`, but the draw is seeded by (seed, element["index"]), so every run and every
  model sees exactly the same probes, whatever the batch size, worker count or subset."""

  def __init__(self, degradation: Degradation | None = None, seed: int = 0, key: str = "image",
               vlr_key: str = "vlr"):
    self.degradation, self.seed, self.key, self.vlr_key = degradation or Degradation(), seed, key, vlr_key

  def map(self, element):
    if "index" not in element:
      raise KeyError(f"AddVLRDeterministic seeds each draw with element['index'], but the element has only "
                     f"{sorted(element)}; read from a SubjectFolder (or add an 'index' field)")
    rng = np.random.default_rng([self.seed, int(element["index"])])
    return {**element, self.vlr_key: self.degradation(element[self.key], rng)}


def upsample_bicubic(vlr, size: int = 112):
  """VLR faces (..., h, w, 3) -> (..., size, size, 3) jax array, clipped to [0, 1]: the direct-feed baseline.

  JAX (jit-able, on device), torch's `interpolate(mode="bicubic", align_corners=False)` exactly, as the
  PyTorch seed up-sampled. Clipping removes the cubic kernel's overshoot so inputs keep the [0, 1] range
  the recogniser's normalisation expects.
  """
  x = jnp.asarray(vlr, jnp.float32)
  return jnp.clip(image_ops.resize_bicubic_torch(x, (size, size)), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# P x K identity batches
# ----------------------------------------------------------------------------------------------
class _Deck:
  """Deals items 0..n-1 in reshuffled rounds, so every item comes up once per round.

  `deal(k)` (k <= n) never repeats an item: when a round runs out mid-deal, the items just dealt go to
  the end of the next round's order.
  """

  def __init__(self, n: int, rng: np.random.Generator):
    self.n, self.rng = n, rng
    self.order, self.pos = rng.permutation(n), 0

  def deal(self, k: int) -> np.ndarray:
    head = self.order[self.pos:self.pos + k]
    self.pos += len(head)
    if len(head) < k:
      fresh = self.rng.permutation(self.n)
      self.order = np.concatenate([fresh[~np.isin(fresh, head)], head])
      self.pos = k - len(head)
      head = np.concatenate([head, self.order[:self.pos]])
    return head


class PKOrder:
  """P x K sampler for contrastive batches: each block of `batch_size` consecutive indices is P distinct
  subjects x K = `images_per_subject` images each (subject-major), so every anchor has K - 1 positives
  and (P - 1) K negatives in its batch.

  Subjects are dealt in reshuffled rounds (each appears equally often, whatever its image count), and each
  subject's images in their own rounds: K distinct images when it has >= K, else all of them plus random
  repeats. An epoch is as many examples as there are labels, rounded down to whole batches (at least one).
  The order depends only on (epoch, seed), as `common.data.train_iterator(order=...)` requires; `batch_size`
  is the GLOBAL batch (over all processes).
  """

  def __init__(self, labels: np.ndarray, batch_size: int, images_per_subject: int):
    labels = np.asarray(labels)
    if labels.ndim != 1 or not len(labels):
      raise DataError(f"PKOrder: labels must be a non-empty 1-D array, got shape {labels.shape}")
    k = images_per_subject
    if k < 1 or batch_size < 1 or batch_size % k:
      raise DataError(f"PKOrder: batch_size {batch_size} is not a multiple of images_per_subject {k}; "
                      f"use batch_size = P x {k} (P subjects per batch)")
    self.batch_size, self.images_per_subject, self.subjects_per_batch = batch_size, k, batch_size // k
    subjects, inverse = np.unique(labels, return_inverse=True)
    if len(subjects) < self.subjects_per_batch:
      raise DataError(f"PKOrder: {len(subjects)} subjects, fewer than the P = {self.subjects_per_batch} distinct "
                      f"subjects a batch of {batch_size} = P x {k} needs; lower batch_size or raise images_per_subject")
    by_subject = np.argsort(inverse, kind="stable")
    self.members = np.split(by_subject, np.cumsum(np.bincount(inverse))[:-1])
    self.num_labels = len(labels)
    self.num_batches = max(1, len(labels) // batch_size)

  def __len__(self):
    return self.num_batches * self.batch_size

  def indices(self, epoch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch])
    k = self.images_per_subject
    subjects = _Deck(len(self.members), rng)
    decks = {}
    out = np.empty((self.num_batches * self.subjects_per_batch, k), np.int64)
    for row, s in enumerate(np.concatenate([subjects.deal(self.subjects_per_batch)
                                            for _ in range(self.num_batches)])):
      members = self.members[s]
      if len(members) >= k:
        if s not in decks:
          decks[s] = _Deck(len(members), rng)
        out[row] = members[decks[s].deal(k)]
      else:  # too few images: all of them, then repeats
        out[row] = members[np.concatenate([rng.permutation(len(members)),
                                           rng.integers(0, len(members), k - len(members))])]
    return out.reshape(-1)

  def __repr__(self):  # part of the train iterator's repr, which grain checks on restore
    return (f"PKOrder(n={self.num_labels}, subjects={len(self.members)}, batch_size={self.batch_size}, "
            f"images_per_subject={self.images_per_subject})")
