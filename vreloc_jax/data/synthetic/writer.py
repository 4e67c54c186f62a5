"""Writing a generated benchmark in the real one's on-disk format (atomically, cached)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Sequence

import h5py
import numpy as np

from vreloc_jax import storage
from vreloc_jax.data import directory
from vreloc_jax.data.synthetic import features
from vreloc_jax.data.synthetic import layout
from vreloc_jax.data.synthetic.features import FEATURE_DIM, ControlParams, FeatureParams, Params

VERSION = 5  # The generator version; 2-4 were replaced (docs/results.md).
HDF5_NAME = "sub_activitynet_v1-3.c3d.hdf5"
HDF5_DATASET = "c3d_features"
MANIFEST_NAME = "synthetic.json"
POSITIVE_CONTROL = ControlParams()  # The weak objective's positive control (`ControlParams`).
_MODELS = {"benchmark": FeatureParams, "positive_control": ControlParams}  # Manifest names.
_RENDER_CHUNK = 256  # Videos projected together (one matrix product).


def _model_name(params: Params) -> str:
  return "positive_control" if isinstance(params, ControlParams) else "benchmark"


def _manifest(seed: int, scale: float, params: Params, splits_from: str | None) -> dict:
  return {"generator": "vreloc_jax.data.synthetic", "version": VERSION,
          "feature_model": _model_name(params), "seed": seed, "scale": scale,
          "splits_from": os.path.abspath(splits_from) if splits_from else None,
          "feature_dim": FEATURE_DIM, "features": HDF5_NAME, "feature_dtype": "float16",
          "params": dataclasses.asdict(params)}


def _write_features(path: str, videos: Sequence[layout.Video], world: features.World,
                    params: Params, seed: int) -> int:
  """Renders and writes every video's features; returns the number of features."""
  total = 0
  with h5py.File(path, "w", libver="earliest") as f:
    for first in range(0, len(videos), _RENDER_CHUNK):
      chunk = videos[first:first + _RENDER_CHUNK]
      rngs = [np.random.default_rng([seed, 2, first + i]) for i in range(len(chunk))]
      latents = [features.video_latent(v.pieces, v.n_feat, v.class_index, world, params, r)
                 for v, r in zip(chunk, rngs)]
      # One projection per chunk: small matrix products are slow on a busy machine.
      clean = np.concatenate(latents) @ world.projection  # [sum n_feat, D]
      offset = 0
      for video, rng in zip(chunk, rngs):
        steps = features.add_noise(clean[offset:offset + video.n_feat], world, rng)  # [n_feat, D]
        offset += video.n_feat
        f.create_group(f"v_{video.video_id}").create_dataset(HDF5_DATASET,
                                                             data=features.hdf5_rows(steps))
      total += offset
  return total


def generate_splits(seed: int = 0, scale: float = 1.0,
                    params: Params = FeatureParams()) -> dict[str, list[dict[str, Any]]]:
  """The split files `generate` would write (no features, nothing written; fast).

  Returns:
    split name → its entries ``{"id", "label", "location", "groundtruth"}``.
  """
  videos, _ = layout.plan(seed, scale, params)
  return {split: layout.split_rows(videos, split) for split in layout.SPLITS}


