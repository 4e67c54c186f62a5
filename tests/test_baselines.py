"""Training-free baselines: valid segments, the results files, determinism, the paper's prior row."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vreloc_jax import baselines
from vreloc_jax import losses
from vreloc_jax import metrics
from vreloc_jax.data import features as features_lib
from vreloc_jax.data import pairs as pairs_lib
from vreloc_jax.data import splits as splits_lib
from vreloc_jax.data import synthetic
from tests.conftest import REAL_DATA_DIR, subprocess_env

REAL_DIR = str(REAL_DATA_DIR)
ALL_METHODS = baselines.BASELINES

needs_real = pytest.mark.skipif(not os.path.isfile(os.path.join(REAL_DIR, "test.json")),
                                reason="the real split files are not available")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("synthetic") / "tiny")
  synthetic.generate(out, seed=0, scale=0.02)
  return out


def _check_predictions(predicted: np.ndarray, pairs) -> None:
  lengths = np.array([p.reference.window_length for p in pairs])
  assert predicted.shape == (len(pairs), 2) and predicted.dtype.kind == "i"
  assert (predicted[:, 0] >= 0).all()
  assert (predicted[:, 1] > predicted[:, 0]).all()
  assert (predicted[:, 1] <= lengths).all()


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_end_to_end(method, data_dir, tmp_path):
  output = str(tmp_path / f"{method}.json")
  results, predicted = baselines.run_baseline(method, data_dir, "test", output=output)
  split_file = splits_lib.split_path(data_dir, "test")
  entries = splits_lib.load_split(split_file)
  pairs, _ = pairs_lib.load_eval_pairs(split_file, entries, "test")
  _check_predictions(predicted, pairs)
  assert results["split"] == "test" and results["num_pairs"] == len(pairs)
  assert results["method"] == method
  assert sorted(results["mAP"]) == [metrics.threshold_key(t) for t in metrics.THRESHOLDS]
  assert 0.0 <= results["mAP_avg"] <= 100.0
  with open(output) as f:
    assert json.load(f) == results
  with open(metrics.predictions_path(output)) as f:
    rows = json.load(f)["predictions"]
  assert len(rows) == len(pairs)
  assert {"entry", "query", "reference", "predicted", "groundtruth", "iou"} <= set(rows[0])
  assert [r["predicted"] for r in rows] == predicted.tolist()
  again, predicted_again = baselines.run_baseline(method, data_dir, "test")
  np.testing.assert_array_equal(predicted, predicted_again)
  assert again["mAP"] == results["mAP"]


def test_whole_reference_predicts_the_window_and_reads_no_features(data_dir):
  results, predicted = baselines.run_baseline("whole_reference", data_dir, "test",
                                              features="/nonexistent")  # never opened
  split_file = splits_lib.split_path(data_dir, "test")
  pairs, _ = pairs_lib.load_eval_pairs(split_file, splits_lib.load_split(split_file), "test")
  lengths = np.array([p.reference.window_length for p in pairs])
  np.testing.assert_array_equal(predicted, np.stack([np.zeros_like(lengths), lengths], 1))
  # Its IoU with each ground truth is the share of the window the ground truth covers.
  shares = np.array([np.subtract(*p.reference.segment[::-1]) for p in pairs]) / lengths
  assert results["mAP_avg"] == pytest.approx(metrics.top1_map(shares)["mAP_avg"])


def test_random_seeded(data_dir):
  _, first = baselines.run_baseline("random", data_dir, "test", seed=0)
  _, other = baselines.run_baseline("random", data_dir, "test", seed=1)
  assert not np.array_equal(first, other)


def test_predict_random_and_prior_edge_cases():
  lengths = np.array([1, 2, 3, 300, 1, 7])
  for seed in range(20):
    pred = baselines.predict_random(lengths, seed)
    assert (pred[:, 0] >= 0).all() and (pred[:, 1] > pred[:, 0]).all()
    assert (pred[:, 1] <= lengths).all()
  prior = baselines.predict_stat_prior(lengths, (0.3265, 0.6509))
  assert prior[0].tolist() == [0, 1] and prior[1].tolist() == [1, 2]
  assert prior[3].tolist() == [98, 195]  # round(97.95), round(195.27)
  assert (prior[:, 1] > prior[:, 0]).all() and (prior[:, 1] <= lengths).all()
  assert baselines.predict_stat_prior(lengths, (0.99, 0.995))[5].tolist() == [6, 7]


def test_stat_prior_uses_the_training_split(bench):
  entries = {s: splits_lib.load_split(bench.split_files[s]) for s in splits_lib.SPLITS}
  pairs = pairs_lib.eval_pairs(entries["val"])
  results = baselines.score_baseline("stat_prior", entries, pairs, split="val")
  expected = baselines.training_prior(entries["train"])
  assert results["prior"] == list(expected)
  assert expected == pytest.approx(
      (np.mean([e.segment[0] / e.window_length for e in entries["train"]]),
       np.mean([e.segment[1] / e.window_length for e in entries["train"]])))
  with pytest.raises(ValueError, match="training"):
    baselines.score_baseline("stat_prior", {"val": entries["val"]}, pairs, split="val")


def test_score_baseline_with_a_store(bench, layout):
  """The call the training code makes: entries by split, the pairs, a FeatureStore."""
  entries = {s: splits_lib.load_split(bench.split_files[s]) for s in splits_lib.SPLITS}
  pairs = pairs_lib.eval_pairs(entries["test"])
  store = features_lib.open_features(bench.hdf5 if layout == "hdf5" else bench.npy_dir)
  try:
    for method in ALL_METHODS:
      predicted, _ = baselines.predict(method, entries, pairs, store)
      _check_predictions(predicted, pairs)
    with pytest.raises(ValueError, match="needs features"):
      baselines.score_baseline("frame_level", entries, pairs, None, split="test")
    with pytest.raises(ValueError, match="unknown method"):
      baselines.score_baseline("oracle", entries, pairs, store, split="test")
  finally:
    store.close()


def _brute_frame_level(query, reference):
  q = query / np.linalg.norm(query, axis=1, keepdims=True)
  r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
  sim = r @ q.T  # [Lr, Lq]
  length = min(len(query), len(reference))
  scores = [sim[s:s + length].mean() for s in range(len(reference) - length + 1)]
  start = int(np.argmax(scores))
  return start, start + length


def test_frame_level_matches_brute_force():
  rng = np.random.default_rng(0)
  for lq, lr in [(1, 1), (3, 10), (10, 3), (7, 40), (32, 300)]:
    query, reference = rng.normal(size=(lq, 6)), rng.normal(size=(lr, 6))
    assert baselines.frame_level_segment(query, reference) == _brute_frame_level(query, reference)


def test_frame_level_finds_a_planted_copy():
  rng = np.random.default_rng(1)
  query = rng.normal(size=16) + 0.3 * rng.normal(size=(5, 16))  # an action: alike steps
  reference = rng.normal(size=(50, 16))
  reference[20:25] = 3.0 * query + 0.01 * rng.normal(size=(5, 16))  # scale does not matter
  assert baselines.frame_level_segment(query, reference) == (20, 25)
  # Ties (identical steps) go to the earliest start.
  flat = np.ones((10, 4))
  assert baselines.frame_level_segment(flat[:3], flat) == (0, 3)


def _brute_coattention(query, reference, alpha, max_length, length=None):
  def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

  q = query.mean(0)
  n = len(reference)
  best, arg = -np.inf, None
  for s in range(n):
    for e in range(s + 1, min(s + max_length, n) + 1):
      if (e - s == n and n > 1) or (length is not None and e - s != length):
        continue
      inside = reference[s:e].mean(0)
      outside = np.concatenate([reference[:s], reference[e:]])
      if len(outside):
        out = outside.mean(0)
        score = cos(q, inside) - alpha * cos(q, out) - (1 - alpha) * cos(inside, out)
      else:
        score = cos(q, inside)
      if score > best + 1e-12:
        best, arg = score, (s, e)
  return arg


def test_coattention_matches_brute_force():
  rng = np.random.default_rng(2)
  for lq, lr, max_length in itertools.product([1, 4], [1, 2, 9, 23], [3, 64]):
    query, reference = rng.normal(size=(lq, 5)), rng.normal(size=(lr, 5))
    assert baselines.coattention_segment(query, reference, 0.3, max_length) == \
        _brute_coattention(query, reference, 0.3, max_length)
    # Only the segments of the query's length: the query-length rule's candidates.
    length = min(lq, lr)
    expected = _brute_coattention(query, reference, 0.3, lr, length) or (0, lr)
    assert baselines.coattention_segment(query, reference, 0.3, max_length,
                                         query_length=True) == expected


def test_smooth():
  x = np.arange(10, dtype=np.float64)[:, None]
  out = baselines.smooth(x, 5)
  assert out.shape == (10, 1)
  assert out[5, 0] == pytest.approx(5.0) and out[0, 0] == pytest.approx(1.0)


@needs_real
def test_stat_prior_reproduces_the_paper_on_the_real_test_split():
  results, predicted = baselines.run_baseline("stat_prior", REAL_DIR, "test")
  assert results["num_pairs"] == 978
  assert results["prior"] == pytest.approx([0.3267, 0.6510], abs=1e-4)
  paper = {"0.5": 25.4, "0.6": 16.5, "0.8": 2.3, "0.9": 1.2}  # 0.7 is misprinted in Table 4.
  for key, value in paper.items():
    assert abs(results["mAP"][key] - value) <= 0.3, (key, results["mAP"][key])
  assert abs(results["mAP_avg"] - 10.7) <= 0.3


@needs_real
def test_command_line_prior_on_the_real_split(tmp_path):
  output = tmp_path / "prior.json"
  run = subprocess.run(
      [sys.executable, "-m", "vreloc_jax.baselines", "--method=stat_prior",
       f"--data_dir={REAL_DIR}", "--split=test", f"--output={output}"],
      capture_output=True, text=True, check=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert "stat_prior" in run.stdout and "training prior: start 0.3267" in run.stdout
  assert json.loads(output.read_text())["num_pairs"] == 978


def test_command_line_searches_the_criterion_over_transitions(data_dir, tmp_path):
  """``--project=transitions``: the search the targets of ``criterion=transitions`` make."""
  output = str(tmp_path / "transitions.json")
  done = subprocess.run(
      [sys.executable, "-m", "vreloc_jax.baselines", "--method=coattention_search_query_length",
       f"--data_dir={data_dir}", "--project=transitions", f"--output={output}"],
      capture_output=True, text=True, env=subprocess_env(), check=True)
  assert "coattention_search_query_length (transitions)" in done.stdout
  split_file = splits_lib.split_path(data_dir, "test")
  pairs, _ = pairs_lib.load_eval_pairs(split_file, splits_lib.load_split(split_file), "test")
  store = features_lib.open_features(features_lib.find_features(data_dir))
  expected = []
  for pair in pairs:
    query = store.window(pair.query.video_id, *pair.query.query_span)[None]
    reference = store.window(pair.reference.video_id, *pair.reference.location)[None]
    query_mask, reference_mask = np.ones(query.shape[:2], bool), np.ones(reference.shape[:2], bool)
    windows = np.array([[min(query.shape[1], reference.shape[1])]])
    expected.append(np.asarray(losses.criterion_segments(
        losses.transition_features(query, query_mask), query_mask,
        losses.transition_features(reference, reference_mask), reference_mask, windows,
        0.3))[0].tolist())
  store.close()
  with open(metrics.predictions_path(output)) as f:
    assert [r["predicted"] for r in json.load(f)["predictions"]] == expected
