"""The layout of a work directory, and its small files: the one place that knows them.

A work directory (local, or ``gs://…`` through `vreloc_jax.storage`) holds:

  config.json            the resolved configuration (`save_config`, `load_config`)
  metrics.jsonl          one JSON record per log line and per evaluation (process 0;
                         `MetricsWriter`); appended line by line, and a resumed run first
                         drops the records after its checkpoint (and a line a kill cut short)
  tensorboard/           the same learning curves as TensorBoard event files
                         (``tensorboard --logdir W/tensorboard``)
  plots/step<k>/         figures of ``eval.plot_pairs`` fixed val pairs at each evaluation
                         (`vreloc_jax.figures`: timeline, p_start/p_end/p_inside, attention)
  checkpoints/<step>/    orbax checkpoints (`vreloc_jax.checkpoints`), saved every
                         ``train.checkpoint_every`` steps, at every evaluation (with the val
                         metrics), at the last step and when a signal stops the run
  results/               val_step<k>.json (+ .predictions.json) per evaluation,
                         test.json (+ predictions) of the selected checkpoint,
                         test_<selection>.json beside it when that is not "best",
                         baselines_test.json (the training-free rows), and what
                         ``vreloc_jax.evaluate`` writes

Every file is written whole (`storage.write_text`), or for metrics.jsonl appended a
line at a time.

A training run takes its work directory with `claim`: it refuses a path that is a
file, creates the directory, and (process 0, local directories) holds the lock
``W/.lock`` (`acquire_lock`) until it ends, so a second run on the same W refuses in
one line naming the run that holds it. If the run fails before its first training
step, what it created is removed again: the directory itself when it made it, else
the entries it added (never what was there before).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import socket
import sys
import time
from typing import Any, Iterator

from absl import logging
import jax
import ml_collections

from vreloc_jax import storage

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
RESULTS_DIR = "results"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
PLOTS_DIR = "plots"
BASELINES_NAME = "baselines_test.json"
LOCK_NAME = ".lock"

# Fields a rerun may change and still resume the same run (length, logging, evaluation,
# and how the LSTMs run: every implementation has the same parameters; runs saved before
# the field existed resume with it too).
RESUMABLE_FIELDS = ("train.num_steps", "train.log_every", "train.eval_every",
                    "train.checkpoint_every", "train.keep_checkpoints", "eval.batch_size",
                    "eval.baselines", "eval.select", "eval.plot_pairs",
                    "model.lstm_implementation", "compile.cpu_optimization_level",
                    "compile.ahead")


def config_file(workdir: str) -> str:
  return storage.join(workdir, CONFIG_NAME)


def metrics_file(workdir: str) -> str:
  return storage.join(workdir, METRICS_NAME)


def checkpoints_dir(workdir: str) -> str:
  """Where orbax keeps the checkpoints (absolute when local)."""
  return storage.absolute(storage.join(workdir, CHECKPOINTS_DIR))


def results_file(workdir: str, name: str) -> str:
  """``W/results/<name>``."""
  return storage.join(workdir, RESULTS_DIR, name)


def val_results_file(workdir: str, step: int) -> str:
  """The val results of the evaluation at ``step``."""
  return results_file(workdir, f"val_step{step}.json")


def test_results_file(workdir: str, selection: str, run_selection: str) -> str:
  """The test results of a selection: test.json for the run's own, test_<selection>.json else."""
  return results_file(workdir, "test.json" if selection == run_selection else
                      f"test_{selection}.json")


def plots_dir(workdir: str, step: int) -> str:
  """Where the figures of the evaluation at ``step`` go: ``W/plots/step<k>/``."""
  return storage.join(workdir, PLOTS_DIR, f"step{step}")


def evaluation_file(workdir: str, split: str, step: int, inference: str | None = None) -> str:
  """What ``vreloc_jax.evaluate`` writes for a checkpoint (and another inference rule)."""
  suffix = f"_{inference}" if inference else ""
  return results_file(workdir, f"{split}_step{step}{suffix}.json")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}


