"""Exports a trained model as a self-contained, versioned directory that needs only JAX and numpy.

  python -m vreloc_jax.export --workdir=W --checkpoint=best --output=DIR \
    [--platforms=cpu,cuda,tpu] [--overwrite] [--noverify]

``--checkpoint`` is ``best``, ``latest``, ``min_loss_c`` or a step, restored as
``vreloc_jax.evaluate`` restores it. The directory (format version 1; its files, and why
it is laid out so: WORKSPACE.md, "An exported model") holds model.json (what the model
is, where it comes from), params.npz (the parameters, one array per leaf named by its
path) and `PROGRAM`: the `jax.export` serialization of `inference_function`, which is
`train.eval_step` itself, with symbolic batch and lengths (`SIGNATURE`). It is built in
a temporary sibling and renamed into place: a reader sees a complete export or none; an
existing non-empty ``--output`` is refused unless ``--overwrite``. `vreloc_jax.exported`
loads it (jax and numpy only); `vreloc_jax.evaluation.score_export` scores it.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vreloc_jax import checkpoints
from vreloc_jax import cli
from vreloc_jax import configuration
from vreloc_jax import distributed
from vreloc_jax import exported as exported_lib
from vreloc_jax import models
from vreloc_jax import sharding
from vreloc_jax import storage
from vreloc_jax import train
from vreloc_jax import workdir as workdir_lib

FLAGS = flags.FLAGS

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# The one program of an export: symbolic lengths serve every padded length.
PROGRAM = exported_lib.ProgramFile("program_0.jaxexport", (1, None), (1, None))
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


def inference_function(runner: train.Runner) -> Callable[..., dict[str, jax.Array]]:
  """``(params_flat, query, query_mask, reference, reference_mask) -> outputs``: see SIGNATURE.

  `train.eval_step` itself, on a batch built from the masks.
  """

  def infer(params_flat, query, query_mask, reference, reference_mask):
    params = unflatten_params(params_flat)
    batch = {"query": query, "query_mask": query_mask,
             "query_length": query_mask.sum(axis=1).astype(jnp.int32),  # [batch]
             "reference": reference, "reference_mask": reference_mask,
             "reference_length": reference_mask.sum(axis=1).astype(jnp.int32)}  # [batch]
    out = train.eval_step(params, batch, family=runner.family, config=runner.config)
    return {"segments": out["segments"].astype(jnp.int32),  # [batch, 2]
            "score": out["score"],  # [batch]
            "probs": out["probs"],  # [batch, len_ref, 4]
            "loss_c": out["loss_c"],  # [batch]
            "attention": out["attention"].astype(jnp.float32)}  # [batch, len_ref, heads]

  return infer


def export_program(infer: Any, params: dict[str, np.ndarray], feature_dim: int,
                   platforms: Sequence[str]) -> jax.export.Exported:
  """`jax.export` of ``infer`` for a symbolic batch and symbolic lengths (`PROGRAM`)."""
  batch, len_query, len_ref = jax.export.symbolic_shape(
      "b, lq, lr", constraints=("b >= 1", "lq >= 1", "lr >= 1"))
  specs = (
      {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()},
      jax.ShapeDtypeStruct((batch, len_query, feature_dim), np.float32),
      jax.ShapeDtypeStruct((batch, len_query), np.bool_),
      jax.ShapeDtypeStruct((batch, len_ref, feature_dim), np.float32),
      jax.ShapeDtypeStruct((batch, len_ref), np.bool_),
  )
  return jax.export.export(jax.jit(infer), platforms=tuple(platforms))(*specs)


def feature_dim_from_checkpoint(manager: Any, step: int, config: ml_collections.ConfigDict
                                ) -> int:
  """D, the feature dimension a checkpoint's model reads, from its saved parameter shapes.

  Any model: its parameter shapes are laid out for D = 1 and D = 2 (`jax.eval_shape`,
  nothing computed); the first dimension that differs grows linearly with D, which its
  saved size then gives.
  """
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
  family = models.create(config)
  laid_out = [shapes(jax.eval_shape(functools.partial(
      train.create_train_state, config, family, feature_dim=d), jax.random.key(0))["params"])
              for d in (1, 2)]
  for name, one in laid_out[0].items():
    for axis, (a, b) in enumerate(zip(one, laid_out[1][name])):
      if a != b and len(saved.get(name, ())) == len(one):
        return (saved[name][axis] - a) // (b - a) + 1
  raise ValueError(f"checkpoint {step} in {manager.directory} does not hold the parameters of "
                   f"a {models.model_name(config)} model")


def provenance(workdir: str, config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
  """Where the model comes from: directories, split file hashes, results files."""
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


def _verify(runner: train.Runner, params_on_mesh: Any, exp: jax.export.Exported,
            flat: dict[str, np.ndarray], feature_dim: int) -> dict[str, Any]:
  """Runs the deserialized program against ``Runner.eval_step`` on a random batch.

  The batch has ``eval.batch_size`` examples at the smallest query and reference
  buckets, lengths from the full buckets down to 1.

  Raises:
    ValueError: the segments differ, or loss_c by more than 1e-6.
  """
  config = runner.config
  len_query, len_ref = min(config.data.query_buckets), min(config.data.reference_buckets)
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
    raise ValueError(f"the exported {PROGRAM.file} does not reproduce eval_step on "
                     f"{jax.export.default_export_platform()} (segments equal: "
                     f"{segments_equal}, largest loss_c difference {loss_diff:g}); nothing was "
                     "written")
  return {"platform": jax.export.default_export_platform(), "program": PROGRAM.file,
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
  output = check_output(output, overwrite)
  platforms = check_platforms(platforms)
  config = workdir_lib.load_config(workdir)
  config_record = json.loads(config.to_json())  # As trained (W/config.json).
  configuration.validate(config)
  config = models.family_class(config).portable(config)
  manager = checkpoints.manager(workdir, read_only=True)
  try:
    step = checkpoints.resolve_step(manager, checkpoint)
    feature_dim = feature_dim_from_checkpoint(manager, step, config)
    runner = train.Runner(config, sharding.make_mesh(), feature_dim)
    state = checkpoints.restore(manager, step, runner.abstract_state())
  finally:
    manager.close()
  flat = flatten_params(state["params"])
  bad = [k for k, v in flat.items() if not np.isfinite(v).all()]
  if bad:
    raise ValueError(f"checkpoint {step} of {workdir} holds non-finite parameters ({bad[0]})")
  exp = export_program(inference_function(runner), flat, feature_dim, platforms)
  checks = []
  if verify and jax.export.default_export_platform() in platforms:
    checks.append(_verify(runner, state["params"], exp, flat, feature_dim))
  blob = bytes(exp.serialize())

  metadata = {
      "format": exported_lib.FORMAT,
      "format_version": exported_lib.FORMAT_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "feature_dim": feature_dim,
      "query_buckets": sorted(int(b) for b in config.data.query_buckets),
      "reference_buckets": sorted(int(b) for b in config.data.reference_buckets),
      "inference": runner.family.inference,
      # False for a segment-scoring comparator: its "probs" are its segment's one-hot labels.
      "per_step_probabilities": runner.family.per_step_probabilities,
      "attention_rows": runner.family.attention_rows,
      "inference_options": {"max_length": int(config.eval.max_length),
                            "search_form": config.eval.search_form,
                            "alpha": float(config.loss.alpha)},
      "checkpoint": {"step": step, "selection": str(checkpoint)},
      "config": config_record,
      "provenance": provenance(workdir, config, step),
      "jax_version": jax.__version__,
      "jaxlib_version": _jaxlib_version(),
      "platforms": list(platforms),
      "calling_convention_version": exp.calling_convention_version,
      "signature": SIGNATURE,
      "params": {"file": exported_lib.PARAMS_FILE, "count": int(sum(v.size for v in flat.values())),
                 "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                            for k, v in flat.items()}},
      "programs": [{"file": PROGRAM.file, "query_length": list(PROGRAM.query_length),
                    "reference_length": list(PROGRAM.reference_length),
                    "symbolic_shapes": "b, lq, lr"}],
      "verified": checks,
  }

  def write(tmp: str) -> None:
    np.savez(os.path.join(tmp, exported_lib.PARAMS_FILE), **flat)
    with open(os.path.join(tmp, PROGRAM.file), "wb") as f:
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
    import jaxlib  # pylint: disable=g-import-not-at-top  (optional: its version only)
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  with cli.one_line_errors("vreloc_jax.export"):
    check_output(FLAGS.output, FLAGS.overwrite)  # Before any restore: refuse early.
    distributed.quiet_library_logs()
    distributed.enable_compilation_cache()  # One process: no multi-host join.
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
