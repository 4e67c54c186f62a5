"""Shared fixtures: a tiny benchmark on disk, with features in both layouts.

The benchmark has the real one's file layout (``train.json``, ``val.json``,
``test.json``, ``length.json``) and its features twice: as the ActivityNet
HDF5 release (group ``v_<id>``, dataset ``c3d_features``, where only rows
0, 2, 4, … are features and the odd rows hold decoys that must never be read)
and as a directory of ``v_<id>.npy`` files.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Callable, Container

import h5py
import numpy as np
import pytest

# One on-disk XLA cache for the whole test session and the processes it starts: the
# same program compiled by several short trainings is compiled once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vreloc-xla-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# The tests run tiny programs, which cost far more to compile than to run: XLA:CPU at LLVM
# level 0 without its expensive passes compiles them in about two thirds of the time. Set
# here, before JAX starts, so that this process and every process it starts agree (and share
# the cache above). A test that needs XLA's own level asks for it through the config
# (`vreloc_jax.compilation.compiler_options`), which overrides these flags.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def subprocess_env(**extra: str) -> dict[str, str]:
  """The environment of a process a test starts: this one's, on CPU, plus ``extra``.

  ``XLA_FLAGS`` in ``extra`` are added to this process's (`FAST_COMPILE`), not put instead.
  """
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
  if "XLA_FLAGS" in extra:
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra['XLA_FLAGS']}".strip()
  return env

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# The real benchmark's split files (never copied into the project): ../shared beside the
# checkout, or $VRELOC_REAL_DATA. Tests that need them skip when they are absent.
REAL_DATA_DIR = pathlib.Path(os.environ.get(
    "VRELOC_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "activitynet_reloc"))
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from vreloc_jax.data import features as features_lib  # noqa: E402

FEATURE_DIM = 8
SPLIT_LABELS = {"train": (101, 102, 103), "val": (201, 202), "test": (301, 302)}
VIDEOS_PER_LABEL = 4


def hdf5_rows(features: np.ndarray, odd_count: bool) -> np.ndarray:
  """The raw HDF5 rows whose even rows are ``features`` [n, dim].

  Odd rows (one every 8 frames, between two features) hold decoy values far
  from any feature, so that reading them is caught. With ``odd_count`` the
  dataset has ``2n - 1`` rows (no decoy after the last feature), else ``2n``.
  """
  n = features.shape[0]
  rows = np.empty((2 * n - int(odd_count), features.shape[1]), features.dtype)  # [rows, dim]
  rows[0::2] = features
  if np.issubdtype(features.dtype, np.floating):
    rows[1::2] = -1000.0 - np.abs(features[:rows.shape[0] // 2])
  else:
    rows[1::2] = -1000
  return rows


def write_features(root: str | os.PathLike[str], videos: dict[str, np.ndarray], layout: str,
                   name: str | None = None, odd_count: Container[str] | None = None) -> str:
  """Writes per-video features [n_feat, dim] in one layout and returns its path.

  Args:
    root: directory to write into (created if needed).
    videos: video id (without ``v_``) → its subsampled features.
    layout: ``"hdf5"`` (the ActivityNet file) or ``"npy"`` (a dir of .npy).
    name: file/dir name; by default the names `find_features` looks for.
    odd_count: HDF5 only: the videos stored with an odd number of rows; by
      default every second video in sorted order.
  """
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  if layout == "hdf5":
    path = root / (name or features_lib.DEFAULT_HDF5_NAME)
    if odd_count is None:
      odd_count = set(sorted(videos)[1::2])
    with h5py.File(path, "w") as f:
      for vid, feats in videos.items():
        f.create_dataset(f"v_{vid}/{features_lib.HDF5_DATASET}",
                         data=hdf5_rows(feats, vid in odd_count))
  elif layout == "npy":
    path = root / (name or features_lib.DEFAULT_NPY_DIR)
    path.mkdir(exist_ok=True)
    for vid, feats in videos.items():
      np.save(path / f"v_{vid}.npy", feats)
  else:
    raise ValueError(f"unknown layout {layout!r}")
  return str(path)


@dataclasses.dataclass
class Bench:
  """A tiny benchmark on disk (read-only for tests: copy before writing)."""

  root: str
  hdf5: str                       # ActivityNet-layout HDF5 file (default name)
  npy_dir: str                    # directory of v_<id>.npy (default name 'feat')
  features: dict[str, np.ndarray]  # video id → float32 [n_feat, FEATURE_DIM]
  raw_splits: dict[str, list[dict]]
  split_files: dict[str, str]
  labels: dict[str, int]          # video id → label


def _make_split(rng: np.random.Generator, labels: tuple[int, ...],
                n_feat: dict[str, int], video_labels: dict[str, int]) -> list[dict]:
  raw = []
  for label in labels:
    for k in range(VIDEOS_PER_LABEL):
      vid = f"x{label}-v_{k}"  # YouTube ids may hold '-' and '_'
      n_feat[vid] = int(rng.integers(30, 61))
      video_labels[vid] = label
      for j in range(1 + k % 2):
        length = int(rng.integers(4, 26))
        a = int(rng.integers(0, n_feat[vid] - length + 1))
        # The first entry of a class has a one-step segment, so that every
        # entry of the class has an evaluation query that fits its window.
        seg_len = 1 if k == j == 0 else int(rng.integers(1, min(length, 10) + 1))
        s = int(rng.integers(0, length - seg_len + 1))
        raw.append({"id": vid, "label": label, "location": [a, a + length],
                    "groundtruth": [s, s + seg_len]})
  return [raw[i] for i in rng.permutation(len(raw))]  # classes interleaved


def make_benchmark(root: str | os.PathLike[str], seed: int = 0,
                   feature_dim: int = FEATURE_DIM) -> Bench:
  """Writes a tiny benchmark under ``root`` (see the module docstring), ``feature_dim``-d."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  n_feat: dict[str, int] = {}
  video_labels: dict[str, int] = {}
  raw_splits, split_files = {}, {}
  for split, labels in SPLIT_LABELS.items():
    raw_splits[split] = _make_split(rng, labels, n_feat, video_labels)
    split_files[split] = str(root / f"{split}.json")
    with open(split_files[split], "w") as f:
      json.dump(raw_splits[split], f)
  with open(root / "length.json", "w") as f:
    json.dump({vid: {"n_frames": 16 * n + 5, "n_feat": n} for vid, n in n_feat.items()}, f)
  feats = {vid: rng.normal(size=(n, feature_dim)).astype(np.float32) for vid, n in n_feat.items()}
  return Bench(root=str(root), hdf5=write_features(root, feats, "hdf5"),
               npy_dir=write_features(root, feats, "npy"), features=feats,
               raw_splits=raw_splits, split_files=split_files, labels=video_labels)


@pytest.fixture(scope="session")
def bench(tmp_path_factory) -> Bench:
  """The tiny benchmark, shared by all tests; do not write into it."""
  return make_benchmark(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="session")
def feature_writer() -> Callable[..., str]:
  """`write_features`, for tests that build their own (often broken) features."""
  return write_features


@pytest.fixture(params=["hdf5", "npy"])
def layout(request) -> str:
  """Runs a test once per feature layout."""
  return request.param


@pytest.fixture(scope="session")
def vowels(tmp_path_factory) -> str:
  """The real-recordings benchmark (Japanese Vowels), built once per test session (seconds)."""
  from vreloc_jax.data import recordings  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("recordings") / "jv")
  assert not recordings.build(out)["cached"]
  return out
