"""Compiling a run's programs: XLA's options, what a run will compile, compiling it ahead.

A run compiles a train program and an eval program for every (query, reference)
bucket it meets, and each takes seconds (WORKSPACE.md, "Performance"). Two levers:

* `compiler_options`: on CPU, LLVM's optimization level (``compile.cpu_optimization_level``;
  unset by default: XLA's own, 3). A lower level compiles faster, but rounds differently,
  so a whole training run follows another trajectory: not the default.
* `Program`: a ``jax.jit`` function whose executables for argument signatures known
  in advance (``compile_ahead``; `compile_plan` lists a run's) are compiled in one
  background thread, while the run initializes its parameters or trains on buckets
  already compiled. A call whose signature was compiled ahead runs that executable
  (waiting for it if it is still compiling); any other call goes through the
  jit-compiled function as before. The executables are the ones the jit-compiled
  function would build (same function, same options), so results do not change.

A call's signature is its arguments' tree structure and, per leaf, shape, dtype, weak
type and sharding: what an ahead-of-time compiled executable insists on. The
background thread is shared by every `Program` of the process and runs one
compilation at a time, in the order they were asked for.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable, Hashable, Sequence

import jax
import ml_collections
import numpy as np

from vreloc_jax.data import batching

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def compiler_options(config: ml_collections.ConfigDict, platform: str) -> dict[str, Any] | None:
  """XLA compiler options of a run's programs on ``platform`` ("cpu", "gpu", "tpu").

  On CPU, ``xla_backend_optimization_level`` when ``compile.cpu_optimization_level`` is
  set (0-3, `configuration.validate`); unset (None, the default), no option: XLA's own
  level, 3, or what ``XLA_FLAGS`` says. An option overrides ``XLA_FLAGS``. Elsewhere none
  (XLA's defaults).
  """
  if platform != "cpu":
    return None
  level = (config.get("compile") or {}).get("cpu_optimization_level")
  if level is None:
    return None
  return {"xla_backend_optimization_level": int(level)}


def compile_plan(config: ml_collections.ConfigDict, bench: Any,
                 batches: batching.TrainBatches, first_step: int) -> list[tuple[str, dict]]:
  """The programs a run needs from ``first_step`` on, in the order it first needs them.

  Args:
    config: the run's configuration.
    bench: its `vreloc_jax.data.benchmark.Benchmark`.
    batches: its training stream.
    first_step: the step it starts (or resumes) from.

  Returns:
    ("train" or "eval", `batching.batch_layout`) of each distinct global batch shape:
    the train batches of the remaining steps, the val batches at the first evaluation
    to come, the test batches at the end.
  """
  num_steps, every = config.train.num_steps, config.train.eval_every
  dim = bench.feature_dim
  first_use: dict[tuple, tuple[float, str, dict]] = {}

  def note(when: float, kind: str, layout: dict) -> None:
    key = (kind, tuple(sorted((k, shape, np.dtype(t).str) for k, (shape, t) in layout.items())))
    first_use.setdefault(key, (when, kind, layout))

  for step in range(first_step, num_steps):  # the batch of step + 1
    note(step, "train", batches.layout(step, dim))
  next_eval = min(num_steps, (first_step // every + 1) * every)
  evaluations = [("val", next_eval - 0.5)] if first_step < num_steps else []
  for split, when in evaluations + [("test", num_steps)]:
    for layout in batching.eval_layouts(bench.pairs[split], config.eval.batch_size,
                                        config.data.query_buckets,
                                        config.data.reference_buckets, dim):
      note(when, "eval", layout)
  return [(kind, layout) for _, kind, layout in sorted(first_use.values(), key=lambda v: v[0])]


def signature(args: Sequence[Any]) -> Hashable:
  """What an executable compiled for ``args`` requires of a call's arguments.

  Args:
    args: positional arguments: arrays (``jax.Array``) or ``jax.ShapeDtypeStruct``
      (with their sharding), in any pytree.
  """
  leaves, treedef = jax.tree.flatten(tuple(args))
  return treedef, tuple((tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)),
                         x.sharding) for x in leaves)


def _background() -> concurrent.futures.ThreadPoolExecutor:
  global _executor
  with _executor_lock:
    if _executor is None:
      _executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                        thread_name_prefix="vreloc-compile")
    return _executor


class Program:
  """A ``jax.jit`` function with executables compiled ahead for chosen signatures.

  Attribute access other than the methods below (``lower``, ``trace``, ...) goes to
  the jit-compiled function.
  """

  def __init__(self, jitted: Callable[..., Any]):
    self._jitted = jitted
    self._ahead: dict[Hashable, concurrent.futures.Future] = {}
    self._lock = threading.Lock()

  def __getattr__(self, name: str) -> Any:
    if name.startswith("_"):  # not set yet (a copy being made): no delegation
      raise AttributeError(name)
    return getattr(self._jitted, name)

  def __call__(self, *args: Any) -> Any:
    with self._lock:
      future = self._ahead.get(signature(args)) if self._ahead else None
    if future is None or future.cancelled():
      return self._jitted(*args)
    return future.result()(*args)  # Raises what compiling raised, as the jit call would.

  def compile_ahead(self, *abstract_args: Any) -> concurrent.futures.Future:
    """Starts compiling for the signature of ``abstract_args`` (once per signature).

    Args:
      abstract_args: the positional arguments of a future call, as
        ``jax.ShapeDtypeStruct`` leaves with their shardings (or arrays).

    Returns:
      The future of the compiled executable.
    """
    key = signature(abstract_args)
    with self._lock:
      if key not in self._ahead or self._ahead[key].cancelled():
        self._ahead[key] = _background().submit(
            lambda: self._jitted.lower(*abstract_args).compile())
      return self._ahead[key]

  def cancel(self) -> None:
    """Drops the compilations not yet started (one already running finishes)."""
    with self._lock:
      for future in self._ahead.values():
        future.cancel()
