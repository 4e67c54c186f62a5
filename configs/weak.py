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
* training length: 300 steps (200 at 1e-3, then 100 at 1e-4, keeping the
  paper's decay period of 200) — the paper gives no total; 300 steps of batch
  128 fit the 15-minute budget of a 2-core CPU, data generation included.
"""

from configs import default


def get_config(arg: str | None = None):
  return default.for_supervision("weak", arg)
