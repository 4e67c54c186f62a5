"""The harness every comparator trains in: full supervision with the benchmark authors' settings.

Every comparator trains as Feng et al. trained theirs (fengyang0317/video_reloc,
``match.py``): its own loss alone (no co-attention loss), batch 128, Adam at a constant
learning rate of 1e-3, gradients clipped to global norm 5, 1000 steps, a checkpoint and
a val evaluation every 100 steps, the best val checkpoint tested; references randomly
cropped around their segment with probability 0.9. So the rows of the comparison
differ by model only. Each comparator's file (cgbm.py, sst.py, video_level.py) takes
the arguments of `ARGUMENTS`: ``recordings[=SOURCE]`` and ``quick``.
"""

from __future__ import annotations

import ml_collections

from configs import arguments
from configs import default

ARGUMENTS = dict(recordings=default.RECORDINGS, quick=False)


def make_config(name: str, model: ml_collections.ConfigDict, arg: str | None,
                quick_sizes: dict[str, int]) -> ml_collections.ConfigDict:
  """The configuration of comparator ``name`` (``model_name``) with its ``model`` section.

  Args:
    name: the comparator (`vreloc_jax.models.FAMILIES`).
    model: its model section.
    arg: the config file's argument string (`ARGUMENTS`).
    quick_sizes: its model's sizes in a ``quick`` run.
  """
  args = arguments.parse_arg(arg, **ARGUMENTS)
  config = default.get_config()
  config.supervision = "full"
  config.loss.cross_entropy_weight = 1.0
  config.loss.coattention_weight = 0.0  # Each comparator's own loss alone.
  config.eval.inference = "full"
  config.model_name = name  # The model trained instead of the paper's.
  config.model = model
  config.variant = name
  config.data.recordings = args.recordings
  config.train.num_steps = 1000  # Their max_steps.
  config.train.decay_every = 1000  # A constant learning rate (their decay is commented out).
  config.train.eval_every = 100  # A checkpoint every 100 steps, each evaluated on val.
  config.train.checkpoint_every = 100
  if args.quick:
    default.quick(config, quick_sizes)
    config.train.decay_every = 6  # A constant learning rate in the tiny run too.
  return config
