"""Video files → C3D's input clips: PyAV decoding and Caffe C3D's preprocessing.

Every step follows C3D v1.0's Caffe feature extraction (facebookarchive/C3D, C3D-v1.0):

* every frame at the file's own frame rate, none dropped or repeated: the ActivityNet
  features have one row every 8 frames of the video (DAPs, escorciav/daps
  ``daps/visual_encoder.py``: "We extracted C3D features densely for all the video frames");
* the frame in OpenCV's BGR channel order (``src/caffe/util/image_io.cpp`` reads frames with
  OpenCV), resized to 171 × 128 (width × height) by bilinear interpolation (``cv::resize``
  with its default ``INTER_LINEAR``, ``image_io.cpp`` line 146; ``new_width: 171``,
  ``new_height: 128`` in ``c3d_sport1m_feature_extractor_frm.prototxt``);
* 16 consecutive frames a clip (``new_length: 16``), the mean subtracted, then the centre
  112 × 112 crop at rows 8…119 and columns 29…140: ``h_off = (128 - 112) / 2``,
  ``w_off = (171 - 112) / 2`` in integer arithmetic (``video_data_layer.cpp``, TEST phase;
  the Keras ports crop columns 30…141, one to the right);
* a clip starting every 8 frames (`CLIP_STRIDE`, one row of the ActivityNet file); the
  benchmark uses every second row, 16 frames a feature step (`FEATURE_FRAMES`).

A video of ``n`` frames has ``(n - 16) // 8 + 1`` clips (`num_clips`) and ``n // 16``
feature steps: the rule Feng et al.'s ``get_frame_num.py`` checks ``length.json`` against.

Frames are decoded by PyAV (its wheels bundle FFmpeg) and converted to BGR by FFmpeg's
swscale; OpenCV 2's decoder used FFmpeg too. `resize_bilinear` is OpenCV's ``INTER_LINEAR``
rule (half-pixel centres, edge pixels repeated, no antialiasing) in float arithmetic, rounded
to uint8 as OpenCV does; OpenCV's 11-bit fixed-point weights can differ from it by one grey
level. Unreadable files raise ValueError naming the file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

CLIP_FRAMES = 16  # Frames of one C3D clip.
CLIP_STRIDE = 8  # Frames between two rows of the ActivityNet feature file.
FEATURE_FRAMES = 16  # Frames of one feature step of the benchmark (every second row).
RESIZE_HW = (128, 171)  # (height, width) every frame is resized to.
CROP = 112  # Side of the centre crop.
CROP_OFFSET = ((RESIZE_HW[0] - CROP) // 2, (RESIZE_HW[1] - CROP) // 2)  # (8, 29), Caffe's.
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                  ".wmv", ".ogv", ".3gp")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What a video file's container says about its first video stream.

  Attributes:
    path: the file.
    fps: frames per second (the stream's average rate).
    frames: the frame count the container states, else estimated from the duration (an
      estimate: decoding counts the frames).
    width: frame width in pixels.
    height: frame height in pixels.
  """

  path: str
  fps: float
  frames: int
  width: int
  height: int


def _unreadable(path: str, error: BaseException) -> ValueError:
  text = (getattr(error, "strerror", None) or str(error)).strip() or type(error).__name__
  return ValueError(f"video {path} is unreadable: {text}")


def _open(path: str):
  import av  # Imported lazily: only video input needs PyAV.
  try:
    container = av.open(path)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise _unreadable(path, e) from None
  if not container.streams.video:
    container.close()
    raise ValueError(f"video {path} has no video stream")
  return container


def probe(path: str) -> VideoInfo:
  """Reads a video file's header (no decoding).

  Raises:
    ValueError: the file does not exist, is not a video, or has no frame rate.
  """
  if not os.path.isfile(path):
    raise ValueError(f"video {path} does not exist")
  container = _open(path)
  try:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
      raise ValueError(f"video {path} states no frame rate")
    fps = float(rate)
    frames = int(stream.frames or 0)
    if frames <= 0:
      if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
      elif container.duration is not None:
        seconds = container.duration / 1e6  # In AV_TIME_BASE units.
      else:
        seconds = 0.0
      frames = int(round(seconds * fps))
    return VideoInfo(path=path, fps=fps, frames=frames, width=int(stream.width or 0),
                     height=int(stream.height or 0))
  finally:
    container.close()


@functools.lru_cache(maxsize=16)
def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """OpenCV INTER_LINEAR's two source indices and the second one's weight, per output index."""
  scale = size_in / size_out
  x = (np.arange(size_out) + 0.5) * scale - 0.5  # Half-pixel centres.
  x0 = np.floor(x)
  frac = (x - x0).astype(np.float32)
  lo = np.clip(x0, 0, size_in - 1).astype(np.intp)
  hi = np.clip(x0 + 1, 0, size_in - 1).astype(np.intp)
  # Left of the first centre OpenCV repeats the edge pixel (weight on index 0 only).
  frac = np.where(x0 < 0, 0.0, frac).astype(np.float32)
  return lo, hi, frac


