"""The benchmark's layout: videos, action instances and windows, from the real split statistics.

A video is a sequence of action instances of its class separated by
background; each instance of 1-32 features is an entry whose window runs from
the last feature of the previous instance (or the video start) to the first
feature of the next one (or the video end), cropped at random to 300 features
keeping the segment (`create_dataset.py` of Feng et al.). Instance lengths,
gaps, lead and trail backgrounds and the chance of a longer (> 32, hence
unlisted) instance next to an entry follow the distributions measured from
the real split files (the constants below; `statistics.measure_statistics`
measures them again); a video's background stretches are correlated (a
Gaussian copula). Every entry's window fits the segment of another entry of
its class, so every entry gets an evaluation pair, as on the real benchmark.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import string
from typing import Any, Sequence

import numpy as np

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
_MAX_CLASS_TRIES = 100  # Redraws of a class whose shortest window fits no other segment.


@dataclasses.dataclass(frozen=True)
class LayoutParams:
  """The settings of the layout that the real split files do not fix."""

  distractor_probability: float = 0.1  # Chance a background slot holds a distractor.
  distractor_spacing: int = 20  # A background gap has one slot per this many steps (at least 1).
  hidden_mean_length: float = 40.0  # Mean extra length (over 32) of an unlisted instance.


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


@dataclasses.dataclass
class Piece:
  """One action instance on a video's timeline, ``[start, end)``."""

  start: int
  end: int
  class_index: int  # Index into the world's classes.
  kind: str  # "entry" | "hidden" (same class, unlisted) | "distractor" (another class)


@dataclasses.dataclass
class Video:
  video_id: str
  split: str
  label: int
  class_index: int
  n_feat: int
  pieces: list[Piece]
  entries: list[dict[str, Any]]  # JSON entries, in time order.


def segment_length_sampler():
  """Draws segment lengths (1-32 features) from the real benchmark's distribution."""
  return _pmf_sampler(SEGMENT_LENGTH_COUNTS)


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


def _windows(pieces: list[Piece], n_feat: int, rng: np.random.Generator) -> list[dict[str, Any]]:
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


def _insert_distractors(pieces: list[Piece], n_feat: int, others: Sequence[int],
                        params: LayoutParams, rng: np.random.Generator,
                        sample_length) -> list[Piece]:
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
        out.append(Piece(start, start + length, int(rng.choice(others)), "distractor"))
    if p is not None:
      out.append(p)
      prev_end = max(prev_end, p.end)
  return out


def _layout_video(k: int, class_index: int, rng: np.random.Generator,
                  params: LayoutParams, sample_length) -> tuple[list[Piece], int]:
  """The timeline of one video holding ``k`` entries of its class."""

  def hidden(start: int) -> Piece:
    extra = 1 + int(rng.exponential(params.hidden_mean_length))
    return Piece(start, start + MAX_SEGMENT + extra, class_index, "hidden")

  pace = rng.standard_normal()  # The video's pace: its background stretches are alike.

  def background(quantiles) -> int:
    return _quantile_sample(rng, quantiles, pace, BACKGROUND_CORRELATION)

  pieces: list[Piece] = []
  t = background(LEAD_QUANTILES)
  if rng.random() < P_HIDDEN_BEFORE:
    pieces.append(hidden(t))
    t = pieces[-1].end + background(GAP_QUANTILES)
  for i in range(k):
    length = int(sample_length(rng))
    pieces.append(Piece(t, t + length, class_index, "entry"))
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


def _layout_class(c: int, target: int, rng: np.random.Generator, params: LayoutParams,
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


def plan(seed: int, scale: float, params: LayoutParams) -> tuple[list[Video], dict]:
  """All videos of the three splits, with their entries, for ``(seed, scale)``."""
  rng = np.random.default_rng([seed, 0])
  sample_k = _pmf_sampler(ENTRIES_PER_VIDEO_COUNTS)
  sample_length = _pmf_sampler(SEGMENT_LENGTH_COUNTS)
  total_classes = sum(len(v) for v in CLASS_ENTRY_COUNTS.values())
  labels = [int(x) for x in rng.choice(np.arange(60, 420), size=total_classes, replace=False)]
  counts = {s: scaled_class_counts(s, scale) for s in SPLITS}
  n_videos_max = sum(sum(c) for c in counts.values())
  ids = _video_ids(rng, n_videos_max)
  videos: list[Video] = []
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
        split_videos.append(Video(ids[len(videos) + len(split_videos)], split, labels[c], c,
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


def n_frames(n_feat: int, rng: np.random.Generator) -> int:
  """Frames of a video with ``n_feat`` features: ``n_feat = n_frames // 16`` (jitter 0-15)."""
  return 16 * n_feat + int(rng.integers(16))


def from_splits(splits_from: str, seed: int, params: LayoutParams
                        ) -> tuple[list[Video], dict]:
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
          pieces.append(Piece(start, end, class_of[e["label"]], "entry"))
      c = class_of[entries[0]["label"]]
      others = [o for o in split_classes if o != c]
      pieces = _insert_distractors(pieces, n_feat, others, params, rng, sample_length)
      videos.append(Video(vid, split, entries[0]["label"], c, n_feat, pieces, entries))
  return videos, {"labels": {s: sorted({e["label"] for e in raw[s]}) for s in SPLITS},
                  "num_classes": len(all_labels), "raw": raw}


def split_rows(videos: Sequence[Video], split: str) -> list[dict[str, Any]]:
  """A split file's entries: videos in order, each video's entries in time order."""
  return [{"id": v.video_id, "label": v.label, "location": e["location"],
           "groundtruth": e["groundtruth"]} for v in videos if v.split == split for e in v.entries]
