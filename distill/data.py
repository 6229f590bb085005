"""Real-vs-fake image folders (WildRF, ForenSynth, `distill.synthetic`) as grain sources, and LaDeDa's transforms.

Layouts (labels: real = 0, fake = 1; shared/research/ladeda.md section 4):

    root/<split>/{real,fake}/*             or   root/<split>/{0_real,1_fake}/*                    (one set)
    root/test/{reddit,twitter,facebook}/{0_real,1_fake}/*                                         (WildRF subsets)
    root/train/progan/{airplane,...}/{0_real,1_fake}/*                                            (ForenSynth, nested)

Any directory that directly holds the two class folders is a *subset*; `split_sources` returns one source per
subset (for per-platform / per-generator evaluation) and `split_source` one source over the whole split (training).
Every file's header is checked when a source is built, so a bad folder fails before training starts rather than
inside a grain worker; a few unreadable files are dropped with a warning, more than `max_bad_fraction` is an error.

Transforms follow the official pipeline: torchvision `Resize((256, 256))` -> RandomCrop 224 + flip (train) /
CenterCrop 224 (val) / no crop (test) -> ImageNet `Normalize`. In training the host only resizes (to uint8) and the
crop, flip and normalisation run batched in the step (`device_train_transform`). torchvision resizes PIL images on uint8 with PIL's
antialiased bilinear filter; `PilResize` does exactly that, because NPR (x - nearest_up(nearest_down(x))) reads the
pixel-level correlations that the resampling filter writes, so the filter is part of what the teacher learnt.

    sources = split_sources("/data/WildRF", "test")          # {"facebook": ..., "reddit": ..., "twitter": ...}
    it = common.data.train_iterator(split_source("/data/WildRF", "train"), local_batch=32,
                                    transforms=train_transforms())     # uint8 256 x 256; device_train_transform
"""

import concurrent.futures
import operator
import os
from typing import Sequence

from absl import logging
import grain
import jax
import numpy as np
from PIL import Image

from common import augment, data as common_data
from common import progress

CLASS_DIRS = ((0, ("real", "0_real")), (1, ("fake", "1_fake")))  # (label, accepted folder names)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_MAX_LISTED = 10  # bad files named in the warning


class DataError(ValueError):
  """A data folder that cannot be used as given; the message names the path and the fix."""


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
def _skipped(name: str) -> bool:
  # Hidden entries and macOS zip debris (`__MACOSX/`, `._x.jpg` resource forks) are not data; counting the
  # resource forks as unreadable images would fail a whole folder that unzipped fine.
  return name.startswith(".") or name == "__MACOSX"


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not _skipped(e.name))


def _class_dir(folder: str, label: int, names: tuple[str, str], present: list[str]) -> str:
  found = [n for n in names if n in present]
  kind = ("real", "fake")[label]
  if not found:
    raise DataError(f"{folder}: no {kind} class folder (looked for {' and '.join(map(repr, names))}; found "
                    f"{present or 'no sub-folders'}); put the {kind} images in {os.path.join(folder, names[1])}")
  if len(found) > 1:
    raise DataError(f"{folder}: both {found[0]!r} and {found[1]!r} hold {kind} images; merge them into one")
  return os.path.join(folder, found[0])


def _list_images(class_dir: str) -> list[str]:
  files = sorted(e.path for e in os.scandir(class_dir)
                 if e.is_file() and not _skipped(e.name) and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS)
  if not files:
    raise DataError(f"{class_dir}: no images ({'/'.join(x[1:] for x in IMAGE_EXTS)}); add some or fix the path")
  return files


def _is_readable(path: str) -> bool:
  # open() parses the header; verify() also checks PNG chunk CRCs (truncation, bit rot). JPEG bodies are only
  # decoded in __getitem__, which then names the file: a full decode of every file here would cost minutes on
  # ForenSynth's 720k images.
  try:
    with Image.open(path) as img:
      img.verify()
    return True
  except Exception:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) for a bad file
    return False


def _check_balance(name: str, num_real: int, num_fake: int, ratio: float):
  if min(num_real, num_fake) * ratio < max(num_real, num_fake):
    logging.warning("%s: class imbalance, %d real vs %d fake (more than %.2gx); AUC/AP are unaffected but accuracy "
                    "at threshold 0.5 and the BCE loss will lean to the majority class", name, num_real, num_fake,
                    ratio)


