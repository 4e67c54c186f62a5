"""Exports a trained model as a self-contained, versioned directory that needs only JAX and numpy.

  python -m vreloc_jax.export --workdir=W --checkpoint=best --output=DIR \
    [--platforms=cpu,cuda,tpu] [--overwrite] [--noverify]

``--checkpoint`` is ``best``, ``latest``, ``min_loss_c`` or a step, as for
``vreloc_jax.evaluate``; the checkpoint is restored exactly as there. `vreloc_jax.exported`
loads the directory (it imports jax, numpy and the standard library only) and
`predict_pairs` scores benchmark pairs with it, like ``train.Runner.predict``.

The directory (format version 1, `vreloc_jax.exported.FORMAT_VERSION`):

  model.json             format and version; the training configuration (W/config.json);
                         feature_dim; query_buckets and reference_buckets; the inference
                         rule and its options; the checkpoint (step, selection); provenance
                         (work and data directories, the SHA-256 of each split file and of
                         them together, the val/test results files of W/results); the jax
                         and jaxlib versions; the platforms; the signature in words; the
                         programs and their length ranges; the size and SHA-256 of every
                         other file; the check made at export time
  params.npz             the parameters (uncompressed; one array per leaf, named by its key
                         path joined with "/")
  program_<k>.jaxexport  `jax.export` serializations (StableHLO) of the inference function
                         for every requested platform, batch-polymorphic, one per range of
                         padded lengths

It is built in a temporary sibling directory and renamed into place: a reader sees
a complete export or none. An existing non-empty ``--output`` is refused unless
``--overwrite``.

The inference function, ``(params, query f32 [b, lq, D], query_mask bool [b, lq],
reference f32 [b, lr, D], reference_mask bool [b, lr]) -> {"segments": i32 [b, 2],
"score": f32 [b], "probs": f32 [b, lr, 4], "loss_c": f32 [b], "attention": f32 [b, lr,
heads]}``, is
`train.eval_step` itself: the
model, `train.predict_segments` by the run's ``eval.inference``, and the
co-attention loss of the predicted segment.

Decisions, with what was measured (2 loaded CPU cores, jax 0.10.2; the paper-size
model, 1.7 M parameters, D = 500; the run's buckets, queries (32,), references
(32, 64, 128, 192, 300)):

* Symbolic lengths, not one program per bucket. ``b, lq, lr`` are symbolic
  (`jax.export.symbolic_shape`, constraints ``>= 1``); every op of the model
  exports that way (dilated convolutions, the LSTMs' scans, the segment searches;
  `segments.search_full` takes ``min(max_length, len_ref)`` with `jax.core.min_dim`),
  so one program serves every length. The format allows several programs with
  length ranges (``programs`` in model.json) should a future model need them; the
  numbers below for the ``full`` rule were measured with two programs, split at
  ``max_length``, before ``min_dim`` made one enough.

  ==================================  ==================  ==================
  per program set, cpu,cuda,tpu       symbolic            5 bucket programs
  ==================================  ==================  ==================
  export time, weak / full rule       1.1 s / 2.4 s       5.3 s / 5.4 s
  size of the programs, weak / full   77 kB / 159 kB      347 kB / 355 kB
  export time, size, cpu only (full)  9.6 s*, 146 kB      4.9 s, 323 kB
  ==================================  ==================  ==================
  (* the first export of the process, tracing included.)

  Inference on CPU, first call (compilation) / steady state, full rule; the same
  for weak within noise; outputs bit-identical to ``jax.jit(eval_step)`` in all
  cases (segments, probs, loss_c):

  ===============================  ==============  ==============  ==============
  batch, padded query, reference   jit(eval_step)  symbolic        bucket program
  ===============================  ==============  ==============  ==============
  8, 32, 64                        4.9 s / 65 ms   4.6 s / 61 ms   5.6 s / 59 ms
  8, 32, 300                       5.9 s / 302 ms  5.9 s / 343 ms  5.0 s / 264 ms
  32, 32, 128                      4.5 s / 511 ms  4.4 s / 429 ms  4.1 s / 435 ms
  ===============================  ==============  ==============  ==============

  Programs are compiled for concrete shapes when called either way, so they run
  alike; once the process has traced the model, symbolic export is 2-5 times
  faster to write (1.1-2.4 s against 5.3-5.4 s), its programs 2-4.5 times smaller,
  and it serves any bucket set. The loader still pads to the run's buckets: the model is
  padding-invariant only up to float rounding, and padding as the evaluation does
  makes the loader's outputs the evaluation's, bit for bit.

* Parameters in params.npz, not embedded as constants: every program with the
  parameters embedded carries its own 6.8 MB copy (measured: 13.7 MB for the full
  rule's two symbolic programs, 34.2 MB for five bucket programs; export times as
  above), against one 6.8 MB params.npz, and the arrays stay readable with numpy
  alone. The programs take the parameters as their first
  argument, a dict keyed like params.npz.

* Feature dimension: from the checkpoint's own array metadata (the reference
  mapping's kernel, ``[kernel, D, d_h]``), so a work directory exports without its
  data; the data directory is read, when present, only to hash the split files.

* Each exported program is checked before anything is written (``--noverify``
  skips it): on a random batch of ``eval.batch_size`` examples at the smallest
  bucket pair it serves, it must give the segments of ``Runner.eval_step`` and its
  loss_c to 1e-6 (when this machine's platform is among those exported; bit-identical
  on CPU in every test). Outputs are bit-identical to the evaluation's for the same
  batch; another batch composition (size) may move loss_c in its last bits (6e-8
  seen), as it would for ``eval_step``.

Serializing needs the ``flatbuffers`` package (an optional dependency of jax).

Multi-platform lowering (cpu, cuda, tpu) works on a CPU-only machine; the cuda and
tpu programs were not run here (no accelerator).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from vreloc_jax import cli
from vreloc_jax import exported as exported_lib
from vreloc_jax.data import batching
from vreloc_jax.data.features import FeatureStore
from vreloc_jax.data.pairs import Pair

FLAGS = flags.FLAGS

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
# Files of a data directory whose hashes record what the model was trained and selected on.
SPLIT_FILES = ("train.json", "val.json", "test.json", "length.json")
SIGNATURE = {
    "inputs": [
        {"name": "params", "what": "dict of the arrays of params.npz, by name"},
        {"name": "query", "dtype": "float32", "shape": "[batch, len_query, feature_dim]",
         "what": "query features, zeros at padded steps"},
        {"name": "query_mask", "dtype": "bool", "shape": "[batch, len_query]",
         "what": "True at valid query steps, which come first"},
        {"name": "reference", "dtype": "float32", "shape": "[batch, len_ref, feature_dim]",
         "what": "reference features, zeros at padded steps"},
        {"name": "reference_mask", "dtype": "bool", "shape": "[batch, len_ref]",
         "what": "True at valid reference steps, which come first"},
    ],
    "outputs": [
        {"name": "segments", "dtype": "int32", "shape": "[batch, 2]",
         "what": "predicted [start, end) of each reference, end exclusive, by the inference rule"},
        {"name": "score", "dtype": "float32", "shape": "[batch]",
         "what": "the model's confidence in its prediction, in [0, 1]: the mean p_inside over "
                 "the segment (a segment-scoring comparator: its own candidate score)"},
        {"name": "probs", "dtype": "float32", "shape": "[batch, len_ref, 4]",
         "what": "per-step probabilities of (start, end, inside, outside); 0.25 at padded steps"},
        {"name": "loss_c", "dtype": "float32", "shape": "[batch]",
         "what": "co-attention loss of each prediction (eqs. 13-18, masks of the predicted "
                 "segment); reads no annotation"},
        {"name": "attention", "dtype": "float32", "shape": "[batch, len_ref, heads]",
         "what": "the multiscale attention H^matt of each reference step (heads: the "
                 "config's model.attention_groups; none for a query-blind model)"},
    ],
    "batch": "any batch size >= 1",
    "lengths": "padded lengths in the programs' ranges; predict() pads to the run's buckets",
}


def define_flags() -> None:
  """Command-line flags; defined only when run as a program (the module is importable)."""
  flags.DEFINE_string("workdir", None, "A work directory written by vreloc_jax.main.")
  flags.DEFINE_string("checkpoint", "best", "'best', 'latest', 'min_loss_c' or a step number.")
  flags.DEFINE_string("output", None, "The export directory to write (local).")
  flags.DEFINE_list("platforms", list(DEFAULT_PLATFORMS),
                    f"Platforms to export for, among {', '.join(PLATFORMS)}.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --output.")
  flags.DEFINE_bool("verify", True, "Check each program against eval_step before writing "
                    "(when this machine's platform is exported).")
  flags.mark_flags_as_required(["workdir", "output"])


def check_output(output: str, overwrite: bool) -> str:
  """The absolute output path, once checked writable as an export (nothing is written).

  Raises:
    ValueError: a cloud path, a file, or a non-empty directory without ``overwrite``.
  """
  if "://" in os.fspath(output):
    raise ValueError(f"--output must be a local directory, got {output}; export locally, "
                     "then copy the directory")
  output = os.path.abspath(os.fspath(output))
  if os.path.exists(output):
    if not os.path.isdir(output):
      raise ValueError(f"output {output} exists and is not a directory")
    if os.listdir(output) and not overwrite:
      raise ValueError(f"output {output} exists and is not empty; choose another directory or "
                       "pass --overwrite to replace it")
  return output


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  """The requested platforms, validated and without repeats."""
  platforms = tuple(dict.fromkeys(p.strip().lower() for p in platforms if p.strip()))
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown or not platforms:
    raise ValueError(f"platforms must be among {', '.join(PLATFORMS)}, got "
                     f"{', '.join(platforms) or 'none'}")
  return platforms


def flatten_params(params: Any) -> dict[str, np.ndarray]:
  """The parameter leaves as host arrays, keyed by their paths joined with "/"."""
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    keys = [str(getattr(k, "key", k)) for k in path]
    name = "/".join(keys)
    if any("/" in k for k in keys) or name in flat:
      raise ValueError(f"parameter path {jax.tree_util.keystr(path)} cannot be named "
                       "unambiguously")
    flat[name] = np.asarray(jax.device_get(leaf))
  return flat


def unflatten_params(flat: dict[str, Any]) -> dict[str, Any]:
  """The nested parameter dict of `flatten_params`'s output."""
  tree: dict[str, Any] = {}
  for name, leaf in flat.items():
    node = tree
    *parents, last = name.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = leaf
  return tree


