"""The paper's model: the config arguments weak.py and full.py take, and what they set.

``configs/weak.py:ARGS`` and ``configs/full.py:ARGS``, comma-separated, in any order:

* ``base`` | ``multiscale`` | ``selfatt`` | ``full``: the paper's ablation variants of
  the model (default ``full``);
* ``alpha=X``: the co-attention loss's α;
* ``recordings[=SOURCE]``: the real-recordings benchmark (`vreloc_jax.data.recordings`,
  default source japanese_vowels) instead of the synthetic default; val every 25
  steps at most (its val split is small and its full-supervision curve peaks at steps
  100-125);
* ``frame_similarity``: (an extension) the predictor also reads the frame-level
  similarity to the query (`vreloc_jax.relocalizer.attention.frame_similarity`);
* ``frame_similarity_residual``: (an extension) that similarity added to the logits
  (inside +, outside −) through a learned weight, so that the untrained model already
  ranks windows as the frame-level baseline does;
* ``centred``: (an extension) the feature mappings read each video's features beside
  themselves minus their mean over the video (``model.centred_inputs``,
  `vreloc_jax.inputs.with_centred`);
* ``shared_offset=X``: (an extension) in training, one random offset per pair added to
  both its videos, X times the mean step norm (``data.shared_offset``,
  `vreloc_jax.inputs.with_shared_offset`); 0 turns it off; default: the config file's own;
* ``inference=RULE``: the inference rule, which also gives the co-attention masks:
  ``weak`` (the paper's longest run above the mean p_inside), ``full`` (start/end
  search), ``query_length`` (an extension: the query-long window of highest
  p_inside) or ``windows``; ``query_length`` alone is short for
  ``inference=query_length``;
* ``objective=NAME``: the co-attention objective (``loss.coattention_form``) and,
  unless ``inference`` is given, the rule that suits it (`OBJECTIVE_RULES`):
  ``paper`` (eqs. 13-18; with weak supervision the query-length rule, the paper's
  own collapses), ``pseudo`` (an extension: self-training on the co-attention
  criterion, the weighted cross-entropy toward the window the criterion ranks first,
  `vreloc_jax.losses.pseudo_label_loss`; start/end search), ``windows`` (an
  extension: the window co-attention objective,
  `vreloc_jax.losses.window_coattention_loss`; its window rule) or ``both``
  (windows plus the paper's loss); ``pseudo``, ``windows`` and ``windows=both``
  alone are short for them;
* ``criterion=FEATURES``: what the self-training targets' criterion reads
  (``loss.criterion_features``): ``raw``, the inputs alone (the paper's criterion), or
  ``transitions`` (an extension), the inputs beside a sketch of their order
  (`vreloc_jax.losses.transition_features`); default: the config file's own;
* ``query_blind``: a control that never reads the query (the predictor sees only the
  reference's self-attention features): what a model finds without knowing what it
  is looking for;
* ``quick``: a tiny run for tests and smoke checks (`configs.default.quick`).
"""

from __future__ import annotations

import ml_collections

from configs import arguments
from configs import default
from vreloc_jax import family
from vreloc_jax import losses
from vreloc_jax.relocalizer import model

# Words that stand for an argument's value.
ALIASES = {**{variant: ("variant", variant) for variant in model.VARIANTS},
           "query_length": ("inference", "query_length"),
           "pseudo": ("objective", "pseudo"), "windows": ("objective", "windows"),
           "windows=both": ("objective", "both")}
# The inference rule each co-attention objective brings (`apply`); "paper" keeps the
# config's own rule with full supervision.
OBJECTIVE_RULES = {"pseudo": "full", "windows": "windows", "both": "windows"}
WEAK_PAPER_RULE = "query_length"  # The paper's objective's rule under weak supervision.
# The model's sizes in a ``quick`` run.
QUICK_SIZES = dict(hidden_dim=16, head_dim=4, lstm_dim=16, self_attention_head_dim=4)


def parse_arg(arg: str | None) -> ml_collections.ConfigDict:
  """The arguments of the module docstring, parsed (`configs.arguments.parse_arg`)."""
  return arguments.parse_arg(
      arg, aliases=ALIASES,
      variant=arguments.Arg("full", choices=model.VARIANTS),
      alpha=0.3,
      recordings=default.RECORDINGS,
      frame_similarity=False,
      frame_similarity_residual=False,
      centred=False,
      shared_offset=arguments.Arg("", meta="X"),
      inference=arguments.Arg("", choices=family.INFERENCES),
      objective=arguments.Arg("", choices=family.COATTENTION_FORMS, meta="NAME"),
      criterion=arguments.Arg("", choices=losses.CRITERION_FEATURES, meta="FEATURES"),
      query_blind=False,
      quick=False)


def apply(config: ml_collections.ConfigDict, args: ml_collections.ConfigDict
          ) -> ml_collections.ConfigDict:
  """Sets ``config`` (weak.py's or full.py's defaults) as the parsed ``args`` ask."""
  config.variant = args.variant
  config.loss.alpha = args.alpha
  if args.recordings:
    config.data.recordings = args.recordings
    # Val (139 pairs) costs seconds; full supervision peaks at steps 100-125 (README).
    config.train.eval_every = min(config.train.eval_every, 25)
  config.model.frame_similarity = args.frame_similarity
  config.model.frame_similarity_residual = args.frame_similarity_residual
  config.model.centred_inputs = args.centred
  if args.shared_offset:
    try:
      config.data.shared_offset = float(args.shared_offset)
    except ValueError:
      raise ValueError(f"config argument shared_offset={args.shared_offset!r}: not a number"
                       ) from None
  if args.objective:
    config.loss.coattention_form = args.objective
    weak = config.supervision == "weak"
    config.eval.inference = OBJECTIVE_RULES.get(
        args.objective, WEAK_PAPER_RULE if weak else config.eval.inference)
  if args.inference:
    config.eval.inference = args.inference
  if args.criterion:
    config.loss.criterion_features = args.criterion
  config.model.query_blind = args.query_blind
  if args.quick:
    default.quick(config, QUICK_SIZES)
  config.model = model.apply_variant(config.model, config.variant)
  return config
