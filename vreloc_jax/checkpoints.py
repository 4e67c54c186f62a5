"""Orbax checkpoints of the training state in ``WORKDIR/checkpoints``.

One `CheckpointManager` keeps the latest ``keep`` checkpoints and, beside
them, the best one by val ``mAP_avg`` (selected with the val annotations) and
the one with the lowest val co-attention loss of its predictions (selected
without annotations). A checkpoint saved at an evaluation step carries its val
metrics; one saved between evaluations (every ``train.checkpoint_every``
steps, or when a run is stopped by a signal) or after a failed evaluation
carries none (``metrics=None``). Orbax ranks only checkpoints with metrics
(`pp.BestN` and the manager's ``best_fn`` both set the others aside, and with
``keep_checkpoints_without_metrics=False`` BestN does not keep them), so those
count for "latest" and the latest-``keep`` rule only, never for "best" or
"min_loss_c". A state restores onto any mesh: the restore target carries the
shardings of the current devices, whatever the number of devices at saving.
Checkpoints are written to a temporary directory and renamed when complete;
temporary directories a killed run left behind are removed when a writable
manager opens the directory.
"""

from __future__ import annotations

import logging as py_logging
from typing import Any

from absl import logging
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from vreloc_jax import workdir as workdir_lib

BEST_METRIC = "val_mAP_avg"
LOSS_METRIC = "val_loss_c"
# How a run's result checkpoint can be chosen (``eval.select``, ``--checkpoint``):
SELECTIONS = {
    "best": "the highest val mAP_avg (reads the val annotations)",
    "latest": "the last step saved (no annotation)",
    "min_loss_c": "the lowest val co-attention loss of the predictions (no annotation)",
}


# What orbax logs (a warning) for every save without metrics when it tracks a best checkpoint.
_NO_METRICS_WARNING = "did not provide metrics"


class _HideNoMetricsWarning(py_logging.Filter):
  """Drops orbax's warning for a save without metrics: here that is deliberate."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return _NO_METRICS_WARNING not in record.getMessage()


_HIDE_NO_METRICS_WARNING = _HideNoMetricsWarning()


def _best_metric(metrics: Any) -> float:
  return float(metrics[BEST_METRIC])


def _negative_loss(metrics: Any) -> float:
  # A checkpoint of an older version has no loss_c: it never ranks as the lowest.
  return -float(metrics.get(LOSS_METRIC, float("inf")))


def manager(workdir: str, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  """The checkpoint manager of a work directory."""
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(n=keep),
      pp.BestN(get_metric_fn=_best_metric, reverse=False, n=1,
               keep_checkpoints_without_metrics=False),
      pp.BestN(get_metric_fn=_negative_loss, reverse=False, n=1,
               keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, best_fn=_best_metric, best_mode="max",
      create=not read_only, read_only=read_only, save_interval_steps=0 if read_only else 1,
      cleanup_tmp_directories=not read_only, enable_async_checkpointing=False)
  return ocp.CheckpointManager(workdir_lib.checkpoints_dir(workdir),
                               options=options)


def save(mgr: ocp.CheckpointManager, step: int, state: Any,
         metrics: dict[str, float] | None = None) -> None:
  """Saves the state at ``step``, with its val metrics when it has them (used to find the best).

  Args:
    mgr: the work directory's manager (`manager`).
    step: the training step the state is at.
    state: the training state (any mesh).
    metrics: ``{BEST_METRIC: …, LOSS_METRIC: …}`` at an evaluation step; None for a
      checkpoint without evaluation, which "best" and "min_loss_c" never select.
  """
  logging.get_absl_logger().addFilter(_HIDE_NO_METRICS_WARNING)  # Idempotent.
  mgr.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
  mgr.wait_until_finished()


def _min_loss_step(mgr: ocp.CheckpointManager) -> int | None:
  """The saved step with the lowest val loss_c (the earliest on ties), or None."""
  losses = {}
  for step in mgr.all_steps():
    saved = mgr.metrics(step) or {}
    if LOSS_METRIC in saved:
      losses[step] = float(saved[LOSS_METRIC])
  return min(losses, key=lambda k: (losses[k], k)) if losses else None


def resolve_step(mgr: ocp.CheckpointManager, which: str | int) -> int:
  """The step of a selection (`SELECTIONS`: best, latest, min_loss_c) or an explicit step.

  Raises:
    ValueError: no such checkpoint (the message lists the saved steps).
  """
  steps = list(mgr.all_steps())
  if not steps:
    raise ValueError(f"no checkpoint in {mgr.directory}")
  if which == "best":
    step = mgr.best_step()
  elif which == "latest":
    step = mgr.latest_step()
  elif which == "min_loss_c":
    step = _min_loss_step(mgr)
  else:
    try:
      step = int(which)
    except (TypeError, ValueError):
      raise ValueError(f"checkpoint must be one of {sorted(SELECTIONS)} or a step, "
                       f"got {which!r}") from None
  if step is None:
    raise ValueError(f"no checkpoint in {mgr.directory} has the metric that '{which}' "
                     "selects by (saved by an older version?); use 'best', 'latest' or a step")
  if step not in steps:
    raise ValueError(f"no checkpoint for step {step} in {mgr.directory}; saved steps: {steps}")
  return int(step)


def restore(mgr: ocp.CheckpointManager, which: str | int, target: Any) -> Any | None:
  """Restores a checkpoint onto ``target``'s shapes and shardings.

  Returns:
    The state, or None if ``which`` is "latest" and nothing was saved yet.

  Raises:
    ValueError: no such checkpoint, or its shapes differ from ``target``'s.
  """
  if which == "latest" and mgr.latest_step() is None:
    return None
  step = resolve_step(mgr, which)
  try:
    return mgr.restore(step, args=ocp.args.StandardRestore(target))
  except ValueError as e:
    if "shape" not in str(e):
      raise
    reason = str(e).split(". ")[0]
    raise ValueError(
        f"the checkpoint of step {step} in {mgr.directory} does not fit the model it is "
        f"restored into ({reason}): it was saved by a run on data of another feature "
        "dimension or with another model configuration; use the data and configuration it "
        "was trained with (its work directory's config.json)") from None
