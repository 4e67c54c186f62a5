"""Tests of vreloc_jax.segments against plain reference searches.

The references below are written for clarity (Python loops over rows and
candidate lengths, float64 arithmetic) and share no code with the jnp kernels.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreloc_jax import segments

PADDED_LENGTH = 160  # > 2 * 64, so rows longer than max_length are common.
GARBAGE = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 5.0], np.float32)

# ----------------------------------------------------------------------------
# Plain references.
# ----------------------------------------------------------------------------


def full_scores_reference(row: np.ndarray, length: int, max_length: int, form: str) -> np.ndarray:
  """All candidate scores of one row in float64, laid out [e - s, s] (-inf = no candidate).

  Inside sums are differences of a float64 prefix sum: exact for the quantized
  inputs below (multiples of 1/2) and accurate to ~1e-13 for the others.
  """
  log_start = row[:length, 0].astype(np.float64)
  log_end = row[:length, 1].astype(np.float64)
  log_inside = row[:length, 2].astype(np.float64)
  prefix = np.concatenate([[0.0], np.cumsum(log_inside)])  # prefix[i] = sum of steps < i
  scores = np.full((max_length, length), -np.inf)
  for offset in range(min(max_length, length)):
    n_terms = max(offset, 1) if form == "benchmark" else offset + 1
    starts = np.arange(length - offset)
    inside_mean = (prefix[starts + n_terms] - prefix[starts]) / n_terms
    scores[offset, starts] = log_start[starts] + log_end[starts + offset] + inside_mean
  return scores


def first_best(scores: np.ndarray, tie_tolerance: float = 0.0) -> list[int]:
  """First candidate (offset major, then start) within tie_tolerance of the best score."""
  flat = int(np.argmax(scores.ravel() >= scores.max() - tie_tolerance))
  offset, start = divmod(flat, scores.shape[1])
  return [start, start + offset + 1]


def weak_reference(p_inside: np.ndarray, length: int) -> list[int]:
  """Longest run of steps strictly above the row mean (earliest on ties), else the whole row."""
  if length == 0:
    return [0, 0]
  values = [float(v) for v in p_inside[:length]]
  threshold = math.fsum(values) / length
  best_start, best_length, run_start = 0, 0, None
  for step in range(length + 1):
    if step < length and values[step] > threshold:
      if run_start is None:
        run_start = step
    elif run_start is not None:
      if step - run_start > best_length:
        best_start, best_length = run_start, step - run_start
      run_start = None
  if best_length == 0:
    return [0, length]
  return [best_start, best_start + best_length]


# ----------------------------------------------------------------------------
# Random inputs.
# ----------------------------------------------------------------------------


def random_lengths(rng: np.random.Generator,
                   batch: int,
                   padded_length: int = PADDED_LENGTH) -> np.ndarray:
  """Many length-1 rows, short rows, rows around 64 and long rows up to the padded length."""
  kind = rng.integers(0, 5, size=batch)
  lengths = np.select(
      [kind == 0, kind == 1, kind == 2, kind == 3],
      [
          np.ones(batch, np.int64),
          rng.integers(2, 64, size=batch),
          rng.integers(62, 67, size=batch),
          np.full(batch, padded_length),
      ],
      rng.integers(64, padded_length + 1, size=batch),
  )
  return lengths.astype(np.int32)


def fill_padding(rng: np.random.Generator, values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Writes garbage (NaN, inf, huge, attractive values) into every padded step."""
  values = values.copy()
  padding = np.arange(values.shape[1])[None, :] >= lengths[:, None]
  garbage = GARBAGE[rng.integers(0, len(GARBAGE), size=values.shape)]
  values[padding] = garbage[padding]
  return values


def random_log_probs(rng: np.random.Generator, batch: int, lengths: np.ndarray) -> np.ndarray:
  """log_softmax of random logits, float32 [batch, PADDED_LENGTH, 4], garbage in the padding."""
  scale = rng.uniform(0.5, 4.0, size=(batch, 1, 1))
  logits = rng.normal(size=(batch, PADDED_LENGTH, 4)) * scale
  log_probs = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
  return fill_padding(rng, log_probs.astype(np.float32), lengths)


