"""Exporting a trained model (vreloc_jax.export) and loading it with JAX and numpy only."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

from configs import full as full_config
from tests.conftest import FEATURE_DIM, make_benchmark, subprocess_env
from vreloc_jax import buckets, checkpoints, evaluation, export, exported, sharding, train
from vreloc_jax import workdir as workdir_lib
from vreloc_jax.data import batching, benchmark
from vreloc_jax.data.pairs import example_from_pair

REPO = pathlib.Path(__file__).resolve().parent.parent
QUERY_BUCKETS = (16,)
REFERENCE_BUCKETS = (16, 32)
MAX_LENGTH = 20  # The full rule's longest segment: between the two reference buckets.


def tiny_config(data_dir: str):
  """The fully supervised ``:quick`` config: one step on the tiny benchmark, 2 reference buckets."""
  config = full_config.get_config("quick")
  config.data.dir = data_dir
  config.data.query_buckets = QUERY_BUCKETS
  config.data.reference_buckets = REFERENCE_BUCKETS
  config.eval.max_length = MAX_LENGTH
  config.train.batch_size = 8
  config.train.num_steps = 1
  config.train.eval_every = 1
  config.train.log_every = 1
  config.train.checkpoint_every = 1
  config.loss.mask_after_steps = 1
  config.eval.batch_size = 8
  config.eval.baselines = ()
  return config


_TRAIN_SCRIPT = ("import sys; from tests.test_export import tiny_config; from vreloc_jax import "
                 "train; train.train_and_evaluate(tiny_config(sys.argv[1]), sys.argv[2])")


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = subprocess_env()
  return subprocess.run([sys.executable, "-m", "vreloc_jax.export", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> types.SimpleNamespace:
  """A one-step run, exported by the command line (default platforms: cpu, cuda, tpu).

  The run trains in a process of its own (its checkpoint is all that is used).
  """
  root = tmp_path_factory.mktemp("export")
  data_dir = make_benchmark(root / "bench", seed=5).root
  workdir = str(root / "work")
  env = subprocess_env()
  done = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, data_dir, workdir], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-4000:]
  out = str(root / "exports" / "model")
  done = _cli(f"--workdir={workdir}", "--checkpoint=best", f"--output={out}")
  assert done.returncode == 0, done.stderr[-4000:]
  assert "exported step 1" in done.stdout
  return types.SimpleNamespace(data_dir=data_dir, workdir=workdir, out=out, root=root)


def test_directory_format(run):
  names = sorted(os.listdir(run.out))
  assert names == ["model.json", "params.npz", "program_0.jaxexport"]
  assert os.listdir(os.path.dirname(run.out)) == ["model"]  # No temporary directory left.
  meta = json.load(open(os.path.join(run.out, "model.json")))
  assert meta["format"] == exported.FORMAT and meta["format_version"] == exported.FORMAT_VERSION
  assert meta["feature_dim"] == FEATURE_DIM
  assert meta["query_buckets"] == list(QUERY_BUCKETS)
  assert meta["reference_buckets"] == list(REFERENCE_BUCKETS)
  assert meta["inference"] == "full" and meta["inference_options"]["max_length"] == MAX_LENGTH
  assert meta["checkpoint"] == {"step": 1, "selection": "best"}
  assert meta["config"] == json.load(open(os.path.join(run.workdir, "config.json")))
  assert meta["platforms"] == ["cpu", "cuda", "tpu"] and meta["jax_version"] == jax.__version__
  # One program for every length, also for the full rule's search (max_length inside).
  assert [(p["query_length"], p["reference_length"]) for p in meta["programs"]] == [
      ([1, None], [1, None])]
  assert [v["program"] for v in meta["verified"]] == ["program_0.jaxexport"]
  prov = meta["provenance"]
  assert prov["step"] == 1 and prov["data_dir"] == os.path.abspath(run.data_dir)
  for name in ("train.json", "val.json", "test.json", "length.json"):
    digest = hashlib.sha256(open(os.path.join(run.data_dir, name), "rb").read()).hexdigest()
    assert prov["split_files_sha256"][name] == digest
  assert {"val_step1.json", "test.json"} <= set(prov["results"])
  assert "val_step1.json" in prov["results_of_this_checkpoint"]
  with np.load(os.path.join(run.out, "params.npz")) as npz:
    assert npz["reference_mapping/conv/kernel"].shape[1] == FEATURE_DIM
    assert sorted(npz.files) == sorted(meta["params"]["arrays"])


# Runs in a fresh interpreter: the loader alone (then the pairs helper with data code only).
_LOADER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from vreloc_jax import exported
    out, inputs, data_dir, result = sys.argv[1:]
    model = exported.load(out)
    d = dict(np.load(inputs))
    res = {}
    for name in ("long", "short"):
      q, ql, r, rl = (d[f"{name}_{k}"] for k in ("query", "query_length", "reference",
                                                 "reference_length"))
      padded = model.predict(q, ql, r, rl)  # As the evaluation padded them.
      cut = model.predict(q[:, :ql.max()], ql, r[:, :rl.max()], rl)  # Not padded.
      garbage = np.full((q.shape[0], 40, q.shape[2]), np.nan, np.float32)
      garbage[:, :q.shape[1]] = np.where(np.arange(q.shape[1])[None, :, None] < ql[:, None, None],
                                         q, np.inf)
      noisy = model.predict(garbage, ql, r, rl)  # Over-padded with non-finite values.
      direct = model.run(q, d[f"{name}_query_mask"], r, d[f"{name}_reference_mask"])
      for tag, o in (("padded", padded), ("cut", cut), ("noisy", noisy), ("run", direct)):
        for k, v in o.items():
          res[f"{name}_{tag}_{k}"] = v
    model_code = ("flax", "orbax", "vreloc_jax.relocalizer", "vreloc_jax.comparators",
                  "vreloc_jax.train", "vreloc_jax.export")
    loader_only = [m for m in model_code if m in sys.modules]
    from vreloc_jax import evaluation
    from vreloc_jax.data import features, pairs, splits
    split_file = splits.split_path(data_dir, "test")
    entries = splits.load_split(split_file)
    test_pairs, _ = pairs.load_eval_pairs(split_file, entries, "test")
    store = features.open_features(features.find_features(data_dir))
    store.preload(entries)
    predictions = evaluation.predict_export(model, test_pairs, store)
    res["pairs_segments"], res["pairs_loss_c"] = predictions.segments, predictions.loss_c
    np.savez(result, **res)
    evaluation.score_export(out, "test", output=result[:-4] + ".json", model=model)
    print(json.dumps({"after_loader": loader_only,
                      "after_predict_pairs": [m for m in model_code if m in sys.modules]}))
""")


