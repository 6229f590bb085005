"""Input pipelines on grain: random-access sources -> seeded shuffle -> picklable transforms -> batches.

Elements are dicts of numpy arrays; images are float32 HWC in [0, 1] until `Normalize`. Every process
follows the same global example order and reads only its own rows of each global batch, so global
batches are assembled on device by `common.parallel.to_global` without any host gather. Training iterators are grain
`DatasetIterator`s whose state is checkpointed with the model (exact resume). Evaluation batches are
padded to full size with `mask == 0` so means over a split are exact, never dropping the remainder.

For data on shared storage, `write_arrayrecord` builds an ArrayRecord dataset with a TFDS builder and
`ArrayRecordSource` reads it through `tfds.data_source`; neither imports TensorFlow.
"""

import collections
import json
import math
import time
from typing import Callable, Iterable, Sequence

import grain
import jax
import numpy as np
from PIL import Image

from common import progress

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# Transforms (picklable: grain workers are separate processes)
# ----------------------------------------------------------------------------------------------
def resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Bicubic resize of a float HWC image (per channel in PIL's float mode: no uint8 rounding)."""
  h, w = hw
  if image.shape[:2] == (h, w):
    return image
  chans = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode="F")
                      .resize((w, h), Image.BICUBIC)) for c in range(image.shape[-1])]
  return np.clip(np.stack(chans, -1), 0.0, 1.0)


class Resize(grain.transforms.Map):
  """Bicubic resize (float math); uint8 images stay uint8 (rounded), so the host can ship bytes."""

  def __init__(self, size: int | tuple[int, int], key: str = "image"):
    self.hw = (size, size) if isinstance(size, int) else tuple(size)
    self.key = key

  def map(self, element):
    img = element[self.key]
    if img.shape[:2] == self.hw:
      return element
    if img.dtype == np.uint8:
      out = np.clip(np.rint(resize(img.astype(np.float32) / 255.0, self.hw) * 255.0), 0, 255).astype(np.uint8)
      return {**element, self.key: out}
    return {**element, self.key: resize(img, self.hw)}


class ToUint8(grain.transforms.Map):
  """Float [0, 1] -> uint8 (rounded): a quarter of the bytes host->device; the step turns it back to float."""

  def __init__(self, key: str = "image"):
    self.key = key

  def map(self, element):
    img = element[self.key]
    if img.dtype != np.uint8:
      img = np.clip(np.rint(np.asarray(img, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return {**element, self.key: img}


class CenterCrop(grain.transforms.Map):
  def __init__(self, size: int, key: str = "image"):
    self.size, self.key = size, key

  def map(self, element):
    img = element[self.key]
    top, left = (img.shape[0] - self.size) // 2, (img.shape[1] - self.size) // 2
    if top < 0 or left < 0:
      raise ValueError(f"CenterCrop({self.size}) on a {img.shape[:2]} image; resize first")
    return {**element, self.key: img[top:top + self.size, left:left + self.size]}


class RandomCrop(grain.transforms.RandomMap):
  """Random crop after reflect-padding by `pad` pixels (pad=0: plain random crop)."""

  def __init__(self, size: int, pad: int = 0, key: str = "image"):
    self.size, self.pad, self.key = size, pad, key

  def random_map(self, element, rng: np.random.Generator):
    img = element[self.key]
    if self.pad:
      img = np.pad(img, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)), mode="reflect")
    top = rng.integers(0, img.shape[0] - self.size + 1)
    left = rng.integers(0, img.shape[1] - self.size + 1)
    return {**element, self.key: img[top:top + self.size, left:left + self.size]}


class RandomFlip(grain.transforms.RandomMap):
  def __init__(self, prob: float = 0.5, key: str = "image"):
    self.prob, self.key = prob, key

  def random_map(self, element, rng: np.random.Generator):
    if rng.random() < self.prob:
      return {**element, self.key: element[self.key][:, ::-1]}
    return element


class RandomBrightnessContrast(grain.transforms.RandomMap):
  def __init__(self, brightness: float = 0.1, contrast: float = 0.1, key: str = "image"):
    self.brightness, self.contrast, self.key = brightness, contrast, key

  def random_map(self, element, rng: np.random.Generator):
    img = element[self.key]
    c = 1.0 + rng.uniform(-self.contrast, self.contrast)
    b = rng.uniform(-self.brightness, self.brightness)
    img = (img - img.mean()) * c + img.mean() + b
    return {**element, self.key: np.clip(img, 0.0, 1.0).astype(np.float32)}


class Normalize(grain.transforms.Map):
  def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, key: str = "image"):
    self.mean, self.std, self.key = np.float32(mean), np.float32(std), key

  def map(self, element):
    return {**element, self.key: ((element[self.key] - self.mean) / self.std).astype(np.float32)}


def _apply(ds: grain.MapDataset, transforms: Sequence) -> grain.MapDataset:
  for t in transforms:
    ds = ds.random_map(t) if isinstance(t, grain.transforms.RandomMap) else ds.map(t)
  return ds


