"""SST (Buch et al., CVPR 2017), the query-agnostic row of the paper's Table 4.

SST proposes action segments without looking at the query: a GRU reads the
reference once and scores, at every step, the K candidate segments ending there
(`vreloc_jax.comparators.sst`); the best-scoring proposal is the prediction. Its row measures
how much of the benchmark an "is there an action here?" detector solves without
knowing which action is asked for (the paper: 17.1 average top-1 mAP on
ActivityNet, against 28.2 for its full model).

Trained with SST's weighted binary cross-entropy over candidates
(`vreloc_jax.comparators.losses.proposal_cross_entropy`: positive above IoU 0.5), in the
same harness and with the same settings as every comparator
(`configs.comparator`: batch 128, Adam 1e-3 constant, clipping 5,
1000 steps, val every 100, best val checkpoint tested).

Commands (synthetic default; the real recordings with ``:recordings``):

  python -m vreloc_jax.main --config=configs/sst.py --workdir=/tmp/sst
  python -m vreloc_jax.main --config=configs/sst.py:recordings --workdir=/tmp/sst-jv

Expected (test top-1 mAP avg; docs/results.md, "Every system of the paper's
tables"): 19.4 on the Japanese Vowels recordings (``:recordings``; paper,
ActivityNet: 17.1); 20.1 on synthetic v5 (best val, step 700). ``:quick`` for
a tiny smoke run.

Choices the paper leaves open for this task, made here: K = 32 candidate
lengths (the benchmark's segments are 1-32 features); no non-maximum
suppression (only the top proposal is used); the loss's class weights are
counted per batch. The model's own choices: `vreloc_jax.comparators.sst`.
"""

import ml_collections

from configs import comparator
from vreloc_jax.comparators import sst

QUICK_SIZES = dict(hidden_dim=16)  # The model's sizes in a ``quick`` run.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``recordings[=SOURCE]``, ``quick`` (`configs.comparator`)."""
  config = comparator.make_config("sst", sst.sst_config(), arg, QUICK_SIZES)
  config.loss.positive_iou = 0.5  # Candidates above this IoU with the ground truth are positives.
  config.eval.plot_pairs = 0  # No per-step probabilities to draw.
  return config
