"""The real-recordings benchmark: format, class split, streams, determinism, cache."""

from __future__ import annotations

import collections
import filecmp
import hashlib
import json
import os
import sys

import numpy as np
import pytest

from vreloc_jax.data import features as features_lib
from vreloc_jax.data import pairs as pairs_lib
from vreloc_jax.data import recordings
from vreloc_jax.data import splits as splits_lib


def _entries(root: str) -> dict[str, list[splits_lib.Entry]]:
  return {s: splits_lib.load_split(splits_lib.split_path(root, s)) for s in splits_lib.SPLITS}


def test_source_as_shipped():
  instances, labels = recordings.SOURCES["japanese_vowels"].load()
  assert len(instances) == 640 and sorted(set(labels)) == [str(i) for i in range(1, 10)]
  assert {x.shape[1] for x in instances} == {12}
  assert min(len(x) for x in instances) == 7 and max(len(x) for x in instances) == 29


def test_source_ships_with_the_package(monkeypatch):
  """The utterances come from the package's own gzipped .ts files: sktime is never imported."""
  recordings._japanese_vowels.cache_clear()
  monkeypatch.setitem(sys.modules, "sktime", None)  # `import sktime` would raise ImportError.
  try:
    instances, labels = recordings.SOURCES["japanese_vowels"].load()
  finally:
    recordings._japanese_vowels.cache_clear()
  assert len(instances) == 640 and labels[0] == "1" and instances[0].dtype == np.float64
  assert instances[0].shape == (20, 12) and instances[0][0, 0] == 1.860936  # The file's first.
  assert instances[0][19, 1] == -0.63835  # Series are the columns: [L, C].
  with pytest.raises(ValueError, match="x.ts, line 3: expected 2 series of one length"):
    recordings.read_ts("@dimensions 2\n@data\n1,2:3:1\n", "x.ts")


# The SHA-256 of the JSON files of the seed-0 build, as the sktime-read build made them.
VOWELS_SHA256 = {
    "train.json": "14a57defd8f54b993e3ad595cb6985b03b0c7929a46737ce926ec86107319bdd",
    "val.json": "79d2441b4f4ac887484b920055650c4edc4c34653ca3f2a9dd090001c37f7d8d",
    "test.json": "b8e4a719270ca1b5caa41b6b1433f1f727deff805cda5aac163c882b73f0922c",
    "length.json": "a2a8194d5ac67451f65d0f1f716c7520ba5edff503d92574374ecb4219581746",
    recordings.MANIFEST_NAME: "c8131e6f4b33cd592c5100d22ac2c03ab421d5009e854cceb6b54ea8ad4446cd",
}


