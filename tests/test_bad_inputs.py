"""Every command line's bad input ends in one line on stderr and leaves nothing behind.

Each case runs the real program (``python -m vreloc_jax.<program> ...``) in a process of
its own, all of them side by side, on the tiny benchmark and ``configs/weak.py:quick``.
None of them trains: each fails before its first step. Checked for every case: exit
status 1, no traceback, stderr is absl's log lines and then one line
``<program>: error: <what>``, and nothing new on disk (no work directory, no file)
while what was there before is unchanged. Then the work-directory lock
(`vreloc_jax.workdir.claim`): a second run on a work directory in use refuses and
leaves the first run's directory alone; a lock whose process is gone does not block.
The cases that need a trained, exported model are in test_export.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import full as full_config
from configs import weak as weak_config
from tests.conftest import REPO_ROOT, make_benchmark, subprocess_env
from vreloc_jax import checkpoints, cli
from vreloc_jax import workdir as workdir_lib

QUICK = "--config=configs/weak.py:quick"
LOG_LINE = re.compile(r"^[IWEF]\d{4} ")  # absl's log lines: "I1206 00:15:44.869 ... ]".


def _run(program: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", f"vreloc_jax.{program}", *args], cwd=REPO_ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)


def _snapshot(root: pathlib.Path) -> dict[str, str]:
  """Every path under ``root`` with the SHA-256 of its content ("dir" for a directory)."""
  out = {}
  for path in sorted(root.rglob("*")):
    key = str(path.relative_to(root))
    out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def assert_one_line_error(done: subprocess.CompletedProcess, program: str, message: str) -> str:
  """Exit status 1, no traceback, and stderr's only line that is not a log line is the error."""
  stderr = done.stderr
  assert done.returncode == 1, (done.returncode, stderr[-3000:])
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert lines, "nothing on stderr"
  assert all(LOG_LINE.match(line) for line in lines[:-1]), stderr[-3000:]
  last = lines[-1]
  assert last.startswith(f"vreloc_jax.{program}: error: "), last
  assert re.search(message, last), (message, last)
  return last


@dataclasses.dataclass
class Case:
  program: str
  args: tuple[str, ...]
  message: str  # A regular expression the error line matches.


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> pathlib.Path:
  """The inputs of the cases: a tiny benchmark, broken data, a work directory of a run."""
  root = tmp_path_factory.mktemp("bad_inputs")
  bench = make_benchmark(root / "bench")
  broken = root / "not_hdf5"
  broken.mkdir()
  for name in ("train.json", "val.json", "test.json", "length.json"):
    shutil.copy(os.path.join(bench.root, name), broken / name)
  (broken / "sub_activitynet_v1-3.c3d.hdf5").write_text("not an HDF5 file")
  (root / "a_file").write_text("a file, not a directory")
  # A work directory of a weak run with a checkpoint of step 1 (a tiny stand-in state).
  run = root / "run"
  config = weak_config.get_config("quick")
  config.data.dir = bench.root
  workdir_lib.save_config(config, str(run), bench.root)
  manager = checkpoints.manager(str(run))
  checkpoints.save(manager, 1, {"w": np.arange(3, dtype=np.float32)})
  manager.close()
  (root / "export_here").mkdir()
  (root / "export_here" / "notes.txt").write_text("mine")
  (root / "corrupt_model").mkdir()
  (root / "corrupt_model" / "model.json").write_text('{"format": ')
  return root


