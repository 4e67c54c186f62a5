"""Scoring a model on a split's fixed pairs: one predict loop for training, evaluate and export.

`predict` runs any batch function over the evaluation batches of some pairs: a run's
compiled eval step (`score_split`: val at every evaluation, test at the end,
``vreloc_jax.evaluate``), or an exported model through the loader alone
(`score_export`: no model code, flax or orbax is imported). `score_split` draws the
figures of a few fixed pairs too; `baseline_rows` scores the training-free baselines
beside a run. Results files record what produced them (`results_record`); their key
``supervision`` was named ``config`` before issue 20.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from vreloc_jax import baselines
from vreloc_jax import exported as exported_lib
from vreloc_jax import figures
from vreloc_jax import metrics
from vreloc_jax import storage
from vreloc_jax.data import batching
from vreloc_jax.data import features as features_lib
from vreloc_jax.data import pairs as pairs_lib
from vreloc_jax.data import splits as splits_lib

# A batch function: a local batch (`vreloc_jax.data.batching`) -> the eval step's outputs,
# at least "segments" [batch, 2] and "loss_c" [batch] (and "probs", "attention" to keep).
BatchFunction = Callable[[dict[str, np.ndarray]], dict[str, Any]]


@dataclasses.dataclass
class Predictions:
  """What `predict` gives for the pairs of a split, in pair order.

  Attributes:
    segments: the predicted ``[s, e)`` of every pair, int64 [num_pairs, 2].
    loss_c: each prediction's co-attention loss, float64 [num_pairs].
    kept: for each kept pair index, its outputs over the valid reference steps:
      ``{"probs": [len_ref, 4], "attention": [len_ref, heads]}``.
  """

  segments: np.ndarray
  loss_c: np.ndarray
  kept: dict[int, dict[str, np.ndarray]]


def predict(run_batch: BatchFunction, pairs: Sequence[pairs_lib.Pair],
            store: features_lib.FeatureStore, batch_size: int, query_buckets: Sequence[int],
            reference_buckets: Sequence[int], keep: Sequence[int] = (), process_index: int = 0,
            process_count: int = 1) -> Predictions:
  """Predicts every pair, in evaluation batches of ``batch_size`` (fillers complete the last).

  Args:
    run_batch: the model on one local batch (`BatchFunction`).
    pairs: the pairs, in any order.
    store: their features.
    batch_size: global batch size; query_buckets, reference_buckets: the padded lengths.
    keep: indices of pairs whose per-step outputs are returned too.
    process_index, process_count: this process's slice of each global batch.
  """
  segments = np.zeros((len(pairs), 2), np.int64)
  loss_c = np.zeros((len(pairs),), np.float64)
  kept: dict[int, dict[str, np.ndarray]] = {}
  for indices, local in batching.eval_batches(pairs, store, batch_size, query_buckets,
                                              reference_buckets, process_index, process_count):
    out = run_batch(local)
    real = indices >= 0
    segments[indices[real]] = np.asarray(out["segments"])[real]
    loss_c[indices[real]] = np.asarray(out["loss_c"])[real]
    for row in np.nonzero(np.isin(indices, list(keep)))[0]:
      length = pairs[indices[row]].reference.window_length
      kept[int(indices[row])] = {"probs": np.asarray(out["probs"][row, :length]),
                                 "attention": np.asarray(out["attention"][row, :length])}
  return Predictions(segments, loss_c, kept)


def plotted_pairs(num_pairs: int, count: int) -> list[int]:
  """The fixed pairs drawn at every evaluation: ``count`` evenly spaced indices."""
  count = min(count, num_pairs)
  return sorted({int(i) for i in np.linspace(0, num_pairs - 1, count).round()}) if count else []


def results_record(config: ml_collections.ConfigDict, inference: str, step: int,
                   selection: str) -> dict[str, Any]:
  """What a checkpoint's results file records about what produced it."""
  return {"checkpoint_step": step, "selection": selection, "supervision": config.supervision,
          "variant": config.variant, "inference": inference}


