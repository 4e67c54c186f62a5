"""Loads and runs a model exported by `vreloc_jax.export`: JAX, numpy and the standard library only.

  from vreloc_jax import exported
  model = exported.load("/path/to/export")
  out = model.predict(query, query_lengths, reference, reference_lengths)
  out["segments"]  # int32 [batch, 2]: the predicted [s, e) of each reference, end exclusive

Nothing of the project's model code (``vreloc_jax.relocalizer``, ``train``, flax, orbax,
…) is imported: the inference program is StableHLO serialized by `jax.export`, the
parameters a plain ``.npz``. This module may be copied out of the project with
``vreloc_jax/buckets.py``, its one import (standard library only).

The directory (format version 1; `vreloc_jax.export` writes it, its docstring says
why it is laid out so):

  model.json            what the model is: format and version, the training
                        configuration, feature dimension, length buckets, inference
                        rule, checkpoint, provenance, the signature in words, the
                        programs and the size and SHA-256 of every other file
  params.npz            the parameters, one array per leaf, named by its key path
                        ("predictor/forward/cell/hi/kernel", ...)
  program_<k>.jaxexport `jax.export` serializations of the inference function, each
                        for a range of padded query/reference lengths

Each program maps ``(params, query, query_mask, reference, reference_mask)`` to
``{"segments", "score", "probs", "loss_c", "attention"}`` (`ExportedModel.run`).
`ExportedModel.predict` pads its inputs with zeros to the run's length buckets, as the evaluation batches do
(`vreloc_jax.data.batching`), so its outputs are the evaluation's, bit for bit, for the
same batch on the same backend (another batch size may move loss_c in its last bits).
Serialized programs need the ``flatbuffers`` package to be read (jax's optional
dependency for `jax.export` serialization).

Every problem with the directory, its files or the inputs raises ValueError naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

import jax
from jax import export as jax_export
import numpy as np

from vreloc_jax.buckets import bucket_for

FORMAT = "vreloc_jax.exported_model"
FORMAT_VERSION = 1
MODEL_FILE = "model.json"
PARAMS_FILE = "params.npz"
# Channels of ``probs``.
CHANNELS = ("start", "end", "inside", "outside")
# The value of every channel of ``probs`` at a padded step (softmax of zero logits).
PADDING_PROB = 0.25
_TRAINED_ON = "the exported model was not trained on longer ones"
_REQUIRED = ("feature_dim", "query_buckets", "reference_buckets", "inference", "params",
             "programs", "files", "platforms")


@dataclasses.dataclass(frozen=True)
class ProgramFile:
  """One exported program's file and the padded lengths it was exported for.

  Attributes:
    file: its file in the export directory.
    query_length: ``(lowest, highest)`` padded query length; highest None: unbounded.
    reference_length: the same for the reference.
  """

  file: str
  query_length: tuple[int, int | None]
  reference_length: tuple[int, int | None]

  def covers(self, len_query: int, len_ref: int) -> bool:
    """Whether padded lengths ``(len_query, len_ref)`` lie in this program's ranges."""
    return all(low <= n and (high is None or n <= high)
               for n, (low, high) in ((len_query, self.query_length),
                                      (len_ref, self.reference_length)))