def save_config(config: ml_collections.ConfigDict, workdir: str, data_dir: str) -> None:
  """Writes W/config.json (with the resolved data directory) after checking a resume.

  Raises:
    ValueError: W already holds checkpoints of a run with another configuration or
      other data (outside `RESUMABLE_FIELDS`); resuming it would mix two runs.
  """
  record = json.loads(config.to_json())
  record["data"]["resolved_dir"] = storage.absolute(data_dir)
  path = config_file(workdir)
  if storage.is_file(path) and storage.list_names(storage.join(workdir, CHECKPOINTS_DIR)):
    old, new = _flatten(storage.read_json(path)), _flatten(record)
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k) != new.get(k) and k.rstrip(".") not in RESUMABLE_FIELDS)
    if changed:
      raise ValueError(
          f"{workdir} holds checkpoints of a different run; it differs in "
          + ", ".join(f"{k.rstrip('.')} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed[:5])
          + (" …" if len(changed) > 5 else "") + ". Rerun with the same configuration to "
          "resume it, or choose a new --workdir.")
  if jax.process_index() == 0:
    storage.write_json(path, record)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The configuration a work directory was trained with.

  Raises:
    ValueError: ``workdir`` has no (readable) config.json.
  """
  path = config_file(workdir)
  if not storage.exists(workdir):
    raise ValueError(f"{workdir} is not a vreloc_jax work directory (it does not exist)")
  if not storage.is_file(path):
    raise ValueError(f"{workdir} is not a vreloc_jax work directory (no {CONFIG_NAME})")
  return ml_collections.ConfigDict(storage.read_json(path))


class WorkdirInUse(ValueError):
  """Another run holds the work directory's lock."""


def _lock_record() -> dict[str, Any]:
  """What ``W/.lock`` says about the run holding it."""
  record = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:1000]}
  if os.environ.get("SLURM_JOB_ID"):  # A requeued job takes over its own lock (`_stale`).
    record["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    record["slurm_restart_count"] = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
  return record


def _read_lock(path: str, attempts: int = 5) -> dict[str, Any] | None:
  """The record of a lock file; None when it is gone, or unreadable after ``attempts`` tries.

  A lock is created empty and then written, so a reader may see it empty for a moment.
  """
  for attempt in range(attempts):
    try:
      with open(path, encoding="utf-8") as f:
        record = json.loads(f.read())
      if isinstance(record, dict):
        return record
    except FileNotFoundError:
      return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
      pass
    if attempt + 1 < attempts:
      time.sleep(0.1)
  return None


def _stale(holder: dict[str, Any]) -> bool:
  """Whether a lock's run is certainly gone: its process on this host no longer runs
  (or is this very process, as after a container restart), or it is an earlier run of
  this SLURM job (requeued). A run on another host cannot be checked: never stale."""
  if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
    return holder["pid"] == os.getpid() or not storage.process_alive(holder["pid"])
  job = os.environ.get("SLURM_JOB_ID")
  return bool(job) and holder.get("slurm_job_id") == job and (
      holder.get("slurm_restart_count", 0) < int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))


def _describe(holder: dict[str, Any]) -> str:
  return (f"process {holder.get('pid')} on host {holder.get('host')} (started "
          f"{holder.get('started')}, command: {holder.get('command') or '?'})")