def _cases(root: pathlib.Path) -> dict[str, Case]:
  data = f"--config.data.dir={root / 'bench'}"
  new = lambda name: f"--workdir={root / name}"  # A work directory that must not appear.
  return {
      "missing config file": Case("main", ("--config=configs/none.py", new("w1")),
                                  r"cannot load the --config file: .*No such file"),
      "unknown config argument": Case("main", ("--config=configs/weak.py:bogus", new("w2")),
                                      r"unknown config argument 'bogus'; expected one of"),
      "batch size 0": Case("main", (QUICK, new("w3"), data, "--config.train.batch_size=0"),
                           r"train.batch_size must be at least 1, got 0"),
      "steps not a number": Case("main", (QUICK, new("w4"), "--config.train.num_steps=abc"),
                                 r"--config.train.num_steps=abc: invalid literal"),
      "no data directory": Case("main", (QUICK, new("w5"), f"--config.data.dir={root / 'nope'}"),
                                r"data directory .*nope does not exist"),
      "features not HDF5": Case("main", (QUICK, new("w6"), f"--config.data.dir={root / 'not_hdf5'}"),
                                r"feature file .*not_hdf5/sub_activitynet_v1-3.c3d.hdf5 is "
                                r"unreadable"),
      "work directory is a file": Case("main", (QUICK, f"--workdir={root / 'a_file'}", data),
                                       r"--workdir .*a_file is a file, not a directory"),
      "work directory of another run": Case(
          "main", ("--config=configs/full.py:quick", f"--workdir={root / 'run'}", data),
          r"holds checkpoints of a different run; it differs in .*supervision"),
      "evaluate: no work directory": Case("evaluate", (f"--workdir={root / 'bench'}",),
                                          r"bench is not a vreloc_jax work directory"),
      "evaluate: step never saved": Case("evaluate", (f"--workdir={root / 'run'}",
                                                      "--checkpoint=7"),
                                         r"no checkpoint for step 7 .*saved steps: \[1\]"),
      "evaluate: no such split": Case("evaluate", (f"--workdir={root / 'run'}", "--split=train"),
                                      r"--split=train: value should be one of <val\|test>"),
      "evaluate: corrupt model.json": Case("evaluate", (f"--model={root / 'corrupt_model'}",),
                                           r"model.json is corrupt"),
      "export into a non-empty directory": Case(
          "export", (f"--workdir={root / 'run'}", f"--output={root / 'export_here'}"),
          r"export_here exists and is not empty; choose another directory or pass --overwrite"),
      "localize: no model directory": Case("localize", (f"--model={root / 'nomodel'}",
                                                        "--query=a:0-3", "--reference=b"),
                                           r"exported model .*nomodel does not exist"),
      "features: no such video": Case("features", (f"--videos={root / 'none.mp4'}",
                                                   f"--out={root / 'f1'}", "--weights=random"),
                                      r"--videos: .*none\.mp4 does not exist"),
      "features: weights not HDF5": Case("features", (f"--videos={root / 'a_file'}",
                                                      f"--out={root / 'f2'}",
                                                      f"--weights={root / 'a_file'}"),
                                         r"weights file .*a_file is not a readable HDF5 file"),
      "features: output is a file": Case("features", (f"--videos={root / 'a_file'}",
                                                      f"--out={root / 'a_file'}",
                                                      "--weights=random"),
                                         r"--out .*a_file is a file, not a directory"),
      "baselines: unknown method": Case("baselines", ("--method=bogus",
                                                      f"--data_dir={root / 'bench'}",
                                                      f"--output={root / 'b.json'}"),
                                        r"--method=bogus: value should be one of"),
  }


@pytest.fixture(scope="module")
def outcomes(place) -> dict[str, tuple[Case, subprocess.CompletedProcess]]:
  """Every case run once, three at a time; the directory checked before and after all."""
  cases = _cases(place)
  before = _snapshot(place)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {name: pool.submit(_run, case.program, *case.args) for name, case in cases.items()}
    done = {name: (cases[name], f.result()) for name, f in futures.items()}
  after = _snapshot(place)
  # Nothing new (no work directory, no lock, no temporary or half-written file) and
  # nothing changed; pair files that the tiny benchmark gets on first evaluation aside.
  after = {k: v for k, v in after.items() if not re.match(r"bench/\w+_pairs_seed0\.json$", k)}
  assert after == before, sorted(set(after.items()) ^ set(before.items()))
  return done


@pytest.mark.parametrize("name", list(_cases(pathlib.Path("/R"))))
def test_one_line_and_nothing_left(outcomes, name):
  case, done = outcomes[name]
  assert_one_line_error(done, case.program, case.message)


def test_one_line_of_a_quoted_traceback():
  message = ("flag --config=c.py:x: Error whilst parsing config file:\n\nTraceback (most recent "
             "call last):\n  File \"c.py\", line 3, in get_config\nValueError: unknown x\n")
  assert cli.one_line(message) == ("flag --config=c.py:x: Error whilst parsing config file: "
                                   "unknown x")
  assert cli.one_line("a\n  b\n") == "a b"


# --- The work directory's lock ------------------------------------------------------------------

_HOLDER = ("import sys; from vreloc_jax import workdir\n"
           "with workdir.claim(sys.argv[1]):\n"
           "  print('holding', flush=True)\n"
           "  sys.stdin.readline()\n")


def _hold(workdir: pathlib.Path) -> subprocess.Popen:
  """A process that holds ``workdir`` (`workdir.claim`) until its stdin gets a line."""
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], cwd=REPO_ROOT,
                          env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == "holding"
  return proc


