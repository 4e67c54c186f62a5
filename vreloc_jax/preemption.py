"""Stopping a run on SIGTERM or SIGINT at a step boundary, with a checkpoint, to be resumed.

On the first SIGTERM or SIGINT (a second SIGINT interrupts at once) training finishes
its current step, saves a checkpoint of it and raises `Preempted`, which
``vreloc_jax.main`` turns into exit status `PREEMPTED_EXIT_CODE` for launchers to
requeue. With several processes they agree after every step on whether any of them
was signalled (`agree_on_signal`: one tiny all-gather), so all stop at the same step.
"""

from __future__ import annotations

import os
import signal
import threading
import types
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

PREEMPTED_EXIT_CODE = 75
"""Exit status of a run that stopped early, on SIGTERM or SIGINT, after saving a checkpoint.

75 is ``EX_TEMPFAIL`` of ``sysexits.h`` ("try again later"). Launchers requeue or rerun a job
that ends with it (launch/slurm_gpu.sbatch runs ``scontrol requeue``; launch/k8s_indexed_job.yaml
lets Kubernetes restart the pod); any other non-zero status is a failure that a rerun would repeat.
"""
# Signals that stop a run gracefully: finish the step, save a checkpoint, raise `Preempted`.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """A signal stopped training; every process saved a checkpoint first. Rerun to resume."""

  def __init__(self, step: int, signum: int):
    self.step = step
    self.signal_name = signal.Signals(signum).name
    super().__init__(f"stopped by {self.signal_name} with a checkpoint of step {step}; rerun "
                     "the same command to resume from it" if step else
                     f"stopped by {self.signal_name} before the first step; rerun the same "
                     "command to start")


class StopSignals:
  """Turns SIGTERM and SIGINT into a request to stop that the training loop polls.

  A context manager: it installs its handlers on entry and puts the previous ones back
  on exit. The first signal only records its number (`signum`); a second SIGINT does
  what SIGINT did before (by default: KeyboardInterrupt), so that Ctrl-C twice still
  interrupts at once. Repeated SIGTERMs are ignored: schedulers send SIGKILL when
  their grace period ends. A signal that was ignored on entry stays ignored, and off
  the main thread (where Python cannot set handlers) nothing is installed.
  """

  def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
    self.signals = signals
    self.signum = 0  # The first stop signal received; 0: none.
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Training outside the main thread: SIGTERM and SIGINT will not stop "
                      "it at a step boundary.")
      return self
    for signum in self.signals:
      previous = signal.getsignal(signum)
      if previous is signal.SIG_IGN:
        continue
      self._previous[signum] = previous
      signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    if self.signum and signum == signal.SIGINT:
      previous = self._previous.get(signum, signal.SIG_DFL)
      if callable(previous):
        previous(signum, frame)
      else:
        signal.signal(signum, previous)
        os.kill(os.getpid(), signum)
      return
    self.signum = self.signum or signum


def agree_on_signal(local: int) -> int:
  """The stop signal any process received (0: none), the same on every process.

  With several processes this is a collective (an all-gather of one int per process):
  every process must call it at the same points of the run.

  Args:
    local: the signal number this process received, or 0.
  """
  if jax.process_count() == 1:
    return local
  return int(np.max(multihost_utils.process_allgather(np.int32(local))))  # [processes] -> max


def preempted(step: int, signum: int) -> Preempted:
  """The exception that stops the run once the checkpoint of ``step`` is saved (logged)."""
  logging.warning("%s received: stopping with a checkpoint of step %d.",
                  signal.Signals(signum).name, step)
  return Preempted(step, signum)


def stop_if_signalled(stop: StopSignals, step: int) -> None:
  """Raises `Preempted` if any process received a stop signal (agreed by all processes).

  Args:
    stop: this process's signal handlers.
    step: the latest checkpoint's step (0: none), from which a rerun resumes.
  """
  signum = agree_on_signal(stop.signum)
  if signum:
    raise preempted(step, signum)
