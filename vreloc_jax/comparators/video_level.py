"""The video-level baseline of Feng et al., "Video Re-localization" (ECCV 2018).

A row of the AAAI 2020 paper's Table 4 (full supervision): "VL Baseline" 24.3 /
17.4 / 12.0 / 5.9 / 2.2 top-1 mAP at IoU 0.5 ... 0.9, 12.4 on average. One LSTM
encodes the query and every candidate segment of the reference into a unit vector;
a candidate's score is its negated squared distance to the query's vector, and the
best-scoring candidate is the prediction (`candidates.best_candidate`).

    query [B, Lq, D] --Dense--> [B, Lq, E] --dropout-->  (one row per query)
    reference [B, Lr, D] --Dense--> [B, Lr, E] --dropout--> windows [B * S, K, E]
      (window of start s: steps s ... s+K-1, 0 beyond the valid length)
    both, as the rows of one batch --> one LSTM scan from a zero state
      q [B, H]: the query row's hidden state after its last valid step
      h [B, S, K, H]: a window row's hidden state after k + 1 steps, the embedding
        of the segment [s, s+k+1)
    score(s, k) = -|| q/|q| - h[s, k]/|h[s, k]| ||^2                     [B, Lr, K]

The output is the candidate grid of `vreloc_jax.comparators.candidates` (entry (s, k)
is the segment [s, s+k+1)), what `candidates.CandidateScoring` expects; the training
loss is `vreloc_jax.comparators.losses.triplet_loss` (query anchor, ground-truth
segment positive, low-IoU candidates negatives).

Where each fact comes from, the choices made where the sources leave them open, and
the parameter count: docs/comparators.md.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vreloc_jax.comparators import candidates
from vreloc_jax.comparators import losses
from vreloc_jax.inputs import mask_steps
from vreloc_jax.inputs import model_inputs

_EPS = 1e-12  # Squared norm below which a vector is left unnormalized (a zero vector).


def video_level_config() -> ml_collections.ConfigDict:
  """Returns the video-level baseline's model section of the configuration."""
  cfg = ml_collections.ConfigDict()
  cfg.num_lengths = 32  # K: candidate lengths 1..K steps.
  cfg.embed_dim = 128  # E: size of the Dense projection of the features (LSTM input).
  cfg.hidden_dim = 128  # H: units of the LSTM, the size of the embeddings.
  cfg.dropout = 0.2  # Dropout rate on the projected features in training.
  cfg.train_starts = 4  # Random starts scored per reference in training, besides the ground truth's.
  cfg.dtype = "float32"  # Computation dtype of the projection and LSTM: float32 | bfloat16.
  return cfg


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError for sizes or a dropout rate the baseline cannot have."""
  if int(cfg.num_lengths) < 1 or cfg.train_starts < 0 or not 0.0 <= cfg.dropout < 1.0:
    raise ValueError(f"video_level: num_lengths must be >= 1, train_starts >= 0 and dropout "
                     f"in [0, 1); got {cfg.num_lengths}, {cfg.train_starts}, {cfg.dropout}")


def l2_normalize(x: jax.Array) -> jax.Array:
  """Unit vectors along the last axis, float32; a zero vector stays zero."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _EPS))


def sample_starts(rng: jax.Array, segment: jax.Array, reference_lengths: jax.Array,
                  len_ref: int, num_random: int) -> jax.Array:
  """The starts scored in training: the ground truth's, then random other valid starts.

  Args:
    rng: key of the draw.
    segment: int [batch, 2], the ground truth ``[s, e)``.
    reference_lengths: int [batch].
    len_ref: padded reference length (static).
    num_random: random starts per reference (static), drawn uniformly without
      replacement among the valid starts other than the ground truth's.

  Returns:
    int32 [batch, 1 + min(num_random, len_ref - 1)]; `len_ref` (out of the grid)
    marks no start: a ground truth outside the reference, or a draw beyond the
    valid starts available.
  """
  batch = segment.shape[0]
  steps = jnp.arange(len_ref)[None, :]  # [1, Lr]
  start = segment[:, 0].astype(jnp.int32)  # [B]
  start_ok = (start >= 0) & (start < reference_lengths)
  gt = jnp.where(start_ok, start, len_ref)  # [B]
  num_random = min(num_random, len_ref - 1)
  if num_random <= 0:
    return gt[:, None]
  eligible = (steps < reference_lengths[:, None]) & (steps != gt[:, None])  # [B, Lr]
  # The top num_random of i.i.d. uniforms over the eligible starts: a uniform subset.
  noise = jnp.where(eligible, jax.random.uniform(rng, (batch, len_ref)), -1.0)
  values, picks = jax.lax.top_k(noise, num_random)  # [B, n]
  picks = jnp.where(values >= 0.0, picks, len_ref).astype(jnp.int32)
  return jnp.concatenate([gt[:, None], picks], axis=1)


