"""The benchmark's scoring: temporal IoU and top-1 mAP at fixed thresholds.

As Feng et al. (ECCV 2018) score it: one predicted segment per pair, IoU on
feature indices with exclusive ends, and "top-1 mAP@t" is the percentage of
pairs whose IoU is *strictly* greater than ``t``. The thresholds are
``numpy.arange(0.1, 1.0, 0.1)`` exactly (so 0.3 is 0.30000000000000004);
the reported average is over 0.5 … 0.9.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from vreloc_jax import storage

THRESHOLDS = np.arange(0.1, 1.0, 0.1)
AVERAGE_FROM = 0.5  # the average is over thresholds >= this (0.5 … 0.9)
TABLE_THRESHOLDS = ("0.5", "0.6", "0.7", "0.8", "0.9")


def threshold_key(t: float) -> str:
  """The results-file key of a threshold: '0.1' … '0.9'."""
  return f"{t:.1f}"


def iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
  """Temporal IoU of segments with exclusive ends.

  Args:
    pred: int [N, 2] predicted ``[start, end)``.
    true: int [N, 2] ground-truth ``[start, end)``.

  Returns:
    float64 [N] intersection over union (0 for disjoint segments).

  Raises:
    ValueError: shapes differ or a segment is empty or inverted.
  """
  pred = np.asarray(pred, dtype=np.int64).reshape(-1, 2)
  true = np.asarray(true, dtype=np.int64).reshape(-1, 2)
  if pred.shape != true.shape:
    raise ValueError(f"iou: {pred.shape[0]} predictions for {true.shape[0]} ground truths")
  for name, seg in (("prediction", pred), ("ground truth", true)):
    bad = np.nonzero(seg[:, 1] <= seg[:, 0])[0]
    if bad.size:
      raise ValueError(f"iou: {name} {bad[0]} {seg[bad[0]].tolist()} is empty or inverted")
  inter = np.clip(np.minimum(pred[:, 1], true[:, 1]) - np.maximum(pred[:, 0], true[:, 0]), 0, None)
  union = np.maximum(pred[:, 1], true[:, 1]) - np.minimum(pred[:, 0], true[:, 0])
  return inter / union


def top1_map(ious: Sequence[float] | np.ndarray) -> dict[str, Any]:
  """Top-1 mAP (percent) at every threshold and their average over 0.5…0.9."""
  ious = np.asarray(ious, dtype=np.float64)
  if ious.size == 0:
    raise ValueError("top1_map: no pairs to score")
  per_t = {threshold_key(t): float(100.0 * np.mean(ious > t)) for t in THRESHOLDS}
  avg = float(np.mean([per_t[threshold_key(t)] for t in THRESHOLDS if t >= AVERAGE_FROM - 1e-9]))
  return {"mAP": per_t, "mAP_avg": avg}


def predictions_path(results_path: str) -> str:
  """The predictions file that goes beside a results file."""
  root, _ = os.path.splitext(results_path)
  return root + ".predictions.json"


def score_predictions(split: str, pairs: Sequence[Any], predicted: np.ndarray,
                         results_path: str | None = None,
                         extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Scores one prediction per evaluation pair and writes the two files.

  Args:
    split: the split's name.
    pairs: `vreloc_jax.data.pairs.Pair` list, in the order of ``predicted``.
    predicted: int [N, 2] predicted ``[start, end)`` relative to each pair's
      reference window.
    results_path: if given, the results JSON is written there and the
      predictions JSON beside it (`predictions_path`).
    extra: more fields for the results file (method, checkpoint step, …).

  Returns:
    The results dict ``{"split", "num_pairs", "mAP", "mAP_avg", …}``.
  """
  predicted = np.asarray(predicted, dtype=np.int64).reshape(-1, 2)
  if predicted.shape[0] != len(pairs):
    raise ValueError(f"{len(pairs)} pairs but {predicted.shape[0]} predictions")
  true = np.array([p.reference.segment for p in pairs], dtype=np.int64).reshape(-1, 2)
  lengths = np.array([p.reference.window_length for p in pairs], dtype=np.int64)
  out_of_window = np.nonzero((predicted[:, 0] < 0) | (predicted[:, 1] > lengths))[0]
  if out_of_window.size:
    i = out_of_window[0]
    raise ValueError(f"prediction {predicted[i].tolist()} for pair {i} ({pairs[i].reference.describe()}) "
                     f"lies outside its window of length {lengths[i]}")
  ious = iou(predicted, true)
  results = {"split": split, "num_pairs": len(pairs), **top1_map(ious)}
  if extra:
    results.update(extra)
  if results_path is not None:
    rows = [{
        "entry": p.reference.index,
        "query": {"entry": p.query.index, "id": p.query.video_id,
                  "segment": list(p.query.query_span)},
        "reference": {"entry": p.reference.index, "id": p.reference.video_id,
                      "window": list(p.reference.location)},
        "predicted": predicted[i].tolist(),
        "groundtruth": list(p.reference.segment),
        "iou": float(ious[i]),
    } for i, p in enumerate(pairs)]
    # Predictions first: a results file never points at a missing predictions file.
    storage.write_json(predictions_path(results_path), {"split": split, "predictions": rows})
    storage.write_json(results_path, results)
  return results


def format_table(rows: Mapping[str, Mapping[str, Any]], title: str | None = None) -> str:
  """A plain-text table of top-1 mAP at 0.5…0.9 and the average, one row per method."""
  corner = "top-1 mAP (%)"
  width = max([len(name) for name in rows] + [len(corner)])
  head = f"{corner:<{width}} " + " ".join(f"{t:>6}" for t in TABLE_THRESHOLDS) + f" {'avg':>6}"
  lines = ([title] if title else []) + [head, "-" * len(head)]
  for name, res in rows.items():
    vals = " ".join(f"{res['mAP'][t]:6.1f}" for t in TABLE_THRESHOLDS)
    lines.append(f"{name:<{width}} {vals} {res['mAP_avg']:6.1f}")
  return "\n".join(lines)