def _prefetch(ds: grain.MapDataset, worker_count: int) -> grain.IterDataset:
  it = ds.to_iter_dataset()
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it


# ----------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------
class _ProcessRows(grain.MapDataset):
  """This process's rows of each global batch of `parent` (a dataset in global example order).

  Global batch b holds parent[b*G : (b+1)*G]; process p reads rows [p*L, (p+1)*L) of it. Because the
  order (and each element's random augmentation, seeded by its global position) does not depend on
  the number of processes, 1 process x 2 devices and 2 processes x 1 device train on identical batches.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, local_batch: int, process_index: int):
    super().__init__(parent)
    self.global_batch, self.local_batch, self.process_index = global_batch, local_batch, process_index

  def __len__(self):
    return len(self._parent) // self.global_batch * self.local_batch

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    b, i = divmod(index, self.local_batch)
    return self._parent[b * self.global_batch + self.process_index * self.local_batch + i]

  def __str__(self):
    return f"_ProcessRows(global_batch={self.global_batch}, local_batch={self.local_batch}, p={self.process_index})"


class _EpochOrder(grain.MapDataset):
  """`source` read in the order a sampler gives per epoch: element i is source[order.indices(e, seed)[j]] with
  (e, j) = divmod(i, len(order)). The order object must be deterministic in (epoch, seed), so every process
  agrees on it and a resumed iterator (a position) sees the same examples."""

  def __init__(self, source, order, seed: int, epochs: int = 1_000_000):
    super().__init__()
    self.source, self.order, self.order_seed, self.epochs = source, order, seed, epochs
    self._cached = (None, None)

  def __len__(self):
    return len(self.order) * self.epochs

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, j = divmod(index, len(self.order))
    if self._cached[0] != epoch:
      self._cached = (epoch, np.asarray(self.order.indices(epoch, self.order_seed)))
    return self.source[int(self._cached[1][j])]

  def __str__(self):
    return f"_EpochOrder({self.order!r}, seed={self.order_seed})"


def train_iterator(source, *, local_batch: int, transforms: Sequence = (), seed: int = 0, worker_count: int = 0,
                   order=None):
  """Infinite, checkpointable iterator over this process's rows of each global batch.

  Default order: a seeded reshuffle per epoch. `order` (an object with `__len__` = examples per epoch and
  `indices(epoch, seed)`) replaces it, e.g. with P x K identity batches.
  """
  global_batch = local_batch * jax.process_count()
  n = len(order) if order is not None else len(source)
  if n < global_batch:
    raise ValueError(f"{source!r}: {n} examples is fewer than one global batch of {global_batch}; "
                     "lower batch_size or add data")
  if order is None:
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  else:
    ds = _EpochOrder(source, order, seed).seed(seed)  # .seed: per-element rngs for the random transforms
  ds = _apply(ds, transforms)
  ds = _ProcessRows(ds, global_batch, local_batch, jax.process_index())
  return iter(_prefetch(ds.batch(local_batch, drop_remainder=True), worker_count))


class _Padded:
  """This process's slots of the padded global order; slots past the end repeat item 0 with mask 0."""

  def __init__(self, source, global_batch: int, local_batch: int):
    self.source, self.n = source, len(source)
    num_batches = math.ceil(self.n / global_batch)
    start = jax.process_index() * local_batch
    self.slots = [b * global_batch + start + i for b in range(num_batches) for i in range(local_batch)]

  def __len__(self):
    return len(self.slots)

  def __getitem__(self, i):
    idx = self.slots[i]
    element = self.source[idx if idx < self.n else 0]
    return {**element, "mask": np.float32(idx < self.n)}

  def __repr__(self):
    return f"_Padded({self.source!r}, slots={len(self.slots)})"


def eval_batches(source, *, global_batch: int, local_batch: int, transforms: Sequence = (),
                 worker_count: int = 0, desc: str = "eval") -> Iterable[dict]:
  """One pass over all of `source` in padded batches with a `mask` (1 = real example), logging progress
  (rate and ETA) under `desc` when the pass is long."""
  if len(source) == 0:
    raise ValueError(f"{source!r} is empty")
  ds = _apply(grain.MapDataset.source(_Padded(source, global_batch, local_batch)), transforms).batch(local_batch)
  return progress.track(iter(_prefetch(ds, worker_count)), total=len(ds), desc=f"{desc} {source!r}",
                        unit="batches")


