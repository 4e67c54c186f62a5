"""Cross Gated Bilinear Matching (CGBM): the benchmark authors' own model.

Feng, Ma, Liu, Zhang and Luo, "Video Re-localization", ECCV 2018, Sec. 3, as their
public code implements it (github.com/fengyang0317/video_reloc, TensorFlow 1, MIT).
Written from the facts in docs/comparators.md; no code of that repository is reused.

    query [B, Lq, D], reference [B, Lr, D]
      -> aggregation LSTM (one LSTM for both by default)   H^q [B, Lq, d], H^r [B, Lr, d]
      -> dropout
      -> matching aggregation: a bidirectional LSTM whose every step i does
           attentive query summary  (attention over the query) -> s_i [B, d]
           cross gating             (h^r_i gates s_i, s_i gates h^r_i)
           bilinear matching        (factorized, rank k)       -> t_i [B, d]
           LSTM step on t_i                                     H^m [B, Lr, 2 m]
      -> dropout
      -> localization layer (LSTM -> Dense(4))                  logits [B, Lr, 4]

Channels of the logits: (start, end, inside, outside), as `vreloc_jax.relocalizer.model`. The
call signature and the output dict are `ReLocalizer`'s, so the project's training
loop, losses and segment search run unchanged.

Where each fact comes from, the choices made where the sources leave them open, and
the parameter count: docs/comparators.md.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax.linen.recurrent import flip_sequences
import jax
import jax.numpy as jnp
import ml_collections

from vreloc_jax import family
from vreloc_jax.comparators.tf_lstm import KERNEL_INIT
from vreloc_jax.comparators.tf_lstm import BasicLSTMCell
from vreloc_jax.comparators.tf_lstm import Carry
from vreloc_jax.inputs import MASKED_SCORE
from vreloc_jax.inputs import check_sequence
from vreloc_jax.inputs import mask_steps
from vreloc_jax.inputs import model_inputs
from vreloc_jax.losses import NUM_CLASSES

DIRECTIONS = ("forward", "backward")


def cgbm_config() -> ml_collections.ConfigDict:
  """Returns the CGBM model section of the configuration (the authors' sizes)."""
  cfg = ml_collections.ConfigDict()
  cfg.aggregation_dim = 128  # d: units of the aggregation LSTM (flag mem_dim).
  cfg.share_aggregation = True  # One aggregation LSTM for query and reference (scope video_lstm).
  cfg.attention_dim = 128  # Size of the attention vector tanh(W^q h^q + W^p [h^r; h^m]) (att_dim).
  cfg.matching_dim = 128  # Units of each matching LSTM direction (att_dim).
  cfg.bilinear_rank = 8  # k: factors per output of the bilinear matching (bilinear(k=8)).
  cfg.share_matching = True  # Attention, gates, bilinear shared by both directions (AUTO_REUSE).
  cfg.localization_dim = 128  # Units of the localization LSTM (att_dim, scope pointer).
  cfg.forget_bias = 1.0  # Constant added to the LSTM forget gate (BasicLSTMCell default).
  cfg.dropout_aggregation = 0.4  # On both aggregation outputs (1 - keep_prob 0.6).
  cfg.dropout_matching = 0.2  # On the matching BiLSTM output (1 - (keep_prob + 0.2)).
  cfg.dtype = "float32"  # "float32"/"bfloat16" compute; params, carries, softmaxes float32.
  return cfg


class AttentiveQuerySummary(nn.Module):
  """Attention over the query at one reference step (the paper's attentive summary).

  e_j = w^T tanh(k_j + W^p [h^r_i; h^m_{i-1}] + b^p) + b^w with the query keys
  k_j = W^q h^q_j (computed once by the caller), a_j = softmax over valid j, and
  summary = sum_j a_j h^q_j.

  Attributes:
    attention_dim: size of the attention vector (of the keys).
    dtype: computation dtype of the projections (scores and softmax are float32).
  """

  attention_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, reference_step: jax.Array, state: jax.Array, query: jax.Array,
               query_keys: jax.Array, query_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Attends to the query.

    Args:
      reference_step: [batch, d] h^r_i.
      state: [batch, m] h^m_{i-1}, the matching LSTM's previous hidden state.
      query: [batch, len_query, d] h^q, 0 at padded steps.
      query_keys: [batch, len_query, attention_dim] W^q h^q.
      query_mask: bool[batch, len_query].

    Returns:
      (summary float32[batch, d], weights float32[batch, len_query]); the weights are
      0 at padded query steps (uniform over the padding, with a zero summary, for a
      query without valid steps).
    """
    step = nn.Dense(self.attention_dim, kernel_init=KERNEL_INIT, dtype=self.dtype,
                    name="step_projection")(
                        jnp.concatenate([reference_step, state], axis=-1))  # [B, a]
    hidden = jnp.tanh(query_keys + step[:, None, :].astype(query_keys.dtype))  # [B, Lq, a]
    scores = nn.Dense(1, kernel_init=KERNEL_INIT, dtype=self.dtype,
                      name="score")(hidden)[..., 0].astype(jnp.float32)  # [B, Lq]
    scores = jnp.where(query_mask, scores, MASKED_SCORE)
    weights = jax.nn.softmax(scores, axis=-1)  # [B, Lq]
    summary = jnp.einsum("bq,bqd->bd", weights, query.astype(jnp.float32))  # [B, d]
    return summary, weights


class CrossGating(nn.Module):
  """Cross gating: each of the two vectors gates the other.

  query_gate = sigmoid(W^gq h^r + b), reference_gate = sigmoid(W^gr s + b), both from
  the un-gated vectors; returns (h^r * reference_gate, s * query_gate).

  Attributes:
    dtype: computation dtype of the gate projections.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, reference_step: jax.Array,
               query_summary: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gates.

    Args:
      reference_step: [batch, d_r] h^r_i.
      query_summary: [batch, d_q] s_i.

    Returns:
      (gated reference [batch, d_r], gated summary [batch, d_q]), float32.
    """
    query_gate = jax.nn.sigmoid(nn.Dense(
        query_summary.shape[-1], kernel_init=KERNEL_INIT, dtype=self.dtype,
        name="query_gate")(reference_step).astype(jnp.float32))  # [B, d_q]
    reference_gate = jax.nn.sigmoid(nn.Dense(
        reference_step.shape[-1], kernel_init=KERNEL_INIT, dtype=self.dtype,
        name="reference_gate")(query_summary).astype(jnp.float32))  # [B, d_r]
    return (reference_step.astype(jnp.float32) * reference_gate,
            query_summary.astype(jnp.float32) * query_gate)


class BilinearMatching(nn.Module):
  """Factorized bilinear matching: t_n = sum_{m<k} (W x + b)_{n,m} (W y + b)_{n,m}.

  One projection (W, b) is applied to both vectors, so output n is a symmetric
  rank-k bilinear form x^T W_n^T W_n y plus linear and constant terms.

  Attributes:
    rank: k, factors per output.
    features: number of outputs n; 0 means the input size (the authors' choice).
    dtype: computation dtype of the projection (the products are summed in float32).
  """

  rank: int = 8
  features: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Matches two vectors.

    Args:
      x: [batch, d] gated reference step.
      y: [batch, d] gated query summary (same size: the projection is shared).

    Returns:
      float32[batch, features].
    """
    if x.shape != y.shape:
      raise ValueError(f"bilinear matching needs inputs of one shape (a shared projection), "
                       f"got {x.shape} and {y.shape}")
    if self.rank < 1 or self.features < 0:
      raise ValueError(f"bilinear matching: rank must be >= 1 and features >= 0, got "
                       f"{self.rank}, {self.features}")
    features = self.features or x.shape[-1]
    projection = nn.Dense(features * self.rank, kernel_init=KERNEL_INIT, dtype=self.dtype,
                          name="projection")
    px = projection(x).astype(jnp.float32).reshape(*x.shape[:-1], features, self.rank)
    py = projection(y).astype(jnp.float32).reshape(*y.shape[:-1], features, self.rank)
    return jnp.sum(px * py, axis=-1)  # [B, n]


class MatchingCell(nn.Module):
  """One reference step of both matching directions (scanned by `MatchingAggregation`).

  Per direction: attentive query summary -> cross gating -> bilinear matching ->
  LSTM step. With `share_matching` the first three are one set of weights.

  Attributes:
    attention_dim: size of the attention vector.
    matching_dim: units of each direction's LSTM.
    bilinear_rank: k of the bilinear matching.
    share_matching: one attention/gating/bilinear module for both directions.
    forget_bias: the LSTMs' forget bias.
    dtype: computation dtype.
  """

  attention_dim: int
  matching_dim: int
  bilinear_rank: int
  share_matching: bool = True
  forget_bias: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: tuple[Carry, Carry], reference_steps: tuple[jax.Array, jax.Array],
               query: jax.Array, query_keys: tuple[jax.Array, jax.Array],
               query_mask: jax.Array) -> tuple[tuple[Carry, Carry], tuple[Any, Any]]:
    """Steps both directions once.

    Args:
      carry: ((c, h) forward, (c, h) backward), float32[batch, matching_dim] each.
      reference_steps: (forward step i, backward step i) of H^r and of H^r reversed
        within each valid length, [batch, d] each.
      query: [batch, len_query, d] H^q, 0 at padded steps.
      query_keys: per direction [batch, len_query, attention_dim] W^q H^q.
      query_mask: bool[batch, len_query].

    Returns:
      (new carry, ((forward h, backward h) [batch, matching_dim],
                   (forward, backward) attention weights [batch, len_query])).
    """
    def parts(suffix: str) -> tuple[nn.Module, nn.Module, nn.Module]:
      return (AttentiveQuerySummary(self.attention_dim, dtype=self.dtype,
                                    name=f"attentive_query_summary{suffix}"),
              CrossGating(dtype=self.dtype, name=f"cross_gating{suffix}"),
              BilinearMatching(self.bilinear_rank, dtype=self.dtype,
                               name=f"bilinear_matching{suffix}"))

    if self.share_matching:
      shared = parts("")
      modules = (shared, shared)
    else:
      modules = tuple(parts(f"_{d}") for d in DIRECTIONS)
    new_carry, outputs, weights = [], [], []
    for index, direction in enumerate(DIRECTIONS):
      attend, gate, match = modules[index]
      reference_step = reference_steps[index]  # [B, d]
      summary, attention = attend(reference_step, carry[index][1], query, query_keys[index],
                                  query_mask)  # [B, d], [B, Lq]
      gated_reference, gated_summary = gate(reference_step, summary)  # [B, d] each
      matched = match(gated_reference, gated_summary)  # [B, d]
      state, h = BasicLSTMCell(self.matching_dim, self.forget_bias, dtype=self.dtype,
                               name=f"{direction}_lstm")(carry[index], matched)  # [B, m]
      new_carry.append(state)
      outputs.append(h)
      weights.append(attention)
    return tuple(new_carry), (tuple(outputs), tuple(weights))


class MatchingAggregation(nn.Module):
  """The cross gated bilinear matching BiLSTM over the reference (the paper's Sec. 3.2).

  The backward direction reads each reference reversed within its valid length and
  its outputs are reversed back, so both directions' outputs at valid steps never
  see padding.

  Attributes:
    attention_dim, matching_dim, bilinear_rank, share_matching, forget_bias, dtype:
      see `MatchingCell`.
  """

  attention_dim: int
  matching_dim: int
  bilinear_rank: int
  share_matching: bool = True
  forget_bias: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, reference: jax.Array, reference_mask: jax.Array, query: jax.Array,
               query_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Matches every reference step against the attended query.

    Args:
      reference: [batch, len_ref, d] H^r.
      reference_mask: bool[batch, len_ref].
      query: [batch, len_query, d] H^q.
      query_mask: bool[batch, len_query].

    Returns:
      (H^m float32[batch, len_ref, 2 * matching_dim], forward then backward, 0 at
      padded steps; attention float32[batch, len_ref, len_query], the mean of the two
      directions' weights, 0 at padded reference or query steps).
    """
    check_sequence("reference", reference, reference_mask)
    check_sequence("query", query, query_mask)
    lengths = reference_mask.sum(axis=1).astype(jnp.int32)  # [B]
    reference = mask_steps(reference, reference_mask)  # [B, Lr, d]
    query = mask_steps(query, query_mask)  # [B, Lq, d]

    def project(name: str) -> jax.Array:  # W^q h^q_j, hoisted out of the recurrence
      return nn.Dense(self.attention_dim, use_bias=False, kernel_init=KERNEL_INIT,
                      dtype=self.dtype, name=name)(query)  # [B, Lq, a]
    if self.share_matching:
      keys = project("query_projection")
      query_keys = (keys, keys)
    else:
      query_keys = tuple(project(f"query_projection_{d}") for d in DIRECTIONS)

    reversed_reference = flip_sequences(reference, lengths, num_batch_dims=1,
                                        time_major=False)  # [B, Lr, d]
    scan = nn.scan(MatchingCell, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=(1, nn.broadcast, nn.broadcast, nn.broadcast), out_axes=1)
    cell = scan(self.attention_dim, self.matching_dim, self.bilinear_rank,
                self.share_matching, self.forget_bias, dtype=self.dtype, name="cell")
    zeros = jnp.zeros((reference.shape[0], self.matching_dim), jnp.float32)
    carry = ((zeros, zeros), (zeros, zeros))
    _, ((forward, backward), (forward_weights, backward_weights)) = cell(
        carry, (reference, reversed_reference), query, query_keys, query_mask)
    backward = flip_sequences(backward, lengths, num_batch_dims=1, time_major=False)
    backward_weights = flip_sequences(backward_weights, lengths, num_batch_dims=1,
                                      time_major=False)  # [B, Lr, Lq]
    h = mask_steps(jnp.concatenate([forward, backward], axis=-1), reference_mask)  # [B, Lr, 2m]
    attention = 0.5 * (forward_weights + backward_weights) * query_mask[:, None, :]
    return h, mask_steps(attention, reference_mask)


class LocalizationLayer(nn.Module):
  """LSTM over the matching outputs, then a linear layer to the 4 logits (Sec. 3.3).

  Attributes:
    features: units of the LSTM.
    forget_bias: its forget bias.
    dtype: computation dtype (logits are float32).
  """

  features: int
  forget_bias: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Predicts per-step logits.

    Args:
      x: [batch, len_ref, 2 * matching_dim] H^m.
      mask: bool[batch, len_ref].

    Returns:
      float32[batch, len_ref, 4] (start, end, inside, outside); 0 at padded steps.
    """
    lengths = mask.sum(axis=1).astype(jnp.int32)  # [B]
    cell = BasicLSTMCell(self.features, self.forget_bias, dtype=self.dtype, parent=None)
    h = nn.RNN(cell, name="lstm")(mask_steps(x, mask), seq_lengths=lengths)  # [B, Lr, l]
    logits = nn.Dense(NUM_CLASSES, kernel_init=KERNEL_INIT, dtype=self.dtype,
                      name="classifier")(h)  # [B, Lr, 4]
    return mask_steps(logits.astype(jnp.float32), mask)


class CGBM(nn.Module):
  """Cross Gated Bilinear Matching model of Feng et al. (2018), the benchmark's model.

  Attributes:
    config: the model section (`cgbm_config()`). A full configuration with a `model`
      field is accepted too; its `model` section is used.
  """

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, query: jax.Array, query_mask: jax.Array, reference: jax.Array,
               reference_mask: jax.Array, *, deterministic: bool) -> dict[str, jax.Array]:
    """Runs the model on a padded batch.

    Args:
      query: [batch, len_query, D] query features.
      query_mask: bool[batch, len_query], True at valid steps.
      reference: [batch, len_ref, D] reference features.
      reference_mask: bool[batch, len_ref], True at valid steps.
      deterministic: disables dropout when True; otherwise needs the 'dropout' rng.

    Returns:
      dict with float32 arrays:
        'logits' [batch, len_ref, 4] (start, end, inside, outside); 0 at padded steps,
        'log_probs' [batch, len_ref, 4] log-softmax of the logits,
        'probs' [batch, len_ref, 4] softmax of the logits (0.25 each at padded steps),
        'attention' [batch, len_ref, len_query] the attention weights over the query
          at each reference step, mean of the two matching directions; 0 at padded
          reference or query steps.
    """
    cfg, dtype, query_mask, reference_mask = model_inputs(self.config, query, query_mask,
                                                          reference, reference_mask)
    query_lengths = query_mask.sum(axis=1).astype(jnp.int32)  # [B]
    reference_lengths = reference_mask.sum(axis=1).astype(jnp.int32)  # [B]

    def aggregation(name: str) -> nn.RNN:
      return nn.RNN(BasicLSTMCell(cfg.aggregation_dim, cfg.forget_bias, dtype=dtype,
                                  parent=None), name=name)
    if cfg.share_aggregation:
      query_lstm = reference_lstm = aggregation("aggregation")
    else:
      query_lstm = aggregation("query_aggregation")
      reference_lstm = aggregation("reference_aggregation")
    h_query = query_lstm(mask_steps(query, query_mask),
                         seq_lengths=query_lengths)  # [B, Lq, d]
    h_ref = reference_lstm(mask_steps(reference, reference_mask),
                           seq_lengths=reference_lengths)  # [B, Lr, d]
    dropout = nn.Dropout(cfg.dropout_aggregation)
    h_query = mask_steps(dropout(h_query, deterministic=deterministic), query_mask)
    h_ref = mask_steps(dropout(h_ref, deterministic=deterministic), reference_mask)

    matched, attention = MatchingAggregation(
        cfg.attention_dim, cfg.matching_dim, cfg.bilinear_rank, cfg.share_matching,
        cfg.forget_bias, dtype=dtype, name="matching_aggregation")(
            h_ref, reference_mask, h_query, query_mask)  # [B, Lr, 2m], [B, Lr, Lq]
    matched = nn.Dropout(cfg.dropout_matching)(matched, deterministic=deterministic)
    logits = LocalizationLayer(cfg.localization_dim, cfg.forget_bias, dtype=dtype,
                               name="localization")(matched, reference_mask)  # [B, Lr, 4]
    return {
        "logits": logits,
        "log_probs": jax.nn.log_softmax(logits, axis=-1),
        "probs": jax.nn.softmax(logits, axis=-1),
        "attention": attention,
    }


class CGBMFamily(family.StepLabeling):
  """CGBM in the harness: per-step outputs like the paper's model, trained the same way
  (its configuration weighs the cross-entropy alone); its attention rows are query steps."""

  name = "cgbm"
  title = "CGBM"
  module_class = CGBM
  attention_rows = "query step"
