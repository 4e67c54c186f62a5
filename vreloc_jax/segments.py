"""Segment search at inference time (paper, section "Inference").

Two searches turn the per-step outputs of the localization predictor into one
predicted segment ``[start, end)`` (end exclusive) per example:

* :func:`search_full` (full supervision): the arg-max over all candidate
 segments ``[s, e]`` of ``log p_start[s] + log p_end[e] + mean(log p_inside)``
 (paper eq. 20, and Feng et al.'s benchmark code, which this module follows by
 default).
* :func:`search_weak` (weak supervision): the longest run of consecutive steps
 whose ``p_inside`` is strictly above its mean over the reference.
* :func:`search_query_length` (weak supervision; an extension, not the
 paper's rule): the window as long as the query with the highest total
 ``p_inside``, the frame-level baseline's rule applied to the model's scores.
* :func:`search_windows` (weak supervision; an extension): the candidate
 window (lengths a few multiples of the query's, :func:`window_lengths`) of
 highest log-odds ``sum(log p_inside - log p_outside)``
 (:func:`window_scores`), the rule of the window co-attention objective
 (`vreloc_jax.losses.window_coattention_loss`), which trains those scores.

Both are written in vectorized ``jax.numpy`` with no Python loop over steps:
they are batched, masked by the true reference lengths, and jit-compatible.
Steps at or beyond a row's length are padding: whatever they hold (including
NaN or inf) never influences the result.

The public functions check their arguments eagerly (shapes, static options and,
when ``lengths`` is concrete, its values) and then call a jitted kernel, so they
can be called directly on numpy arrays or from inside another ``jax.jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "FULL_FORMS",
    "search_full",
    "search_query_length",
    "search_weak",
    "search_windows",
    "window_lengths",
    "window_scores",
]

# 64 feature steps = 1,024 frames, the paper's and the benchmark's limit.
DEFAULT_MAX_LENGTH = 64

# "benchmark": Feng et al.'s code, the inside mean excludes the end step.
# "paper": eq. 20, the inside mean covers [s, e] inclusive.
FULL_FORMS = ("benchmark", "paper")

# log p = -inf (p == 0, e.g. jnp.log of an underflowed softmax) is clamped to
# this value so that every sum stays finite (no inf - inf = NaN); such a
# candidate still ranks below every candidate made of finite log probs.
_LOG_FLOOR = -1e30

# float32 machine epsilon (2**-23), the unit of the tie tolerance of search_full.
_FLOAT32_EPS = float(np.finfo(np.float32).eps)

# Output columns of the log_probs channel axis.
_START, _END, _INSIDE, _OUTSIDE = 0, 1, 2, 3


def search_full(
    log_probs: jax.Array | np.ndarray,
    lengths: jax.Array | np.ndarray,
    max_length: int = DEFAULT_MAX_LENGTH,
    form: str = "benchmark",
) -> jax.Array:
  """Finds the best-scoring segment under full supervision.

  Candidates are all ``[s, e]`` with ``0 <= s <= e < length`` and
  ``e - s < max_length``. Each is scored in log space as
  ``log p_start[s] + log p_end[e] + mean_inside(s, e)`` where, for
  ``form="benchmark"`` (Feng et al.'s code), ``mean_inside`` is the mean of
  ``log p_inside[s:e]`` (end step excluded; ``log p_inside[s]`` for a one-step
  segment) and, for ``form="paper"`` (eq. 20), the mean over ``[s, e]``
  inclusive.

  Ties follow the benchmark's order: among equal best scores the smallest
  ``e - s`` wins, then the smallest ``s`` (a first-occurrence arg-max over the
  scores laid out as ``[e - s, s]``, length offset major). "Equal" means
  equal up to float32 rounding: mathematically equal scores may differ in
  their last bits after float32 arithmetic (e.g. the means ``-2.5 / 3`` and
  ``-7.5 / 9``, which XLA on CPU computes as ``x * fl(1/n)``), so every
  candidate whose score is within ``(K + 8) * eps32 * |best|`` of the best
  (``K = min(max_length, len_ref)``, ``eps32 = 2**-23``; about
  ``8.6e-6 * |best|`` for ``K = 64``) counts as tied with it. That bound
  covers the rounding error of two scores, so exact ties (quantized or
  all-equal probabilities) are broken in the benchmark's order whatever the
  backend's rounding; two distinct scores that close are indistinguishable
  in float32 anyway.

  Precision: the inside sums are not differences of one prefix sum along
  the row (their error would grow with the row's total, not the window's).
  For each start ``s`` a float32 cumulative sum along the length offset
  gives the window sums directly (at most ``K`` terms), and the score is
  ``(log p_start[s] + log p_end[e]) + window_sum / n_terms``. Every term is
  <= 0 for log probabilities, so nothing cancels and each score carries a
  relative error of at most about ``(K + 2) * 2**-24``. (A per-row offset
  was considered and dropped: it cannot change a result beyond the tie
  tolerance.)

  Memory and time are ``O(batch * K * len_ref)``.

  Args:
   log_probs: float ``[batch, len_ref, 4]`` log probabilities (<= 0, which
    the precision and tie analysis above relies on), channels (start, end,
    inside, outside); only the first three are used. Valid steps should not
    hold NaN; ``-inf`` is allowed (clamped to -1e30).
   lengths: int ``[batch]`` true reference lengths, ``0 <= length <=
    len_ref``. A row of length 0 (e.g. a filler example) yields ``[0, 0)``.
   max_length: static; the longest segment allowed, in steps (>= 1).
   form: static; ``"benchmark"`` or ``"paper"``.

  Returns:
   int32 ``[batch, 2]`` predictions ``[s, e + 1)`` (exclusive end).

  Raises:
   ValueError: on a bad shape, option or (concrete) length.
  """
  log_probs, lengths = _as_array(log_probs), _as_array(lengths)
  if form not in FULL_FORMS:
    raise ValueError(f"search_full: form must be one of {FULL_FORMS} (static), got {form!r}")
  is_int = isinstance(max_length, (int, np.integer)) and not isinstance(max_length, bool)
  if not is_int or max_length < 1:
    raise ValueError(f"search_full: max_length must be a static int >= 1, got {max_length!r}")
  if log_probs.ndim != 3 or log_probs.shape[-1] != 4:
    raise ValueError("search_full: log_probs must have shape [batch, len_ref, 4], "
                     f"got {log_probs.shape}")
  _check_lengths("search_full", lengths, log_probs.shape[0], log_probs.shape[1])
  return _search_full(log_probs, lengths, max_length=int(max_length), form=form)


def search_weak(
    p_inside: jax.Array | np.ndarray,
    lengths: jax.Array | np.ndarray,
) -> jax.Array:
  """Finds the longest run of above-average ``p_inside`` (weak supervision).

  The threshold of a row is the mean of ``p_inside`` over its valid steps;
  the prediction is the longest run of consecutive valid steps with
  ``p_inside > threshold`` (strict), the earliest such run on ties. If no
  step is above the threshold (e.g. all values equal, or a length-1 row),
  the whole valid reference ``[0, length)`` is predicted. The mean is taken
  in float32 and compared without tolerance: exact for values on a coarse
  grid such as multiples of 1/8; otherwise a step within float32 rounding of
  the mean may fall either side. (A row of equal values predicts the whole
  reference either way: all steps above, or none.)

  Args:
   p_inside: float ``[batch, len_ref]`` probabilities of "inside"
    (probabilities or any monotone score; the mean is taken as given).
   lengths: int ``[batch]`` true reference lengths, ``0 <= length <=
    len_ref``. A row of length 0 yields ``[0, 0)``.

  Returns:
   int32 ``[batch, 2]`` predictions ``[start, end)`` (exclusive end).

  Raises:
   ValueError: on a bad shape or (concrete) length.
  """
  p_inside, lengths = _as_array(p_inside), _as_array(lengths)
  if p_inside.ndim != 2:
    raise ValueError(
        f"search_weak: p_inside must have shape [batch, len_ref], got {p_inside.shape}")
  _check_lengths("search_weak", lengths, p_inside.shape[0], p_inside.shape[1])
  return _search_weak(p_inside, lengths)


def search_query_length(
    p_inside: jax.Array | np.ndarray,
    lengths: jax.Array | np.ndarray,
    query_lengths: jax.Array | np.ndarray,
) -> jax.Array:
  """Finds the query-long window of highest ``p_inside`` (weak supervision, extension).

  Not the paper's rule (`search_weak` is). The prediction of a row is the
  window of ``n = min(query length, reference length)`` steps (at least 1)
  whose ``p_inside`` sum is highest, the earliest on ties: what the
  frame-level baseline does with raw-feature similarities, done with the
  model's scores. It reads no annotation (the query's length is an input),
  and unlike the longest run above the mean it does not shrink when the
  co-attention objective concentrates ``p_inside`` on the part of the action
  that best matches the query (see README, "Results").

  Args:
   p_inside: float ``[batch, len_ref]`` probabilities of "inside" (or any score).
   lengths: int ``[batch]`` true reference lengths, ``0 <= length <= len_ref``.
    A row of length 0 yields ``[0, 0)``.
   query_lengths: int ``[batch]`` true query lengths.

  Returns:
   int32 ``[batch, 2]`` predictions ``[start, end)`` (exclusive end).

  Raises:
   ValueError: on a bad shape or (concrete) length.
  """
  p_inside, lengths = _as_array(p_inside), _as_array(lengths)
  query_lengths = _as_array(query_lengths)
  if p_inside.ndim != 2:
    raise ValueError("search_query_length: p_inside must have shape [batch, len_ref], "
                     f"got {p_inside.shape}")
  _check_lengths("search_query_length", lengths, p_inside.shape[0], p_inside.shape[1])
  _check_query_lengths("search_query_length", query_lengths, lengths)
  return _search_query_length(p_inside, lengths, query_lengths)


def window_lengths(query_lengths: jax.Array, lengths: jax.Array,
                   scales: tuple[float, ...]) -> jax.Array:
  """The candidate window lengths of each row: ``round(scale * query length)``.

  Args:
   query_lengths: int ``[batch]`` true query lengths.
   lengths: int ``[batch]`` true reference lengths.
   scales: static multiples of the query length (``(1.0,)``: the query's length only).

  Returns:
   int32 ``[batch, len(scales)]``, each clipped to ``[1, max(length, 1)]``.
  """
  scale = jnp.asarray(scales, jnp.float32)[None, :]  # [1, K]
  n = jnp.round(query_lengths.astype(jnp.float32)[:, None] * scale).astype(jnp.int32)
  return jnp.clip(n, 1, jnp.maximum(lengths.astype(jnp.int32), 1)[:, None])  # [batch, K]


def window_scores(log_probs: jax.Array, lengths: jax.Array,
                  windows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Log-odds of each candidate window: ``sum over [s, s + n) of log p_in - log p_out``.

  The log-likelihood ratio of "inside on the window, outside elsewhere" against
  "outside everywhere" under the per-step 4-way softmax, so the model's
  distribution over windows is ``softmax(scores)`` over the valid candidates.

  Args:
   log_probs: float ``[batch, len_ref, 4]``; channels (start, end, inside, outside).
   lengths: int ``[batch]`` true reference lengths (traced values are clipped).
   windows: int ``[batch, K]`` window lengths (`window_lengths`).

  Returns:
   ``scores`` float32 ``[batch, len_ref, K]`` (entry ``(s, k)`` is the window
   ``[s, s + windows[:, k])``; 0 where invalid) and ``valid`` bool ``[batch,
   len_ref, K]``: the window lies within the row's length.
  """
  len_ref = log_probs.shape[1]
  lengths = jnp.clip(lengths.astype(jnp.int32), 0, len_ref)  # [batch]
  positions = jnp.arange(len_ref, dtype=jnp.int32)  # [len_ref]
  step_mask = positions[None, :] < lengths[:, None]  # [batch, len_ref]
  log_probs = jnp.maximum(log_probs.astype(jnp.float32), _LOG_FLOOR)
  odds = jnp.where(step_mask, log_probs[..., _INSIDE] - log_probs[..., _OUTSIDE], 0.0)
  cumulative = jnp.pad(jnp.cumsum(odds, axis=1), ((0, 0), (1, 0)))  # [batch, len_ref + 1]
  ends = positions[None, :, None] + windows[:, None, :]  # [batch, len_ref, K]
  valid = (ends <= lengths[:, None, None]) & (lengths[:, None, None] > 0)
  ends = jnp.minimum(ends, len_ref)
  total = jnp.take_along_axis(cumulative[:, :, None], ends, axis=1)  # [batch, len_ref, K]
  scores = total - cumulative[:, :-1, None]
  return jnp.where(valid, scores, 0.0), valid


def search_windows(log_probs: jax.Array | np.ndarray, lengths: jax.Array | np.ndarray,
                   query_lengths: jax.Array | np.ndarray,
                   scales: tuple[float, ...] = (1.0,)) -> jax.Array:
  """Finds the candidate window of highest log-odds (`window_scores`; an extension).

  Candidates are the windows of ``round(scale * query length)`` steps for each
  scale (`window_lengths`); the earliest start, then the first scale, wins
  ties. It reads no annotation: the query's length is an input.

  Args:
   log_probs: float ``[batch, len_ref, 4]`` log probabilities.
   lengths: int ``[batch]`` true reference lengths; a row of length 0 yields ``[0, 0)``.
   query_lengths: int ``[batch]`` true query lengths.
   scales: static multiples of the query length.

  Returns:
   int32 ``[batch, 2]`` predictions ``[start, end)`` (exclusive end).
  """
  log_probs, lengths = _as_array(log_probs), _as_array(lengths)
  query_lengths = _as_array(query_lengths)
  if log_probs.ndim != 3 or log_probs.shape[-1] != 4:
    raise ValueError("search_windows: log_probs must have shape [batch, len_ref, 4], "
                     f"got {log_probs.shape}")
  _check_lengths("search_windows", lengths, log_probs.shape[0], log_probs.shape[1])
  _check_query_lengths("search_windows", query_lengths, lengths)
  scales = tuple(float(x) for x in scales)
  if not scales or min(scales) <= 0:
    raise ValueError(f"search_windows: scales must be positive numbers, got {scales}")
  return _search_windows(log_probs, lengths, query_lengths, scales=scales)


@functools.partial(jax.jit, static_argnames=("scales",))
def _search_windows(log_probs: jax.Array, lengths: jax.Array, query_lengths: jax.Array, *,
                    scales: tuple[float, ...]) -> jax.Array:
  """Jitted kernel of :func:`search_windows` (arguments already checked)."""
  len_ref = log_probs.shape[1]
  lengths = jnp.clip(lengths.astype(jnp.int32), 0, len_ref)  # [batch]
  windows = window_lengths(query_lengths, lengths, scales)  # [batch, K]
  scores, valid = window_scores(log_probs, lengths, windows)  # [batch, len_ref, K]
  flat = jnp.where(valid, scores, -jnp.inf).reshape(scores.shape[0], -1)  # [batch, len_ref * K]
  best = jnp.argmax(flat, axis=1).astype(jnp.int32)  # [batch]
  start, k = best // len(scales), best % len(scales)
  end = start + jnp.take_along_axis(windows, k[:, None], axis=1)[:, 0]
  prediction = jnp.stack([start, end], axis=1)  # [batch, 2]
  return jnp.where(lengths[:, None] > 0, prediction, 0).astype(jnp.int32)


def _as_array(value) -> jax.Array | np.ndarray:
  """Keeps jax arrays (and tracers) and numpy arrays; turns lists and scalars into numpy."""
  return value if isinstance(value, (jax.Array, np.ndarray)) else np.asarray(value)


def _check_query_lengths(caller: str, query_lengths, lengths) -> None:
  """Validates that ``query_lengths`` are integers of the shape of ``lengths``."""
  if query_lengths.shape != lengths.shape or not jnp.issubdtype(query_lengths.dtype, jnp.integer):
    raise ValueError(f"{caller}: query_lengths must be integers of shape "
                     f"{lengths.shape}, got {query_lengths.dtype} {query_lengths.shape}")


def _check_lengths(caller: str, lengths, batch: int, len_ref: int) -> None:
  """Validates the shape of ``lengths`` and, when concrete, its values."""
  if lengths.shape != (batch,):
    raise ValueError(f"{caller}: lengths must have shape [{batch}], got {lengths.shape}")
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(f"{caller}: lengths must be integers, got dtype {lengths.dtype}")
  if isinstance(lengths, jax.core.Tracer):
    return  # Inside a trace the kernel clips to [0, len_ref] instead.
  values = np.asarray(lengths)
  bad = np.flatnonzero((values < 0) | (values > len_ref))
  if bad.size:
    row = int(bad[0])
    raise ValueError(f"{caller}: lengths must lie in [0, {len_ref}] (the padded length); "
                     f"row {row} has length {int(values[row])} ({bad.size} bad rows)")


@functools.partial(jax.jit, static_argnames=("max_length", "form"))
def _search_full(log_probs: jax.Array, lengths: jax.Array, *, max_length: int,
                 form: str) -> jax.Array:
  """Jitted kernel of :func:`search_full` (arguments already checked)."""
  len_ref = log_probs.shape[1]
  # K: candidate length offsets e - s = 0 .. K-1 (min_dim: len_ref may be symbolic, in
  # `jax.export`).
  n_offsets = jax.core.min_dim(max_length, len_ref)
  lengths = jnp.clip(lengths.astype(jnp.int32), 0, len_ref)  # [batch]
  positions = jnp.arange(len_ref, dtype=jnp.int32)  # [len_ref]
  step_mask = positions[None, :] < lengths[:, None]  # [batch, len_ref]

  # Zero the padding first so that NaN/inf there cannot leak into any sum.
  log_probs = jnp.maximum(log_probs.astype(jnp.float32), _LOG_FLOOR)
  log_probs = jnp.where(step_mask[:, :, None], log_probs, 0.0)  # [batch, len_ref, 4]
  log_start = log_probs[:, :, _START]  # [batch, len_ref]
  log_end = log_probs[:, :, _END]  # [batch, len_ref]
  log_inside = log_probs[:, :, _INSIDE]  # [batch, len_ref]

  # Candidate grid, offset major: window_steps[k, s] = s + k = e.
  offsets = jnp.arange(n_offsets, dtype=jnp.int32)  # [K]
  window_steps = offsets[:, None] + positions[None, :]  # [K, len_ref]
  pad = ((0, 0), (0, n_offsets))  # Steps past len_ref read zeros; such candidates are masked.
  end_at = jnp.pad(log_end, pad)[:, window_steps]  # [batch, K, len_ref]: log p_end[s + k]
  inside_at = jnp.pad(log_inside, pad)[:, window_steps]  # [batch, K, len_ref]: log p_in[s + k]

  # Window sums: a cumulative sum along the offset, per start (at most K terms).
  inside_sum = jnp.cumsum(inside_at, axis=1)  # [batch, K, len_ref]: steps s .. s + k
  if form == "benchmark":
    # Steps s .. e - 1 (k terms), or just s for a one-step segment.
    inside_sum = jnp.concatenate([inside_sum[:, :1], inside_sum[:, :-1]], axis=1)
    n_terms = jnp.maximum(offsets, 1)  # [K]
  else:
    n_terms = offsets + 1  # [K]: steps s .. e
  n_terms = n_terms.astype(jnp.float32)[None, :, None]  # [1, K, 1]
  score = (log_start[:, None, :] + end_at) + inside_sum / n_terms  # [batch, K, len_ref]

  candidate_mask = window_steps[None, :, :] < lengths[:, None, None]  # [batch, K, len_ref]
  score = jnp.where(candidate_mask, score, -jnp.inf)
  score = score.reshape(score.shape[0], -1)  # [batch, K * len_ref]

  # First candidate (offset major) whose score equals the best up to float32 rounding.
  best = jnp.max(score, axis=1, keepdims=True)  # [batch, 1]
  tolerance = (n_offsets + 8) * _FLOAT32_EPS * jnp.abs(best)  # [batch, 1]
  top_mask = score >= best - tolerance  # [batch, K * len_ref]
  flat_best = jnp.argmax(top_mask, axis=1).astype(jnp.int32)  # [batch]
  offset = flat_best // len_ref  # [batch]: e - s
  start = flat_best % len_ref  # [batch]
  prediction = jnp.stack([start, start + offset + 1], axis=1)  # [batch, 2]
  return jnp.where(lengths[:, None] > 0, prediction, 0).astype(jnp.int32)


@jax.jit
def _search_weak(p_inside: jax.Array, lengths: jax.Array) -> jax.Array:
  """Jitted kernel of :func:`search_weak` (arguments already checked)."""
  len_ref = p_inside.shape[1]
  lengths = jnp.clip(lengths.astype(jnp.int32), 0, len_ref)  # [batch]
  positions = jnp.arange(len_ref, dtype=jnp.int32)  # [len_ref]
  step_mask = positions[None, :] < lengths[:, None]  # [batch, len_ref]
  p_inside = jnp.where(step_mask, p_inside.astype(jnp.float32), 0.0)  # [batch, len_ref]

  # Threshold = mean over the valid steps (padding is zero here).
  n_valid = jnp.maximum(lengths, 1).astype(jnp.float32)  # [batch]
  threshold = jnp.sum(p_inside, axis=1) / n_valid  # [batch]
  above_mask = step_mask & (p_inside > threshold[:, None])  # [batch, len_ref]

  # Run length ending at each step: the run starts right after the last step
  # at or before it that is not above (a running maximum of break positions).
  breaks = jnp.where(above_mask, 0, positions[None, :] + 1)  # [batch, len_ref]
  run_start = jax.lax.cummax(breaks, axis=1)  # [batch, len_ref]
  run_length = jnp.where(above_mask, positions[None, :] - run_start + 1, 0)  # [batch, len_ref]

  # The first step holding the longest run length ends the earliest longest run.
  last = jnp.argmax(run_length, axis=1).astype(jnp.int32)  # [batch]
  longest = jnp.take_along_axis(run_length, last[:, None], axis=1)[:, 0]  # [batch]
  run = jnp.stack([last - longest + 1, last + 1], axis=1)  # [batch, 2]
  whole = jnp.stack([jnp.zeros_like(lengths), lengths], axis=1)  # [batch, 2]
  return jnp.where(longest[:, None] > 0, run, whole).astype(jnp.int32)


@jax.jit
def _search_query_length(p_inside: jax.Array, lengths: jax.Array,
                         query_lengths: jax.Array) -> jax.Array:
  """Jitted kernel of :func:`search_query_length` (arguments already checked)."""
  len_ref = p_inside.shape[1]
  lengths = jnp.clip(lengths.astype(jnp.int32), 0, len_ref)  # [batch]
  window = jnp.clip(query_lengths.astype(jnp.int32), 1, jnp.maximum(lengths, 1))  # [batch]
  positions = jnp.arange(len_ref, dtype=jnp.int32)  # [len_ref]
  step_mask = positions[None, :] < lengths[:, None]  # [batch, len_ref]
  p_inside = jnp.where(step_mask, p_inside.astype(jnp.float32), 0.0)  # [batch, len_ref]
  cumulative = jnp.pad(jnp.cumsum(p_inside, axis=1), ((0, 0), (1, 0)))  # [batch, len_ref + 1]
  ends = jnp.minimum(positions[None, :] + window[:, None], len_ref)  # [batch, len_ref]
  score = (jnp.take_along_axis(cumulative, ends, axis=1)
           - cumulative[:, :-1])  # [batch, len_ref]: sum over [s, s + n)
  start_mask = positions[None, :] + window[:, None] <= lengths[:, None]  # [batch, len_ref]
  start = jnp.argmax(jnp.where(start_mask, score, -jnp.inf), axis=1).astype(jnp.int32)
  prediction = jnp.stack([start, start + window], axis=1)  # [batch, 2]
  return jnp.where(lengths[:, None] > 0, prediction, 0).astype(jnp.int32)