def score_split(runner: Any, params: Any, bench: Any, split: str, results_path: str | None,
                record: dict[str, Any] | None = None, plot_dir: str | None = None
                ) -> dict[str, Any]:
  """Scores a run's parameters on a split's fixed pairs; process 0 writes the files.

  The results hold, besides the mAPs, ``loss_c``: the mean co-attention loss of the
  predictions (`train.eval_step`), an annotation-free measure of their quality. With
  ``plot_dir``, the figures of ``eval.plot_pairs`` fixed pairs (`plotted_pairs`) are
  drawn there (`vreloc_jax.figures`).

  Args:
    runner: the run's `train.Runner`.
    params: its parameters.
    bench: its `vreloc_jax.data.benchmark.Benchmark`.
    split: "val" or "test".
    results_path: the results file (None: none written).
    record: more fields for the results file (`results_record`, or the step).
    plot_dir: where to draw the figures (None: none).
  """
  config = runner.config
  pairs = bench.pairs[split]
  keep = plotted_pairs(len(pairs), config.eval.get("plot_pairs", 0)) if plot_dir else []
  predictions = predict(runner.batch_function(params), pairs, bench.store, config.eval.batch_size,
                        config.data.query_buckets, config.data.reference_buckets, keep,
                        jax.process_index(), jax.process_count())
  if jax.process_index() != 0:
    results_path = None
  results = metrics.score_predictions(
      split, pairs, predictions.segments, results_path,
      extra={"pair_file": bench.pair_files[split], "loss_c": float(predictions.loss_c.mean()),
             **(record or {})})
  if predictions.kept and jax.process_index() == 0:
    ious = metrics.iou(predictions.segments, np.array([p.reference.segment for p in pairs]))
    for index, outputs in predictions.kept.items():
      pair = pairs[index]
      figures.plot_pair(
          storage.join(plot_dir, f"{split}_pair{index}.png"), outputs["probs"],
          predictions.segments[index], groundtruth=pair.reference.segment,
          attention=outputs["attention"], groups=config.model.get("attention_groups"),
          attention_label=runner.family.attention_rows,
          title=f"{split} pair {index}: query {pair.query.describe()}, reference "
                f"{pair.reference.describe()}; IoU {ious[index]:.2f}"
                + (f"; step {record['step']}" if record and "step" in record else ""))
  return results


def baseline_rows(config: ml_collections.ConfigDict, bench: Any, split: str
                  ) -> dict[str, dict[str, Any]]:
  """The training-free baselines' results on a split (``eval.baselines``), for the table."""
  return {method: baselines.score_baseline(method, bench.entries, bench.pairs[split],
                                           bench.store, split=split, seed=config.seed)
          for method in config.eval.baselines}


def score_export(directory: str, split: str = "test", output: str | None = None,
                 data_dir: str | None = None, features: str | None = None,
                 model: exported_lib.ExportedModel | None = None) -> dict[str, Any]:
  """Scores an exported model on a split's fixed pairs, as ``vreloc_jax.evaluate`` scores a run.

  Batched as a run's evaluation is (at the run's ``eval.batch_size``), so the results
  are the checkpoint's bit for bit on the same backend.

  Args:
    directory: the export directory.
    split: "val" or "test".
    output: the results file to write (and its predictions file beside it); None
      writes nothing.
    data_dir: the benchmark directory; by default the one the run trained on
      (model.json's ``config.data.resolved_dir``).
    features: the features file or directory; by default the run's
      ``config.data.features``, else the one found in ``data_dir``.
    model: the loaded model, if the caller has it already.

  Returns:
    The results (`metrics.score_predictions`), with ``loss_c`` (mean over the pairs),
    the checkpoint step and selection, the inference rule, the export directory and
    whether the split file is the one the run recorded.

  Raises:
    ValueError: a bad export, split or data directory.
  """
  if split not in ("val", "test"):
    raise ValueError(f"split must be 'val' or 'test', got {split!r}")
  model = model or exported_lib.load(directory)
  config = model.metadata.get("config", {})
  data = config.get("data", {})
  data_dir = data_dir or data.get("resolved_dir") or data.get("dir")
  if not data_dir or not storage.is_dir(data_dir):
    raise ValueError(f"the benchmark directory {data_dir!r} of {directory} is not here; pass "
                     "the data directory")
  split_file = splits_lib.split_path(data_dir, split)
  entries = splits_lib.load_split(split_file)
  pairs, pair_file = pairs_lib.load_eval_pairs(split_file, entries, split,
                                               seed=int(data.get("pair_seed", 0)))
  store = features_lib.open_features(
      features or data.get("features") or features_lib.find_features(data_dir),
      expected_dim=model.feature_dim)
  store.preload(entries)
  predictions = predict_export(model, pairs, store)
  recorded = model.metadata.get("provenance", {}).get("split_files_sha256", {})
  with storage.open_binary(split_file) as f:
    split_sha = hashlib.sha256(f.read()).hexdigest()
  checkpoint = model.metadata.get("checkpoint", {})
  return metrics.score_predictions(
      split, pairs, predictions.segments, output,
      extra={"pair_file": pair_file, "loss_c": float(predictions.loss_c.mean()),
             "checkpoint_step": checkpoint.get("step"), "selection": checkpoint.get("selection"),
             "supervision": config.get("supervision"), "variant": config.get("variant"),
             "inference": model.inference, "model": os.path.abspath(directory),
             "split_matches_export": (recorded.get(f"{split}.json") == split_sha
                                      if recorded.get(f"{split}.json") else None)})


def predict_export(model: exported_lib.ExportedModel, pairs: Sequence[pairs_lib.Pair],
                   store: features_lib.FeatureStore, batch_size: int | None = None
                   ) -> Predictions:
  """`predict` with an exported model (`vreloc_jax.exported.load`'s), on one device.

  ``batch_size`` defaults to the run's ``eval.batch_size``, which makes the results the
  run's evaluation's bit for bit on the same backend.
  """

  def run_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return model.run(batch["query"], batch["query_mask"], batch["reference"],
                     batch["reference_mask"])

  return predict(run_batch, pairs, store, int(batch_size or model.eval_batch_size),
                 model.query_buckets, model.reference_buckets)
