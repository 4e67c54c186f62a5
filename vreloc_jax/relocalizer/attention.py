"""Attention modules of the re-localization model (paper eqs. 1-6).

Two modules, both padding-invariant (outputs at valid steps do not depend on the
content or the amount of padding; outputs at padded steps are zero):

* `MultiscaleAttention` (eqs. 4-6, Table 1): per head, a dilated 1-D convolution
  of the reference and one of the query, a reference-by-query score map, a softmax
  over the (valid) reference frames for each query frame, and an average over the
  (valid) query frames. One score per reference frame and head.
* `SelfAttention` (eqs. 1-3): multi-head scaled dot-product self-attention over
  the (valid) reference frames, heads concatenated.

and one parameter-free score that is not in the paper, `frame_similarity`: the
frame-level baseline's per-step similarity to the query, as an input channel.

Masks are bool arrays with True at valid (unpadded) steps.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreloc_jax.inputs import MASKED_SCORE
from vreloc_jax.inputs import check_sequence
from vreloc_jax.inputs import mask_steps

AttentionGroup = tuple[int, int, int]  # (num_heads, kernel_size, dilation)


def normalize_groups(groups: Sequence[Sequence[int]]) -> tuple[AttentionGroup, ...]:
  """Validates attention head groups and returns them as a tuple of int triples.

  Args:
    groups: sequence of (num_heads, kernel_size, dilation), e.g. Table 1.

  Returns:
    The same groups as a tuple of int 3-tuples.

  Raises:
    ValueError: if there is no group, a group is not a triple, or a value is < 1.
  """
  result = []
  for group in groups:
    group = tuple(int(v) for v in group)
    if len(group) != 3 or min(group) < 1:
      raise ValueError(
          "attention_groups: each group must be (num_heads, kernel_size, dilation) "
          f"with positive integers, got {group}")
    result.append(group)
  if not result:
    raise ValueError("attention_groups: at least one group of heads is required")
  return tuple(result)


class MultiscaleAttention(nn.Module):
  """Multiscale attention between a reference and a query (paper eqs. 4-6).

  For head i of a group (num_heads, kernel_size, dilation):
    R_i = conv1_i(H^r) [Lr, head_dim], Q_i = conv2_i(H^q) [Lq, head_dim],
    A_i = softmax over reference frames of R_i Q_i^T / sqrt(head_dim)  [Lr, Lq],
    head_i = mean over query frames of A_i  [Lr].
  All heads of a group share one convolution with num_heads * head_dim output
  channels ('SAME' padding), reshaped to heads. Padded reference frames are excluded
  from the softmax; padded query frames from the average. Convolution inputs are
  zeroed at padded steps first, so a padded sequence behaves as the unpadded one
  ('SAME' padding also pads with zeros).

  Attributes:
    groups: tuple of (num_heads, kernel_size, dilation); heads are ordered group by
      group in the output.
    head_dim: number of kernels (channels) per head.
    relative: multiply each head by the reference's valid length l_r, so that
      uniform attention reads 1 whatever l_r. The paper's average of a softmax
      over l_r frames is ~1/l_r: 0.003 on a 300-step reference, too small a
      signal for the LSTM that reads it. False gives the paper's literal values.
    dtype: computation dtype of the convolutions (scores and softmax use float32).
  """

  groups: tuple[AttentionGroup, ...]
  head_dim: int = 32
  relative: bool = True
  dtype: Any = jnp.float32

  @property
  def num_heads(self) -> int:
    return sum(g[0] for g in normalize_groups(self.groups))

  @nn.compact
  def __call__(self, reference: jax.Array, reference_mask: jax.Array,
               query: jax.Array, query_mask: jax.Array) -> jax.Array:
    """Computes the attention score sequences H^matt (eq. 8).

    Args:
      reference: [batch, len_ref, d_h] mapped reference features H^r.
      reference_mask: bool[batch, len_ref].
      query: [batch, len_query, d_h] mapped query features H^q.
      query_mask: bool[batch, len_query].

    Returns:
      float32[batch, len_ref, num_heads]; each head sums to 1 (``relative``:
      to l_r) over the valid reference frames of an example with a valid query
      frame; 0 at padded steps.
    """
    check_sequence("reference", reference, reference_mask)
    check_sequence("query", query, query_mask)
    groups = normalize_groups(self.groups)
    batch, len_ref, _ = reference.shape
    len_query = query.shape[1]
    reference = mask_steps(reference, reference_mask)  # [B, Lr, d_h]
    query = mask_steps(query, query_mask)  # [B, Lq, d_h]

    ref_heads, query_heads = [], []
    for index, (num_heads, kernel_size, dilation) in enumerate(groups):
      def conv(name: str) -> nn.Conv:
        return nn.Conv(features=num_heads * self.head_dim,
                       kernel_size=(kernel_size,),
                       kernel_dilation=(dilation,),
                       padding="SAME",
                       dtype=self.dtype,
                       name=f"{name}_{index}")
      r = conv("reference_conv")(reference)  # [B, Lr, heads_g * head_dim]
      q = conv("query_conv")(query)  # [B, Lq, heads_g * head_dim]
      ref_heads.append(r.reshape(batch, len_ref, num_heads, self.head_dim))
      query_heads.append(q.reshape(batch, len_query, num_heads, self.head_dim))
    r = jnp.concatenate(ref_heads, axis=2)  # [B, Lr, heads, head_dim]
    q = jnp.concatenate(query_heads, axis=2)  # [B, Lq, heads, head_dim]

    scores = jnp.einsum("brhd,bqhd->bhrq", r, q,
                        preferred_element_type=jnp.float32)  # [B, heads, Lr, Lq]
    scores = scores.astype(jnp.float32) / math.sqrt(self.head_dim)
    scores = jnp.where(reference_mask[:, None, :, None], scores, MASKED_SCORE)
    weights = jax.nn.softmax(scores, axis=2)  # over reference frames
    query_valid = query_mask[:, None, None, :].astype(jnp.float32)  # [B, 1, 1, Lq]
    query_count = jnp.maximum(query_mask.sum(axis=1), 1).astype(jnp.float32)  # [B]
    pooled = (weights * query_valid).sum(axis=3) / query_count[:, None, None]  # [B, heads, Lr]
    pooled = pooled.transpose(0, 2, 1)  # [B, Lr, heads]
    if self.relative:
      ref_length = reference_mask.sum(axis=1).astype(jnp.float32)  # [B]
      pooled = pooled * ref_length[:, None, None]
    return mask_steps(pooled, reference_mask)


class SelfAttention(nn.Module):
  """Multi-head scaled dot-product self-attention on the reference (eqs. 1-3).

  head_i = softmax(X W_i^Q (X W_i^K)^T / sqrt(d_k)) X W_i^V, output = Concat(heads)
  (eq. 1 has no output projection, and W are plain matrices without bias). Keys at
  padded steps are masked out; outputs at padded steps are zero.

  Output size: the paper states H^satt in R^{l_r x h d_k} (eq. 9) but writes its rows
  as 1 x 2 d_h in eq. 10; the two disagree (64 vs 256 at the paper's settings). By
  default (`out_features=0`) we follow eqs. 1 and 9: the plain concatenation, h * d_k
  = 64 features. A positive `out_features` appends a linear output projection (as in
  Vaswani et al.) to that size, e.g. 256 for the eq. 10 reading.

  Attributes:
    num_heads: h.
    head_dim: d_k.
    out_features: 0 for the plain concatenation (h * d_k), else the size of an added
      output projection.
    dtype: computation dtype of the projections (scores and softmax use float32).
  """

  num_heads: int = 2
  head_dim: int = 32
  out_features: int = 0
  dtype: Any = jnp.float32

  @property
  def features(self) -> int:
    return self.out_features if self.out_features > 0 else self.num_heads * self.head_dim

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Applies self-attention.

    Args:
      x: [batch, length, d_f] features (H^r).
      mask: bool[batch, length].

    Returns:
      [batch, length, features] (h * d_k by default), in `dtype`; 0 at padded steps.
    """
    check_sequence("reference", x, mask)
    if self.num_heads < 1 or self.head_dim < 1 or self.out_features < 0:
      raise ValueError(
          "SelfAttention: num_heads and head_dim must be >= 1 and out_features >= 0, "
          f"got {self.num_heads}, {self.head_dim}, {self.out_features}")
    x = mask_steps(x, mask)  # [B, L, d_f]

    def project(name: str) -> jax.Array:
      return nn.DenseGeneral(features=(self.num_heads, self.head_dim), use_bias=False,
                             dtype=self.dtype, name=name)(x)  # [B, L, h, d_k]

    q, k, v = project("query"), project("key"), project("value")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32)  # [B, h, L, L]
    scores = scores.astype(jnp.float32) / math.sqrt(self.head_dim)
    scores = jnp.where(mask[:, None, None, :], scores, MASKED_SCORE)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # over keys
    heads = jnp.einsum("bhqk,bkhd->bqhd", weights, v)  # [B, L, h, d_k]
    out = heads.reshape(*heads.shape[:2], self.num_heads * self.head_dim)  # [B, L, h*d_k]
    if self.out_features > 0:
      out = nn.Dense(self.out_features, dtype=self.dtype, name="output")(out)
    return mask_steps(out, mask)


