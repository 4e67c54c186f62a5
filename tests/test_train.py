"""Training end to end on a tiny benchmark: determinism, resume, devices, checkpoints."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import full as full_config
from configs import weak as weak_config
from tests.conftest import FEATURE_DIM, make_benchmark, subprocess_env  # noqa: F401 (worker)
from vreloc_jax import checkpoints, evaluate, sharding, train

REPO = pathlib.Path(__file__).resolve().parent.parent


def tiny_config(supervision: str, data_dir: str, **train_overrides):
  """The real configs' ``:quick`` variant, shrunk further to the tiny benchmark."""
  module = weak_config if supervision == "weak" else full_config
  config = module.get_config("quick")
  config.data.dir = data_dir
  config.data.query_buckets = (16,)
  config.data.reference_buckets = (32,)
  config.train.batch_size = 8
  config.train.num_steps = 4
  config.train.eval_every = 2
  config.train.log_every = 1
  config.loss.mask_after_steps = 2
  config.eval.batch_size = 8
  config.eval.baselines = ("stat_prior",)
  for k, v in train_overrides.items():
    setattr(config.train, k, v)
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  return make_benchmark(tmp_path_factory.mktemp("train_bench"), seed=3).root


def _params(workdir: str, config) -> dict[str, np.ndarray]:
  runner = train.Runner(config, sharding.make_mesh(), FEATURE_DIM)
  state = checkpoints.restore(checkpoints.manager(workdir, read_only=True), "latest",
                              runner.abstract_state())
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(state["params"])}


def _count_traces(monkeypatch) -> collections.Counter:
  """Counts the traces of `train.train_step` and `train.eval_step`, from outside jit: a
  jitted function runs its Python body only when it traces."""
  traced: collections.Counter = collections.Counter()
  for name in ("train_step", "eval_step"):
    def counted(*args, _step=getattr(train, name), _name=name, **kwargs):
      traced[_name] += 1
      return _step(*args, **kwargs)
    monkeypatch.setattr(train, name, counted)
  return traced


