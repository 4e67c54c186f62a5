"""The losses of the segment-scoring comparators: SST's and the video-level baseline's.

Candidate grids are start-indexed: entry (s, k) of [batch, len_ref, K] is the segment
[s, s + k + 1) (`vreloc_jax.comparators.candidates`). ``candidate_mask`` marks the
entries a model scored; filler examples (``example_mask`` False) are ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vreloc_jax import losses
from vreloc_jax.comparators import candidates


def _real_candidates(candidate_mask: jax.Array, example_mask: jax.Array | None) -> jax.Array:
  valid = candidate_mask.astype(bool)
  if example_mask is not None:
    valid = valid & example_mask.astype(bool)[:, None, None]
  return valid  # [B, Lr, K]


def proposal_cross_entropy(scores: jax.Array, candidate_mask: jax.Array, segment: jax.Array,
                           example_mask: jax.Array | None = None,
                           positive_iou: float = 0.5) -> jax.Array:
  """SST's weighted binary cross-entropy over the candidate grid (Buch et al. 2017).

  A candidate is positive when its temporal IoU with the ground truth exceeds
  ``positive_iou``. Positives of candidate length k weigh w1_k = (negatives of
  length k) / (candidates of length k) and negatives w0_k = 1 - w1_k, so both
  classes count alike at every length. SST computes these frequencies over the
  training set; here they are counted in each batch (references are cropped at
  random, so the training set's frequencies are not fixed).

  Args:
    scores: float [batch, len_ref, K] logits (sigmoid = confidence).
    candidate_mask: bool [batch, len_ref, K], the scored candidates.
    segment: int [batch, 2] ground truth ``[s, e)``.
    example_mask: optional bool [batch]; False examples are ignored.
    positive_iou: IoU above which a candidate is positive.

  Returns:
    float32 scalar: the weighted cross-entropy summed over candidates, divided by
    their number; 0 when nothing is valid.
  """
  len_ref, num_lengths = scores.shape[1], scores.shape[2]
  valid = _real_candidates(candidate_mask, example_mask)  # [B, Lr, K]
  positive = (candidates.candidate_iou(segment, len_ref, num_lengths) > positive_iou) & valid
  count = valid.sum(axis=(0, 1)).astype(jnp.float32)  # [K]
  w1 = (count - positive.sum(axis=(0, 1))) / jnp.maximum(count, 1.0)  # [K]
  logits = jnp.where(valid, scores.astype(jnp.float32), 0.0)
  per_candidate = -jnp.where(positive, w1 * jax.nn.log_sigmoid(logits),
                             (1.0 - w1) * jax.nn.log_sigmoid(-logits))  # [B, Lr, K]
  return jnp.sum(jnp.where(valid, per_candidate, 0.0)) / jnp.maximum(valid.sum(), 1)


def triplet_loss(scores: jax.Array, candidate_mask: jax.Array, segment: jax.Array,
                 example_mask: jax.Array | None = None, margin: float = 0.2,
                 negative_iou: float = 0.5) -> jax.Array:
  """Triplet loss of the video-level baseline: query anchor, ground truth positive,
  the hardest negative.

  ``scores`` are negated squared distances to the query. For each example, the
  scored candidates whose IoU with the ground truth is below ``negative_iou`` are
  negatives; the loss is max(0, margin + d(q, positive) - d(q, nearest negative)),
  averaged over examples that have a negative. The nearest negative is the one
  inference would pick instead of the ground truth; the mean over all negatives
  was tried first and measured: on the real recordings most candidates are far
  from the query, the mean hinge fell below 1e-3 by step 50 while val mAP stayed
  at 16, so it gave the model almost nothing to learn from.

  Args:
    scores: float [batch, len_ref, K], -||e(query) - e(candidate)||^2.
    candidate_mask: bool [batch, len_ref, K], the scored candidates; the ground
      truth's entry must be among them (a segment longer than K is clipped to its
      first K steps).
    segment: int [batch, 2] ground truth ``[s, e)``.
    example_mask: optional bool [batch].
    margin: the triplet margin (on squared distances of unit vectors, in [0, 4]).
    negative_iou: candidates below this IoU with the ground truth are negatives.

  Returns:
    float32 scalar; 0 when no example has a negative.
  """
  len_ref, num_lengths = scores.shape[1], scores.shape[2]
  valid = _real_candidates(candidate_mask, example_mask)  # [B, Lr, K]
  iou = candidates.candidate_iou(segment, len_ref, num_lengths)  # [B, Lr, K]
  negative = valid & (iou < negative_iou)
  scores = jnp.where(valid, scores.astype(jnp.float32), 0.0)
  start, k = candidates.candidate_index(segment, num_lengths)  # [B], [B]
  positive = scores[jnp.arange(scores.shape[0]), jnp.clip(start, 0, len_ref - 1), k]  # [B]
  nearest = jnp.max(jnp.where(negative, scores, losses.NEG_INF), axis=(1, 2))  # [B]
  # d(q, pos) - d(q, neg) = score(neg) - score(pos).
  hinge = jnp.maximum(0.0, margin + nearest - positive)  # [B]
  has_negative = negative.any(axis=(1, 2))
  return jnp.sum(jnp.where(has_negative, hinge, 0.0)) / jnp.maximum(has_negative.sum(), 1)
