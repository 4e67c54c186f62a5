"""A re-localization benchmark built from real multichannel recordings.

  python -m vreloc_jax.data.recordings --out=DIR [--source=japanese_vowels] [--seed=0]

The synthetic default is data this project invented; this benchmark is not.
It takes real recordings shipped inside a registry package and lays them out
exactly as the ActivityNet re-localization benchmark is laid out, so every
reader, trainer, baseline and metric of the project runs on it unchanged:
``train.json`` / ``val.json`` / ``test.json`` (entries ``{"id", "label",
"location": [a, b], "groundtruth": [s, e]}``), ``length.json``, the features
as one HDF5 file in the ActivityNet layout (group ``v_<id>``, dataset
``c3d_features``, one row every 8 "frames", the features on the even rows;
float32) and a manifest ``recordings.json``.

Source (`SOURCES`):

* ``japanese_vowels`` — the UCI *Japanese Vowels* recordings (Kudo, Toyama and
  Shimbo, Pattern Recognition Letters 20, 1999; UCI Machine Learning
  Repository, licence CC BY 4.0), as shipped inside the ``sktime`` package
  (BSD-3-Clause; ``sktime/datasets/data/JapaneseVowels``, its TRAIN and TEST
  files pooled): 640 utterances of the vowel pair /ae/ by 9 male speakers,
  each a sequence of 7-29 frames of 12 LPC cepstrum coefficients. A class is a
  speaker; one utterance is one action instance (one step = one analysis
  frame). Its lengths match the benchmark's segments (1-32 steps).

How the benchmark is laid out (deterministic in ``seed``):

* Classes are split 5 / 2 / 2 into train / val / test by a seeded
  permutation: the classes of val and test are never seen in training.
* Every utterance of a split's classes is the target of one entry. Its
  reference ("video") is a stream of K = 2-4 utterances (uniform) in which the
  target sits at a uniformly drawn position and the K - 1 others are
  utterances of K - 1 *different* classes other than the target's. Every class
  appears at most once in a stream, so no query-blind "odd one out" rule finds
  the target: only the query tells which instance it is. Distractors of train
  entries come from train classes only (nothing of val or test is ever seen in
  training); those of val and test entries from the val and test classes
  together (2 + 2 unseen classes, so K up to 4 everywhere).
* The window is the whole stream (``location = [0, n]``); the ground truth is
  the target's span. Windows are 14-116 steps.
* Features are standardized per channel with the mean and standard deviation
  of the training classes' frames (as a PCA of C3D features is fitted on
  training data); nothing else is done to them.

Evaluation pairs are drawn by the project's fixed rule (`pairs.eval_pairs`)
the first time a split is evaluated, as for any benchmark directory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import h5py
import numpy as np

from vreloc_jax.data import directory
from vreloc_jax.data import features as features_lib

VERSION = 1
MANIFEST_NAME = "recordings.json"
HDF5_NAME = features_lib.DEFAULT_HDF5_NAME
SPLITS = ("train", "val", "test")
MIN_INSTANCES, MAX_INSTANCES = 2, 4  # Utterances per reference stream, target included.


@dataclasses.dataclass(frozen=True)
class Source:
  """A set of labelled real recordings and how its classes are split."""

  name: str
  load: Callable[[], tuple[list[np.ndarray], np.ndarray]]  # instances [L, C], labels
  class_split: tuple[int, int, int]  # Classes of train / val / test.
  description: str
  licence: str


def _sktime_panel(dataset: str) -> tuple[list[np.ndarray], np.ndarray]:
  """A UCR/UEA dataset shipped inside sktime, TRAIN and TEST pooled: ([L, C] each, labels)."""
  try:
    import sktime  # pylint: disable=g-import-not-at-top
    from sktime.datasets import load_from_tsfile  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"the {dataset} recordings ship inside the 'sktime' package, which is not "
                     "installed: pip install -r requirements.txt") from e
  root = os.path.join(os.path.dirname(sktime.__file__), "datasets", "data", dataset)
  instances, labels = [], []
  for part in ("TRAIN", "TEST"):
    path = os.path.join(root, f"{dataset}_{part}.ts")
    if not os.path.isfile(path):
      raise ValueError(f"{path} is missing: this sktime version does not ship {dataset}")
    frames, y = load_from_tsfile(path, return_data_type="df-list")
    instances += [np.asarray(f, dtype=np.float64) for f in frames]  # [L, C] each
    labels += [str(v) for v in y]
  return instances, np.asarray(labels)


SOURCES = {
    "japanese_vowels": Source(
        name="japanese_vowels",
        load=lambda: _sktime_panel("JapaneseVowels"),
        class_split=(5, 2, 2),
        description="UCI Japanese Vowels: 640 utterances of 9 speakers, 12 LPC cepstra per frame",
        licence="CC BY 4.0 (UCI Machine Learning Repository; shipped in sktime, BSD-3-Clause)"),
}


@dataclasses.dataclass(frozen=True)
class Stream:
  """One reference video: utterances in order, one of them the target."""

  video_id: str
  split: str
  label: int  # The target's class.
  instances: tuple[int, ...]  # Indices into the source's instances.
  target: int  # Position of the target in `instances`.


def split_classes(labels: np.ndarray, class_split: Sequence[int], seed: int
                  ) -> dict[str, list[str]]:
  """The classes of each split: a seeded permutation of the sorted class names."""
  classes = sorted(set(labels.tolist()))
  if sum(class_split) != len(classes):
    raise ValueError(f"class split {tuple(class_split)} does not cover the {len(classes)} classes")
  order = [classes[i] for i in np.random.default_rng([seed, 0]).permutation(len(classes))]
  bounds = np.cumsum([0, *class_split])
  return {split: sorted(order[bounds[i]:bounds[i + 1]]) for i, split in enumerate(SPLITS)}


def layout(labels: np.ndarray, classes: dict[str, list[str]], seed: int,
           prefix: str) -> list[Stream]:
  """The reference streams of every split (see the module docstring)."""
  by_class = {c: np.flatnonzero(labels == c) for c in sorted(set(labels.tolist()))}
  label_ids = {c: i for i, c in enumerate(sorted(by_class))}
  pools = {"train": classes["train"], "val": classes["val"] + classes["test"],
           "test": classes["val"] + classes["test"]}
  streams = []
  for split in SPLITS:
    count = 0
    for cls in classes[split]:
      for instance in by_class[cls]:
        rng = np.random.default_rng([seed, 1, int(instance)])
        others = [c for c in pools[split] if c != cls]
        k = int(rng.integers(MIN_INSTANCES, min(MAX_INSTANCES, len(others) + 1) + 1))
        chosen = [others[i] for i in rng.permutation(len(others))[:k - 1]]
        distractors = [int(rng.choice(by_class[c])) for c in chosen]
        target = int(rng.integers(k))
        order = distractors[:target] + [int(instance)] + distractors[target:]
        streams.append(Stream(video_id=f"{prefix}-{split}-{count:04d}", split=split,
                              label=label_ids[cls], instances=tuple(order), target=target))
        count += 1
  return streams


def _standardizer(instances: Sequence[np.ndarray], labels: np.ndarray,
                  train_classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of the training classes' frames: [C], [C]."""
  train = set(train_classes)
  frames = np.concatenate([x for x, y in zip(instances, labels) if y in train])  # [frames, C]
  mean, std = frames.mean(axis=0), frames.std(axis=0)
  return mean, np.where(std > 0, std, 1.0)


