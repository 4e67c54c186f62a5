"""The re-localization model (paper Fig. 2, eqs. 7-12) and its configuration.

    query [B, Lq, D], reference [B, Lr, D]
      -> with_centred (optional, not in the paper)         [B, Lq, 2D], [B, Lr, 2D]
      -> FeatureMapping (separate weights for each)        H^q [B, Lq, d_h], H^r [B, Lr, d_h]
      -> MultiscaleAttention(H^r, H^q)                      H^matt [B, Lr, heads]
      -> SelfAttention(H^r) (optional)                      H^satt [B, Lr, h * d_k]
      -> frame_similarity(R, Q) (optional, not in the paper) S [B, Lr, 1]
      -> LocalizationPredictor(concat(H^matt, H^satt, S))   logits [B, Lr, 4]

Channels of the logits: (start, end, inside, outside). Every module is
padding-invariant: outputs at valid steps do not depend on padding content or on how
much padding there is.
"""

from __future__ import annotations

import copy
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vreloc_jax import family
from vreloc_jax.inputs import mask_steps
from vreloc_jax.inputs import model_inputs
from vreloc_jax.inputs import with_centred
from vreloc_jax.losses import NUM_CLASSES
from vreloc_jax.relocalizer import recurrence
from vreloc_jax.relocalizer.attention import MultiscaleAttention
from vreloc_jax.relocalizer.attention import SelfAttention
from vreloc_jax.relocalizer.attention import frame_similarity
from vreloc_jax.relocalizer.attention import normalize_groups

# Table 1 of the paper: 8 heads each of (kernel size, dilation) (1,1), (3,1), (3,2),
# (3,3), (3,4); 32 kernels per head (model_config().head_dim).
MULTISCALE_GROUPS = ((8, 1, 1), (8, 3, 1), (8, 3, 2), (8, 3, 3), (8, 3, 4))
# Ablation "base model" (paper, weak-supervision ablation): all 40 heads kernel 3, dilation 1.
BASE_GROUPS = ((40, 3, 1),)

VARIANTS = ("base", "multiscale", "selfatt", "full")

# Initial weight of the frame-level score in each logit (start, end, inside, outside) with
# model.frame_similarity_residual: higher similarity, more inside, less outside.
RESIDUAL_SIMILARITY_INIT = (0.0, 0.0, 1.0, -1.0)

def model_config() -> ml_collections.ConfigDict:
  """Returns the default model section of the configuration (the paper's full model)."""
  cfg = ml_collections.ConfigDict()
  cfg.hidden_dim = 128  # d_h: output size of the feature-mapping conv + LayerNorm (eq. 7).
  cfg.map_kernel_size = 3  # Kernel size of the feature-mapping conv (not given in the paper).
  cfg.attention_groups = MULTISCALE_GROUPS  # Heads (num_heads, kernel, dilation), Table 1.
  cfg.head_dim = 32  # Kernels (channels) per multiscale attention head (Table 1).
  cfg.attention_relative = True  # H^matt times l_r (uniform = 1); False: the paper's ~1/l_r.
  cfg.use_self_attention = True  # Concatenate H^satt to H^matt (eqs. 9-10); False in ablations.
  cfg.self_attention_heads = 2  # h of the self-attention (eq. 1).
  cfg.self_attention_head_dim = 32  # d_k of the self-attention (eq. 3).
  cfg.self_attention_out = 0  # 0: H^satt = concat of heads, h*d_k (eq. 9); >0: out projection.
  cfg.frame_similarity = False  # Extension, not in the paper: the predictor also reads the
  # frame-level baseline's per-step query similarity of the input features (see README).
  cfg.frame_similarity_residual = False  # Extension: that score added to the logits through a
  # learned weight per class (init inside +1, outside -1): the untrained model ranks windows
  # as the frame-level baseline does, and training learns a correction (see README).
  cfg.centred_inputs = False  # Extension: each video's features beside themselves minus their
  # mean over the video (`inputs.with_centred`): its own look taken out (docs/results.md).
  cfg.query_blind = False  # A control: the query is not read (no H^matt); only H^satt is.
  cfg.lstm_dim = 128  # Per BiLSTM direction (d_h, eq. 10) and 2nd LSTM (d_l, eq. 12).
  cfg.dropout_in = 0.4  # Dropout before the BiLSTM.
  cfg.dropout_out = 0.2  # Dropout after the BiLSTM.
  cfg.lstm_implementation = "auto"  # "scan"/"cudnn"/"auto" (cudnn on one CUDA GPU): recurrence.py.
  cfg.dtype = "float32"  # "float32"/"bfloat16" compute; params, softmaxes, logits float32.
  return cfg


