"""The extractor's output directory, in the benchmark's on-disk layout, written resumably.

  OUT/sub_activitynet_v1-3.c3d.hdf5   group v_<id>, dataset c3d_features [rows, dim] float32:
                                      one row per clip, a clip every 8 frames (the
                                      ActivityNet release's layout; readers use every
                                      second row, `vreloc_jax.data.features`)
  OUT/length.json                     {id: {"n_frames", "n_feat", "fps", "rows", "video"}}
  OUT/extractor.json                  what made the features (`extractor.Extractor.settings`)

The HDF5 file has the name `vreloc_jax.data.features.find_features` looks for, so OUT is a
data directory for every command (add split files to train on it). Each finished video is
first kept as ``OUT/.parts/v_<id>.npy`` (+ ``.json``, written last); `OutputDir.publish`
rewrites the HDF5 file and ``length.json`` through temporary files and renames them into
place, then removes the parts. A run that stops half way leaves the parts, which the next
run publishes: videos already done (in the HDF5 file or in parts) are not extracted again.
Features of another extractor (other weights, PCA, mean or preprocessing) are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import h5py
import numpy as np

from vreloc_jax.data import features as features_lib
from vreloc_jax.features import extractor as extractor_lib

SETTINGS_NAME = "extractor.json"
LENGTHS_NAME = "length.json"
PARTS_DIR = ".parts"


def _write_atomically(path: str, write) -> None:
  """Calls ``write(tmp_path)`` then renames the temporary file to ``path``."""
  directory = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
  os.close(fd)
  try:
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private; the result is not.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _write_json(path: str, obj: Any) -> None:
  def write(tmp: str) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=1, sort_keys=True)
      f.write("\n")
  _write_atomically(path, write)


class OutputDir:
  """The output directory of an extraction (see the module docstring).

  Nothing is written until the first video is saved.

  Raises (on construction):
    ValueError: ``path`` is a file, or holds features of another extractor or of unknown
      origin.
  """

  def __init__(self, path: str, settings: dict[str, Any]):
    self.path = path
    self.settings = settings
    self.hdf5 = os.path.join(path, features_lib.DEFAULT_HDF5_NAME)
    self.lengths_file = os.path.join(path, LENGTHS_NAME)
    self.parts = os.path.join(path, PARTS_DIR)
    if os.path.exists(path) and not os.path.isdir(path):
      raise ValueError(f"--out {path} is a file, not a directory")
    settings_file = os.path.join(path, SETTINGS_NAME)
    if os.path.isfile(settings_file):
      with open(settings_file, encoding="utf-8") as f:
        theirs = json.load(f)
      if extractor_lib.settings_key(theirs) != extractor_lib.settings_key(settings):
        differ = sorted(k for k in set(theirs) | set(settings) if k != "software"
                        and theirs.get(k) != settings.get(k))
        raise ValueError(f"{path} holds features of another extractor (it differs in "
                         f"{', '.join(differ)}; {settings_file}); choose another --out or the "
                         "same --weights, --pca and --mean")
    elif os.path.exists(self.hdf5):
      raise ValueError(f"{path} holds {features_lib.DEFAULT_HDF5_NAME} but no {SETTINGS_NAME}: "
                       "features not made by vreloc_jax.features; choose another --out")

  def _part_ids(self) -> set[str]:
    if not os.path.isdir(self.parts):
      return set()
    return {name[2:-5] for name in os.listdir(self.parts)
            if name.startswith("v_") and name.endswith(".json")}

  def done(self) -> set[str]:
    """Ids of the videos already extracted (published or in parts)."""
    ids = self._part_ids()
    if os.path.isfile(self.hdf5):
      with h5py.File(self.hdf5, "r") as f:
        ids |= {name[2:] for name in f.keys() if name.startswith("v_")}
    return ids

  def save(self, video_id: str, rows: np.ndarray, info: dict[str, Any]) -> None:
    """Keeps one finished video: rows float32 [clips, dim] and its ``length.json`` entry."""
    if not os.path.isdir(self.path):
      os.makedirs(self.path)
    if not os.path.isfile(os.path.join(self.path, SETTINGS_NAME)):
      _write_json(os.path.join(self.path, SETTINGS_NAME), self.settings)
    os.makedirs(self.parts, exist_ok=True)
    base = os.path.join(self.parts, f"v_{video_id}")
    _write_atomically(base + ".npy", lambda tmp: np.save(tmp, rows.astype(np.float32)))
    _write_json(base + ".json", info)  # Last: its presence marks the part complete.

  def publish(self) -> int:
    """Merges the parts into the HDF5 file and ``length.json``; returns the videos it holds."""
    ids = sorted(self._part_ids())
    if not ids:
      return len(self.done())
    lengths: dict[str, Any] = {}
    if os.path.isfile(self.lengths_file):
      with open(self.lengths_file, encoding="utf-8") as f:
        lengths = json.load(f)

    def write(tmp: str) -> None:
      with h5py.File(tmp, "w") as out:
        if os.path.isfile(self.hdf5):
          with h5py.File(self.hdf5, "r") as old:
            for name in old.keys():
              if name[2:] not in ids:
                old.copy(old[name], out, name=name)
        for video_id in ids:
          rows = np.load(os.path.join(self.parts, f"v_{video_id}.npy"))
          out.create_dataset(f"v_{video_id}/{features_lib.HDF5_DATASET}", data=rows)

    for video_id in ids:
      with open(os.path.join(self.parts, f"v_{video_id}.json"), encoding="utf-8") as f:
        lengths[video_id] = json.load(f)
    _write_atomically(self.hdf5, write)
    _write_json(self.lengths_file, lengths)
    shutil.rmtree(self.parts)
    return len(lengths)