def resize_bilinear(image: np.ndarray, size: tuple[int, int] = RESIZE_HW) -> np.ndarray:
  """OpenCV's ``cv::resize(..., INTER_LINEAR)`` of a uint8 image.

  Args:
    image: uint8 [height, width, channels].
    size: (height, width) of the result.

  Returns:
    uint8 [size[0], size[1], channels].
  """
  (r0, r1, fr), (c0, c1, fc) = _taps(image.shape[0], size[0]), _taps(image.shape[1], size[1])
  rows = image[r0].astype(np.float32)  # [out_h, width, C]
  rows += (image[r1].astype(np.float32) - rows) * fr[:, None, None]
  out = rows[:, c0]  # [out_h, out_w, C]
  out += (rows[:, c1] - out) * fc[None, :, None]
  return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def frames(path: str, start: int = 0, end: int | None = None) -> Iterator[np.ndarray]:
  """The frames ``[start, end)`` of a video, BGR, resized: uint8 [128, 171, 3] each.

  Frames are counted in presentation order from the first decoded frame; decoding starts at
  the beginning of the file (exact, where seeking would land on a key frame).

  Raises:
    ValueError: the file is unreadable or its data is corrupt (the frames before the
      error have been yielded).
  """
  import av  # pylint: disable=g-import-not-at-top
  container = _open(path)
  try:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # Frame and slice threads in FFmpeg's decoder.
    index = 0
    for frame in container.decode(stream):
      if end is not None and index >= end:
        break
      if index >= start:
        yield resize_bilinear(frame.to_ndarray(format="bgr24"))
      index += 1
  except (av.error.FFmpegError, OSError) as e:
    raise _unreadable(path, e) from None
  finally:
    container.close()


def crop(frame: np.ndarray) -> np.ndarray:
  """The centre 112 × 112 of a resized frame ([128, 171, C] → [112, 112, C])."""
  top, left = CROP_OFFSET
  return frame[top:top + CROP, left:left + CROP]


def clips(resized: Iterable[np.ndarray], stride: int = CLIP_STRIDE) -> Iterator[np.ndarray]:
  """Clips of 16 consecutive frames, one every ``stride`` frames, centre-cropped.

  Args:
    resized: frames as `frames` yields them, uint8 [128, 171, 3].
    stride: frames from one clip's start to the next one's (8: every row of the ActivityNet
      file; 16: only the rows the benchmark uses).

  Yields:
    uint8 [16, 112, 112, 3], the clips starting at frames 0, stride, 2·stride, … whose 16
    frames all exist.
  """
  window: list[np.ndarray] = []
  next_start = 0
  for index, frame in enumerate(resized):
    window.append(crop(frame))
    if len(window) > CLIP_FRAMES:
      window.pop(0)
    if index - CLIP_FRAMES + 1 == next_start:
      yield np.stack(window)
      next_start += stride


def num_clips(n_frames: int, stride: int = CLIP_STRIDE) -> int:
  """Clips `clips` yields for ``n_frames`` frames."""
  return 0 if n_frames < CLIP_FRAMES else (n_frames - CLIP_FRAMES) // stride + 1


def num_steps(n_frames: int) -> int:
  """Feature steps of a video of ``n_frames`` frames: every second row, ``n_frames // 16``."""
  return (num_clips(n_frames) + 1) // 2


def video_id(path: str) -> str:
  """A video's id: its file name without suffix and without a leading ``v_`` (ActivityNet's)."""
  stem = os.path.splitext(os.path.basename(path))[0]
  return stem[2:] if stem.startswith("v_") and len(stem) > 2 else stem


def is_video_file(path: str) -> bool:
  """Whether ``path`` is an existing file with a video suffix."""
  return path.lower().endswith(VIDEO_SUFFIXES) and os.path.isfile(path)


def find_videos(specs: Sequence[str]) -> list[str]:
  """The video files named by files and directories (a directory: its video files, sorted).

  Raises:
    ValueError: a path does not exist, a directory holds no video, or two videos have the
      same id (`video_id`).
  """
  paths: list[str] = []
  for spec in specs:
    if os.path.isdir(spec):
      found = sorted(os.path.join(spec, name) for name in os.listdir(spec)
                     if name.lower().endswith(VIDEO_SUFFIXES)
                     and os.path.isfile(os.path.join(spec, name)))
      if not found:
        raise ValueError(f"directory {spec} holds no video file ({', '.join(VIDEO_SUFFIXES)})")
      paths.extend(found)
    elif os.path.isfile(spec):
      paths.append(spec)
    else:
      raise ValueError(f"--videos: {spec} does not exist")
  by_id: dict[str, str] = {}
  for path in paths:
    other = by_id.setdefault(video_id(path), path)
    if other != path:
      raise ValueError(f"videos {other} and {path} have the same id {video_id(path)!r}; "
                       "rename one")
  return paths


def frame_range(fps: float, start_s: float, end_s: float | None) -> tuple[int, int | None]:
  """The frames ``[first, last)`` shown in ``[start_s, end_s)`` seconds (frame i at i / fps)."""
  first = max(0, math.ceil(start_s * fps - 1e-6))
  return first, None if end_s is None else max(first, math.ceil(end_s * fps - 1e-6))