def generate(out_dir: str, seed: int = 0, scale: float = 1.0, splits_from: str | None = None,
             params: Params | None = None, overwrite: bool = False,
             version: int = VERSION) -> dict[str, Any]:
  """Generates (or finds cached) a synthetic benchmark directory.

  Args:
    out_dir: the benchmark directory to create. If it already holds a dataset
      generated with the same arguments (its ``synthetic.json``), nothing is
      regenerated.
    seed: seeds everything; the same seed gives byte-identical JSON files and
      identical feature arrays.
    scale: fraction of the real entry counts (and classes) to generate; 1.0
      is the real benchmark's size. Ignored with ``splits_from``.
    splits_from: a real benchmark directory; its split files and
      ``length.json`` are copied and only the features are synthesized (for
      every video the splits use, ``n_feat`` from ``length.json``).
    params: the feature model (default `FeatureParams()`; `POSITIVE_CONTROL`
      makes the weak objective's positive control).
    overwrite: replace an existing, different dataset at ``out_dir``.
    version: the generator version; only `VERSION` exists (a work directory
      of an earlier version is refused with what to do).

  Returns:
    A summary: the manifest plus per-split counts, the feature file's size,
    the total number of features and the generation time in seconds.

  Raises:
    ValueError: ``out_dir`` holds something else (and not ``overwrite``), or
      the inputs are invalid.
  """
  if version != VERSION:
    raise ValueError(f"synthetic generator version {version} was replaced by version {VERSION} "
                     "(docs/results.md); generate version "
                     f"{VERSION}, or check out a project version that made {version}")
  params = params if params is not None else FeatureParams()
  manifest = _manifest(seed, scale if splits_from is None else 1.0, params, splits_from)
  if splits_from is not None:
    for name in (*[f"{s}.json" for s in layout.SPLITS], "length.json"):
      if not os.path.isfile(os.path.join(splits_from, name)):
        raise ValueError(f"--splits_from {splits_from}: {name} is missing")

  def fill(tmp: str) -> dict[str, Any]:
    if splits_from is not None:
      videos, info = layout.from_splits(splits_from, seed, params)
      num_classes = info["num_classes"]
    else:
      videos, info = layout.plan(seed, scale, params)
      num_classes = sum(len(v) for v in layout.CLASS_ENTRY_COUNTS.values())
    world = features.make_world(seed, num_classes, params)
    summary_splits = {}
    if splits_from is not None:
      for name in (*[f"{s}.json" for s in layout.SPLITS], "length.json"):
        shutil.copyfile(os.path.join(splits_from, name), os.path.join(tmp, name))
      for split in layout.SPLITS:
        entries = info["raw"][split]
        summary_splits[split] = {"entries": len(entries),
                                 "videos": len({e["id"] for e in entries}),
                                 "classes": len(info["labels"][split])}
    else:
      rng = np.random.default_rng([seed, 4])
      lengths = {}
      for split in layout.SPLITS:
        rows = layout.split_rows(videos, split)
        directory.dump_json(os.path.join(tmp, f"{split}.json"), rows)
        summary_splits[split] = {"entries": len(rows),
                                 "videos": sum(v.split == split for v in videos),
                                 "classes": len(info["labels"][split])}
      for v in videos:
        lengths[v.video_id] = {"n_feat": v.n_feat, "n_frames": layout.n_frames(v.n_feat, rng)}
      directory.dump_json(os.path.join(tmp, "length.json"), lengths)
    n_features = _write_features(os.path.join(tmp, HDF5_NAME), videos, world, params, seed)
    return {"splits": summary_splits, "num_videos": len(videos), "num_features": n_features,
            "feature_file_bytes": os.path.getsize(os.path.join(tmp, HDF5_NAME))}

  what = f"this synthetic dataset ({_model_name(params)}, seed {seed}, scale {scale})"
  return directory.build_directory(out_dir, manifest, MANIFEST_NAME, fill, what,
                                   overwrite=overwrite)


def class_subspace_projector(data_dir: str) -> np.ndarray:
  """The class-subspace basis of a generated benchmark, float32 [D, class_dim].

  An oracle for calibration only (a model must learn it): ``features @ P``
  keeps the class trajectories and contexts and the noise in that subspace, and drops the
  appearance, background and the rest of the noise.
  """
  manifest_path = storage.join(data_dir, MANIFEST_NAME)
  if not storage.is_file(manifest_path):
    raise ValueError(f"{data_dir} has no {MANIFEST_NAME}: not a synthetic benchmark")
  manifest = storage.read_json(manifest_path)
  if manifest.get("version") != VERSION:
    raise ValueError(f"{manifest_path}: generator version {manifest.get('version')}, "
                     f"not {VERSION}: regenerate it")
  raw = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["params"].items()}
  params = _MODELS[manifest.get("feature_model", "benchmark")](**raw)
  _, basis = features.subspaces(manifest["seed"], params)
  return basis[:, :params.class_dim].astype(np.float32)
