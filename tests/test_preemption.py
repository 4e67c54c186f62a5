"""Preemption-safe training: a signal stops a run after a checkpoint, a kill loses nothing.

The central test runs ``python -m vreloc_jax.main`` for real: SIGTERM between two checkpoints
(exit status 75, a checkpoint of that step), then SIGKILL of the rerun (while it saves a
checkpoint, when it can be caught doing so), then a rerun to the end, whose results and
parameters must equal an uninterrupted run's exactly. To know the step a signal lands at, the
process is frozen (SIGSTOP) while metrics.jsonl is read, and thawed after the signal is sent.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import make_benchmark
from tests.test_train import REPO, _params, tiny_config
from vreloc_jax import checkpoints, evaluation, preemption, train

# The interrupted runs: checkpoints every 8 steps and at the evaluations (steps 10 and 20).
RUN = {"num_steps": 20, "eval_every": 10, "checkpoint_every": 8, "log_every": 1}
# The same configuration as `tiny_config("weak", data_dir, **RUN)`, as command-line flags.
CLI_OVERRIDES = {"data.query_buckets": "(16,)", "data.reference_buckets": "(32,)",
                 "train.batch_size": 8, "loss.mask_after_steps": 2, "eval.batch_size": 8,
                 **{f"train.{k}": v for k, v in RUN.items()}}
TMP_CHECKPOINT = "orbax-checkpoint-tmp"  # In the name of a checkpoint orbax is still writing.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  return make_benchmark(tmp_path_factory.mktemp("preemption_bench"), seed=3).root


def _start(data_dir: str, workdir: pathlib.Path, log: pathlib.Path,
           env_extra: dict[str, str] | None = None) -> subprocess.Popen:
  """``python -m vreloc_jax.main`` on the tiny benchmark, its output going to ``log``."""
  command = [sys.executable, "-m", "vreloc_jax.main", "--config=configs/weak.py:quick",
             f"--workdir={workdir}", f"--config.data.dir={data_dir}",
             *(f"--config.{k}={v}" for k, v in CLI_OVERRIDES.items())]
  env = {**os.environ, **(env_extra or {})}
  if jax.default_backend() == "cpu":  # As this process, whose run is the reference.
    env["JAX_PLATFORMS"] = "cpu"
  with open(log, "w", encoding="utf-8") as out:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _records(workdir: pathlib.Path) -> list[dict[str, Any]]:
  """The complete lines of W/metrics.jsonl."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  out = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return out


def _last_step(workdir: pathlib.Path) -> int:
  return max((r["step"] for r in _records(workdir)), default=0)


def _saving(workdir: pathlib.Path) -> bool:
  """Whether orbax is writing a checkpoint (its temporary directory exists)."""
  directory = workdir / "checkpoints"
  return directory.is_dir() and any(TMP_CHECKPOINT in p.name for p in directory.iterdir())


def _freeze(pid: int) -> None:
  """SIGSTOP, and wait until the main thread is stopped (Linux /proc)."""
  os.kill(pid, signal.SIGSTOP)
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      state = f.read().rpartition(")")[2].split()[0]
    if state in ("T", "t", "Z"):
      return
    time.sleep(0.001)
  raise AssertionError(f"process {pid} did not stop")


def _freeze_when(proc: subprocess.Popen, workdir: pathlib.Path, log: pathlib.Path,
                 ready: Callable[[int], bool], timeout: float = 300,
                 others: tuple[subprocess.Popen, ...] = ()) -> int:
  """Polls a run, frozen at each look, until ``ready(last logged step)``; leaves it frozen.

  Returns:
    The last step in metrics.jsonl. The loop agrees on signals, then logs the step: a signal
    sent now, while frozen, stops the run after the next step or (frozen between that step's
    agreement and its record) the one after.
  """
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if any(p.poll() is not None for p in (proc, *others)):
      for p in others:
        p.kill()
      raise AssertionError(f"run ended ({proc.poll()}) too early:\n{log.read_text()[-4000:]}")
    _freeze(proc.pid)
    step = _last_step(workdir)
    if ready(step):
      return step
    os.kill(proc.pid, signal.SIGCONT)
    time.sleep(0.02)
  for p in (proc, *others):
    p.kill()
  raise AssertionError(f"timed out waiting for the run:\n{log.read_text()[-4000:]}")