class VideoLevel(nn.Module):
  """Feng et al.'s video-level baseline: nearest LSTM-encoded candidate segment.

  Attributes:
    config: the model section (`video_level_config()`). A full configuration with a
      `model` field is accepted too; its `model` section is used.
  """

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, query: jax.Array, query_mask: jax.Array, reference: jax.Array,
               reference_mask: jax.Array, *, deterministic: bool,
               segment: jax.Array | None = None) -> dict[str, jax.Array]:
    """Scores the candidate segments of each reference against its query.

    Args:
      query: [batch, len_query, D] query features.
      query_mask: bool[batch, len_query], True at valid steps.
      reference: [batch, len_ref, D] reference features.
      reference_mask: bool[batch, len_ref], True at valid steps.
      deterministic: disables dropout when True; otherwise needs the 'dropout' rng.
      segment: int [batch, 2], the ground truth ``[s, e)``. Given with
        `deterministic=False` (training), only its start and `train_starts` random
        valid starts (drawn with the 'dropout' rng) are scored. Ignored when
        `deterministic` is True; None: every start is scored.

    Returns:
      dict with
        'candidate_scores' float32 [batch, len_ref, K]: entry (s, k) is
          -||e(query) - e(reference[s:s+k+1])||^2 of unit embeddings; 0.0 where
          'candidate_mask' is False;
        'candidate_mask' bool [batch, len_ref, K]: inside the reference's valid
          steps and scored (in evaluation, `candidates.candidate_mask`).
    """
    cfg, dtype, query_mask, reference_mask = model_inputs(self.config, query, query_mask,
                                                          reference, reference_mask)
    check_config(cfg)
    num_lengths = int(cfg.num_lengths)
    batch, len_ref = reference.shape[0], reference.shape[1]
    sampled = segment is not None and not deterministic
    if sampled and tuple(segment.shape) != (batch, 2):
      raise ValueError(f"segment: expected shape {(batch, 2)} ([s, e) per example), got "
                       f"{tuple(segment.shape)}")
    query_lengths = query_mask.sum(axis=1).astype(jnp.int32)  # [B]
    reference_lengths = reference_mask.sum(axis=1).astype(jnp.int32)  # [B]

    # One encoder for the query and the segments.
    project = nn.Dense(cfg.embed_dim, dtype=dtype, name="projection")
    dropout = nn.Dropout(cfg.dropout)
    lstm = nn.RNN(nn.OptimizedLSTMCell(cfg.hidden_dim, dtype=dtype, parent=None), name="lstm")

    def embed_steps(x: jax.Array, mask: jax.Array) -> jax.Array:
      x = project(mask_steps(x, mask))  # [B, L, E]
      return mask_steps(dropout(x, deterministic=deterministic), mask)

    if sampled:
      starts = sample_starts(self.make_rng("dropout"), segment, reference_lengths, len_ref,
                             int(cfg.train_starts))  # [B, S]
    else:
      starts = jnp.broadcast_to(jnp.arange(len_ref, dtype=jnp.int32), (batch, len_ref))
    num_starts = starts.shape[1]

    x_ref = embed_steps(reference, reference_mask)  # [B, Lr, E], 0 at padded steps
    x_ref = jnp.pad(x_ref, ((0, 0), (0, num_lengths), (0, 0)))  # [B, Lr + K, E]
    steps = (jnp.minimum(starts, len_ref - 1)[:, :, None]
             + jnp.arange(num_lengths, dtype=jnp.int32)[None, None, :])  # [B, S, K]
    windows = x_ref[jnp.arange(batch)[:, None, None], steps]  # [B, S, K, E]
    windows = windows.reshape(batch * num_starts, num_lengths, -1)  # [B*S, K, E]

    # One scan for the query rows and the window rows (the same LSTM).
    x_query = embed_steps(query, query_mask)  # [B, Lq, E], 0 at padded steps
    num_steps = jax.core.max_dim(query.shape[1], num_lengths)  # Lq may be symbolic (export)

    def pad_steps(x: jax.Array) -> jax.Array:
      return jnp.pad(x, ((0, 0), (0, num_steps - x.shape[1]), (0, 0)))
    h = lstm(jnp.concatenate([pad_steps(x_query), pad_steps(windows)]))  # [B + B*S, T, H]
    h_query = h[jnp.arange(batch), jnp.maximum(query_lengths - 1, 0)]  # [B, H]
    q = l2_normalize(jnp.where(query_lengths[:, None] > 0, h_query, 0))  # [B, H], 0 if empty
    e = l2_normalize(h[batch:, :num_lengths].reshape(batch, num_starts, num_lengths, -1))
    # e: [B, S, K, H]
    scores = -jnp.sum(jnp.square(q[:, None, None, :] - e), axis=-1)  # [B, S, K]

    inside = candidates.candidate_mask(reference_lengths, len_ref, num_lengths)  # [B, Lr, K]
    if sampled:
      rows = jnp.arange(batch)[:, None]  # [B, 1]
      grid = jnp.zeros((batch, len_ref, num_lengths), jnp.float32).at[rows, starts].set(
          scores, mode="drop")  # starts == len_ref (none) are dropped
      scored = jnp.zeros((batch, len_ref), bool).at[rows, starts].set(True, mode="drop")
      mask = inside & scored[:, :, None]
    else:
      grid, mask = scores, inside
    return {"candidate_scores": jnp.where(mask, grid, 0.0).astype(jnp.float32),
            "candidate_mask": mask}


class VideoLevelFamily(candidates.CandidateScoring):
  """The video-level baseline in the harness: trained with the triplet loss; confidence:
  1 - d^2 / 4 of the predicted segment (d: the distance of unit vectors)."""

  name = "video_level"
  title = "video-level baseline"
  module_class = VideoLevel
  loss_name = "loss_t"
  check_model = staticmethod(check_config)

  def candidate_loss(self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
                     ) -> jax.Array:
    return losses.triplet_loss(outputs["candidate_scores"], outputs["candidate_mask"],
                               batch["segment"], batch["example_mask"],
                               margin=self.config.loss.triplet_margin,
                               negative_iou=self.config.loss.negative_iou)

  def confidence(self, best: jax.Array) -> jax.Array:
    return 1.0 + best / 4.0