# ----------------------------------------------------------------------------
# search_full.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", segments.FULL_FORMS)
def test_full_matches_reference_on_random_rows(form):
  rng = np.random.default_rng(1 if form == "benchmark" else 2)
  n_rows, n_ambiguous = 0, 0
  for _ in range(2):
    batch = 1000
    lengths = random_lengths(rng, batch)
    log_probs = random_log_probs(rng, batch, lengths)
    predicted = np.asarray(segments.search_full(log_probs, lengths, 64, form))
    assert predicted.dtype == np.int32 and predicted.shape == (batch, 2)
    for row in range(batch):
      scores = full_scores_reference(log_probs[row], int(lengths[row]), 64, form)
      expected = first_best(scores)
      best = scores.max()
      margin = 1e-4 * (1.0 + abs(best))
      runner_up = np.partition(scores.ravel(), -2)[-2] if scores.size > 1 else -np.inf
      start, end = predicted[row]
      assert 0 <= start < end <= lengths[row] and end - start <= 64, (row, predicted[row])
      if best - runner_up > margin:
        assert list(predicted[row]) == expected, (row, lengths[row], expected)
      else:  # Two candidates within float32 noise: either is acceptable.
        n_ambiguous += 1
        assert scores[end - start - 1, start] >= best - margin
      n_rows += 1
  assert n_ambiguous < 0.02 * n_rows, n_ambiguous


@pytest.mark.parametrize("form", segments.FULL_FORMS)
@pytest.mark.parametrize("value_set", [(0.0, -0.5, -1.0, -2.0), (-1.0, -2.0), (-0.5,)])
def test_full_breaks_exact_ties_in_benchmark_order(form, value_set):
  # Values are multiples of 1/2, so float64 scores are exact to ~1e-15 while
  # two distinct scores differ by at least 1 / (2 * 64 * 63): a 1e-9 tolerance
  # in the reference finds exactly the mathematical ties.
  rng = np.random.default_rng(len(value_set) + (10 if form == "paper" else 0))
  batch, padded_length = 500, 96
  lengths = random_lengths(rng, batch, padded_length)
  values = np.asarray(value_set, np.float32)
  log_probs = values[rng.integers(0, len(values), size=(batch, padded_length, 4))]
  log_probs = fill_padding(rng, log_probs, lengths)
  predicted = np.asarray(segments.search_full(log_probs, lengths, 64, form))
  for row in range(batch):
    scores = full_scores_reference(log_probs[row], int(lengths[row]), 64, form)
    expected = first_best(scores, tie_tolerance=1e-9)
    assert list(predicted[row]) == expected, (row, lengths[row], predicted[row], expected)


@pytest.mark.parametrize("form", segments.FULL_FORMS)
def test_full_all_equal_probabilities_pick_first_one_step_segment(form):
  lengths = np.array([1, 2, 7, 64, 65, 100], np.int32)
  for value in (np.log(0.25), np.log(0.7), 0.0, -3.3):
    log_probs = np.full((len(lengths), 100, 4), value, np.float32)
    predicted = np.asarray(segments.search_full(log_probs, lengths, 64, form))
    np.testing.assert_array_equal(predicted, [[0, 1]] * len(lengths))


def _rows(*rows):
  """Stacks rows of (start, end, inside) log probs into [batch, len, 4] with outside = 0."""
  out = np.zeros((len(rows), max(len(r[0]) for r in rows), 4), np.float32)
  for i, (log_start, log_end, log_inside) in enumerate(rows):
    out[i, :len(log_start), 0] = log_start
    out[i, :len(log_end), 1] = log_end
    out[i, :len(log_inside), 2] = log_inside
  return out


def assert_full(log_probs, lengths, expected, **kwargs):
  np.testing.assert_array_equal(segments.search_full(log_probs, lengths, **kwargs), expected)


