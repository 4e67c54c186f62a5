"""SST: Single-Stream Temporal Action Proposals, the query-agnostic comparator.

Buch, Escorcia, Shen, Ghanem and Niebles, "SST: Single-Stream Temporal Action
Proposals", CVPR 2017 (official code: github.com/shyamal-b/sst, Theano/Lasagne).
Written from the facts in docs/comparators.md; no code of these repositories is reused.

    reference [B, Lr, D]  (the query is validated, then never read)
      -> padded steps zeroed
      -> stacked causal GRUs (forward only), dropout after each   h [B, Lr, H]
      -> Dense(K) at every step t: logits of the K segments        [B, Lr, K]
         of lengths 1..K ENDING at t (end-indexed)
      -> `candidates.from_end_indexed`: start-indexed grid         [B, Lr, K]

Output: ``candidate_scores`` (logits; the sigmoid is SST's confidence) and
``candidate_mask`` (`candidates.candidate_mask`): entry (s, k) is the segment
[s, s + k + 1). The prediction is the best valid candidate (`candidates.best_candidate`);
the training loss is `losses.proposal_cross_entropy`. SST never sees the query, so its
score measures how much of the benchmark an "is there an action here?" detector
solves without knowing which action is asked for.

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


def sst_config() -> ml_collections.ConfigDict:
  """Returns the SST model section of the configuration (see "Choices made here")."""
  cfg = ml_collections.ConfigDict()
  cfg.num_lengths = 32  # K: candidate lengths 1..K steps (benchmark segments are 1-32 features).
  cfg.hidden_dim = 128  # GRU units per layer (JaywongWang's; the authors' code: 512).
  cfg.num_layers = 2  # Stacked GRU layers (depth=2 there; 2 in every re-implementation).
  cfg.dropout = 0.3  # After each GRU layer (JaywongWang's; the authors' code: 0).
  cfg.dtype = "float32"  # "float32"/"bfloat16" compute; params, GRU carries, scores float32.
  return cfg


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError for sizes or a dropout rate SST cannot have."""
  if cfg.num_lengths < 1 or cfg.hidden_dim < 1 or cfg.num_layers < 1:
    raise ValueError(f"sst: num_lengths, hidden_dim and num_layers must be >= 1, got "
                     f"{cfg.num_lengths}, {cfg.hidden_dim}, {cfg.num_layers}")
  if not 0.0 <= cfg.dropout < 1.0:
    raise ValueError(f"sst: dropout must be in [0, 1), got {cfg.dropout}")


class SST(nn.Module):
  """SST proposals of Buch et al. (2017) over the reference; the query is ignored.

  Attributes:
    config: the model section (`sst_config()`). A full configuration with a `model`
      field is accepted too; its `model` section is used.
  """

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, query: jax.Array, query_mask: jax.Array, reference: jax.Array,
               reference_mask: jax.Array, *, deterministic: bool,
               segment: jax.Array | None = None) -> dict[str, jax.Array]:
    """Scores every candidate segment of each reference.

    Args:
      query: [batch, len_query, D] query features (checked, not read).
      query_mask: bool[batch, len_query] (checked, not read).
      reference: [batch, len_ref, D] reference features.
      reference_mask: bool[batch, len_ref], True at valid steps.
      deterministic: disables dropout when True; otherwise (with dropout > 0) needs
        the 'dropout' rng.
      segment: int [batch, 2] ground truth, accepted and ignored.

    Returns:
      dict with
        'candidate_scores' float32 [batch, len_ref, K]: entry (s, k) is the logit of
          segment [s, s + k + 1); 0.0 where the candidate is invalid,
        'candidate_mask' bool [batch, len_ref, K]: the candidates inside the valid
          reference steps (`candidates.candidate_mask`).
    """
    del segment  # SST's output does not depend on the ground truth.
    cfg, dtype, _, reference_mask = model_inputs(self.config, query, query_mask, reference,
                                                 reference_mask)
    check_config(cfg)
    len_ref = reference.shape[1]
    lengths = reference_mask.sum(axis=1).astype(jnp.int32)  # [B]

    h = mask_steps(reference, reference_mask)  # [B, Lr, D]
    for layer in range(cfg.num_layers):
      cell = nn.GRUCell(cfg.hidden_dim, dtype=dtype, parent=None)
      h = nn.RNN(cell, name=f"gru_{layer}")(h, seq_lengths=lengths)  # [B, Lr, H]
      h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
    ending = nn.Dense(cfg.num_lengths, kernel_init=nn.initializers.xavier_uniform(),
                      dtype=dtype, name="scores")(h).astype(jnp.float32)  # [B, Lr, K]: (t, k)
    starting = candidates.from_end_indexed(ending)  # [B, Lr, K]: (s, k)
    valid = candidates.candidate_mask(lengths, len_ref, cfg.num_lengths)  # [B, Lr, K]
    return {"candidate_scores": jnp.where(valid, starting, 0.0), "candidate_mask": valid}


class SSTFamily(candidates.CandidateScoring):
  """SST in the harness: trained with its proposal cross-entropy; confidence: the sigmoid."""

  name = "sst"
  title = "SST"
  module_class = SST
  loss_name = "loss_p"
  check_model = staticmethod(check_config)

  def candidate_loss(self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
                     ) -> jax.Array:
    return losses.proposal_cross_entropy(outputs["candidate_scores"], outputs["candidate_mask"],
                                         batch["segment"], batch["example_mask"],
                                         positive_iou=self.config.loss.positive_iou)

  def confidence(self, best: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(best)
