"""C3D features of the benchmark's videos, read lazily and validated.

Two on-disk forms are supported, the two a real user has:

* the ActivityNet 2016 release: one HDF5 file, one group per video named
  ``v_<id>`` with a dataset ``c3d_features`` of shape ``[rows, dim]`` holding
  one row every 8 frames; the benchmark uses every second row (0, 2, 4, …), so
  one feature covers 16 frames without overlap;
* the benchmark authors' preprocessing: a directory of ``v_<id>.npy`` files,
  each ``[n_feat, dim]``, already subsampled.

Nothing reads a whole file into memory: `FeatureStore.preload` reads, per
video, only the span of rows the given windows cover, and keeps just that.
"""

from __future__ import annotations

import os
import threading
from typing import Iterable, Protocol

import h5py
import numpy as np

from vreloc_jax import storage
from vreloc_jax.data.splits import Entry

FRAMES_PER_FEATURE = 16  # Frames one (subsampled) feature step covers in the benchmark.

HDF5_DATASET = "c3d_features"
HDF5_SUFFIXES = (".hdf5", ".h5")
# The file name of the ActivityNet release; found by default in a data dir.
DEFAULT_HDF5_NAME = "sub_activitynet_v1-3.c3d.hdf5"
DEFAULT_NPY_DIR = "feat"


class FeatureSource(Protocol):
  """Where raw features come from (an HDF5 file or a directory of .npy)."""

  path: str

  def num_features(self, video_id: str) -> int:
    """Number of (subsampled) features of a video."""

  def read(self, video_id: str, start: int, end: int) -> np.ndarray:
    """Rows ``[start, end)`` of a video's subsampled features, ``[n, dim]``."""


class Hdf5Source:
  """The ActivityNet C3D HDF5 layout, every second row, opened lazily."""

  def __init__(self, path: str):
    self.path = path
    self._file: h5py.File | None = None
    self._handle = None  # The file object h5py reads a cloud object through.
    self._lock = threading.Lock()

  def _dataset(self, video_id: str) -> h5py.Dataset:
    with self._lock:
      if self._file is None:
        try:
          if storage.is_local(self.path):
            self._file = h5py.File(self.path, "r")
          else:
            self._handle = storage.open_binary(self.path)
            self._file = h5py.File(self._handle, "r")
        except OSError as e:
          raise ValueError(f"feature file {self.path} is unreadable: {e}") from e
    group = f"v_{video_id}"
    try:
      node = self._file.get(group)
    except (OSError, RuntimeError, KeyError) as e:
      raise ValueError(f"{self.path}: video {group} is unreadable: {e}") from e
    if node is None:
      raise ValueError(f"{self.path}: video {group} is missing")
    if isinstance(node, h5py.Group):
      node = node.get(HDF5_DATASET)
      if node is None:
        raise ValueError(f"{self.path}: video {group} has no dataset '{HDF5_DATASET}'")
    if not isinstance(node, h5py.Dataset) or node.ndim != 2:
      shape = getattr(node, "shape", None)
      raise ValueError(f"{self.path}: video {group} features must be 2-D, got shape {shape}")
    return node

  def num_features(self, video_id: str) -> int:
    return (self._dataset(video_id).shape[0] + 1) // 2

  def read(self, video_id: str, start: int, end: int) -> np.ndarray:
    ds = self._dataset(video_id)
    try:
      return np.asarray(ds[2 * start:2 * end:2])
    except (OSError, RuntimeError, ValueError) as e:
      raise ValueError(f"{self.path}: video v_{video_id} is unreadable: {e}") from e

  def close(self) -> None:
    with self._lock:
      if self._file is not None:
        self._file.close()
        self._file = None
      if self._handle is not None:
        self._handle.close()
        self._handle = None


class NpyDirSource:
  """A directory of ``v_<id>.npy`` files, memory-mapped on access."""

  def __init__(self, path: str):
    self.path = path

  def _array(self, video_id: str) -> np.ndarray:
    file = storage.join(self.path, f"v_{video_id}.npy")
    if not storage.is_file(file):
      raise ValueError(f"{self.path}: video v_{video_id} is missing (no {file})")
    try:
      if storage.is_local(file):
        array = np.load(file, mmap_mode="r", allow_pickle=False)
      else:
        with storage.open_binary(file) as f:
          array = np.load(f, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"{file}: video v_{video_id} is unreadable: {e}") from e
    if array.ndim != 2:
      raise ValueError(f"{file}: video v_{video_id} features must be 2-D, got shape {array.shape}")
    return array

  def num_features(self, video_id: str) -> int:
    return self._array(video_id).shape[0]

  def read(self, video_id: str, start: int, end: int) -> np.ndarray:
    return np.array(self._array(video_id)[start:end])

  def close(self) -> None:
    pass