def _finish(proc: subprocess.Popen, log: pathlib.Path) -> int:
  try:
    return proc.wait(timeout=300)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(f"run did not end:\n{log.read_text()[-4000:]}") from None


def _between_checkpoints(step: int) -> bool:
  """Whether a signal sent after ``step`` is logged stops the run between checkpoints."""
  return step >= 3 and all((step + k) % 8 and (step + k) % 10 for k in (1, 2))


def _stop_step(log: pathlib.Path) -> int:
  """The step whose checkpoint a run stopped by SIGTERM saved, from its message."""
  found = re.search(r"stopped by SIGTERM with a checkpoint of step (\d+);", log.read_text())
  assert found, log.read_text()[-4000:]
  return int(found.group(1))


def _trajectory(workdir: pathlib.Path) -> list[dict[str, Any]]:
  """The records of metrics.jsonl without their timing fields."""
  return [{k: v for k, v in r.items() if k not in ("time", "steps_per_second")}
          for r in _records(workdir)]


def test_sigterm_then_sigkill_then_resume_matches_an_uninterrupted_run(data_dir, tmp_path):
  config = tiny_config("weak", data_dir, **RUN)
  straight = tmp_path / "straight"
  train.train_and_evaluate(config, str(straight))  # The uninterrupted run, in this process.

  workdir = tmp_path / "run"
  # 1. SIGTERM between checkpoints: the run saves the step it is in and exits with 75.
  log = tmp_path / "attempt1.log"
  proc = _start(data_dir, workdir, log)
  last = _freeze_when(proc, workdir, log, _between_checkpoints)
  os.kill(proc.pid, signal.SIGTERM)
  os.kill(proc.pid, signal.SIGCONT)
  assert _finish(proc, log) == preemption.PREEMPTED_EXIT_CODE, log.read_text()[-4000:]
  stopped = _stop_step(log)
  assert stopped in (last + 1, last + 2)  # Not a checkpoint step (8, 10, 16, 20).
  assert json.loads((workdir / "config.json").read_text()) == json.loads(
      (straight / "config.json").read_text())  # The command line is the config above.
  manager = checkpoints.manager(str(workdir), read_only=True)
  assert manager.latest_step() == stopped and manager.metrics(stopped) is None
  manager.close()
  assert _last_step(workdir) == stopped

  # 2. SIGKILL of the rerun: while it writes a checkpoint when caught doing so, else later.
  log = tmp_path / "attempt2.log"
  proc = _start(data_dir, workdir, log)
  killed_at = _freeze_when(proc, workdir, log,
                           lambda s: s > stopped and (_saving(workdir) or s >= stopped + 8))
  mid_save = _saving(workdir)
  proc.kill()
  assert _finish(proc, log) == -signal.SIGKILL
  print(f"SIGTERM: stopped at step {stopped}; SIGKILL after step {killed_at}"
        f"{' while saving a checkpoint' if mid_save else ''}")
  if mid_save:  # The checkpoint being written is not one; the rerun removes what was written.
    reader = checkpoints.manager(str(workdir), read_only=True)
    assert killed_at not in reader.all_steps()
    reader.close()

  # 3. Rerun to the end: the same results, parameters and trajectory, nothing half-written.
  log = tmp_path / "attempt3.log"
  assert _finish(_start(data_dir, workdir, log), log) == 0, log.read_text()[-4000:]
  assert not _saving(workdir)
  for name in ("test.json", "test.predictions.json", "baselines_test.json", "val_step10.json",
               "val_step20.json"):
    assert (json.loads((workdir / "results" / name).read_text())
            == json.loads((straight / "results" / name).read_text())), name
  a, b = _params(str(straight), config), _params(str(workdir), config)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert _trajectory(workdir) == _trajectory(straight)
  assert [r["step"] for r in _records(workdir) if "loss" in r] == list(range(1, 21))


