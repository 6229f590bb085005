"""Random-access image source over `.npy` arrays, for grain data loaders."""

import operator
import os

import numpy as np

_DTYPES = (np.uint8, np.float16, np.float32, np.float64)
_SAMPLE = 256  # images checked for range / NaN at construction (cheap, not exhaustive)


def _fail(path, problem, fix):
    """Raises a one-line ValueError naming the file, the problem and the fix."""
    message = f"{path}: {problem}; {fix}"
    raise ValueError(" ".join(message.split()))


def _load(path, mmap_mode):
    """np.load with missing/corrupt files turned into `_fail` errors."""
    if not os.path.isfile(path):
        _fail(path, "file not found",
              "check the path or create data with `python -m ear_teacher.synthetic --out DIR`")
    # Check the magic first: np.load would try to unpickle anything else and
    # report a confusing "pickled data" error, or return an .npz archive.
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        kind = "an .npz/zip archive" if magic.startswith(b"PK") else "not a .npy file"
        _fail(path, f"is {kind}", "save a single array with numpy.save(path, array)")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except Exception as e:  # np.load raises many types for a corrupt header/body
        _fail(path, f"is a corrupt or unsupported .npy file ({type(e).__name__}: {e})",
              "re-save the array with numpy.save(path, array)")


class NpyImageSource:
    """Images from an `.npy` file of shape (N,H,W,3), (N,H,W,1) or (N,H,W).

    Item i is `dict(image=float32 (H,W,3) in [0,1], index=i)` (uint8 (H,W,3)
    with `uint8=True`), plus `id` (the identity label) when `ids_path` is
    given.  uint8 data is divided by 255;
    float data must already lie in [0,1]; greyscale is repeated to 3 channels
    at read time, so the file on disk stays small.

    The array is memory-mapped and opened lazily: only the path is pickled, so
    grain worker processes each map the file themselves instead of receiving
    a copy of the data.  The file is fully validated at construction so that
    a bad data set fails before training starts, not inside a worker.
    """

    def __init__(self, path, ids_path=None, uint8=False):
        self.path, self.uint8 = os.fspath(path), uint8
        arr = _load(self.path, "r")
        if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3)):
            _fail(self.path, f"has shape {arr.shape}",
                  "images must be (N,H,W,3), (N,H,W,1) or greyscale (N,H,W)")
        if 0 in arr.shape:
            _fail(self.path, f"is empty (shape {arr.shape})",
                  "it needs at least one image of nonzero size")
        if arr.dtype not in _DTYPES:
            _fail(self.path, f"has dtype {arr.dtype}",
                  "save images as uint8 (0-255) or float16/32/64 in [0,1]")
        if arr.dtype != np.uint8:
            # Evenly spaced images cover the file without reading all of it.
            idx = np.unique(np.linspace(0, len(arr) - 1, min(len(arr), _SAMPLE)).astype(int))
            sample = np.asarray(arr[idx], dtype=np.float64)
            if np.isnan(sample).any():
                _fail(self.path, "float data contains NaN", "clean the images before saving")
            lo, hi = sample.min(), sample.max()
            if lo < -1e-3 or hi > 1 + 1e-3:
                _fail(self.path, f"float data spans [{lo:.4g}, {hi:.4g}], not [0,1]",
                      "scale images to [0,1] or save them as uint8 (0-255)")
        self.shape, self.dtype = arr.shape, arr.dtype
        self._array = arr

        self.ids = None
        if ids_path is not None:
            ids_path = os.fspath(ids_path)
            ids = _load(ids_path, None)
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                _fail(ids_path, f"has shape {ids.shape} and dtype {ids.dtype}",
                      "identity labels must be a 1-D integer array")
            if len(ids) != len(arr):
                _fail(ids_path, f"has {len(ids)} labels but {self.path} has {len(arr)} images",
                      "regenerate the labels to match the images")
            self.ids = ids.astype(np.int64)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        i = operator.index(index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images in {self.path}")
        if self._array is None:  # first access in this process (e.g. a grain worker)
            self._array = np.load(self.path, mmap_mode="r")
        img = np.asarray(self._array[i])
        if self.uint8:  # training ships bytes; the step converts them on the device
            if img.dtype != np.uint8:
                img = np.rint(np.clip(img.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
        elif img.dtype == np.uint8:
            img = img.astype(np.float32) / 255.0
        else:
            # Clipping absorbs the small tolerance allowed by validation.
            img = np.clip(img.astype(np.float32), 0.0, 1.0)
        if img.ndim == 2:
            img = img[..., None]
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        item = dict(image=img, index=i)
        if self.ids is not None:
            item["id"] = int(self.ids[i])
        return item

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None  # never pickle the memmap; reopen on first access
        return state

    def __repr__(self):
        return f"NpyImageSource(path={self.path!r}, shape={self.shape}, dtype={self.dtype}, uint8={self.uint8})"