class ImageFolderSource:
  """Random-access source over `folder/{real|0_real, fake|1_fake}/*` images for grain.

  Item i is {"image": float32 (H, W, 3) RGB in [0, 1] at the file's own size, "label": int32 (0 real, 1 fake),
  "index": int32 i}. Greyscale, palette and RGBA files become RGB as in torchvision's loader (alpha dropped).
  Only paths and labels are stored, so the source pickles cheaply into grain worker processes.
  """

  def __init__(self, folder: str, *, max_bad_fraction: float = 0.01, imbalance_ratio: float = 1.5,
               name: str | None = None):
    self.folder = os.path.normpath(os.fspath(folder))
    self.name = name or os.path.basename(self.folder)
    if not os.path.isdir(self.folder):
      raise DataError(f"{self.folder}: not a directory; point to a folder holding real/ (or 0_real/) and fake/ "
                      "(or 1_fake/)")
    present = _subdirs(self.folder)
    files, labels = [], []
    for label, names in CLASS_DIRS:
      class_files = _list_images(_class_dir(self.folder, label, names, present))
      files += class_files
      labels += [label] * len(class_files)

    # Threads, not processes: the check is mostly file I/O (network file systems) and zlib CRCs, both GIL-free.
    with concurrent.futures.ThreadPoolExecutor(min(16, 2 * (os.cpu_count() or 1))) as pool:
      ok = list(progress.track(pool.map(_is_readable, files, chunksize=64), total=len(files),
                               desc=f"{self.folder}: checking images", unit="files"))
    bad = [f for f, good in zip(files, ok) if not good]
    if bad:
      fraction = len(bad) / len(files)
      listed = ", ".join(bad[:_MAX_LISTED]) + (f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else "")
      if fraction > max_bad_fraction:
        raise DataError(f"{self.folder}: {len(bad)} of {len(files)} images ({fraction:.1%}) are unreadable, more than "
                        f"max_bad_fraction={max_bad_fraction:g} (e.g. {listed}); re-download or delete them")
      logging.warning("%s: skipping %d unreadable image(s) of %d: %s", self.folder, len(bad), len(files), listed)
      files = [f for f, good in zip(files, ok) if good]
      labels = [l for l, good in zip(labels, ok) if good]
      for label, names in CLASS_DIRS:
        if label not in labels:
          raise DataError(f"{self.folder}: every {names[0]} image is unreadable; re-download them")
    self._set(files, labels)
    _check_balance(self.folder, self.num_real, self.num_fake, imbalance_ratio)

  def _set(self, files: list[str], labels: list[int]):
    self.files = files
    self.labels = np.asarray(labels, np.int32)
    self.num_fake = int(self.labels.sum())
    self.num_real = len(files) - self.num_fake

  @classmethod
  def concat(cls, sources: Sequence["ImageFolderSource"], *, folder: str, name: str,
             imbalance_ratio: float = 1.5) -> "ImageFolderSource":
    """One source over several (already checked) ones, in order; warns on the imbalance of the union."""
    self = cls.__new__(cls)
    self.folder, self.name = os.path.normpath(folder), name
    self._set([f for s in sources for f in s.files], [l for s in sources for l in s.labels.tolist()])
    _check_balance(self.folder, self.num_real, self.num_fake, imbalance_ratio)
    return self

  def __len__(self):
    return len(self.files)

  def __getitem__(self, index):
    i = operator.index(index)
    path = self.files[i]
    try:
      with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    except Exception as e:  # decode errors past the header check (truncated JPEG, ...)
      raise DataError(f"{path}: cannot decode ({type(e).__name__}: {e}); re-download or delete it") from e
    return {"image": rgb.astype(np.float32) / 255.0, "label": self.labels[i], "index": np.int32(i)}

  def __repr__(self):  # grain checks repr(source) on restore: keep it stable
    return f"ImageFolderSource({self.folder!r}, real={self.num_real}, fake={self.num_fake})"


def _split_dir(root: str, split: str) -> str:
  root = os.path.normpath(os.fspath(root))
  if not os.path.isdir(root):
    raise DataError(f"{root}: data root not found; check the path (or make one with "
                    "`python -m distill.synthetic --out DIR`)")
  path = os.path.join(root, split)
  if not os.path.isdir(path):
    raise DataError(f"{path}: split {split!r} not found; {root} has {_subdirs(root) or 'no sub-folders'}")
  return path


def _is_subset(path: str) -> bool:
  names = set(_subdirs(path))
  return any(n in names for _, ns in CLASS_DIRS for n in ns)


