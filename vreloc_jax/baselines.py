"""Training-free baselines of the paper (Tables 2 and 4), on the fixed evaluation pairs.

  python -m vreloc_jax.baselines --method=frame_level --data_dir=DIR --split=test \\
      --output=/tmp/fl_test.json [--features=FILE] [--seed=0]

Methods (`METHODS`):

* ``random`` (Table 2): a start and an end drawn uniformly among the
  reference window's steps (seeded, one generator for the whole split, pairs
  in order); the prediction is ``[min, max + 1)``, never empty.
* ``stat_prior`` (Table 4): the mean normalized start and end of the
  *training* split's ground truths (0.3267 / 0.6510 on the real benchmark),
  applied to every reference window of length L: ``[round(a * L),
  round(b * L))``, at least one step. Needs no features.
* ``frame_level`` (Feng et al. 2018; Table 2): every query and reference
  feature is L2-normalized; the cosine-similarity matrix ``[Lr, Lq]`` is
  averaged over the query, and each candidate segment of the reference is
  scored by its average similarity to the query. The candidates are all
  segments whose length equals the query's (``min(Lq, Lr)``): with free
  lengths the best *average* would always be a single step. Ties go to the
  earliest start. Vectorized with cumulative sums.

Diagnostics (`DIAGNOSTICS`), not in the paper, used to check that the
synthetic benchmark is learnable and what a model's score means:

* ``whole_reference``: the whole reference window, ``[0, L)``, for every pair:
  what predicting "somewhere in here" scores without finding anything, the
  floor below which a model's long segments are only hedging on length.
* ``frame_level_smoothed``: ``frame_level`` on features averaged over a
  centred window of 5 steps (``smooth_width``).
* ``coattention_search``: the segment (length <= 64, ``max_length``) that
  maximizes the co-attention criterion ``d+ - d-`` of the paper's eqs. 16-18
  (cosine similarity; α = 0.3) on the input features — the quantity the
  weakly supervised model is trained to optimize, searched exhaustively.
* ``coattention_search_query_length``: the same criterion over the segments of
  the query's length only (``min(Lq, Lr)``), the candidates among which the
  weak model's default inference rule (``query_length``) picks.

Any method can run on projected features (``transform``; the command line's
``--project=class_subspace`` uses the synthetic benchmark's true class
subspace, an oracle, and ``--project=transitions`` the features the targets of
``criterion=transitions`` read, `losses.transition_features`).

Evaluation uses the split's deterministic pairs (`pairs.load_eval_pairs`) and
writes the results file (``{"split", "num_pairs", "mAP", "mAP_avg", "method",
…}``, percent) and a predictions file beside it (`metrics.score_predictions`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

from vreloc_jax import cli
from vreloc_jax import losses
from vreloc_jax import metrics
from vreloc_jax import storage
from vreloc_jax.data import pairs as pairs_lib
from vreloc_jax.data import splits as splits_lib
from vreloc_jax.data.features import FeatureStore, find_features, open_features

METHODS = ("random", "stat_prior", "frame_level")
FEATURE_DIAGNOSTICS = ("frame_level_smoothed", "coattention_search",
                       "coattention_search_query_length")
DIAGNOSTICS = ("whole_reference",) + FEATURE_DIAGNOSTICS
BASELINES = METHODS + DIAGNOSTICS  # Every method `predict` runs.
FEATURE_METHODS = ("frame_level",) + FEATURE_DIAGNOSTICS
_EPS = 1e-8
_CHUNK = 32  # Pairs whose features are read (and searched) at once.

Transform = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------
# Feature-free methods.
# ---------------------------------------------------------------------------


def training_prior(train_entries: Sequence[splits_lib.Entry]) -> tuple[float, float]:
  """Mean normalized start and end (``s / L``, ``e / L``) of the training ground truths."""
  if not train_entries:
    raise ValueError("stat_prior: the training split is empty")
  starts = np.array([e.segment[0] / e.window_length for e in train_entries])
  ends = np.array([e.segment[1] / e.window_length for e in train_entries])
  return float(starts.mean()), float(ends.mean())


def predict_stat_prior(window_lengths: np.ndarray, prior: tuple[float, float]) -> np.ndarray:
  """``[round(a L), round(b L))`` per window, at least one step: int [N, 2]."""
  lengths = np.asarray(window_lengths, dtype=np.int64)  # [N]
  start = np.clip(np.rint(prior[0] * lengths).astype(np.int64), 0, lengths - 1)
  end = np.clip(np.rint(prior[1] * lengths).astype(np.int64), start + 1, lengths)
  return np.stack([start, end], axis=1)


def predict_random(window_lengths: np.ndarray, seed: int = 0) -> np.ndarray:
  """Two uniform steps per window, ``[min, max + 1)``: int [N, 2]."""
  lengths = np.asarray(window_lengths, dtype=np.int64)  # [N]
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, lengths[:, None], size=(lengths.shape[0], 2))  # [N, 2]
  return np.stack([draws.min(axis=1), draws.max(axis=1) + 1], axis=1)


# ---------------------------------------------------------------------------
# Feature methods (one pair at a time; all vectorized over positions).
# ---------------------------------------------------------------------------


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def frame_level_segment(query: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
  """Feng et al.'s frame-level baseline for one pair.

  Args:
    query: [Lq, D] query features.
    reference: [Lr, D] reference features.

  Returns:
    ``(s, e)``: the segment of length ``min(Lq, Lr)`` with the highest average
    cosine similarity to the query (earliest on ties).
  """
  if query.shape[0] < 1 or reference.shape[0] < 1:
    raise ValueError(f"frame_level: empty query {query.shape} or reference {reference.shape}")
  # Mean over the query of the similarity matrix [Lr, Lq] = reference · mean normalized query.
  per_step = _normalize(reference) @ _normalize(query).mean(axis=0)  # [Lr]
  length = min(query.shape[0], reference.shape[0])
  cumulative = np.concatenate([[0.0], np.cumsum(per_step)])  # [Lr + 1]
  scores = (cumulative[length:] - cumulative[:-length]) / length  # [Lr - length + 1]
  start = int(np.argmax(scores))
  return start, start + length


def smooth(features: np.ndarray, width: int = 5) -> np.ndarray:
  """Mean over a centred window of ``width`` steps (truncated at the ends): [L, D]."""
  x = np.asarray(features, dtype=np.float64)
  n, half = x.shape[0], width // 2
  cumulative = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])  # [L + 1, D]
  lo = np.clip(np.arange(n) - half, 0, n)
  hi = np.clip(np.arange(n) + width - half, 0, n)
  return (cumulative[hi] - cumulative[lo]) / (hi - lo)[:, None]


def coattention_segments(queries: Sequence[np.ndarray], references: Sequence[np.ndarray],
                         alpha: float = 0.3, max_length: int = 64,
                         query_length: bool = False) -> list[tuple[int, int]]:
  """The segment of each pair maximizing the co-attention criterion (paper eqs. 16-18).

  ``d+ - d-`` with ``d+ = cos(q, r_in)``, ``d- = α cos(q, r_out) + (1 - α) cos(r_in,
  r_out)``, ``q`` the mean query feature and ``r_in`` / ``r_out`` the mean reference
  feature inside / outside the segment: `losses.window_criterion`, the criterion the
  window co-attention objective trains toward, searched exhaustively (the pairs padded
  into one batch). The whole reference is a candidate only when it is a single step
  (the loss always has an outside); when no candidate has an outside (a query at least
  as long as the reference, with ``query_length``), the answer is the whole reference.

  Args:
    queries: [Lq, D] features of each pair's query.
    references: [Lr, D] features of each pair's reference.
    alpha: the loss's α.
    max_length: longest candidate segment.
    query_length: the candidates are the segments of length ``min(Lq, Lr)`` only
      (those of the query-length inference rule and of ``frame_level``), not every
      length up to ``max_length``.

  Returns:
    ``(s, e)`` of each pair, earliest start then shortest on ties.
  """
  query_steps = np.array([len(q) for q in queries])  # [B]
  steps = np.array([len(r) for r in references])  # [B]
  len_query, len_ref, dim = query_steps.max(), steps.max(), references[0].shape[1]
  query = np.zeros((len(queries), len_query, dim), np.float32)  # [B, Lq, D]
  reference = np.zeros((len(references), len_ref, dim), np.float32)  # [B, Lr, D]
  for i, (q, r) in enumerate(zip(queries, references)):
    query[i, :len(q)], reference[i, :len(r)] = q, r
  if query_length:
    windows = np.minimum(query_steps, steps)[:, None]  # [B, 1]
  else:
    windows = np.broadcast_to(np.arange(1, min(max_length, len_ref) + 1),
                              (len(steps), min(max_length, len_ref)))  # [B, K]
  found = np.asarray(losses.criterion_segments(
      query, np.arange(len_query)[None] < query_steps[:, None], reference,
      np.arange(len_ref)[None] < steps[:, None], jnp.asarray(windows, jnp.int32), alpha))
  return [(int(s), int(e)) for s, e in found]


def coattention_segment(query: np.ndarray, reference: np.ndarray, alpha: float = 0.3,
                        max_length: int = 64, query_length: bool = False) -> tuple[int, int]:
  """`coattention_segments` of one pair: query [Lq, D], reference [Lr, D]."""
  return coattention_segments([query], [reference], alpha, max_length, query_length)[0]


def predict_with_features(method: str, pairs: Sequence[pairs_lib.Pair], store: FeatureStore,
                          transform: Transform | None = None, smooth_width: int = 5,
                          alpha: float = 0.3, max_length: int = 64) -> np.ndarray:
  """Predictions of a feature method for every pair: int [N, 2] relative to the window."""
  if method not in FEATURE_METHODS:
    raise ValueError(f"unknown feature method {method!r}; expected one of {FEATURE_METHODS}")
  out = np.zeros((len(pairs), 2), dtype=np.int64)
  for first in range(0, len(pairs), _CHUNK):
    chunk = pairs[first:first + _CHUNK]
    queries = [store.window(p.query.video_id, *p.query.query_span) for p in chunk]  # [Lq, D]
    references = [store.window(p.reference.video_id, *p.reference.location)
                  for p in chunk]  # [Lr, D]
    if transform is not None:
      queries, references = [transform(q) for q in queries], [transform(r) for r in references]
    if method.startswith("coattention_search"):
      found = coattention_segments(queries, references, alpha, max_length,
                                   query_length=method.endswith("query_length"))
    elif method == "frame_level_smoothed":
      found = [frame_level_segment(smooth(q, smooth_width), smooth(r, smooth_width))
               for q, r in zip(queries, references)]
    else:
      found = [frame_level_segment(q, r) for q, r in zip(queries, references)]
    out[first:first + len(chunk)] = found
  return out


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


def predict(method: str, entries: Mapping[str, Sequence[splits_lib.Entry]],
            pairs: Sequence[pairs_lib.Pair], store: FeatureStore | None = None,
            seed: int = 0, transform: Transform | None = None,
            **options) -> tuple[np.ndarray, dict[str, Any]]:
  """One method's predictions for the pairs, and what to record about it.

  Args:
    method: one of `METHODS` or `DIAGNOSTICS`.
    entries: split name → entries; ``stat_prior`` needs ``"train"``.
    pairs: the evaluation pairs.
    store: the features (feature methods only).
    seed: the ``random`` method's seed.
    transform: applied to query and reference features (feature methods).
    **options: ``smooth_width``, ``alpha``, ``max_length`` of the diagnostics.

  Returns:
    int [N, 2] predictions relative to each reference window, and a dict of
    facts for the results file (the method, the prior, the candidates).
  """
  lengths = np.array([p.reference.window_length for p in pairs], dtype=np.int64)
  if method == "random":
    return predict_random(lengths, seed), {"method": method, "seed": seed}
  if method == "whole_reference":
    return np.stack([np.zeros_like(lengths), lengths], axis=1), {"method": method}
  if method == "stat_prior":
    if "train" not in entries:
      raise ValueError("stat_prior needs the training split's entries")
    prior = training_prior(entries["train"])
    return predict_stat_prior(lengths, prior), {"method": method, "prior": list(prior)}
  if method in FEATURE_METHODS:
    if store is None:
      raise ValueError(f"{method} needs features")
    info = {"method": method, "candidates": (
        "all segments of length min(Lq, Lr)"
        if method.startswith("frame_level") or method.endswith("query_length")
        else f"all segments of length <= {options.get('max_length', 64)}")}
    if transform is not None:
      info["transform"] = getattr(transform, "__name__", "custom")
    return predict_with_features(method, pairs, store, transform, **options), info
  raise ValueError(f"unknown method {method!r}; expected one of {BASELINES}")


def score_baseline(method: str, entries: Mapping[str, Sequence[splits_lib.Entry]],
                      pairs: Sequence[pairs_lib.Pair], store: FeatureStore | None = None,
                      split: str = "test", seed: int = 0, results_path: str | None = None,
                      transform: Transform | None = None, **options) -> dict[str, Any]:
  """Scores one method on the pairs; writes results + predictions if ``results_path``.

  Returns:
    ``{"split", "num_pairs", "mAP": {"0.1": …}, "mAP_avg", "method", …}`` (percent).
  """
  predicted, info = predict(method, entries, pairs, store, seed, transform, **options)
  return metrics.score_predictions(split, pairs, predicted, results_path, extra=info)


def run_baseline(method: str, data_dir: str, split: str = "test", features: str | None = None,
                 seed: int = 0, output: str | None = None, pair_seed: int = 0,
                 pair_file: str | None = None, transform: Transform | None = None,
                 **options) -> tuple[dict[str, Any], np.ndarray]:
  """Reads a benchmark directory and runs one method on a split.

  Args:
    method: one of `METHODS` or `DIAGNOSTICS`.
    data_dir: the benchmark directory (split JSONs; features for feature methods).
    split: the evaluated split.
    features: the feature file or directory (default: found in ``data_dir``).
    seed: the ``random`` method's seed.
    output: results JSON path; the predictions are written beside it.
    pair_seed: seed of the evaluation pairs.
    pair_file: an explicit pair file (default: `pairs.load_eval_pairs`'s).
    transform: applied to the features (feature methods).
    **options: see `predict`.

  Returns:
    The results dict and the predictions, int [N, 2] relative to each window,
    in pair order.
  """
  split_file = splits_lib.split_path(data_dir, split)
  entries = {split: splits_lib.load_split(split_file)}
  if method == "stat_prior":
    entries["train"] = splits_lib.load_split(splits_lib.split_path(data_dir, "train"))
  pairs, _ = pairs_lib.load_eval_pairs(split_file, entries[split], split, seed=pair_seed,
                                       pair_file=pair_file)
  store = None
  if method in FEATURE_METHODS:
    store = open_features(features or find_features(data_dir))
    store.preload([e for p in pairs for e in (p.query, p.reference)])
  try:
    predicted, info = predict(method, entries, pairs, store, seed, transform, **options)
    results = metrics.score_predictions(split, pairs, predicted, output, extra=info)
  finally:
    if store is not None:
      store.close()
  return results, predicted


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags (defined only when run as a program: the module is also a library)."""
  flags.DEFINE_enum("method", None, list(BASELINES), "Baseline to run.")
  flags.DEFINE_string("data_dir", None, "Benchmark directory (split JSONs, length.json, features).")
  flags.DEFINE_string("features", None, "Feature HDF5 file or .npy directory (default: in data_dir).")
  flags.DEFINE_enum("split", "test", list(splits_lib.SPLITS), "Split to evaluate.")
  flags.DEFINE_string("output", None, "Results JSON; the predictions go beside it.")
  flags.DEFINE_integer("seed", 0, "Seed of the random baseline.")
  flags.DEFINE_integer("pair_seed", 0, "Seed of the evaluation pairs.")
  flags.DEFINE_enum("project", None, ["class_subspace", "transitions"],
                    "Transform of the features: class_subspace, an oracle projection "
                    "(synthetic benchmarks only), or transitions, the features the targets of "
                    "criterion=transitions read (losses.transition_features).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  if not FLAGS.method or not FLAGS.data_dir:
    raise app.UsageError("--method and --data_dir are required.")
  transform = None
  with cli.one_line_errors("vreloc_jax.baselines"):
    if FLAGS.project == "class_subspace":
      from vreloc_jax.data import synthetic  # pylint: disable=g-import-not-at-top
      basis = synthetic.class_subspace_projector(FLAGS.data_dir)

      def class_subspace(x: np.ndarray) -> np.ndarray:
        return x @ basis

      transform = class_subspace
    elif FLAGS.project == "transitions":

      def transitions(x: np.ndarray) -> np.ndarray:
        return np.asarray(losses.transition_features(x[None], np.ones((1, len(x)), bool))[0])

      transform = transitions
    results, _ = run_baseline(FLAGS.method, FLAGS.data_dir, FLAGS.split, FLAGS.features,
                              FLAGS.seed, FLAGS.output, FLAGS.pair_seed, transform=transform)
  name = FLAGS.method + (f" ({FLAGS.project})" if FLAGS.project else "")
  if "prior" in results:
    print(f"training prior: start {results['prior'][0]:.4f}, end {results['prior'][1]:.4f}")
  print(metrics.format_table({name: results}, title=(
      f"{FLAGS.split} split, {results['num_pairs']} pairs ({storage.absolute(FLAGS.data_dir)})")))
  if FLAGS.output:
    print(f"results: {FLAGS.output}; predictions: {metrics.predictions_path(FLAGS.output)}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "vreloc_jax.baselines")