def plan_programs() -> list[exported_lib.Program]:
  """The programs to export, with their length ranges: one for every length (module docstring)."""
  return [exported_lib.Program("program_0.jaxexport", (1, None), (1, None))]


def _constraints(name: str, length_range: tuple[int, int | None]) -> tuple[str, ...]:
  low, high = length_range
  return (f"{name} >= {low}",) + ((f"{name} <= {high}",) if high is not None else ())


def inference_function(model: Any, config: Any):
  """``(params_flat, query, query_mask, reference, reference_mask) -> outputs``: see SIGNATURE.

  `train.eval_step` itself, on a batch built from the masks.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vreloc_jax import train  # pylint: disable=g-import-not-at-top

  def infer(params_flat, query, query_mask, reference, reference_mask):
    params = unflatten_params(params_flat)
    batch = {"query": query, "query_mask": query_mask,
             "query_length": query_mask.sum(axis=1).astype(jnp.int32),  # [batch]
             "reference": reference, "reference_mask": reference_mask,
             "reference_length": reference_mask.sum(axis=1).astype(jnp.int32)}  # [batch]
    out = train.eval_step(params, batch, model=model, config=config)
    return {"segments": out["segments"].astype(jnp.int32),  # [batch, 2]
            "score": out["score"],  # [batch]
            "probs": out["probs"],  # [batch, len_ref, 4]
            "loss_c": out["loss_c"],  # [batch]
            "attention": out["attention"].astype(jnp.float32)}  # [batch, len_ref, heads]

  return infer


def export_program(infer: Any, params: dict[str, np.ndarray], feature_dim: int,
                   program: exported_lib.Program, platforms: Sequence[str]
                   ) -> jax.export.Exported:
  """`jax.export` of ``infer`` for a symbolic batch and the program's length ranges."""
  batch, len_query, len_ref = jax.export.symbolic_shape(
      "b, lq, lr", constraints=("b >= 1",) + _constraints("lq", program.query_length)
      + _constraints("lr", program.reference_length))
  specs = (
      {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()},
      jax.ShapeDtypeStruct((batch, len_query, feature_dim), np.float32),
      jax.ShapeDtypeStruct((batch, len_query), np.bool_),
      jax.ShapeDtypeStruct((batch, len_ref, feature_dim), np.float32),
      jax.ShapeDtypeStruct((batch, len_ref), np.bool_),
  )
  return jax.export.export(jax.jit(infer), platforms=tuple(platforms))(*specs)