def test_full_hand_computed_cases():
  bad = -5.0
  # Clear winner: start at 1, end at 3 → [1, 4).
  clear = ([bad, 0, bad, bad, bad], [bad, bad, bad, 0, bad], [bad, 0, 0, 0, bad])
  # Tie between [3, 3] (offset 0) and [2, 3] (offset 1): the shorter wins → [3, 4).
  offset_tie = ([bad, bad, 0, 0, bad], [bad, bad, bad, 0, bad], [bad, bad, 0, 0, bad])
  # Tie between [1, 2] and [3, 4] (same offset, both score 0): the earlier wins → [1, 3).
  start_tie = ([bad, 0, bad, 0, bad], [bad, bad, 0, bad, 0], [bad, 0, 0, 0, 0])
  log_probs = _rows(clear, offset_tie, start_tie)
  lengths = np.array([5, 5, 5], np.int32)
  for form in segments.FULL_FORMS:
    predicted = np.asarray(segments.search_full(log_probs, lengths, 64, form))
    np.testing.assert_array_equal(predicted, [[1, 4], [3, 4], [1, 3]])


def test_full_tie_that_float32_rounding_splits():
  # [0, 3] and [0, 9] both score 0 + 0 + mean = -5/6 exactly (benchmark form:
  # -2.5 / 3 and -7.5 / 9), but float32 arithmetic (XLA turns x / 3 into
  # x * fl(1/3)) gives them different last bits; the shorter must still win.
  log_inside = [-1, -1, -0.5, -1, 0, -2, -0.5, -1, -0.5, -1]
  log_probs = _rows(([0] + [-10] * 9, [-10, -10, -10, 0, -10, -10, -10, -10, -10, 0], log_inside))
  lengths = np.array([10], np.int32)
  assert_full(log_probs, lengths, [[0, 4]], form="benchmark")


def test_full_forms_differ_on_the_end_step():
  # benchmark: [0,1] scores -1 + li[0] = -1 and [0,2] scores -1 + mean(0, -3) = -2.5 → [0, 2).
  # paper:     [0,1] scores -1 + mean(0, -3) = -2.5 and [0,2] -1 + mean(0, -3, 0) = -2 → [0, 3).
  log_probs = _rows(([0, -10, -10, -10], [-10, -1, -1, -10], [0, -3, 0, 0]))
  lengths = np.array([4], np.int32)
  assert_full(log_probs, lengths, [[0, 2]], form="benchmark")
  assert_full(log_probs, lengths, [[0, 3]], form="paper")


def test_full_max_length_limits_the_segment():
  log_probs = _rows(([0] + [-5] * 9, [-5] * 9 + [0], [0] * 10))
  lengths = np.array([10], np.int32)
  assert_full(log_probs, lengths, [[0, 10]], max_length=10)
  # With at most 9 steps the best score is -5, first reached by [0, 0].
  assert_full(log_probs, lengths, [[0, 1]], max_length=9)
  assert_full(log_probs, lengths, [[0, 1]], max_length=1)


def test_full_zero_probabilities_do_not_produce_nan():
  log_probs = _rows(([0, -3, -3, -3], [-3, -1, -3, -0.5], [0, -np.inf, 0, 0]))
  lengths = np.array([4], np.int32)
  # benchmark: [0, 1] = 0 - 1 + li[0] = -1 is best; every mean over step 1 is -inf.
  assert_full(log_probs, lengths, [[0, 2]], form="benchmark")
  # paper: [0, 0] = -3 beats [2, 3] = [3, 3] = -3.5.
  assert_full(log_probs, lengths, [[0, 1]], form="paper")


def test_full_padding_and_short_rows():
  rng = np.random.default_rng(5)
  lengths = np.array([0, 1, 1, 2, 3, 30], np.int32)
  log_probs = random_log_probs(rng, len(lengths), lengths)
  predicted = np.asarray(segments.search_full(log_probs, lengths))
  np.testing.assert_array_equal(predicted[:3], [[0, 0], [0, 1], [0, 1]])
  # Replacing the padding by other garbage changes nothing.
  other = fill_padding(rng, log_probs, lengths)
  np.testing.assert_array_equal(segments.search_full(other, lengths), predicted)
  # Nor does cutting the padded length down to the longest row.
  np.testing.assert_array_equal(segments.search_full(log_probs[:, :30], lengths), predicted)