def test_weak_run_resume_and_checkpoint_evaluation(data_dir, tmp_path, monkeypatch):
  config = tiny_config("weak", data_dir)
  config.eval.select = "min_loss_c"  # Tested without annotations; "best" reported beside it.
  config.compile.ahead = True  # The resumed run below compiles as it goes: the same numbers.
  traced = _count_traces(monkeypatch)
  straight = str(tmp_path / "straight")
  results = train.train_and_evaluate(config, straight)
  # One reference bucket: one training and one evaluation program, whatever the lengths;
  # each traced once, by its compilation ahead (a call the plan missed would trace again).
  assert traced == {"train_step": 1, "eval_step": 1}, traced
  monkeypatch.undo()
  config.compile.ahead = False

  # The run's files.
  assert set(json.load(open(os.path.join(straight, "results", "test.json")))) >= {
      "split", "num_pairs", "mAP", "mAP_avg"}
  assert os.path.isfile(os.path.join(straight, "results", "test.predictions.json"))
  best = json.load(open(os.path.join(straight, "results", "test_best.json")))
  assert best["selection"] == "best" and results["selection"] == "min_loss_c"
  records = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
  val = {r["step"]: r for r in records if "val_mAP_avg" in r}
  assert results["checkpoint_step"] == min(val, key=lambda k: (val[k]["val_loss_c"], k))
  top = max(r["val_mAP_avg"] for r in val.values())
  assert val[best["checkpoint_step"]]["val_mAP_avg"] == top
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
  assert [r["step"] for r in records if "val_mAP_avg" in r] == [2, 4]
  # The same curves in TensorBoard, and the fixed val pair's figure at each evaluation.
  scalars = _tensorboard_scalars(os.path.join(straight, "tensorboard"))
  assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
  assert [v for _, v in scalars["train/loss"]] == pytest.approx(
      [r["loss"] for r in records if "loss" in r])
  assert [s for s, _ in scalars["val/mAP_avg"]] == [2, 4] and "val/mAP_0.5" in scalars
  assert {"train/loss_cp", "train/grad_norm", "val/loss_c"} <= set(scalars)
  for step in (2, 4):
    (png,) = os.listdir(os.path.join(straight, "plots", f"step{step}"))
    with open(os.path.join(straight, "plots", f"step{step}", png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # Interrupted after 2 steps, then the same command again: the same trajectory.
  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(tiny_config("weak", data_dir, num_steps=2), resumed)
  with open(os.path.join(resumed, "metrics.jsonl"), "a", encoding="utf-8") as f:
    # As if the interrupted run had logged step 3 and died mid-line before saving it.
    f.write(json.dumps({"step": 3, "loss": 123.0}) + '\n{"step": 4, "lo')
  train.train_and_evaluate(config, resumed)
  resumed_records = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
  assert [r["step"] for r in resumed_records if "loss" in r] == [1, 2, 3, 4]
  a, b = _params(straight, config), _params(resumed, config)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  loss = lambda w: [r["loss"] for r in map(json.loads, open(os.path.join(w, "metrics.jsonl")))
                    if "loss" in r and r["step"] > 2]
  assert loss(straight) == loss(resumed)

  # Another configuration in the same work directory is refused, not mixed in.
  other = tiny_config("weak", data_dir)
  other.loss.alpha = 0.5
  with pytest.raises(ValueError, match=r"different run.*loss\.alpha \(0\.3 -> 0\.5\)"):
    train.train_and_evaluate(other, resumed)

  # Evaluating the selected checkpoint later gives exactly the end-of-training results.
  again = evaluate.score_checkpoint(straight, "min_loss_c", "test", str(tmp_path / "again.json"))
  assert again["mAP"] == results["mAP"] and again["mAP_avg"] == results["mAP_avg"]
  assert again["checkpoint_step"] == results["checkpoint_step"]
  with pytest.raises(ValueError, match="no checkpoint for step 3"):
    evaluate.score_checkpoint(straight, "3", "test")


def test_weak_run_with_the_papers_objective_predicts_query_long_windows(data_dir, tmp_path):
  """The paper's loss (masks from step 2 on) trains, with its query-length rule."""
  config = weak_config.get_config("quick,objective=paper")
  quick = tiny_config("weak", data_dir)
  config.data, config.train, config.loss.mask_after_steps = quick.data, quick.train, 2
  config.eval.batch_size, config.eval.baselines = 8, ("stat_prior",)
  results = train.train_and_evaluate(config, str(tmp_path / "paper"))
  records = [json.loads(line) for line in open(tmp_path / "paper" / "metrics.jsonl")]
  losses_c = [r["loss_c"] for r in records if "loss" in r]
  assert len(losses_c) == 4 and all(0 < x < 1 for x in losses_c), losses_c
  assert results["inference"] == "query_length"
  predictions = json.load(open(tmp_path / "paper" / "results" / "test.predictions.json"))
  for p in predictions["predictions"]:
    query = p["query"]["segment"][1] - p["query"]["segment"][0]
    window = p["reference"]["window"][1] - p["reference"]["window"][0]
    assert p["predicted"][1] - p["predicted"][0] == min(query, window), p


@pytest.mark.parametrize("arg,terms", [("windows", {"loss_cw"}),
                                        ("windows=both", {"loss_cw", "loss_c"})])
def test_weak_windows_run_predicts_candidate_windows(data_dir, tmp_path, arg, terms):
  """The window co-attention objective trains, and its rule predicts candidate windows."""
  config = weak_config.get_config(f"quick,{arg}")
  quick = tiny_config("weak", data_dir)
  config.data, config.train, config.eval.batch_size = quick.data, quick.train, 8
  config.eval.baselines = ("stat_prior",)
  config.eval.window_scales = (0.5, 1.0)
  results = train.train_and_evaluate(config, str(tmp_path / "windows"))
  records = [json.loads(line) for line in open(tmp_path / "windows" / "metrics.jsonl")]
  for r in (r for r in records if "loss" in r):
    assert terms <= set(r) and all(np.isfinite(r[t]) and r[t] > 0 for t in terms), r
  assert results["inference"] == "windows"
  predictions = json.load(open(tmp_path / "windows" / "results" / "test.predictions.json"))
  for p in predictions["predictions"]:
    query = p["query"]["segment"][1] - p["query"]["segment"][0]
    window = p["reference"]["window"][1] - p["reference"]["window"][0]
    length = p["predicted"][1] - p["predicted"][0]
    assert length in {min(max(round(s * query), 1), window) for s in (0.5, 1.0)}, p


def _tensorboard_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
  """The scalars of the TensorBoard event files in ``directory``: tag -> [(step, value)]."""
  from tensorboardX.proto import event_pb2
  scalars: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(directory)):
    data = open(os.path.join(directory, name), "rb").read()
    offset = 0
    while offset < len(data):  # TFRecord framing: length, its CRC, the record, its CRC.
      length = int.from_bytes(data[offset:offset + 8], "little")
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_non_finite_loss_names_the_step(data_dir, tmp_path):
  config = tiny_config("full", data_dir, num_steps=6, learning_rate=1e38)
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step \d"):
    train.train_and_evaluate(config, str(tmp_path / "nan"))


def _worker(data_dir, workdir, supervision, out, env_extra):
  env = subprocess_env(**env_extra)
  return subprocess.Popen([sys.executable, str(REPO / "tests" / "training_worker.py"), data_dir,
                           workdir, supervision, out], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc):
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-4000:]
  return out


