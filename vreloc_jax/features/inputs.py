"""Video files as ``python -m vreloc_jax.localize``'s query and reference.

``--query=clip.mp4[:START-END]`` and ``--reference=long.mp4[:START-END]``: a video file,
optionally with a range in seconds. A range becomes whole feature steps of 16 frames,
counted from the video's first frame (the grid of the extractor's output, so the features
are those `vreloc_jax.features` writes for the same video: its even rows); only the clips
of those steps are computed. `VideoInputs` is a `vreloc_jax.data.features.FeatureSource`
holding them, so that `vreloc_jax.localize.localize` runs on it unchanged and reports the
segment in steps of the whole video (frames and seconds follow from the frame rate).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import numpy as np

from vreloc_jax.data import features as features_lib
from vreloc_jax.features import extractor as extractor_lib
from vreloc_jax.features import progress as progress_lib
from vreloc_jax.features import video

_RANGE = re.compile(r"^(?P<path>.+?):(?P<start>\d+(?:\.\d*)?)-(?P<end>\d+(?:\.\d*)?)$")


@dataclasses.dataclass(frozen=True)
class VideoSpan:
  """A video file and a range in seconds (``end`` None: to the end)."""

  path: str
  start: float
  end: float | None

  def describe(self) -> str:
    if self.start == 0 and self.end is None:
      return self.path
    end = "end" if self.end is None else f"{self.end:g} s"
    return f"{self.path} [{self.start:g} s, {end})"


def parse(text: str | None) -> VideoSpan | None:
  """``PATH`` or ``PATH:START-END`` (seconds) if PATH is a video file, else None."""
  if not isinstance(text, str):
    return None
  text = text.strip()
  if video.is_video_file(text):
    return VideoSpan(text, 0.0, None)
  match = _RANGE.match(text)
  if match and video.is_video_file(match["path"]):
    start, end = float(match["start"]), float(match["end"])
    if end <= start:
      raise ValueError(f"{text!r}: the range [{start:g} s, {end:g} s) is empty or inverted")
    return VideoSpan(match["path"], start, end)
  return None


def dimension_mismatch(model_dim: int, extractor: extractor_lib.Extractor) -> str | None:
  """Why a model of ``model_dim`` cannot take the extractor's features (None if it can)."""
  dim = extractor.feature_dim
  if dim == model_dim:
    return None
  if model_dim == 500:
    todo = ("pass --pca=PCA_activitynet_v1-3.hdf5 (ActivityNet's PCA to 500-d, as the "
            "benchmark's features)" if extractor.settings["pca"] is None else
            "use a PCA to 500 dimensions")
  elif model_dim == extractor.arch.fc_width:
    todo = "drop --pca (the model takes the 4096-d fc7 features)"
  else:
    todo = (f"this model was trained on other features; train one on features of "
            f"python -m vreloc_jax.features ({dim}-d) to localize in video files")
  return (f"the model takes {model_dim}-d features but the extractor gives {dim}-d "
          f"({extractor.describe()}): {todo}")


class VideoInputs:
  """Features of video files, extracted on demand and kept in memory (a FeatureSource).

  Args:
    extractor: the feature extractor.
    model_dim: the feature dimension of the model the features are for.

  Raises:
    ValueError: the dimensions differ (the message says what to do).
  """

  path = "video files"

  def __init__(self, extractor: extractor_lib.Extractor, model_dim: int):
    problem = dimension_mismatch(model_dim, extractor)
    if problem:
      raise ValueError(problem)
    self.extractor = extractor
    self.store = features_lib.FeatureStore(self, expected_dim=model_dim)
    # id → (first step, features [steps, D], whether they reach the video's end)
    self._rows: dict[str, tuple[int, np.ndarray, bool]] = {}
    self._paths: dict[str, str] = {}  # id → file
    self.fps: dict[str, float] = {}  # id → frames per second

  def _id(self, path: str) -> str:
    key = video.video_id(path)
    for k in range(1, 1000):
      if self._paths.setdefault(key, os.path.abspath(path)) == os.path.abspath(path):
        return key
      key = f"{video.video_id(path)}_{k}"
    raise ValueError(f"too many videos named {video.video_id(path)}")

  def add(self, span: VideoSpan, what: str) -> tuple[str, int, int]:
    """Extracts the features of a span; returns its video id and steps ``[start, end)``.

    Raises:
      ValueError: the file is unreadable, or the range holds no whole 16-frame step.
    """
    info = video.probe(span.path)
    first_frame, end_frame = video.frame_range(info.fps, span.start, span.end)
    start = first_frame // video.FEATURE_FRAMES
    end = None if end_frame is None else math.ceil(end_frame / video.FEATURE_FRAMES)
    video_id = self._id(span.path)
    cached = self._rows.get(video_id)
    if cached is None:
      low, high = start, end
    else:
      c_start, c_end, c_complete = cached[0], cached[0] + len(cached[1]), cached[2]
      covered = c_start <= start and (c_complete if end is None else end <= c_end)
      low = min(start, c_start)
      high = None if end is None or c_complete else max(end, c_end)
    if cached is None or not covered:
      known = video.num_steps(info.frames) if high is None else high
      progress = progress_lib.Progress(max(1, known - low))
      progress.update(label=f"{what} {span.path}")
      rows, _ = self.extractor.video(
          span.path, stride=video.FEATURE_FRAMES, start=low * video.FEATURE_FRAMES,
          end=None if high is None else high * video.FEATURE_FRAMES, on_batch=progress.update)
      progress.close()
      self._rows[video_id] = (low, rows, high is None)
      self.fps[video_id] = info.fps
    first, rows, _ = self._rows[video_id]
    stop = first + len(rows) if end is None else min(end, first + len(rows))
    if stop <= start:
      seconds = f"{start * video.FEATURE_FRAMES / info.fps:.2f} s"
      raise ValueError(f"{what} {span.describe()}: no whole step of {video.FEATURE_FRAMES} "
                       f"frames from {seconds} on (the video has {info.frames} frames at "
                       f"{info.fps:g} fps); choose a longer range")
    return video_id, start, stop

  # FeatureSource:
  def num_features(self, video_id: str) -> int:
    if video_id not in self._rows:
      raise ValueError(f"video {video_id} was not extracted")
    first, rows, _ = self._rows[video_id]
    return first + len(rows)

  def read(self, video_id: str, start: int, end: int) -> np.ndarray:
    first, rows, _ = self._rows[video_id]
    if start < first:
      raise ValueError(f"video {video_id}: steps before {first} were not extracted")
    return rows[start - first:end - first]

  def close(self) -> None:
    pass

  def record(self, *video_ids: str) -> dict[str, Any]:
    """What the output records: the extractor's settings, the videos' files and rates."""
    return {"extractor": self.extractor.settings,
            "videos": {k: {"file": self._paths[k], "fps": self.fps[k]} for k in video_ids}}

  def describe(self, *video_ids: str) -> str:
    """``q = clip.mp4 (25 fps), …``: the files behind the ids."""
    return ", ".join(f"{k} = {self._paths[k]} ({self.fps[k]:g} fps)"
                     for k in dict.fromkeys(video_ids))