def test_a_second_run_refuses_a_held_work_directory_and_a_dead_holder_does_not_block(place):
  run = place / "locked_run"
  shutil.copytree(place / "run", run)
  data = f"--config.data.dir={place / 'bench'}"
  holder = _hold(run)
  try:
    lock = json.loads((run / workdir_lib.LOCK_NAME).read_text())
    assert lock["pid"] == holder.pid and lock["host"]
    before = _snapshot(run)
    done = _run("main", QUICK, f"--workdir={run}", data)
    assert_one_line_error(done, "main", rf"{run} is in use by the run of process {holder.pid} "
                          rf"on host {re.escape(lock['host'])} .*wait for it to end or choose "
                          "another --workdir")
    assert _snapshot(run) == before  # The first run's directory, its lock included, untouched.
    holder.kill()  # SIGKILL: its lock stays behind, naming a process that is gone.
    holder.wait()
  finally:
    if holder.poll() is None:
      holder.kill()
  assert (run / workdir_lib.LOCK_NAME).exists()
  # The rerun takes the stale lock over and gets as far as the data (missing here, so that
  # it stops before training), then releases the lock and leaves the directory as it was.
  done = _run("main", QUICK, f"--workdir={run}", f"--config.data.dir={place / 'nope'}")
  assert_one_line_error(done, "main", "data directory .*nope does not exist")
  assert "Taking over" in done.stderr and f"process {holder.pid}" in done.stderr
  assert not (run / workdir_lib.LOCK_NAME).exists()
  after = _snapshot(run)
  assert after == {k: v for k, v in before.items() if k != workdir_lib.LOCK_NAME}


def test_lock_in_process(tmp_path, monkeypatch):
  work = tmp_path / "w"
  with workdir_lib.claim(str(work)) as claim:
    record = json.loads((work / workdir_lib.LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and claim.workdir == str(work)
  assert os.listdir(work) == []  # Released; the directory stays after a run without errors.
  # A lock of another host is never taken for stale; one of a requeued SLURM job is.
  other = {"host": "elsewhere", "pid": 1, "started": "t", "command": "c"}
  (work / workdir_lib.LOCK_NAME).write_text(json.dumps(other))
  with pytest.raises(workdir_lib.WorkdirInUse, match="process 1 on host elsewhere"):
    workdir_lib.acquire_lock(str(work))
  (work / workdir_lib.LOCK_NAME).write_text(json.dumps(
      {**other, "slurm_job_id": "42", "slurm_restart_count": 0}))
  monkeypatch.setenv("SLURM_JOB_ID", "42")
  monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
  path = workdir_lib.acquire_lock(str(work))
  assert json.loads(pathlib.Path(path).read_text())["slurm_restart_count"] == 1
  workdir_lib.release_lock(path)
  assert os.listdir(work) == []
  # A failed start removes what it created, and only that.
  fresh = tmp_path / "fresh"
  with pytest.raises(ValueError, match="bad"):
    with workdir_lib.claim(str(fresh)):
      (fresh / "config.json").write_text("{}")
      raise ValueError("bad")
  assert not fresh.exists()
  (work / "mine.txt").write_text("kept")
  with pytest.raises(ValueError, match="bad"):
    with workdir_lib.claim(str(work)):
      (work / "config.json").write_text("{}")
      (work / "checkpoints").mkdir()
      raise ValueError("bad")
  assert os.listdir(work) == ["mine.txt"]
  with pytest.raises(ValueError, match="late"):  # After the first step: all is kept.
    with workdir_lib.claim(str(fresh)) as claim:
      (fresh / "metrics.jsonl").write_text("{}\n")
      claim.started = True
      raise ValueError("late")
  assert os.listdir(fresh) == ["metrics.jsonl"]


def test_a_training_run_started_in_a_fresh_directory_and_failing_early_leaves_nothing(
    place, tmp_path):
  """In process, through `train.train_and_evaluate`: a bad config after the directory is made."""
  from vreloc_jax import train  # pylint: disable=g-import-not-at-top
  config = full_config.get_config("quick")
  config.data.dir = str(place / "bench")
  config.eval.select = "nonsense"
  with pytest.raises(ValueError, match="eval.select must be one of"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert os.listdir(tmp_path) == []
  config.eval.select = "best"
  config.data.dir = str(place / "not_hdf5")
  with pytest.raises(ValueError, match="unreadable"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert os.listdir(tmp_path) == []