def acquire_lock(workdir: str) -> str | None:
  """Takes ``W/.lock`` for this process, breaking a stale one (`_stale`).

  The lock file is created with O_CREAT | O_EXCL (atomic on a local file system and on
  NFS v3 and later) and holds JSON: host, pid, start time, command (and the SLURM job).
  Work directories on cloud storage are not locked (objects have no atomic create here).

  Returns:
    The lock file's path, or None when ``workdir`` is not local.

  Raises:
    WorkdirInUse: another run holds the lock (the message names it and what to do).
  """
  if not storage.is_local(workdir):
    return None
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  record = _lock_record()
  for attempt in range(3):
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      holder = _read_lock(path)
      if holder is not None and _stale(holder) and attempt < 2:
        logging.warning("Taking over %s: its run, %s, is gone.", path, _describe(holder))
        _remove_stale(path, holder)
        continue
      if holder is None and not os.path.exists(path) and attempt < 2:
        continue  # Released while we looked.
      if holder is None:
        raise WorkdirInUse(f"{workdir} is locked by {path}, which is unreadable (a run killed "
                           f"as it started?); if no run uses {workdir}, remove {path} and rerun")
      raise WorkdirInUse(
          f"{workdir} is in use by the run of {_describe(holder)}; wait for it to end or "
          f"choose another --workdir (if that run is gone, remove {path})")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    return path
  raise WorkdirInUse(f"{workdir}: could not take {path}; rerun")


def _remove_stale(path: str, holder: dict[str, Any]) -> None:
  """Removes a stale lock, unless another process replaced it meanwhile."""
  aside = f"{path}.stale-{socket.gethostname()}-{os.getpid()}"
  try:
    os.rename(path, aside)  # Atomic: of two processes breaking it, one gets it.
  except FileNotFoundError:
    return
  if _read_lock(aside, attempts=1) != holder:  # A live lock was taken meanwhile: put it back.
    with contextlib.suppress(OSError):
      os.link(aside, path)
  with contextlib.suppress(OSError):
    os.unlink(aside)


def release_lock(path: str | None) -> None:
  """Removes ``W/.lock`` if this process holds it."""
  if path is None:
    return
  holder = _read_lock(path, attempts=1)
  if holder is not None and holder.get("pid") == os.getpid() and (
      holder.get("host") == socket.gethostname()):
    with contextlib.suppress(FileNotFoundError):
      os.unlink(path)


class Claim:
  """A training run's hold on its work directory (`claim`).

  Attributes:
    workdir: the work directory.
    started: set by the run once its first training step is done; a failure before
      that removes what the run created.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.started = False


def _agree(ok: bool) -> bool:
  """Process 0's ``ok`` on every process (a collective when there are several)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def claim(workdir: str) -> Iterator[Claim]:
  """Takes ``workdir`` for a training run, for the duration of the ``with`` block.

  Process 0 checks that ``workdir`` is not a file, creates it and takes its lock
  (`acquire_lock`; local directories only); every process learns whether that worked
  (one collective when there are several). On the way out the lock is released, and
  if the block raised before the run's first training step (`Claim.started` unset),
  process 0 removes what this run created in a local work directory: the directory
  when it did not exist before, else the top-level entries that were not there.

  Raises:
    ValueError: ``workdir`` is a file, or another run holds it (`WorkdirInUse`).
  """
  primary = jax.process_index() == 0
  local = storage.is_local(workdir)
  lock, failure, created, before = None, None, False, set()
  if primary:
    try:
      if storage.exists(workdir) and not storage.is_dir(workdir):
        raise ValueError(f"--workdir {workdir} is a file, not a directory; choose another "
                         "--workdir")
      created = not storage.exists(workdir)
      before = set(storage.list_names(workdir))
      storage.make_dirs(workdir)
      lock = acquire_lock(workdir)
    except (ValueError, OSError) as e:
      if created and local:
        shutil.rmtree(workdir, ignore_errors=True)
      failure = e if isinstance(e, ValueError) else ValueError(
          f"cannot create the work directory {workdir}: {e}")
  if not _agree(failure is None):
    raise failure or ValueError(f"process 0 could not take the work directory {workdir} "
                                "(its message says why)")
  if not primary:
    storage.make_dirs(workdir)
  held = Claim(workdir)
  failed = False
  try:
    yield held
  except BaseException:
    failed = True
    raise
  finally:
    release_lock(lock)
    if failed and primary and local and not held.started:
      _remove_created(workdir, created, before)


