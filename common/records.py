"""Fixed-size uint8 image records in ArrayRecord shards: a fast, random-access copy of a folder data set.

A record directory holds one split:

    DIR/records.json                           format, image shape, count, field kinds, shards, per-field metadata
    DIR/fields.npz                             every scalar field as a column (labels, ids, file names), no images
    DIR/<name>-data.array_record-0000k-of-0000n the records (TFDS features, one record per image)
    DIR/dataset_info.json, DIR/features.json   TFDS metadata: `tfds.builder_from_directory(DIR)` opens it too

Shards are written by a TFDS builder (`file_format="array_record"`, records in generation order) and read with
array_record's thread-safe readers plus TFDS's numpy example parser; TensorFlow is never imported. Images are
stored as raw uint8 bytes (`tfds.features.Tensor(encoding=BYTES)`), which ArrayRecord compresses per record with
zstd: a read is one zstd inflate and a copy, several times cheaper than a PNG decode and exact, while zstd still
shrinks natural images on shared storage.

`fields.npz` lets a reader expose `labels`, `subjects` or `ids` without reading every record (on shared storage
that would read the whole data set). Each record also holds its fields, and a read checks its int fields against
the columns, so a shard swapped in from another data set fails by name instead of training on wrong labels.

    write_records("/data/x/train", ({"image": u8, "label": y, "file": f} for ...), image_shape=(64, 64, 3),
                  fields={"label": "int", "file": "str"})
    src = RecordSource("/data/x/train")      # src[i] -> {"image": uint8 HWC (read-only), "label": int, "file": str}
"""

import argparse
import bisect
import concurrent.futures
import contextlib
import io
import json
import logging as std_logging
import operator
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterable

from absl import logging
import numpy as np

from common import progress

FORMAT, VERSION = "jaxvision.records", 1
META, COLUMNS = "records.json", "fields.npz"
SPLIT = "data"  # the TFDS split inside every record directory ("all" is reserved by TFDS)
KINDS = ("int", "str")
DEFAULT_HINT = "common.records.write_records"
# Errors a user can fix from the message alone (a CLI prints them as one line and exits 2).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


class RecordError(ValueError):
  """A record directory (or its input) that cannot be used as given; the one-line message names the file."""


def _one_line(text: str, limit: int = 300) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def check_new_dir(path: str) -> str:
  """`path`, normalised, if it is absent or an empty folder; else RecordError (nothing is ever overwritten)."""
  path = os.path.normpath(os.fspath(path))
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise RecordError(f"{path}: exists and is not an empty folder; choose a new destination or delete it")
  return path


@contextlib.contextmanager
def atomic_dir(dst: str):
  """Yields a temporary sibling of `dst`, renamed to `dst` when the block succeeds and deleted when it fails,
  so `dst` never holds half a data set (the rename is atomic on one file system)."""
  dst = check_new_dir(dst)
  parent = os.path.dirname(os.path.abspath(dst))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
  try:
    out = os.path.join(tmp, "out")
    os.mkdir(out)
    yield out
    check_new_dir(dst)  # nobody created it meanwhile
    if os.path.isdir(dst):
      os.rmdir(dst)
    os.replace(out, dst)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS prints a banner and draws tqdm bars; our own progress lines say the same once."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=import-outside-toplevel
  active = getattr(tqdm_utils, "_active", True)
  tqdm_utils.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tqdm_utils.display_progress_bar(active)


def _tfds_name(name: str) -> str:
  clean = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "records"
  return clean if clean[0].isalpha() else "r_" + clean


