"""The synthetic benchmark: format, determinism, counts, statistics, atomic writing."""

from __future__ import annotations

import filecmp
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from vreloc_jax.data import features as features_lib
from vreloc_jax.data import splits as splits_lib
from vreloc_jax.data import synthetic
from vreloc_jax.data.synthetic import features as feature_model
from vreloc_jax.data.synthetic import layout
from vreloc_jax.data.synthetic import writer
from tests.conftest import REAL_DATA_DIR

REAL_DIR = str(REAL_DATA_DIR)
SCALE = 0.02  # ~150 train / 17 val / 20 test entries; a couple of seconds to generate.
JSON_FILES = ("train.json", "val.json", "test.json", "length.json", synthetic.MANIFEST_NAME)

needs_real = pytest.mark.skipif(not os.path.isfile(os.path.join(REAL_DIR, "train.json")),
                                reason="the real split files are not available")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("synthetic") / "seed0")
  summary = synthetic.generate(out, seed=0, scale=SCALE)
  assert not summary["cached"]
  return out


def _entries(root: str) -> dict[str, list[splits_lib.Entry]]:
  return {s: splits_lib.load_split(splits_lib.split_path(root, s)) for s in splits_lib.SPLITS}


def _all_features(path: str) -> dict[str, np.ndarray]:
  with h5py.File(path, "r") as f:
    return {name: f[name][synthetic.HDF5_DATASET][...] for name in f}


def test_files_and_manifest(generated):
  for name in JSON_FILES + (synthetic.HDF5_NAME,):
    assert os.path.isfile(os.path.join(generated, name)), name
  with open(os.path.join(generated, synthetic.MANIFEST_NAME)) as f:
    manifest = json.load(f)
  assert manifest["seed"] == 0 and manifest["scale"] == SCALE
  assert manifest["version"] == synthetic.VERSION
  assert manifest["params"]["class_dim"] == synthetic.FeatureParams().class_dim
  world = synthetic.make_world(0, 1, synthetic.FeatureParams())
  np.testing.assert_allclose(synthetic.class_subspace_projector(generated), world.class_basis,
                             atol=1e-6)
  with open(os.path.join(generated, "test.json")) as f:
    raw = json.load(f)
  assert list(raw[0]) == ["id", "label", "location", "groundtruth"]


def test_counts_classes_and_labels(generated):
  entries = _entries(generated)
  labels = {}
  for split, es in entries.items():
    counts = synthetic.scaled_class_counts(split, SCALE)
    assert len(es) == sum(counts)
    per_class = sorted(np.unique([e.label for e in es], return_counts=True)[1].tolist())
    assert per_class == sorted(counts)
    assert all(isinstance(e.label, int) for e in es)
    labels[split] = {e.label for e in es}
  assert not labels["train"] & labels["val"]
  assert not labels["train"] & labels["test"]
  assert not labels["val"] & labels["test"]
  for split, es in entries.items():  # Every class spans at least two videos.
    for label in labels[split]:
      assert len({e.video_id for e in es if e.label == label}) >= 2


def test_scaled_class_counts():
  for split, table in synthetic.CLASS_ENTRY_COUNTS.items():
    assert synthetic.scaled_class_counts(split, 1.0) == list(table)
  assert [sum(synthetic.CLASS_ENTRY_COUNTS[s]) for s in synthetic.SPLITS] == [7593, 829, 978]
  assert [len(synthetic.CLASS_ENTRY_COUNTS[s]) for s in synthetic.SPLITS] == [160, 20, 20]
  counts = synthetic.scaled_class_counts("train", 0.1)
  assert len(counts) == 16 and sum(counts) == 759 and min(counts) >= 2
  with pytest.raises(ValueError, match="scale"):
    synthetic.scaled_class_counts("train", 0.0)


def test_real_reader_reads_it(generated):
  entries = _entries(generated)
  lengths = splits_lib.load_lengths(os.path.join(generated, "length.json"))
  with open(os.path.join(generated, "length.json")) as f:
    raw_lengths = json.load(f)
  store = features_lib.open_features(features_lib.find_features(generated))
  try:
    for split, es in entries.items():
      splits_lib.check_windows_fit(es, lengths, split)
      store.preload(es)
      for e in es:
        window = store.window(e.video_id, *e.location)
        assert window.shape == (e.window_length, synthetic.FEATURE_DIM)
        assert window.dtype == np.float32 and np.isfinite(window).all()
    assert store.feature_dim == synthetic.FEATURE_DIM
    for vid, n in lengths.items():
      assert store.source.num_features(vid) == n
      assert raw_lengths[vid]["n_frames"] // 16 == n
  finally:
    store.close()


