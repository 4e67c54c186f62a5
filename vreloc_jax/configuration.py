"""What a configuration may hold: `validate`, every check of a configuration in one place.

Each command line validates the configuration it runs before it starts
(`train.train_and_evaluate`, which ``vreloc_jax.main`` runs; ``vreloc_jax.evaluate``;
``vreloc_jax.export``, which ``vreloc_jax.localize --workdir`` runs). Configurations of
work directories written by earlier versions, without the fields added since, pass.
"""

from __future__ import annotations

import math

import ml_collections

from vreloc_jax import baselines
from vreloc_jax import checkpoints
from vreloc_jax import family
from vreloc_jax import losses
from vreloc_jax import models

SUPERVISIONS = ("weak", "full")
# Fields that count steps or examples: at least 1.
_POSITIVE = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
             "train.keep_checkpoints", "train.decay_every")


def check_batch_size(size: int, name: str, devices: int | None = None) -> None:
  """Raises ValueError unless a global batch ``size`` is positive and splits over ``devices``."""
  if size < 1:
    raise ValueError(f"{name} must be at least 1, got {size}; choose a positive multiple of the "
                     f"{devices or 1} device(s)")
  if devices and size % devices:
    raise ValueError(f"{name} {size} is not divisible by the {devices} devices; choose a "
                     "multiple")


def validate(config: ml_collections.ConfigDict, devices: int | None = None) -> None:
  """Raises ValueError naming the first field of ``config`` that cannot run.

  Args:
    config: a whole configuration (a configs/*.py file's, or a work directory's).
    devices: the number of devices the batches are split over, when known.
  """
  if config.supervision not in SUPERVISIONS:
    raise ValueError(f"unknown supervision {config.supervision!r}; expected 'weak' or 'full'")
  models.family_class(config).check(config)
  check_batch_size(config.train.batch_size, "train.batch_size", devices)
  check_batch_size(config.eval.batch_size, "eval.batch_size", devices)
  for field in _POSITIVE:
    section, name = field.split(".")
    if config[section][name] < 1:
      raise ValueError(f"{field} must be at least 1, got {config[section][name]}")
  if config.eval.inference not in family.INFERENCES:
    raise ValueError(f"eval.inference must be one of {family.INFERENCES}, "
                     f"got {config.eval.inference!r}")
  if family.coattention_form(config) not in family.COATTENTION_FORMS:
    raise ValueError(f"loss.coattention_form must be one of {family.COATTENTION_FORMS}, "
                     f"got {family.coattention_form(config)!r}")
  if config.loss.get("criterion_features", "raw") not in losses.CRITERION_FEATURES:
    raise ValueError(f"loss.criterion_features must be one of {losses.CRITERION_FEATURES}, "
                     f"got {config.loss.criterion_features!r}")
  offset = config.data.get("shared_offset", 0.0)
  if not (math.isfinite(offset) and offset >= 0):
    raise ValueError(f"data.shared_offset must be a finite number >= 0 (0: off), got {offset!r}")
  unknown = [m for m in config.eval.get("baselines", ()) if m not in baselines.BASELINES]
  if unknown:
    raise ValueError(f"eval.baselines: unknown method(s) {unknown}; expected some of "
                     f"{baselines.BASELINES}")
  if config.eval.select not in checkpoints.SELECTIONS:
    raise ValueError(f"eval.select must be one of {sorted(checkpoints.SELECTIONS)}, "
                     f"got {config.eval.select!r}")
  if config.supervision == "weak" and config.loss.cross_entropy_weight > 0:
    raise ValueError("loss.cross_entropy_weight needs annotated references: set it to 0 with "
                     "weak supervision, or train with full supervision")
  level = (config.get("compile") or {}).get("cpu_optimization_level")
  if level is not None and not 0 <= int(level) <= 3:
    raise ValueError(f"compile.cpu_optimization_level must be 0-3, got {level}")
