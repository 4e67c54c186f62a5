"""Settings shared by every configuration; `weak.py` and `full.py` start from these.

Config arguments (after the file name, comma-separated), for example
``--config=configs/weak.py:base,alpha=0.5,quick``:

* ``base`` | ``multiscale`` | ``selfatt`` | ``full``: the paper's ablation
  variants of the model (default ``full``);
* ``alpha=X``: the co-attention loss's α;
* ``recordings`` (or ``recordings=SOURCE``): train on the real-recordings
  benchmark (`vreloc_jax.data.recordings`, default source japanese_vowels)
  instead of the synthetic default; built once and cached; val every 25 steps
  at most (its val split is small and its full-supervision curve peaks at
  steps 100-125; the comparators keep their authors' 100);
* ``frame_similarity``: the extension that lets the predictor read the
  frame-level similarity to the query (`vreloc_jax.attention.frame_similarity`);
* ``frame_similarity_residual``: the extension that adds that similarity to the
  logits (inside +, outside −) through a learned weight, so that the untrained
  model already ranks windows as the frame-level baseline does;
* ``inference=RULE``: the inference rule, which also gives the co-attention
  masks: ``weak`` (the paper's longest run above the mean p_inside), ``full``
  (start/end search) or ``query_length`` (an extension: the query-long window
  of highest p_inside, `segments.search_query_length`); ``query_length`` alone
  is short for ``inference=query_length``;
* ``windows``: the window co-attention objective and its inference rule (an
  extension; `vreloc_jax.losses.window_coattention_loss`); ``windows=both``:
  that objective added to the paper's co-attention loss;
* ``query_blind``: a control that never reads the query (the predictor sees
  only the reference's self-attention features): what a model finds without
  knowing what it is looking for;
* ``cgbm``, ``sst``, ``video_level``: a comparator instead of the paper's model
  (`COMPARATORS`: Feng et al.'s Cross Gated Bilinear Matching, Buch et al.'s SST,
  Feng et al.'s video-level baseline); they take no model variant,
  ``frame_similarity`` or ``query_blind``; see ``configs/cgbm.py`` and its siblings;
* ``quick``: a tiny run for tests and smoke checks (small synthetic data,
  small batches, a few steps, compiled at LLVM level 0 on CPU: a third less
  compile time, and its programs' run time does not matter).
"""

from __future__ import annotations

import ml_collections

from vreloc_jax import cgbm
from vreloc_jax import model
from vreloc_jax import sst
from vreloc_jax import video_level


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

  config.model = model.model_config()  # The paper's full model; see vreloc_jax/model.py.
  config.variant = "full"  # Ablation variant applied to config.model: base|multiscale|selfatt|full.

  config.loss = loss = ml_collections.ConfigDict()
  loss.alpha = 0.3  # α of the co-attention loss (eq. 18); the paper's best (Table 3).
  loss.coattention_weight = 1.0  # Weight of loss_c.
  loss.cross_entropy_weight = 0.0  # Weight of loss_w (needs annotated references).
  loss.mask_after_steps = 100  # Co-attention masks from the predicted segment from this step on.
  loss.coattention_form = "paper"  # paper: eqs. 13-18, soft per-step pooling | windows: the
  # criterion's distribution over candidate windows as target (losses.window_coattention_loss),
  # logged as loss_cw | both: their sum.
  loss.window_temperature = 0.2  # windows form: the target's temperature, in standard
  # deviations of each example's criterion over its candidate windows.

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
  ev.baselines = ("random", "stat_prior", "frame_level")  # Rows printed beside the model's.
  ev.select = "best"  # Tested checkpoint: best (val mAP) | latest | min_loss_c (val loss_c).
  ev.plot_pairs = 4  # Fixed val pairs drawn at every evaluation into W/plots/ (0: none).
  return config


def for_supervision(supervision: str, arg: str | None) -> ml_collections.ConfigDict:
  """The defaults set for "weak" or "full" supervision, then the config arguments applied.

  Weak: co-attention loss only; the query-length inference rule (an extension; the
  paper's longest run above the mean is ``inference=weak``); the tested checkpoint is
  chosen without annotations (lowest val loss_c). Full: loss_w + loss_c, the start/end
  search, the best checkpoint by val mAP (the paper's Table 4 last row).
  Why: configs/weak.py and README.md ("Results").
  """
  if supervision not in ("weak", "full"):
    raise ValueError(f"supervision must be 'weak' or 'full', got {supervision!r}")
  config = get_config()
  config.supervision = supervision
  config.loss.cross_entropy_weight = 1.0 if supervision == "full" else 0.0
  config.loss.coattention_weight = 1.0
  config.eval.inference = supervision
  if supervision == "weak":
    # The paper's schedule: 100 steps without the masks, 100 with them (lr 1e-3), val
    # every 25; measured curves and the choice of rule and selection: configs/weak.py.
    config.train.num_steps = 200
    config.train.eval_every = 25
    config.eval.inference = "query_length"
    config.eval.select = "min_loss_c"
  return apply_arguments(config, arg)


