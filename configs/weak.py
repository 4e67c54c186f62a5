"""The paper's weakly supervised full model (Table 2, "full model"; α = 0.3).

Trains with the co-attention loss only: no segment annotation of any
reference is read (the training split is divided by video into a query part
and a reference part). Inference: the longest run of steps whose p_inside is
above its mean.

Command (synthetic default benchmark, generated once and cached):

  python -m vreloc_jax.main --config=configs/weak.py --workdir=/tmp/weak

Variants: ``configs/weak.py:base`` (and ``multiscale``, ``selfatt``),
``configs/weak.py:alpha=0.5``; ``:quick`` for a tiny smoke run.
On real features: ``--config.data.dir=DIR [--config.data.features=FILE]``.

Expected result (test split, top-1 mAP avg over IoU 0.5…0.9): see the
table in README.md ("Results"), measured with this exact command.

Loose ends of the paper, decided here (see also vreloc_jax/model.py):
* self-attention output: h·d_k = 64 (eq. 9), no output projection;
* feature-mapping convolution: kernel 3 (not given);
* training length (not given in the paper): 200 steps at 1e-3, the first 100
  without the co-attention masks and the next 100 with them (paper), val
  evaluated every 25 steps and the best checkpoint by val mAP_avg tested.
  The co-attention objective rewards concentrating p_inside on the part of
  the action that best matches the query: on the synthetic val pairs the
  criterion of the central half of the ground-truth segment beats that of
  the whole segment in all 335 pairs checked, so once the model has found the
  action (within about 25 steps here) further steps sharpen p_inside and the
  longest run above its mean shortens; val mAP peaks early and then falls
  (measured curve in README.md). Selecting the checkpoint on val is how this
  project reports the weakly supervised rows; val segment annotations are
  used for that selection only, never for training.
"""

from configs import default


def get_config(arg: str | None = None):
  return default.for_supervision("weak", arg)
