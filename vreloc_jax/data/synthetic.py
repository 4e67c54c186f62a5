"""A synthetic stand-in for the ActivityNet re-localization benchmark.

  python -m vreloc_jax.data.synthetic --out=DIR [--seed=0] [--scale=1.0]
  python -m vreloc_jax.data.synthetic --out=DIR --splits_from=REAL_DIR
  python -m vreloc_jax.data.synthetic --measure=REAL_DIR

`generate` writes a directory in the real benchmark's on-disk format, so the
real readers read it unchanged: ``train.json`` / ``val.json`` / ``test.json``
(entries ``{"id", "label", "location": [a, b], "groundtruth": [s, e]}``),
``length.json`` (``{id: {"n_frames", "n_feat"}}``), the features as one HDF5
file ``sub_activitynet_v1-3.c3d.hdf5`` in the ActivityNet layout (group
``v_<id>``, dataset ``c3d_features`` ``[2 * n_feat - 1, 500]`` float16, one
row every 8 frames: the benchmark's features are the even rows, an odd row is
the mean of its two neighbours), and a manifest ``synthetic.json`` (seed,
scale, version, parameters) that makes a second call a cache hit. Everything
is written into a temporary directory beside the target and renamed into
place, so an interrupted run never leaves a half-written dataset.

The layout follows the real benchmark, measured from its split files (the
constants below; ``--measure`` prints them again from a benchmark directory):
200 classes split 160 / 20 / 20 with disjoint classes, 7,593 / 829 / 978
entries at scale 1 (with the real per-class entry counts), several entries per
video (the real distribution), and windows built by the benchmark authors'
rule (`create_dataset.py` of Feng et al.): a video is a sequence of action
instances of its class separated by background; each instance of 1-32
features is an entry whose window runs from the last feature of the previous
instance (or the video start) to the first feature of the next one (or the
video end), cropped at random to 300 features keeping the segment. Instance
lengths, gaps, lead and trail backgrounds and the chance of a longer (> 32,
hence unlisted) instance next to an entry are drawn from the measured
distributions; a video's background stretches are correlated (a Gaussian
copula, fitted to the real correlation of the margins before and after a
segment). Videos are only as long as needed: they end with their last window
or with the unlisted instance that bounds it. Every entry's window fits the
segment of another entry of its class, so every entry gets an evaluation
pair, as on the real benchmark.

The features (version 4, the default; see `FeatureParams`) make the task
need the query and give no query-free shortcut. A pool of 16 *atoms* (unit
vectors of a 24-dimensional class subspace: sub-actions shared by all
classes) is drawn per seed; a class is an ordered sequence of 4 distinct
atoms (all 200 sequences differ). A video's timeline is tiled by pieces: its
annotated and unlisted instances of its class, distractor instances of other
classes, and everywhere else *context* pieces with the benchmark's segment
lengths. Every piece plays a sequence of atoms at a random speed with a
random gain: an instance its class's own order, a context piece the class's
same four atoms in any other order (what a class's footage shows outside its
annotated actions: the same motions, not making up the action). Neighbouring
pieces cross-fade over a ramp 1-3 steps wide, centred within half a step of
the annotated boundary (a clip straddles the boundary, and annotations are
rounded to whole features), so boundaries are as soft inside the action's
video as around it. The appearance is the video's (every step alike) plus a
small one per piece, instance or context alike; a scene shared by many
videos, a slowly drifting AR(1) state and PCA-like white noise over all 500
dimensions complete it. So no feature marks "action" for every class alike:
an instance differs from the context around it only in the order of its
atoms, which only the query tells.

Calibration (test split, seed 0, scale 1, its 978 evaluation pairs), top-1
mAP average over IoU 0.5-0.9 against declared targets that are not a trained
model's result (the paper's real-feature numbers in brackets): random 7.3
(7.3), statistical prior 9.8 (10.7), frame-level 11.9 (9.9; target 8-12),
and the query-blind control (the paper's model with the query input
removed, trained with full supervision: `configs/full.py:query_blind`)
12.0 (target at most 20; the paper's query-agnostic SST row is 17.1).
What set the knobs, measured: context pieces that drew a quarter of their
atoms from the whole pool let the frame-level baseline reach 14.3-15.6;
distractors, being unlike the query, help it too (0.4 per 20-step slot:
13.4; 0.1, the default: 11.9). The co-attention criterion of the weak loss,
searched exhaustively on the raw features
(`baselines --method=coattention_search`), scores 7.4: an instance's mean
feature and its context's are alike, so what a weakly supervised model
finds it must find in the features it learns.

Version 3 (``--version=3``; ``--config.data.synthetic_version=3``), kept
so that the numbers measured on it reproduce, gave each class its own
prototypes, a strong class *context* vector outside instances, and every
instance of every class one shared *action* direction and its own appearance
vector: random 7.3, prior 9.8 and frame-level 10.3, but a query-blind model
scored 90.1 and the query-agnostic SST 81.2 there, because a detector of the
action direction found most targets without the query (issue 7). Version 2
(a per-instance appearance of norm 12 dominating every action, a strong
scene, no context, no action direction) held the frame-level baseline at
10.8, but the co-attention criterion's search scored 23.4 and the weakly
supervised model 5.6.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import shutil
import string
from typing import Any, Sequence

from absl import app
from absl import flags
import h5py
import numpy as np

from vreloc_jax import cli
from vreloc_jax import storage
from vreloc_jax.data import directory

VERSION = 4  # The generator version made by default (3 stays available: `PARAMS_BY_VERSION`).
FEATURE_DIM = 500
HDF5_NAME = "sub_activitynet_v1-3.c3d.hdf5"
HDF5_DATASET = "c3d_features"
MANIFEST_NAME = "synthetic.json"
SPLITS = ("train", "val", "test")
MAX_WINDOW = 300  # The benchmark's window cap (create_dataset.py, --max_length).
MAX_SEGMENT = 32  # The benchmark keeps instances of at most 32 features.

# ---------------------------------------------------------------------------
# Statistics of the real benchmark (data/activitynet_reloc, all three splits),
# measured with `measure_statistics`; generation never reads the real files.
# ---------------------------------------------------------------------------

# Per-class entry counts of each split, sorted (160 / 20 / 20 classes; sums
# 7,593 / 829 / 978).
CLASS_ENTRY_COUNTS = {
    "train": (
        4, 4, 6, 8, 12, 12, 12, 12, 13, 13, 13, 16, 16, 16, 16, 16, 16, 17, 17, 18, 18, 18, 18,
        19, 19, 19, 19, 20, 21, 21, 21, 21, 22, 22, 22, 22, 23, 23, 25, 25, 26, 26, 27, 27, 27,
        27, 28, 28, 28, 29, 29, 30, 30, 30, 31, 32, 33, 33, 33, 33, 33, 34, 34, 34, 34, 35, 35,
        35, 35, 36, 36, 36, 36, 37, 37, 38, 38, 38, 38, 38, 39, 39, 40, 40, 40, 40, 41, 42, 42,
        43, 44, 45, 47, 48, 48, 50, 50, 50, 51, 52, 52, 52, 52, 53, 54, 54, 54, 55, 55, 55, 55,
        56, 56, 57, 57, 57, 57, 58, 59, 60, 62, 62, 64, 64, 64, 66, 69, 69, 69, 69, 73, 75, 75,
        75, 76, 77, 79, 82, 82, 84, 87, 87, 88, 90, 93, 93, 94, 97, 99, 101, 104, 106, 106, 110,
        110, 118, 120, 139, 145, 192),
    "val": (8, 16, 19, 22, 25, 27, 29, 30, 33, 34, 37, 43, 45, 45, 48, 55, 56, 63, 65, 129),
    "test": (4, 9, 11, 12, 17, 21, 23, 30, 43, 50, 55, 57, 67, 68, 73, 79, 83, 89, 90, 97),
}
# Videos with k = 1, 2, … entries (4,729 videos).
ENTRIES_PER_VIDEO_COUNTS = (2878, 814, 392, 253, 144, 87, 51, 44, 18, 16, 15, 2, 3, 1, 2, 2, 4,
                            0, 1, 0, 2)
# Entries with a segment of 1, 2, …, 32 features.
SEGMENT_LENGTH_COUNTS = (94, 119, 290, 446, 475, 471, 513, 464, 400, 407, 439, 340, 356, 352, 371,
                         319, 330, 283, 266, 249, 233, 261, 219, 219, 222, 194, 203, 164, 166, 184,
                         198, 153)
# Percentiles 0, 2.5, …, 100 of the background between two instances
# (features), of the background before a video's first instance and after its
# last one.
QUANTILE_LEVELS = np.linspace(0.0, 100.0, 41)
GAP_QUANTILES = (0, 1, 2, 3, 3, 4, 4, 5, 6, 6, 7, 7, 8, 9, 9, 10, 11, 11, 12, 13, 14, 15, 16, 17,
                 18, 19, 21, 22, 24, 26, 28, 31, 34, 38, 42, 46, 52, 61, 74, 100, 251)
LEAD_QUANTILES = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 14, 16, 18,
                  20, 22, 25, 28, 31, 35, 39, 45, 49, 55, 62, 71, 80, 95, 112, 141, 270)
TRAIL_QUANTILES = (0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 17, 19, 21,
                   23, 25, 28, 31, 34, 37, 42, 46, 52, 57, 66, 74, 88, 105, 124, 158, 295)
# Chance that an unlisted (longer than 32 features) instance lies before the
# first entry of a video, between two consecutive entries, after the last one.
P_HIDDEN_BEFORE = 0.140
P_HIDDEN_BETWEEN = 0.071
P_HIDDEN_AFTER = 0.161
# Copula correlation of the background stretches of one video (fitted so that
# the log margins before and after a segment correlate like the real ones, 0.40).
BACKGROUND_CORRELATION = 0.5


@dataclasses.dataclass(frozen=True)
class _SharedParams:
  """The settings both feature models have (subspaces, background, noise, timing, layout)."""

  class_dim: int = 24  # Dimension of the class subspace.
  appearance_dim: int = 400  # Dimension of the appearance subspace.
  background_dim: int = 32  # Dimension of the background subspace.
  class_scale: float = 5.0  # Norm of the class part.
  scene_scale: float = 2.0  # Norm scale of a scene vector.
  drift_scale: float = 1.5  # Stationary norm scale of the drift.
  drift_rho: float = 0.9  # AR(1) coefficient of the drift per feature step.
  noise_scale: float = 0.2  # Root-mean-square per-dimension white noise.
  noise_decay: float = 0.5  # Spectrum: std of dimension i ∝ (i + 10) ** -noise_decay.
  num_scenes: int = 64  # Scenes shared by all videos.
  speed_sigma: float = 0.3  # Log-normal spread of the playing-speed warp.
  amplitude_range: tuple[float, float] = (0.8, 1.2)  # Per-piece gain of the class part.
  distractor_probability: float = 0.1  # Chance a background slot holds a distractor.
  distractor_spacing: int = 20  # A background gap has one slot per this many steps (at least 1).
  hidden_mean_length: float = 40.0  # Mean extra length (over 32) of an unlisted instance.


@dataclasses.dataclass(frozen=True)
class FeatureParams(_SharedParams):
  """The generative model of the features, version 4 (see the module docstring).

  A video is a tiling of its timeline by *pieces*: its annotated (and
  unlisted) instances of its class, distractor instances of other classes,
  and, everywhere else, *context* pieces of the same lengths. Per feature
  step t, in 500 dimensions:
  ``x_t = Q_c c_t + Q_a a_t + Q_b (scene + drift_t) + noise_t``. ``c_t`` is
  the class part: each piece plays a sequence of ``atoms_per_class`` atoms
  (unit vectors of a pool of ``num_atoms`` shared by all classes) at a random
  speed; an instance plays its class's own ordered sequence, a context piece
  the same atoms in another order (what a class's footage shows outside its
  annotated actions: the same motions, not in the order that makes the
  action). Neighbouring pieces cross-fade over a
  ramp of random width centred within half a step of the annotated
  boundary. ``a_t`` is the video's appearance plus each piece's own;
  ``scene``, ``drift_t`` and the noise are as in version 3. Nothing sets
  instances apart from context pieces but the order of their atoms.
  """

  num_atoms: int = 16  # Atoms (sub-actions, in the class subspace) shared by all classes.
  atoms_per_class: int = 4  # A class is an ordered sequence of this many distinct atoms.
  atom_jitter: float = 0.3  # Per-piece perturbation of each atom (relative norm).
  video_appearance_scale: float = 6.0  # Norm of a video's appearance (every step).
  piece_appearance_scale: float = 1.0  # Norm of a piece's own appearance.
  ramp_range: tuple[float, float] = (0.5, 1.5)  # Half-width of a boundary's cross-fade (steps).


@dataclasses.dataclass(frozen=True)
class FeatureParamsV3(_SharedParams):
  """Generator version 3's feature model (kept so that its published numbers reproduce).

  Per feature step t of a video, in 500 dimensions:
  ``x_t = Q_c c_t + Q_a a_t + Q_b (scene + drift_t) + noise_t``, where the
  columns of ``Q_c`` / ``Q_a`` / ``Q_b`` are orthonormal (one random rotation
  per seed). ``c_t`` is, inside an action instance, the class trajectory and,
  elsewhere, the video's class *context* (the normalized mean of its class's
  prototypes: what a class's footage shows outside its annotated actions).
  ``a_t`` is zero outside instances and, inside one, the instance's own
  appearance plus a generic *action* direction shared by every instance of
  every class. ``scene`` is one of ``num_scenes`` shared scene vectors,
  ``drift_t`` an AR(1) process, and the noise is white with per-dimension
  standard deviation decaying like a PCA spectrum (root mean square
  ``noise_scale``).
  """

  num_prototypes: int = 4  # Prototype vectors per class trajectory.
  context_scale: float = 11.0  # Norm of the class context outside the video's own instances.
  action_scale: float = 6.0  # Norm of the action direction shared by every instance.
  appearance_scale: float = 8.0  # Norm of an instance's appearance vector.
  edge_gain: float = 0.5  # Gain of an instance's first and last step (clips straddle its bounds).
  distractor_probability: float = 0.4  # Chance a background slot holds a distractor.


DEFAULT_PARAMS = FeatureParams()
Params = FeatureParams | FeatureParamsV3  # Either version's feature model.
PARAMS_BY_VERSION = {3: FeatureParamsV3(), 4: DEFAULT_PARAMS}  # Each version's feature model.
# The positive control of the weak objective (README, "Weak supervision across benchmarks"):
# version 3 with its shared action direction turned down from 6 to 2, so that instances are
# learnable to tell from their background (a query-blind model reaches 85.7) while the raw
# features hide them from the frame-level baseline (2.6). For learnability, not a stand-in.
POSITIVE_CONTROL = dataclasses.replace(FeatureParamsV3(), action_scale=2.0)
_RENDER_CHUNK = 256  # Videos projected together (one matrix product).
_MAX_CLASS_TRIES = 100  # Redraws of a class whose shortest window fits no other segment.


def scaled_class_counts(split: str, scale: float) -> list[int]:
  """The per-class entry counts of a split at ``scale`` (at least 2 per class).

  Scale 1 gives the real counts. Otherwise ``max(2, round(C * scale))``
  classes are kept (at evenly spaced quantiles of the sorted real counts)
  and share ``max(2 * classes, round(N * scale))`` entries in proportion to
  their real counts (largest remainders; at least 2 each).
  """
  if not scale > 0:
    raise ValueError(f"scale must be positive, got {scale}")
  table = np.asarray(CLASS_ENTRY_COUNTS[split], dtype=np.float64)
  if scale == 1.0:
    return [int(c) for c in table]
  n_classes = max(2, int(round(len(table) * scale)))
  positions = (np.arange(n_classes) + 0.5) / n_classes * len(table) - 0.5
  picked = table[np.clip(np.round(positions).astype(int), 0, len(table) - 1)]
  extra = max(2 * n_classes, int(round(table.sum() * scale))) - 2 * n_classes
  share = picked / picked.sum() * extra
  counts = np.floor(share).astype(int)
  order = np.argsort(-(share - counts), kind="stable")
  counts[order[:extra - counts.sum()]] += 1
  return [int(c) + 2 for c in counts]


# ---------------------------------------------------------------------------
# Layout: videos, action instances and the benchmark's windows.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Piece:
  """One action instance on a video's timeline, ``[start, end)``."""

  start: int
  end: int
  class_index: int  # Index into the world's classes.
  kind: str  # "entry" | "hidden" (same class, unlisted) | "distractor" (another class)