def find_features(data_dir: str) -> str:
  """The default feature path of a benchmark directory.

  Returns ``<data_dir>/sub_activitynet_v1-3.c3d.hdf5`` if present, else
  ``<data_dir>/feat`` if it is a directory.

  Raises:
    ValueError: neither exists (or ``data_dir`` does not).
  """
  if not storage.is_dir(data_dir):
    raise ValueError(f"data directory {data_dir} does not exist (or is not a directory); pass "
                     "the directory of the split files and features")
  hdf5 = storage.join(data_dir, DEFAULT_HDF5_NAME)
  if storage.is_file(hdf5):
    return hdf5
  npy = storage.join(data_dir, DEFAULT_NPY_DIR)
  if storage.is_dir(npy):
    return npy
  raise ValueError(
      f"no features found in {data_dir}: expected {DEFAULT_HDF5_NAME} or a '{DEFAULT_NPY_DIR}/' "
      "directory of v_<id>.npy files; pass the path explicitly (--features / config.data.features)")


class FeatureStore:
  """Validated, cached access to the features of the windows a run uses.

  Attributes:
    path: the HDF5 file or .npy directory.
    feature_dim: the feature dimension, read from the data (or checked
      against ``expected_dim``).
  """

  def __init__(self, source: FeatureSource, expected_dim: int | None = None):
    self.source = source
    self.path = source.path
    self.feature_dim = expected_dim
    # video id → (first cached row, [rows, dim] float32)
    self._cache: dict[str, tuple[int, np.ndarray]] = {}

  def _validated(self, video_id: str, start: int, end: int, array: np.ndarray) -> np.ndarray:
    where = f"{self.path}: video v_{video_id}"
    if array.shape[0] != end - start:
      n = self.source.num_features(video_id)
      raise ValueError(f"{where}: window [{start}, {end}) is out of range "
                       f"(the video has {n} features)")
    if self.feature_dim is None:
      self.feature_dim = int(array.shape[1])
    elif array.shape[1] != self.feature_dim:
      raise ValueError(f"{where}: feature dimension {array.shape[1]}, expected {self.feature_dim}")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
      raise ValueError(f"{where}: features of dtype {array.dtype} are not numeric")
    array = np.asarray(array, dtype=np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
      row = int(np.argwhere(bad)[0, 0]) + start
      raise ValueError(f"{where}: non-finite feature values (first at feature {row})")
    return array

  def _read(self, video_id: str, start: int, end: int) -> np.ndarray:
    if end <= start:
      raise ValueError(f"{self.path}: video v_{video_id}: window [{start}, {end}) is empty or inverted")
    if start < 0:
      raise ValueError(f"{self.path}: video v_{video_id}: window [{start}, {end}) starts before 0")
    return self._validated(video_id, start, end, self.source.read(video_id, start, end))

  def preload(self, entries: Iterable[Entry]) -> None:
    """Reads and caches, per video, the span of rows the entries' windows cover."""
    spans: dict[str, list[int]] = {}
    for entry in entries:
      a, b = entry.location
      span = spans.setdefault(entry.video_id, [a, b])
      span[0], span[1] = min(span[0], a), max(span[1], b)
    for video_id, (a, b) in spans.items():
      cached = self._cache.get(video_id)
      if cached is not None:
        c0, arr = cached
        if c0 <= a and b <= c0 + arr.shape[0]:
          continue
        a, b = min(a, c0), max(b, c0 + arr.shape[0])
      self._cache[video_id] = (a, self._read(video_id, a, b))

  def video(self, video_id: str) -> np.ndarray:
    """All (subsampled) features of a video, float32 ``[n_feat, dim]``, validated."""
    return self._read(video_id, 0, self.source.num_features(video_id))

  def window(self, video_id: str, start: int, end: int) -> np.ndarray:
    """Features ``[start, end)`` of a video, float32 ``[end - start, dim]``."""
    cached = self._cache.get(video_id)
    if cached is not None:
      c0, arr = cached
      if c0 <= start and end <= c0 + arr.shape[0] and end > start:
        return arr[start - c0:end - c0]
    return self._read(video_id, start, end)

  def close(self) -> None:
    self.source.close()


def open_features(path: str | os.PathLike[str], expected_dim: int | None = None) -> FeatureStore:
  """Opens features in either supported layout (by the path's form).

  Args:
    path: an ``.hdf5``/``.h5`` file in the ActivityNet layout, or a directory
      of ``v_<id>.npy`` files.
    expected_dim: if given, every video must have this feature dimension.

  Raises:
    ValueError: the path does not exist or is of neither form.
  """
  path = os.fspath(path)
  if storage.is_dir(path):
    return FeatureStore(NpyDirSource(path), expected_dim)
  if storage.is_file(path):
    if not path.endswith(HDF5_SUFFIXES) and not (storage.is_local(path) and h5py.is_hdf5(path)):
      raise ValueError(f"feature file {path} is not an HDF5 file")
    return FeatureStore(Hdf5Source(path), expected_dim)
  raise ValueError(f"features {path} do not exist (expected an HDF5 file or a directory of .npy)")