class _NanGradientsFrom(train.Runner):
  """A `train.Runner` whose steps from ``BAD_STEP`` on end as a NaN gradient would leave them.

  NaN parameters and gradient norm, the loss (computed before the update) finite: what a
  step whose gradient is NaN returns. Emulated after the jitted step, not inside it, so that
  the test reuses the compiled training step of the other tests.
  """

  BAD_STEP = 3
  GRADIENT = True  # False: only the parameters (as an overflowing update would leave them).

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    step_fn = self.train_step
    nan_like = jax.jit(lambda tree: jax.tree.map(lambda x: x * jnp.nan, tree))

    def train_step(state, batch, rng):
      state, step_metrics = step_fn(state, batch, rng)
      if int(state["step"]) >= self.BAD_STEP:
        state = {**state, "params": nan_like(state["params"])}
        if self.GRADIENT:
          step_metrics = {**step_metrics, "grad_norm": nan_like(step_metrics["grad_norm"])}
      return state, step_metrics

    train_step.compile_ahead, train_step.cancel = step_fn.compile_ahead, step_fn.cancel
    self.train_step = train_step


def test_sigterm_during_start_up_exits_75_before_the_first_step(data_dir, tmp_path):
  """A scheduler's SIGTERM while the process joins the cluster or loads data: requeued (75)."""
  workdir, log = tmp_path / "w", tmp_path / "log"
  proc = _start(data_dir, workdir, log)
  deadline = time.time() + 300
  while "JAX process" not in log.read_text():  # main() runs: handlers are in place.
    assert proc.poll() is None, log.read_text()[-3000:]
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 75, log.read_text()[-3000:]
  assert "stopped by SIGTERM before the first step" in log.read_text()
  assert not _records(workdir)


@pytest.mark.parametrize("gradient, message", [
    (True, r"^non-finite gradient norm nan at step 3 \(metrics: .*\bloss=\d"),
    (False, r"^non-finite values in the training state after step 3, in \['params'\]")])
def test_nan_gradient_with_finite_loss_raises_before_any_save(data_dir, tmp_path, monkeypatch,
                                                              gradient, message):
  monkeypatch.setattr(_NanGradientsFrom, "GRADIENT", gradient)
  monkeypatch.setattr(train, "Runner", _NanGradientsFrom)
  workdir = str(tmp_path / "nan_grad")
  config = tiny_config("weak", data_dir, num_steps=6, checkpoint_every=1, eval_every=100)
  with pytest.raises(FloatingPointError, match=message):
    train.train_and_evaluate(config, workdir)
  manager = checkpoints.manager(workdir, read_only=True)
  assert list(manager.all_steps()) == [1, 2]  # Steps 1 and 2 saved, nothing after.
  manager.close()
  # Nor logged, when the gradient norm tells (the state is checked before saving only).
  assert [r["step"] for r in _records(pathlib.Path(workdir))] == ([1, 2] if gradient else
                                                                  [1, 2, 3])


def test_failed_val_evaluation_still_saves_its_checkpoint(data_dir, tmp_path, monkeypatch):
  def broken(runner, params, bench, split, *args, **kwargs):
    raise OSError(f"cannot write the {split} results")

  monkeypatch.setattr(evaluation, "score_split", broken)
  workdir = str(tmp_path / "broken_val")
  config = tiny_config("weak", data_dir, num_steps=2, eval_every=2, checkpoint_every=100)
  handlers = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}
  with pytest.raises(OSError, match="cannot write the val results"):
    train.train_and_evaluate(config, workdir)
  assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == handlers  # Put back.
  manager = checkpoints.manager(workdir, read_only=True)
  assert list(manager.all_steps()) == [2] and manager.metrics(2) is None
  manager.close()


