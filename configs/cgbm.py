"""The benchmark authors' model: Cross Gated Bilinear Matching (Feng et al., ECCV 2018).

Fully supervised, with the settings of their public code (fengyang0317/video_reloc,
``match.py``; `vreloc_jax.comparators.cgbm` records what it says): the weighted
cross-entropy only (no co-attention loss), batch 128, Adam at a constant
learning rate of 1e-3, gradients clipped to global norm 5, 1000 steps, a
checkpoint and a val evaluation every 100 steps, the best val checkpoint tested
(they chose it by hand on val); references randomly cropped around their
segment with probability 0.9; inference by their start/end search over segments
of at most 64 steps (``eval.search_form="benchmark"``).

Commands (synthetic default; the real recordings with ``:recordings``):

  python -m vreloc_jax.main --config=configs/cgbm.py --workdir=/tmp/cgbm
  python -m vreloc_jax.main --config=configs/cgbm.py:recordings --workdir=/tmp/cgbm-jv

Expected (test top-1 mAP avg; docs/results.md, "Every system of the paper's
tables"): 60.2 on the Japanese Vowels recordings (``:recordings``; paper,
ActivityNet: 25.7); not run on synthetic v5. ``:quick`` for a tiny smoke run.

Choices their code leaves open, made here: training batches are bucketed by this
project's reference buckets (theirs: buckets 30 steps wide); the reference of a
training pair is never the query's own entry (theirs may draw it); the
attention, gates and bilinear layers are shared by the two matching directions
(our reading of their TF1 variable scopes; ``model.share_matching``).
"""

import ml_collections

from configs import comparator
from vreloc_jax.comparators import cgbm

# The model's sizes in a ``quick`` run.
QUICK_SIZES = dict(aggregation_dim=16, attention_dim=16, matching_dim=16, localization_dim=16)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``recordings[=SOURCE]``, ``quick`` (`configs.comparator`)."""
  config = comparator.make_config("cgbm", cgbm.cgbm_config(), arg, QUICK_SIZES)
  config.eval.search_form = "benchmark"  # Their start/end search (`match.py`).
  config.eval.max_length = 64
  return config
