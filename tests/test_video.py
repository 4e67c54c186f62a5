"""Decoding video files into C3D's clips (vreloc_jax.features.video), on videos encoded here."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from vreloc_jax.features import store, video


def encode(path, frames: np.ndarray, fps: int = 25, codec: str = "libx264") -> str:
  """Writes RGB frames uint8 [n, h, w, 3] as a video file with PyAV."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    if codec == "libx264":
      stream.options = {"crf": "0"}  # Lossless luma: grey levels survive.
    for rgb in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return str(path)


def grey_ramp(n: int, h: int = 48, w: int = 64) -> np.ndarray:
  """Frame i is grey level 20 + 4·i: the frame's index can be read back from any pixel."""
  return np.broadcast_to((20 + 4 * np.arange(n, dtype=np.uint8))[:, None, None, None],
                         (n, h, w, 3)).copy()


def test_a_video_decodes_into_the_expected_clips_and_steps(tmp_path):
  path = encode(tmp_path / "v_ramp.mp4", grey_ramp(45))
  info = video.probe(path)
  assert (info.fps, info.frames, info.width, info.height) == (25.0, 45, 64, 48)
  frames = list(video.frames(path))
  assert len(frames) == 45 and frames[0].shape == (128, 171, 3) and frames[0].dtype == np.uint8
  levels = np.array([f[64, 85].astype(int) for f in frames])  # [45, 3]
  np.testing.assert_allclose(levels, (20 + 4 * np.arange(45))[:, None] * np.ones(3), atol=2)
  # Clips every 8 frames (the file's rows), and every 16 (the benchmark's steps).
  clips = list(video.clips(iter(frames)))
  assert len(clips) == video.num_clips(45) == (45 - 16) // 8 + 1 == 4
  assert clips[0].shape == (16, 112, 112, 3)
  for k, clip in enumerate(clips):
    np.testing.assert_allclose(clip[:, 50, 50, 0].astype(int), levels[8 * k:8 * k + 16, 0])
  assert len(list(video.clips(iter(frames), stride=16))) == 2 == video.num_steps(45) == 45 // 16
  # A range of frames is counted from the first frame.
  part = list(video.frames(path, start=16, end=40))
  assert len(part) == 24
  np.testing.assert_array_equal(part[0], frames[16])
  assert video.video_id(path) == "ramp"


def test_frames_are_bgr_resized_bilinearly_and_cropped_at_caffes_offset(tmp_path):
  rgb = np.zeros((20, 48, 64, 3), np.uint8)
  rgb[..., 0] = 200  # red
  frame = next(video.frames(encode(tmp_path / "red.mp4", rgb, codec="mpeg4")))
  assert frame[64, 85, 2] > 180 and frame[64, 85, 0] < 30  # red is the last channel: BGR
  marked = np.zeros((128, 171, 1), np.uint8)
  marked[8, 29], marked[119, 140], marked[7, 29], marked[8, 141] = 1, 2, 3, 4
  cropped = video.crop(marked)
  assert cropped.shape == (112, 112, 1)
  assert cropped[0, 0, 0] == 1 and cropped[-1, -1, 0] == 2 and cropped.sum() == 3


def _opencv_linear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """OpenCV's INTER_LINEAR, pixel by pixel, as its documentation and resize.cpp state."""
  def taps(n_in, n_out, i):
    fx = (i + 0.5) * n_in / n_out - 0.5
    sx = int(np.floor(fx))
    fx -= sx
    if sx < 0:
      return 0, 0, 0.0
    if sx >= n_in - 1:
      return n_in - 1, n_in - 1, 0.0
    return sx, sx + 1, fx
  out = np.zeros((out_h, out_w, image.shape[2]))
  for y in range(out_h):
    y0, y1, fy = taps(image.shape[0], out_h, y)
    for x in range(out_w):
      x0, x1, fx = taps(image.shape[1], out_w, x)
      out[y, x] = ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1])
                   + fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))
  return np.floor(out + 0.5).astype(np.uint8)


@pytest.mark.parametrize("shape, size", [((9, 13), (4, 6)), ((3, 5), (7, 11)),
                                         ((48, 64), (128, 171))])
def test_resize_is_opencvs_inter_linear(shape, size):
  image = np.random.default_rng(0).integers(0, 256, (*shape, 3)).astype(np.uint8)
  ours = video.resize_bilinear(image, size).astype(int)
  diff = np.abs(ours - _opencv_linear(image, *size))
  # Float32 against float64 arithmetic: a value on a .5 tie may round the other way.
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_unreadable_and_missing_videos_are_named(tmp_path):
  (tmp_path / "broken.mp4").write_bytes(b"not a video" * 20)
  with pytest.raises(ValueError, match=r"video .*broken\.mp4 is unreadable: Invalid data"):
    video.probe(str(tmp_path / "broken.mp4"))
  with pytest.raises(ValueError, match=r"video .*gone\.mp4 does not exist"):
    video.probe(str(tmp_path / "gone.mp4"))


def test_videos_are_found_in_directories_and_ids_must_differ(tmp_path):
  for name in ("b.mp4", "a.webm", "notes.txt", "v_c.mkv"):
    (tmp_path / name).write_bytes(b"x")
  found = video.find_videos([str(tmp_path)])
  assert [os.path.basename(p) for p in found] == ["a.webm", "b.mp4", "v_c.mkv"]
  assert [video.video_id(p) for p in found] == ["a", "b", "c"]
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "c.avi").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"v_c\.mkv and .*c\.avi have the same id 'c'"):
    video.find_videos([str(tmp_path), str(tmp_path / "sub" / "c.avi")])
  with pytest.raises(ValueError, match="--videos: .*nothing does not exist"):
    video.find_videos([str(tmp_path / "nothing")])
  assert video.frame_range(25, 0.2, 1.4) == (5, 35) and video.frame_range(30, 0, None) == (0, None)


def test_the_output_directory_resumes_from_parts_and_refuses_other_extractors(tmp_path):
  settings = {"format": "vreloc_jax.features", "weights": {"sha256": "a"}, "software": {"jax": 1}}
  out = store.OutputDir(str(tmp_path / "out"), settings)
  assert out.done() == set() and not (tmp_path / "out").exists()  # Nothing written yet.
  rows = np.arange(12, dtype=np.float32).reshape(3, 4)
  out.save("x", rows, {"n_frames": 33, "n_feat": 2, "rows": 3})
  out.publish()
  out.save("y", rows[:1], {"n_frames": 16, "n_feat": 1, "rows": 1})  # A run stopped here.
  again = store.OutputDir(str(tmp_path / "out"), {**settings, "software": {"jax": 2}})
  assert again.done() == {"x", "y"}
  assert again.publish() == 2 and sorted(os.listdir(tmp_path / "out")) == [
      "extractor.json", "length.json", "sub_activitynet_v1-3.c3d.hdf5"]
  from vreloc_jax.data import features  # pylint: disable=g-import-not-at-top
  source = features.open_features(features.find_features(str(tmp_path / "out")))
  np.testing.assert_array_equal(source.video("x"), rows[::2])  # Every second row: 16 frames.
  assert source.source.num_features("y") == 1
  with pytest.raises(ValueError, match=r"holds features of another extractor \(it differs in "
                     r"weights;"):
    store.OutputDir(str(tmp_path / "out"), {**settings, "weights": {"sha256": "b"}})
