"""The paper's fully supervised model, loss_w + loss_c (Table 4, last row).

Trains with the weighted cross-entropy on the benchmark's soft labels plus the
co-attention loss (α = 0.3); references are randomly cropped around their
segment with probability 0.9. Inference: the benchmark authors' start/end
search over segments of at most 64 steps (``eval.search_form="paper"`` for
the paper's eq. 20).

Command (synthetic default benchmark, generated once and cached):

  python -m vreloc_jax.main --config=configs/full.py --workdir=/tmp/full

``configs/full.py:...`` takes the same arguments as ``configs/weak.py``;
set ``--config.loss.coattention_weight=0`` for the loss_w-only row.

Expected result (test split, top-1 mAP avg over IoU 0.5…0.9): see the
table in README.md ("Results"), measured with this exact command.
"""

from configs import default


def get_config(arg: str | None = None):
  return default.for_supervision("full", arg)