class DevicePrefetch:
  """Keeps `depth` global batches in flight to the devices, so host->device copies overlap the step.

  Wraps a checkpointable grain iterator; `get_state` reports the position of the oldest batch not yet
  handed out (batches in flight are fetched again after a restore), so resumes stay exact.
  `wait_seconds` accumulates the time spent blocked on the host pipeline (perf/input_wait_fraction).
  """

  def __init__(self, iterator, place: Callable[[dict], dict], depth: int = 2):
    self.iterator, self.place, self.depth = iterator, place, max(1, depth)
    self.queue: collections.deque = collections.deque()  # (state before the batch, device batch)
    self.wait_seconds = 0.0

  def __iter__(self):
    return self

  def __next__(self):
    while len(self.queue) < self.depth:
      state = self.iterator.get_state()
      t0 = time.perf_counter()
      host = next(self.iterator)
      self.wait_seconds += time.perf_counter() - t0
      self.queue.append((state, self.place(host)))  # device_put is asynchronous: returns at once
    return self.queue.popleft()[1]

  def get_state(self) -> bytes:  # grain's checkpoint handler stores bytes for non-grain iterators
    return json.dumps(self.queue[0][0] if self.queue else self.iterator.get_state()).encode()

  def set_state(self, state: bytes) -> None:
    self.queue.clear()
    self.iterator.set_state(json.loads(state))

  def start_prefetch(self) -> None:  # called by grain's checkpoint handler after a restore
    if hasattr(self.iterator, "start_prefetch"):
      self.iterator.start_prefetch()


class RowSource:
  """Row numbers as elements: the train order over a split that lives on the devices (config.data_on_device).

  The train iterator shuffles it exactly as it would the split itself, so the order (and its checkpoint)
  is the same; the step gathers the rows from the device-resident arrays."""

  def __init__(self, source):
    self.length, self.name = len(source), repr(source)

  def __len__(self):
    return self.length

  def __getitem__(self, i):
    return {"row": np.int32(i)}

  def __repr__(self):
    return f"RowSource({self.name})"


def materialise(source, transforms: Sequence = ()) -> dict[str, np.ndarray]:
  """Every element of `source` through deterministic `transforms`, stacked per key (for data_on_device)."""
  random = [t for t in transforms if isinstance(t, grain.transforms.RandomMap)]
  if random:
    raise ValueError(f"data_on_device keeps the host-side split fixed, but these host transforms are random: "
                     f"{', '.join(type(t).__name__ for t in random)}; move them to the task's device_transform "
                     "or set --config.data_on_device=False")
  rows = []
  for i in progress.track(range(len(source)), desc=f"load {source!r} onto the devices", unit="images"):
    element = source[i]
    for t in transforms:
      element = t.map(element)
    rows.append(element)
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


class ArraySource:
  """In-memory random-access source over aligned arrays, e.g. ArraySource(image=x, label=y)."""

  def __init__(self, name: str = "arrays", **arrays: np.ndarray):
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"ArraySource {name}: arrays of different lengths {lengths}")
    self.name, self.arrays = name, arrays
    self.length = next(iter(lengths.values()))

  def __len__(self):
    return self.length

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.arrays.items()}

  def __repr__(self):  # grain checks repr(source) on restore: keep it stable
    return f"ArraySource({self.name}, n={self.length}, keys={sorted(self.arrays)})"


# ----------------------------------------------------------------------------------------------
# ArrayRecord datasets through TFDS builders, without TensorFlow
# ----------------------------------------------------------------------------------------------
def write_arrayrecord(name: str, data_dir: str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                      num_classes: int) -> str:
  """Writes {split: (uint8 images (N,H,W,C), int labels (N,))} as a TFDS ArrayRecord dataset.

  Images go in as PNG-encoded bytes, which TFDS accepts without TF (numpy images would need it).
  Returns the dataset directory. Read it back with `ArrayRecordSource(name, data_dir, split)`.
  """
  import io  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  shape = next(iter(splits.values()))[0].shape[1:]

  def png(img):
    buf = io.BytesIO()
    Image.fromarray(img if img.shape[-1] != 1 else img[..., 0]).save(buf, format="PNG")
    return buf.getvalue()

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # callable more than once
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=shape), "label": tfds.features.ClassLabel(num_classes=num_classes)}))

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in splits}

    def _generate_examples(self, split):
      images, labels = splits[split]
      for i, (img, lab) in enumerate(zip(images, labels)):
        yield i, {"image": png(img), "label": int(lab)}

  Builder.name = name
  builder = Builder(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder.data_dir


class ArrayRecordSource:
  """Random access to a TFDS ArrayRecord split as {"image": float32 HWC [0,1], "label": int32}."""

  def __init__(self, name: str, data_dir: str, split: str):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    self.name, self.data_dir, self.split = name, data_dir, split
    try:
      self._src = tfds.data_source(name, data_dir=data_dir, split=split)
    except Exception as e:  # tfds raises several types for a missing / bad folder
      raise ValueError(f"{data_dir}/{name}: cannot open split {split!r} ({type(e).__name__}: {e}); "
                       "write it with common.data.write_arrayrecord") from e

  def __len__(self):
    return len(self._src)

  def __getitem__(self, i):
    ex = self._src[i]
    img = np.asarray(ex["image"], np.float32) / 255.0
    return {"image": img, "label": np.int32(ex["label"])}

  def __repr__(self):
    return f"ArrayRecordSource({self.data_dir}/{self.name}:{self.split})"

  def __getstate__(self):  # reopen in worker processes instead of pickling file handles
    return {"name": self.name, "data_dir": self.data_dir, "split": self.split}

  def __setstate__(self, state):
    self.__init__(**state)
