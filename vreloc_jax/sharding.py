"""Data parallelism over every device: one `Mesh`, batch on ``data``, parameters replicated.

The current JAX way (``jax.pmap`` is in maintenance mode): a 1-D mesh of all
devices of all processes with axis ``data``; batches are `NamedSharding`-ed
along their leading axis and parameters are replicated, so one ``jax.jit``
program runs data-parallel and XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Joins a multi-process job when the environment describes one.

  Cluster launchers (SLURM, TPU pods, Kubernetes with JAX's env variables)
  are auto-detected by ``jax.distributed.initialize()``. For a hand-made
  job, set ``VRELOC_COORDINATOR`` (``host:port``), ``VRELOC_NUM_PROCESSES``
  and ``VRELOC_PROCESS_ID``. Does nothing for a single process.
  """
  coordinator = os.environ.get("VRELOC_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ["VRELOC_NUM_PROCESSES"]),
                               process_id=int(os.environ["VRELOC_PROCESS_ID"]))
  elif any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                                     "JAX_COORDINATOR_ADDRESS")):
    jax.distributed.initialize()


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  if global_batch_size % mesh.size:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the {mesh.size} "
                     "devices; choose a multiple")


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice into global arrays sharded on ``data``."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of host arrays, identical on every process, replicated on every device."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def quiet_library_logs() -> None:
  """Hides the INFO chatter of orbax (per-save/restore timings) from the console."""
  import logging as py_logging
  from absl import logging

  def keep(record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname

  logging.get_absl_handler().addFilter(keep)


def enable_compilation_cache(directory: str | None = None) -> None:
  """Keeps compiled programs on disk, so that reruns and resumed runs skip compiling.

  ``$JAX_COMPILATION_CACHE_DIR`` wins if set; else ``directory``; else
  ``~/.cache/vreloc_jax/xla``.
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  jax.config.update("jax_compilation_cache_dir",
                    directory or os.path.join(cache, "vreloc_jax", "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def start_process() -> None:
  """What every command-line program does first: quiet logs, compile cache, multi-host join."""
  quiet_library_logs()
  enable_compilation_cache()
  initialize_distributed()
