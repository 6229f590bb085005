"""Real-vs-fake image folders to ArrayRecord shards, and readers that mirror `split_source` / `split_sources`.

    python -m distill.prepare_data --src /data/WildRF --dst /shared/WildRF-records [--splits train,val,test]
        [--image_size S] [--num_shards N]

DST gets the source's split/subset tree, each subset a record directory (common.records) holding the image,
its label (0 real, 1 fake) and its file name relative to SRC:

    DST/train/                  (records)       from SRC/train/{0_real,1_fake}
    DST/test/reddit/            (records)       from SRC/test/reddit/{0_real,1_fake}

Files are listed and checked by `distill.data.split_sources`, so unreadable ones are dropped (or fail the
folder) exactly as the folder sources do. Records are fixed-size, so each subset is stored at its images'
decoded size when they all share one, and otherwise resized to 256 x 256 with PIL bilinear on uint8 -- what
`PilResize(256)` (the default train/eval transforms) does first anyway, so training and evaluation give the
same results from either format. `--image_size S` resizes every subset to S x S the same way (matching
`PilResize(S)`); a run with another resize or `resample="float_bicubic"` would resize twice.

    sources = split_sources_records("/shared/WildRF-records", "test")   # {"facebook": ..., "reddit": ..., ...}
"""

import bisect
import concurrent.futures
import operator
import os

import numpy as np
from PIL import Image

from common import progress
from common import records
from distill import data

HINT = "python -m distill.prepare_data --src ROOT --dst DIR"
DEFAULT_SPLITS = ("train", "val", "test")
DEFAULT_RESIZE = 256  # distill.data.train_transforms / eval_transforms resize
_CHUNK = 256  # files decoded per batch of threads (bounds memory on large folders)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _size(path: str) -> tuple[int, int]:
  with Image.open(path) as img:
    return img.size


def _decoder(hw: tuple[int, int] | None):
  def decode(path: str) -> np.ndarray:
    try:
      with Image.open(path) as img:
        rgb = img.convert("RGB")  # as ImageFolderSource: greyscale/palette/RGBA -> RGB, alpha dropped
    except Exception as e:  # decode errors past the header check (truncated JPEG, ...)
      raise data.DataError(f"{path}: cannot decode ({type(e).__name__}: {e}); re-download or delete it") from e
    if hw is not None and rgb.size != hw[::-1]:
      rgb = rgb.resize(hw[::-1], Image.BILINEAR)  # = distill.data.PilResize on the folder source's image
    return np.asarray(rgb)
  return decode


def _write_subset(source: data.ImageFolderSource, dst: str, *, label: str, root: str, split: str, subset: str,
                  image_size: int | None, num_shards: int | None, pool) -> dict:
  sizes = list(progress.track(pool.map(_size, source.files, chunksize=64), total=len(source.files),
                              desc=f"{source.folder}: reading sizes", unit="files"))
  if image_size is not None:
    hw = (image_size, image_size)
  elif len(set(sizes)) == 1:
    hw = None  # stored as decoded
  else:
    hw = (DEFAULT_RESIZE, DEFAULT_RESIZE)
  shape = (hw or sizes[0][::-1]) + (3,)
  decode = _decoder(hw)

  def examples():
    for start in range(0, len(source.files), _CHUNK):
      files = source.files[start:start + _CHUNK]
      for j, img in enumerate(pool.map(decode, files)):
        yield {"image": img, "label": int(source.labels[start + j]),
               "file": os.path.relpath(files[j], root).replace(os.sep, "/")}

  meta = {"split": split, "subset": subset, "source": source.folder, "classes": ["real", "fake"],
          "decoded_sizes": sorted({f"{w}x{h}" for w, h in sizes})[:20], "resized_to": list(hw) if hw else None,
          "resample": "PIL bilinear on uint8" if hw else None}
  records.write_records(dst, examples(), image_shape=shape, fields={"label": "int", "file": "str"},
                        num_shards=num_shards, name="real_fake", meta=meta, total=len(source), created_by=HINT,
                        label=label)
  return {"subset": f"{split}/{subset}" if subset != split else split, "images": len(source), "shape": shape,
          "resized": hw is not None}


