"""The paper's weakly supervised full model (Table 2, "full model"; α = 0.3).

Trains with the co-attention loss only: no segment annotation of any
reference is read (the training split is divided by video into a query part
and a reference part), and none is read to choose the tested checkpoint.

  python -m vreloc_jax.main --config=configs/weak.py --workdir=/tmp/weak
  python -m vreloc_jax.main --config=configs/weak.py:recordings --workdir=/tmp/weak-jv
  python -m vreloc_jax.main --config=configs/weak.py:recordings=shoulder_exercises \
    --workdir=/tmp/weak-sx

Expected (test top-1 mAP avg, seeds 0-2; docs/results.md): synthetic v5 6.4 ±
0.3 (6.7, 6.3, 6.2), below its training-free rows (prior 9.8, frame-level
8.8); Japanese Vowels 52.9 ± 3.2 (55.2, 49.2, 54.3; frame-level 61.6);
shoulder exercises 7.2 ± 1.6 (frame-level 3.0, prior 5.5).

Arguments (`configs.relocalizer`): ``base``, ``multiscale``, ``selfatt``
(the paper's ablations), ``alpha=X``, ``inference=weak`` (the paper's
inference rule), ``windows[=both]`` (the window co-attention objective, an
extension), ``frame_similarity[_residual]`` (input extensions),
``query_blind``, ``recordings[=SOURCE]``, ``quick``. On real features:
``--config.data.dir=DIR [--config.data.features=FILE]``.

Decided here, with the evidence (docs/results.md, "Weak supervision across
benchmarks"; the rule: the paper's method unless an extension beats it on
every benchmark by more than the seed spread):
* Inference rule: ``query_length`` (an extension): the window as long as the
  query with the highest total p_inside (`segments.search_query_length`); it
  also gives the co-attention masks after step 100. The paper's rule (the
  longest run of p_inside above its mean, ``:inference=weak``) collapses on
  every benchmark: the objective concentrates p_inside, so the run shrinks
  as training goes on. Query-length against the paper's rule: v5 6.4 against
  0.1 (three seeds), Japanese Vowels 52.9 against 18.9, shoulder exercises 7.2 against
  1.3, the positive control 2.9 against 0.0. The query's length is an input,
  not an annotation; the frame-level baseline uses it the same way.
* Objective: the paper's. ``:windows`` also beats the paper's rule
  everywhere but not the default everywhere (v5 6.2, level; Japanese Vowels
  53.9, level; shoulder exercises 4.7, 2.5 below; the control 17.9, 15
  above), so it is an option.
* Checkpoint: the lowest val co-attention loss of the predictions
  (``eval.select = "min_loss_c"``), which reads no annotation; the best-val-mAP
  checkpoint (the benchmark authors' practice) is reported beside it,
  labelled (``results/test_best.json``).
* Schedule: the paper's, 100 steps without masks and 100 with them at
  learning rate 1e-3; on the real recordings val mAP is flat after step 100.
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
