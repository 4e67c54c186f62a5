"""Query/reference pairs: the fixed evaluation pairs and the training samplers.

Evaluation (deterministic, written once to JSON and reused): one pair per
entry of the split. The entry is the *reference* — its window and its ground
truth — and the query is the ground-truth segment of another entry of the same
class whose segment fits in the window (``segment_length <= window_length``),
drawn with a generator seeded by ``(seed, entry index)``; an entry is never
paired with itself. Scoring every entry's window exactly once makes methods
that look only at the reference (the statistical prior) independent of the
draw; with it the paper's prior row is reproduced to 0.1 points.

Full supervision (training): the query is the segment of one entry, the
reference the window of another entry of the same class that is at least as
long; with probability 0.9 the reference is cropped at random, keeping the
whole segment.

Weak supervision (training): the training split is divided once, by seed and
by video, into a query part and a reference part. The reference part is kept
as `Window` objects, which have no segment: the weak path cannot read a
reference's annotation.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from vreloc_jax import storage
from vreloc_jax.data.splits import Entry

PAIRS_FORMAT = "vreloc_jax.eval_pairs/1"
PAIR_RULE = ("reference = each entry's window; query = ground-truth segment of another entry "
             "of the same label with segment_length <= window_length, drawn with "
             "candidates[numpy.random.default_rng((seed, reference_index)).integers(len(candidates))], "
             "candidates in split order")
PACKAGED_DIR = os.path.join(os.path.dirname(__file__), "eval_pairs")


@dataclasses.dataclass(frozen=True)
class Pair:
  """One evaluation pair: a query entry (its segment) and a reference entry (its window)."""

  query: Entry
  reference: Entry


@dataclasses.dataclass(frozen=True)
class Window:
  """A reference window with no annotation: what weak supervision may see."""

  video_id: str
  label: int
  location: tuple[int, int]

  @property
  def window_length(self) -> int:
    return self.location[1] - self.location[0]


@dataclasses.dataclass(frozen=True)
class Example:
  """One training or evaluation example, in absolute feature indices.

  Attributes:
    query_video: video id of the query.
    query_span: the query ``[start, end)`` in the query video.
    reference_video: video id of the reference.
    reference_span: the reference window ``[a, b)`` in its video.
    segment: ground truth ``[s, e)`` relative to the reference window, or
      None (weak supervision: no annotation travels with the example).
  """

  query_video: str
  query_span: tuple[int, int]
  reference_video: str
  reference_span: tuple[int, int]
  segment: tuple[int, int] | None

  @property
  def reference_length(self) -> int:
    return self.reference_span[1] - self.reference_span[0]

  @property
  def query_length(self) -> int:
    return self.query_span[1] - self.query_span[0]


def _by_label(entries: Sequence[Entry]) -> dict[int, list[Entry]]:
  groups: dict[int, list[Entry]] = collections.defaultdict(list)
  for e in entries:
    groups[e.label].append(e)
  return groups


def eval_pairs(entries: Sequence[Entry], seed: int = 0) -> list[Pair]:
  """The deterministic evaluation pairs of a split (see the module docstring).

  Entries for which no other entry of the class has a segment short enough
  are left out (none on the real benchmark).
  """
  groups = _by_label(entries)
  pairs = []
  for ref in entries:
    candidates = [q for q in groups[ref.label]
                  if q.index != ref.index and q.segment_length <= ref.window_length]
    if not candidates:
      continue
    rng = np.random.default_rng((seed, ref.index))
    pairs.append(Pair(query=candidates[int(rng.integers(len(candidates)))], reference=ref))
  return pairs


def example_from_pair(pair: Pair) -> Example:
  return Example(query_video=pair.query.video_id, query_span=pair.query.query_span,
                 reference_video=pair.reference.video_id, reference_span=pair.reference.location,
                 segment=pair.reference.segment)


def file_sha256(path: str) -> str:
  return hashlib.sha256(storage.as_path(path).read_bytes()).hexdigest()


def _pairs_to_json(split: str, split_sha: str, seed: int, pairs: Sequence[Pair]) -> dict:
  return {
      "format": PAIRS_FORMAT, "split": split, "split_sha256": split_sha, "seed": seed,
      "rule": PAIR_RULE,
      "pairs": [{"reference": p.reference.index, "reference_id": p.reference.video_id,
                 "query": p.query.index, "query_id": p.query.video_id} for p in pairs],
  }


def _pairs_from_json(raw: dict, entries: Sequence[Entry], path: str) -> list[Pair]:
  rows = raw.get("pairs")
  if not isinstance(rows, list):
    raise ValueError(f"pair file {path} has no list of 'pairs'")
  pairs = []
  for k, row in enumerate(rows):
    indices = (row.get("reference"), row.get("query")) if isinstance(row, dict) else (None, None)
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(entries)
               for i in indices):
      raise ValueError(f"pair file {path}: pair {k} is malformed ({row!r})")
    ref, query = entries[indices[0]], entries[indices[1]]
    if (ref.video_id != row.get("reference_id") or query.video_id != row.get("query_id") or
        ref.label != query.label or ref.index == query.index or
        query.segment_length > ref.window_length):
      raise ValueError(f"pair file {path}: pair {k} does not fit its split "
                       f"(reference {ref.describe()}, query {query.describe()})")
    pairs.append(Pair(query=query, reference=ref))
  return pairs


def _default_pair_file(split_file: str, split: str, split_sha: str, seed: int) -> str:
  """Where a split's pair file lives: packaged (the real benchmark), else beside the split.

  Beside the split when it is there already or the directory is a writable local
  one; else (a read-only directory, cloud storage) in the local cache.
  """
  packaged = os.path.join(PACKAGED_DIR, f"{split_sha[:16]}_seed{seed}_{split}.json")
  if os.path.isfile(packaged):
    return packaged
  beside = storage.join(storage.as_path(storage.absolute(split_file)).parent,
                        f"{split}_pairs_seed{seed}.json")
  if storage.is_file(beside) or (storage.is_local(beside) and
                                 os.access(os.path.dirname(beside), os.W_OK)):
    return beside
  cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  return os.path.join(cache, "vreloc_jax", "eval_pairs", f"{split_sha[:16]}_seed{seed}_{split}.json")


def load_eval_pairs(split_file: str, entries: Sequence[Entry], split: str, seed: int = 0,
                    pair_file: str | None = None) -> tuple[list[Pair], str]:
  """Reads a split's evaluation pairs, creating the pair file once if needed.

  The pair file records the SHA-256 of the split file it was drawn from; a
  file that does not match the split is an error, never silently redrawn.

  Args:
    split_file: the split's JSON file.
    entries: its entries (`load_split`).
    split: the split's name.
    seed: the pair seed.
    pair_file: an explicit pair file; by default the packaged one for the
      real benchmark, else ``<split dir>/<split>_pairs_seed<seed>.json``
      (``~/.cache/vreloc_jax/eval_pairs`` if that directory is read-only).

  Returns:
    The pairs and the path of the pair file.
  """
  split_sha = file_sha256(split_file)
  path = pair_file or _default_pair_file(split_file, split, split_sha, seed)
  if storage.is_file(path):
    try:
      raw = json.loads(storage.read_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"pair file {path} is unreadable: {e}") from e
    if (not isinstance(raw, dict) or raw.get("format") != PAIRS_FORMAT or
        raw.get("split_sha256") != split_sha):
      raise ValueError(f"pair file {path} was not drawn from {split_file} "
                       f"(split SHA-256 {split_sha[:16]}…); delete it or pass the right split")
    return _pairs_from_json(raw, entries, path), path
  pairs = eval_pairs(entries, seed)
  storage.write_json(path, _pairs_to_json(split, split_sha, seed, pairs))
  return pairs, path


class FullSampler:
  """Training pairs with full supervision (see the module docstring)."""

  def __init__(self, entries: Sequence[Entry], crop_probability: float = 0.9):
    self.entries = list(entries)
    self.crop_probability = crop_probability
    groups = _by_label(self.entries)
    # For each entry: the other entries of its class with a window long enough.
    self._references = []
    for q in self.entries:
      refs = [r for r in groups[q.label] if r.window_length >= q.segment_length]
      others = [r for r in refs if r.index != q.index]
      self._references.append(others or refs)

  def sample(self, rng: np.random.Generator) -> Example:
    k = int(rng.integers(len(self.entries)))
    query, refs = self.entries[k], self._references[k]
    ref = refs[int(rng.integers(len(refs)))]
    (a, b), (s, e) = ref.location, ref.segment
    if rng.random() < self.crop_probability:
      cut_start = int(rng.integers(s + 1))           # 0 … s
      cut_end = int(rng.integers(b - a - e + 1))     # 0 … L - e
      a, b, s, e = a + cut_start, b - cut_end, s - cut_start, e - cut_start
    return Example(query_video=query.video_id, query_span=query.query_span,
                   reference_video=ref.video_id, reference_span=(a, b), segment=(s, e))


def weak_split(entries: Sequence[Entry], seed: int = 0,
               query_fraction: float = 0.5) -> tuple[list[Entry], list[Window]]:
  """Divides a training split once into a query part and a reference part.

  Per class, the videos are shuffled with ``seed`` and the first
  ``query_fraction`` of them give queries; the rest give references, which
  keep only their windows (`Window`): their segments are dropped here.
  """
  rng = np.random.default_rng(seed)
  queries: list[Entry] = []
  references: list[Window] = []
  for label in sorted(_by_label(entries)):
    group = [e for e in entries if e.label == label]
    videos = sorted({e.video_id for e in group})
    rng.shuffle(videos)
    n_query = int(round(query_fraction * len(videos)))
    if len(videos) >= 2:
      n_query = min(max(n_query, 1), len(videos) - 1)
    query_videos = set(videos[:n_query])
    for e in group:
      if e.video_id in query_videos:
        queries.append(e)
      else:
        references.append(Window(video_id=e.video_id, label=e.label, location=e.location))
  return queries, references


class WeakSampler:
  """Training pairs with weak supervision: no reference annotation exists here."""

  def __init__(self, queries: Sequence[Entry], references: Sequence[Window]):
    by_label: dict[int, list[Window]] = collections.defaultdict(list)
    for w in references:
      by_label[w.label].append(w)
    self._queries = []
    self._references = []
    for q in queries:
      refs = [w for w in by_label[q.label] if w.window_length >= q.segment_length]
      if refs:
        self._queries.append(q)
        self._references.append(refs)
    if not self._queries:
      raise ValueError("weak supervision: no query has a reference of its class long enough")

  def sample(self, rng: np.random.Generator) -> Example:
    k = int(rng.integers(len(self._queries)))
    query, refs = self._queries[k], self._references[k]
    ref = refs[int(rng.integers(len(refs)))]
    return Example(query_video=query.video_id, query_span=query.query_span,
                   reference_video=ref.video_id, reference_span=ref.location, segment=None)
