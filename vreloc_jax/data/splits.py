"""The benchmark's split files: one JSON list of entries per split.

Each entry of ``train.json`` / ``val.json`` / ``test.json`` is
``{"id": <YouTube id without 'v_'>, "label": <int>, "location": [a, b],
"groundtruth": [s, e]}``: ``location`` is the reference window in absolute
feature indices of the whole video and ``groundtruth`` the action segment
relative to ``a``; both ends are exclusive.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from vreloc_jax import storage

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One annotated window of the benchmark.

  Attributes:
    index: position of the entry in its split file.
    video_id: YouTube id, without the ``v_`` prefix.
    label: ActivityNet taxonomy node id of the action.
    location: reference window ``[a, b)`` in absolute feature indices.
    segment: ground-truth action ``[s, e)`` relative to ``a``.
  """

  index: int
  video_id: str
  label: int
  location: tuple[int, int]
  segment: tuple[int, int]

  @property
  def window_length(self) -> int:
    return self.location[1] - self.location[0]

  @property
  def segment_length(self) -> int:
    return self.segment[1] - self.segment[0]

  @property
  def query_span(self) -> tuple[int, int]:
    """The ground-truth segment in absolute feature indices of the video."""
    a = self.location[0]
    return (a + self.segment[0], a + self.segment[1])

  def describe(self) -> str:
    return f"entry {self.index} (video v_{self.video_id})"


def _int_pair(value: Any) -> tuple[int, int] | None:
  if (isinstance(value, (list, tuple)) and len(value) == 2 and
      all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
    return (int(value[0]), int(value[1]))
  return None


def parse_entry(index: int, raw: Any, source: str) -> Entry:
  """Validates one raw JSON entry and returns it as an `Entry`.

  Raises:
    ValueError: naming the file, the entry and the video when a field is
      missing or malformed, the window is empty or inverted, or the segment is
      empty, inverted or outside the window.
  """
  where = f"{source}: entry {index}"
  if not isinstance(raw, dict):
    raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
  missing = [k for k in ("id", "label", "location", "groundtruth") if k not in raw]
  if isinstance(raw.get("id"), str) and raw["id"]:
    where = f"{source}: entry {index} (video v_{raw['id']})"
  if missing:
    raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
  video_id = raw["id"]
  if not isinstance(video_id, str) or not video_id:
    raise ValueError(f"{where}: 'id' must be a non-empty string, got {video_id!r}")
  where = f"{source}: entry {index} (video v_{video_id})"
  label = raw["label"]
  if not isinstance(label, int) or isinstance(label, bool):
    raise ValueError(f"{where}: 'label' must be an integer, got {label!r}")
  location = _int_pair(raw["location"])
  if location is None:
    raise ValueError(f"{where}: 'location' must be two integers, got {raw['location']!r}")
  segment = _int_pair(raw["groundtruth"])
  if segment is None:
    raise ValueError(f"{where}: 'groundtruth' must be two integers, got {raw['groundtruth']!r}")
  a, b = location
  if b <= a:
    raise ValueError(f"{where}: window [{a}, {b}) is empty or inverted")
  if a < 0:
    raise ValueError(f"{where}: window [{a}, {b}) starts before 0")
  s, e = segment
  if e <= s:
    raise ValueError(f"{where}: segment [{s}, {e}) is empty or inverted")
  if s < 0 or e > b - a:
    raise ValueError(
        f"{where}: segment [{s}, {e}) lies outside its window of length {b - a}")
  return Entry(index=index, video_id=video_id, label=label, location=location,
               segment=segment)


def load_split(path: str | os.PathLike[str]) -> list[Entry]:
  """Reads and validates one split file.

  Args:
    path: a ``train.json`` / ``val.json`` / ``test.json`` file.

  Returns:
    The entries, in file order.

  Raises:
    ValueError: the file is missing, is not valid JSON, is not a non-empty
      list, or holds an invalid entry (the message names it).
  """
  path = os.fspath(path)
  if not storage.is_file(path):
    raise ValueError(f"split file {path} does not exist")
  try:
    raw = json.loads(storage.read_text(path))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"split file {path} is unreadable: {e}") from e
  if not isinstance(raw, list) or not raw:
    raise ValueError(f"split file {path} must hold a non-empty JSON list of entries")
  return [parse_entry(i, r, path) for i, r in enumerate(raw)]


def split_path(data_dir: str | os.PathLike[str], split: str) -> str:
  """Path of a split's JSON file inside a benchmark directory."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  return storage.join(data_dir, f"{split}.json")


def load_lengths(path: str | os.PathLike[str]) -> dict[str, int]:
  """Reads ``length.json``: video id → number of features (``n_feat``)."""
  path = os.fspath(path)
  try:
    raw = json.loads(storage.read_text(path))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"length file {path} is unreadable: {e}") from e
  if not isinstance(raw, dict):
    raise ValueError(f"length file {path} must hold a JSON object")
  out = {}
  for vid, info in raw.items():
    n = info.get("n_feat") if isinstance(info, dict) else None
    if not isinstance(n, int) or n <= 0:
      raise ValueError(f"length file {path}: video v_{vid} has no positive 'n_feat'")
    out[vid] = n
  return out


def check_windows_fit(entries: Sequence[Entry], lengths: dict[str, int], source: str) -> None:
  """Raises ValueError if a window ends past its video's feature count."""
  for entry in entries:
    n = lengths.get(entry.video_id)
    if n is not None and entry.location[1] > n:
      raise ValueError(
          f"{source}: {entry.describe()}: window {list(entry.location)} ends past "
          f"the video's {n} features")
