"""Data parallelism over every device: one `Mesh`, batch on ``data``, parameters replicated.

The current JAX way (``jax.pmap`` is in maintenance mode): a 1-D mesh of all
devices of all processes with axis ``data``; batches are `NamedSharding`-ed
along their leading axis and parameters are replicated, so one ``jax.jit``
program runs data-parallel and XLA inserts the gradient all-reduce. (Joining a
multi-process job: `vreloc_jax.distributed`.)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, P())


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
