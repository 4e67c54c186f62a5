"""Candidate segments: the grid that segment-scoring comparators score, and their family.

The video-level baseline and SST (`vreloc_jax.comparators.video_level`,
`vreloc_jax.comparators.sst`) do not label reference steps; they give every candidate
segment of the reference a score and predict the best one (`CandidateScoring`). The
candidates of a reference of padded length Lr with K candidate lengths form a grid
``[len_ref, num_lengths]``: entry ``(s, k)`` is the segment ``[s, s + k + 1)``
(start-indexed, end exclusive, lengths 1..K). A candidate is valid when it lies inside
the reference's valid steps.

The grid functions are vectorized `jnp` and work under jit for any padded length.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vreloc_jax import family
from vreloc_jax import losses

NEG_INF = losses.NEG_INF  # Score given to invalid candidates before the argmax.


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


class CandidateScoring(family.Family):
  """Models that score candidate segments: their module returns ``candidate_scores`` and
  ``candidate_mask`` [batch, len_ref, K] (start-indexed grid); the best valid candidate
  is the prediction. Subclasses set `loss_name` and define `candidate_loss` and
  `confidence`."""

  per_step_probabilities = False
  loss_name = ""  # The metric name of its training loss.

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    if config.supervision != "full" or config.loss.coattention_weight > 0:
      raise ValueError(f"{cls.name} trains with full supervision and its own loss only; got "
                       f"supervision={config.supervision!r}, loss.coattention_weight="
                       f"{config.loss.coattention_weight}")
    super().check(config)

  @property
  def inference(self) -> str:
    return "best_candidate"

  def apply(self, params: Any, batch: family.Batch, dropout_rng: jax.Array | None = None
            ) -> dict[str, jax.Array]:
    """As `family.Family.apply`; in training the module is given the ground truth ``segment``."""
    if dropout_rng is None:
      return super().apply(params, batch)
    return self.module.apply({"params": params}, batch["query"], batch["query_mask"],
                             batch["reference"], batch["reference_mask"], deterministic=False,
                             rngs={"dropout": dropout_rng}, segment=batch["segment"])

  @abc.abstractmethod
  def candidate_loss(self, outputs: dict[str, jax.Array], batch: family.Batch) -> jax.Array:
    """The model's own training loss (scalar)."""

  @abc.abstractmethod
  def confidence(self, best: jax.Array) -> jax.Array:
    """The score of each predicted candidate, float [batch], as a confidence in [0, 1]."""

  def loss(self, outputs: dict[str, jax.Array], batch: family.Batch, step: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    terms = {self.loss_name: self.candidate_loss(outputs, batch)}
    return sum(terms.values()), terms

  def predict(self, outputs: dict[str, jax.Array], batch: family.Batch) -> dict[str, jax.Array]:
    """The best candidate; its one-hot labels (`losses.soft_labels`) stand in for per-step
    probabilities, and the attention has no heads."""
    scores = jnp.where(outputs["candidate_mask"], outputs["candidate_scores"], NEG_INF)
    predicted = best_candidate(scores, batch["reference_length"])  # [batch, 2]
    len_ref = batch["reference_mask"].shape[1]
    start, k = candidate_index(predicted, scores.shape[2])
    best = scores[jnp.arange(scores.shape[0]), start, k]  # [batch]
    return {"segments": predicted, "score": self.confidence(best),  # [batch]
            "probs": losses.soft_labels(predicted, len_ref),  # [batch, len_ref, 4]
            "attention": jnp.zeros(batch["reference_mask"].shape + (0,), jnp.float32)}