def feature_dim_from_checkpoint(manager: Any, step: int, config: Any) -> int:
  """D, the feature dimension a checkpoint's model reads, from its saved parameter shapes.

  Any model: its parameter shapes are laid out for D = 1 and D = 2 (`jax.eval_shape`,
  nothing computed); the first dimension that differs grows linearly with D, which its
  saved size then gives.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from vreloc_jax import train  # pylint: disable=g-import-not-at-top
  reader = ocp.CheckpointManager(manager.directory, item_handlers=ocp.StandardCheckpointHandler(),
                                 options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

  try:
    saved = shapes(reader.item_metadata(step)["params"])
  except (KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"cannot read the parameters of checkpoint {step} in "
                     f"{manager.directory} ({type(e).__name__}: {e})") from None
  finally:
    reader.close()
  model = train.create_model(config)
  laid_out = [shapes(jax.eval_shape(functools.partial(
      train.create_train_state, config, model, feature_dim=d), jax.random.key(0))["params"])
              for d in (1, 2)]
  for name, one in laid_out[0].items():
    for axis, (a, b) in enumerate(zip(one, laid_out[1][name])):
      if a != b and len(saved.get(name, ())) == len(one):
        return (saved[name][axis] - a) // (b - a) + 1
  raise ValueError(f"checkpoint {step} in {manager.directory} does not hold the parameters of "
                   f"a {train.model_name(config)} model")


def provenance(workdir: str, config: Any, step: int) -> dict[str, Any]:
  """Where the model comes from: directories, split file hashes, results files."""
  from vreloc_jax import storage  # pylint: disable=g-import-not-at-top
  from vreloc_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  data_dir = config.data.get("resolved_dir") or config.data.dir or None
  split_files = {}
  if data_dir:
    for name in SPLIT_FILES:
      path = storage.join(data_dir, name)
      if storage.is_file(path):
        with storage.open_binary(path) as f:
          split_files[name] = hashlib.sha256(f.read()).hexdigest()
  combined = hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(split_files.items()))
                            .encode()).hexdigest() if split_files else None
  results_dir = storage.join(workdir, workdir_lib.RESULTS_DIR)
  results = {}
  for name in storage.list_names(results_dir):
    if name.endswith(".json") and not name.endswith(".predictions.json"):
      try:
        results[name] = storage.read_json(storage.join(results_dir, name))
      except (OSError, ValueError):  # A results file is a record, not a requirement.
        continue
  this_step = sorted(name for name, r in results.items()
                     if (isinstance(r, dict) and r.get("checkpoint_step") == step)
                     or name == f"val_step{step}.json")
  return {
      "workdir": storage.absolute(workdir),
      "data_dir": data_dir,
      "features": config.data.get("features") or None,
      "split_files_sha256": split_files,
      "splits_sha256": combined,
      "step": step,
      "results": results,
      "results_of_this_checkpoint": this_step,
  }


def _verify(runner: Any, params_on_mesh: Any, program: exported_lib.Program,
            exp: jax.export.Exported, flat: dict[str, np.ndarray], config: Any,
            feature_dim: int) -> dict[str, Any]:
  """Runs a deserialized program against ``Runner.eval_step`` on a random batch.

  The batch has ``eval.batch_size`` examples at the smallest bucket pair the program
  serves, lengths from the full buckets down to 1.

  Raises:
    ValueError: the segments differ, or loss_c by more than 1e-6.
  """
  from vreloc_jax import sharding  # pylint: disable=g-import-not-at-top
  len_query, len_ref = min((q, r) for q in config.data.query_buckets
                           for r in config.data.reference_buckets if program.covers(q, r))
  size = int(config.eval.batch_size)  # The evaluation's shapes: its compiled eval_step is reused.
  rng = np.random.default_rng(0)
  query_lengths = np.maximum(1, np.linspace(len_query, 1, size).astype(np.int32))  # [size]
  ref_lengths = np.maximum(1, np.linspace(len_ref, 1, size).astype(np.int32))  # [size]
  query_mask = np.arange(len_query)[None, :] < query_lengths[:, None]  # [size, len_query]
  reference_mask = np.arange(len_ref)[None, :] < ref_lengths[:, None]  # [size, len_ref]
  batch = {
      "query": np.where(query_mask[..., None], rng.normal(
          size=(size, len_query, feature_dim)), 0).astype(np.float32),
      "query_mask": query_mask, "query_length": query_lengths,
      "reference": np.where(reference_mask[..., None], rng.normal(
          size=(size, len_ref, feature_dim)), 0).astype(np.float32),
      "reference_mask": reference_mask, "reference_length": ref_lengths,
  }
  expected = runner.eval_step(params_on_mesh, sharding.to_global(batch, runner.mesh))
  loaded = jax.export.deserialize(exp.serialize())
  got = jax.jit(loaded.call)(flat, batch["query"], query_mask, batch["reference"],
                             reference_mask)
  segments_equal = bool(np.array_equal(np.asarray(got["segments"]),
                                       np.asarray(expected["segments"])))
  loss_diff = float(np.max(np.abs(np.asarray(got["loss_c"]) - np.asarray(expected["loss_c"]))))
  if not segments_equal or not loss_diff <= 1e-6:
    raise ValueError(f"the exported {program.file} does not reproduce eval_step on "
                     f"{jax.export.default_export_platform()} (segments equal: "
                     f"{segments_equal}, largest loss_c difference {loss_diff:g}); nothing was "
                     "written")
  return {"platform": jax.export.default_export_platform(), "program": program.file,
          "shapes": [size, len_query, len_ref], "segments_equal": True,
          "max_abs_loss_c_difference": loss_diff}


def _write_atomically(output: str, overwrite: bool, write: Any) -> None:
  """Calls ``write(tmp_dir)``, then renames ``tmp_dir`` to ``output`` (see module docstring)."""
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.tmp-")
  old = None
  try:
    write(tmp)
    os.chmod(tmp, 0o755)
    check_output(output, overwrite)  # Again: something may have appeared meanwhile.
    if os.path.isdir(output) and os.listdir(output):
      old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.old-")
      os.rename(output, os.path.join(old, "export"))
    os.replace(tmp, output)  # Replaces an empty directory too.
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None and not os.path.exists(output):
      os.rename(os.path.join(old, "export"), output)  # Put the previous export back.
    raise
  finally:
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)


def export_model(workdir: str, checkpoint: str | int, output: str,
                 platforms: Sequence[str] = DEFAULT_PLATFORMS,
                 overwrite: bool = False, verify: bool = True) -> dict[str, Any]:
  """Restores a checkpoint of ``workdir`` and writes it to ``output`` as an export.

  Args:
    workdir: a work directory written by `vreloc_jax.main`.
    checkpoint: a selection (`checkpoints.SELECTIONS`) or a step.
    output: the local directory to write (absent, empty, or replaced with ``overwrite``).
    platforms: the platforms to export for (`PLATFORMS`).
    overwrite: replace a non-empty ``output``.
    verify: check each program against ``Runner.eval_step`` first (`_verify`), when
      this machine's platform is among ``platforms``.

  Returns:
    The content of the written model.json.

  Raises:
    ValueError: a bad output, platform, work directory or checkpoint, or a program
      that does not reproduce ``eval_step``.
  """
  # Model code is imported here only: the rest of this module (`predict_pairs`) runs on
  # the loader alone.
  from vreloc_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from vreloc_jax import sharding  # pylint: disable=g-import-not-at-top
  from vreloc_jax import train  # pylint: disable=g-import-not-at-top
  from vreloc_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  output = check_output(output, overwrite)
  platforms = check_platforms(platforms)
  config = workdir_lib.load_config(workdir)
  config_record = json.loads(config.to_json())  # As trained (W/config.json).
  if train.model_name(config) == "relocalizer":
    # Portable, batch-polymorphic programs: the scan LSTM (cuDNN's custom call is neither
    # stable under jax.export nor shape-polymorphic); the parameters are the same.
    config.model.lstm_implementation = "scan"
  if config.eval.inference not in train.INFERENCES:
    raise ValueError(f"{workdir}: eval.inference {config.eval.inference!r} is not one of "
                     f"{train.INFERENCES}")
  manager = checkpoints.manager(workdir, read_only=True)
  try:
    step = checkpoints.resolve_step(manager, checkpoint)
    feature_dim = feature_dim_from_checkpoint(manager, step, config)
    mesh = sharding.make_mesh()
    runner = train.Runner(config, mesh, feature_dim)
    state = checkpoints.restore(manager, step, runner.abstract_state())
  finally:
    manager.close()
  flat = flatten_params(state["params"])
  bad = [k for k, v in flat.items() if not np.isfinite(v).all()]
  if bad:
    raise ValueError(f"checkpoint {step} of {workdir} holds non-finite parameters ({bad[0]})")
  infer = inference_function(runner.model, config)
  programs = plan_programs()
  if not programs:
    raise ValueError(f"{workdir}: no (query, reference) bucket pair in the configuration")
  blobs, checks, calling_convention = {}, [], None
  for program in programs:
    exp = export_program(infer, flat, feature_dim, program, platforms)
    if verify and jax.export.default_export_platform() in platforms:
      checks.append(_verify(runner, state["params"], program, exp, flat, config, feature_dim))
    blobs[program.file] = bytes(exp.serialize())
    calling_convention = exp.calling_convention_version

  metadata = {
      "format": exported_lib.FORMAT,
      "format_version": exported_lib.FORMAT_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "feature_dim": feature_dim,
      "query_buckets": sorted(int(b) for b in config.data.query_buckets),
      "reference_buckets": sorted(int(b) for b in config.data.reference_buckets),
      "inference": train.inference_name(config),
      # False for a segment-scoring comparator: its "probs" are its segment's one-hot labels.
      "per_step_probabilities": not train.scores_candidates(config),
      "inference_options": {"max_length": int(config.eval.max_length),
                            "search_form": config.eval.search_form,
                            "alpha": float(config.loss.alpha)},
      "checkpoint": {"step": step, "selection": str(checkpoint)},
      "config": config_record,
      "provenance": provenance(workdir, config, step),
      "jax_version": jax.__version__,
      "jaxlib_version": _jaxlib_version(),
      "platforms": list(platforms),
      "calling_convention_version": calling_convention,
      "signature": SIGNATURE,
      "params": {"file": exported_lib.PARAMS_FILE, "count": int(sum(v.size for v in flat.values())),
                 "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                            for k, v in flat.items()}},
      "programs": [{"file": p.file, "query_length": list(p.query_length),
                    "reference_length": list(p.reference_length),
                    "symbolic_shapes": "b, lq, lr"} for p in programs],
      "verified": checks,
  }

  def write(tmp: str) -> None:
    np.savez(os.path.join(tmp, exported_lib.PARAMS_FILE), **flat)
    for name, blob in blobs.items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(blob)
    metadata["files"] = {name: {"bytes": os.path.getsize(os.path.join(tmp, name)),
                                "sha256": exported_lib.sha256_file(os.path.join(tmp, name))}
                         for name in sorted(os.listdir(tmp))}
    with open(os.path.join(tmp, exported_lib.MODEL_FILE), "w", encoding="utf-8") as f:
      json.dump(metadata, f, indent=1)
      f.write("\n")

  _write_atomically(output, overwrite, write)
  return metadata


def _jaxlib_version() -> str | None:
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None


def predict_pairs(model: exported_lib.ExportedModel, pairs: Sequence[Pair], store: FeatureStore,
                  batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Scores benchmark pairs with an exported model, batched as ``train.Runner.predict`` does.

  Args:
    model: `vreloc_jax.exported.load`'s result.
    pairs: the pairs (`vreloc_jax.data.pairs.load_eval_pairs`).
    store: their features (dimension ``model.feature_dim``).
    batch_size: examples per batch (fillers complete the last); by default the run's
      ``eval.batch_size``, which makes the results ``Runner.predict``'s bit for bit
      on the same backend.

  Returns:
    The predicted ``[s, e)`` of every pair, int64 [num_pairs, 2], and each one's
    ``loss_c``, float64 [num_pairs].
  """
  batch_size = int(batch_size or model.eval_batch_size)
  predicted = np.zeros((len(pairs), 2), np.int64)
  loss_c = np.zeros((len(pairs),), np.float64)
  for indices, batch in batching.eval_batches(pairs, store, batch_size, model.query_buckets,
                                              model.reference_buckets):
    out = model.run(batch["query"], batch["query_mask"], batch["reference"],
                    batch["reference_mask"])
    real = indices >= 0
    predicted[indices[real]] = out["segments"][real]
    loss_c[indices[real]] = out["loss_c"][real]
  return predicted, loss_c


