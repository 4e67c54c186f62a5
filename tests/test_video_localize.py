"""Video files in, a segment out: features → a trained model → localize, by the command lines.

Two short videos encoded here (and a broken one), the extractor with random weights and a
random PCA (``--weights=random --pca=random``: the real network's shapes, 500-d features),
and a one-step model trained on the tiny benchmark with 500-d features, exported. Each
command runs as a user runs it, in a process of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, subprocess_env
from tests.test_bad_inputs import LOG_LINE, assert_one_line_error
from tests.test_video import encode
from vreloc_jax.data import features

RANDOM = ("--weights=random", "--pca=random", "--clip_batch=1")
_TRAIN = ("import sys; from tests.conftest import make_benchmark; from tests.test_export import "
          "tiny_config; from vreloc_jax import train; "
          "train.train_and_evaluate(tiny_config(make_benchmark(sys.argv[1], seed=5, "
          "feature_dim=500).root), sys.argv[2])")


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=600)


def _frames(n: int, seed: int) -> np.ndarray:
  """A moving bright bar on a noisy background, 48 × 64."""
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 80, (n, 48, 64, 3)).astype(np.uint8)
  for i in range(n):
    frames[i, :, (2 * i) % 56:(2 * i) % 56 + 8] = 230
  return frames


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> types.SimpleNamespace:
  """The videos, the extractor's first run on them, and an exported 500-d model."""
  root = tmp_path_factory.mktemp("video_localize")
  videos = root / "videos"
  videos.mkdir()
  query = encode(videos / "query.mp4", _frames(32, 0))  # 3 rows, 2 steps
  reference = encode(videos / "v_reference.mp4", _frames(48, 1), fps=24)  # 5 rows, 3 steps
  (videos / "broken.mp4").write_bytes(b"\x00not a video" * 50)
  out = root / "features"
  first = _run("-m", "vreloc_jax.features", f"--videos={videos}", f"--out={out}", *RANDOM)
  done = _run("-c", _TRAIN, str(root / "bench"), str(root / "work"))
  assert done.returncode == 0, done.stderr[-3000:]
  model = root / "model"
  done = _run("-m", "vreloc_jax.export", f"--workdir={root / 'work'}", f"--output={model}",
              "--platforms=cpu")
  assert done.returncode == 0, done.stderr[-3000:]
  return types.SimpleNamespace(root=root, videos=videos, query=query, reference=reference,
                               out=out, first=first, model=str(model))


def test_the_extractor_writes_the_benchmarks_layout_and_names_the_broken_video(place):
  done = place.first
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  broken = place.videos / "broken.mp4"
  assert f"skipped: video {broken} is unreadable: Invalid data found when processing input" in lines
  assert lines[-1] == (f"vreloc_jax.features: error: 1 of 3 videos failed: video {broken} is "
                       "unreadable: Invalid data found when processing input")
  # Besides: absl's log lines, and a progress line every 30 s on a slow machine.
  assert all(LOG_LINE.match(line) or line.startswith(("[#", "[.", "skipped: "))
             for line in lines[:-1]), lines
  assert "3 videos, 0 already done; features: C3D fc7, random weights" in done.stdout
  assert "3 videos: 2 extracted, 0 already done (skipped), 1 failed; 8 clips" in done.stdout
  assert sorted(os.listdir(place.out)) == ["extractor.json", "length.json",
                                           "sub_activitynet_v1-3.c3d.hdf5"]
  lengths = json.loads((place.out / "length.json").read_text())
  assert {k: (v["n_frames"], v["n_feat"], v["rows"], v["fps"]) for k, v in lengths.items()} == {
      "query": (32, 2, 3, 25.0), "reference": (48, 3, 5, 24.0)}
  settings = json.loads((place.out / "extractor.json").read_text())
  assert settings["weights"]["random_seed"] == 0
  assert "smoke tests only" in settings["weights"]["note"]
  assert settings["feature_dim"] == 500 and settings["clips"]["crop_offset_hw"] == [8, 29]
  store = features.open_features(features.find_features(str(place.out)))  # As every command.
  assert store.video("query").shape == (2, 500) and store.video("reference").shape == (3, 500)
  assert np.isfinite(store.video("reference")).all() and store.video("reference").std() > 0