def test_four_devices_and_two_processes_match_one_device(data_dir, tmp_path):
  """Weak supervision (full supervision shards the same way: one jitted step, global batch)."""
  supervision = "weak"
  config = tiny_config(supervision, data_dir)
  four = str(tmp_path / "four.npz")
  proc = _worker(data_dir, str(tmp_path / "w4"), supervision, four,
                 {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  # The reference, on this process's one device, while that runs (its programs are in the
  # compile cache when the other tests of this file ran first).
  try:
    train.train_and_evaluate(config, str(tmp_path / "w1"))
  except BaseException:
    proc.kill()
    raise
  ref = _params(str(tmp_path / "w1"), config)
  assert "devices 4" in _finish(proc)
  runs = {"4 devices": four}
  # The multi-process path, for real: 2 processes, gloo collectives.
  two = str(tmp_path / "two.npz")
  port = 20000 + os.getpid() % 20000
  procs = [_worker(data_dir, str(tmp_path / "w2"), supervision, two,
                   {"VRELOC_COORDINATOR": f"127.0.0.1:{port}", "VRELOC_NUM_PROCESSES": "2",
                    "VRELOC_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [_finish(p) for p in procs]
  assert "processes 2" in outs[0]
  runs["2 processes"] = two
  records = [json.loads(line) for line in open(tmp_path / "w1" / "metrics.jsonl")]
  assert all("loss_cp" in r and "loss_w" not in r for r in records if "loss" in r)
  adam_bound = config.train.learning_rate * config.train.num_steps  # |update| <= lr per step
  losses = lambda w: [r["loss"] for r in map(json.loads, open(w / "metrics.jsonl")) if "loss" in r]
  for name, path in runs.items():
    other = np.load(path)
    assert sorted(ref) == sorted(other.files)
    # Parameters agree up to float reduction order. Adam normalizes each gradient, so where a
    # gradient is exactly zero in exact arithmetic (e.g. a bias that a softmax is invariant to)
    # rounding noise alone moves the parameter, by at most lr per step, differently per run.
    a = np.concatenate([ref[k].ravel() for k in sorted(ref)])
    b = np.concatenate([other[k].ravel() for k in sorted(ref)])
    close = np.isclose(a, b, rtol=1e-4, atol=1e-5)
    assert close.mean() > 0.99, f"{name}: only {close.mean():.2%} of parameters agree"
    assert np.abs(a - b).max() <= adam_bound, name
  # A checkpoint saved on 4 devices restores on this process's single device, unchanged.
  restored = _params(str(tmp_path / "w4"), config)
  saved = np.load(four)
  for k in saved.files:
    np.testing.assert_array_equal(restored[k], saved[k], err_msg=k)
  workdirs = {"4 devices": tmp_path / "w4", "2 processes": tmp_path / "w2"}
  for name in runs:
    np.testing.assert_allclose(losses(workdirs[name]), losses(tmp_path / "w1"), rtol=1e-4,
                               err_msg=name)


def test_two_hosts_each_build_the_synthetic_default_and_check_they_agree(tmp_path):
  """``main`` on two processes joined by VRELOC_* (launch/local_multiprocess.sh's variables),
  each with its own fresh cache (hosts without a shared file system), on the synthetic default."""
  port = 20000 + (os.getpid() + 7) % 20000
  caches = [tmp_path / f"host{i}" for i in range(2)]

  def start(workdir):
    return [subprocess.Popen(
        [sys.executable, "-m", "vreloc_jax.main", "--config=configs/weak.py:quick",
         f"--workdir={workdir}", "--config.data.synthetic_scale=0.02",
         "--config.train.num_steps=2", "--config.train.eval_every=2",
         "--config.data.reference_buckets=(300,)"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=subprocess_env(VRELOC_CACHE=str(caches[i]), VRELOC_COORDINATOR=f"127.0.0.1:{port}",
                           VRELOC_NUM_PROCESSES="2", VRELOC_PROCESS_ID=str(i)))
        for i in range(2)]

  outs = [_finish(p) for p in start(tmp_path / "w")]
  assert "2 processes" in outs[0]
  built = [next(c.iterdir()) for c in caches]  # Each host built its own copy.
  assert built[0].name == built[1].name
  assert (tmp_path / "w" / "results" / "test.json").is_file()
  # A host whose copy differs (another version) stops the run with a message, on every host.
  with open(built[1] / "val.json") as f:
    val = json.load(f)
  with open(built[1] / "val.json", "w") as f:
    json.dump(val[:-1], f)
  port += 1
  procs = start(tmp_path / "w2")
  for proc in procs:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:]
    assert "differs between processes 0 and 1" in out, out[-3000:]
