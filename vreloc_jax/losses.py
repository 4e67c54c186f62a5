"""Training losses: weighted cross-entropy (full supervision) and co-attention (weak).

(The losses of the segment-scoring comparators are `vreloc_jax.comparators.losses`.)

Channels of `logits` / `probs`: (start, end, inside, outside). Segments are [s, e)
relative to the reference window, end exclusive. Masks are bool, True = valid.
Everything is masked: padded steps and filler examples (`example_mask` False) have no
effect on the value or the gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vreloc_jax import inputs
from vreloc_jax import segments

START, END, INSIDE, OUTSIDE = 0, 1, 2, 3
NUM_CLASSES = 4  # The per-step classes, in that order.
BOUNDARY_WEIGHT = 10.0  # w_i at start/end steps (eq. 19, Feng et al. 2018)
# Smallest probability mass a masked region must keep for its mask to be used; below
# it the co-attention loss falls back to the unmasked probabilities (see below).
MASS_EPSILON = 1e-6
COSINE_EPSILON = 1e-8  # norm product floor in the cosine similarity
NEG_INF = -1e30  # Score of an excluded candidate before a softmax or an argmax (finite: no NaN).
# The features the co-attention criterion of the self-training targets reads
# (`criterion_features`): the inputs, or the inputs beside a sketch of their transitions.
CRITERION_FEATURES = ("raw", "transitions")
TRANSITION_LAG = 3  # Steps between the two features of a transition.
TRANSITION_DIM = 256  # Dimension of the transitions' random sketch.


def _concrete(x) -> np.ndarray | None:
  """Returns `x` as numpy when it is a concrete (non-traced) value, else None."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _check_segments(segment, reference_mask, example_mask) -> None:
  """Raises ValueError unless 0 <= s < e <= length for every real example.

  Only checked for concrete (eager) inputs; under jit the check is skipped. Examples
  with example_mask False or without valid reference steps (fillers) are not checked.
  """
  seg, ref = _concrete(segment), _concrete(reference_mask)
  ex = None if example_mask is None else _concrete(example_mask)
  if seg is None or ref is None or (example_mask is not None and ex is None):
    return
  if seg.shape != (ref.shape[0], 2):
    raise ValueError(f"segment: expected shape [{ref.shape[0]}, 2], got {seg.shape}")
  lengths = ref.astype(bool).sum(axis=1)
  real = lengths > 0
  if ex is not None:
    real &= ex.astype(bool)
  bad = real & ((seg[:, 0] < 0) | (seg[:, 1] <= seg[:, 0]) | (seg[:, 1] > lengths))
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"segment of example {i} is {seg[i].tolist()}; need 0 <= s < e <= "
                     f"reference length {int(lengths[i])}")


def segment_mask(segments: jax.Array, len_ref: int) -> jax.Array:
  """Marks the steps of each segment.

  Args:
    segments: int[batch, 2], [s, e) with exclusive end.
    len_ref: padded reference length Lr (static int).

  Returns:
    bool[batch, len_ref], True on [s, e).
  """
  steps = jnp.arange(len_ref)[None, :]  # [1, Lr]
  return (steps >= segments[:, :1]) & (steps < segments[:, 1:2])


def soft_labels(segment: jax.Array, len_ref: int) -> jax.Array:
  """Per-step soft targets (start, end, inside, outside), each row summing to 1.

  Start is one-hot at s, end one-hot at e - 1, inside covers [s, e), outside the
  rest; each row is then normalized: the start step is 0.5 start + 0.5 inside, the
  end step 0.5 end + 0.5 inside, a one-step segment 1/3 start, end, inside.

  Args:
    segment: int[batch, 2], [s, e) with 0 <= s < e <= reference length. Degenerate
      segments (e.g. [0, 0] of filler examples) give finite rows too.
    len_ref: padded reference length Lr (static int).

  Returns:
    float32[batch, len_ref, 4]; every row sums to 1.
  """
  steps = jnp.arange(len_ref)[None, :]  # [1, Lr]
  start = steps == segment[:, :1]  # [B, Lr]
  end = steps == segment[:, 1:2] - 1
  inside = segment_mask(segment, len_ref)
  labels = jnp.stack([start, end, inside, ~inside], axis=-1).astype(jnp.float32)  # [B, Lr, 4]
  return labels / labels.sum(axis=-1, keepdims=True)