def test_build_is_the_one_published(vowels):
  for name, digest in VOWELS_SHA256.items():
    with open(os.path.join(vowels, name), "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == digest, name


def test_classes_disjoint_and_counts(vowels):
  entries = _entries(vowels)
  labels = {s: {e.label for e in es} for s, es in entries.items()}
  assert [len(labels[s]) for s in splits_lib.SPLITS] == [5, 2, 2]
  assert not (labels["train"] & labels["val"] or labels["train"] & labels["test"]
              or labels["val"] & labels["test"])
  assert sum(len(es) for es in entries.values()) == 640  # One entry per utterance.
  with open(os.path.join(vowels, recordings.MANIFEST_NAME)) as f:
    manifest = json.load(f)
  assert manifest["source"] == "japanese_vowels" and "CC BY 4.0" in manifest["licence"]


def test_streams_hold_the_target_among_other_classes(vowels):
  """Every stream's target is the utterance of its label; no class twice in a stream."""
  instances, labels = recordings.SOURCES["japanese_vowels"].load()
  classes = recordings.split_classes(labels, (5, 2, 2), seed=0)
  streams = recordings.layout(labels, classes, seed=0, prefix="japanesevowels")
  by_id = {s.video_id: s for s in streams}
  class_names = sorted(set(labels.tolist()))
  store = features_lib.open_features(os.path.join(vowels, recordings.HDF5_NAME))
  mean, std = recordings._standardizer(instances, labels, classes["train"])
  for split, es in _entries(vowels).items():
    pool = set(classes["train"]) if split == "train" else set(classes["val"] + classes["test"])
    for e in es:
      stream = by_id[e.video_id]
      stream_classes = [labels[i] for i in stream.instances]
      assert len(set(stream_classes)) == len(stream_classes)  # No "odd one out".
      assert set(stream_classes) <= pool
      assert 2 <= len(stream.instances) <= 4
      target = stream.instances[stream.target]
      assert class_names[e.label] == labels[target] and labels[target] in classes[split]
      s, t = e.location[0] + e.segment[0], e.location[0] + e.segment[1]
      np.testing.assert_allclose(store.window(e.video_id, s, t), (instances[target] - mean) / std,
                                 rtol=1e-5, atol=1e-5)
      assert e.window_length == store.source.num_features(e.video_id)


def test_every_entry_gets_an_evaluation_pair(vowels):
  for split in ("val", "test"):
    entries = _entries(vowels)[split]
    assert len(pairs_lib.eval_pairs(entries)) == len(entries)


def test_standardized_on_training_classes(vowels):
  entries = _entries(vowels)["train"]
  store = features_lib.open_features(os.path.join(vowels, recordings.HDF5_NAME))
  targets = np.concatenate([store.window(e.video_id, *np.add(e.location[0], e.segment))
                            for e in entries])  # Each training utterance once.
  np.testing.assert_allclose(targets.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(targets.std(axis=0), 1.0, atol=1e-4)


def test_deterministic_and_cached(vowels, tmp_path):
  again = str(tmp_path / "again")
  assert not recordings.build(again)["cached"]
  for name in ("train.json", "val.json", "test.json", "length.json", recordings.MANIFEST_NAME):
    assert filecmp.cmp(os.path.join(vowels, name), os.path.join(again, name), shallow=False)
  assert recordings.build(again)["cached"]
  other = str(tmp_path / "seed1")
  recordings.build(other, seed=1)
  with open(os.path.join(other, "test.json")) as f, open(os.path.join(vowels, "test.json")) as g:
    assert json.load(f) != json.load(g)
  with pytest.raises(ValueError, match="already holds something other"):
    recordings.build(other, seed=0)
  assert collections.Counter(os.listdir(tmp_path)) == collections.Counter(["again", "seed1"])


def test_bad_source(tmp_path):
  with pytest.raises(ValueError, match="unknown source 'nope'"):
    recordings.build(str(tmp_path / "x"), source="nope")


# ---------------------------------------------------------------------------
# The second source: smartwatch shoulder exercises (seglearn).
# ---------------------------------------------------------------------------

SHOULDER = recordings.SOURCES["shoulder_exercises"]


@pytest.fixture(scope="module")
def shoulder(tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("recordings") / "shoulder")
  assert not recordings.build(out, source="shoulder_exercises")["cached"]
  return out


def test_shoulder_source_as_shipped():
  instances, labels = SHOULDER.load()
  sessions = SHOULDER.sessions()
  assert len(instances) == len(labels) == len(sessions) == 140 * recordings.WATCH_BOUTS
  assert {x.shape[1] for x in instances} == {60}  # 10 samples (1 s at 10 Hz) x 6 channels.
  lengths = [len(x) for x in instances]
  # The benchmark's segments are 1-32 features: every query fits the default query bucket.
  assert min(lengths) >= recordings.WATCH_MIN_BOUT and max(lengths) <= recordings.WATCH_MAX_BOUT
  assert recordings.WATCH_MAX_BOUT == 32
  names = sorted(set(labels.tolist()))
  assert len(names) == 14 and collections.Counter(labels.tolist()) == {c: 30 for c in names}
  assert {SHOULDER.class_group(c) for c in names} == {
      "PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"}
  # Every subject recorded every class: a session holds every distractor a stream may need.
  assert collections.Counter(zip(sessions.tolist(), labels.tolist())) == {
      (s, c): recordings.WATCH_BOUTS for s in range(1, 11) for c in names}


def test_shoulder_bouts_tile_the_recording():
  x = np.random.default_rng(0).normal(size=(1000, 6))
  steps = recordings._motion_steps(x)
  assert steps.shape == (20, 60)
  # A constant (gravity) is gone; a step is the block means of the motion, sample-major.
  np.testing.assert_allclose(recordings._motion_steps(x + [0.0, 9.8, 0, 0, 0, 0]), steps,
                             atol=1e-9)
  motion = x - recordings._moving_mean(x, recordings.WATCH_SLOW)
  np.testing.assert_allclose(steps[3].reshape(10, 6), motion[150:200].reshape(10, 5, 6).mean(1))
  for n in (12, 18, 52):
    bounds = recordings._bouts(n, recording=7)
    assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == recordings.WATCH_BOUTS + 1
    assert np.all(np.diff(bounds) >= recordings.WATCH_MIN_BOUT)
    assert np.all(np.diff(bounds) <= recordings.WATCH_MAX_BOUT)
  with pytest.raises(ValueError, match="too short"):
    recordings._bouts(11, recording=0)
  with pytest.raises(ValueError, match="too long"):
    recordings._bouts(3 * recordings.WATCH_MAX_BOUT + 1, recording=0)


def test_shoulder_class_split(shoulder):
  entries = _entries(shoulder)
  _, labels = SHOULDER.load()
  names = sorted(set(labels.tolist()))
  split_classes = {s: {names[e.label] for e in es} for s, es in entries.items()}
  assert [len(split_classes[s]) for s in splits_lib.SPLITS] == [6, 4, 4]
  groups = {s: {SHOULDER.class_group(c) for c in cs} for s, cs in split_classes.items()}
  assert [len(groups[s]) for s in splits_lib.SPLITS] == [3, 2, 2]  # Both arms together.
  assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"]
              or groups["val"] & groups["test"])  # Val and test exercises unseen in training.
  assert sum(len(es) for es in entries.values()) == len(labels)  # One entry per bout.
  with open(os.path.join(shoulder, recordings.MANIFEST_NAME)) as f:
    manifest = json.load(f)
  assert manifest["source"] == "shoulder_exercises" and "BSD-3-Clause" in manifest["licence"]
  with pytest.raises(ValueError, match="do not fill"):
    recordings.split_classes(labels, (5, 5, 4), seed=0, class_group=SHOULDER.class_group)


def test_shoulder_streams(shoulder):
  """Target = the entry's bout; 4-6 bouts of distinct classes, all of the target's subject."""
  instances, labels = SHOULDER.load()
  sessions = SHOULDER.sessions()
  classes = recordings.split_classes(labels, SHOULDER.class_split, 0, SHOULDER.class_group)
  streams = recordings.layout(labels, classes, seed=0, prefix="shoulderexercises",
                              min_instances=4, max_instances=6, sessions=sessions)
  by_id = {s.video_id: s for s in streams}
  names = sorted(set(labels.tolist()))
  store = features_lib.open_features(os.path.join(shoulder, recordings.HDF5_NAME))
  mean, std = recordings._standardizer(instances, labels, classes["train"])
  sizes = collections.Counter()
  for split, es in _entries(shoulder).items():
    pool = set(classes["train"]) if split == "train" else set(classes["val"] + classes["test"])
    for e in es:
      stream = by_id[e.video_id]
      stream_classes = [labels[i] for i in stream.instances]
      assert len(set(stream_classes)) == len(stream_classes) and set(stream_classes) <= pool
      assert len({sessions[i] for i in stream.instances}) == 1  # One subject's session.
      sizes[len(stream.instances)] += 1
      target = stream.instances[stream.target]
      assert names[e.label] == labels[target] and labels[target] in classes[split]
      lengths = [len(instances[i]) for i in stream.instances]
      assert e.location == (0, sum(lengths)) == (0, store.source.num_features(e.video_id))
      assert e.segment == (sum(lengths[:stream.target]), sum(lengths[:stream.target + 1]))
      np.testing.assert_allclose(store.window(e.video_id, *e.query_span),
                                 (instances[target] - mean) / std, rtol=1e-5, atol=1e-5)
  assert set(sizes) == {4, 5, 6}


def test_shoulder_deterministic(shoulder, tmp_path):
  again = str(tmp_path / "again")
  recordings.build(again, source="shoulder_exercises")
  for name in sorted(os.listdir(shoulder)):
    if not name.endswith("_pairs_seed0.json"):
      assert filecmp.cmp(os.path.join(shoulder, name), os.path.join(again, name), shallow=False)
  assert recordings.build(again, source="shoulder_exercises")["cached"]
  other = str(tmp_path / "seed1")
  recordings.build(other, source="shoulder_exercises", seed=1)
  with open(os.path.join(other, "test.json")) as f, open(os.path.join(shoulder, "test.json")) as g:
    assert json.load(f) != json.load(g)
  with pytest.raises(ValueError, match="already holds something other"):
    recordings.build(again)  # Japanese vowels, not this.


def test_shoulder_eval_pairs(shoulder):
  for split in ("val", "test"):
    entries = _entries(shoulder)[split]
    assert len(pairs_lib.eval_pairs(entries)) == len(entries) == 120


def test_shoulder_needs_seglearn(monkeypatch):
  recordings._shoulder_exercises.cache_clear()
  monkeypatch.setattr(recordings.importlib.util, "find_spec", lambda name: None)
  try:
    with pytest.raises(ValueError, match="'seglearn' package, which is not installed"):
      SHOULDER.load()
  finally:
    monkeypatch.undo()
    recordings._shoulder_exercises.cache_clear()