def test_checkpoints_without_val_metrics_count_for_latest_only(tmp_path):
  state = {"w": np.arange(3, dtype=np.float32)}
  manager = checkpoints.manager(str(tmp_path), keep=2)
  saved = {1: None, 2: (10.0, 1.0), 3: None, 4: (5.0, 0.5), 5: None, 6: None}
  for step, val in saved.items():
    checkpoints.save(manager, step, state, val and {checkpoints.BEST_METRIC: val[0],
                                                    checkpoints.LOSS_METRIC: val[1]})
  # Kept: the latest 2 (5, 6), the best val mAP_avg (2) and the lowest val loss_c (4).
  reread = checkpoints.manager(str(tmp_path), read_only=True)
  for mgr in (manager, reread):  # As saved, and as a rerun reads them.
    assert list(mgr.all_steps()) == [2, 4, 5, 6]
    assert [checkpoints.resolve_step(mgr, w) for w in ("best", "min_loss_c", "latest")] == [
        2, 4, 6]
    mgr.close()


def test_checkpoint_of_an_older_version_without_loss_c_is_kept_and_never_min_loss(tmp_path):
  state = {"w": np.arange(3, dtype=np.float32)}
  manager = checkpoints.manager(str(tmp_path), keep=1)
  checkpoints.save(manager, 1, state, {checkpoints.BEST_METRIC: 9.0})  # No loss_c yet.
  checkpoints.save(manager, 2, state, {checkpoints.BEST_METRIC: 1.0, checkpoints.LOSS_METRIC: 0.4})
  checkpoints.save(manager, 3, state)
  assert list(manager.all_steps()) == [1, 2, 3]
  assert [checkpoints.resolve_step(manager, w) for w in ("best", "min_loss_c", "latest")] == [
      1, 2, 3]
  manager.close()


def test_stop_signals_record_the_first_and_restore_the_handlers():
  before = {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS}

  def delivered(stop: preemption.StopSignals, signum: int) -> None:
    os.kill(os.getpid(), signum)
    deadline = time.monotonic() + 5
    while not stop.signum and time.monotonic() < deadline:  # Handlers run between bytecodes.
      time.sleep(0.001)

  with preemption.StopSignals() as stop:
    delivered(stop, signal.SIGTERM)
    assert stop.signum == signal.SIGTERM
    assert preemption.agree_on_signal(stop.signum) == signal.SIGTERM
    delivered(stop, signal.SIGTERM)  # A repeated SIGTERM changes nothing.
    assert stop.signum == signal.SIGTERM
    if callable(before[signal.SIGINT]):  # Python's KeyboardInterrupt (not a kill).
      with pytest.raises(KeyboardInterrupt):  # A second signal, SIGINT, does what it did before.
        delivered(stop, signal.SIGINT)
        time.sleep(1)
  assert {s: signal.getsignal(s) for s in preemption.STOP_SIGNALS} == before


@pytest.mark.skipif(not os.environ.get("VRELOC_SLOW_TESTS"),
                    reason="two more training processes (about a minute here); set "
                    "VRELOC_SLOW_TESTS=1 to run")
def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(data_dir, tmp_path):
  port = 20000 + (os.getpid() * 7 + 1) % 20000
  workdir = tmp_path / "two"
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = [_start(data_dir, workdir, logs[i],
                  {"VRELOC_COORDINATOR": f"127.0.0.1:{port}", "VRELOC_NUM_PROCESSES": "2",
                   "VRELOC_PROCESS_ID": str(i)}) for i in range(2)]
  # Process 0 writes metrics.jsonl; only process 1 is signalled.
  last = _freeze_when(procs[0], workdir, logs[0], _between_checkpoints, others=(procs[1],))
  os.kill(procs[1].pid, signal.SIGTERM)
  os.kill(procs[0].pid, signal.SIGCONT)
  for proc, log in zip(procs, logs):
    assert _finish(proc, log) == preemption.PREEMPTED_EXIT_CODE, log.read_text()[-4000:]
  stopped = {_stop_step(log) for log in logs}
  assert len(stopped) == 1 and stopped <= {last + 1, last + 2}, (stopped, last)
  manager = checkpoints.manager(str(workdir), read_only=True)
  assert manager.latest_step() in stopped
  manager.close()