def _remove_created(workdir: str, created: bool, before: set[str]) -> None:
  """Removes what a run that failed at its start created (see `claim`)."""
  if created:
    shutil.rmtree(workdir, ignore_errors=True)
    return
  for name in set(storage.list_names(workdir)) - before - {LOCK_NAME}:
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      with contextlib.suppress(OSError):
        os.unlink(path)


# The package tensorboardX needs to write events to a cloud URI, by scheme.
_EVENT_BACKENDS = {"gs": "google.cloud.storage", "s3": "boto3"}


def missing_event_backend(directory: str) -> str | None:
  """The package that TensorBoard events in ``directory`` need and that is not installed.

  Asked before tensorboardX is: its cloud writers raise ImportError half-built, and then
  raise again when collected (an "Exception ignored in ... __del__" traceback).
  """
  module = _EVENT_BACKENDS.get(directory.partition("://")[0]) if "://" in directory else None
  if module is None:
    return None
  try:
    return None if importlib.util.find_spec(module) is not None else module
  except ModuleNotFoundError:  # A parent package (google, google.cloud) is missing.
    return module


class MetricsWriter:
  """Learning curves: JSON lines in ``W/metrics.jsonl`` and TensorBoard events in ``W/tensorboard``.

  Only process 0 writes. Every numeric field of a record except ``step`` becomes a
  TensorBoard scalar at that step: ``val_…`` fields under ``val/`` (``val/mAP_avg``,
  ``val/mAP_0.5`` for ``val_mAP@0.5``, ``val/loss_c``), the others under ``train/`` (``train/loss``,
  ``train/loss_c``, ``train/grad_norm``, ``train/learning_rate``,
  ``train/steps_per_second``). Watch a run live with
  ``tensorboard --logdir W/tensorboard``. The events are written by tensorboardX (no
  TensorFlow needed), flushed at every evaluation and when the writer closes; on
  ``gs://`` it needs ``google-cloud-storage`` (without it: a warning, no events).
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = metrics_file(workdir)
    self.enabled = jax.process_index() == 0
    self._tensorboard_dir = storage.join(workdir, TENSORBOARD_DIR) if tensorboard else None
    self._events = None  # The tensorboardX writer, opened at the first record.
    self._purge_step: int | None = None

  def truncate_after(self, step: int) -> None:
    """Drops records of steps after `step`: a resumed run logs them again.

    An interrupted run may have logged past its last checkpoint; without this the
    resumed run's records of those steps would follow them as duplicates. TensorBoard
    is told the same (its events after ``step`` are purged when it reads the new ones).
    """
    if not self.enabled:
      return
    self._purge_step = step + 1 if step > 0 else None
    if not storage.is_file(self.path):
      return
    lines = storage.read_text(self.path).splitlines(keepends=True)
    kept = []
    for line in lines:
      try:
        record_step = json.loads(line).get("step", 0)
      except json.JSONDecodeError:  # A line cut short by the interruption.
        continue
      if record_step <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
      storage.write_text(self.path, "".join(kept))

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    storage.append_text(self.path, json.dumps(record) + "\n")
    if self._tensorboard_dir is None:
      return
    if self._events is None:
      missing = missing_event_backend(self._tensorboard_dir)
      try:
        if missing is not None:
          raise ImportError(f"they need the Python package {missing}")
        from tensorboardX import SummaryWriter  # Imported lazily: only process 0 writes events.
        self._events = SummaryWriter(self._tensorboard_dir, purge_step=self._purge_step)
      except ImportError as e:  # Also a backend that is installed but does not import.
        logging.warning("No TensorBoard events in %s (%s); metrics.jsonl has the same curves.",
                        self._tensorboard_dir, e)
        self._tensorboard_dir = None
        return
    step = int(record["step"])
    for key, value in record.items():
      if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
      tag = tag.replace("@", "_")  # TensorBoard's tag characters.
      self._events.add_scalar(tag, value, step)
    if any(key.startswith("val_") for key in record):
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None
