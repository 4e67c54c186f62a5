"""The paper's weakly supervised full model (Table 2, "full model"; α = 0.3).

Trains with the co-attention loss only: no segment annotation of any
reference is read (the training split is divided by video into a query part
and a reference part), and by default none is read to choose the tested
checkpoint either.

Commands (synthetic default benchmark, generated once and cached; the real
recordings with ``:recordings``):

  python -m vreloc_jax.main --config=configs/weak.py --workdir=/tmp/weak
  python -m vreloc_jax.main --config=configs/weak.py:recordings --workdir=/tmp/weak-jv
  python -m vreloc_jax.main --config=configs/weak.py:recordings=shoulder_exercises \
    --workdir=/tmp/weak-sx

Variants: ``configs/weak.py:base`` (and ``multiscale``, ``selfatt``),
``:alpha=0.5``, ``:inference=weak`` (the paper's inference rule),
``:windows`` (an extension: the window co-attention objective and its rule),
``:frame_similarity``, ``:frame_similarity_residual`` (extensions: the
frame-level score as an input, or added to the logits; on the real recordings
53.2 and 56.5, neither above the frame-level baseline, so neither is the
default); ``:quick`` for a tiny smoke run. On real features:
``--config.data.dir=DIR [--config.data.features=FILE]``.

Expected result (test split, top-1 mAP avg over IoU 0.5…0.9), measured with
these exact commands: README.md ("Results"); on the real recordings 55.2
(seed 0; 49.2 and 54.3 with ``--config.seed=1`` and ``2``)
(frame-level baseline 61.6, statistical prior 13.5); on the synthetic
default (generator v4) 8.4, no better than the prior (9.8; frame-level 11.9):
there an instance's mean input feature equals its context's, and the
co-attention loss compares mean input features, so it has nothing to find
(its exhaustive search scores 7.4; README.md, "Synthetic default").

On the smartwatch shoulder exercises (real, ActivityNet-like profile) 7.2 ±
1.6 over seeds 0-2 (8.7, 7.5, 5.5; frame-level 3.0, prior 5.5).

Decided here, with the evidence (README.md, "Results", has the curves):
* Objective and rule, across the three benchmarks we have (README.md, "Weak
  supervision across benchmarks", three seeds): the paper's loss with the
  query-length rule (the default) and the window co-attention objective
  (``:windows``) both beat the paper's rule everywhere (Japanese Vowels 52.9
  and 53.9 against 18.9; shoulder exercises 7.2 and 4.7 against 1.3; the
  positive control 2.9 and 17.9 against 0.0); neither beats the other
  everywhere (``windows`` +15 on the control, level on the vowels, -2.5 on
  the exercises), so the default stays and ``windows`` is an option.
* Inference rule: ``query_length`` (an extension, not the paper's): the
  window as long as the query with the highest total p_inside
  (`vreloc_jax.segments.search_query_length`); it also gives the co-attention
  masks after step 100. The paper's rule, the longest run of p_inside above
  its mean, is ``:inference=weak``. Why: the co-attention objective rewards
  concentrating p_inside on the part of the action that best matches the
  query, so under the paper's rule the predicted segment shrinks as training
  goes on (real recordings: median predicted length 11 steps at step 25, 6 at
  step 175, ground truth 13) and val mAP peaks at step 25 and falls (16.4 ->
  about 6); on the synthetic default it fell from 45.1 to 11.6. The query's
  length is an input, not an annotation, and the frame-level baseline uses it
  the same way. With it the same training keeps its val mAP (real recordings:
  24 -> 29) and tests at 55.2 instead of 21.4 (both selected without
  annotations); on synthetic generator v3 29.6 instead of 12.8 (the paper's
  rule reaches 50.9 there only with the step-25 checkpoint chosen by val
  annotations, helped by that generator's shared action direction); on v4
  8.4 instead of 0.0.
* Checkpoint: the lowest val co-attention loss of the predictions
  (``eval.select = "min_loss_c"``), which reads no annotation. Measured on
  the real recordings: with the query-length rule val loss_c and val mAP move
  together (Spearman -0.31 between loss and mAP); with the paper's rule they
  move apart (+0.30: the loss keeps falling as the segments shrink), so no
  annotation-free selection rescues the paper's rule there. The run also
  reports the checkpoint of best val mAP (the benchmark authors' practice;
  it reads the val annotations) as a second, labelled row
  (``results/test_best.json``).
* Schedule: the paper's, 100 steps without masks and 100 with them at
  learning rate 1e-3 (the ÷10 at step 200 falls after the end); on the real
  recordings val mAP is flat after step 100 with the query-length rule, so
  longer training is not called for.
* Self-attention output: h·d_k = 64 (eq. 9), no output projection;
  feature-mapping convolution: kernel 3 (not given in the paper).
"""

import ml_collections

from configs import default
from configs import relocalizer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Weak supervision; ``arg``: the paper's model's arguments (`configs.relocalizer`)."""
  args = relocalizer.parse_arg(arg)
  config = default.get_config()
  config.supervision = "weak"  # The co-attention loss only: no reference annotation is read.
  config.loss.cross_entropy_weight = 0.0
  config.loss.coattention_weight = 1.0
  # The paper's schedule: 100 steps without the masks, 100 with them (lr 1e-3), val every 25.
  config.train.num_steps = 200
  config.train.eval_every = 25
  config.eval.inference = "query_length"  # The paper's rule is "weak"; why not: above.
  config.eval.select = "min_loss_c"  # The tested checkpoint is chosen without annotations.
  return relocalizer.apply(config, args)
