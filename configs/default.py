"""The settings every configuration starts from, and the presets they share.

`get_config` holds the defaults (the paper's settings where it gives them); the config
files (weak.py, full.py and the comparators') start from them and parse their own
arguments (`configs.arguments`). Two presets serve several of them: `quick` (a tiny
run for tests and smoke checks) and the real-recordings benchmark (`RECORDINGS`).
"""

from __future__ import annotations

import ml_collections

from configs import arguments
from vreloc_jax.relocalizer import model

# ``recordings[=SOURCE]``: the real-recordings benchmark (`vreloc_jax.data.recordings`)
# instead of the synthetic default; built once and cached.
RECORDINGS = arguments.Arg("", bare="japanese_vowels", meta="SOURCE")


def get_config() -> ml_collections.ConfigDict:
  """The defaults: the paper's settings where it gives them."""
  config = ml_collections.ConfigDict()
  config.supervision = "weak"  # "weak" (co-attention loss only) or "full" (loss_w + loss_c).
  config.seed = 0  # Seeds parameters, dropout (folded with the step) and the batch stream.

  config.data = data = ml_collections.ConfigDict()
  data.dir = ""  # Benchmark directory (split JSONs + length.json); "" = the synthetic default.
  data.features = ""  # HDF5 file or dir of v_<id>.npy; "" = found in data.dir.
  data.synthetic_dir = ""  # Cache of the synthetic default; "" = ~/.cache/vreloc_jax/synthetic-…
  data.synthetic_seed = 0  # Seed of the generated synthetic benchmark.
  data.synthetic_scale = 1.0  # Fraction of the real benchmark's entry counts to generate.
  data.synthetic_version = 5  # Synthetic generator version (only 5 exists; earlier ones are refused).
  data.recordings = ""  # With no data.dir: a real-recordings benchmark (e.g. japanese_vowels).
  data.recordings_seed = 0  # Seed of its class split and reference streams.
  data.pair_seed = 0  # Seed of the fixed evaluation pairs.
  data.query_buckets = (32,)  # Padded query lengths (benchmark segments are 1-32 features).
  data.reference_buckets = (32, 64, 128, 192, 300)  # Padded reference lengths (windows <= 300).
  data.crop_probability = 0.9  # Full supervision: chance of a random crop keeping the segment.
  data.weak_query_fraction = 0.5  # Weak supervision: share of each class's videos giving queries.
  data.shared_offset = 0.0  # Training: a random offset per pair, added to both videos, this
  # many times the mean step norm (`inputs.with_shared_offset`; an extension); 0: off.

  config.model = model.model_config()  # The paper's full model (vreloc_jax/relocalizer/model.py).
  config.variant = "full"  # Ablation variant applied to config.model: base|multiscale|selfatt|full.

  config.loss = loss = ml_collections.ConfigDict()
  loss.alpha = 0.3  # α of the co-attention loss (eq. 18); the paper's best (Table 3).
  loss.coattention_weight = 1.0  # Weight of loss_c.
  loss.cross_entropy_weight = 0.0  # Weight of loss_w (needs annotated references).
  loss.mask_after_steps = 100  # Co-attention masks from the predicted segment from this step on.
  loss.coattention_form = "paper"  # paper: eqs. 13-18, soft per-step pooling | windows: the
  # criterion's distribution over candidate windows as target (losses.window_coattention_loss),
  # logged as loss_cw | both: their sum | pseudo: cross-entropy toward the criterion's best
  # window (losses.pseudo_label_loss), logged as loss_cp.
  loss.window_temperature = 0.2  # windows form: the target's temperature, in standard
  # deviations of each example's criterion over its candidate windows.
  loss.criterion_features = "raw"  # pseudo form: what the targets' criterion reads: raw
  # (the inputs) | transitions (the inputs beside a sketch of their order; an extension).

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 128  # Global batch, split over all devices.
  train.num_steps = 300  # Total steps (not given by the paper): 200 at 1e-3, 100 at 1e-4.
  train.learning_rate = 1e-3  # Adam's initial learning rate.
  train.decay_every = 200  # The learning rate is divided by 10 every this many steps.
  train.decay_factor = 0.1  # Multiplier at each decay.
  train.grad_clip_norm = 5.0  # Global-norm gradient clipping (the benchmark authors' value).
  train.log_every = 10  # Steps between progress lines / metrics records.
  train.eval_every = 100  # Steps between val evaluations; a checkpoint is saved at each.
  train.checkpoint_every = 50  # Steps between checkpoints; evaluations and the last step save too.
  train.keep_checkpoints = 2  # Latest checkpoints kept (the best by val mAP_avg is kept too).

  config.compile = comp = ml_collections.ConfigDict()
  comp.cpu_optimization_level = ml_collections.config_dict.placeholder(int)  # XLA:CPU's LLVM
  # level 0-3; None: XLA's own (3). 1 compiles a quarter faster, rounding differently (README).
  comp.ahead = False  # Compile the programs a run needs in a background thread (compilation.py).

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 128  # Global evaluation batch.
  ev.inference = "weak"  # weak: longest run above mean p_inside | full: start/end search |
  # query_length: query-long window of highest p_inside (extension; vreloc_jax/segments.py).
  ev.max_length = 64  # Full inference: longest segment in steps (64 = 1,024 frames).
  ev.window_scales = (1.0,)  # windows inference and loss: candidate lengths / query length.
  ev.search_form = "benchmark"  # Full inference score: "benchmark" (Feng et al.) or "paper" (eq. 20).
  # Training-free rows printed beside the model's: the paper's, and the whole reference window
  # (what long segments score without finding anything; `vreloc_jax.baselines`).
  ev.baselines = ("random", "stat_prior", "frame_level", "whole_reference")
  ev.select = "best"  # Tested checkpoint: best (val mAP) | latest | min_loss_c (val loss_c).
  ev.plot_pairs = 4  # Fixed val pairs drawn at every evaluation into W/plots/ (0: none).
  return config


def quick(config: ml_collections.ConfigDict, model_sizes: dict[str, int]) -> None:
  """Makes ``config`` a tiny run for tests and smoke checks: small synthetic data, small
  batches, a few steps, small ``model_sizes``, compiled at LLVM level 0 on CPU (a third
  less compile time, and its programs' run time does not matter)."""
  config.data.synthetic_scale = 0.04
  config.data.reference_buckets = (64, 300)
  config.train.batch_size = 8
  config.train.num_steps = 6
  config.train.decay_every = 4
  config.train.log_every = 2
  config.train.eval_every = 3
  config.train.checkpoint_every = 2
  config.loss.mask_after_steps = 3
  config.eval.batch_size = 32
  config.eval.baselines = ("stat_prior",)
  config.eval.plot_pairs = 1
  config.compile.cpu_optimization_level = 0  # Tiny programs: compiling, not running, costs.
  config.model.update(model_sizes)