def write_records(dst_dir: str, examples: Iterable[dict], *, image_shape: tuple[int, ...], fields: dict[str, str],
                  num_shards: int | None = None, name: str = "records", meta: dict | None = None,
                  total: int | None = None, created_by: str = DEFAULT_HINT, label: str | None = None) -> str:
  """Writes `examples` ({"image": uint8 `image_shape`, **fields}) as one split of ArrayRecord shards in `dst_dir`.

  Args:
    dst_dir: output folder; must be absent or empty. Written to a temporary sibling and renamed at the end.
    examples: dicts in the order the reader will index them.
    image_shape: (H, W, C) of every image; the records are fixed-size.
    fields: {field: "int" | "str"}, scalar fields stored with each record and as columns in fields.npz.
    num_shards: shard count (at most `total`); None lets TFDS pick (64 MiB to 1 GiB per shard, a power of two).
    name: shard file prefix (the TFDS builder name).
    meta: JSON-able per-field metadata kept in records.json (subject list, class names, source folder).
    total: number of examples, for the progress line's ETA.
    created_by: the command that recreates the data set, quoted in reader errors.
    label: how progress lines and errors name the output (default `dst_dir`; a caller writing into a temporary
      tree passes the final path).
  Returns the normalised `dst_dir`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  label = label or os.path.normpath(os.fspath(dst_dir))
  image_shape = tuple(int(d) for d in image_shape)
  if len(image_shape) != 3 or min(image_shape) < 1:
    raise RecordError(f"{label}: image_shape {image_shape} must be (H, W, C) with positive sizes")
  bad = {k: v for k, v in fields.items() if v not in KINDS or k == "image"}
  if bad:
    raise RecordError(f"{label}: field kinds {bad} not allowed; use {' or '.join(KINDS)} (and no field 'image')")
  if num_shards is not None and num_shards < 1:
    raise RecordError(f"{label}: num_shards={num_shards}; use a positive count or None (automatic)")
  feature_of = {"int": lambda: tfds.features.Scalar(dtype=np.int64), "str": tfds.features.Text}
  if num_shards is not None and total:
    num_shards = min(num_shards, total)  # a small subset of a large data set still writes
  columns = {k: [] for k in fields}
  seen = [0]
  tfds_name = _tfds_name(name)

  def where(i: int, ex: dict) -> str:  # names the example by its str fields (file, subject) when it has them
    return f"{label}: example {i}" + "".join(f" {k}={ex[k]!r}" for k, v in fields.items() if v == "str" and k in ex)

  def checked(i: int, ex: dict) -> dict:
    missing = sorted(set(fields) - set(ex)) + ([] if "image" in ex else ["image"])
    if missing:
      raise RecordError(f"{where(i, ex)}: missing {missing}; every example needs 'image' and {sorted(fields)}")
    img = ex["image"]
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != image_shape:
      got = f"{img.shape} {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
      raise RecordError(f"{where(i, ex)}: image is {got}, records need uint8 {image_shape}; resize or convert it first")
    out = {"image": img}
    seen[0] += 1
    for k, kind in fields.items():
      out[k] = int(ex[k]) if kind == "int" else str(ex[k])
      columns[k].append(out[k])
    return out

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One split ("data") of fixed-size uint8 images plus scalar fields, in generation order."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      features = {"image": tfds.features.Tensor(shape=image_shape, dtype=np.uint8,
                                                 encoding=tfds.features.Encoding.BYTES)}
      features.update({k: feature_of[kind]() for k, kind in fields.items()})
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                   disable_shuffling=True)  # record i is example i

    def _split_generators(self, dl_manager):
      return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
      for i, ex in enumerate(progress.track(examples, total=total, desc=f"write {label}", unit="images")):
        yield i, checked(i, ex)

  _Builder.name = tfds_name
  with atomic_dir(dst_dir) as out:
    builder = _Builder(data_dir=os.path.join(os.path.dirname(out), "tfds"), file_format="array_record")
    try:
      with _quiet_tfds():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=num_shards))
    except AssertionError as e:  # TFDS: "No examples were yielded." or "num_examples (3) < number_of_shards (5)"
      if not seen[0]:
        raise RecordError(f"{label}: no examples to write; check the source") from e
      raise RecordError(f"{label}: {seen[0]} examples, fewer than num_shards={num_shards}; use fewer shards") from e
    os.rmdir(out)
    os.replace(builder.data_dir, out)
    split = builder.info.splits[SPLIT]
    lengths = [int(n) for n in split.shard_lengths]
    shards = sorted(f for f in os.listdir(out) if f.startswith(f"{tfds_name}-{SPLIT}.array_record-"))
    count = seen[0]
    if len(shards) != len(lengths) or sum(lengths) != count:
      raise RecordError(f"{label}: TFDS wrote {len(shards)} shard files for shard lengths {lengths} "
                        f"({count} examples); report this")
    # Keys are prefixed: a field called "file" or "allow_pickle" would collide with np.savez's own arguments.
    np.savez(os.path.join(out, COLUMNS), **{f"field_{k}": np.asarray(v, np.int64 if fields[k] == "int" else str)
                                            for k, v in columns.items()})
    info = {"format": FORMAT, "version": VERSION, "name": tfds_name, "split": SPLIT, "count": count,
            "image_shape": list(image_shape), "image_encoding": "raw uint8 (tfds Tensor BYTES), zstd per record",
            "fields": dict(fields), "shards": [{"file": f, "count": n} for f, n in zip(shards, lengths)],
            "created_by": created_by, "meta": meta or {}}
    with open(os.path.join(out, META), "w") as f:
      json.dump(info, f, indent=1)
  logging.info("%s: %d records of %s in %d shard(s)", label, count, image_shape, len(shards))
  return os.path.normpath(os.fspath(dst_dir))


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def is_record_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, META))


def read_meta(path: str, hint: str = DEFAULT_HINT) -> dict:
  """records.json of a record directory, checked for format and version."""
  path = os.path.normpath(os.fspath(path))
  meta_path = os.path.join(path, META)
  if not os.path.isdir(path):
    raise RecordError(f"{path}: not a prepared dataset (no such folder); create it with {hint}")
  if not os.path.isfile(meta_path):
    raise RecordError(f"{path}: not a prepared dataset (no {META}); create it with {hint}")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise RecordError(f"{meta_path}: unreadable ({type(e).__name__}: {_one_line(e, 120)}); "
                      f"re-create {path} with {hint}") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise RecordError(f"{meta_path}: not a {FORMAT} file; re-create {path} with {hint}")
  if meta.get("version") != VERSION:
    raise RecordError(f"{meta_path}: format version {meta.get('version')}, this reader reads {VERSION}; "
                      f"re-create {path} with {hint}")
  missing = [k for k in ("count", "image_shape", "fields", "shards") if k not in meta]
  if missing:
    raise RecordError(f"{meta_path}: no {', '.join(missing)}; re-create {path} with {hint}")
  return meta


class RecordSource:
  """Random access to a record directory: item i is {"image": uint8 HWC (read-only), **fields}.

  Int fields come back as Python ints, str fields as str. Every shard is opened at construction and its record
  count checked against records.json, so a truncated copy fails before training starts. Only the path is
  pickled: a grain worker reopens the shards itself.

  Attributes:
    path, count, image_shape, fields ({name: kind}), meta (records.json's per-field metadata),
    columns ({field: np.ndarray}, from fields.npz: int64 or str).
  """

  def __init__(self, path: str, *, hint: str | None = None):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    self.path = os.path.normpath(os.fspath(path))
    info = read_meta(self.path, hint or DEFAULT_HINT)
    self.hint = hint or info.get("created_by", DEFAULT_HINT)
    self.count, self.image_shape = int(info["count"]), tuple(info["image_shape"])
    self.fields, self.meta, self.info = dict(info["fields"]), info.get("meta", {}), info
    fix = f"re-create {self.path} with {self.hint}"
    try:
      self._features = tfds.features.FeatureConnector.from_config(self.path)
    except Exception as e:  # missing / bad features.json
      raise RecordError(f"{os.path.join(self.path, 'features.json')}: unreadable ({type(e).__name__}: "
                        f"{_one_line(e, 120)}); {fix}") from e
    shape = tuple(self._features["image"].shape)
    if shape != self.image_shape:
      raise RecordError(f"{os.path.join(self.path, META)}: image shape {self.image_shape}, but the records hold "
                        f"{shape} (features.json); {fix}")

    def open_shard(shard: dict):
      file = os.path.join(self.path, shard["file"])
      if not os.path.isfile(file):
        raise RecordError(f"{file}: shard missing (listed in {META}); copy it again or {fix}")
      try:
        reader = array_record_module.ArrayRecordReader(file, options="readahead_buffer_size:0",
                                                       file_reader_buffer_size=32768)
        n = reader.num_records()
      except Exception as e:  # the C++ reader raises RuntimeError / ValueError for a damaged file
        raise RecordError(f"{file}: cannot open shard ({type(e).__name__}: {_one_line(e, 120)}); {fix}") from e
      if n != shard["count"]:  # a truncated shard opens fine, with fewer records (often none)
        raise RecordError(f"{file}: {n} records, {META} says {shard['count']}: the shard is truncated or corrupt; "
                          f"copy it again or {fix}")
      return file, reader, n

    # Threads: each open is a footer read, latency-bound on network storage.
    with concurrent.futures.ThreadPoolExecutor(max(1, min(16, len(info["shards"])))) as pool:
      opened = list(pool.map(open_shard, info["shards"]))
    self._shards = [file for file, _, _ in opened]
    self._readers = [reader for _, reader, _ in opened]  # thread-safe: grain's reader threads share them
    self._ends = np.cumsum([n for _, _, n in opened]).tolist()
    held = self._ends[-1] if self._ends else 0
    if held != self.count:
      raise RecordError(f"{os.path.join(self.path, META)}: count {self.count}, but its shards hold {held} records; "
                        f"{fix}")

    columns_path = os.path.join(self.path, COLUMNS)
    try:
      with np.load(columns_path, allow_pickle=False) as z:
        self.columns = {k: z[f"field_{k}"] for k in self.fields}
    except Exception as e:  # missing file or field, bad zip
      raise RecordError(f"{columns_path}: unreadable ({type(e).__name__}: {_one_line(e, 120)}); {fix}") from e
    wrong = {k: len(v) for k, v in self.columns.items() if len(v) != self.count}
    if wrong:
      raise RecordError(f"{columns_path}: columns of lengths {wrong}, {META} says {self.count} records; {fix}")
    self._int_fields = [k for k, kind in self.fields.items() if kind == "int"]

  def __len__(self):
    return self.count

  def __getitem__(self, index):
    i = operator.index(index)
    if not 0 <= i < self.count:
      raise IndexError(f"index {i} out of range for {self.count} records in {self.path}")
    k = bisect.bisect_right(self._ends, i)
    pos = i - (self._ends[k - 1] if k else 0)
    fix = f"copy the shard again or re-create {self.path} with {self.hint}"
    try:
      ex = self._features.deserialize_example_np(self._readers[k].read([pos])[0])
    except Exception as e:  # riegeli hash mismatch, bad proto, wrong byte count for the shape
      raise RecordError(f"{self._shards[k]}: record {pos} cannot be read or decoded ({type(e).__name__}: "
                        f"{_one_line(e, 160)}); {fix}") from e
    img = ex["image"]
    if img.shape != self.image_shape or img.dtype != np.uint8:
      raise RecordError(f"{self._shards[k]}: record {pos} holds a {img.shape} {img.dtype} image, {META} says uint8 "
                        f"{self.image_shape}; {fix}")
    out = {"image": img}
    for f, kind in self.fields.items():
      out[f] = int(ex[f]) if kind == "int" else ex[f].decode("utf-8")
    for f in self._int_fields:
      if out[f] != self.columns[f][i]:
        raise RecordError(f"{self._shards[k]}: record {pos} has {f}={out[f]}, {COLUMNS} says {self.columns[f][i]} "
                          f"(a shard from another data set?); {fix}")
    return out

  def __repr__(self):  # grain checks repr(source) on restore: keep it stable
    return f"RecordSource({self.path!r}, n={self.count}, shape={self.image_shape})"

  def __getstate__(self):  # reopen in worker processes instead of pickling file handles
    return {"path": self.path, "hint": self.hint}

  def __setstate__(self, state):
    self.__init__(state["path"], hint=state["hint"])


# ----------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
  """argparse whose usage errors are one `error: ...` line on stderr and exit code 2."""

  def error(self, message):
    print(f"error: {_one_line(message, 1000)} (see --help)", file=sys.stderr)
    sys.exit(2)


class _QuietTfds(std_logging.Filter):
  """Drops TFDS's INFO lines (they name its temporary folders); our progress lines say the same."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/tensorflow_datasets/" not in record.pathname


def run_cli(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], object], argv=None):
  """Parses `argv` (default sys.argv) and runs `command(args)`; user errors become one `error: ...` line and exit
  code 2. From the real command line (argv=None) progress lines are shown (INFO)."""
  args = parser.parse_args(argv)
  if argv is None:
    logging.set_verbosity(logging.INFO)
    std_logging.getLogger("absl").addFilter(_QuietTfds())  # TFDS logs through absl; the filter sees its file
  try:
    command(args)
  except USER_ERRORS as e:
    print(f"error: {_one_line(str(e) or type(e).__name__, 2000)}", file=sys.stderr)
    sys.exit(2)
