"""Candidate segments: the grid that segment-scoring comparators score.

The video-level baseline and SST (`vreloc_jax.video_level`, `vreloc_jax.sst`) do not
label reference steps; they give every candidate segment of the reference a score
and predict the best one. The candidates of a reference of padded length Lr with K
candidate lengths form a grid ``[len_ref, num_lengths]``: entry ``(s, k)`` is the
segment ``[s, s + k + 1)`` (start-indexed, end exclusive, lengths 1..K). A candidate
is valid when it lies inside the reference's valid steps.

Everything here is vectorized `jnp` and works under jit for any padded length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # Score given to invalid candidates before the argmax.


def candidate_bounds(len_ref: int, num_lengths: int) -> jax.Array:
  """``[s, e)`` of every candidate, int32 [len_ref, num_lengths, 2]."""
  starts = jnp.arange(len_ref, dtype=jnp.int32)[:, None]  # [Lr, 1]
  ends = starts + jnp.arange(1, num_lengths + 1, dtype=jnp.int32)[None, :]  # [Lr, K]
  return jnp.stack([jnp.broadcast_to(starts, ends.shape), ends], axis=-1)


def candidate_mask(reference_lengths: jax.Array, len_ref: int, num_lengths: int) -> jax.Array:
  """Which candidates lie inside each reference: bool [batch, len_ref, num_lengths].

  Args:
    reference_lengths: int [batch], valid steps of each reference.
    len_ref: padded reference length (static).
    num_lengths: K, the number of candidate lengths (static).
  """
  ends = candidate_bounds(len_ref, num_lengths)[..., 1]  # [Lr, K]
  return ends[None] <= reference_lengths[:, None, None]


def candidate_iou(segments: jax.Array, len_ref: int, num_lengths: int) -> jax.Array:
  """Temporal IoU of every candidate with one segment per example.

  Args:
    segments: int [batch, 2], ``[s, e)``.
    len_ref: padded reference length (static).
    num_lengths: K (static).

  Returns:
    float32 [batch, len_ref, num_lengths]; 0 where the segment is empty.
  """
  bounds = candidate_bounds(len_ref, num_lengths)[None]  # [1, Lr, K, 2]
  s = segments[:, None, None, 0]  # [batch, 1, 1]
  e = segments[:, None, None, 1]
  inter = jnp.maximum(0, jnp.minimum(e, bounds[..., 1]) - jnp.maximum(s, bounds[..., 0]))
  union = jnp.maximum(e, bounds[..., 1]) - jnp.minimum(s, bounds[..., 0])
  return jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0).astype(jnp.float32)


def candidate_index(segments: jax.Array, num_lengths: int) -> tuple[jax.Array, jax.Array]:
  """Grid position ``(start, length index)`` of each segment, clipped into the grid.

  A segment longer than K steps maps to its first K steps; callers that need the
  exact segment check ``e - s <= num_lengths`` themselves.
  """
  starts = segments[:, 0]
  return starts, jnp.clip(segments[:, 1] - starts - 1, 0, num_lengths - 1)


def best_candidate(scores: jax.Array, reference_lengths: jax.Array) -> jax.Array:
  """The highest-scoring valid candidate of each reference.

  Args:
    scores: float [batch, len_ref, num_lengths] (start-indexed grid).
    reference_lengths: int [batch].

  Returns:
    int32 [batch, 2], ``[s, e)``; a reference with no valid step gets ``[0, 1)``.
  """
  batch, len_ref, num_lengths = scores.shape
  valid = candidate_mask(reference_lengths, len_ref, num_lengths)
  flat = jnp.where(valid, scores, NEG_INF).reshape(batch, len_ref * num_lengths)
  best = jnp.argmax(flat, axis=1).astype(jnp.int32)  # [batch]
  start, k = best // num_lengths, best % num_lengths
  return jnp.stack([start, start + k + 1], axis=1)


def from_end_indexed(scores: jax.Array) -> jax.Array:
  """Converts an end-indexed grid to the start-indexed one.

  Args:
    scores: [batch, len_ref, num_lengths]; entry ``(t, k)`` scores ``[t - k, t + 1)``
      (the segment of length k + 1 ending at step t, as a causal model emits it).

  Returns:
    [batch, len_ref, num_lengths]; entry ``(s, k)`` scores ``[s, s + k + 1)``.
    Entries whose end would fall past the padded length get `NEG_INF`.
  """
  len_ref, num_lengths = scores.shape[1], scores.shape[2]
  steps = jnp.arange(len_ref)[:, None] + jnp.arange(num_lengths)[None, :]  # [Lr, K]: t = s + k
  gathered = jnp.take_along_axis(
      scores, jnp.minimum(steps, len_ref - 1)[None], axis=1)  # [batch, Lr, K]
  return jnp.where((steps < len_ref)[None], gathered, NEG_INF)
