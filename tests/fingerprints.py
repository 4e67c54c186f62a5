"""Fingerprints of what the code computes, to show that a change of structure is numerically inert.

  python tests/fingerprints.py --write=FILE [--code=DIR] [--recorded_by=WHAT]  # record
  python tests/fingerprints.py --check=FILE                # compare; exit status 1 if any differs

Two kinds of record, both compared exactly by `tests/test_inertness.py` (and, for the
comparators, tests/test_candidates.py) with `RECORD`, tests/fingerprints.json: recorded by
the code of commit e23e37d, so that issue 20's restructuring is shown to change no
number. A change that means to change numbers records them again (``--write``) and says
so in its commit:

* ``configs``: the configuration every command-line form builds (`CONFIG_FORMS`): the
  SHA-256 of its fields in order, with the type of every leaf; a form that raised
  records its error.
* ``runs``: for the weak, full and each comparator's quick configuration on the tiny
  test benchmark (`RUNS`), a few training steps through ``train.train_and_evaluate``,
  then: the SHA-256 of the parameters of the last checkpoint (and of every checkpoint's
  parameters and optimizer state), of every results file (val, test, baselines and
  their predictions), of the metrics records without their clock fields, of the
  exported model's outputs on a fixed batch (segments, score, probs, loss_c,
  attention) and of the export's evaluation. Paths under the run's temporary directory
  are written ``<tmp>``; the results key ``"config"`` of older versions is read as
  ``"supervision"`` (its name since issue 20).

Bit-for-bit results hold for one machine and one set of library versions (XLA:CPU
compiles for the host's instruction set): the record says which, and the test skips
elsewhere. Everything runs on CPU with the test session's XLA flags (`tests.conftest`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pathlib
import platform
import sys
import tempfile
from typing import Any

# The test session's compilation settings (tests/conftest.py), before JAX starts.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

# Every form of config argument the README, WORKSPACE.md, the configs' docstrings, the
# launchers and the tests use, and a few more combinations (order, repeats).
_PAPER_FORMS = [
    None, "quick", "recordings", "recordings=shoulder_exercises", "recordings=japanese_vowels",
    "inference=weak", "inference=full", "inference=query_length", "inference=windows",
    "query_length", "base", "multiscale", "selfatt", "full", "alpha=0.5", "alpha=0.7", "alpha=1",
    "query_blind", "frame_similarity", "frame_similarity_residual", "windows", "windows=both",
    "recordings,inference=weak", "recordings,frame_similarity_residual",
    "recordings,frame_similarity", "recordings,base", "recordings,query_blind",
    "inference=weak,alpha=0.5", "inference=weak,base", "base,alpha=0.5,quick",
    "quick,base,alpha=0.5", "quick,recordings", "recordings,quick", "windows,recordings",
    "recordings,windows=both", "quick,windows", "quick,windows=both", "quick,query_blind",
    "quick,recordings=shoulder_exercises", "windows,inference=weak",
    "pseudo", "objective=pseudo", "objective=paper", "objective=paper,inference=weak",
    "recordings,objective=paper", "quick,pseudo,query_length", "pseudo,windows",
    "criterion=transitions", "recordings,criterion=transitions", "criterion=raw",
    "centred", "recordings,centred", "shared_offset=0", "recordings,shared_offset=0",
    "criterion=raw,shared_offset=0", "objective=paper,shared_offset=0",
    "objective=paper,inference=weak,shared_offset=0", "windows,shared_offset=0",
]
_COMPARATOR_FORMS = [None, "quick", "recordings", "recordings=shoulder_exercises",
                     "quick,recordings", "recordings,quick"]
CONFIG_FORMS = ([("weak", f) for f in _PAPER_FORMS] + [("full", f) for f in _PAPER_FORMS]
                + [(c, f) for c in ("cgbm", "sst", "video_level") for f in _COMPARATOR_FORMS])

# The record the tests compare with (its "recorded_by" says which code wrote it).
RECORD = pathlib.Path(__file__).with_name("fingerprints.json")
# (name, config file, argument) of the runs.
RUNS = [("weak", "weak", "quick"), ("weak_windows_both", "weak", "quick,windows=both"),
        ("full", "full", "quick"), ("cgbm", "cgbm", "quick"), ("sst", "sst", "quick"),
        ("video_level", "video_level", "quick")]


def _typed(value: Any) -> Any:
  """A ConfigDict's content as JSON with each leaf's type, in field order."""
  if hasattr(value, "items") and not isinstance(value, (str, bytes)):
    return [[k, _typed(v)] for k, v in value.items()]
  if isinstance(value, (list, tuple)):
    return [type(value).__name__, [_typed(v) for v in value]]
  return [type(value).__name__, value]


def config_fingerprints() -> dict[str, Any]:
  """form -> the SHA-256 of the ConfigDict it builds (`_typed`), or ``{"error": message}``."""
  out = {}
  for name, arg in CONFIG_FORMS:
    module = importlib.import_module(f"configs.{name}")
    key = f"configs/{name}.py" + (f":{arg}" if arg is not None else "")
    try:
      config = module.get_config(arg)
    except Exception as e:  # pylint: disable=broad-except
      out[key] = {"error": f"{type(e).__name__}: {e}"}
      continue
    out[key] = _sha(json.dumps(_typed(config)).encode())
  return out


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _tree_sha(tree: Any) -> str:
  """SHA-256 of a pytree's leaves (path, dtype, shape, bytes), in path order."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  digest = hashlib.sha256()
  leaves = sorted((jax.tree_util.keystr(p), np.asarray(v))
                  for p, v in jax.tree_util.tree_leaves_with_path(tree))
  for path, leaf in leaves:
    digest.update(f"{path} {leaf.dtype} {leaf.shape}\n".encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def _normalized(obj: Any, tmp: str) -> Any:
  """``obj`` with paths under ``tmp`` written ``<tmp>`` and ``config`` read as ``supervision``."""
  if isinstance(obj, dict):
    obj = dict(obj)
    if "config" in obj and "supervision" not in obj and isinstance(obj["config"], str):
      obj["supervision"] = obj.pop("config")
    return {k: _normalized(v, tmp) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_normalized(v, tmp) for v in obj]
  if isinstance(obj, str):
    return obj.replace(os.path.realpath(tmp), "<tmp>").replace(tmp, "<tmp>")
  return obj


def _json_sha(obj: Any) -> str:
  return _sha(json.dumps(obj, sort_keys=True).encode())


def _checkpoint_trees(workdir: str) -> dict[int, Any]:
  """step -> the saved state (numpy leaves), read without the model code."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  root = os.path.join(workdir, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(root) if n.isdigit())
  checkpointer = ocp.StandardCheckpointer()
  return {s: checkpointer.restore(os.path.join(root, str(s), "default")) for s in steps}


def configure(config_file: str, arg: str, tmp: str) -> Any:
  """The configuration of a run (`RUNS`) on the tiny test benchmark, written under ``tmp``."""
  from tests.conftest import make_benchmark  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"configs.{config_file}").get_config(arg)
  config.data.dir = make_benchmark(os.path.join(tmp, "bench"), seed=5).root
  config.data.query_buckets = (16,)
  config.data.reference_buckets = (32,)
  config.train.batch_size = config.eval.batch_size = 8
  config.train.num_steps, config.train.eval_every, config.train.log_every = 3, 3, 1
  config.train.checkpoint_every = 2
  config.loss.mask_after_steps = 1  # The masked co-attention loss from the second step on.
  config.eval.baselines = ("random", "stat_prior", "frame_level")
  return config


def fingerprint(workdir: str, export_dir: str, tmp: str) -> dict[str, Any]:
  """The fingerprints of a trained work directory and of its export (module docstring)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from vreloc_jax import exported  # pylint: disable=import-outside-toplevel
  try:  # Its name since issue 20; before: export.evaluate_export.
    from vreloc_jax.evaluation import score_export  # pylint: disable=import-outside-toplevel
  except ImportError:
    from vreloc_jax.export import evaluate_export as score_export  # pylint: disable=all

  record: dict[str, Any] = {}
  trees = _checkpoint_trees(workdir)
  last = max(trees)
  record["params"] = _tree_sha(trees[last]["params"])
  record["checkpoints"] = {str(s): _tree_sha(t) for s, t in trees.items()}
  results_dir = os.path.join(workdir, "results")
  record["results"] = {}
  for name in sorted(os.listdir(results_dir)):
    with open(os.path.join(results_dir, name), encoding="utf-8") as f:
      record["results"][name] = _json_sha(_normalized(json.load(f), tmp))
  with open(os.path.join(results_dir, "test.json"), encoding="utf-8") as f:
    test = json.load(f)
  record["test_mAP_avg"] = test["mAP_avg"]
  record["test_loss_c"] = test["loss_c"]
  metrics = []
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      metrics.append({k: v for k, v in row.items() if k not in ("time", "steps_per_second")})
  record["metrics"] = _json_sha(metrics)
  record["final_loss"] = [m["loss"] for m in metrics if "loss" in m][-1]
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    record["config_json"] = _json_sha(_normalized(json.load(f), tmp))

  model = exported.load(export_dir)
  rng = np.random.default_rng(0)
  predicted = model.predict(rng.normal(size=(3, 7, model.feature_dim)).astype(np.float32),
                            [7, 2, 5],
                            rng.normal(size=(3, 30, model.feature_dim)).astype(np.float32),
                            [30, 11, 19])
  record["export_outputs"] = {k: _tree_sha(v) for k, v in sorted(predicted.items())}
  record["export_segments"] = np.asarray(predicted["segments"]).tolist()
  evaluation = score_export(export_dir, "test")
  record["export_evaluation"] = _json_sha(_normalized(evaluation, tmp))
  with open(os.path.join(export_dir, "model.json"), encoding="utf-8") as f:
    meta = json.load(f)
  record["export_meta"] = _json_sha(_normalized(
      {k: meta[k] for k in ("feature_dim", "query_buckets", "reference_buckets", "inference",
                            "per_step_probabilities", "inference_options", "checkpoint",
                            "config", "params", "signature")}, tmp))
  return record


def run_fingerprint(config_file: str, arg: str, tmp: str) -> dict[str, Any]:
  """Trains a run (`RUNS`) a few steps on the tiny benchmark, exports it, fingerprints both."""
  from vreloc_jax import export  # pylint: disable=import-outside-toplevel
  from vreloc_jax import train  # pylint: disable=import-outside-toplevel
  workdir, export_dir = os.path.join(tmp, "w"), os.path.join(tmp, "export")
  train.train_and_evaluate(configure(config_file, arg, tmp), workdir)
  export.export_model(workdir, "best", export_dir, platforms=("cpu",))
  return fingerprint(workdir, export_dir, tmp)


def environment() -> dict[str, str]:
  """What bit-for-bit results depend on: library versions and the machine."""
  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  cpu = ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                 "")
  except OSError:
    pass
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
          "machine": platform.machine(), "cpu": cpu}