def test_a_rerun_skips_the_videos_already_done(place):
  done = _run("-m", "vreloc_jax.features", f"--videos={place.query},{place.reference}",
              f"--out={place.out}", *RANDOM)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "2 videos: 0 extracted, 2 already done (skipped), 0 failed" in done.stdout


def test_localize_on_video_files_prints_seconds_and_frames_and_plots(place):
  figure = place.root / "pair.png"
  done = _run("-m", "vreloc_jax.localize", f"--model={place.model}",
              f"--query={place.query}:0.1-1.2", f"--reference={place.reference}", *RANDOM,
              f"--plot={figure}")
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  # The query's range [0.1 s, 1.2 s) at 25 fps: frames [3, 30), whole steps [0, 2).
  assert lines[0] == "query v_query:0-2 in reference v_reference:0-3:"
  segment = lines[1]
  assert segment.startswith("  segment [") and " frames [" in segment and " seconds [" in segment
  start, end = (int(v) for v in segment.split("[")[1].split(")")[0].split(","))
  assert 0 <= start < end <= 3
  assert f"frames [{16 * start}, {16 * end}), seconds [{16 * start / 24:.2f}, " \
         f"{16 * end / 24:.2f})" in segment  # The reference's 24 fps.
  assert lines[2] == (f"  videos: query = {place.query} (25 fps), "
                      f"reference = {place.reference} (24 fps)")
  assert lines[3].startswith("  features: C3D fc7, random weights (seed 0; smoke test only), "
                             "random PCA (seed 0)")
  assert figure.stat().st_size > 0


def test_localize_records_the_extractor_and_agrees_with_the_feature_file(place):
  pairs = place.root / "pairs.json"
  pairs.write_text(json.dumps([
      {"query": place.query, "reference": place.reference},
      {"query": "query:0-2", "reference": "v_reference", "fps": 24}]))
  out = place.root / "pairs.jsonl"
  done = _run("-m", "vreloc_jax.localize", f"--model={place.model}", f"--pairs={pairs}",
              f"--output={out}", f"--features={place.out / features.DEFAULT_HDF5_NAME}",
              *RANDOM)
  assert done.returncode == 0, done.stderr[-3000:]
  from_videos, from_file = (json.loads(line) for line in out.read_text().splitlines())
  # The video path computes the steps the extractor's file holds in its even rows.
  for key in ("query", "reference", "segment", "frames", "seconds", "score"):
    assert from_videos[key] == from_file[key], key
  assert from_videos["extractor"]["weights"]["random_seed"] == 0
  assert from_videos["extractor"]["pca"]["dims"] == 500
  assert from_videos["videos"]["reference"] == {"file": os.path.abspath(place.reference),
                                                "fps": 24.0}
  assert "extractor" not in from_file


@pytest.mark.parametrize("args, message", [
    (("--weights=random",), r"the model takes 500-d features but the extractor gives 4096-d "
                            r"\(C3D fc7, .*no PCA.*\): pass --pca=PCA_activitynet_v1-3\.hdf5"),
    ((), r"pass --weights: the Sports-1M C3D weights"),
    (("--weights=random", "--pca=random", "--reference=reference"),
     r"--reference 'reference' is not a video file, but the other one is"),
])
def test_localize_refuses_what_does_not_fit_in_one_line(place, args, message):
  reference = [a for a in args if a.startswith("--reference")] or [f"--reference={place.reference}"]
  done = _run("-m", "vreloc_jax.localize", f"--model={place.model}", f"--query={place.query}",
              *reference, *[a for a in args if not a.startswith("--reference")])
  assert_one_line_error(done, "localize", message)
