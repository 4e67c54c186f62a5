"""Runs a short training in a fresh process and saves its final parameters.

Used by test_train.py to compare runs on 1 device, 4 devices and 2 processes:

  python tests/training_worker.py DATA_DIR WORKDIR SUPERVISION OUT.npz [--config.x=y ...]

Set XLA_FLAGS=--xla_force_host_platform_device_count=N for N CPU devices, and
VRELOC_COORDINATOR / VRELOC_NUM_PROCESSES / VRELOC_PROCESS_ID for several processes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests import test_train  # noqa: E402
from vreloc_jax import checkpoints, distributed, sharding, train  # noqa: E402


def main(data_dir, workdir, supervision, out):
  distributed.initialize_distributed()
  config = test_train.tiny_config(supervision, data_dir)
  train.train_and_evaluate(config, workdir)
  runner = train.Runner(config, sharding.make_mesh(), test_train.FEATURE_DIM)
  manager = checkpoints.manager(workdir, read_only=True)
  state = checkpoints.restore(manager, "latest", runner.abstract_state())
  flat = {jax.tree_util.keystr(k): np.asarray(jax.device_get(v))
          for k, v in jax.tree_util.tree_leaves_with_path(state["params"])}
  if jax.process_index() == 0:
    np.savez(out, **flat)
  print("devices", jax.device_count(), "processes", jax.process_count())


if __name__ == "__main__":
  main(*sys.argv[1:5])