def test_hdf5_layout(generated):
  with h5py.File(os.path.join(generated, synthetic.HDF5_NAME), "r") as f:
    name = sorted(f)[0]
    rows = f[name][synthetic.HDF5_DATASET][...]
  assert name.startswith("v_")
  assert rows.dtype == np.float16 and rows.shape[1] == synthetic.FEATURE_DIM
  assert rows.shape[0] % 2 == 1  # 2 * n_feat - 1 rows
  even = rows[0::2].astype(np.float32)
  np.testing.assert_allclose(rows[1::2].astype(np.float32), 0.5 * (even[:-1] + even[1:]),
                             rtol=2e-3, atol=2e-3)


def test_deterministic_by_seed(generated, tmp_path):
  again = str(tmp_path / "again")
  synthetic.generate(again, seed=0, scale=SCALE)
  for name in JSON_FILES:
    assert filecmp.cmp(os.path.join(generated, name), os.path.join(again, name), shallow=False), name
  first = _all_features(os.path.join(generated, synthetic.HDF5_NAME))
  second = _all_features(os.path.join(again, synthetic.HDF5_NAME))
  assert first.keys() == second.keys()
  for name in first:
    np.testing.assert_array_equal(first[name], second[name])

  other = str(tmp_path / "other")
  synthetic.generate(other, seed=1, scale=SCALE)
  with open(os.path.join(generated, "test.json"), "rb") as a, open(
      os.path.join(other, "test.json"), "rb") as b:
    assert a.read() != b.read()
  third = _all_features(os.path.join(other, synthetic.HDF5_NAME))
  assert first.keys() != third.keys()


def test_generate_splits_matches_files(generated):
  planned = synthetic.generate_splits(seed=0, scale=SCALE)
  for split in synthetic.SPLITS:
    with open(os.path.join(generated, f"{split}.json")) as f:
      assert json.load(f) == planned[split]


def test_cache_hit_and_conflicts(generated, tmp_path):
  start = os.path.getmtime(os.path.join(generated, synthetic.HDF5_NAME))
  summary = synthetic.generate(generated, seed=0, scale=SCALE)
  assert summary["cached"]
  assert os.path.getmtime(os.path.join(generated, synthetic.HDF5_NAME)) == start
  with pytest.raises(ValueError, match="already holds"):
    synthetic.generate(generated, seed=3, scale=SCALE)
  stray = tmp_path / "stray"
  stray.mkdir()
  (stray / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="already holds"):
    synthetic.generate(str(stray), seed=0, scale=SCALE)
  assert (stray / "notes.txt").read_text() == "mine"


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(writer, "_write_features", boom)
  out = tmp_path / "half"
  with pytest.raises(KeyboardInterrupt):
    synthetic.generate(str(out), seed=0, scale=SCALE)
  assert not out.exists()
  assert os.listdir(tmp_path) == []  # no temporary directory left behind


def test_overwrite_replaces(tmp_path):
  out = str(tmp_path / "d")
  synthetic.generate(out, seed=0, scale=0.01)
  summary = synthetic.generate(out, seed=1, scale=0.01, overwrite=True)
  assert not summary["cached"]
  with open(os.path.join(out, synthetic.MANIFEST_NAME)) as f:
    assert json.load(f)["seed"] == 1
  assert sorted(os.listdir(tmp_path)) == ["d"]