def frame_similarity(reference: jax.Array, reference_mask: jax.Array, query: jax.Array,
                     query_mask: jax.Array, epsilon: float = 1e-6) -> jax.Array:
  """The frame-level baseline's score of each reference step, standardized per reference.

  Not in the paper (an extension, `model_config().frame_similarity`): the mean over
  the valid query frames of the cosine similarity between a reference frame and a
  query frame, computed on the input features, then standardized over the valid
  steps of its reference (zero mean, unit variance). The frame-level baseline picks
  the window with the highest mean of this score, so the standardization loses
  nothing it uses; it makes the channel's scale the same for every reference.

  Args:
    reference: [batch, len_ref, D] input reference features.
    reference_mask: bool[batch, len_ref].
    query: [batch, len_query, D] input query features.
    query_mask: bool[batch, len_query].
    epsilon: floor of the norms and of the standard deviation.

  Returns:
    float32[batch, len_ref, 1]; 0 at padded steps (and for a reference whose valid
    steps all score the same).
  """
  check_sequence("reference", reference, reference_mask)
  check_sequence("query", query, query_mask)

  def unit(x: jax.Array, mask: jax.Array) -> jax.Array:
    x = mask_steps(x.astype(jnp.float32), mask)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), epsilon)

  query_count = jnp.maximum(query_mask.sum(axis=1), 1).astype(jnp.float32)  # [B]
  mean_query = unit(query, query_mask).sum(axis=1) / query_count[:, None]  # [B, D]
  score = jnp.einsum("brd,bd->br", unit(reference, reference_mask), mean_query)  # [B, Lr]
  valid = reference_mask.astype(jnp.float32)  # [B, Lr]
  count = jnp.maximum(valid.sum(axis=1, keepdims=True), 1.0)  # [B, 1]
  mean = (score * valid).sum(axis=1, keepdims=True) / count
  var = (((score - mean) * valid) ** 2).sum(axis=1, keepdims=True) / count
  standardized = (score - mean) / jnp.maximum(jnp.sqrt(var), epsilon)  # [B, Lr]
  return mask_steps(standardized[..., None], reference_mask)