def sha256_file(path: str) -> str:
  """The SHA-256 of a file's bytes, in hex."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


class ExportedModel:
  """An exported re-localization model, ready to run on this machine's default device.

  Attributes:
    directory: the export directory.
    metadata: the content of its model.json.
    feature_dim: D, the feature dimension of queries and references.
    query_buckets: the padded query lengths of the run, ascending.
    reference_buckets: the padded reference lengths of the run, ascending.
    inference: the inference rule of the segments ("weak", "full", "query_length",
      "windows"; "best_candidate" for a segment-scoring model).
    programs: the exported programs and their length ranges.
  """

  def __init__(self, directory: str, metadata: dict[str, Any], params: dict[str, np.ndarray],
               programs: Sequence[tuple[ProgramFile, jax_export.Exported]]):
    self.directory = directory
    self.metadata = metadata
    self.feature_dim = int(metadata["feature_dim"])
    self.query_buckets = tuple(sorted(int(b) for b in metadata["query_buckets"]))
    self.reference_buckets = tuple(sorted(int(b) for b in metadata["reference_buckets"]))
    self.inference = str(metadata["inference"])
    self.programs = [program for program, _ in programs]
    self._params = jax.device_put(params)  # Placed once, passed to every call.
    self._functions = [jax.jit(exp.call) for _, exp in programs]

  @property
  def step(self) -> int | None:
    """The training step of the exported checkpoint."""
    return self.metadata.get("checkpoint", {}).get("step")

  @property
  def attention_rows(self) -> str:
    """What the rows of the ``attention`` output are ("attention head", "query step")."""
    return str(self.metadata.get("attention_rows", "attention head"))

  @property
  def per_step_probabilities(self) -> bool:
    """False when ``probs`` are the prediction's one-hot labels (a segment-scoring model)."""
    return bool(self.metadata.get("per_step_probabilities", True))

  @property
  def eval_batch_size(self) -> int:
    """The run's evaluation batch size (``eval.batch_size``), for batching many pairs."""
    return int(self.metadata.get("config", {}).get("eval", {}).get("batch_size", 32))

  def program_for(self, len_query: int, len_ref: int) -> int:
    """The index of the program for padded lengths ``(len_query, len_ref)``.

    Raises:
      ValueError: no program was exported for these lengths.
    """
    for index, program in enumerate(self.programs):
      if program.covers(len_query, len_ref):
        return index
    raise ValueError(f"{self.directory}: no exported program takes a padded query of "
                     f"{len_query} and a reference of {len_ref} steps; programs: "
                     + "; ".join(f"query {p.query_length}, reference {p.reference_length}"
                                 for p in self.programs))

  def run(self, query: np.ndarray, query_mask: np.ndarray, reference: np.ndarray,
          reference_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Runs the exported program on a padded batch, as the evaluation's ``eval_step`` does.

    Args:
      query: float32 [batch, len_query, D] query features, zeros at padded steps.
      query_mask: bool [batch, len_query], True at valid steps, which come first.
      reference: float32 [batch, len_ref, D] reference features.
      reference_mask: bool [batch, len_ref], True at valid steps, which come first.

    Returns:
      ``segments``: int32 [batch, 2], the predicted ``[s, e)`` of each reference by
      the run's inference rule (a reference with no valid step gives ``[0, 0)``);
      ``probs``: float32 [batch, len_ref, 4], per-step probabilities of (start, end,
      inside, outside), 0.25 each at padded steps; ``loss_c``: float32 [batch], the
      co-attention loss of each prediction (eqs. 13-18 with the masks of the
      predicted segment; lower is better; it reads no annotation); ``attention``:
      float32 [batch, len_ref, heads], the multiscale attention H^matt.

    Raises:
      ValueError: shapes, dtypes or masks that do not fit the model or its programs.
    """
    query = _features("query", query, self.feature_dim)  # [batch, len_query, D]
    reference = _features("reference", reference, self.feature_dim)  # [batch, len_ref, D]
    if query.shape[0] != reference.shape[0]:
      raise ValueError(f"query and reference batch sizes differ: {query.shape[0]} and "
                       f"{reference.shape[0]}")
    query_mask = _prefix_mask("query_mask", query_mask, query.shape[:2])  # [batch, len_query]
    reference_mask = _prefix_mask("reference_mask", reference_mask,
                                  reference.shape[:2])  # [batch, len_ref]
    index = self.program_for(query.shape[1], reference.shape[1])
    out = self._functions[index](self._params, query, query_mask, reference, reference_mask)
    return {k: np.asarray(v) for k, v in out.items()}

  def predict(self, query: np.ndarray, query_lengths: Sequence[int] | np.ndarray,
              reference: np.ndarray, reference_lengths: Sequence[int] | np.ndarray
              ) -> dict[str, np.ndarray]:
    """Predicts the segment of each reference that shows its query's action.

    Steps at or past each length are ignored, whatever they hold. The batch is
    padded with zeros to the smallest of the run's query and reference buckets that
    hold its longest query and reference, exactly as the evaluation pads its
    batches, so the results are the evaluation's for the same batch.

    Args:
      query: float [batch, len_query, D] query features; query i is
        ``query[i, :query_lengths[i]]``.
      query_lengths: int [batch], each in ``[1, len_query]``.
      reference: float [batch, len_ref, D] reference features.
      reference_lengths: int [batch], each in ``[1, len_ref]``.

    Returns:
      ``segments``: int32 [batch, 2], ``[s, e)`` relative to the start of each
      reference (end exclusive); ``score``: float32 [batch], the model's
      confidence in each, in [0, 1] (the mean p_inside over the segment; a
      segment-scoring comparator's own score); ``probs``: float32 [batch, len_ref, 4]
      (aligned with ``reference``; 0.25 each at steps past a reference's length); ``loss_c``:
      float32 [batch] (see `run`); ``attention``: float32 [batch, len_ref, heads],
      H^matt (0 past a reference's length).

    Raises:
      ValueError: a wrong feature dimension or shape, a length below 1 or beyond its
        array, a query longer than the largest query bucket or a reference longer
        than the largest reference bucket, non-finite values at valid steps.
    """
    query = _features("query", query, self.feature_dim, cast=False)
    reference = _features("reference", reference, self.feature_dim, cast=False)
    batch = query.shape[0]
    if reference.shape[0] != batch:
      raise ValueError(f"query and reference batch sizes differ: {batch} and "
                       f"{reference.shape[0]}")
    if batch < 1:
      raise ValueError("the batch is empty")
    query_lengths = _lengths("query_lengths", query_lengths, batch, query.shape[1])  # [batch]
    reference_lengths = _lengths("reference_lengths", reference_lengths, batch,
                                 reference.shape[1])  # [batch]
    len_query = bucket_for(int(query_lengths.max()), self.query_buckets, "query", _TRAINED_ON)
    len_ref = bucket_for(int(reference_lengths.max()), self.reference_buckets, "reference",
                         _TRAINED_ON)
    query_mask = np.arange(len_query)[None, :] < query_lengths[:, None]  # [batch, len_query]
    reference_mask = np.arange(len_ref)[None, :] < reference_lengths[:, None]  # [batch, len_ref]
    padded_query = _padded("query", query, query_mask)  # [batch, len_query, D]
    padded_reference = _padded("reference", reference, reference_mask)  # [batch, len_ref, D]
    out = self.run(padded_query, query_mask, padded_reference, reference_mask)
    probs = np.full((batch, reference.shape[1], len(CHANNELS)), PADDING_PROB, np.float32)
    kept = min(len_ref, reference.shape[1])
    probs[:, :kept] = out["probs"][:, :kept]  # [batch, len_ref, 4]
    heads = out["attention"].shape[-1]
    attention = np.zeros((batch, reference.shape[1], heads), np.float32)
    attention[:, :kept] = out["attention"][:, :kept]  # [batch, len_ref, heads]
    if "score" in out:
      score = out["score"]
    else:  # Exports written before the score output: the mean p_inside, computed here.
      inside = np.arange(probs.shape[1])[None, :] >= out["segments"][:, :1]
      inside &= np.arange(probs.shape[1])[None, :] < out["segments"][:, 1:]  # [batch, len_ref]
      score = ((probs[..., CHANNELS.index("inside")] * inside).sum(axis=1)
               / np.maximum(inside.sum(axis=1), 1)).astype(np.float32)
    return {"segments": out["segments"], "score": score, "probs": probs,
            "loss_c": out["loss_c"], "attention": attention}


def _features(name: str, x: Any, dim: int, cast: bool = True) -> np.ndarray:
  """``x`` as a [batch, length, dim] array (float32 when ``cast``), or ValueError."""
  x = np.asarray(x)
  if x.ndim != 3:
    raise ValueError(f"{name} must be [batch, length, {dim}] features, got shape {x.shape}")
  if x.shape[2] != dim:
    raise ValueError(f"{name} has feature dimension {x.shape[2]}, but the model was trained on "
                     f"{dim}-dimensional features")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{name} must hold numbers, got dtype {x.dtype}")
  return x.astype(np.float32) if cast else x


def _prefix_mask(name: str, mask: Any, shape: tuple[int, int]) -> np.ndarray:
  """``mask`` as bool ``shape``, True on a prefix of each row, or ValueError."""
  mask = np.asarray(mask)
  if mask.shape != shape:
    raise ValueError(f"{name} must have shape {shape}, got {mask.shape}")
  if mask.dtype != bool:
    raise ValueError(f"{name} must be bool, got dtype {mask.dtype}")
  counts = mask.sum(axis=1)  # [batch]
  if not np.array_equal(mask, np.arange(shape[1])[None, :] < counts[:, None]):
    row = int(np.flatnonzero((mask != (np.arange(shape[1])[None, :] < counts[:, None]))
                             .any(axis=1))[0])
    raise ValueError(f"{name}: the valid steps of each row must come first (row {row} is not a "
                     "prefix mask)")
  return mask


def _lengths(name: str, lengths: Any, batch: int, limit: int) -> np.ndarray:
  """``lengths`` as int64 [batch], each in ``[1, limit]``, or ValueError."""
  lengths = np.asarray(lengths)
  if lengths.shape != (batch,):
    raise ValueError(f"{name} must have shape ({batch},), got {lengths.shape}")
  if not np.issubdtype(lengths.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got dtype {lengths.dtype}")
  lengths = lengths.astype(np.int64)
  bad = np.flatnonzero((lengths < 1) | (lengths > limit))
  if bad.size:
    row = int(bad[0])
    what = "below 1" if lengths[row] < 1 else f"longer than the given array ({limit} steps)"
    raise ValueError(f"{name}[{row}] = {int(lengths[row])} is {what}; each length must lie in "
                     f"[1, {limit}] ({bad.size} bad rows)")
  return lengths


def _padded(name: str, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """``x`` cut or zero-padded to ``mask``'s length, zeros outside ``mask``; float32."""
  batch, length = mask.shape
  out = np.zeros((batch, length, x.shape[2]), np.float32)  # [batch, length, D]
  kept = min(length, x.shape[1])
  out[:, :kept] = np.where(mask[:, :kept, None], x[:, :kept], 0)
  if not np.isfinite(out).all():
    row = int(np.flatnonzero(~np.isfinite(out).all(axis=(1, 2)))[0])
    raise ValueError(f"{name}[{row}] holds non-finite values at valid steps")
  return out


def _read_metadata(directory: str) -> dict[str, Any]:
  """model.json of an export directory, checked for format, version and fields."""
  if not os.path.exists(directory):
    raise ValueError(f"exported model {directory} does not exist")
  if not os.path.isdir(directory):
    raise ValueError(f"exported model {directory} is not a directory")
  path = os.path.join(directory, MODEL_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{directory} is not an exported vreloc_jax model (no {MODEL_FILE}); "
                     "write one with python -m vreloc_jax.export")
  try:
    with open(path, "r", encoding="utf-8") as f:
      metadata = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is corrupt (not readable JSON: {e})") from None
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
    raise ValueError(f"{path} is not a vreloc_jax exported model (format {found!r}, expected "
                     f"{FORMAT!r})")
  version = metadata.get("format_version")
  if version != FORMAT_VERSION:
    raise ValueError(f"{path} has format version {version!r}; this loader reads version "
                     f"{FORMAT_VERSION} only (re-export the model, or use the vreloc_jax "
                     "version that wrote it)")
  missing = [k for k in _REQUIRED if k not in metadata]
  if missing:
    raise ValueError(f"{path} is corrupt: it lacks {', '.join(missing)}")
  return metadata


def _check_files(directory: str, metadata: dict[str, Any]) -> None:
  """Every file model.json lists is there, with its recorded size and SHA-256."""
  files = metadata["files"]
  if not isinstance(files, dict) or PARAMS_FILE not in files:
    raise ValueError(f"{os.path.join(directory, MODEL_FILE)} is corrupt: its file list does not "
                     f"name {PARAMS_FILE}")
  for name, record in sorted(files.items()):
    path = os.path.join(directory, name)
    if not isinstance(record, dict):
      raise ValueError(f"{os.path.join(directory, MODEL_FILE)} is corrupt: bad record for {name}")
    if os.path.basename(name) != name or not os.path.isfile(path):
      raise ValueError(f"{directory}: file {name} is missing")
    size = os.path.getsize(path)
    if size != record.get("bytes"):
      raise ValueError(f"{path} is corrupt: {size} bytes, {record.get('bytes')} expected")
    if sha256_file(path) != record.get("sha256"):
      raise ValueError(f"{path} is corrupt: its SHA-256 differs from the one in {MODEL_FILE}")


def _read_params(directory: str, metadata: dict[str, Any]) -> dict[str, np.ndarray]:
  """params.npz, checked against the names, shapes and dtypes model.json lists."""
  path = os.path.join(directory, PARAMS_FILE)
  expected = metadata["params"].get("arrays", {})
  try:
    with np.load(path, allow_pickle=False) as npz:
      params = {name: npz[name] for name in npz.files}
  except Exception as e:  # A zip or npy error: the file is not what was written.
    raise ValueError(f"{path} is corrupt ({type(e).__name__}: {e})") from None
  if set(params) != set(expected):
    raise ValueError(f"{path} does not hold the parameters {MODEL_FILE} lists (missing: "
                     f"{sorted(set(expected) - set(params))[:3]}, unexpected: "
                     f"{sorted(set(params) - set(expected))[:3]})")
  for name, spec in expected.items():
    if list(params[name].shape) != list(spec["shape"]) or str(params[name].dtype) != spec["dtype"]:
      found = f"{params[name].dtype}{list(params[name].shape)}"
      raise ValueError(f"{path}: parameter {name} is {found}, {spec['dtype']}{spec['shape']} "
                       "expected")
  return params


def _read_programs(directory: str, metadata: dict[str, Any]
                   ) -> list[tuple[ProgramFile, jax_export.Exported]]:
  """The exported programs, deserialized, checked to run on this machine's platform."""
  platform = jax_export.default_export_platform()
  programs = []
  for record in metadata["programs"]:
    program = ProgramFile(file=record["file"],
                      query_length=tuple(record["query_length"]),  # type: ignore[arg-type]
                      reference_length=tuple(record["reference_length"]))  # type: ignore[arg-type]
    path = os.path.join(directory, program.file)
    if program.file not in metadata["files"]:
      raise ValueError(f"{os.path.join(directory, MODEL_FILE)} is corrupt: program "
                       f"{program.file} is not among its files")
    with open(path, "rb") as f:
      blob = f.read()
    try:
      exp = jax_export.deserialize(bytearray(blob))
    except Exception as e:  # Unsupported calling convention, bad flatbuffer, …
      raise ValueError(f"{path} cannot be read by jax {jax.__version__} (exported with jax "
                       f"{metadata.get('jax_version')}): {type(e).__name__}: {e}") from None
    if platform not in exp.platforms:
      raise ValueError(f"{path} was exported for {', '.join(exp.platforms)}, not for this "
                       f"machine's platform {platform!r}; re-export with "
                       f"--platforms={','.join((*exp.platforms, platform))}")
    programs.append((program, exp))
  if not programs:
    raise ValueError(f"{os.path.join(directory, MODEL_FILE)} is corrupt: it lists no program")
  return programs


def load(directory: str | os.PathLike[str]) -> ExportedModel:
  """Loads an exported model (see the module docstring), checking every file first.

  Raises:
    ValueError: the directory or a file of it is missing or corrupt, the format
      version is not one this loader reads, or no program was exported for this
      machine's platform.
  """
  directory = os.fspath(directory)
  metadata = _read_metadata(directory)
  _check_files(directory, metadata)
  try:
    return ExportedModel(directory, metadata, _read_params(directory, metadata),
                         _read_programs(directory, metadata))
  except (KeyError, TypeError) as e:
    raise ValueError(f"{os.path.join(directory, MODEL_FILE)} is corrupt ({type(e).__name__}: "
                     f"{e})") from None
