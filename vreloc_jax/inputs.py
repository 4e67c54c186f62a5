"""What every model does with its inputs: checks, padding masks, its configuration, its dtype.

Also what the extensions read: each video's features minus their mean (`centred`, beside
the features in `with_centred`) and the training pairs' shared offsets (`with_shared_offset`).

Every model (the paper's and the comparators) takes ``(query [B, Lq, D], query_mask
[B, Lq], reference [B, Lr, D], reference_mask [B, Lr])``; masks are bool, True at valid
steps, which come first. `model_inputs` is the prologue they share.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

# Score of a masked position before a softmax. Finite (not -inf), so that a row with no
# valid position gives a uniform softmax instead of NaN; scores are float32.
MASKED_SCORE = -1e9

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """The jnp dtype of a model's ``dtype`` field ("float32" or "bfloat16")."""
  if name not in DTYPES:
    raise ValueError(f"model dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def mask_steps(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Zeroes the padded steps of a sequence.

  Args:
    x: [batch, length, features] values.
    mask: bool[batch, length], True at valid steps.

  Returns:
    [batch, length, features], `x` at valid steps and 0 at padded steps (in the
    dtype of `x`; uses `where`, so NaN or inf padding content is removed too).
  """
  return jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))


def centred(x: jax.Array, mask: jax.Array) -> jax.Array:
  """A sequence's features minus their mean over its valid steps.

  Args:
    x: [batch, length, D] features.
    mask: bool[batch, length], True at valid steps.

  Returns:
    [batch, length, D] in the dtype of `x`; 0 at padded steps.
  """
  count = jnp.maximum(mask.sum(axis=1), 1)[:, None, None].astype(x.dtype)  # [B, 1, 1]
  x = mask_steps(x, mask)  # [B, L, D]
  return mask_steps(x - x.sum(axis=1, keepdims=True) / count, mask)


def with_centred(x: jax.Array, mask: jax.Array) -> jax.Array:
  """A sequence's features beside themselves minus their mean over its valid steps.

  The second half takes out what is constant over the sequence (a video's own look,
  which can dominate its features, as on synthetic v5); the first keeps it (a speaker's
  voice is the class on Japanese Vowels). The mapping that reads both learns how much
  of each to use.

  Args:
    x: [batch, length, D] features.
    mask: bool[batch, length], True at valid steps.

  Returns:
    [batch, length, 2 * D] in the dtype of `x`; 0 at padded steps.
  """
  return jnp.concatenate([mask_steps(x, mask), centred(x, mask)], axis=-1)  # [B, L, 2D]


def with_shared_offset(key: jax.Array, query: jax.Array, query_mask: jax.Array,
                       reference: jax.Array, reference_mask: jax.Array, scale: float
                       ) -> tuple[jax.Array, jax.Array]:
  """Adds one random offset per pair to both its videos (a training augmentation).

  Each pair's offset is drawn from N(0, I) and scaled so that its expected norm is
  ``scale`` times the batch's mean reference step norm. A video's own look (its mean)
  then no longer identifies it, so a model cannot learn its weak targets by video;
  what the query and the reference share is kept (docs/results.md, "Shared offsets").

  Args:
    key: a PRNG key.
    query: [batch, len_query, D]; query_mask: bool[batch, len_query].
    reference: [batch, len_ref, D]; reference_mask: bool[batch, len_ref].
    scale: the offsets' size relative to the mean reference step norm; > 0.

  Returns:
    The query and the reference with the offsets added; 0 at padded steps.
  """
  norms = jnp.sqrt(jnp.sum(jnp.square(reference), -1))  # [B, Lr]
  mean_norm = (jnp.sum(jnp.where(reference_mask, norms, 0.0))
               / jnp.maximum(reference_mask.sum(), 1))  # []
  dim = reference.shape[-1]
  offset = jax.random.normal(key, (reference.shape[0], 1, dim))  # [B, 1, D]
  offset = offset * (scale * mean_norm / jnp.sqrt(dim))
  return (jnp.where(query_mask[..., None], query + offset, 0.0),
          jnp.where(reference_mask[..., None], reference + offset, 0.0))


def check_sequence(name: str, x: jax.Array, mask: jax.Array) -> None:
  """Raises ValueError unless `x` is [batch, length, features] with a matching mask."""
  if x.ndim != 3:
    raise ValueError(f"{name}: expected [batch, length, features], got shape {x.shape}")
  if mask.shape != x.shape[:2]:
    raise ValueError(
        f"{name}_mask: expected shape {x.shape[:2]} (batch, length of {name}), "
        f"got {mask.shape}")


def check_pair(query: jax.Array, query_mask: jax.Array, reference: jax.Array,
               reference_mask: jax.Array) -> None:
  """`check_sequence` on both inputs of a model, and that they share batch and features."""
  check_sequence("query", query, query_mask)
  check_sequence("reference", reference, reference_mask)
  if query.shape[0] != reference.shape[0] or query.shape[2] != reference.shape[2]:
    raise ValueError(
        f"query {query.shape} and reference {reference.shape} must share batch size "
        "and feature dimension")


def model_inputs(config: ml_collections.ConfigDict, query: jax.Array, query_mask: jax.Array,
                 reference: jax.Array, reference_mask: jax.Array
                 ) -> tuple[ml_collections.ConfigDict, Any, jax.Array, jax.Array]:
  """The prologue of every model's ``__call__``: its section, dtype and checked bool masks.

  Args:
    config: the model section, or a full configuration (its ``model`` section is used).
    query, query_mask, reference, reference_mask: the model's inputs (module docstring).

  Returns:
    ``(model section, compute dtype, query_mask, reference_mask)``, the masks as bool.
  """
  cfg = config.model if "model" in config else config
  dtype = compute_dtype(cfg.dtype)
  check_pair(query, query_mask, reference, reference_mask)
  return cfg, dtype, query_mask.astype(bool), reference_mask.astype(bool)
