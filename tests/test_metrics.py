"""Tests of vreloc_jax.metrics: IoU, top-1 mAP, result files and the table."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vreloc_jax import metrics
from vreloc_jax.data.pairs import Pair
from vreloc_jax.data.splits import Entry

KEYS = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]


# ---------------------------------------------------------------------------
# IoU
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pred, true, expected", [
    ((2, 5), (2, 5), 1.0),          # identical
    ((0, 2), (5, 8), 0.0),          # disjoint
    ((0, 2), (2, 4), 0.0),          # touching: exclusive ends share no step
    ((0, 10), (2, 4), 0.2),         # nested
    ((2, 4), (0, 10), 0.2),         # nested, the other way
    ((0, 4), (2, 6), 2 / 6),        # partial overlap
    ((3, 4), (3, 4), 1.0),          # one step
    ((0, 7), (0, 10), 0.7),
])
def test_iou_hand_cases(pred, true, expected):
  out = metrics.iou(np.array([pred]), np.array([true]))
  assert out.dtype == np.float64 and out.shape == (1,)
  assert out[0] == expected
  assert metrics.iou(np.array([true]), np.array([pred]))[0] == expected  # symmetric


def test_iou_vectorized_and_accepts_lists():
  out = metrics.iou([[0, 2], [0, 10], [2, 5]], [[2, 4], [2, 4], [2, 5]])
  np.testing.assert_array_equal(out, [0.0, 0.2, 1.0])
  assert metrics.iou([2, 5], [3, 5]).shape == (1,)  # a single segment


@pytest.mark.parametrize("pred, true, message", [
    ([[0, 2], [1, 3]], [[0, 2], [1, 3], [4, 5]], "2 predictions for 3 ground truths"),
    ([[0, 2], [3, 3]], [[0, 2], [1, 3]], r"prediction 1 \[3, 3\] is empty or inverted"),
    ([[0, 2], [1, 3]], [[5, 2], [1, 3]], r"ground truth 0 \[5, 2\] is empty or inverted"),
])
def test_iou_errors(pred, true, message):
  with pytest.raises(ValueError, match=message):
    metrics.iou(np.array(pred), np.array(true))


# ---------------------------------------------------------------------------
# Top-1 mAP and its thresholds
# ---------------------------------------------------------------------------


def test_thresholds_are_numpy_arange_values():
  np.testing.assert_array_equal(metrics.THRESHOLDS, np.arange(0.1, 1.0, 0.1))
  assert len(metrics.THRESHOLDS) == 9
  assert metrics.THRESHOLDS[2] == 0.30000000000000004 != 0.3
  assert metrics.THRESHOLDS[6] == 0.7000000000000001 != 0.7
  assert metrics.THRESHOLDS[4] == 0.5
  assert [metrics.threshold_key(t) for t in metrics.THRESHOLDS] == KEYS


def test_top1_map_keys_and_percentages():
  ious = [0.15, 0.55, 0.95, 0.0]
  res = metrics.top1_map(ious)
  assert set(res) == {"mAP", "mAP_avg"} and list(res["mAP"]) == KEYS
  expected = {"0.1": 75.0, "0.2": 50.0, "0.3": 50.0, "0.4": 50.0, "0.5": 50.0,
              "0.6": 25.0, "0.7": 25.0, "0.8": 25.0, "0.9": 25.0}
  assert res["mAP"] == expected
  # The average is over 0.5 … 0.9 only: (50 + 4 × 25) / 5.
  assert res["mAP_avg"] == pytest.approx(30.0)
  json.dumps(res)  # plain floats


def test_top1_map_is_strict():
  half = metrics.iou([[0, 5]], [[0, 10]])[0]
  assert half == 0.5
  res = metrics.top1_map([half])["mAP"]
  assert res["0.4"] == 100.0 and res["0.5"] == 0.0  # an IoU of exactly 0.5 does not count at 0.5
  assert metrics.top1_map([1.0])["mAP"]["0.9"] == 100.0
  assert metrics.top1_map([0.0])["mAP"]["0.1"] == 0.0


def test_float_thresholds_0_3_and_0_7():
  seven = metrics.iou([[0, 7]], [[0, 10]])[0]
  three = metrics.iou([[0, 3]], [[0, 10]])[0]
  assert seven == 0.7 and three == 0.3
  res = metrics.top1_map([seven, three])["mAP"]
  assert res["0.6"] == 50.0 and res["0.7"] == 0.0  # 7/10 does not count at 0.7
  assert res["0.2"] == 100.0 and res["0.3"] == 50.0
  # The values where arange's thresholds differ from the literals 0.3 and 0.7:
  # counted against the literal (strictly greater) but not against the threshold.
  for t, key in ((0.7, "0.7"), (0.3, "0.3")):
    above_literal = np.nextafter(t, 1.0)
    assert above_literal > t
    assert metrics.top1_map([above_literal])["mAP"][key] == 0.0
    assert metrics.top1_map([np.nextafter(above_literal, 1.0)])["mAP"][key] == 100.0


def test_top1_map_needs_pairs():
  with pytest.raises(ValueError, match="no pairs"):
    metrics.top1_map([])


# ---------------------------------------------------------------------------
# Result files
# ---------------------------------------------------------------------------


def make_pairs() -> list[Pair]:
  e = [Entry(0, "aa", 1, (10, 30), (2, 6)), Entry(1, "bb", 1, (0, 12), (5, 12)),
       Entry(2, "cc", 2, (4, 9), (0, 5)), Entry(3, "dd", 2, (50, 80), (20, 22))]
  return [Pair(query=e[1], reference=e[0]), Pair(query=e[0], reference=e[1]),
          Pair(query=e[3], reference=e[2]), Pair(query=e[2], reference=e[3])]


def test_score_predictions_writes_both_files(tmp_path):
  ps = make_pairs()
  predicted = np.array([[2, 6], [0, 4], [0, 5], [0, 30]])
  results_path = str(tmp_path / "out" / "test_results.json")  # the directory is created
  res = metrics.score_predictions("test", ps, predicted, results_path,
                                     extra={"method": "prior", "step": 12})
  expected_ious = [1.0, 0.0, 1.0, 2 / 30]
  assert res == {"split": "test", "num_pairs": 4, **metrics.top1_map(expected_ious),
                 "method": "prior", "step": 12}
  with open(results_path) as f:
    assert json.load(f) == res
  pred_path = metrics.predictions_path(results_path)
  assert pred_path == str(tmp_path / "out" / "test_results.predictions.json")
  with open(pred_path) as f:
    written = json.load(f)
  assert set(written) == {"split", "predictions"} and written["split"] == "test"
  rows = written["predictions"]
  assert len(rows) == 4
  assert rows[0] == {
      "entry": 0,
      "query": {"entry": 1, "id": "bb", "segment": [5, 12]},   # absolute span in its video
      "reference": {"entry": 0, "id": "aa", "window": [10, 30]},
      "predicted": [2, 6], "groundtruth": [2, 6], "iou": 1.0,
  }
  assert [r["iou"] for r in rows] == pytest.approx(expected_ious)
  assert [r["query"]["segment"] for r in rows] == [[5, 12], [12, 16], [70, 72], [4, 9]]
  assert sorted(os.listdir(tmp_path / "out")) == ["test_results.json",
                                                  "test_results.predictions.json"]


def test_score_predictions_without_files(tmp_path):
  res = metrics.score_predictions("val", make_pairs(), [[2, 6], [5, 12], [0, 5], [20, 22]])
  assert res["mAP_avg"] == 100.0 and res["num_pairs"] == 4
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("predicted, message", [
    ([[2, 6], [0, 4], [0, 5]], "4 pairs but 3 predictions"),
    ([[2, 6], [0, 13], [0, 5], [0, 1]],
     r"prediction \[0, 13\] for pair 1 \(entry 1 \(video v_bb\)\) lies outside its window "
     r"of length 12"),
    ([[2, 6], [0, 4], [-1, 5], [0, 1]], r"prediction \[-1, 5\] for pair 2 .*v_cc"),
    ([[2, 6], [0, 4], [3, 3], [0, 1]], r"prediction 2 \[3, 3\] is empty or inverted"),
])
def test_score_predictions_errors(tmp_path, predicted, message):
  path = str(tmp_path / "r.json")
  with pytest.raises(ValueError, match=message):
    metrics.score_predictions("test", make_pairs(), np.array(predicted), path)
  assert os.listdir(tmp_path) == []  # nothing half-written


def test_predictions_path():
  assert metrics.predictions_path("a/b/res.json") == "a/b/res.predictions.json"
  assert metrics.predictions_path("res") == "res.predictions.json"


def test_format_table():
  res = metrics.top1_map([0.15, 0.55, 0.95, 0.0])
  perfect = metrics.top1_map([1.0])
  table = metrics.format_table({"random": res, "a rather long method": perfect}, title="Test")
  lines = table.split("\n")
  assert lines[0] == "Test" and len(lines) == 5
  head = lines[1]
  assert head.startswith("top-1 mAP (%)") and head.split()[-6:] == [
      "0.5", "0.6", "0.7", "0.8", "0.9", "avg"]
  assert lines[2] == "-" * len(head)
  assert lines[3].split() == ["random", "50.0", "25.0", "25.0", "25.0", "25.0", "30.0"]
  assert lines[4].split()[-6:] == ["100.0"] * 6
  assert lines[4].startswith("a rather long method ")
  assert len({len(line) for line in lines[1:]}) == 1  # columns aligned
  untitled = metrics.format_table({"x": res, "prior": perfect}).split("\n")
  assert untitled[0].startswith("top-1 mAP (%)") and len(untitled) == 4
  assert len({len(line) for line in untitled}) == 1  # short names: still aligned
  assert untitled[2].index("50.0") == untitled[3].index("100.0") + 1
