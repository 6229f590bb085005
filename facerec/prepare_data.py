"""Face subject folders to ArrayRecord shards, and a reader with `SubjectFolder`'s interface.

    python -m facerec.prepare_data --src /data/faces/train --dst /shared/faces-records/train
        [--image_size 112] [--resize] [--num_shards N]

SRC is one root of <subject>/*.png|jpg|jpeg, listed and checked by `facerec.data.SubjectFolder` (unreadable files
dropped as it drops them; off-size faces an error unless --resize, which resizes them bicubically as it does).
Records hold the S x S uint8 face, its label (index into the sorted subject list), subject id and file name; the
subject list is kept in records.json. Convert each split root (train, val, test) on its own.

    faces = subject_records("/shared/faces-records/val")
    gallery, probes = data.gallery_probe_split(faces)       # PKOrder(faces.labels, ...), subject_overlap work too
"""

import concurrent.futures
import os

import numpy as np
from PIL import Image

from common import records
from facerec import data

HINT = "python -m facerec.prepare_data --src FACES_ROOT --dst DIR"
_CHUNK = 256  # files decoded per batch of threads (bounds memory on large folders)


def _decoder(size: int):
  def decode(path: str) -> np.ndarray:
    try:
      with Image.open(path) as im:
        im = im.convert("RGB")
    except Exception as e:  # the header passed SubjectFolder's check: a truncated body, or the file changed since
      raise data.DataError(f"{path}: cannot decode ({type(e).__name__}: {e}); re-export or delete this file") from e
    if im.size != (size, size):  # SubjectFolder only lets this through with resize=True
      im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im)
  return decode


def prepare(src: str, dst: str, *, image_size: int = 112, resize: bool = False, num_shards: int | None = None,
            max_bad_fraction: float = 0.01) -> str:
  """Writes the faces under `src` as a record directory `dst` (whole or not at all); returns `dst`."""
  records.check_new_dir(dst)
  folder = data.SubjectFolder(src, image_size=image_size, resize=resize, max_bad_fraction=max_bad_fraction)
  decode = _decoder(image_size)

  def examples():
    with concurrent.futures.ThreadPoolExecutor(min(16, 2 * (os.cpu_count() or 1))) as pool:
      for start in range(0, len(folder.files), _CHUNK):
        files = folder.files[start:start + _CHUNK]
        for j, img in enumerate(pool.map(decode, files)):
          label = int(folder.labels[start + j])
          yield {"image": img, "label": label, "subject": folder.subjects[label],
                 "file": os.path.relpath(files[j], folder.root).replace(os.sep, "/")}

  meta = {"source": folder.root, "subjects": folder.subjects, "image_size": image_size, "resize": resize}
  return records.write_records(dst, examples(), image_shape=(image_size, image_size, 3),
                               fields={"label": "int", "subject": "str", "file": "str"}, num_shards=num_shards,
                               name="faces", meta=meta, total=len(folder), created_by=HINT)


class SubjectRecords(data.SubjectFolder):
  """A record directory read as `SubjectFolder` reads its folder: item i is {"image": float32 (S, S, 3) in [0, 1],
  "label": int32, "index": int32 i}; `subjects`, `files` (relative to the source root), `labels`, `image_size`,
  `subject_indices` as there. A subclass, so `subject_overlap` and `gallery_probe_split` take it unchanged;
  `root` is the record directory, which their messages name."""

  def __init__(self, path: str):  # pylint: disable=super-init-not-called  # nothing to list or check on disk
    self._records = records.RecordSource(path, hint=HINT)
    self.root = self._records.path
    self.name = os.path.basename(self.root)
    meta, fields = self._records.meta, self._records.fields
    if fields != {"label": "int", "subject": "str", "file": "str"} or "subjects" not in meta:
      raise records.RecordError(f"{self.root}: fields {sorted(fields)} are not faces (label, subject, file); "
                                f"create it with {HINT}")
    self.image_size, self.resize = int(meta["image_size"]), bool(meta.get("resize", False))
    self.subjects = list(meta["subjects"])
    self.files = self._records.columns["file"].tolist()
    self.labels = self._records.columns["label"].astype(np.int32)
    subject_of = self._records.columns["subject"]
    if (len(self.labels) and (np.any(np.diff(self.labels) < 0) or self.labels[-1] >= len(self.subjects)
                              or not np.array_equal(np.asarray(self.subjects)[self.labels], subject_of))):
      raise records.RecordError(f"{os.path.join(self.root, records.META)}: labels are not subject-major indices "
                                f"into its subject list; re-create {self.root} with {HINT}")
    self._starts = np.searchsorted(self.labels, np.arange(len(self.subjects) + 1)).astype(np.int64)

  def __getitem__(self, i):
    img = self._records[int(i)]["image"]
    return {"image": img.astype(np.float32) / np.float32(255), "label": self.labels[int(i)], "index": np.int32(i)}

  def __repr__(self):  # grain checks repr(source) on restore: keep it stable
    return (f"SubjectRecords({self.root!r}, subjects={len(self.subjects)}, images={len(self.files)}, "
            f"image_size={self.image_size})")


def subject_records(path: str) -> SubjectRecords:
  """The record directory `path` (made by this module's CLI) as a drop-in for `SubjectFolder`."""
  return SubjectRecords(path)


def main(argv=None):
  parser = records.ArgumentParser(prog="python -m facerec.prepare_data", description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help="faces root: <subject>/*.png|jpg|jpeg")
  parser.add_argument("--dst", required=True, help="output record directory (absent or empty)")
  parser.add_argument("--image_size", type=int, default=112, help="face side S (as SubjectFolder's image_size)")
  parser.add_argument("--resize", action="store_true", help="resize off-size faces bicubically instead of failing")
  parser.add_argument("--num_shards", type=int, default=None, help="default: automatic, 64 MiB-1 GiB per shard")
  parser.add_argument("--max_bad_fraction", type=float, default=0.01, help="unreadable files tolerated")

  def command(args):
    if args.image_size < 1:
      raise data.DataError(f"--image_size {args.image_size}: must be a positive number of pixels")
    dst = prepare(args.src, args.dst, image_size=args.image_size, resize=args.resize, num_shards=args.num_shards,
                  max_bad_fraction=args.max_bad_fraction)
    faces = subject_records(dst)
    print(f"wrote {len(faces)} faces of {len(faces.subjects)} subjects at {faces.image_size} px to {dst}")

  records.run_cli(parser, command, argv)


if __name__ == "__main__":
  main()