def hdf5_rows(features: np.ndarray) -> np.ndarray:
  """ActivityNet rows from features: the features on even rows, neighbour means between."""
  rows = np.empty((2 * features.shape[0] - 1, features.shape[1]), np.float32)  # [2n - 1, C]
  rows[0::2] = features
  rows[1::2] = 0.5 * (features[:-1] + features[1:])
  return rows


def build(out_dir: str, source: str = "japanese_vowels", seed: int = 0,
          overwrite: bool = False) -> dict[str, Any]:
  """Builds (or finds already built) the benchmark directory of a source.

  Args:
    out_dir: the directory to create; a second call with the same source and
      seed is a cache hit.
    source: a key of `SOURCES`.
    seed: seeds the class split and the streams; the same seed gives
      byte-identical files.
    overwrite: replace a different dataset already at `out_dir`.

  Returns:
    The manifest, per-split counts, ``cached`` and ``seconds``.

  Raises:
    ValueError: unknown source, missing package, or `out_dir` holds something else.
  """
  if source not in SOURCES:
    raise ValueError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
  src = SOURCES[source]
  manifest = {"generator": "vreloc_jax.data.recordings", "version": VERSION, "source": source,
              "seed": seed, "description": src.description, "licence": src.licence,
              "features": HDF5_NAME, "feature_dtype": "float32"}

  def fill(tmp: str) -> dict[str, Any]:
    instances, labels = src.load()
    classes = split_classes(labels, src.class_split, seed)
    mean, std = _standardizer(instances, labels, classes["train"])
    streams = layout(labels, classes, seed, prefix=source.replace("_", ""))
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    lengths = {}
    with h5py.File(os.path.join(tmp, HDF5_NAME), "w", libver="earliest") as f:
      for stream in streams:
        parts = [(instances[i] - mean) / std for i in stream.instances]
        start = sum(len(p) for p in parts[:stream.target])
        video = np.concatenate(parts).astype(np.float32)  # [n, C]
        f.create_group(f"v_{stream.video_id}").create_dataset(
            features_lib.HDF5_DATASET, data=hdf5_rows(video))
        rows[stream.split].append({"id": stream.video_id, "label": stream.label,
                                   "location": [0, len(video)],
                                   "groundtruth": [start, start + len(parts[stream.target])]})
        lengths[stream.video_id] = {"n_feat": len(video),
                                    "n_frames": features_lib.FRAMES_PER_FEATURE * len(video)}
    for split in SPLITS:
      directory.dump_json(os.path.join(tmp, f"{split}.json"), rows[split])
    directory.dump_json(os.path.join(tmp, "length.json"), lengths)
    return {"feature_dim": int(instances[0].shape[1]),
            "classes": {s: list(c) for s, c in classes.items()},
            "splits": {s: {"entries": len(rows[s]), "classes": len(classes[s])} for s in SPLITS}}

  return directory.build_directory(out_dir, manifest, MANIFEST_NAME, fill,
                                   f"the {source} recordings benchmark (seed {seed})",
                                   overwrite=overwrite)


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("out", None, "Directory to write the benchmark into.")
  flags.DEFINE_enum("source", "japanese_vowels", sorted(SOURCES), "Which recordings.")
  flags.DEFINE_integer("seed", 0, "Seed of the class split and the streams.")
  flags.DEFINE_bool("overwrite", False, "Replace a different dataset already at --out.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  if not FLAGS.out:
    raise app.UsageError("--out is required.")
  try:
    summary = build(FLAGS.out, source=FLAGS.source, seed=FLAGS.seed, overwrite=FLAGS.overwrite)
  except ValueError as e:
    raise SystemExit(f"vreloc_jax.data.recordings: error: {e}") from None
  if summary.get("cached"):
    print(f"{FLAGS.out}: already built ({summary['source']}, seed {summary['seed']}).")
    return
  for split, s in summary["splits"].items():
    print(f"{split:5s}: {s['entries']:4d} entries, {s['classes']} classes "
          f"({', '.join(summary['classes'][split])})")
  print(f"{summary['source']}: {summary['feature_dim']}-d features, {summary['seconds']:.1f} s "
        f"-> {FLAGS.out}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
