"""What training, evaluation and export know of a model: its family, one interface for all.

A family holds a configuration's Flax module, its training loss, and how its outputs
become one predicted segment per reference with a confidence. `vreloc_jax.models` gives
the family of a configuration; nothing else names a model. Two kinds:

* `StepLabeling` (here): per-step (start, end, inside, outside) logits: the paper's model
  and CGBM. Trained with the co-attention loss and the weighted cross-entropy, as
  ``config.loss`` weighs them; segments by the inference rule ``eval.inference``.
* `vreloc_jax.comparators.candidates.CandidateScoring`: one score per candidate segment
  (SST, the video-level baseline). Trained with the model's own loss; the best
  candidate is the prediction.
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vreloc_jax import inputs
from vreloc_jax import losses
from vreloc_jax import segments

Batch = dict[str, jax.Array]
# The inference rules of step-labeling models (`predict_segments`).
INFERENCES = ("weak", "full", "query_length", "windows")
# The forms of the co-attention loss (``loss.coattention_form``; `StepLabeling.loss`).
COATTENTION_FORMS = ("paper", "windows", "both", "pseudo")
# Folded into the step's dropout key to draw the shared offsets (data.shared_offset).
SHARED_OFFSET_STREAM = 7


def coattention_form(config: ml_collections.ConfigDict) -> str:
  """``loss.coattention_form``; absent (a run of an earlier version): "paper"."""
  return config.loss.get("coattention_form", "paper")


class Family(abc.ABC):
  """A model family: a configuration's module, its loss and its prediction.

  Subclasses set `name`, `title`, `module_class` (and the class attributes below where
  they differ) and define `loss` and `predict`.

  Attributes:
    config: the run's configuration.
    module: its Flax module, ``module_class(config.model)``.
  """

  name = ""  # ``config.model_name``.
  title = ""  # The model's name in result tables.
  module_class: type[nn.Module]
  attention_rows = "attention head"  # What the rows of the ``attention`` output are.
  per_step_probabilities = True  # False: ``probs`` are the prediction's one-hot labels.

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.module = self.module_class(config.model)

  @staticmethod
  def check_model(model_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError for a model section the module cannot run."""

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError if ``config`` does not suit this family (`configuration.validate`)."""
    cls.check_model(config.model)

  @classmethod
  def portable(cls, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` set to run on every platform an export serves (same parameters)."""
    return config

  @property
  def inference(self) -> str:
    """How segments are predicted, as results files record it."""
    return self.config.eval.inference

  def apply(self, params: Any, batch: Batch, dropout_rng: jax.Array | None = None
            ) -> dict[str, jax.Array]:
    """The module's outputs on a batch: in training (dropout) when ``dropout_rng`` is given."""
    if dropout_rng is None:
      return self.module.apply({"params": params}, batch["query"], batch["query_mask"],
                               batch["reference"], batch["reference_mask"], deterministic=True)
    query, reference = batch["query"], batch["reference"]
    if self.config.data.get("shared_offset", 0.0) > 0:
      query, reference = inputs.with_shared_offset(
          jax.random.fold_in(dropout_rng, SHARED_OFFSET_STREAM), query, batch["query_mask"],
          reference, batch["reference_mask"], self.config.data.shared_offset)
    return self.module.apply({"params": params}, query, batch["query_mask"], reference,
                             batch["reference_mask"], deterministic=False,
                             rngs={"dropout": dropout_rng})

  @abc.abstractmethod
  def loss(self, outputs: dict[str, jax.Array], batch: Batch, step: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of a batch's outputs at ``step``, and its terms by metric name."""

  @abc.abstractmethod
  def predict(self, outputs: dict[str, jax.Array], batch: Batch) -> dict[str, jax.Array]:
    """The prediction of each reference.

    Returns:
      ``segments``: the predicted ``[s, e)``, int32 [batch, 2]; ``score``: the model's
      confidence in it, in [0, 1], float32 [batch]; ``probs``: float32 [batch, len_ref, 4]
      (start, end, inside, outside); ``attention``: float32 [batch, len_ref, heads].
    """


def predict_segments(outputs: dict[str, jax.Array], batch: Batch,
                     config: ml_collections.ConfigDict) -> jax.Array:
  """The predicted segment [s, e) of each reference, by the config's inference rule.

  ``eval.inference``: "weak" (the paper's longest run above the mean p_inside),
  "full" (start/end search), "query_length" (an extension: the query-long window
  of highest p_inside; `segments.search_query_length`) or "windows" (an
  extension: the candidate window of highest log-odds; `segments.search_windows`).
  """
  lengths = batch["reference_length"]  # [batch]
  if config.eval.inference == "weak":
    return segments.search_weak(outputs["probs"][..., losses.INSIDE], lengths)
  if config.eval.inference == "full":
    return segments.search_full(outputs["log_probs"], lengths, max_length=config.eval.max_length,
                                form=config.eval.search_form)
  query_lengths = batch["query_mask"].sum(axis=1).astype(jnp.int32)  # [batch]
  if config.eval.inference == "query_length":
    return segments.search_query_length(outputs["probs"][..., losses.INSIDE], lengths,
                                        query_lengths)
  if config.eval.inference == "windows":
    return segments.search_windows(outputs["log_probs"], lengths, query_lengths,
                                   tuple(config.eval.window_scales))
  raise ValueError(f"unknown eval.inference {config.eval.inference!r}; expected one of "
                   f"{INFERENCES}")


class StepLabeling(Family):
  """Models that label every reference step (start, end, inside, outside).

  Their module returns ``logits``, ``log_probs``, ``probs`` [batch, len_ref, 4] and
  ``attention`` [batch, len_ref, heads].
  """

  def loss(self, outputs: dict[str, jax.Array], batch: Batch, step: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``loss.coattention_weight`` times the co-attention loss (``loss.coattention_form``:
    the paper's eqs. 13-18, masked by the predicted segment from ``loss.mask_after_steps``
    on; the window objective; both; or self-training toward the criterion's best window)
    plus ``loss.cross_entropy_weight`` times the weighted cross-entropy (annotated
    references only)."""
    config = self.config
    reference_mask = batch["reference_mask"]  # [batch, len_ref]
    example_mask = batch["example_mask"]  # [batch]
    use_ce = config.loss.cross_entropy_weight > 0
    if use_ce and "segment" not in batch:
      raise ValueError("cross-entropy needs annotated references, but the batch has no 'segment'")
    terms = {}
    total = jnp.zeros((), jnp.float32)
    form = coattention_form(config)
    if config.loss.coattention_weight > 0 and form in ("windows", "both"):
      terms["loss_cw"] = losses.window_coattention_loss(
          outputs["log_probs"], batch["query"], batch["query_mask"], batch["reference"],
          reference_mask, tuple(config.eval.window_scales), config.loss.alpha,
          config.loss.window_temperature, example_mask=example_mask)
      total += config.loss.coattention_weight * terms["loss_cw"]
    if config.loss.coattention_weight > 0 and form == "pseudo":
      terms["loss_cp"] = losses.pseudo_label_loss(
          outputs["logits"], batch["query"], batch["query_mask"], batch["reference"],
          reference_mask, tuple(config.eval.window_scales), config.loss.alpha,
          example_mask=example_mask,
          criterion_features=config.loss.get("criterion_features", "raw"))
      total += config.loss.coattention_weight * terms["loss_cp"]
    if config.loss.coattention_weight > 0 and form in ("paper", "both"):
      coatt = functools.partial(losses.coattention_loss, batch["query"], batch["query_mask"],
                                batch["reference"], reference_mask, outputs["probs"],
                                config.loss.alpha, example_mask=example_mask)

      def with_masks():  # Action/background masks from the predicted segment, held fixed.
        predicted = jax.lax.stop_gradient(predict_segments(outputs, batch, config))  # [batch, 2]
        return coatt(action_mask=losses.segment_mask(predicted, reference_mask.shape[1]))

      # Only the branch of the current step runs (the segment search only once masks are on).
      terms["loss_c"] = jax.lax.cond(step >= config.loss.mask_after_steps, with_masks, coatt)
      total += config.loss.coattention_weight * terms["loss_c"]
    if use_ce:
      terms["loss_w"] = losses.weighted_cross_entropy(outputs["logits"], batch["segment"],
                                                      reference_mask, example_mask)
      total += config.loss.cross_entropy_weight * terms["loss_w"]
    return total, terms

  def predict(self, outputs: dict[str, jax.Array], batch: Batch) -> dict[str, jax.Array]:
    """The segment of the inference rule; its confidence is the mean p_inside over it."""
    predicted = predict_segments(outputs, batch, self.config)  # [batch, 2]
    inside = losses.segment_mask(predicted, batch["reference_mask"].shape[1])  # [batch, len_ref]
    score = (jnp.sum(jnp.where(inside, outputs["probs"][..., losses.INSIDE], 0.0), axis=1)
             / jnp.maximum(inside.sum(axis=1), 1))  # [batch]
    return {"segments": predicted, "score": score, "probs": outputs["probs"],
            "attention": outputs["attention"]}