@dataclasses.dataclass
class _Video:
  video_id: str
  split: str
  label: int
  class_index: int
  n_feat: int
  pieces: list[_Piece]
  entries: list[dict[str, Any]]  # JSON entries, in time order.


def _pmf_sampler(counts: Sequence[int]):
  p = np.asarray(counts, dtype=np.float64)
  p /= p.sum()
  return lambda rng, size=None: rng.choice(len(p), size=size, p=p) + 1


def _quantile_sample(rng: np.random.Generator, quantiles: Sequence[float],
                     pace: float = 0.0, correlation: float = 0.0) -> int:
  """One draw from a quantile table; draws sharing ``pace`` are correlated.

  A Gaussian copula: the uniform level is ``Phi(sqrt(c) pace + sqrt(1 - c) z)``
  with ``z`` standard normal, so every draw keeps the table's distribution.
  """
  z = np.sqrt(correlation) * pace + np.sqrt(1.0 - correlation) * rng.standard_normal()
  level = 50.0 * (1.0 + math.erf(z / np.sqrt(2.0)))
  return int(np.floor(np.interp(level, QUANTILE_LEVELS, quantiles)))


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
  """``n`` distinct YouTube-like ids (11 characters of the URL-safe alphabet)."""
  alphabet = np.array(list(string.ascii_letters + string.digits + "-_"))
  out, seen = [], set()
  while len(out) < n:
    vid = "".join(alphabet[rng.integers(len(alphabet), size=11)])
    if vid not in seen:
      seen.add(vid)
      out.append(vid)
  return out


