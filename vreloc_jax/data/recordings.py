"""A re-localization benchmark built from real multichannel recordings.

  python -m vreloc_jax.data.recordings --out=DIR [--source=japanese_vowels|shoulder_exercises]
      [--seed=0]

The synthetic default is data this project invented; this benchmark is not. It takes
real recordings (`SOURCES`: the UCI Japanese Vowels utterances shipped with this
package in ``vreloc_jax/data/japanese_vowels/``, a class per speaker; or the smartwatch
shoulder exercises of Burns et al. shipped inside the ``seglearn`` package, a class per
exercise and arm, cut into bouts by `_bouts`, framed by `_motion_steps`) and lays them
out exactly as the ActivityNet re-localization benchmark is laid out, so every reader,
trainer, baseline and metric of the project runs on it unchanged: ``train.json`` /
``val.json`` / ``test.json``, ``length.json``, the features as one HDF5 file in the
ActivityNet layout (float32) and a manifest ``recordings.json``.

Deterministic in ``seed`` (the numbers per source are fields of `Source`): classes are
split into train / val / test by a seeded permutation (val and test classes are never
seen in training); every instance of a split's classes is the target of one entry,
whose reference (the whole window) is a stream of K instances of K different classes,
the target at a uniformly drawn position, so only the query tells which instance it is
(a source with sessions draws the others from the target's session); features are
standardized per channel with the training classes' statistics. Sources, licences and
every number: WORKSPACE.md, "The real-recordings benchmark".
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import io
import os
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import h5py
import numpy as np

from vreloc_jax import cli
from vreloc_jax.data import directory
from vreloc_jax.data import features as features_lib

VERSION = 1
MANIFEST_NAME = "recordings.json"
HDF5_NAME = features_lib.DEFAULT_HDF5_NAME
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Source:
  """A set of labelled real recordings and how its classes are split."""

  name: str
  load: Callable[[], tuple[list[np.ndarray], np.ndarray]]  # instances [L, C], labels
  class_split: tuple[int, int, int]  # Classes of train / val / test.
  description: str
  licence: str
  min_instances: int = 2  # Instances per reference stream, target included: uniform in
  max_instances: int = 4  # [min, max] (capped by the classes available).
  # The group of a class (None: its own): the classes of a group go to one split.
  class_group: Callable[[str], str] | None = None
  # The session of every instance, in `load`'s order (None: no sessions): distractors come
  # from the target's session.
  sessions: Callable[[], np.ndarray] | None = None


# The UCI Japanese Vowels recordings: sktime 1.2.0's JapaneseVowels_{TRAIN,TEST}.ts, gzipped
# (gzip -n -9) beside this module; the SHA-256 is the uncompressed file's.
JAPANESE_VOWELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "japanese_vowels")
JAPANESE_VOWELS_SHA256 = {
    "TRAIN": "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
    "TEST": "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462",
}


def read_ts(text: str, name: str) -> tuple[list[np.ndarray], list[str]]:
  """A multivariate ``.ts`` file (sktime's format, no missing values or time stamps).

  Lines starting with ``#`` are comments and ``@`` lines the header up to
  ``@data``; then one instance per line: its dimensions separated by ``:``,
  each a comma-separated series, the class label last.

  Returns:
    The instances ([L, C] float64 each) and their labels, in file order.
  """
  instances, labels = [], []
  dims, data = None, False
  for number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    if not data:
      key, _, value = line.partition(" ")
      if key.lower() == "@dimensions":
        dims = int(value)
      elif key.lower() == "@data":
        data = True
      continue
    *series, label = line.split(":")
    try:
      rows = [[float(v) for v in s.split(",")] for s in series]
    except ValueError as e:
      raise ValueError(f"{name}, line {number}: {e}") from None
    if (dims is not None and len(rows) != dims) or len({len(r) for r in rows}) != 1:
      raise ValueError(f"{name}, line {number}: expected {dims} series of one length")
    instances.append(np.asarray(rows, dtype=np.float64).T)  # [L, C]
    labels.append(label.strip())
  if not data:
    raise ValueError(f"{name}: no @data line")
  return instances, labels


@functools.lru_cache(maxsize=1)
def _japanese_vowels() -> tuple[tuple[np.ndarray, ...], np.ndarray]:
  """The Japanese Vowels utterances, TRAIN and TEST pooled: ([L, 12] each, speaker labels)."""
  instances, labels = [], []
  for part in ("TRAIN", "TEST"):
    path = os.path.join(JAPANESE_VOWELS_DIR, f"JapaneseVowels_{part}.ts.gz")
    try:
      with gzip.open(path, "rb") as f:
        raw = f.read()
    except (OSError, EOFError) as e:
      raise ValueError(f"cannot read {path} ({e}); it ships with vreloc_jax: restore it "
                       "from the repository") from None
    if hashlib.sha256(raw).hexdigest() != JAPANESE_VOWELS_SHA256[part]:
      raise ValueError(f"{path} is not the shipped file (SHA-256 differs); restore it from "
                       "the repository")
    x, y = read_ts(raw.decode("utf-8"), path)
    instances += x
    labels += y
  return tuple(instances), np.asarray(labels)


# The shoulder-exercise recordings as seglearn 1.2.5 ships them: a pickled dict, so the file is
# checked against this digest before it is unpickled.
WATCH_FILE = os.path.join("data", "watch_dataset.npy")
WATCH_SHA256 = "eb122f23cdf06ef6bd6c6c5312958ec5cf9d038e2e6d457b8081662c75a42537"
WATCH_RATE = 50  # Hz.
WATCH_SLOW = 100  # Samples (2 s) of the centred moving mean taken away: gravity, orientation.
WATCH_BLOCK = 5  # Samples (0.1 s) averaged into one sample of a step.
WATCH_STEP = WATCH_RATE  # Samples (1 s) per feature step: 10 blocks of 6 channels, 60-d.
WATCH_BOUTS = 3  # Bouts (action instances) per recording.
WATCH_MIN_BOUT = 4  # Steps.
WATCH_MAX_BOUT = 32  # Steps: the benchmark's segments are 1-32 features.
WATCH_ARMS = ("left", "right")  # The dataset's side 0 and 1.


def _moving_mean(x: np.ndarray, width: int) -> np.ndarray:
  """Mean over a centred window of ``width`` samples, truncated at the ends: [T, C]."""
  n, half = x.shape[0], width // 2
  cumulative = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])  # [T + 1, C]
  lo = np.clip(np.arange(n) - half, 0, n)
  hi = np.clip(np.arange(n) + width - half, 0, n)
  return (cumulative[hi] - cumulative[lo]) / (hi - lo)[:, None]


def _motion_steps(recording: np.ndarray) -> np.ndarray:
  """The feature steps of one 50 Hz recording [T, C]: [T // 50, 10 * C] (module docstring)."""
  x = np.asarray(recording, dtype=np.float64)
  motion = x - _moving_mean(x, WATCH_SLOW)  # [T, C]
  n = x.shape[0] // WATCH_STEP
  blocks = motion[:n * WATCH_STEP].reshape(n, WATCH_STEP // WATCH_BLOCK, WATCH_BLOCK, -1)
  return blocks.mean(axis=2).reshape(n, -1)  # [n, 10 * C], sample-major.


def _bouts(num_steps: int, recording: int) -> np.ndarray:
  """Bounds [WATCH_BOUTS + 1] of the consecutive bouts a recording is cut into."""
  rng = np.random.default_rng([2, recording])
  free = num_steps - WATCH_BOUTS * WATCH_MIN_BOUT
  if free < 0:
    raise ValueError(f"recording {recording}: {num_steps} steps, too short for "
                     f"{WATCH_BOUTS} bouts of {WATCH_MIN_BOUT}")
  if num_steps > WATCH_BOUTS * WATCH_MAX_BOUT:
    raise ValueError(f"recording {recording}: {num_steps} steps, too long for "
                     f"{WATCH_BOUTS} bouts of at most {WATCH_MAX_BOUT}")
  while True:  # Cut points drawn until every bout fits the benchmark's segments.
    cuts = np.sort(rng.integers(0, free + 1, WATCH_BOUTS - 1))
    sizes = np.diff(np.concatenate([[0], cuts, [free]])) + WATCH_MIN_BOUT
    if sizes.max() <= WATCH_MAX_BOUT:
      return np.concatenate([[0], np.cumsum(sizes)])


@functools.lru_cache(maxsize=1)
def _shoulder_exercises() -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
  """The bouts of the seglearn smartwatch recordings: (steps [L, 60] each, labels, subjects)."""
  spec = importlib.util.find_spec("seglearn")  # Located, not imported: only its data is read.
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("the shoulder_exercises recordings ship inside the 'seglearn' package, "
                     "which is not installed: pip install -r requirements.txt")
  path = os.path.join(list(spec.submodule_search_locations)[0], WATCH_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{path} is missing: this seglearn version does not ship the watch data")
  with open(path, "rb") as f:
    raw = f.read()
  if hashlib.sha256(raw).hexdigest() != WATCH_SHA256:
    raise ValueError(f"{path} is not the file of seglearn 1.2.5 (SHA-256 differs); "
                     "pip install -r requirements.txt")
  data = np.load(io.BytesIO(raw), allow_pickle=True).item()
  instances, labels, subjects = [], [], []
  for i, (x, y, side, subject) in enumerate(zip(data["X"], data["y"], data["side"],
                                               data["subject"])):
    steps = _motion_steps(x)  # [n, 60]
    bounds = _bouts(steps.shape[0], i)
    for a, b in zip(bounds[:-1], bounds[1:]):
      instances.append(steps[a:b])
      labels.append(f"{data['y_labels'][int(y)]}-{WATCH_ARMS[int(side)]}")
      subjects.append(int(subject))
  return tuple(instances), np.asarray(labels), np.asarray(subjects)


SOURCES = {
    "japanese_vowels": Source(
        name="japanese_vowels",
        load=lambda: (list(_japanese_vowels()[0]), _japanese_vowels()[1]),
        class_split=(5, 2, 2),
        description="UCI Japanese Vowels: 640 utterances of 9 speakers, 12 LPC cepstra per frame",
        # Recorded in every manifest: kept as it was (the files are sktime's), so that
        # benchmarks built before the files moved here stay valid caches, byte for byte.
        licence="CC BY 4.0 (UCI Machine Learning Repository; shipped in sktime, BSD-3-Clause)"),
    "shoulder_exercises": Source(
        name="shoulder_exercises",
        load=lambda: (list(_shoulder_exercises()[0]), _shoulder_exercises()[1]),
        class_split=(6, 4, 4),
        description="Smartwatch shoulder exercises (Burns et al. 2018): 140 recordings of 10 "
                    "subjects, 7 exercises x 2 arms, cut into 420 bouts; 1 s steps of the 6-axis "
                    "motion at 10 Hz",
        licence="BSD-3-Clause (c) 2018 David M. Burns (shipped in seglearn 1.2.5)",
        min_instances=4, max_instances=6,
        class_group=lambda name: name.rsplit("-", 1)[0],  # The exercise, either arm.
        sessions=lambda: _shoulder_exercises()[2]),
}


@dataclasses.dataclass(frozen=True)
class Stream:
  """One reference video: utterances in order, one of them the target."""

  video_id: str
  split: str
  label: int  # The target's class.
  instances: tuple[int, ...]  # Indices into the source's instances.
  target: int  # Position of the target in `instances`.


def split_classes(labels: np.ndarray, class_split: Sequence[int], seed: int,
                  class_group: Callable[[str], str] | None = None) -> dict[str, list[str]]:
  """The classes of each split: a seeded permutation of the sorted class groups.

  Groups (each class its own without ``class_group``) are taken in permuted
  order, each split filled with whole groups up to its count of classes.
  """
  classes = sorted(set(labels.tolist()))
  if sum(class_split) != len(classes):
    raise ValueError(f"class split {tuple(class_split)} does not cover the {len(classes)} classes")
  group_of = class_group or (lambda c: c)
  groups = sorted({group_of(c) for c in classes})
  members = {g: [c for c in classes if group_of(c) == g] for g in groups}
  order = [groups[i] for i in np.random.default_rng([seed, 0]).permutation(len(groups))]
  out, taken = {}, 0
  for split, count in zip(SPLITS, class_split):
    out[split] = []
    while len(out[split]) < count:
      out[split] += members[order[taken]]
      taken += 1
    if len(out[split]) != count:
      raise ValueError(f"class split {tuple(class_split)}: the groups do not fill {split} "
                       f"with exactly {count} classes")
    out[split] = sorted(out[split])
  return out


def layout(labels: np.ndarray, classes: dict[str, list[str]], seed: int, prefix: str,
           min_instances: int = 2, max_instances: int = 4,
           sessions: np.ndarray | None = None) -> list[Stream]:
  """The reference streams of every split (see the module docstring).

  Args:
    labels: the class of every instance.
    classes: split name → its classes (`split_classes`).
    seed: seeds every stream (with the target's index).
    prefix: of the video ids.
    min_instances: fewest instances per stream, target included.
    max_instances: most instances per stream (fewer when the pool has fewer classes).
    sessions: the session of every instance, or None; with sessions every
      distractor is an instance of the target's session.
  """
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
        k = int(rng.integers(min_instances, min(max_instances, len(others) + 1) + 1))
        chosen = [others[i] for i in rng.permutation(len(others))[:k - 1]]
        if sessions is None:
          distractors = [int(rng.choice(by_class[c])) for c in chosen]
        else:
          same = sessions == sessions[instance]
          distractors = []
          for c in chosen:
            candidates = by_class[c][same[by_class[c]]]
            if not candidates.size:
              raise ValueError(f"session {sessions[instance]} has no instance of class {c}")
            distractors.append(int(rng.choice(candidates)))
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
    classes = split_classes(labels, src.class_split, seed, src.class_group)
    mean, std = _standardizer(instances, labels, classes["train"])
    streams = layout(labels, classes, seed, prefix=source.replace("_", ""),
                     min_instances=src.min_instances, max_instances=src.max_instances,
                     sessions=None if src.sessions is None else src.sessions())
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
  with cli.one_line_errors("vreloc_jax.data.recordings"):
    summary = build(FLAGS.out, source=FLAGS.source, seed=FLAGS.seed, overwrite=FLAGS.overwrite)
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
  cli.run(main, "vreloc_jax.data.recordings")