def _valid_steps(reference_mask: jax.Array, example_mask: jax.Array | None) -> jax.Array:
  """bool[batch, len_ref]: valid steps of valid examples."""
  valid = reference_mask.astype(bool)
  if example_mask is not None:
    valid = valid & example_mask.astype(bool)[:, None]
  return valid


def weighted_cross_entropy(logits: jax.Array, segment: jax.Array, reference_mask: jax.Array,
                           example_mask: jax.Array | None = None) -> jax.Array:
  """Boundary-weighted soft-label cross-entropy (eq. 19, as Feng et al. 2018).

  loss = sum over valid steps of w_i * CE(y_i, softmax(logits_i)) / number of valid
  steps in the batch, with w_i = 10 where y_start + y_end > 0 and 1 elsewhere.

  Args:
    logits: float[batch, len_ref, 4].
    segment: int[batch, 2] ground truth [s, e).
    reference_mask: bool[batch, len_ref].
    example_mask: optional bool[batch]; False examples (fillers) are ignored.

  Returns:
    float32 scalar; 0 when nothing is valid.
  """
  if logits.ndim != 3 or logits.shape[-1] != 4 or reference_mask.shape != logits.shape[:2]:
    raise ValueError(
        f"logits {logits.shape} must be [batch, len_ref, 4] with reference_mask "
        f"{reference_mask.shape} of shape [batch, len_ref]")
  _check_segments(segment, reference_mask, example_mask)
  valid = _valid_steps(reference_mask, example_mask)  # [B, Lr]
  labels = soft_labels(segment, logits.shape[1])  # [B, Lr, 4]
  # where() before the softmax: non-finite padding logits leak into neither the value
  # nor the gradient.
  logits = jnp.where(valid[..., None], logits.astype(jnp.float32), 0.0)
  log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, Lr, 4]
  ce = -jnp.sum(labels * log_probs, axis=-1)  # [B, Lr]
  boundary = (labels[..., START] + labels[..., END]) > 0
  weights = jnp.where(boundary, BOUNDARY_WEIGHT, 1.0) * valid  # [B, Lr]
  return jnp.sum(weights * ce) / jnp.maximum(valid.sum(), 1)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """[batch, length, D], bool[batch, length] -> [batch, D] mean over valid steps (0 if none)."""
  x = jnp.where(mask[..., None], x.astype(jnp.float32), 0.0)
  return x.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1)[:, None]


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine similarity of rows, [batch, D] x [batch, D] -> [batch]; 0 if a row is ~0."""
  dot = jnp.sum(a * b, axis=-1)
  norms_sq = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
  return dot / jnp.sqrt(jnp.maximum(norms_sq, COSINE_EPSILON**2))


def _normalized_weights(p: jax.Array, region: jax.Array | None, valid: jax.Array) -> jax.Array:
  """Eq. 14 over valid steps, optionally restricted to a region, with a fallback.

  Args:
    p: float32[batch, len_ref] probabilities of one channel.
    region: optional bool[batch, len_ref] mask (action or background region).
    valid: bool[batch, len_ref] valid steps.

  Returns:
    float32[batch, len_ref] weights summing to 1 over the chosen steps. If the region
    keeps less than MASS_EPSILON of probability (e.g. it is empty), the unmasked
    probabilities over all valid steps are used instead for that example. Mass below
    MASS_EPSILON even then (or no valid step) gives weights ~0 (the representation is
    ~0 and its cosines are 0), never NaN.
  """
  base = jnp.where(valid, p, 0.0)  # [B, Lr]
  if region is not None:
    masked = jnp.where(region & valid, p, 0.0)
    keep = masked.sum(axis=1, keepdims=True) >= MASS_EPSILON  # [B, 1]
    base = jnp.where(keep, masked, base)
  return base / jnp.maximum(base.sum(axis=1, keepdims=True), MASS_EPSILON)


def coattention_per_example(query: jax.Array, query_mask: jax.Array, reference: jax.Array,
                            reference_mask: jax.Array, probs: jax.Array, alpha: float,
                            action_mask: jax.Array | None = None) -> jax.Array:
  """Co-attention loss of each example (eqs. 13-18); see `coattention_loss`.

  Returns:
    float32[batch] = sigmoid(d- - d+), with no masking of examples.
  """
  if probs.ndim != 3 or probs.shape[-1] != 4 or probs.shape[:2] != reference.shape[:2]:
    raise ValueError(
        f"probs {probs.shape} must be [batch, len_ref, 4] matching reference {reference.shape}")
  if reference_mask.shape != reference.shape[:2] or query_mask.shape != query.shape[:2]:
    raise ValueError(
        f"masks {query_mask.shape}, {reference_mask.shape} must match query {query.shape[:2]}, "
        f"reference {reference.shape[:2]}")
  if action_mask is not None and action_mask.shape != reference_mask.shape:
    raise ValueError(
        f"action_mask {action_mask.shape} must have the shape of reference_mask "
        f"{reference_mask.shape}")
  query_mask = query_mask.astype(bool)
  valid = reference_mask.astype(bool)  # [B, Lr]
  probs = probs.astype(jnp.float32)
  reference = jnp.where(valid[..., None], reference.astype(jnp.float32), 0.0)  # [B, Lr, D]

  q_a = _masked_mean(query, query_mask)  # [B, D], eq. 13
  if action_mask is None:
    action_region = background_region = None
  else:
    action_region = action_mask.astype(bool)
    background_region = ~action_region
  g_action = _normalized_weights(probs[..., INSIDE], action_region, valid)  # [B, Lr], eq. 14
  g_background = _normalized_weights(probs[..., OUTSIDE], background_region, valid)
  r_a = jnp.einsum("bl,bld->bd", g_action, reference)  # [B, D], eq. 15
  r_b = jnp.einsum("bl,bld->bd", g_background, reference)
  d_pos = _cosine(q_a, r_a)  # eq. 17
  d_neg = alpha * _cosine(q_a, r_b) + (1.0 - alpha) * _cosine(r_a, r_b)  # eq. 18
  # eq. 16: exp(-d+) / (exp(-d+) + exp(-d-)) = sigmoid(d- - d+)
  return jax.nn.sigmoid(d_neg - d_pos)


def coattention_loss(query: jax.Array, query_mask: jax.Array, reference: jax.Array,
                     reference_mask: jax.Array, probs: jax.Array, alpha: float,
                     action_mask: jax.Array | None = None,
                     example_mask: jax.Array | None = None) -> jax.Array:
  """Temporal co-attention loss (paper eqs. 13-18), mean over valid examples.

  Computed on the input features: q^a is the mean of the valid query frames; g^3, g^4
  are p_inside, p_outside normalized over the valid reference steps; r^a = sum g^3 r,
  r^b = sum g^4 r; d+ = cos(q^a, r^a), d- = alpha cos(q^a, r^b) + (1 - alpha)
  cos(r^a, r^b), with cos the cosine SIMILARITY (the paper says "distance", but only
  the similarity makes minimizing the loss pull the action region toward the query);
  loss = exp(-d+) / (exp(-d+) + exp(-d-)) = sigmoid(d- - d+).

  With `action_mask` (the predicted action region; the caller computes it, e.g. with
  `segment_mask` of the predicted segment under stop_gradient), p_inside is restricted
  to the region and p_outside to the valid steps outside it before normalizing. If a
  restricted channel keeps less than MASS_EPSILON probability (empty region, or a
  region covering the whole reference for the background), that channel falls back to
  its unmasked probabilities for that example. Cosines of ~0 vectors are 0.

  Args:
    query: [batch, len_query, D] input (C3D) query features.
    query_mask: bool[batch, len_query].
    reference: [batch, len_ref, D] input (C3D) reference features.
    reference_mask: bool[batch, len_ref].
    probs: [batch, len_ref, 4] predicted probabilities (start, end, inside, outside).
    alpha: weight of cos(q^a, r^b) in d- (paper: 0.3).
    action_mask: optional bool[batch, len_ref] predicted action region.
    example_mask: optional bool[batch]; False examples (fillers) are ignored, as are
      examples without a valid query or reference step.

  Returns:
    float32 scalar; 0 when no example is valid.
  """
  # Filler examples are treated as fully padded, so their content never enters.
  query_mask = _valid_steps(query_mask, example_mask)  # [B, Lq]
  reference_mask = _valid_steps(reference_mask, example_mask)  # [B, Lr]
  per_example = coattention_per_example(query, query_mask, reference, reference_mask,
                                        probs, alpha, action_mask)  # [B]
  valid = query_mask.any(axis=1) & reference_mask.any(axis=1)  # [B]
  return jnp.sum(jnp.where(valid, per_example, 0.0)) / jnp.maximum(valid.sum(), 1)


def window_criterion(query: jax.Array, query_mask: jax.Array, reference: jax.Array,
                     reference_mask: jax.Array, windows: jax.Array, alpha: float) -> jax.Array:
  """The co-attention criterion ``d+ - d-`` (eqs. 17-18) of every candidate window.

  Hard, uniform regions: the action region is the window ``[s, s + n)``, the
  background the valid steps outside it (an empty background has cosines 0).
  Cosines are scale-free, so region sums stand for the region means. The loss
  of eq. 16 is ``sigmoid(-criterion)``: a higher criterion is a better window.
  It depends on the input features only (no parameter).

  Args:
    query: [batch, len_query, D] input query features; query_mask bool[batch, len_query].
    reference: [batch, len_ref, D] input reference features; reference_mask
      bool[batch, len_ref] (a prefix).
    windows: int[batch, K] candidate window lengths (`segments.window_lengths`).
    alpha: weight of cos(q^a, r^b) in d-.

  Returns:
    float32[batch, len_ref, K]; entries of invalid windows are meaningless
    (`segments.window_scores` gives the validity mask).
  """
  valid = reference_mask.astype(bool)  # [B, Lr]
  len_ref = reference.shape[1]
  reference = jnp.where(valid[..., None], reference.astype(jnp.float32), 0.0)  # [B, Lr, D]
  q_a = _masked_mean(query, query_mask.astype(bool))[:, None, :]  # [B, 1, D]
  cumulative = jnp.pad(jnp.cumsum(reference, axis=1), ((0, 0), (1, 0), (0, 0)))  # [B, Lr+1, D]
  total = cumulative[:, -1:, :]  # [B, 1, D]
  lengths = valid.sum(axis=1)  # [B]
  starts = jnp.arange(len_ref)[None, :]  # [1, Lr]
  criteria = []
  for k in range(windows.shape[1]):  # K is small and static.
    ends = jnp.minimum(starts + windows[:, k:k + 1], len_ref)  # [B, Lr]
    r_a = jnp.take_along_axis(cumulative, ends[..., None], axis=1) - cumulative[:, :-1]
    has_background = (windows[:, k:k + 1] < lengths[:, None])[..., None]  # [B, 1, 1]
    r_b = jnp.where(has_background, total - r_a, 0.0)  # [B, Lr, D]
    d_pos = _cosine(q_a, r_a)  # [B, Lr]
    d_neg = alpha * _cosine(q_a, r_b) + (1.0 - alpha) * _cosine(r_a, r_b)
    criteria.append(d_pos - d_neg)
  return jnp.stack(criteria, axis=-1)  # [B, Lr, K]


def window_coattention_loss(log_probs: jax.Array, query: jax.Array, query_mask: jax.Array,
                            reference: jax.Array, reference_mask: jax.Array,
                            scales: tuple[float, ...], alpha: float, temperature: float,
                            example_mask: jax.Array | None = None) -> jax.Array:
  """Co-attention over candidate windows (an extension of eqs. 13-18), mean over examples.

  The paper's loss pools the features with soft per-step weights (eq. 14); its
  optimum is then not a segment (inside weight on the few steps most like the
  query, outside weight on outliers: lower than the loss at the target). Here
  the model's per-step outputs define a distribution over the candidate windows
  (`segments.window_scores`: ``pi = softmax(sum of log-odds over the window)``),
  each window's co-attention criterion is computed with hard regions
  (`window_criterion`), and the loss is the cross-entropy from the criterion's
  Gibbs distribution ``tau = softmax(z / temperature)`` to ``pi``, ``z`` the
  criterion standardized over the example's candidates (so one temperature
  serves features whose cosines spread widely or narrowly).
  Its minimum is ``pi = tau``, which for a small temperature is the window the
  exhaustive search of the criterion finds; it reads no annotation.

  Args:
    log_probs: [batch, len_ref, 4] the model's log probabilities.
    query, query_mask, reference, reference_mask: as `coattention_loss`.
    scales: the candidate window lengths as multiples of the query length.
    alpha: α of eq. 18.
    temperature: of tau, in standard deviations of the example's criterion.
    example_mask: optional bool[batch]; False examples (fillers) are ignored.

  Returns:
    float32 scalar; 0 when no example is valid.
  """
  query_mask = _valid_steps(query_mask, example_mask)  # [B, Lq]
  reference_mask = _valid_steps(reference_mask, example_mask)  # [B, Lr]
  lengths = reference_mask.sum(axis=1).astype(jnp.int32)  # [B]
  query_lengths = query_mask.sum(axis=1).astype(jnp.int32)  # [B]
  windows = segments.window_lengths(query_lengths, lengths, scales)  # [B, K]
  scores, valid = segments.window_scores(log_probs, lengths, windows)  # [B, Lr, K]
  criterion = jax.lax.stop_gradient(window_criterion(
      query, query_mask, reference, reference_mask, windows, alpha))  # [B, Lr, K]
  batch = scores.shape[0]
  valid = valid.reshape(batch, -1)  # [B, Lr * K]
  # A finite floor, not -inf: a row without candidates (a filler) stays finite.
  log_pi = jax.nn.log_softmax(jnp.where(valid, scores.reshape(batch, -1), NEG_INF),
                              axis=1)  # [B, Lr * K]
  criterion = criterion.reshape(batch, -1)  # [B, Lr * K]
  count = jnp.maximum(valid.sum(axis=1, keepdims=True), 1)  # [B, 1]
  mean = jnp.sum(jnp.where(valid, criterion, 0.0), axis=1, keepdims=True) / count
  spread = jnp.sqrt(jnp.sum(jnp.where(valid, (criterion - mean) ** 2, 0.0), axis=1,
                            keepdims=True) / count)  # [B, 1]
  standardized = (criterion - mean) / jnp.maximum(spread, COSINE_EPSILON)
  tau = jax.nn.softmax(jnp.where(valid, standardized / temperature, NEG_INF), axis=1)
  per_example = -jnp.sum(jnp.where(valid, tau * log_pi, 0.0), axis=1)  # [B]
  real = query_mask.any(axis=1) & reference_mask.any(axis=1)  # [B]
  return jnp.sum(jnp.where(real, per_example, 0.0)) / jnp.maximum(real.sum(), 1)


def transition_features(features: jax.Array, mask: jax.Array, lag: int = TRANSITION_LAG,
                        dim: int = TRANSITION_DIM) -> jax.Array:
  """The features beside a sketch of their transitions, for the co-attention criterion.

  A mean over a window (eqs. 14-15) cannot see order: a window that plays a class's
  sub-actions in its order and one that plays them in another have the same mean. The
  sketch ``(x_t P) * (x_{t + lag} P')`` of each step's feature (centred over the
  sequence's valid steps) and the one ``lag`` steps later, with fixed random
  projections ``P``, ``P'`` [D, dim], has a mean that depends on the order. Both parts
  are scaled to a mean step norm of 1 over the valid steps, so they weigh alike in a
  cosine. An extension; it reads no annotation.

  Args:
    features: [batch, length, D]; mask: bool[batch, length], the valid steps (a prefix).
    lag: steps between the two features of a transition (the last ``lag`` valid steps
      pair with zeros).
    dim: the sketch's dimension.

  Returns:
    float32[batch, length, D + dim]; zero on padding.
  """
  mask = mask.astype(bool)
  x = jnp.where(mask[..., None], features.astype(jnp.float32), 0.0)  # [B, L, D]
  count = jnp.maximum(mask.sum(axis=1), 1).astype(jnp.float32)  # [B]
  steps = inputs.centred(x, mask)  # [B, L, D]
  later = jnp.pad(steps[:, lag:], ((0, 0), (0, lag), (0, 0)))[:, :x.shape[1]]  # [B, L, D]
  first, second = jax.random.split(jax.random.key(0))
  d = x.shape[-1]
  sketch = ((steps @ (jax.random.normal(first, (d, dim)) / jnp.sqrt(d)))
            * (later @ (jax.random.normal(second, (d, dim)) / jnp.sqrt(d))))  # [B, L, dim]

  def unit_mean_norm(z):  # [B, L, ·] scaled so its mean valid-step norm is 1
    norm = jnp.sum(jnp.where(mask, jnp.linalg.norm(z, axis=-1), 0.0), axis=1) / count  # [B]
    return z / jnp.maximum(norm, COSINE_EPSILON)[:, None, None]

  both = jnp.concatenate([unit_mean_norm(x), unit_mean_norm(sketch)], axis=-1)
  return jnp.where(mask[..., None], both, 0.0)  # [B, L, D + dim]


def criterion_segments(query: jax.Array, query_mask: jax.Array, reference: jax.Array,
                       reference_mask: jax.Array, windows: jax.Array,
                       alpha: float) -> jax.Array:
  """The exhaustive search of the co-attention criterion (`window_criterion`) per pair.

  The candidates are the windows of the given lengths that fit in the reference and
  leave a background (are shorter than it) unless the reference is one step; ties go
  to the earliest start, then the first length. Jit-able; the training-free
  `baselines.coattention_segments` runs it too. It reads no annotation.

  Args:
    query, query_mask, reference, reference_mask: as `coattention_loss`.
    windows: int[batch, K] candidate window lengths, e.g. `segments.window_lengths`.
    alpha: α of eq. 18.

  Returns:
    int32[batch, 2] ``[s, e)``; ``[0, length)`` where no window qualifies.
  """
  lengths = reference_mask.astype(bool).sum(axis=1).astype(jnp.int32)  # [B]
  criterion = window_criterion(query, query_mask, reference, reference_mask, windows,
                               alpha)  # [B, Lr, K]
  n, steps = windows[:, None, :], lengths[:, None, None]  # [B, 1, K], [B, 1, 1]
  starts = jnp.arange(reference.shape[1])[None, :, None]  # [1, Lr, 1]
  valid = (starts + n <= steps) & ((n < steps) | (steps == 1))  # [B, Lr, K]
  batch, num_windows = criterion.shape[0], windows.shape[1]
  flat = jnp.where(valid, criterion, -jnp.inf).reshape(batch, -1)  # [B, Lr * K]
  best = jnp.argmax(flat, axis=1).astype(jnp.int32)  # [B]
  start, k = best // num_windows, best % num_windows
  end = start + jnp.take_along_axis(windows, k[:, None], axis=1)[:, 0]  # [B]
  found = valid.reshape(batch, -1).any(axis=1)  # [B]
  return jnp.stack([jnp.where(found, start, 0), jnp.where(found, end, lengths)],
                   axis=1).astype(jnp.int32)  # [B, 2]


def pseudo_label_loss(logits: jax.Array, query: jax.Array, query_mask: jax.Array,
                      reference: jax.Array, reference_mask: jax.Array,
                      scales: tuple[float, ...], alpha: float,
                      example_mask: jax.Array | None = None,
                      criterion_features: str = "raw") -> jax.Array:
  """Self-training on the co-attention criterion (an extension of eqs. 13-19).

  Each pair's target is the window its co-attention criterion ranks first
  (`criterion_segments`, on the input features or, with ``criterion_features=
  "transitions"``, on `transition_features`; held fixed), and the loss is
  the weighted cross-entropy of full supervision (eq. 19) toward it. The paper's
  soft loss has a lower optimum than the target segment (scattered query-like
  steps inside, outliers outside); this one's optimum is a segment, and its
  gradient is the dense per-step signal under which full supervision learns.
  It reads no annotation.

  Args:
    logits: float[batch, len_ref, 4].
    query, query_mask, reference, reference_mask: as `coattention_loss`.
    scales: the candidate window lengths as multiples of the query length.
    alpha: α of eq. 18.
    example_mask: optional bool[batch]; False examples (fillers) are ignored.
    criterion_features: one of `CRITERION_FEATURES`.

  Returns:
    float32 scalar; 0 when nothing is valid.
  """
  if criterion_features not in CRITERION_FEATURES:
    raise ValueError(f"criterion_features must be one of {CRITERION_FEATURES}, got "
                     f"{criterion_features!r}")
  query_mask = _valid_steps(query_mask, example_mask)  # [B, Lq]
  valid = _valid_steps(reference_mask, example_mask)  # [B, Lr]
  if criterion_features == "transitions":
    query = transition_features(query, query_mask)  # [B, Lq, D + TRANSITION_DIM]
    reference = transition_features(reference, valid)  # [B, Lr, D + TRANSITION_DIM]
  windows = segments.window_lengths(query_mask.sum(axis=1), valid.sum(axis=1), scales)  # [B, K]
  targets = jax.lax.stop_gradient(criterion_segments(
      query, query_mask, reference, valid, windows, alpha))  # [B, 2]
  real = query_mask.any(axis=1) & valid.any(axis=1)  # [B]
  return weighted_cross_entropy(logits, targets, reference_mask, real)