def split_sources(root: str, split: str, **kw) -> dict[str, ImageFolderSource]:
  """{subset name: source} for every folder under root/split that directly holds class folders.

  When root/split holds them itself the single entry is named `split`; otherwise names are paths relative to
  root/split ("reddit", "progan/airplane"), sorted. A folder holding only one class folder is an error, not
  skipped, so a half-copied subset cannot silently vanish from an evaluation. `kw` goes to `ImageFolderSource`.
  """
  top = _split_dir(root, split)
  if _is_subset(top):
    return {split: ImageFolderSource(top, name=split, **kw)}
  found = []
  for dirpath, dirnames, _ in os.walk(top):
    dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
    if dirpath != top and _is_subset(dirpath):
      found.append(dirpath)
      dirnames[:] = []  # a subset's class folders hold images, not further subsets
  if not found:
    raise DataError(f"{top}: no folder with real/ (or 0_real/) and fake/ (or 1_fake/) inside; it has "
                    f"{_subdirs(top) or 'no sub-folders'}; arrange it as {split}/[subset/]0_real and 1_fake")
  sources = {}
  for path in found:
    name = os.path.relpath(path, top).replace(os.sep, "/")
    sources[name] = ImageFolderSource(path, name=name, **kw)
  return sources


def split_source(root: str, split: str, **kw) -> ImageFolderSource:
  """All of root/split as one source (subsets concatenated in name order), e.g. for training."""
  ratio = kw.pop("imbalance_ratio", 1.5)
  # Subsets may be lopsided on their own (ForenSynth classes, WildRF platforms); only the union's balance matters.
  sources = split_sources(root, split, imbalance_ratio=float("inf"), **kw)
  if len(sources) == 1:
    src = next(iter(sources.values()))
    _check_balance(src.folder, src.num_real, src.num_fake, ratio)
    return src
  return ImageFolderSource.concat(list(sources.values()), folder=os.path.join(root, split), name=split,
                                  imbalance_ratio=ratio)


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------
class PilResize(grain.transforms.Map):
  """Resize to (h, w) with PIL on uint8, as torchvision `Resize` does on PIL images (bilinear is antialiased).

  Source images are k/255 exactly, so the uint8 round trip loses nothing before the resize and rounds after it
  just as torchvision's `ToTensor` input would be.
  """

  def __init__(self, size: int | tuple[int, int], resample: str = "bilinear", key: str = "image", uint8: bool = False):
    self.hw = (size, size) if isinstance(size, int) else tuple(size)
    self.filter = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[resample]
    self.key, self.uint8 = key, uint8  # uint8: return the resized bytes (training ships them to the device)

  def map(self, element):
    img = element[self.key]
    u8 = img if img.dtype == np.uint8 else np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if img.shape[:2] != self.hw:
      u8 = np.asarray(Image.fromarray(u8).resize(self.hw[::-1], self.filter))
    elif not self.uint8:
      return element
    return {**element, self.key: u8 if self.uint8 else np.asarray(u8, np.float32) / 255.0}


def _resize(size: int, resample: str, uint8: bool = False):
  # "float_bicubic" keeps common.data's float path (no uint8 rounding); the others match torchvision on PIL.
  if resample == "float_bicubic":
    return [common_data.Resize(size)] + ([common_data.ToUint8()] if uint8 else [])
  return [PilResize(size, resample, uint8=uint8)]


def train_transforms(resize: int = 256, resample: str = "bilinear") -> list:
  """The host half of the official train mode: Resize(resize, resize) to uint8 (see `device_train_transform`)."""
  return _resize(resize, resample, uint8=True)


def device_train_transform(crop: int = 224, flip: bool = True):
  """The device half, batched in the step: RandomCrop(crop) -> [RandomFlip] -> ImageNet Normalize."""

  def transform(batch, rng):
    crop_rng, flip_rng = jax.random.split(rng)
    x = augment.random_crop(augment.to_float(batch["image"]), crop_rng, crop)
    if flip:
      x = augment.random_flip(x, flip_rng)
    return {**batch, "image": augment.normalize(x)}

  return transform


def eval_transforms(resize: int = 256, crop: int | None = 224, resample: str = "bilinear") -> list:
  """Resize -> CenterCrop(crop) -> Normalize (official val); crop=None keeps the full resized image (official test)."""
  ts = _resize(resize, resample)
  if crop is not None:
    ts.append(common_data.CenterCrop(crop))
  return ts + [common_data.Normalize()]
