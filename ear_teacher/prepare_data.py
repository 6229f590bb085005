"""Ear images from an `.npy` file to ArrayRecord shards, and a reader that stands in for `NpyImageSource`.

    python -m ear_teacher.prepare_data --src data/train.npy [--ids data/train_ids.npy] --dst records/train
        [--num_shards N]

Without --ids, `<src stem>_ids.npy` next to the source is used when it exists (the layout
`ear_teacher.synthetic` writes). Records hold the uint8 image, its index and its id. uint8 sources are copied
exactly; float sources in [0, 1] are stored as round(x * 255), so they come back quantised to k / 255 (at most
1/510 off). Greyscale stays one channel on disk, as in the .npy, and is repeated to 3 channels at read time.

    src = open_records("records/train")    # src[i] == NpyImageSource("data/train.npy", ids)[i] for uint8 data
"""

import operator
import os

import numpy as np

from common import records
from ear_teacher.data import NpyImageSource

HINT = "python -m ear_teacher.prepare_data --src IMAGES.npy --dst DIR"
_CHUNK = 256  # images read from the memory map at a time


def _default_ids(src: str) -> str | None:
  stem, _ = os.path.splitext(src)
  path = stem + "_ids.npy"
  return path if os.path.isfile(path) else None


def prepare(src: str, dst: str, *, ids: str | None = None, num_shards: int | None = None) -> str:
  """Writes the images of `src` (and ids of `ids`) as a record directory `dst`; returns `dst`."""
  src = os.path.normpath(os.fspath(src))
  records.check_new_dir(dst)
  source = NpyImageSource(src, ids_path=ids)  # validates shape, dtype, range and the ids
  array = np.load(src, mmap_mode="r")
  shape = array.shape[1:3] + ((array.shape[3],) if array.ndim == 4 else (1,))
  quantised = array.dtype != np.uint8

  def examples():
    for start in range(0, len(array), _CHUNK):
      chunk = np.asarray(array[start:start + _CHUNK])
      if quantised:
        chunk = np.rint(np.clip(chunk.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
      chunk = chunk.reshape(chunk.shape[:1] + shape)
      for j, img in enumerate(chunk):
        ex = {"image": img, "index": start + j}
        if source.ids is not None:
          ex["id"] = int(source.ids[start + j])
        yield ex

  fields = {"index": "int", **({"id": "int"} if source.ids is not None else {})}
  meta = {"source": os.path.abspath(src), "ids_source": ids and os.path.abspath(ids),
          "source_shape": list(array.shape), "source_dtype": str(array.dtype), "quantised": bool(quantised)}
  return records.write_records(dst, examples(), image_shape=shape, fields=fields, num_shards=num_shards,
                               name="ears", meta=meta, total=len(array), created_by=HINT)


class EarRecordSource:
  """A record directory read as `NpyImageSource` reads its .npy: item i is dict(image=float32 (H, W, 3) in
  [0, 1], index=i) plus `id` when the records have ids; `.ids` (int64) or None, `.shape` of the source array."""

  def __init__(self, path: str, uint8: bool = False):
    self.uint8 = uint8  # as NpyImageSource(uint8=True): the raw bytes, for training
    self._records = records.RecordSource(path, hint=HINT)
    self.path = self._records.path
    if "index" not in self._records.fields:
      raise records.RecordError(f"{self.path}: records without an 'index' field are not ear images; "
                                f"create them with {HINT}")
    meta = self._records.meta
    self.shape = tuple(meta.get("source_shape", (len(self._records), *self._records.image_shape)))
    self.dtype = np.dtype(np.uint8)
    self.ids = self._records.columns["id"].astype(np.int64) if "id" in self._records.fields else None

  def __len__(self):
    return len(self._records)

  def __getitem__(self, index):
    i = operator.index(index)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for {len(self)} images in {self.path}")
    img = self._records[i]["image"]
    img = np.asarray(img) if self.uint8 else img.astype(np.float32) / 255.0  # as NpyImageSource does for uint8
    if img.shape[-1] == 1:
      img = np.repeat(img, 3, axis=-1)
    item = dict(image=img, index=i)
    if self.ids is not None:
      item["id"] = int(self.ids[i])
    return item

  def __repr__(self):  # grain checks repr(source) on restore: keep it stable
    return f"EarRecordSource(path={self.path!r}, shape={self.shape}, uint8={self.uint8})"


def open_records(path: str, uint8: bool = False) -> EarRecordSource:
  """The record directory `path` (made by this module's CLI) as a drop-in for `NpyImageSource`."""
  return EarRecordSource(path, uint8=uint8)


FORMATS = ("npy", "arrayrecord")


def open_images(path, data_format: str = "npy", uint8: bool = False):
  """`path` as an image source: an .npy file, or a record directory made by this module's CLI."""
  if data_format == "npy":
    return NpyImageSource(path, uint8=uint8)
  if data_format == "arrayrecord":
    return open_records(os.fspath(path), uint8=uint8)
  raise ValueError(f"data.format={data_format!r}; use one of {', '.join(FORMATS)}")


def main(argv=None):
  parser = records.ArgumentParser(prog="python -m ear_teacher.prepare_data", description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help="images .npy: (N,H,W,3), (N,H,W,1) or (N,H,W), uint8 or [0,1]")
  parser.add_argument("--ids", default=None, help="identity labels .npy (default: <src stem>_ids.npy if present)")
  parser.add_argument("--dst", required=True, help="output record directory (absent or empty)")
  parser.add_argument("--num_shards", type=int, default=None, help="default: automatic, 64 MiB-1 GiB per shard")

  def command(args):
    ids = args.ids or _default_ids(os.path.normpath(args.src))
    dst = prepare(args.src, args.dst, ids=ids, num_shards=args.num_shards)
    src = open_records(dst)
    print(f"wrote {len(src)} images {src.shape[1:]}{' with ids from ' + ids if ids else ''} to {dst}")

  records.run_cli(parser, command, argv)


if __name__ == "__main__":
  main()
