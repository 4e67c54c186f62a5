"""The video-level baseline of Feng et al. (ECCV 2018), a row of the paper's Table 4.

One LSTM encodes the query and every candidate segment of the reference into unit
vectors (`vreloc_jax.comparators.video_level`); the candidate nearest the query is the
prediction. Trained with a triplet loss (`vreloc_jax.comparators.losses.triplet_loss`): the
query is the anchor, the ground-truth segment the positive, the nearest candidate of
the same reference with IoU below 0.5 the negative. It compares whole segments with the
query and never matches them step by step (the paper: 12.4 average top-1 mAP on
ActivityNet).

Same harness and settings as every comparator (`configs.comparator`:
batch 128, Adam 1e-3 constant, clipping 5, 1000 steps, val every 100, best val
checkpoint tested).

Commands (synthetic default; the real recordings with ``:recordings``):

  python -m vreloc_jax.main --config=configs/video_level.py --workdir=/tmp/video-level
  python -m vreloc_jax.main --config=configs/video_level.py:recordings --workdir=/tmp/vl-jv

Expected (test top-1 mAP avg; docs/results.md, "Every system of the paper's
tables"): 48.6 on the Japanese Vowels recordings (``:recordings``; paper,
ActivityNet: 12.4); not run on synthetic v5. ``:quick`` for a tiny smoke run.

Choices the papers leave open, made here: candidates are all segments of 1-32
steps; the triplet margin 0.2 on squared distances of unit vectors; the
negative is the hardest candidate of the same reference (the one a prediction must
beat; the mean over all of them gave almost no gradient, `losses.triplet_loss`); in
training the ground truth's start and ``model.train_starts`` (4) random starts are
scored. The model's own choices: `vreloc_jax.comparators.video_level`.
"""

import ml_collections

from configs import comparator
from vreloc_jax.comparators import video_level

QUICK_SIZES = dict(embed_dim=16, hidden_dim=16)  # The model's sizes in a ``quick`` run.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``recordings[=SOURCE]``, ``quick`` (`configs.comparator`)."""
  config = comparator.make_config("video_level", video_level.video_level_config(), arg,
                                  QUICK_SIZES)
  config.loss.triplet_margin = 0.2  # Margin on squared distances of unit vectors.
  config.loss.negative_iou = 0.5  # Candidates below this IoU with the ground truth are negatives.
  config.eval.plot_pairs = 0  # No per-step probabilities to draw.
  return config