def apply_variant(model_cfg: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """Returns a copy of the model config set to one of the paper's ablation variants.

  Args:
    model_cfg: a model section as returned by `model_config()` (not modified).
    variant: "base" (no self-attention; 40 heads of kernel 3, dilation 1),
      "multiscale" (Table 1 heads, no self-attention), "selfatt" (base heads plus
      self-attention) or "full" (Table 1 heads plus self-attention).

  Returns:
    A new ConfigDict with `attention_groups` and `use_self_attention` set.

  Raises:
    ValueError: for an unknown variant.
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")
  cfg = copy.deepcopy(model_cfg)
  cfg.attention_groups = MULTISCALE_GROUPS if variant in ("multiscale", "full") else BASE_GROUPS
  cfg.use_self_attention = variant in ("selfatt", "full")
  return cfg


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a model section the model cannot run."""
  if cfg.get("query_blind", False) and not cfg.use_self_attention:
    raise ValueError("model.query_blind needs model.use_self_attention: without the query "
                     "the predictor reads only H^satt")


class FeatureMapping(nn.Module):
  """1-D convolution followed by LayerNorm (eq. 7).

  The input is zeroed at padded steps before the ('SAME'-padded) convolution, so a
  valid step next to the padding sees zeros there, exactly as at the end of an
  unpadded sequence; the output is zeroed at padded steps.

  Attributes:
    features: d_h.
    kernel_size: temporal kernel size of the convolution.
    dtype: computation dtype.
  """

  features: int = 128
  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Maps features.

    Args:
      x: [batch, length, D] input features.
      mask: bool[batch, length].

    Returns:
      [batch, length, features] in `dtype`; 0 at padded steps.
    """
    x = mask_steps(x, mask)  # [B, L, D]
    h = nn.Conv(self.features, kernel_size=(self.kernel_size,), padding="SAME",
                dtype=self.dtype, name="conv")(x)  # [B, L, d_h]
    h = nn.LayerNorm(dtype=self.dtype, name="norm")(h)  # [B, L, d_h]
    return mask_steps(h, mask)


class LocalizationPredictor(nn.Module):
  """Dropout -> BiLSTM -> dropout -> LSTM -> Dense(4) (eqs. 10-12).

  Both recurrent layers get the reference lengths, so the backward direction of the
  BiLSTM starts at the last valid step, and forward outputs at valid steps never see
  padding. BiLSTM outputs are zeroed at padded steps. The parameters are the same
  whichever implementation runs the LSTMs (`vreloc_jax.relocalizer.recurrence`).

  Attributes:
    lstm_dim: hidden size of each BiLSTM direction and of the second LSTM.
    dropout_in: dropout rate before the BiLSTM.
    dropout_out: dropout rate after the BiLSTM.
    dtype: computation dtype (logits are returned in float32).
    lstm_implementation: "scan", "cudnn" or "auto" (`recurrence.resolve`).
  """

  lstm_dim: int = 128
  dropout_in: float = 0.4
  dropout_out: float = 0.2
  dtype: Any = jnp.float32
  lstm_implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    """Predicts per-step logits.

    Args:
      x: [batch, len_ref, features] concat(H^matt, H^satt).
      mask: bool[batch, len_ref].
      deterministic: disables dropout when True; otherwise needs the 'dropout' rng.

    Returns:
      float32[batch, len_ref, 4] logits (start, end, inside, outside); values at
      padded steps are unspecified (ReLocalizer zeroes them).
    """
    lengths = mask.sum(axis=1).astype(jnp.int32)  # [B]
    options = dict(features=self.lstm_dim, dtype=self.dtype,
                   implementation=self.lstm_implementation)

    x = mask_steps(x, mask)
    x = nn.Dropout(self.dropout_in)(x, deterministic=deterministic)
    h = recurrence.bidirectional_lstm(x, lengths, **options)  # [B, Lr, 2 * lstm_dim]
    h = mask_steps(h, mask)
    h = nn.Dropout(self.dropout_out)(h, deterministic=deterministic)
    h = recurrence.lstm(h, lengths, name="lstm", **options)  # [B, Lr, lstm_dim]
    logits = nn.Dense(NUM_CLASSES, dtype=self.dtype, name="classifier")(h)  # [B, Lr, 4]
    return logits.astype(jnp.float32)


class ReLocalizer(nn.Module):
  """Weakly/fully supervised video re-localization model (paper Fig. 2).

  Attributes:
    config: the model section (`model_config()`, possibly via `apply_variant`). A
      full configuration with a `model` field is accepted too; its `model` section
      is used.
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
        'attention' [batch, len_ref, heads] H^matt; 0 at padded steps (no heads
          when `query_blind`).
    """
    cfg, dtype, query_mask, reference_mask = model_inputs(self.config, query, query_mask,
                                                          reference, reference_mask)
    check_config(cfg)
    query_blind = cfg.get("query_blind", False)
    # What the feature mappings read: [B, L, D], or [B, L, 2D] with centred_inputs.
    mapped_query, mapped_reference = query, reference
    if cfg.get("centred_inputs", False):
      mapped_query = with_centred(query, query_mask)
      mapped_reference = with_centred(reference, reference_mask)
    h_ref = FeatureMapping(cfg.hidden_dim, cfg.map_kernel_size, dtype=dtype,
                           name="reference_mapping")(mapped_reference,
                                                     reference_mask)  # [B, Lr, d_h]
    features = []
    if query_blind:  # A control, not the paper's model: nothing of the query is read.
      attention = jnp.zeros((*reference.shape[:2], 0), jnp.float32)  # [B, Lr, 0]
    else:
      h_query = FeatureMapping(cfg.hidden_dim, cfg.map_kernel_size, dtype=dtype,
                               name="query_mapping")(mapped_query, query_mask)  # [B, Lq, d_h]
      multiscale = MultiscaleAttention(normalize_groups(cfg.attention_groups), cfg.head_dim,
                                       relative=cfg.get("attention_relative", True), dtype=dtype,
                                       name="multiscale_attention")
      attention = multiscale(h_ref, reference_mask, h_query, query_mask)  # [B, Lr, heads]
      features.append(attention.astype(dtype))
    if cfg.use_self_attention:
      features.append(SelfAttention(cfg.self_attention_heads, cfg.self_attention_head_dim,
                                    cfg.self_attention_out, dtype=dtype,
                                    name="self_attention")(h_ref, reference_mask))  # [B, Lr, h*d_k]
    similarity = None
    if (cfg.get("frame_similarity", False) or cfg.get("frame_similarity_residual", False)) \
        and not query_blind:
      similarity = frame_similarity(reference, reference_mask, query, query_mask)  # [B, Lr, 1]
    if cfg.get("frame_similarity", False) and similarity is not None:
      features.append(similarity.astype(dtype))
    x = jnp.concatenate(features, axis=-1)  # [B, Lr, heads (+ h*d_k) (+ 1)]
    logits = LocalizationPredictor(cfg.lstm_dim, cfg.dropout_in, cfg.dropout_out, dtype=dtype,
                                   lstm_implementation=cfg.get("lstm_implementation", "auto"),
                                   name="predictor")(
                                       x, reference_mask, deterministic=deterministic)
    if cfg.get("frame_similarity_residual", False) and similarity is not None:
      weight = self.param("similarity_to_logits",
                          lambda _: jnp.array(RESIDUAL_SIMILARITY_INIT, jnp.float32))  # [4]
      logits = logits + similarity * weight  # [B, Lr, 4]
    logits = mask_steps(logits, reference_mask)  # [B, Lr, 4]
    return {
        "logits": logits,
        "log_probs": jax.nn.log_softmax(logits, axis=-1),
        "probs": jax.nn.softmax(logits, axis=-1),
        "attention": attention,
    }


class ReLocalizerFamily(family.StepLabeling):
  """The paper's model in the harness (`vreloc_jax.family.StepLabeling`)."""

  name = "relocalizer"
  module_class = ReLocalizer
  check_model = staticmethod(check_config)

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    if config.variant not in VARIANTS:
      raise ValueError(f"unknown model variant {config.variant!r}; expected one of {VARIANTS}")
    super().check(config)

  @classmethod
  def portable(cls, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The scan LSTM: cuDNN's custom call is neither stable under jax.export nor
    shape-polymorphic (`recurrence`); the parameters are the same."""
    config.model.lstm_implementation = "scan"
    return config

  @property
  def title(self) -> str:
    return f"ours ({self.config.variant} model)"