def test_full_under_jit_is_identical():
  rng = np.random.default_rng(6)
  lengths = random_lengths(rng, 64)
  log_probs = random_log_probs(rng, 64, lengths)
  jitted = jax.jit(segments.search_full, static_argnames=("max_length", "form"))
  for form in segments.FULL_FORMS:
    eager = np.asarray(segments.search_full(log_probs, lengths, 64, form))
    traced = jitted(jnp.asarray(log_probs), jnp.asarray(lengths), max_length=64, form=form)
    traced = np.asarray(traced)
    np.testing.assert_array_equal(traced, eager)


def test_full_rejects_bad_input():
  log_probs = np.zeros((2, 5, 4), np.float32)
  lengths = np.array([5, 3], np.int32)
  with pytest.raises(ValueError, match="form"):
    segments.search_full(log_probs, lengths, form="eq20")
  with pytest.raises(ValueError, match="max_length"):
    segments.search_full(log_probs, lengths, max_length=0)
  with pytest.raises(ValueError, match=r"\[batch, len_ref, 4\]"):
    segments.search_full(log_probs[..., :3], lengths)
  with pytest.raises(ValueError, match="shape \\[2\\]"):
    segments.search_full(log_probs, lengths[:1])
  with pytest.raises(ValueError, match="row 1 has length 6"):
    segments.search_full(log_probs, np.array([5, 6], np.int32))
  with pytest.raises(ValueError, match="integers"):
    segments.search_full(log_probs, np.array([5.0, 3.0], np.float32))


# ----------------------------------------------------------------------------
# search_weak.
# ----------------------------------------------------------------------------


def random_p_inside(rng: np.random.Generator, batch: int, lengths: np.ndarray) -> np.ndarray:
  """Half uniform noise, half smooth curves (long runs), float32, garbage in the padding."""
  noise = rng.uniform(size=(batch, PADDED_LENGTH))
  steps = np.arange(PADDED_LENGTH)[None, :]
  period = rng.uniform(5, 200, size=(batch, 1))
  phase = rng.uniform(0, 2 * np.pi, size=(batch, 1))
  smooth = 0.5 + 0.4 * np.sin(steps / period * 2 * np.pi + phase) + 0.1 * noise
  p_inside = np.where(rng.random((batch, 1)) < 0.5, noise, smooth).astype(np.float32)
  return fill_padding(rng, p_inside, lengths)


def test_weak_matches_reference_on_random_rows():
  rng = np.random.default_rng(7)
  n_rows, n_ambiguous = 0, 0
  for _ in range(3):
    batch = 1000
    lengths = random_lengths(rng, batch)
    p_inside = random_p_inside(rng, batch, lengths)
    predicted = np.asarray(segments.search_weak(p_inside, lengths))
    assert predicted.dtype == np.int32 and predicted.shape == (batch, 2)
    for row in range(batch):
      length = int(lengths[row])
      valid = p_inside[row, :length].astype(np.float64)
      if np.min(np.abs(valid - valid.mean())) < 1e-5 and length > 1:
        n_ambiguous += 1  # A step within float32 noise of the threshold.
        continue
      assert list(predicted[row]) == weak_reference(p_inside[row], length), (row, length)
      n_rows += 1
  assert n_ambiguous < 0.01 * n_rows, n_ambiguous


@pytest.mark.parametrize("value_set", [tuple(np.arange(9) / 8), (0.25, 0.5, 0.75), (0.25, 0.75)])
def test_weak_matches_reference_on_quantized_rows(value_set):
  # Multiples of 1/8: sums and comparisons with the mean are exact in float32,
  # and values equal to the mean (not above it) are frequent.
  rng = np.random.default_rng(20 + len(value_set))
  batch = 1000
  lengths = random_lengths(rng, batch)
  choice = rng.integers(0, len(value_set), size=(batch, PADDED_LENGTH))
  values = np.asarray(value_set, np.float32)[choice]
  p_inside = fill_padding(rng, values, lengths)
  predicted = np.asarray(segments.search_weak(p_inside, lengths))
  expected = [weak_reference(p_inside[row], int(lengths[row])) for row in range(batch)]
  np.testing.assert_array_equal(predicted, expected)