def evaluate_export(directory: str, split: str = "test", output: str | None = None,
                    data_dir: str | None = None, features: str | None = None,
                    model: exported_lib.ExportedModel | None = None) -> dict[str, Any]:
  """Scores an exported model on a split's fixed pairs, as ``vreloc_jax.evaluate`` scores a run.

  Reads no model code: the loader, the data modules and `metrics` only.

  Args:
    directory: the export directory.
    split: "val" or "test".
    output: the results file to write (and its predictions file beside it); None
      writes nothing.
    data_dir: the benchmark directory; by default the one the run trained on
      (model.json's ``config.data.resolved_dir``).
    features: the features file or directory; by default the run's
      ``config.data.features``, else the one found in ``data_dir``.
    model: the loaded model, if the caller has it already.

  Returns:
    The results (`metrics.evaluate_predictions`), with ``loss_c`` (mean over the
    pairs), the checkpoint step and selection, the inference rule, the export
    directory and whether the split file is the one the run recorded.

  Raises:
    ValueError: a bad export, split or data directory.
  """
  from vreloc_jax import metrics  # pylint: disable=g-import-not-at-top
  from vreloc_jax import storage  # pylint: disable=g-import-not-at-top
  from vreloc_jax.data import features as features_lib  # pylint: disable=g-import-not-at-top
  from vreloc_jax.data import pairs as pairs_lib  # pylint: disable=g-import-not-at-top
  from vreloc_jax.data import splits as splits_lib  # pylint: disable=g-import-not-at-top

  if split not in ("val", "test"):
    raise ValueError(f"split must be 'val' or 'test', got {split!r}")
  model = model or exported_lib.load(directory)
  config = model.metadata.get("config", {})
  data = config.get("data", {})
  data_dir = data_dir or data.get("resolved_dir") or data.get("dir")
  if not data_dir or not storage.is_dir(data_dir):
    raise ValueError(f"the benchmark directory {data_dir!r} of {directory} is not here; pass "
                     "the data directory")
  split_file = splits_lib.split_path(data_dir, split)
  entries = splits_lib.load_split(split_file)
  pairs, pair_file = pairs_lib.load_eval_pairs(split_file, entries, split,
                                               seed=int(data.get("pair_seed", 0)))
  store = features_lib.open_features(
      features or data.get("features") or features_lib.find_features(data_dir),
      expected_dim=model.feature_dim)
  store.preload(entries)
  predicted, loss_c = predict_pairs(model, pairs, store)
  recorded = model.metadata.get("provenance", {}).get("split_files_sha256", {})
  with storage.open_binary(split_file) as f:
    split_sha = hashlib.sha256(f.read()).hexdigest()
  checkpoint = model.metadata.get("checkpoint", {})
  return metrics.evaluate_predictions(
      split, pairs, predicted, output,
      extra={"pair_file": pair_file, "loss_c": float(loss_c.mean()),
             "checkpoint_step": checkpoint.get("step"), "selection": checkpoint.get("selection"),
             "config": config.get("supervision"), "variant": config.get("variant"),
             "inference": model.inference, "model": os.path.abspath(directory),
             "split_matches_export": (recorded.get(f"{split}.json") == split_sha
                                      if recorded.get(f"{split}.json") else None)})


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  with cli.one_line_errors("vreloc_jax.export"):
    check_output(FLAGS.output, FLAGS.overwrite)  # Before any restore: refuse early.
    from vreloc_jax import sharding  # pylint: disable=g-import-not-at-top
    sharding.quiet_library_logs()
    sharding.enable_compilation_cache()  # One process: no multi-host join.
    metadata = export_model(FLAGS.workdir, FLAGS.checkpoint, FLAGS.output, FLAGS.platforms,
                            FLAGS.overwrite, FLAGS.verify)
  size = sum(f["bytes"] for f in metadata["files"].values())
  print(f"exported step {metadata['checkpoint']['step']} of {FLAGS.workdir} to "
        f"{os.path.abspath(FLAGS.output)}: {len(metadata['programs'])} program(s) for "
        f"{', '.join(metadata['platforms'])}, {metadata['params']['count']} parameters, "
        f"{size / 1e6:.1f} MB")


if __name__ == "__main__":
  define_flags()
  cli.run(main, "vreloc_jax.export")