def test_splits_from(generated, tmp_path):
  real_like = tmp_path / "real"
  real_like.mkdir()
  for name in ("train.json", "val.json", "test.json", "length.json"):
    shutil.copyfile(os.path.join(generated, name), real_like / name)
  out = str(tmp_path / "features_only")
  summary = synthetic.generate(out, seed=5, splits_from=str(real_like))
  assert summary["splits"]["test"]["entries"] == len(_entries(generated)["test"])
  for name in ("train.json", "val.json", "test.json", "length.json"):
    assert filecmp.cmp(real_like / name, os.path.join(out, name), shallow=False)
  store = features_lib.open_features(os.path.join(out, synthetic.HDF5_NAME))
  try:
    for es in _entries(out).values():
      for e in es:
        assert store.window(e.video_id, *e.location).shape == (e.window_length, 500)
  finally:
    store.close()
  with pytest.raises(ValueError, match="missing"):
    synthetic.generate(str(tmp_path / "x"), splits_from=str(tmp_path / "nowhere"))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_render_video_structure():
  params = synthetic.FeatureParams()
  world = synthetic.make_world(0, 4, params)
  assert world.action_direction is None and world.prototypes is None
  assert len({tuple(a) for a in world.class_atoms}) == 4  # Distinct ordered sequences.
  pieces = [layout.Piece(10, 22, 1, "entry"), layout.Piece(40, 46, 2, "distractor")]
  features, class_coords = synthetic.render_video(pieces, 80, 1, world, params,
                                                  np.random.default_rng(0))
  assert features.shape == (80, 500) and features.dtype == np.float32
  nearest = np.argmax(class_coords @ world.atoms.T, axis=1)  # [80] atom shown at each step
  own, other = world.class_atoms[1].tolist(), world.class_atoms[2].tolist()
  # The instance plays its class's atoms in the class's order (its edge steps cross-fade).
  inside = [own.index(a) for a in nearest[11:21]]
  assert inside == sorted(inside) and inside[0] == 0 and len(set(inside)) >= len(own) - 1
  # Context (everywhere but the two instances) shows the class's own atoms too ...
  context = np.r_[0:9, 23:39, 47:80]
  assert set(nearest[context].tolist()) <= set(own)
  assert [a for a in nearest[41:45] if a not in own] and set(nearest[41:45]) <= set(other)
  # ... with the same energy as the instance: in the class part only the order marks it.
  norms = np.linalg.norm(class_coords, axis=1)  # Each piece's gain is drawn from one range.
  low, high = (params.class_scale * g for g in params.amplitude_range)
  assert norms.max() <= high + 1e-4
  assert low * 0.9 <= norms[11:21].mean() and low * 0.9 <= norms[context].mean()
  # Both actions (the instance and the distractor) carry the video's action look: their
  # appearance departs from the background's along one direction ...
  appearance = features @ world.appearance_basis  # [80, appearance_dim]
  background = np.median(appearance[context], axis=0)
  look = appearance[12:20].mean(axis=0) - background
  assert np.linalg.norm(look) > 0.4 * params.action_scale
  assert _cosine(look, appearance[42:44].mean(axis=0) - background) > 0.6
  # ... which is the video's own: another video's look is unrelated to it.
  other, _ = synthetic.render_video(pieces, 80, 1, world, params, np.random.default_rng(1))
  other_appearance = other @ world.appearance_basis
  other_look = other_appearance[12:20].mean(axis=0) - np.median(other_appearance[context], axis=0)
  assert abs(_cosine(look, other_look)) < 0.3
  # The class part of the features is the class part plus in-subspace noise only.
  projected = features @ world.class_basis
  assert np.abs(projected - class_coords).mean() < 0.5 * params.class_scale


def test_context_never_plays_the_class_order():
  own = np.array([3, 7, 1, 12])
  rng = np.random.default_rng(0)
  orders = [tuple(feature_model._context_atoms(own, rng)) for _ in range(500)]
  assert tuple(own) not in orders and len(set(orders)) == 23  # Every other permutation.
  assert all(sorted(o) == sorted(own) for o in orders)


def test_render_video_structure_positive_control():
  params = synthetic.POSITIVE_CONTROL
  world = synthetic.make_world(0, 4, params)
  pieces = [layout.Piece(10, 20, 1, "entry"), layout.Piece(30, 34, 2, "distractor")]
  features, class_coords = synthetic.render_video(pieces, 40, 1, world, params,
                                                  np.random.default_rng(0))
  assert features.shape == (40, 500) and features.dtype == np.float32
  # Outside the video's own instance (distractor included) the class part holds the
  # class context, the normalized mean of the class's prototypes; inside, the trajectory.
  context = world.prototypes[1].mean(axis=0)
  context *= params.context_scale / np.linalg.norm(context)
  background = np.r_[0:10, 20:30, 34:40]
  np.testing.assert_allclose(class_coords[background], np.tile(context, (26, 1)), atol=1e-4)
  assert np.linalg.norm(class_coords[11:19], axis=1).max() <= params.class_scale * 1.2 + 1e-4
  assert np.linalg.norm(class_coords[30:34] - context, axis=1).min() > 0.5 * params.class_scale
  # Both instances carry the shared action direction, with their own appearance.
  along_action = (features @ world.appearance_basis) @ world.action_direction  # [40]
  assert min(along_action[11:19].mean(), along_action[30:34].mean()) > 0.3 * params.action_scale
  assert np.abs(along_action[background]).max() < 0.25 * params.action_scale  # Noise only.


