"""Tests of vreloc_jax.data: split files, features, pairs and batching."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from vreloc_jax import buckets
from vreloc_jax.data import batching, features, pairs, splits
from vreloc_jax.data.splits import Entry
from tests.conftest import REAL_DATA_DIR

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
REAL_DATA = REAL_DATA_DIR
REAL_COUNTS = {"train": 7593, "val": 829, "test": 978}
needs_real_data = pytest.mark.skipif(not (REAL_DATA / "test.json").is_file(),
                                     reason="real benchmark split files absent")

QUERY_BUCKETS = (4, 8, 16)
REFERENCE_BUCKETS = (8, 16, 32)


def load(bench, split: str) -> list[Entry]:
  return splits.load_split(bench.split_files[split])


def open_store(bench, layout: str, expected_dim: int | None = None) -> features.FeatureStore:
  return features.open_features(bench.hdf5 if layout == "hdf5" else bench.npy_dir, expected_dim)


def write_json(path, obj) -> str:
  with open(path, "w") as f:
    json.dump(obj, f)
  return str(path)


def entry(index: int, video_id: str, label: int, location, segment) -> Entry:
  return Entry(index=index, video_id=video_id, label=label, location=tuple(location),
               segment=tuple(segment))


# ---------------------------------------------------------------------------
# Split files
# ---------------------------------------------------------------------------

GOOD = {"id": "ab_-12", "label": 7, "location": [10, 30], "groundtruth": [2, 5]}


def test_load_split_reads_every_field(bench):
  raw = bench.raw_splits["train"]
  entries = load(bench, "train")
  assert len(entries) == len(raw)
  for i, (e, r) in enumerate(zip(entries, raw)):
    assert (e.index, e.video_id, e.label) == (i, r["id"], r["label"])
    assert e.location == tuple(r["location"]) and e.segment == tuple(r["groundtruth"])
    (a, b), (s, t) = r["location"], r["groundtruth"]
    assert e.window_length == b - a and e.segment_length == t - s
    assert e.query_span == (a + s, a + t)
    assert f"entry {i}" in e.describe() and f"v_{r['id']}" in e.describe()


@pytest.mark.parametrize("patch, message", [
    ({"id": None}, "missing field(s) id"),
    ({"label": None, "groundtruth": None}, "missing field(s) label, groundtruth"),
    ({"id": ""}, "'id' must be a non-empty string"),
    ({"id": 5}, "'id' must be a non-empty string"),
    ({"label": "7"}, "'label' must be an integer"),
    ({"label": 7.0}, "'label' must be an integer"),
    ({"label": True}, "'label' must be an integer"),
    ({"location": [10.0, 30]}, "'location' must be two integers"),
    ({"location": [10, 30, 40]}, "'location' must be two integers"),
    ({"location": "10-30"}, "'location' must be two integers"),
    ({"groundtruth": [2, "5"]}, "'groundtruth' must be two integers"),
    ({"groundtruth": [2, False]}, "'groundtruth' must be two integers"),
    ({"location": [10, 10]}, "window [10, 10) is empty or inverted"),
    ({"location": [30, 10]}, "window [30, 10) is empty or inverted"),
    ({"location": [-1, 30]}, "window [-1, 30) starts before 0"),
    ({"groundtruth": [3, 3]}, "segment [3, 3) is empty or inverted"),
    ({"groundtruth": [5, 2]}, "segment [5, 2) is empty or inverted"),
    ({"groundtruth": [15, 21]}, "segment [15, 21) lies outside its window of length 20"),
    ({"groundtruth": [-1, 3]}, "segment [-1, 3) lies outside its window of length 20"),
])
def test_load_split_rejects_bad_entries(tmp_path, patch, message):
  bad = {k: v for k, v in {**GOOD, **patch}.items() if v is not None or k not in patch}
  path = write_json(tmp_path / "test.json", [GOOD, bad])
  with pytest.raises(ValueError) as info:
    splits.load_split(path)
  text = str(info.value)
  assert message in text and path in text and "entry 1" in text
  if isinstance(bad.get("id"), str) and bad["id"]:
    assert "video v_ab_-12" in text


def test_load_split_rejects_non_object_entry(tmp_path):
  path = write_json(tmp_path / "val.json", [GOOD, [1, 2]])
  with pytest.raises(ValueError, match="entry 1: expected an object, got list"):
    splits.load_split(path)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "is unreadable"),
    (b"\xff\xfe\x00garbage\x80", "is unreadable"),
    (b"", "is unreadable"),
    (b'{"id": "x"}', "must hold a non-empty JSON list"),
    (b"[]", "must hold a non-empty JSON list"),
    (b'"entries"', "must hold a non-empty JSON list"),
])
def test_load_split_rejects_bad_files(tmp_path, content, message):
  path = tmp_path / "train.json"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=message) as info:
    splits.load_split(path)
  assert str(path) in str(info.value)


def test_load_split_missing_file(tmp_path):
  with pytest.raises(ValueError, match="does not exist") as info:
    splits.load_split(tmp_path / "nope.json")
  assert "nope.json" in str(info.value)


def test_split_path():
  assert splits.split_path("/d", "val") == os.path.join("/d", "val.json")
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    splits.split_path("/d", "dev")


def test_load_lengths_and_window_fit(bench, tmp_path):
  lengths = splits.load_lengths(os.path.join(bench.root, "length.json"))
  assert lengths == {vid: f.shape[0] for vid, f in bench.features.items()}
  for split in splits.SPLITS:
    splits.check_windows_fit(load(bench, split), lengths, split)  # all fit
  e = entry(3, "vid", 1, (5, 12), (0, 2))
  splits.check_windows_fit([e], {}, "x")  # unknown videos are not checked here
  with pytest.raises(ValueError, match=r"train.json: entry 3 \(video v_vid\): window \[5, 12\] "
                     r"ends past the video's 11 features"):
    splits.check_windows_fit([e], {"vid": 11}, "train.json")


@pytest.mark.parametrize("content, message", [
    ("[1]", "must hold a JSON object"),
    ("{bad", "is unreadable"),
    ('{"a": {"n_frames": 3}}', "video v_a has no positive 'n_feat'"),
    ('{"a": {"n_feat": 0}}', "video v_a has no positive 'n_feat'"),
    ('{"a": {"n_feat": 2.5}}', "video v_a has no positive 'n_feat'"),
    ('{"a": 7}', "video v_a has no positive 'n_feat'"),
])
def test_load_lengths_errors(tmp_path, content, message):
  path = tmp_path / "length.json"
  path.write_text(content)
  with pytest.raises(ValueError, match=message):
    splits.load_lengths(path)


@needs_real_data
def test_real_split_files():
  lengths = splits.load_lengths(REAL_DATA / "length.json")
  labels = {}
  for split, count in REAL_COUNTS.items():
    entries = splits.load_split(REAL_DATA / f"{split}.json")
    assert len(entries) == count
    assert all(1 <= e.segment_length <= 32 and e.window_length <= 300 for e in entries)
    splits.check_windows_fit(entries, lengths, split)
    labels[split] = {e.label for e in entries}
  assert [len(labels[s]) for s in ("train", "val", "test")] == [160, 20, 20]
  assert not (labels["train"] & labels["val"] or labels["train"] & labels["test"] or
              labels["val"] & labels["test"])


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


def test_both_layouts_give_identical_windows(bench):
  hdf5, npy = open_store(bench, "hdf5"), open_store(bench, "npy")
  for split in splits.SPLITS:
    for e in load(bench, split):
      for span in (e.location, e.query_span):
        expected = bench.features[e.video_id][span[0]:span[1]]
        from_hdf5, from_npy = hdf5.window(e.video_id, *span), npy.window(e.video_id, *span)
        assert from_hdf5.dtype == from_npy.dtype == np.float32
        assert from_hdf5.shape == (span[1] - span[0], 8)
        np.testing.assert_array_equal(from_hdf5, expected)
        np.testing.assert_array_equal(from_npy, expected)
  assert hdf5.feature_dim == npy.feature_dim == 8
  hdf5.close()
  hdf5.close()  # closing twice is harmless


def test_hdf5_reads_every_second_row_and_odd_row_counts(bench):
  store = open_store(bench, "hdf5")
  with h5py.File(bench.hdf5, "r") as f:
    rows = {vid: f[f"v_{vid}/c3d_features"][()] for vid in bench.features}
  parities = {r.shape[0] % 2 for r in rows.values()}
  assert parities == {0, 1}, "the fixture must hold both odd and even row counts"
  for vid, raw in rows.items():
    n = math.ceil(raw.shape[0] / 2)
    assert store.source.num_features(vid) == n == bench.features[vid].shape[0]
    np.testing.assert_array_equal(store.video(vid), raw[0::2])
    np.testing.assert_array_equal(store.window(vid, n - 1, n), raw[2 * (n - 1)][None])
    with pytest.raises(ValueError, match=rf"v_{vid}: window \[{n - 1}, {n + 1}\) is out of range "
                       rf"\(the video has {n} features\)"):
      store.window(vid, n - 1, n + 1)


def test_video_returns_all_features(bench, layout):
  store = open_store(bench, layout)
  for vid, feats in bench.features.items():
    np.testing.assert_array_equal(store.video(vid), feats)


def test_hdf5_decoy_rows_are_never_read(tmp_path):
  path = tmp_path / "f.hdf5"
  raw = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
  raw[1::2] = np.nan  # the rows between features: never used by the benchmark
  with h5py.File(path, "w") as f:
    f.create_dataset("v_a/c3d_features", data=raw)
  store = features.open_features(path)
  np.testing.assert_array_equal(store.video("a"), raw[0::2])
  np.testing.assert_array_equal(store.window("a", 1, 3), raw[[2, 4]])


def test_find_features_defaults(tmp_path, feature_writer):
  videos = {"a": np.ones((3, 4), np.float32)}
  with pytest.raises(ValueError) as info:
    features.find_features(str(tmp_path))
  for part in (str(tmp_path), features.DEFAULT_HDF5_NAME, "'feat/'", "--features"):
    assert part in str(info.value)
  (tmp_path / "feat").write_text("a file, not a directory")
  with pytest.raises(ValueError, match="no features found"):
    features.find_features(str(tmp_path))
  (tmp_path / "feat").unlink()
  npy_dir = feature_writer(tmp_path, videos, "npy")
  assert features.find_features(str(tmp_path)) == npy_dir == str(tmp_path / "feat")
  hdf5 = feature_writer(tmp_path, videos, "hdf5")
  assert hdf5 == str(tmp_path / "sub_activitynet_v1-3.c3d.hdf5")
  assert features.find_features(str(tmp_path)) == hdf5  # the HDF5 file wins
  store = features.open_features(features.find_features(str(tmp_path)))
  assert isinstance(store.source, features.Hdf5Source)
  np.testing.assert_array_equal(store.video("a"), videos["a"])


def test_open_features_by_form(tmp_path, feature_writer):
  with pytest.raises(ValueError, match="do not exist") as info:
    features.open_features(tmp_path / "missing.hdf5")
  assert "missing.hdf5" in str(info.value)
  (tmp_path / "junk.bin").write_bytes(b"not hdf5 at all" * 10)
  with pytest.raises(ValueError, match=r"junk.bin is not an HDF5 file"):
    features.open_features(tmp_path / "junk.bin")
  # An HDF5 file is recognised by its content whatever its name.
  path = feature_writer(tmp_path, {"a": np.ones((2, 3), np.float32)}, "hdf5", name="c3d.bin")
  assert isinstance(features.open_features(path).source, features.Hdf5Source)
  h5 = feature_writer(tmp_path, {"a": np.ones((2, 3), np.float32)}, "hdf5", name="c3d.h5")
  assert features.open_features(h5).window("a", 0, 2).shape == (2, 3)


def test_corrupt_hdf5(tmp_path, feature_writer):
  garbage = tmp_path / "garbage.hdf5"
  garbage.write_bytes(b"\x89 not an HDF5 superblock " * 200)
  store = features.open_features(garbage)  # opened lazily: the error comes on first read
  with pytest.raises(ValueError, match=r"feature file .*garbage.hdf5 is unreadable"):
    store.window("a", 0, 1)
  good = feature_writer(tmp_path, {"a": np.ones((500, 64), np.float32)}, "hdf5", name="good.hdf5")
  data = pathlib.Path(good).read_bytes()
  truncated = tmp_path / "truncated.hdf5"
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"truncated.hdf5 is unreadable"):
    features.open_features(truncated).window("a", 0, 10)


def test_hdf5_bad_video_nodes(tmp_path):
  path = tmp_path / "f.hdf5"
  with h5py.File(path, "w") as f:
    f.create_dataset("v_flat/c3d_features", data=np.zeros((4,), np.float32))
    f.create_dataset("v_other/pca", data=np.zeros((4, 2), np.float32))
  store = features.open_features(path)
  with pytest.raises(ValueError, match=r"video v_flat features must be 2-D, got shape \(4,\)"):
    store.window("flat", 0, 1)
  with pytest.raises(ValueError, match=r"video v_other has no dataset 'c3d_features'"):
    store.window("other", 0, 1)


def test_corrupt_npy(tmp_path):
  d = tmp_path / "feat"
  d.mkdir()
  (d / "v_garbage.npy").write_bytes(b"\x00garbage bytes\xff" * 20)
  np.save(d / "v_ok.npy", np.ones((10, 4), np.float32))
  (d / "v_short.npy").write_bytes((d / "v_ok.npy").read_bytes()[:-24])
  np.save(d / "v_objects.npy", np.array([{"x": 1}] * 3, dtype=object), allow_pickle=True)
  np.save(d / "v_flat.npy", np.zeros((10,), np.float32))
  np.save(d / "v_text.npy", np.full((3, 4), "a"))
  store = features.open_features(d)
  for vid in ("garbage", "short", "objects"):
    with pytest.raises(ValueError, match=rf"v_{vid}.npy: video v_{vid} is unreadable"):
      store.window(vid, 0, 1)
  with pytest.raises(ValueError, match=r"v_flat.npy: video v_flat features must be 2-D"):
    store.window("flat", 0, 1)
  with pytest.raises(ValueError, match=r"video v_text: features of dtype <U1 are not numeric"):
    store.window("text", 0, 1)
  assert store.window("ok", 0, 10).shape == (10, 4)


def test_missing_video(bench, layout):
  store = open_store(bench, layout)
  with pytest.raises(ValueError, match=r"video v_nope is missing") as info:
    store.window("nope", 0, 1)
  assert (bench.hdf5 if layout == "hdf5" else bench.npy_dir) in str(info.value)
  with pytest.raises(ValueError, match=r"video v_nope is missing"):
    store.preload([entry(0, "nope", 1, (0, 3), (0, 1))])


def test_expected_dim(bench, layout):
  vid = sorted(bench.features)[0]
  store = open_store(bench, layout, expected_dim=500)
  assert store.feature_dim == 500
  with pytest.raises(ValueError, match=rf"video v_{vid}: feature dimension 8, expected 500"):
    store.window(vid, 0, 2)
  assert open_store(bench, layout, expected_dim=8).window(vid, 0, 2).shape == (2, 8)


def test_inconsistent_dims_across_videos(tmp_path, feature_writer, layout):
  path = feature_writer(tmp_path, {"a": np.ones((5, 8), np.float32),
                                   "b": np.ones((5, 9), np.float32)}, layout)
  store = features.open_features(path)
  assert store.window("a", 0, 5).shape == (5, 8)
  with pytest.raises(ValueError, match=r"video v_b: feature dimension 9, expected 8") as info:
    store.window("b", 0, 5)
  assert path in str(info.value)


@pytest.mark.parametrize("span, message", [
    ((10, 14), r"window \[10, 14\) is out of range \(the video has 12 features\)"),
    ((12, 13), r"window \[12, 13\) is out of range \(the video has 12 features\)"),
    ((40, 45), r"window \[40, 45\) is out of range \(the video has 12 features\)"),
    ((5, 5), r"window \[5, 5\) is empty or inverted"),
    ((6, 2), r"window \[6, 2\) is empty or inverted"),
    ((-1, 3), r"window \[-1, 3\) starts before 0"),
])
def test_window_out_of_range(tmp_path, feature_writer, layout, span, message):
  path = feature_writer(tmp_path, {"vid": np.ones((12, 3), np.float32)}, layout)
  store = features.open_features(path)
  with pytest.raises(ValueError, match=rf"video v_vid: {message}"):
    store.window("vid", *span)
  store.preload([entry(0, "vid", 1, (2, 9), (0, 1))])  # the cache must not hide the error
  with pytest.raises(ValueError, match=rf"video v_vid: {message}"):
    store.window("vid", *span)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, feature_writer, layout, bad):
  feats = np.ones((10, 3), np.float32)
  feats[6, 1] = bad
  path = feature_writer(tmp_path, {"vid": feats}, layout)
  store = features.open_features(path)
  np.testing.assert_array_equal(store.window("vid", 0, 6), feats[:6])  # a clean window reads
  with pytest.raises(ValueError, match=r"video v_vid: non-finite feature values "
                     r"\(first at feature 6\)") as info:
    store.window("vid", 4, 8)
  assert path in str(info.value)
  with pytest.raises(ValueError, match="non-finite"):
    store.preload([entry(0, "vid", 1, (2, 10), (0, 1))])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float64_overflow_is_non_finite(tmp_path, feature_writer, layout):
  feats = np.ones((4, 3), np.float64)
  feats[2, 0] = 1e300  # finite in float64, inf in float32
  store = features.open_features(feature_writer(tmp_path, {"vid": feats}, layout))
  with pytest.raises(ValueError, match=r"first at feature 2"):
    store.window("vid", 0, 4)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int16])
def test_features_become_float32(tmp_path, feature_writer, layout, dtype):
  feats = np.arange(12).reshape(4, 3).astype(dtype)
  store = features.open_features(feature_writer(tmp_path, {"vid": feats}, layout))
  out = store.window("vid", 1, 3)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, feats[1:3].astype(np.float32))


class CountingSource:
  """Wraps a feature source and records every read."""

  def __init__(self, source):
    self.source, self.path, self.reads = source, source.path, []

  def num_features(self, video_id):
    return self.source.num_features(video_id)

  def read(self, video_id, start, end):
    self.reads.append((video_id, start, end))
    return self.source.read(video_id, start, end)

  def close(self):
    self.source.close()


def test_preload_caches_only_the_span_used(bench, layout):
  vids = sorted(bench.features)
  v0, v1 = vids[0], vids[1]
  feats0 = bench.features[v0]
  base = open_store(bench, layout)
  store = features.FeatureStore(CountingSource(base.source))
  assert store._cache == {}  # nothing read on opening
  store.preload([entry(0, v0, 1, (3, 10), (0, 2)), entry(1, v0, 1, (8, 15), (1, 3)),
                 entry(2, v1, 1, (0, 4), (0, 1))])
  assert sorted(store.source.reads) == [(v0, 3, 15), (v1, 0, 4)]  # one read per video
  assert set(store._cache) == {v0, v1}
  start, cached = store._cache[v0]
  assert start == 3 and cached.shape == (12, 8) and cached.dtype == np.float32
  np.testing.assert_array_equal(cached, feats0[3:15])
  assert store._cache[v1][0] == 0 and store._cache[v1][1].shape == (4, 8)
  # Windows inside the cached span are served without reading.
  store.source.reads.clear()
  for span in ((3, 15), (3, 4), (9, 12), (14, 15)):
    np.testing.assert_array_equal(store.window(v0, *span), feats0[span[0]:span[1]])
  assert store.source.reads == []
  # A window outside is read from disk and not cached.
  np.testing.assert_array_equal(store.window(v0, 2, 5), feats0[2:5])
  assert store.source.reads == [(v0, 2, 5)] and store._cache[v0][0] == 3
  # Preloading a covered span reads nothing; a new span extends the cache to the union.
  store.source.reads.clear()
  store.preload([entry(0, v0, 1, (4, 9), (0, 1))])
  assert store.source.reads == []
  store.preload([entry(0, v0, 1, (18, 21), (0, 1))])
  start, cached = store._cache[v0]
  assert (start, cached.shape[0]) == (3, 18)
  np.testing.assert_array_equal(cached, feats0[3:21])
  # Preloading validates: a window past the video's end is an error naming it.
  n = feats0.shape[0]
  with pytest.raises(ValueError, match=rf"video v_{v0}: window \[3, {n + 2}\) is out of range"):
    store.preload([entry(0, v0, 1, (n - 3, n + 2), (0, 1))])


# ---------------------------------------------------------------------------
# Evaluation pairs
# ---------------------------------------------------------------------------


def pair_indices(ps) -> list[tuple[int, int]]:
  return [(p.reference.index, p.query.index) for p in ps]


@pytest.mark.parametrize("split", splits.SPLITS)
def test_eval_pairs_rules(bench, split):
  entries = load(bench, split)
  ps = pairs.eval_pairs(entries, seed=0)
  assert [p.reference for p in ps] == entries  # every entry is a reference exactly once
  for p in ps:
    assert p.query in entries
    assert p.query.label == p.reference.label
    assert p.query.index != p.reference.index
    assert p.query.segment_length <= p.reference.window_length


@pytest.mark.parametrize("split", splits.SPLITS)
def test_eval_pairs_follow_the_documented_rule(bench, split):
  entries = load(bench, split)
  for seed in (0, 7):
    for p in pairs.eval_pairs(entries, seed):
      ref = p.reference
      candidates = [e for e in entries if e.label == ref.label and e.index != ref.index and
                    e.segment_length <= ref.window_length]
      rng = np.random.default_rng((seed, ref.index))
      assert p.query == candidates[rng.integers(len(candidates))]


def test_eval_pairs_deterministic_and_seeded(bench):
  entries = {s: load(bench, s) for s in splits.SPLITS}
  for s in splits.SPLITS:
    assert pairs.eval_pairs(entries[s], 0) == pairs.eval_pairs(entries[s], 0)
  assert any(pair_indices(pairs.eval_pairs(entries[s], 0)) !=
             pair_indices(pairs.eval_pairs(entries[s], 1)) for s in splits.SPLITS)


def test_eval_pairs_leave_out_entries_without_a_fitting_query():
  entries = [
      entry(0, "a", 1, (0, 10), (0, 8)),
      entry(1, "b", 1, (0, 5), (0, 2)),   # its only candidate (entry 0) has 8 steps > 5
      entry(2, "c", 2, (0, 9), (1, 3)),   # alone in its class
      entry(3, "d", 1, (0, 20), (2, 9)),
  ]
  ps = pairs.eval_pairs(entries)
  assert [p.reference.index for p in ps] == [0, 3]
  assert all(p.query.index != p.reference.index for p in ps)


SUBPROCESS_SCRIPT = """
import json, sys
from vreloc_jax.data import pairs, splits
entries = splits.load_split(sys.argv[1])
query, reference = pairs.weak_split(entries, seed=3)
print(json.dumps({
    "pairs": [[p.reference.index, p.query.index] for p in pairs.eval_pairs(entries, 0)],
    "weak": [[q.index for q in query], [[w.video_id, list(w.location)] for w in reference]],
}))
"""


def test_pairs_identical_across_processes(bench):
  entries = load(bench, "train")
  query, reference = pairs.weak_split(entries, seed=3)
  expected = {"pairs": [list(t) for t in pair_indices(pairs.eval_pairs(entries, 0))],
              "weak": [[q.index for q in query],
                       [[w.video_id, list(w.location)] for w in reference]]}
  outputs = []
  for hash_seed in ("1", "2"):  # set/dict order must not matter
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONHASHSEED=hash_seed)
    out = subprocess.run([sys.executable, "-c", SUBPROCESS_SCRIPT, bench.split_files["train"]],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    outputs.append(json.loads(out.stdout))
  assert outputs[0] == outputs[1] == expected


@pytest.fixture
def split_copy(bench, tmp_path):
  """The tiny test split copied into a fresh directory (pair files get written beside it)."""
  path = tmp_path / "data" / "test.json"
  path.parent.mkdir()
  shutil.copy(bench.split_files["test"], path)
  return str(path)


def test_pair_file_written_once_and_reused(split_copy):
  entries = splits.load_split(split_copy)
  ps, path = pairs.load_eval_pairs(split_copy, entries, "test", seed=0)
  assert path == os.path.join(os.path.dirname(split_copy), "test_pairs_seed0.json")
  assert pair_indices(ps) == pair_indices(pairs.eval_pairs(entries, 0))
  assert sorted(os.listdir(os.path.dirname(split_copy))) == ["test.json", "test_pairs_seed0.json"]
  with open(path) as f:
    raw = json.load(f)
  assert raw["format"] == pairs.PAIRS_FORMAT and raw["split"] == "test" and raw["seed"] == 0
  assert raw["split_sha256"] == pairs.file_sha256(split_copy) and raw["rule"] == pairs.PAIR_RULE
  assert raw["pairs"][0] == {"reference": ps[0].reference.index,
                             "reference_id": ps[0].reference.video_id,
                             "query": ps[0].query.index, "query_id": ps[0].query.video_id}
  os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a rewrite would change this
  again, path2 = pairs.load_eval_pairs(split_copy, entries, "test", seed=0)
  assert path2 == path and again == ps
  assert os.stat(path).st_mtime_ns == 1_000_000_000
  # Another seed: another file, other pairs.
  ps1, path1 = pairs.load_eval_pairs(split_copy, entries, "test", seed=1)
  assert path1.endswith("test_pairs_seed1.json") and path1 != path
  assert pair_indices(ps1) == pair_indices(pairs.eval_pairs(entries, 1))
  assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp")]


def test_explicit_pair_file(split_copy, tmp_path):
  entries = splits.load_split(split_copy)
  target = str(tmp_path / "elsewhere" / "my_pairs.json")
  ps, path = pairs.load_eval_pairs(split_copy, entries, "test", pair_file=target)
  assert path == target and os.path.isfile(target)
  assert pairs.load_eval_pairs(split_copy, entries, "test", pair_file=target)[0] == ps


def test_pair_file_of_another_split_raises(bench, split_copy, tmp_path):
  entries = splits.load_split(split_copy)
  _, path = pairs.load_eval_pairs(split_copy, entries, "test")
  # The split file's content changes under its pair file: never silently redrawn.
  shutil.copy(bench.split_files["val"], split_copy)
  with pytest.raises(ValueError, match=r"was not drawn from .*test.json"):
    pairs.load_eval_pairs(split_copy, splits.load_split(split_copy), "test")
  # A pair file drawn from another split, passed explicitly.
  val_dir = tmp_path / "val"
  val_dir.mkdir()
  val_file = str(val_dir / "val.json")
  shutil.copy(bench.split_files["val"], val_file)
  _, val_pairs = pairs.load_eval_pairs(val_file, splits.load_split(val_file), "val")
  test_file = bench.split_files["test"]
  with pytest.raises(ValueError, match="was not drawn from") as info:
    pairs.load_eval_pairs(test_file, load(bench, "test"), "test", pair_file=val_pairs)
  assert val_pairs in str(info.value)


def _edit_pair_file(split_copy, edit):
  entries = splits.load_split(split_copy)
  _, path = pairs.load_eval_pairs(split_copy, entries, "test")
  with open(path) as f:
    raw = json.load(f)
  edited = edit(raw)
  if isinstance(edited, bytes):
    pathlib.Path(path).write_bytes(edited)
  else:
    write_json(path, edited)
  return entries, path


def _set_pair(k, **fields):
  def edit(raw):
    raw["pairs"][k].update(fields)
    return raw
  return edit


@pytest.mark.parametrize("edit, message", [
    (lambda raw: b"{truncated", "is unreadable"),
    (lambda raw: b"\xff\xfe\x80", "is unreadable"),
    (lambda raw: [raw], "was not drawn from"),
    (lambda raw: {**raw, "format": "other/1"}, "was not drawn from"),
    (lambda raw: {k: v for k, v in raw.items() if k != "pairs"}, "has no list of 'pairs'"),
    (lambda raw: {**raw, "pairs": {"0": 1}}, "has no list of 'pairs'"),
    (_set_pair(0, reference=-1), "pair 0 is malformed"),
    (_set_pair(1, query=10_000), "pair 1 is malformed"),
    (_set_pair(1, query="0"), "pair 1 is malformed"),
    (_set_pair(1, reference=True), "pair 1 is malformed"),
    (lambda raw: {**raw, "pairs": [7]}, "pair 0 is malformed"),
    (_set_pair(2, reference_id="someone-else"), "pair 2 does not fit its split"),
])
def test_malformed_pair_file(split_copy, edit, message):
  entries, path = _edit_pair_file(split_copy, edit)
  with pytest.raises(ValueError, match=message) as info:
    pairs.load_eval_pairs(split_copy, entries, "test")
  assert path in str(info.value)


def test_pair_file_with_wrong_class_or_self_pair(split_copy):
  entries = splits.load_split(split_copy)
  other = next(e for e in entries if e.label != entries[0].label)

  def cross_class(raw):
    raw["pairs"][0].update(query=other.index, query_id=other.video_id)
    return raw

  def self_pair(raw):
    raw["pairs"][0].update(query=raw["pairs"][0]["reference"],
                           query_id=raw["pairs"][0]["reference_id"])
    return raw

  for edit in (cross_class, self_pair):
    _edit_pair_file(split_copy, edit)
    with pytest.raises(ValueError, match="pair 0 does not fit its split"):
      pairs.load_eval_pairs(split_copy, entries, "test")
    os.unlink(os.path.join(os.path.dirname(split_copy), "test_pairs_seed0.json"))


@needs_real_data
@pytest.mark.parametrize("split", ["val", "test"])
def test_packaged_pairs_of_the_real_benchmark(split):
  split_file = str(REAL_DATA / f"{split}.json")
  entries = splits.load_split(split_file)
  before = sorted(os.listdir(pairs.PACKAGED_DIR))
  ps, path = pairs.load_eval_pairs(split_file, entries, split)
  assert os.path.dirname(path) == pairs.PACKAGED_DIR and path.endswith(f"_seed0_{split}.json")
  assert len(ps) == REAL_COUNTS[split]
  assert [p.reference for p in ps] == entries
  assert pair_indices(ps) == pair_indices(pairs.eval_pairs(entries, 0))
  assert sorted(os.listdir(pairs.PACKAGED_DIR)) == before  # nothing written


# ---------------------------------------------------------------------------
# Training samplers
# ---------------------------------------------------------------------------


def find_reference(entries, ex: pairs.Example) -> Entry:
  """The entry whose window a (possibly cropped) reference was cut from."""
  a = ex.reference_span[0]
  absolute = (a + ex.segment[0], a + ex.segment[1])
  found = [e for e in entries if e.video_id == ex.reference_video and e.query_span == absolute
           and e.location[0] <= ex.reference_span[0] and ex.reference_span[1] <= e.location[1]]
  assert len(found) == 1, ex
  return found[0]


def find_query(entries, ex: pairs.Example) -> Entry:
  found = [e for e in entries if e.video_id == ex.query_video and e.query_span == ex.query_span]
  assert found, ex
  return found[0]


@pytest.mark.parametrize("subset", [False, True])
def test_full_sampler(bench, subset):
  entries = load(bench, "train")
  if subset:  # entry indices then differ from list positions
    entries = entries[5:]
  sampler = pairs.FullSampler(entries)
  rng = np.random.default_rng(0)
  seen_queries = set()
  for _ in range(1500):
    ex = sampler.sample(rng)
    query, ref = find_query(entries, ex), find_reference(entries, ex)
    seen_queries.add(query.index)
    assert query.label == ref.label
    assert ref.window_length >= query.segment_length == ex.query_length
    s, e = ex.segment
    assert 0 <= s < e <= ex.reference_length  # the crop keeps the segment, non-empty
    assert e - s == ref.segment_length
    others = [r for r in entries if r.label == query.label and r.index != query.index and
              r.window_length >= query.segment_length]
    if others:
      assert ref.index != query.index
  assert seen_queries == {e.index for e in entries}


def test_full_sampler_is_a_function_of_the_rng(bench):
  sampler = pairs.FullSampler(load(bench, "train"))
  draw = lambda seed: [sampler.sample(np.random.default_rng((seed, k))) for k in range(50)]
  assert draw(4) == draw(4) and draw(4) != draw(5)


def _slack_entries():
  """Windows of 100 steps with the segment [40, 50): almost every crop changes the window."""
  return [entry(i, f"v{i}", 1 + i % 2, (0, 100), (40, 50)) for i in range(6)]


@pytest.mark.parametrize("probability", [0.9, 0.5, 0.0, 1.0])
def test_full_sampler_crop_frequency(probability):
  sampler = pairs.FullSampler(_slack_entries(), crop_probability=probability)
  rng = np.random.default_rng(1)
  examples = [sampler.sample(rng) for _ in range(4000)]
  cropped = np.mean([ex.reference_span != (0, 100) for ex in examples])
  # A crop leaves the window unchanged with probability 1 / (41 * 51).
  assert abs(cropped - probability * (1 - 1 / (41 * 51))) < 0.025
  if probability == 0.9:
    assert probability == pairs.FullSampler(_slack_entries()).crop_probability  # the default
    # Crops reach both extremes: tight on the segment's start and on its end.
    assert any(ex.segment[0] == 0 for ex in examples)
    assert any(ex.segment[1] == ex.reference_length for ex in examples)
    for ex in examples:
      assert ex.reference_span[0] + ex.segment[0] == 40
      assert ex.reference_span[0] + ex.segment[1] == 50


def test_weak_split(bench):
  entries = load(bench, "train")
  queries, references = pairs.weak_split(entries, seed=0)
  assert all(isinstance(q, Entry) for q in queries)
  assert all(isinstance(w, pairs.Window) for w in references)
  # References carry no annotation at all.
  assert {f.name for f in dataclasses.fields(pairs.Window)} == {"video_id", "label", "location"}
  assert not any(hasattr(w, "segment") or hasattr(w, "groundtruth") for w in references)
  # Disjoint by video; together they are the whole split.
  assert not {q.video_id for q in queries} & {w.video_id for w in references}
  union = sorted([(q.video_id, q.label, q.location) for q in queries] +
                 [(w.video_id, w.label, w.location) for w in references])
  assert union == sorted((e.video_id, e.label, e.location) for e in entries)
  for label in {e.label for e in entries}:  # every class has both parts
    assert any(q.label == label for q in queries) and any(w.label == label for w in references)
  assert pairs.weak_split(entries, seed=0) == (queries, references)
  assert any(pairs.weak_split(entries, seed=s)[0] != queries for s in range(1, 6))
  single_q, single_r = pairs.weak_split([entries[0]], seed=0)  # one video: cannot be split
  assert len(single_q) + len(single_r) == 1


def test_weak_sampler_and_batches_carry_no_segment(bench, layout):
  entries = load(bench, "train")
  queries, references = pairs.weak_split(entries, seed=0)
  sampler = pairs.WeakSampler(queries, references)
  rng = np.random.default_rng(0)
  windows = {(w.video_id, w.location): w for w in references}
  examples = [sampler.sample(rng) for _ in range(300)]
  for ex in examples:
    assert ex.segment is None
    ref = windows[(ex.reference_video, ex.reference_span)]  # uncropped reference window
    query = find_query(queries, ex)
    assert ref.label == query.label and ref.window_length >= ex.query_length
  store = open_store(bench, layout)
  batch = batching.make_batch(examples[:4], store, 16, 32)
  assert "segment" not in batch
  train = batching.TrainBatches(sampler.sample, store, 4, QUERY_BUCKETS, REFERENCE_BUCKETS, seed=0)
  for step in range(3):
    assert "segment" not in train.batch(step)
  with pytest.raises(ValueError, match="no query has a reference of its class long enough"):
    pairs.WeakSampler(queries, [])


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


def test_bucket_for():
  assert [buckets.bucket_for(n, (4, 8, 16)) for n in (1, 4, 5, 8, 9, 16)] == [4, 4, 8, 8, 16, 16]
  assert buckets.bucket_for(5, (16, 4, 8)) == 8  # The smallest that holds it, in any order.
  with pytest.raises(ValueError, match="a reference of 17 steps is longer than the largest "
                     "reference bucket 16"):
    buckets.bucket_for(17, (4, 8, 16), "reference")


def test_local_slice():
  assert batching.local_slice(8, 0, 2) == slice(0, 4)
  assert batching.local_slice(8, 1, 2) == slice(4, 8)
  assert batching.local_slice(6, 0, 1) == slice(0, 6)
  with pytest.raises(ValueError, match="global batch 8 is not divisible by 3 processes"):
    batching.local_slice(8, 0, 3)


def assert_batch_holds(batch, examples, features_by_video, query_length, reference_length):
  n, dim = len(examples), 8
  assert batch["query"].shape == (n, query_length, dim) and batch["query"].dtype == np.float32
  assert batch["reference"].shape == (n, reference_length, dim)
  assert batch["reference"].dtype == np.float32
  for key in ("query_mask", "reference_mask", "example_mask"):
    assert batch[key].dtype == bool
  for key in ("query_length", "reference_length"):
    assert batch[key].dtype == np.int32 and batch[key].shape == (n,)
  for i, ex in enumerate(examples):
    for side, video, (a, b), pad in (("query", ex.query_video, ex.query_span, query_length),
                                     ("reference", ex.reference_video, ex.reference_span,
                                      reference_length)):
      length = b - a
      assert batch[f"{side}_length"][i] == length
      np.testing.assert_array_equal(batch[f"{side}_mask"][i], np.arange(pad) < length)
      np.testing.assert_array_equal(batch[side][i, :length], features_by_video[video][a:b])
      assert not batch[side][i, length:].any()  # zero padding
    if ex.segment is not None:
      assert batch["segment"].dtype == np.int32
      assert tuple(batch["segment"][i]) == ex.segment


def test_make_batch(bench, layout):
  examples = [pairs.example_from_pair(p) for p in pairs.eval_pairs(load(bench, "test"))[:5]]
  store = open_store(bench, layout)
  assert store.feature_dim is None  # make_batch learns it from the data
  batch = batching.make_batch(examples, store, 16, 32)
  assert set(batch) == {"query", "query_mask", "query_length", "reference", "reference_mask",
                        "reference_length", "segment", "example_mask"}
  assert batch["example_mask"].all() and batch["segment"].shape == (5, 2)
  assert_batch_holds(batch, examples, bench.features, 16, 32)
  masked = batching.make_batch(examples, store, 16, 32, example_mask=[1, 1, 0, 1, 0])
  np.testing.assert_array_equal(masked["example_mask"], [True, True, False, True, False])
  long = examples[0]
  with pytest.raises(ValueError, match=rf"video v_{long.reference_video} does not fit its bucket"):
    batching.make_batch([long], store, 16, long.reference_length - 1)
  with pytest.raises(ValueError, match="does not fit its bucket"):
    batching.make_batch([long], store, long.query_length - 1, 32)


def make_train_batches(bench, store, seed=3, global_batch=8, process_index=0, process_count=1):
  sampler = pairs.FullSampler(load(bench, "train"))
  return batching.TrainBatches(sampler.sample, store, global_batch, QUERY_BUCKETS,
                               REFERENCE_BUCKETS, seed, process_index, process_count)


def assert_batches_equal(x, y):
  assert set(x) == set(y)
  for key in x:
    np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batches_deterministic_per_seed_and_step(bench):
  store = open_store(bench, "npy")
  first, second = make_train_batches(bench, store), make_train_batches(bench, store)
  steps = [0, 1, 5, 2]
  forward = {t: first.batch(t) for t in steps}
  for t in reversed(steps):  # another instance, another order: the same batches
    assert_batches_equal(second.batch(t), forward[t])
    assert second.examples(t) == first.examples(t)
  assert first.examples(0) != first.examples(1)
  assert make_train_batches(bench, store, seed=4).examples(0) != first.examples(0)


def test_train_batches_one_bucket_per_batch(bench):
  store = open_store(bench, "npy")
  train = make_train_batches(bench, store)
  buckets = set()
  for step in range(12):
    examples = train.examples(step)
    assert len(examples) == 8
    bucket = {batching.bucket_for(ex.reference_length, REFERENCE_BUCKETS) for ex in examples}
    assert len(bucket) == 1
    buckets |= bucket
    batch = train.batch(step)
    assert batch["reference"].shape[1] == bucket.pop()
    assert batch["query"].shape[1] == batching.bucket_for(
        max(ex.query_length for ex in examples), QUERY_BUCKETS)
    assert_batch_holds(batch, examples, bench.features, batch["query"].shape[1],
                       batch["reference"].shape[1])
  assert len(buckets) > 1  # buckets come with their natural frequency


def test_train_batches_process_slices_concatenate(bench):
  store = open_store(bench, "hdf5")
  whole = make_train_batches(bench, store)
  parts = [make_train_batches(bench, store, process_index=i, process_count=2) for i in range(2)]
  for step in (0, 7):
    local = [p.batch(step) for p in parts]
    assert local[0]["query"].shape[0] == 4
    joined = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
    assert_batches_equal(joined, whole.batch(step))
  with pytest.raises(ValueError, match="not divisible"):
    make_train_batches(bench, store, process_count=3)


def test_eval_batches(bench, layout):
  ps = pairs.eval_pairs(load(bench, "train"))
  assert len(ps) % 8  # so the last batch of some bucket has fillers
  store = open_store(bench, layout)
  seen, fillers = [], 0
  for indices, batch in batching.eval_batches(ps, store, 8, QUERY_BUCKETS, REFERENCE_BUCKETS):
    assert indices.shape == (8,) and batch["query"].shape[0] == 8
    np.testing.assert_array_equal(batch["example_mask"], indices >= 0)
    valid = [int(i) for i in indices if i >= 0]
    assert valid and list(indices[:len(valid)]) == valid  # fillers only at the end
    fillers += 8 - len(valid)
    seen += valid
    examples = [pairs.example_from_pair(ps[i]) for i in valid]
    bucket = batch["reference"].shape[1]
    assert {batching.bucket_for(ex.reference_length, REFERENCE_BUCKETS) for ex in examples} == {
        bucket}
    assert_batch_holds({k: v[:len(valid)] for k, v in batch.items()}, examples, bench.features,
                       batch["query"].shape[1], bucket)
  assert sorted(seen) == list(range(len(ps))) and fillers > 0


def test_eval_batches_process_slices_concatenate(bench):
  ps = pairs.eval_pairs(load(bench, "val"))
  store = open_store(bench, "hdf5")
  args = (ps, store, 4, QUERY_BUCKETS, REFERENCE_BUCKETS)
  whole = list(batching.eval_batches(*args))
  parts = [list(batching.eval_batches(*args, process_index=i, process_count=2)) for i in range(2)]
  assert len(whole) == len(parts[0]) == len(parts[1])
  for (indices, batch), (i0, b0), (i1, b1) in zip(whole, *parts):
    np.testing.assert_array_equal(indices, i0)
    np.testing.assert_array_equal(indices, i1)
    assert b0["query"].shape[0] == 2
    assert_batches_equal({k: np.concatenate([b0[k], b1[k]]) for k in batch}, batch)
  with pytest.raises(ValueError, match="not divisible by 3"):
    next(batching.eval_batches(*args, process_count=3))


def test_prefetch():
  assert list(batching.prefetch(iter(range(10)), size=2)) == list(range(10))

  def failing():
    yield 1
    raise KeyError("broken reader")

  out = batching.prefetch(failing())
  assert next(out) == 1
  with pytest.raises(KeyError, match="broken reader"):
    next(out)


def layout_of(batch):
  return {k: (v.shape, v.dtype.type) for k, v in batch.items()}


@pytest.mark.parametrize("query_buckets", [QUERY_BUCKETS, (16,)])
@pytest.mark.parametrize("supervision", ["weak", "full"])
def test_train_layout_is_the_batch_layout_without_reading_features(bench, supervision,
                                                                   query_buckets):
  """What `compilation` plans a run's programs from: the batch each step will make."""
  entries = load(bench, "train")
  if supervision == "weak":
    sampler = pairs.WeakSampler(*pairs.weak_split(entries, seed=0))
  else:
    sampler = pairs.FullSampler(entries)
  store = open_store(bench, "npy")
  train = batching.TrainBatches(sampler.sample, store, 8, query_buckets, REFERENCE_BUCKETS,
                                seed=1)
  layouts = {}
  for step in range(12):
    planned = train.layout(step, dim=8)
    assert planned == layout_of(train.batch(step)), step
    layouts[repr(planned)] = planned
  assert len(layouts) > 1  # several reference buckets were planned


def test_eval_layouts_are_those_of_the_eval_batches_in_order(bench):
  ps = pairs.eval_pairs(load(bench, "train"))
  store = open_store(bench, "hdf5")
  seen = []
  for _, batch in batching.eval_batches(ps, store, 8, QUERY_BUCKETS, REFERENCE_BUCKETS):
    if layout_of(batch) not in seen:
      seen.append(layout_of(batch))
  assert batching.eval_layouts(ps, 8, QUERY_BUCKETS, REFERENCE_BUCKETS, dim=8) == seen
  assert len(seen) > 1