def _windows(pieces: list[_Piece], n_feat: int, rng: np.random.Generator) -> list[dict[str, Any]]:
  """The benchmark's window of each "entry" piece (create_dataset.py's rule)."""
  same = [p for p in pieces if p.kind != "distractor"]
  entries = []
  for i, p in enumerate(same):
    if p.kind != "entry":
      continue
    a = same[i - 1].end - 1 if i > 0 else 0
    b = same[i + 1].start + 1 if i + 1 < len(same) else n_feat
    if b - a > MAX_WINDOW:
      low, high = max(p.end - MAX_WINDOW, a), min(p.start, b - MAX_WINDOW)
      a = int(rng.integers(low, high + 1))
      b = a + MAX_WINDOW
    entries.append({"location": [a, b], "groundtruth": [p.start - a, p.end - a]})
  return entries


def _insert_distractors(pieces: list[_Piece], n_feat: int, others: Sequence[int],
                        params: Params, rng: np.random.Generator,
                        sample_length) -> list[_Piece]:
  """Adds actions of other classes into the background gaps.

  A gap is cut into ``max(1, gap // distractor_spacing)`` equal slots; each
  slot of at least 4 steps holds, with ``distractor_probability``, one
  distractor (length from the segment-length distribution, at least one
  background step on each side).
  """
  if not others or params.distractor_probability <= 0:
    return pieces
  out = []
  prev_end = 0
  for p in sorted(pieces, key=lambda p: p.start) + [None]:
    gap_end = p.start if p is not None else n_feat
    slots = max(1, (gap_end - prev_end) // params.distractor_spacing)
    bounds = np.linspace(prev_end, gap_end, slots + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
      room = hi - lo
      if room >= 4 and rng.random() < params.distractor_probability:
        length = min(int(sample_length(rng)), room - 2)
        start = lo + 1 + int(rng.integers(room - 2 - length + 1))
        out.append(_Piece(start, start + length, int(rng.choice(others)), "distractor"))
    if p is not None:
      out.append(p)
      prev_end = max(prev_end, p.end)
  return out


def _layout_video(k: int, class_index: int, rng: np.random.Generator,
                  params: Params, sample_length) -> tuple[list[_Piece], int]:
  """The timeline of one video holding ``k`` entries of its class."""

  def hidden(start: int) -> _Piece:
    extra = 1 + int(rng.exponential(params.hidden_mean_length))
    return _Piece(start, start + MAX_SEGMENT + extra, class_index, "hidden")

  pace = rng.standard_normal()  # The video's pace: its background stretches are alike.

  def background(quantiles) -> int:
    return _quantile_sample(rng, quantiles, pace, BACKGROUND_CORRELATION)

  pieces: list[_Piece] = []
  t = background(LEAD_QUANTILES)
  if rng.random() < P_HIDDEN_BEFORE:
    pieces.append(hidden(t))
    t = pieces[-1].end + background(GAP_QUANTILES)
  for i in range(k):
    length = int(sample_length(rng))
    pieces.append(_Piece(t, t + length, class_index, "entry"))
    t += length
    if i + 1 < k:
      if rng.random() < P_HIDDEN_BETWEEN:
        pieces.append(hidden(t + background(GAP_QUANTILES)))
        t = pieces[-1].end
      t += background(GAP_QUANTILES)
  if rng.random() < P_HIDDEN_AFTER:
    pieces.append(hidden(t + background(GAP_QUANTILES)))
    n_feat = pieces[-1].end  # No background after it: videos only as long as needed.
  else:
    n_feat = t + background(TRAIL_QUANTILES)
  return pieces, max(n_feat, 1)


def _layout_class(c: int, target: int, rng: np.random.Generator, params: Params,
                  sample_k, sample_length) -> list[tuple]:
  """``(pieces, n_feat, entries)`` of the videos holding one class's ``target`` entries."""
  out = []
  remaining = target
  while remaining > 0:
    k = min(int(sample_k(rng)), remaining)
    # A class's first video never holds all its entries: queries come from other videos.
    if remaining == target and k == target and target > 1:
      k = target - 1
    pieces, n_feat = _layout_video(k, c, rng, params, sample_length)
    out.append((pieces, n_feat, _windows(pieces, n_feat, rng)))
    remaining -= k
  return out


def _every_entry_has_a_query(entries: Sequence[dict[str, Any]]) -> bool:
  """Whether each entry's window fits another entry's segment (as the real splits do)."""
  lengths = sorted(e["groundtruth"][1] - e["groundtruth"][0] for e in entries)
  for e in entries:
    own = e["groundtruth"][1] - e["groundtruth"][0]
    shortest_other = lengths[1] if own == lengths[0] else lengths[0]
    if shortest_other > e["location"][1] - e["location"][0]:
      return False
  return True


def _layout(seed: int, scale: float, params: Params) -> tuple[list[_Video], dict]:
  """All videos of the three splits, with their entries, for ``(seed, scale)``."""
  rng = np.random.default_rng([seed, 0])
  sample_k = _pmf_sampler(ENTRIES_PER_VIDEO_COUNTS)
  sample_length = _pmf_sampler(SEGMENT_LENGTH_COUNTS)
  total_classes = sum(len(v) for v in CLASS_ENTRY_COUNTS.values())
  labels = [int(x) for x in rng.choice(np.arange(60, 420), size=total_classes, replace=False)]
  counts = {s: scaled_class_counts(s, scale) for s in SPLITS}
  n_videos_max = sum(sum(c) for c in counts.values())
  ids = _video_ids(rng, n_videos_max)
  videos: list[_Video] = []
  class_offset = 0
  classes, split_class_indices = {}, {}
  for split in SPLITS:
    split_classes = list(range(class_offset, class_offset + len(counts[split])))
    class_offset += len(CLASS_ENTRY_COUNTS[split])
    targets = list(counts[split])
    rng.shuffle(targets)
    classes[split] = [labels[c] for c in split_classes]
    split_class_indices[split] = split_classes
    split_videos = []
    for c, target in zip(split_classes, targets):
      for _ in range(_MAX_CLASS_TRIES):
        class_videos = _layout_class(c, target, rng, params, sample_k, sample_length)
        if _every_entry_has_a_query([e for _, _, entries in class_videos for e in entries]):
          break
      for pieces, n_feat, entries in class_videos:
        split_videos.append(_Video(ids[len(videos) + len(split_videos)], split, labels[c], c,
                                   n_feat, pieces, entries))
    order = rng.permutation(len(split_videos))
    videos.extend(split_videos[i] for i in order)
  # Distractors come from their own stream: the layout does not depend on their settings.
  distractor_rng = np.random.default_rng([seed, 5])
  for video in videos:
    others = [o for o in split_class_indices[video.split] if o != video.class_index]
    video.pieces = _insert_distractors(video.pieces, video.n_feat, others, params,
                                       distractor_rng, sample_length)
  return videos, {"labels": classes}


# ---------------------------------------------------------------------------
# Features.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class World:
  """The seed's fixed random structure: subspaces, classes, scenes, noise."""

  class_basis: np.ndarray  # [D, class_dim] orthonormal columns
  appearance_basis: np.ndarray  # [D, appearance_dim]
  background_basis: np.ndarray  # [D, background_dim]
  scenes: np.ndarray  # [num_scenes, background_dim]
  noise_std: np.ndarray  # [D] per-dimension white-noise std, float32
  # Version 4: the shared atoms and each class's ordered sequence of them.
  atoms: np.ndarray | None = None  # [num_atoms, class_dim], unit rows
  class_atoms: np.ndarray | None = None  # int [num_classes, atoms_per_class], distinct sequences
  # Version 3: each class's prototypes and the action direction shared by all instances.
  prototypes: np.ndarray | None = None  # [num_classes, num_prototypes, class_dim], unit rows
  action_direction: np.ndarray | None = None  # [appearance_dim] unit vector

  @property
  def projection(self) -> np.ndarray:
    """Latent (class, appearance, background) coordinates → features: float32 [dims, D], C-order."""
    if getattr(self, "_projection", None) is None:
      basis = np.concatenate([self.class_basis, self.appearance_basis, self.background_basis], axis=1)
      self._projection = np.ascontiguousarray(basis.T, dtype=np.float32)
    return self._projection


def _basis(seed: int, params: Params) -> tuple[np.random.Generator,
                                                                       np.ndarray]:
  """The seed's random rotation (the latent subspaces' bases) and the stream that drew it."""
  rng = np.random.default_rng([seed, 1])
  dims = params.class_dim + params.appearance_dim + params.background_dim
  basis, _ = np.linalg.qr(rng.standard_normal((FEATURE_DIM, dims)))
  return rng, basis


def make_world(seed: int, num_classes: int,
               params: Params = DEFAULT_PARAMS) -> World:
  """The random structure shared by every video of a generated benchmark."""
  rng, basis = _basis(seed, params)
  c, m = params.class_dim, params.class_dim + params.appearance_dim
  spectrum = (np.arange(FEATURE_DIM) + 10.0) ** -params.noise_decay
  spectrum *= params.noise_scale / np.sqrt(np.mean(spectrum ** 2))
  world = dict(class_basis=basis[:, :c], appearance_basis=basis[:, c:m],
               background_basis=basis[:, m:], noise_std=spectrum.astype(np.float32))
  if isinstance(params, FeatureParamsV3):
    prototypes = rng.standard_normal((num_classes, params.num_prototypes, params.class_dim))
    prototypes /= np.linalg.norm(prototypes, axis=-1, keepdims=True)
    scenes = rng.standard_normal((params.num_scenes, params.background_dim))
    action = np.random.default_rng([seed, 6]).standard_normal(params.appearance_dim)
    world.update(prototypes=prototypes, action_direction=action / np.linalg.norm(action))
  else:
    atoms = rng.standard_normal((params.num_atoms, params.class_dim))
    atoms /= np.linalg.norm(atoms, axis=-1, keepdims=True)
    scenes = rng.standard_normal((params.num_scenes, params.background_dim))
    sequences: list[tuple[int, ...]] = []
    while len(sequences) < num_classes:
      candidate = tuple(int(a) for a in rng.choice(params.num_atoms, params.atoms_per_class,
                                                   replace=False))
      if candidate not in sequences:
        sequences.append(candidate)
    world.update(atoms=atoms, class_atoms=np.asarray(sequences, dtype=np.int64))
  scenes *= params.scene_scale / np.sqrt(params.background_dim)
  return World(scenes=scenes, **world)


def _ar1(eps: np.ndarray, rho: float, block: int = 128) -> np.ndarray:
  """AR(1) ``u_t = rho u_{t-1} + eps_t`` along axis 0 (vectorized by blocks; u_0 = eps_0)."""
  out = np.empty_like(eps)
  powers = rho ** np.arange(block, dtype=np.float64)  # [block]
  carry = np.zeros(eps.shape[1:], dtype=np.float64)
  for start in range(0, eps.shape[0], block):
    chunk = eps[start:start + block].astype(np.float64)
    p = powers[:chunk.shape[0], None]
    acc = np.cumsum(chunk / p, axis=0) * p + carry * (p * rho)
    out[start:start + block] = acc
    carry = acc[-1]
  return out


def _background(n_feat: int, world: World, params: Params,
                rng: np.random.Generator) -> np.ndarray:
  """A video's scene plus its drift: [n_feat, background_dim]."""
  scene = world.scenes[rng.integers(len(world.scenes))]
  eps = rng.standard_normal((n_feat, params.background_dim))
  eps *= params.drift_scale * np.sqrt(1.0 - params.drift_rho ** 2) / np.sqrt(params.background_dim)
  eps[0] /= np.sqrt(1.0 - params.drift_rho ** 2)  # Start from the stationary distribution.
  return scene + _ar1(eps, params.drift_rho)


def _play(points: np.ndarray, phase: np.ndarray) -> np.ndarray:
  """Unit vectors along the piecewise-linear path through ``points`` [P, k] at ``phase`` [n] in [0, 1]."""
  position = phase * (points.shape[0] - 1)
  first = np.minimum(position.astype(int), points.shape[0] - 2)  # [n]
  frac = (position - first)[:, None]
  path = points[first] * (1.0 - frac) + points[first + 1] * frac  # [n, k]
  return path / (np.linalg.norm(path, axis=-1, keepdims=True) + 1e-9)


def _tile(pieces: Sequence[_Piece], n_feat: int, class_index: int,
          rng: np.random.Generator) -> list[_Piece]:
  """The pieces plus context pieces (benchmark segment lengths) tiling ``[0, n_feat)``."""
  sample_length = _pmf_sampler(SEGMENT_LENGTH_COUNTS)
  out: list[_Piece] = []
  t = 0
  for p in sorted(pieces, key=lambda p: p.start) + [None]:
    stop = p.start if p is not None else n_feat
    while t < stop:
      length = min(int(sample_length(rng)), stop - t)
      out.append(_Piece(t, t + length, class_index, "context"))
      t += length
    if p is not None and p.end > t:  # (Overlapping instances of a real split: clipped.)
      out.append(dataclasses.replace(p, start=max(p.start, t)))
      t = p.end
  return out


def _context_atoms(own: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A context piece's atom sequence: the class's atoms in any order but the class's own."""
  while True:
    order = rng.permutation(own)
    if not np.array_equal(order, own):
      return order


def _latent_v4(pieces: Sequence[_Piece], n_feat: int, class_index: int, world: World,
               params: FeatureParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Class and appearance parts of one video (version 4): [n_feat, class_dim], [n_feat, appearance_dim]."""
  tiles = _tile(pieces, n_feat, class_index, rng)
  own = world.class_atoms[class_index]
  # Each inner boundary: where the content changes (within half a step of the annotated
  # boundary) and the half-width of its cross-fade.
  bounds = np.array([0.0] + [float(p.start) for p in tiles[1:]] + [float(n_feat)])  # [T + 1]
  bounds[1:-1] += rng.uniform(-0.5, 0.5, size=len(tiles) - 1)
  ramps = np.full(len(tiles) + 1, 1e-6)
  ramps[1:-1] = rng.uniform(*params.ramp_range, size=len(tiles) - 1)
  class_sum = np.zeros((n_feat, params.class_dim))
  appearance_sum = np.zeros((n_feat, params.appearance_dim))
  weight_sum = np.zeros(n_feat)
  reach = int(np.ceil(params.ramp_range[1])) + 1
  for i, p in enumerate(tiles):
    lo, hi = max(0, p.start - reach), min(n_feat, p.end + reach)
    centre = np.arange(lo, hi) + 0.5  # [n]
    left, right = bounds[i], bounds[i + 1]
    weight = (np.clip((centre - left) / (2.0 * ramps[i]) + 0.5, 0.0, 1.0)
              * np.clip((right - centre) / (2.0 * ramps[i + 1]) + 0.5, 0.0, 1.0))  # [n]
    sequence = (_context_atoms(own, rng) if p.kind == "context"
                else world.class_atoms[p.class_index])
    points = world.atoms[sequence]  # [P, class_dim]
    points = points + params.atom_jitter / np.sqrt(params.class_dim) * rng.standard_normal(
        points.shape)
    warp = np.exp(rng.normal(0.0, params.speed_sigma))
    phase = np.clip((centre - left) / max(right - left, 1e-6), 0.0, 1.0) ** warp
    gain = params.class_scale * rng.uniform(*params.amplitude_range)
    class_sum[lo:hi] += weight[:, None] * gain * _play(points, phase)
    look = rng.standard_normal(params.appearance_dim)
    appearance_sum[lo:hi] += np.outer(weight, look * (params.piece_appearance_scale
                                                      / np.linalg.norm(look)))
    weight_sum[lo:hi] += weight
  weight_sum = np.maximum(weight_sum, 1e-9)[:, None]
  video_look = rng.standard_normal(params.appearance_dim)
  video_look *= params.video_appearance_scale / np.linalg.norm(video_look)
  return class_sum / weight_sum, appearance_sum / weight_sum + video_look


def _latent_v3(pieces: Sequence[_Piece], n_feat: int, world: World, params: FeatureParamsV3,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Class and appearance parts of one video (version 3)."""
  class_coords = np.zeros((n_feat, params.class_dim))
  appearance = np.zeros((n_feat, params.appearance_dim))
  own = np.zeros(n_feat)  # [n_feat] presence of the video's own instances (edges partial)
  for p in pieces:
    length = p.end - p.start
    warp = np.exp(rng.normal(0.0, params.speed_sigma))
    phase = ((np.arange(length) + 0.5) / length) ** warp  # [length] in (0, 1)
    traj = _play(world.prototypes[p.class_index], phase)  # [length, class_dim]
    presence = np.ones((length, 1))  # [length, 1]
    if length >= 3:
      presence[[0, -1]] = params.edge_gain
    gain = rng.uniform(*params.amplitude_range) * presence  # [length, 1]
    class_coords[p.start:p.end] = params.class_scale * gain * traj
    if p.kind != "distractor":
      own[p.start:p.end] = presence[:, 0]
    direction = rng.standard_normal(params.appearance_dim)
    appearance[p.start:p.end] = gain * (
        params.appearance_scale * direction / np.linalg.norm(direction)
        + params.action_scale * world.action_direction)
  own_classes = [p.class_index for p in pieces if p.kind != "distractor"]
  if params.context_scale > 0 and own_classes:
    context = world.prototypes[own_classes[0]].mean(axis=0)  # [class_dim]
    context *= params.context_scale / (np.linalg.norm(context) + 1e-9)
    class_coords += (1.0 - own)[:, None] * context[None, :]
  return class_coords, appearance


def video_latent(pieces: Sequence[_Piece], n_feat: int, class_index: int, world: World,
                 params: Params,
                 rng: np.random.Generator) -> np.ndarray:
  """The structured part of one video in latent coordinates.

  Args:
    pieces: the video's instances (its class's and distractors), in any order.
    n_feat: its length in feature steps.
    class_index: the video's class (that of its own instances).
    world: the seed's structure.
    params: the feature model; its type selects the generator version.
    rng: the video's own random stream.

  Returns:
    float32 [n_feat, class_dim + appearance_dim + background_dim]: the class
    part, the appearance part and the background, in that order
    (``latent @ world.projection`` gives the noiseless features).
  """
  if isinstance(params, FeatureParamsV3):
    class_coords, appearance = _latent_v3(pieces, n_feat, world, params, rng)
  else:
    class_coords, appearance = _latent_v4(pieces, n_feat, class_index, world, params, rng)
  background = _background(n_feat, world, params, rng)
  return np.concatenate([class_coords, appearance, background], axis=1).astype(np.float32)


def _add_noise(features: np.ndarray, world: World, rng: np.random.Generator) -> np.ndarray:
  noise = rng.standard_normal(features.shape, dtype=np.float32)
  noise *= world.noise_std
  features += noise
  return features


def render_video(pieces: Sequence[_Piece], n_feat: int, class_index: int, world: World,
                 params: Params, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """The features of one video and their clean class-subspace coordinates.

  Returns:
    features: float32 [n_feat, D].
    class_coords: float32 [n_feat, class_dim], the noiseless class part.
  """
  latent = video_latent(pieces, n_feat, class_index, world, params, rng)
  features = _add_noise(latent @ world.projection, world, rng)  # [n_feat, D]
  return features, latent[:, :params.class_dim]


def hdf5_rows(features: np.ndarray) -> np.ndarray:
  """ActivityNet rows (one every 8 frames) from features (one every 16): float16 [2n-1, D]."""
  n = features.shape[0]
  rows = np.empty((2 * n - 1, features.shape[1]), dtype=np.float16)
  rows[0::2] = features.astype(np.float16)
  odd = features[:-1] + features[1:]
  odd *= 0.5
  rows[1::2] = odd.astype(np.float16)
  return rows


# ---------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------


def version_of(params: Params) -> int:
  """The generator version whose feature model ``params`` is."""
  return 3 if isinstance(params, FeatureParamsV3) else 4


def params_for(version: int) -> Params:
  """The feature model of a generator version (3 or 4)."""
  if version not in PARAMS_BY_VERSION:
    raise ValueError(f"synthetic generator version {version} does not exist; "
                     f"expected one of {sorted(PARAMS_BY_VERSION)}")
  return PARAMS_BY_VERSION[version]


def _manifest(seed: int, scale: float, params: Params,
              splits_from: str | None) -> dict:
  return {"generator": "vreloc_jax.data.synthetic", "version": version_of(params), "seed": seed,
          "scale": scale, "splits_from": os.path.abspath(splits_from) if splits_from else None,
          "feature_dim": FEATURE_DIM, "features": HDF5_NAME, "feature_dtype": "float16",
          "params": dataclasses.asdict(params)}


def _write_features(path: str, videos: Sequence[_Video], world: World, params: Params,
                    seed: int) -> int:
  """Renders and writes every video's features; returns the number of features."""
  total = 0
  with h5py.File(path, "w", libver="earliest") as f:
    for first in range(0, len(videos), _RENDER_CHUNK):
      chunk = videos[first:first + _RENDER_CHUNK]
      rngs = [np.random.default_rng([seed, 2, first + i]) for i in range(len(chunk))]
      latents = [video_latent(v.pieces, v.n_feat, v.class_index, world, params, r)
                 for v, r in zip(chunk, rngs)]
      # One projection per chunk: small matrix products are slow on a busy machine.
      clean = np.concatenate(latents) @ world.projection  # [sum n_feat, D]
      offset = 0
      for video, rng in zip(chunk, rngs):
        features = _add_noise(clean[offset:offset + video.n_feat], world, rng)
        offset += video.n_feat
        f.create_group(f"v_{video.video_id}").create_dataset(HDF5_DATASET,
                                                             data=hdf5_rows(features))
      total += offset
  return total


def _n_frames(n_feat: int, rng: np.random.Generator) -> int:
  """Frames of a video with ``n_feat`` features: ``n_feat = n_frames // 16`` (jitter 0-15)."""
  return 16 * n_feat + int(rng.integers(16))


def _layout_from_splits(splits_from: str, seed: int, params: Params
                        ) -> tuple[list[_Video], dict]:
  """Videos of a real benchmark's split files: its entries and lengths, our timelines."""
  rng = np.random.default_rng([seed, 3])
  sample_length = _pmf_sampler(SEGMENT_LENGTH_COUNTS)
  with open(os.path.join(splits_from, "length.json"), "r", encoding="utf-8") as f:
    lengths = json.load(f)
  raw = {}
  for split in SPLITS:
    with open(os.path.join(splits_from, f"{split}.json"), "r", encoding="utf-8") as f:
      raw[split] = json.load(f)
  all_labels = sorted({e["label"] for split in SPLITS for e in raw[split]})
  class_of = {label: i for i, label in enumerate(all_labels)}
  videos = []
  for split in SPLITS:
    split_classes = sorted({class_of[e["label"]] for e in raw[split]})
    by_video = collections.defaultdict(list)
    for e in raw[split]:
      by_video[e["id"]].append(e)
    for vid in sorted(by_video):
      entries = by_video[vid]
      info = lengths.get(vid)
      if not isinstance(info, dict) or not isinstance(info.get("n_feat"), int):
        raise ValueError(f"{splits_from}/length.json: video v_{vid} (used by {split}.json) "
                         "has no 'n_feat'")
      n_feat = info["n_feat"]
      pieces, taken = [], set()
      for e in entries:
        start, end = e["location"][0] + e["groundtruth"][0], e["location"][0] + e["groundtruth"][1]
        if end > n_feat:
          raise ValueError(f"{splits_from}/{split}.json: video v_{vid}: segment [{start}, {end}) "
                           f"ends past its {n_feat} features")
        if (start, end) not in taken:
          taken.add((start, end))
          pieces.append(_Piece(start, end, class_of[e["label"]], "entry"))
      c = class_of[entries[0]["label"]]
      others = [o for o in split_classes if o != c]
      pieces = _insert_distractors(pieces, n_feat, others, params, rng, sample_length)
      videos.append(_Video(vid, split, entries[0]["label"], c, n_feat, pieces, entries))
  return videos, {"labels": {s: sorted({e["label"] for e in raw[s]}) for s in SPLITS},
                  "num_classes": len(all_labels), "raw": raw}


def _split_rows(videos: Sequence[_Video], split: str) -> list[dict[str, Any]]:
  """A split file's entries: videos in order, each video's entries in time order."""
  return [{"id": v.video_id, "label": v.label, "location": e["location"],
           "groundtruth": e["groundtruth"]} for v in videos if v.split == split for e in v.entries]


def generate_splits(seed: int = 0, scale: float = 1.0,
                    params: Params = DEFAULT_PARAMS) -> dict[str, list[dict[str, Any]]]:
  """The split files `generate` would write (no features, nothing written; fast).

  Returns:
    split name → its entries ``{"id", "label", "location", "groundtruth"}``.
  """
  videos, _ = _layout(seed, scale, params)
  return {split: _split_rows(videos, split) for split in SPLITS}


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
    params: the feature model (default: that of ``version``; a
      `FeatureParamsV3` makes version 3).
    overwrite: replace an existing, different dataset at ``out_dir``.
    version: the generator version (4, the default, or 3); ignored with
      ``params``.

  Returns:
    A summary: the manifest plus per-split counts, the feature file's size,
    the total number of features and the generation time in seconds.

  Raises:
    ValueError: ``out_dir`` holds something else (and not ``overwrite``), or
      the inputs are invalid.
  """
  params = params if params is not None else params_for(version)
  manifest = _manifest(seed, scale if splits_from is None else 1.0, params, splits_from)
  if splits_from is not None:
    for name in (*[f"{s}.json" for s in SPLITS], "length.json"):
      if not os.path.isfile(os.path.join(splits_from, name)):
        raise ValueError(f"--splits_from {splits_from}: {name} is missing")

  def fill(tmp: str) -> dict[str, Any]:
    if splits_from is not None:
      videos, info = _layout_from_splits(splits_from, seed, params)
      num_classes = info["num_classes"]
    else:
      videos, info = _layout(seed, scale, params)
      num_classes = sum(len(v) for v in CLASS_ENTRY_COUNTS.values())
    world = make_world(seed, num_classes, params)
    summary_splits = {}
    if splits_from is not None:
      for name in (*[f"{s}.json" for s in SPLITS], "length.json"):
        shutil.copyfile(os.path.join(splits_from, name), os.path.join(tmp, name))
      for split in SPLITS:
        entries = info["raw"][split]
        summary_splits[split] = {"entries": len(entries),
                                 "videos": len({e["id"] for e in entries}),
                                 "classes": len(info["labels"][split])}
    else:
      rng = np.random.default_rng([seed, 4])
      lengths = {}
      for split in SPLITS:
        rows = _split_rows(videos, split)
        directory.dump_json(os.path.join(tmp, f"{split}.json"), rows)
        summary_splits[split] = {"entries": len(rows),
                                 "videos": sum(v.split == split for v in videos),
                                 "classes": len(info["labels"][split])}
      for v in videos:
        lengths[v.video_id] = {"n_feat": v.n_feat, "n_frames": _n_frames(v.n_feat, rng)}
      directory.dump_json(os.path.join(tmp, "length.json"), lengths)
    n_features = _write_features(os.path.join(tmp, HDF5_NAME), videos, world, params, seed)
    return {"splits": summary_splits, "num_videos": len(videos), "num_features": n_features,
            "feature_file_bytes": os.path.getsize(os.path.join(tmp, HDF5_NAME))}

  return directory.build_directory(out_dir, manifest, MANIFEST_NAME, fill,
                                   f"this synthetic dataset (version {version_of(params)}, seed {seed}, scale {scale})",
                                   overwrite=overwrite)


# ---------------------------------------------------------------------------
# Measuring a benchmark directory (the source of the constants above).
# ---------------------------------------------------------------------------


def measure_statistics(data_dir: str) -> dict[str, Any]:
  """Statistics of a benchmark directory's split files (real or synthetic).

  Returns:
    A dict with, over the three splits together: ``window_lengths``,
    ``segment_lengths``, ``relative_starts`` / ``relative_ends`` (s / W and
    e / W) as numpy arrays; ``entries_per_video`` counts (k = 1, 2, …);
    per split ``class_entry_counts`` (sorted), ``entries``, ``videos``,
    ``classes``; and the background tables ``gap_quantiles``,
    ``lead_quantiles``, ``trail_quantiles`` (at `QUANTILE_LEVELS`) with the
    chances of an unlisted instance ``p_hidden_before`` / ``_between`` /
    ``_after``.
  """
  lengths = storage.read_json(storage.join(data_dir, "length.json"))
  n_feat = {k: v["n_feat"] for k, v in lengths.items()}
  out: dict[str, Any] = {"splits": {}}
  windows, segs, starts, ends, per_video = [], [], [], [], []
  gaps, leads, trails = [], [], []
  hidden = {"before": [0, 0], "between": [0, 0], "after": [0, 0]}
  for split in SPLITS:
    raw = storage.read_json(storage.join(data_dir, f"{split}.json"))
    by_video = collections.defaultdict(list)
    for e in raw:
      by_video[e["id"]].append(e)
      (a, b), (s, t) = e["location"], e["groundtruth"]
      windows.append(b - a)
      segs.append(t - s)
      starts.append(s / (b - a))
      ends.append(t / (b - a))
    out["splits"][split] = {
        "entries": len(raw), "videos": len(by_video),
        "classes": len({e["label"] for e in raw}),
        "class_entry_counts": sorted(collections.Counter(e["label"] for e in raw).values())}
    for vid, es in by_video.items():
      per_video.append(len(es))
      es = sorted(es, key=lambda e: e["location"][0] + e["groundtruth"][0])
      spans = [(e["location"][0], e["location"][1], e["location"][0] + e["groundtruth"][0],
                e["location"][0] + e["groundtruth"][1]) for e in es]
      a, b, st, en = spans[0]
      if b - a < MAX_WINDOW:
        hidden["before"][a != 0] += 1
        (leads if a == 0 else gaps).append(st if a == 0 else st - a - 1)
      a, b, st, en = spans[-1]
      if b - a < MAX_WINDOW:
        hidden["after"][b != n_feat[vid]] += 1
        (trails if b == n_feat[vid] else gaps).append(
            n_feat[vid] - en if b == n_feat[vid] else b - 1 - en)
      for (pa, pb, pst, pen), (qa, qb, qst, qen) in zip(spans[:-1], spans[1:]):
        if pb - pa >= MAX_WINDOW or qb - qa >= MAX_WINDOW:
          continue
        adjacent = qa == pen - 1 and pb == qst + 1
        hidden["between"][not adjacent] += 1
        gaps.extend([qst - pen] if adjacent else [pb - 1 - pen, qst - qa - 1])
  out.update({
      "window_lengths": np.asarray(windows), "segment_lengths": np.asarray(segs),
      "relative_starts": np.asarray(starts), "relative_ends": np.asarray(ends),
      "entries_per_video": np.bincount(per_video)[1:].tolist(),
      "gap_quantiles": np.percentile(np.maximum(gaps, 0), QUANTILE_LEVELS).tolist(),
      "lead_quantiles": np.percentile(leads, QUANTILE_LEVELS).tolist(),
      "trail_quantiles": np.percentile(trails, QUANTILE_LEVELS).tolist(),
      **{f"p_hidden_{k}": v[1] / max(1, sum(v)) for k, v in hidden.items()}})
  return out


def _print_statistics(data_dir: str) -> None:
  stats = measure_statistics(data_dir)
  q = (0, 5, 10, 25, 50, 75, 90, 95, 100)
  for name in ("window_lengths", "segment_lengths", "relative_starts", "relative_ends"):
    values = stats[name]
    print(f"{name:16s} mean {values.mean():8.3f}  percentiles {q}: "
          f"{np.round(np.percentile(values, q), 3).tolist()}")
  for split, s in stats["splits"].items():
    print(f"{split}: {s['entries']} entries, {s['videos']} videos, {s['classes']} classes; "
          f"per-class counts {s['class_entry_counts']}")
  print("entries per video", stats["entries_per_video"])
  for name in ("gap_quantiles", "lead_quantiles", "trail_quantiles"):
    print(name, [int(np.floor(v)) for v in stats[name]])
  print("p_hidden before / between / after: "
        f"{stats['p_hidden_before']:.3f} / {stats['p_hidden_between']:.3f} / "
        f"{stats['p_hidden_after']:.3f}")


# ---------------------------------------------------------------------------
# Oracle access for calibration: the true class subspace of a generated set.
# ---------------------------------------------------------------------------


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
  version = manifest.get("version")
  if version not in PARAMS_BY_VERSION:
    raise ValueError(f"{manifest_path}: generator version {version} is not one of "
                     f"{sorted(PARAMS_BY_VERSION)}")
  raw = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["params"].items()}
  params = type(PARAMS_BY_VERSION[version])(**raw)
  _, basis = _basis(manifest["seed"], params)
  return basis[:, :params.class_dim].astype(np.float32)


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags (defined only when run as a program: the module is also a library)."""
  flags.DEFINE_string("out", None, "Directory to write the synthetic benchmark into.")
  flags.DEFINE_integer("seed", 0, "Seed of everything generated.")
  flags.DEFINE_float("scale", 1.0, "Fraction of the real benchmark's entry counts.")
  flags.DEFINE_integer("version", VERSION, "Generator version: 4 (default) or 3 (the earlier one).")
  flags.DEFINE_string("splits_from", None,
                      "A real benchmark directory: keep its splits and length.json, "
                      "synthesize only the features.")
  flags.DEFINE_bool("overwrite", False, "Replace a different dataset already at --out.")
  flags.DEFINE_bool("positive_control", False,
                    "Generate the weak objective's positive control (POSITIVE_CONTROL).")
  flags.DEFINE_string("measure", None, "Print the statistics of a benchmark directory and exit.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  if FLAGS.measure:
    _print_statistics(FLAGS.measure)
    return
  if not FLAGS.out:
    raise app.UsageError("--out is required (or --measure=DIR).")
  with cli.one_line_errors("vreloc_jax.data.synthetic"):
    summary = generate(FLAGS.out, seed=FLAGS.seed, scale=FLAGS.scale,
                       splits_from=FLAGS.splits_from, overwrite=FLAGS.overwrite,
                       version=FLAGS.version,
                       params=POSITIVE_CONTROL if FLAGS.positive_control else None)
  if summary.get("cached"):
    print(f"{FLAGS.out}: already generated (seed {summary['seed']}, scale {summary['scale']}).")
    return
  for split, s in summary["splits"].items():
    print(f"{split:5s}: {s['entries']:5d} entries, {s['videos']:5d} videos, {s['classes']:3d} classes")
  print(f"{summary['num_features']} features, {summary['feature_file_bytes'] / 2**20:.1f} MiB "
        f"({HDF5_NAME}), {summary['seconds']:.1f} s -> {FLAGS.out}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "vreloc_jax.data.synthetic")