def test_weak_hand_computed_cases():
  p_inside = np.array(
      [
          [0.1, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.1],  # mean 0.6: runs [1, 3), [4, 7) → longer
          [0.9, 0.9, 0.1, 0.9, 0.9, 0.1, 0.0, 0.0],  # equal runs → the earliest, [0, 2)
          [0.1, 0.1, 0.9, 0.9, 0.0, 0.0, 0.0, 0.0],  # run touching the end of the valid steps
          [0.9, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0],  # run touching the start
          [0.25, 0.75, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],  # 0.5 equals the mean: not above → [1, 2)
          [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3],  # all equal → the whole reference
          [0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # one step → the whole reference
          [0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9],  # length 0 → [0, 0)
      ],
      np.float32,
  )
  lengths = np.array([8, 6, 4, 4, 3, 8, 1, 0], np.int32)
  p_inside = fill_padding(np.random.default_rng(8), p_inside, lengths)
  expected = [[4, 7], [0, 2], [2, 4], [0, 1], [1, 2], [0, 8], [0, 1], [0, 0]]
  np.testing.assert_array_equal(segments.search_weak(p_inside, lengths), expected)


def test_weak_all_equal_rows_predict_the_whole_reference():
  lengths = np.array([1, 2, 3, 7, 64, 159, 160], np.int32)
  for value in (0.1, 1.0 / 3.0, 0.7, 0.0, 1.0):
    p_inside = np.full((len(lengths), 160), value, np.float32)
    p_inside = fill_padding(np.random.default_rng(9), p_inside, lengths)
    expected = np.stack([np.zeros_like(lengths), lengths], axis=1)
    np.testing.assert_array_equal(segments.search_weak(p_inside, lengths), expected)


def test_weak_under_jit_is_identical():
  rng = np.random.default_rng(10)
  lengths = random_lengths(rng, 64)
  p_inside = random_p_inside(rng, 64, lengths)
  eager = np.asarray(segments.search_weak(p_inside, lengths))
  traced = np.asarray(jax.jit(segments.search_weak)(jnp.asarray(p_inside), jnp.asarray(lengths)))
  np.testing.assert_array_equal(traced, eager)


def test_weak_rejects_bad_input():
  with pytest.raises(ValueError, match=r"\[batch, len_ref\]"):
    segments.search_weak(np.zeros((2, 5, 4), np.float32), np.array([5, 3], np.int32))
  with pytest.raises(ValueError, match="row 0 has length -1"):
    segments.search_weak(np.zeros((2, 5), np.float32), np.array([-1, 3], np.int32))


def test_accept_python_lists():
  log_probs = [[[0.0, -9.0, 0.0, 0.0], [-9.0, 0.0, 0.0, 0.0], [-9.0, -9.0, 0.0, 0.0]]]
  np.testing.assert_array_equal(segments.search_full(log_probs, [3]), [[0, 2]])
  np.testing.assert_array_equal(segments.search_weak([[0.1, 0.5, 0.2]], [3]), [[1, 2]])


# ----------------------------------------------------------------- query-length (extension)


def query_length_reference(p_inside: np.ndarray, length: int, query_length: int) -> list[int]:
  """Plain loops: the earliest window of min(query, length) steps (>= 1) of highest sum."""
  if length == 0:
    return [0, 0]
  n = min(max(query_length, 1), length)
  sums = [float(np.sum(p_inside[s:s + n], dtype=np.float64)) for s in range(length - n + 1)]
  best = max(sums)
  start = next(s for s, v in enumerate(sums) if v >= best - 1e-5 * max(1.0, abs(best)))
  return [start, start + n]


def test_query_length_matches_reference_on_random_rows():
  rng = np.random.default_rng(11)
  batch = 500
  lengths = random_lengths(rng, batch)
  lengths[:5] = 0
  query_lengths = rng.integers(0, 40, size=batch).astype(np.int32)
  p_inside = random_p_inside(rng, batch, lengths)
  got = np.asarray(segments.search_query_length(p_inside, lengths, query_lengths))
  jitted = np.asarray(jax.jit(segments.search_query_length)(p_inside, lengths, query_lengths))
  np.testing.assert_array_equal(got, jitted)
  for row in range(batch):
    expected = query_length_reference(p_inside[row], int(lengths[row]), int(query_lengths[row]))
    if got[row].tolist() != expected:
      # Only a near-tie within float32 cumulative-sum rounding may differ, at the same length.
      n = expected[1] - expected[0]
      assert got[row][1] - got[row][0] == n
      sums = [np.sum(p_inside[row, s:s + n], dtype=np.float64) for s in (got[row][0], expected[0])]
      total = np.sum(p_inside[row, :lengths[row]], dtype=np.float64)
      assert abs(sums[0] - sums[1]) <= 1e-5 * total, (row, got[row], expected)


def test_query_length_hand_computed_cases():
  p = np.array([[0.1, 0.9, 0.8, 0.1, 0.0, np.nan],   # window 2 -> [1, 3)
                [0.5, 0.5, 0.5, 0.5, 9.0, 9.0],      # ties -> earliest; padding ignored
                [0.2, 0.1, 0.7, 0.0, 0.0, 0.0],      # query longer than the reference
                [0.3, 0.3, 0.3, 0.3, 0.3, 0.3]],     # empty reference
               np.float32)
  lengths = np.array([5, 4, 3, 0], np.int32)
  query_lengths = np.array([2, 3, 10, 4], np.int32)
  np.testing.assert_array_equal(segments.search_query_length(p, lengths, query_lengths),
                                [[1, 3], [0, 3], [0, 3], [0, 0]])
  with pytest.raises(ValueError, match="query_lengths must be integers"):
    segments.search_query_length(p, lengths, query_lengths[:2])
  with pytest.raises(ValueError, match="lengths must lie in"):
    segments.search_query_length(p, np.array([5, 4, 3, 7], np.int32), query_lengths)


# ----------------------------------------------------------------------------
# Candidate windows (search_windows).
# ----------------------------------------------------------------------------


def test_search_windows_matches_brute_force():
  rng = np.random.default_rng(7)
  batch, len_ref, scales = 24, 40, (0.5, 1.0, 2.0)
  log_probs = np.log(rng.dirichlet(np.ones(4), size=(batch, len_ref))).astype(np.float32)
  lengths = rng.integers(0, len_ref + 1, batch)
  query_lengths = rng.integers(1, 20, batch)
  log_probs[np.arange(len_ref)[None, :] >= lengths[:, None]] = np.nan  # padding: ignored
  got = np.asarray(segments.search_windows(log_probs, lengths, query_lengths, scales))
  for b in range(batch):
    if lengths[b] == 0:
      assert got[b].tolist() == [0, 0]
      continue
    odds = (log_probs[b, :, 2] - log_probs[b, :, 3]).astype(np.float64)
    best, best_score = None, -np.inf
    for s in range(lengths[b]):  # earliest start, then first scale, on ties
      for scale in scales:
        n = int(np.clip(np.round(scale * query_lengths[b]), 1, lengths[b]))
        if s + n <= lengths[b] and odds[s:s + n].sum() > best_score + 1e-4:
          best, best_score = [s, s + n], odds[s:s + n].sum()
    assert got[b].tolist() == best, b


def test_window_scores_mark_valid_windows():
  log_probs = np.log(np.full((1, 6, 4), 0.25, np.float32))
  log_probs[0, 2:4, 2] = 0.0  # the inside channel is certain on steps 2 and 3
  scores, valid = segments.window_scores(jnp.asarray(log_probs), jnp.array([5]),
                                         jnp.array([[2, 5]]))
  np.testing.assert_array_equal(np.asarray(valid)[0], [[1, 1], [1, 0], [1, 0], [1, 0],
                                                       [0, 0], [0, 0]])
  assert int(np.argmax(np.asarray(scores)[0, :, 0])) == 2