def prepare(src: str, dst: str, *, splits: tuple[str, ...] | None = None, image_size: int | None = None,
            num_shards: int | None = None, **kw) -> list[dict]:
  """Writes every subset of `splits` under `src` as record directories in the same tree under `dst`.

  splits=None: those of train/val/test that `src` has. `dst` is written whole or not at all. `kw` goes to
  `distill.data.ImageFolderSource` (max_bad_fraction). Returns one summary dict per subset.
  """
  root = os.path.normpath(os.fspath(src))
  dst = records.check_new_dir(dst)
  if image_size is not None and image_size < 1:
    raise data.DataError(f"--image_size {image_size}: must be a positive number of pixels")
  if splits is None:
    if not os.path.isdir(root):
      raise data.DataError(f"{root}: data root not found; check the path")
    splits = tuple(s for s in DEFAULT_SPLITS if os.path.isdir(os.path.join(root, s)))
    if not splits:
      present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
      raise data.DataError(f"{root}: none of {'/'.join(DEFAULT_SPLITS)} found (it has {present or 'no sub-folders'}); "
                           "pass --splits or fix the path")
  # Every split is listed and checked before anything is written: a bad folder fails in seconds, not after hours.
  listed = {split: data.split_sources(root, split, imbalance_ratio=float("inf"), **kw) for split in splits}
  summary = []
  with records.atomic_dir(dst) as out, \
      concurrent.futures.ThreadPoolExecutor(min(16, 2 * (os.cpu_count() or 1))) as pool:
    for split, sources in listed.items():
      for subset, source in sources.items():
        rel = os.path.join(split, *([] if subset == split else subset.split("/")))
        summary.append(_write_subset(source, os.path.join(out, rel), label=os.path.join(dst, rel), root=root,
                                     split=split, subset=subset, image_size=image_size, num_shards=num_shards,
                                     pool=pool))
  return summary


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
class RecordImageSource:
  """One or more subset record directories read as `distill.data.ImageFolderSource` reads its folders.

  Item i is {"image": float32 (H, W, 3) RGB in [0, 1], "label": int32, "index": int32 i}; `.files` are the
  source file names relative to the prepared root, `.labels` int32, `.num_real`, `.num_fake`. Concatenated parts
  may differ in image size, as the files of a folder may.
  """

  def __init__(self, parts: list[records.RecordSource], *, folder: str, name: str, imbalance_ratio: float = 1.5):
    self.parts, self.folder, self.name = parts, os.path.normpath(folder), name
    for p in parts:
      if set(p.fields) != {"label", "file"}:
        raise records.RecordError(f"{p.path}: fields {sorted(p.fields)} are not real/fake images (label, file); "
                                  f"create it with {HINT}")
    self._ends = np.cumsum([len(p) for p in parts]).tolist()
    self.files = [f for p in parts for f in p.columns["file"].tolist()]
    self.labels = np.concatenate([p.columns["label"] for p in parts]).astype(np.int32)
    self.num_fake = int(self.labels.sum())
    self.num_real = len(self.files) - self.num_fake
    data._check_balance(self.folder, self.num_real, self.num_fake, imbalance_ratio)  # pylint: disable=protected-access

  def __len__(self):
    return len(self.files)

  def __getitem__(self, index):
    i = operator.index(index)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for {len(self)} images in {self.folder}")
    k = bisect.bisect_right(self._ends, i)
    img = self.parts[k][i - (self._ends[k - 1] if k else 0)]["image"]
    return {"image": img.astype(np.float32) / 255.0, "label": self.labels[i], "index": np.int32(i)}

  def __repr__(self):  # grain checks repr(source) on restore: keep it stable
    return f"RecordImageSource({self.folder!r}, real={self.num_real}, fake={self.num_fake})"