def fingerprints(runs: list[str] | None = None) -> dict[str, Any]:
  """Every record (`configs` and the `runs` named, all by default)."""
  record = {"recorded_by": "", "environment": environment(), "configs": config_fingerprints(),
            "runs": {}}
  for name, config_file, arg in RUNS:
    if runs is None or name in runs:
      with tempfile.TemporaryDirectory(prefix=f"fingerprint-{name}-") as tmp:
        record["runs"][name] = run_fingerprint(config_file, arg, tmp)
  return record


def differences(expected: dict[str, Any], got: dict[str, Any], prefix: str = "") -> list[str]:
  """The paths at which two records differ (keys missing on either side included)."""
  if isinstance(expected, dict) and isinstance(got, dict):
    out = []
    for key in sorted(expected.keys() | got.keys()):
      if key not in got or key not in expected:
        out.append(f"{prefix}{key}: {'missing' if key not in got else 'unexpected'}")
      else:
        out += differences(expected[key], got[key], f"{prefix}{key}.")
    return out
  return [] if expected == got else [f"{prefix.rstrip('.')}: {expected!r} != {got!r}"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--write", help="Write the fingerprints to this JSON file.")
  parser.add_argument("--check", help="Compare with the fingerprints of this JSON file.")
  parser.add_argument("--code", help="The checkout whose vreloc_jax and configs to run.")
  parser.add_argument("--runs", help="Comma-separated names of the runs (default: all).")
  parser.add_argument("--recorded_by", default="", help="With --write: which code, and why.")
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if args.code:  # Before this checkout: its vreloc_jax and configs are the ones run.
    sys.path.insert(0, os.path.abspath(args.code))
  record = fingerprints(args.runs.split(",") if args.runs else None)
  record["recorded_by"] = args.recorded_by
  if args.write:
    with open(args.write, "w", encoding="utf-8") as f:
      json.dump(record, f, indent=1)
      f.write("\n")
  if args.check:
    with open(args.check, encoding="utf-8") as f:
      expected = json.load(f)
    expected.pop("environment")
    expected.pop("recorded_by", None)
    if args.runs:
      expected["runs"] = {k: v for k, v in expected["runs"].items() if k in record["runs"]}
    diff = differences(expected, {k: v for k, v in record.items()
                                  if k not in ("environment", "recorded_by")})
    print("\n".join(diff) or "identical")
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
  main()