def test_positive_control_and_replaced_versions(tmp_path):
  """The positive control is a named setting on the same layout; earlier versions are refused."""
  out = str(tmp_path / "control")
  synthetic.generate(out, seed=0, scale=0.01, params=synthetic.POSITIVE_CONTROL)
  with open(os.path.join(out, synthetic.MANIFEST_NAME)) as f:
    manifest = json.load(f)
  assert manifest["version"] == synthetic.VERSION == 5
  assert manifest["feature_model"] == "positive_control" and manifest["params"]["action_scale"] == 2
  assert synthetic.class_subspace_projector(out).shape == (synthetic.FEATURE_DIM, 24)
  # The same split files as the benchmark: only the features (and distractors) differ.
  control = synthetic.generate_splits(0, 0.01, synthetic.POSITIVE_CONTROL)["test"]
  assert control == synthetic.generate_splits(0, 0.01)["test"]
  with pytest.raises(ValueError, match="version 4 was replaced by version 5"):
    synthetic.generate(str(tmp_path / "v4"), seed=0, scale=0.01, version=4)


def test_ar1_matches_recursion():
  rng = np.random.default_rng(0)
  eps = rng.standard_normal((300, 3))
  expected = np.zeros_like(eps)
  for t in range(300):
    expected[t] = eps[t] + (0.9 * expected[t - 1] if t else 0.0)
  np.testing.assert_allclose(feature_model._ar1(eps, 0.9, block=64), expected, rtol=1e-9, atol=1e-9)


@needs_real
def test_statistics_match_the_real_splits():
  real = synthetic.measure_statistics(REAL_DIR)
  planned = synthetic.generate_splits(seed=0, scale=1.0)
  assert [len(planned[s]) for s in synthetic.SPLITS] == [7593, 829, 978]
  assert [len({e["label"] for e in planned[s]}) for s in synthetic.SPLITS] == [160, 20, 20]
  windows = np.array([e["location"][1] - e["location"][0] for s in planned.values() for e in s])
  segments = np.array([e["groundtruth"][1] - e["groundtruth"][0] for s in planned.values() for e in s])
  starts = np.array([e["groundtruth"][0] / (e["location"][1] - e["location"][0])
                     for s in planned.values() for e in s])
  ends = np.array([e["groundtruth"][1] / (e["location"][1] - e["location"][0])
                   for s in planned.values() for e in s])
  q = [10, 25, 50, 75, 90]
  np.testing.assert_allclose(np.percentile(windows, q), np.percentile(real["window_lengths"], q),
                             rtol=0.12)
  np.testing.assert_allclose(np.percentile(segments, q),
                             np.percentile(real["segment_lengths"], q), atol=1.5)
  assert segments.min() >= 1 and segments.max() <= 32 and windows.max() <= 300
  assert abs(starts.mean() - real["relative_starts"].mean()) < 0.02
  assert abs(ends.mean() - real["relative_ends"].mean()) < 0.02
  per_video = np.unique([e["id"] for s in planned.values() for e in s], return_counts=True)[1]
  real_per_video = np.repeat(np.arange(1, len(real["entries_per_video"]) + 1),
                             real["entries_per_video"])
  assert abs((per_video == 1).mean() - (real_per_video == 1).mean()) < 0.05
  assert abs(per_video.mean() - real_per_video.mean()) < 0.15


@needs_real
def test_measured_constants_are_the_module_constants():
  real = synthetic.measure_statistics(REAL_DIR)
  assert tuple(real["entries_per_video"]) == layout.ENTRIES_PER_VIDEO_COUNTS
  for split in synthetic.SPLITS:
    assert tuple(real["splits"][split]["class_entry_counts"]) == synthetic.CLASS_ENTRY_COUNTS[split]
  assert tuple(np.bincount(real["segment_lengths"])[1:]) == layout.SEGMENT_LENGTH_COUNTS
  for name, table in (("gap", layout.GAP_QUANTILES), ("lead", layout.LEAD_QUANTILES),
                      ("trail", layout.TRAIL_QUANTILES)):
    assert [int(np.floor(v)) for v in real[f"{name}_quantiles"]] == list(table), name
  assert abs(real["p_hidden_before"] - layout.P_HIDDEN_BEFORE) < 1e-3
  assert abs(real["p_hidden_between"] - layout.P_HIDDEN_BETWEEN) < 1e-3
  assert abs(real["p_hidden_after"] - layout.P_HIDDEN_AFTER) < 1e-3


def test_config_selects_the_version(monkeypatch, tmp_path):
  from configs import default
  from vreloc_jax.data import benchmark
  monkeypatch.setenv("VRELOC_CACHE", str(tmp_path))
  config = default.get_config()
  assert benchmark.synthetic_dir(config) == str(tmp_path / "synthetic-v5-seed0-scale1")
  config.data.synthetic_version = 3
  assert benchmark.synthetic_dir(config) == str(tmp_path / "synthetic-v3-seed0-scale1")
  del config.data.synthetic_version  # A work directory from before the field: version 3.
  assert benchmark.synthetic_version(config) == 3