def _batch(pairs, store, indices):
  """The evaluation's padded batch of some pairs (smallest buckets that hold them)."""
  examples = [example_from_pair(pairs[i]) for i in indices]
  len_query = buckets.bucket_for(max(ex.query_length for ex in examples), QUERY_BUCKETS)
  len_ref = buckets.bucket_for(max(ex.reference_length for ex in examples), REFERENCE_BUCKETS)
  return batching.make_batch(examples, store, len_query, len_ref)


def test_loader_alone_matches_eval_step(run, tmp_path):
  config = workdir_lib.load_config(run.workdir)
  config.compile.cpu_optimization_level = None  # The process's own level, as the loader's
  runner = train.Runner(config, sharding.make_mesh(), FEATURE_DIM)
  manager = checkpoints.manager(run.workdir, read_only=True)
  params = checkpoints.restore(manager, "best", runner.abstract_state())["params"]
  manager.close()
  bench = benchmark.load_benchmark(config, split_names=("test",))
  pairs = bench.pairs["test"]
  lengths = np.array([example_from_pair(p).reference_length for p in pairs])
  # Batches of eval.batch_size, the shapes the export checked (their programs are compiled).
  short = np.flatnonzero(lengths <= REFERENCE_BUCKETS[0])  # Bucket 16, below max_length.
  assert 0 < len(short) < len(pairs) and lengths.max() > REFERENCE_BUCKETS[0]
  short = np.resize(short, 8)
  mixed = np.union1d(np.arange(7), [np.argmax(lengths)])  # Bucket 32, above max_length.
  groups = {"long": mixed, "short": short}
  inputs, expected = {}, {}
  apply = jax.jit(lambda p, b: runner.family.apply(p, b)["probs"])
  for name, indices in groups.items():
    batch = _batch(pairs, bench.store, indices)
    inputs.update({f"{name}_{k}": v for k, v in batch.items()})
    out = runner.eval_step(params, sharding.to_global(batch, runner.mesh))
    expected[name] = {"segments": np.asarray(out["segments"]),
                      "loss_c": np.asarray(out["loss_c"]),
                      "probs": np.asarray(out["probs"] if "probs" in out else apply(params, batch))}
  assert expected["long"]["probs"].shape[1] == 32 and expected["short"]["probs"].shape[1] == 16
  want = evaluation.predict(runner.batch_function(params), pairs, bench.store, 8, QUERY_BUCKETS,
                            REFERENCE_BUCKETS)
  want_segments, want_loss_c = want.segments, want.loss_c

  np.savez(tmp_path / "inputs.npz", **inputs)
  env = subprocess_env()
  done = subprocess.run([sys.executable, "-c", _LOADER_SCRIPT, run.out,
                         str(tmp_path / "inputs.npz"), run.data_dir,
                         str(tmp_path / "result.npz")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-4000:]
  imported = json.loads(done.stdout.strip().splitlines()[-1])
  assert imported == {"after_loader": [], "after_predict_pairs": []}, imported
  got = np.load(tmp_path / "result.npz")
  for name, want in expected.items():
    for tag in ("padded", "cut", "noisy", "run"):
      np.testing.assert_array_equal(got[f"{name}_{tag}_segments"], want["segments"])
      np.testing.assert_array_equal(got[f"{name}_{tag}_loss_c"], want["loss_c"])
      probs = got[f"{name}_{tag}_probs"]  # Aligned with the reference array it was given.
      np.testing.assert_array_equal(probs, want["probs"][:, :probs.shape[1]])
    assert got[f"{name}_cut_probs"].shape[1] == inputs[f"{name}_reference_length"].max()
  np.testing.assert_array_equal(got["pairs_segments"], want_segments)
  np.testing.assert_array_equal(got["pairs_loss_c"], want_loss_c)
  # What `python -m vreloc_jax.evaluate --model=DIR` would write.
  results = json.load(open(tmp_path / "result.json"))
  rows = json.load(open(tmp_path / "result.predictions.json"))["predictions"]
  np.testing.assert_array_equal([r["predicted"] for r in rows], want_segments)
  assert results["num_pairs"] == len(pairs) and results["loss_c"] == float(want_loss_c.mean())
  assert results["checkpoint_step"] == 1 and results["split_matches_export"] is True


def test_cli_refuses_a_non_empty_output(run, tmp_path):
  before = open(os.path.join(run.out, "model.json")).read()
  done = _cli(f"--workdir={run.workdir}", f"--output={run.out}")
  assert done.returncode != 0 and "is not empty" in done.stderr, done.stderr[-2000:]
  assert open(os.path.join(run.out, "model.json")).read() == before
  other = tmp_path / "notes"
  other.mkdir()
  (other / "keep.txt").write_text("mine")
  with pytest.raises(ValueError, match="is not empty; choose another directory or pass "
                     "--overwrite"):
    export.export_model(run.workdir, "best", str(other), platforms=("cpu",))
  assert os.listdir(other) == ["keep.txt"]
  with pytest.raises(ValueError, match="platforms must be among"):
    export.export_model(run.workdir, "best", str(tmp_path / "x"), platforms=("gpu0",))
  with pytest.raises(ValueError, match="no checkpoint for step 7"):
    export.export_model(run.workdir, "7", str(tmp_path / "x"))
  assert sorted(os.listdir(tmp_path)) == ["notes"]


def test_output_is_replaced_whole_or_not_at_all(tmp_path):
  out = str(tmp_path / "model")

  def writer(content):
    def write(tmp):
      pathlib.Path(tmp, "model.json").write_text(content)
    return write

  def fail(tmp):
    pathlib.Path(tmp, "model.json").write_text("half")
    raise RuntimeError("killed while writing")

  os.mkdir(out)  # An empty directory is taken.
  export._write_atomically(out, False, writer("one"))
  assert pathlib.Path(out, "model.json").read_text() == "one"
  with pytest.raises(ValueError, match="is not empty"):
    export._write_atomically(out, False, writer("two"))
  with pytest.raises(RuntimeError, match="killed"):
    export._write_atomically(out, True, fail)
  assert pathlib.Path(out, "model.json").read_text() == "one"
  export._write_atomically(out, True, writer("three"))
  assert os.listdir(out) == ["model.json"]
  assert pathlib.Path(out, "model.json").read_text() == "three"
  assert os.listdir(tmp_path) == ["model"]  # No temporary directory left.


def _broken(run, tmp_path, name: str) -> str:
  path = str(tmp_path / name)
  shutil.copytree(run.out, path)
  return path


def test_loader_errors(run, tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    exported.load(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no model.json"):
    exported.load(tmp_path / "empty")

  bad = _broken(run, tmp_path, "json")
  open(os.path.join(bad, "model.json"), "w").write('{"format": ')
  with pytest.raises(ValueError, match="model.json is corrupt"):
    exported.load(bad)
  for field, value, message in (("format_version", 2, "format version 2; this loader reads "
                                                      "version 1"),
                                ("format", "other", "not a vreloc_jax exported model")):
    bad = _broken(run, tmp_path, field)
    meta = json.load(open(os.path.join(bad, "model.json")))
    meta[field] = value
    json.dump(meta, open(os.path.join(bad, "model.json"), "w"))
    with pytest.raises(ValueError, match=message):
      exported.load(bad)
  bad = _broken(run, tmp_path, "missing")
  os.remove(os.path.join(bad, "program_0.jaxexport"))
  with pytest.raises(ValueError, match="program_0.jaxexport is missing"):
    exported.load(bad)
  bad = _broken(run, tmp_path, "truncated")
  with open(os.path.join(bad, "params.npz"), "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match=r"params.npz is corrupt: 100 bytes"):
    exported.load(bad)
  bad = _broken(run, tmp_path, "flipped")
  with open(os.path.join(bad, "program_0.jaxexport"), "r+b") as f:
    f.seek(50)
    byte = f.read(1)
    f.seek(50)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(ValueError, match="program_0.jaxexport is corrupt: its SHA-256"):
    exported.load(bad)

  model = exported.load(run.out)
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 16, FEATURE_DIM)).astype(np.float32)
  r = rng.normal(size=(2, 40, FEATURE_DIM)).astype(np.float32)
  ql, rl = np.array([3, 16]), np.array([10, 32])
  cases = [
      ((q[..., :5], ql, r, rl), "query has feature dimension 5, but the model was trained on 8"),
      ((q, ql, np.zeros((2, 40, 9), np.float32), rl), "reference has feature dimension 9"),
      ((np.concatenate([q, q], 1), np.array([3, 17]), r, rl),
       "a query of 17 steps is longer than the largest query bucket 16"),
      ((q, ql, r, np.array([33, 5])),
       "a reference of 33 steps is longer than the largest reference bucket 32"),
      ((q, np.array([0, 4]), r, rl), r"query_lengths\[0\] = 0 is below 1"),
      ((q[:, :10], np.array([3, 12]), r, rl),
       r"query_lengths\[1\] = 12 is longer than the given array \(10 steps\)"),
      ((q, ql, r, np.array([5, 41])), r"reference_lengths\[1\] = 41 is longer than the given"),
      ((q, ql, r[:1], rl[:1]), "batch sizes differ"),
      ((q, ql.astype(float), r, rl), "query_lengths must be integers"),
      ((np.where(np.arange(16)[None, :, None] == 2, np.nan, q), ql, r, rl),
       r"query\[0\] holds non-finite values at valid steps"),
  ]
  for args, message in cases:
    with pytest.raises(ValueError, match=message):
      model.predict(*args)
  mask = np.ones((2, 16), bool)
  mask[0, 3] = False
  with pytest.raises(ValueError, match="row 0 is not a prefix mask"):
    model.run(q, mask, r[:, :32], np.ones((2, 32), bool))


# --- vreloc_jax.localize: an exported model on pairs of one's own choosing ---------------------


def _localize_cli(*args: str) -> subprocess.CompletedProcess:
  env = subprocess_env()
  return subprocess.run([sys.executable, "-m", "vreloc_jax.localize", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_localize_slides_over_a_long_reference_and_reports_the_best_window(run):
  from vreloc_jax import localize
  from vreloc_jax.data import features as features_lib
  model = exported.load(run.out)
  store = features_lib.open_features(os.path.join(run.data_dir, "feat"))
  raw = json.load(open(os.path.join(run.data_dir, "test.json")))
  query_entry, reference_entry = raw[0], raw[1]
  total = store.source.num_features(reference_entry["id"])
  assert total > max(model.reference_buckets)  # Longer than the largest bucket: slid over.
  s, e = query_entry["groundtruth"]
  query = localize.Span.parse(f"v_{query_entry['id']}:{s}-{e}", "query")
  result = localize.localize(model, store, query,
                             localize.Span.parse(reference_entry["id"], "reference"))
  windows = localize.windows_of(total, max(model.reference_buckets))
  assert result.windows == len(windows) > 1 and result.window in windows
  # The reported window's segment is the model's on that window alone, moved to video steps.
  a, b = result.window
  alone = model.predict(store.window(query_entry["id"], s, e)[None], [e - s],
                        store.window(reference_entry["id"], a, b)[None], [b - a])
  assert tuple(int(v) + a for v in alone["segments"][0]) == result.segment
  inside = alone["probs"][0, :, 2]
  assert result.score == pytest.approx(float(inside[slice(*np.subtract(result.segment, a))].mean()))
  record = result.record(fps=25.0)
  assert record["frames"] == [16 * v for v in result.segment]
  assert record["seconds"] == [round(16 * v / 25.0, 3) for v in result.segment]
  # Every window scored no higher than the reported one.
  for a2, b2 in windows:
    other = model.predict(store.window(query_entry["id"], s, e)[None], [e - s],
                          store.window(reference_entry["id"], a2, b2)[None], [b2 - a2])
    s2, e2 = other["segments"][0]
    if e2 > s2:
      assert other["probs"][0, s2:e2, 2].mean() <= result.score + 1e-6
  assert localize.windows_of(10, 32) == [(0, 10)]
  assert localize.windows_of(70, 32) == [(0, 32), (16, 48), (32, 64), (38, 70)]


def test_localize_command_line(run, tmp_path):
  raw = json.load(open(os.path.join(run.data_dir, "test.json")))
  q, r = raw[0], raw[1]
  query = f"{q['id']}:{q['groundtruth'][0]}-{q['groundtruth'][1]}"
  plot = tmp_path / "pair.png"
  done = _localize_cli(f"--model={run.out}", f"--query={query}",
                       f"--reference=v_{r['id']}:{r['location'][0]}-{r['location'][1]}",
                       f"--groundtruth={r['groundtruth'][0]},{r['groundtruth'][1]}",
                       "--duration=60", f"--plot={plot}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "feature steps, frames [" in done.stdout and "seconds [" in done.stdout
  assert plot.read_bytes()[:4] == b"\x89PNG"
  pairs = tmp_path / "pairs.json"
  pairs.write_text(json.dumps([{"query": query, "reference": r["id"], "fps": 30},
                               {"query": query, "reference": f"{r['id']}:0-5"}]))
  out = tmp_path / "out.jsonl"
  done = _localize_cli(f"--model={run.out}", f"--pairs={pairs}", f"--output={out}")
  assert done.returncode == 0, done.stderr[-3000:]
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(lines) == 2 and "seconds" in lines[0] and "seconds" not in lines[1]
  assert 0 <= lines[1]["segment"][0] <= lines[1]["segment"][1] <= 5
  # A bad pair: one line naming the pair and what is wrong; nothing written.
  pairs.write_text(json.dumps([{"query": query, "reference": r["id"]},
                               {"query": "nope:0-3", "reference": r["id"]}]))
  bad = tmp_path / "bad.jsonl"
  done = _localize_cli(f"--model={run.out}", f"--pairs={pairs}", f"--output={bad}")
  assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert re.search(r"^vreloc_jax.localize: error: .*pairs.json: pair 1: query: .*v_nope is "
                   "missing", last), last
  assert not bad.exists()


@pytest.mark.parametrize("query, reference, message", [
    ("nope:0-3", "{r}", r"query: .*video v_nope is missing"),
    ("{q}:9-4", "{r}", r"--query '.*:9-4': the range \[9, 4\) is empty or inverted"),
    ("{q}:0-3", "{r}:7-2", r"--reference '.*:7-2': the range \[7, 2\) is empty or inverted"),
])
def test_localize_command_line_bad_inputs_end_in_one_line(run, tmp_path, query, reference,
                                                          message):
  from tests.test_bad_inputs import assert_one_line_error
  raw = json.load(open(os.path.join(run.data_dir, "test.json")))
  plot = tmp_path / "pair.png"
  done = _localize_cli(f"--model={run.out}", f"--query={query.format(q=raw[0]['id'])}",
                       f"--reference={reference.format(r=raw[1]['id'])}", f"--plot={plot}")
  assert_one_line_error(done, "localize", message)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("query, message", [
    ("{q}:0-999", "ends past the video's"),
    ("{q}:0-20", "the query has 20 feature steps; this model takes at most 16 .*choose a "
     "shorter query range"),
    ("{q}:5-5", r"\[5, 5\) is empty or inverted"),
    ("{q}:9-4", r"\[9, 4\) is empty or inverted"),
    ("", "is not VIDEO or VIDEO:START-END"),
])
def test_localize_bad_inputs_are_named(run, query, message):
  from vreloc_jax import localize
  from vreloc_jax.data import features as features_lib
  raw = json.load(open(os.path.join(run.data_dir, "test.json")))
  store = features_lib.open_features(os.path.join(run.data_dir, "feat"))
  with pytest.raises(ValueError, match=message):
    localize.localize(exported.load(run.out), store,
                      localize.Span.parse(query.format(q=raw[0]["id"]), "query"),
                      localize.Span.parse(raw[1]["id"], "reference"))