# The comparators (issue 10): config argument -> the model section of their configuration.
COMPARATORS = {
    "cgbm": cgbm.cgbm_config,  # Feng et al.'s Cross Gated Bilinear Matching (vreloc_jax/cgbm.py).
    "sst": sst.sst_config,  # Buch et al.'s query-agnostic SST proposals (vreloc_jax/sst.py).
    "video_level": video_level.video_level_config,  # Feng et al.'s video-level baseline.
}
# ``quick`` sizes of each model section.
QUICK_SIZES = {
    "relocalizer": dict(hidden_dim=16, head_dim=4, lstm_dim=16, self_attention_head_dim=4),
    "cgbm": dict(aggregation_dim=16, attention_dim=16, matching_dim=16, localization_dim=16),
    "sst": dict(hidden_dim=16),
    "video_level": dict(embed_dim=16, hidden_dim=16),
}
_PAPER_MODEL_ONLY = model.VARIANTS + ("frame_similarity", "frame_similarity_residual",
                                       "query_blind")


def apply_arguments(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the comma-separated config arguments (see the module docstring)."""
  tokens = [t for t in (t.strip() for t in (arg or "").split(",")) if t]
  chosen = [t for t in tokens if t in COMPARATORS]
  if len(chosen) > 1:
    raise ValueError(f"config arguments {chosen} name more than one model")
  comparator = chosen[0] if chosen else None
  if comparator:
    # Set only here, so that configs (and work directories) of the paper's model keep
    # no model_name field: create_model reads a missing one as "relocalizer".
    config.model_name = comparator  # The model trained instead of the paper's.
    config.model = COMPARATORS[comparator]()
    config.variant = comparator
  for token in tokens:
    if comparator and token in _PAPER_MODEL_ONLY:
      raise ValueError(f"config argument {token!r} is for the paper's model, not {comparator}")
    if token in COMPARATORS:
      pass
    elif token in model.VARIANTS:
      config.variant = token
    elif token.startswith("alpha="):
      config.loss.alpha = float(token.split("=", 1)[1])
    elif token == "recordings" or token.startswith("recordings="):
      config.data.recordings = token.partition("=")[2] or "japanese_vowels"
      # Val (139 pairs) costs seconds; full supervision peaks at steps 100-125 (README).
      config.train.eval_every = min(config.train.eval_every, 25)
    elif token == "frame_similarity":
      config.model.frame_similarity = True
    elif token == "frame_similarity_residual":
      config.model.frame_similarity_residual = True
    elif token == "query_length" or token.startswith("inference="):
      config.eval.inference = token.partition("=")[2] or "query_length"
    elif token in ("windows", "windows=both"):
      config.loss.coattention_form = "both" if token.endswith("=both") else "windows"
      config.eval.inference = "windows"
    elif token == "query_blind":
      config.model.query_blind = True
    elif token == "quick":
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
      config.model.update(QUICK_SIZES[comparator or "relocalizer"])
    else:
      raise ValueError(f"unknown config argument {token!r}; expected one of "
                       f"{model.VARIANTS}, alpha=X, recordings[=SOURCE], frame_similarity, "
                       "frame_similarity_residual, inference=RULE, query_length, windows[=both], "
                       f"query_blind, {', '.join(COMPARATORS)}, quick")
  if not comparator:
    config.model = model.apply_variant(config.model, config.variant)
  return config


def for_comparator(name: str, arg: str | None) -> ml_collections.ConfigDict:
  """A comparator's configuration: full supervision with the benchmark authors' settings.

  Every comparator trains as Feng et al. trained theirs (fengyang0317/video_reloc,
  ``match.py``): its own loss alone (no co-attention loss), batch 128, Adam at a
  constant learning rate of 1e-3, gradients clipped to global norm 5, 1000 steps, a
  checkpoint and a val evaluation every 100 steps, the best val checkpoint tested;
  references randomly cropped around their segment with probability 0.9. So the
  rows of the comparison differ by model only.
  """
  config = for_supervision("full", ",".join(filter(None, [name, arg])))
  config.loss.coattention_weight = 0.0  # Each comparator's own loss alone.
  config.train.num_steps = 1000  # Their max_steps.
  config.train.decay_every = 1000  # A constant learning rate (their decay is commented out).
  config.train.eval_every = 100  # A checkpoint every 100 steps, each evaluated on val.
  config.train.checkpoint_every = 100
  if "quick" in (arg or "").split(","):
    config.train.num_steps = 6
    config.train.decay_every = 6
    config.train.eval_every = 3
    config.train.checkpoint_every = 2
  return config