def _record_dirs(root: str, split: str) -> tuple[str, list[str]]:
  root = os.path.normpath(os.fspath(root))
  if not os.path.isdir(root):
    raise records.RecordError(f"{root}: not a prepared dataset (no such folder); create it with {HINT}")
  top = os.path.join(root, split)
  if not os.path.isdir(top):
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    raise data.DataError(f"{top}: split {split!r} not found; {root} has {present or 'no sub-folders'}; prepare it "
                         f"with {HINT} --splits {split}")
  if records.is_record_dir(top):
    return top, [top]
  found = []
  for dirpath, dirnames, _ in os.walk(top):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    if records.is_record_dir(dirpath):
      found.append(dirpath)
      dirnames[:] = []
  if not found:
    raise records.RecordError(f"{top}: not a prepared dataset (no {records.META} in it or its sub-folders); "
                              f"create it with {HINT}")
  return top, found


def split_sources_records(root: str, split: str, *, imbalance_ratio: float = 1.5) -> dict[str, RecordImageSource]:
  """{subset name: source} of a prepared split, named as `distill.data.split_sources` names the folders."""
  top, dirs = _record_dirs(root, split)
  if dirs == [top]:
    return {split: RecordImageSource([records.RecordSource(top, hint=HINT)], folder=top, name=split,
                                     imbalance_ratio=imbalance_ratio)}
  sources = {}
  for path in dirs:
    name = os.path.relpath(path, top).replace(os.sep, "/")
    sources[name] = RecordImageSource([records.RecordSource(path, hint=HINT)], folder=path, name=name,
                                      imbalance_ratio=imbalance_ratio)
  return sources  # walk order, as split_sources (and so split_source's concatenation order)


def split_source_records(root: str, split: str, *, imbalance_ratio: float = 1.5) -> RecordImageSource:
  """All of a prepared split as one source (subsets concatenated in name order), as `distill.data.split_source`."""
  sources = split_sources_records(root, split, imbalance_ratio=float("inf"))
  if len(sources) == 1:
    src = next(iter(sources.values()))
    data._check_balance(src.folder, src.num_real, src.num_fake, imbalance_ratio)  # pylint: disable=protected-access
    return src
  return RecordImageSource([p for s in sources.values() for p in s.parts], folder=os.path.join(root, split),
                           name=split, imbalance_ratio=imbalance_ratio)


def main(argv=None):
  parser = records.ArgumentParser(prog="python -m distill.prepare_data", description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help="data root holding <split>/[<subset>/]{real|0_real,fake|1_fake}")
  parser.add_argument("--dst", required=True, help="output root (absent or empty)")
  parser.add_argument("--splits", default=None, help="comma-separated splits (default: those of train,val,test "
                      "that SRC has)")
  parser.add_argument("--image_size", type=int, default=None, help=f"resize every image to S x S (default: keep "
                      f"the decoded size when a subset's images share one, else {DEFAULT_RESIZE})")
  parser.add_argument("--num_shards", type=int, default=None, help="shards per subset (default: automatic, "
                      "64 MiB-1 GiB each)")
  parser.add_argument("--max_bad_fraction", type=float, default=0.01, help="unreadable files tolerated per subset")

  def command(args):
    splits = tuple(s for s in args.splits.split(",") if s) if args.splits else None
    summary = prepare(args.src, args.dst, splits=splits, image_size=args.image_size, num_shards=args.num_shards,
                      max_bad_fraction=args.max_bad_fraction)
    for s in summary:
      print(f"{s['subset']}: {s['images']} images at {s['shape'][0]}x{s['shape'][1]}"
            f"{' (resized)' if s['resized'] else ''}")
    print(f"wrote {sum(s['images'] for s in summary)} images in {len(summary)} subset(s) to {args.dst}")

  records.run_cli(parser, command, argv)


if __name__ == "__main__":
  main()
