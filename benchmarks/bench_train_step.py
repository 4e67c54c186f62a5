"""Prints the speed of the jit-compiled train and eval steps, per reference bucket.

  python benchmarks/bench_train_step.py [--config=configs/weak.py] [--batch=128]

Random inputs of the benchmark's shapes (query bucket 32, feature dim 500) on
every device of this machine; times are after compilation, averaged over a few
steps, with the compile time printed beside them.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vreloc_jax import sharding, train  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/weak.py", "Configuration.")
flags.DEFINE_integer("batch", 128, "Global batch size.")
flags.DEFINE_integer("steps", 3, "Timed steps per bucket.")
flags.DEFINE_integer("dim", 500, "Feature dimension.")


def _batch(rng, batch, len_query, len_ref, dim):
  return {
      "query": rng.normal(size=(batch, len_query, dim)).astype(np.float32),
      "query_mask": np.ones((batch, len_query), bool),
      "query_length": np.full((batch,), len_query, np.int32),
      "reference": rng.normal(size=(batch, len_ref, dim)).astype(np.float32),
      "reference_mask": np.ones((batch, len_ref), bool),
      "reference_length": np.full((batch,), len_ref, np.int32),
      "segment": np.tile(np.array([[len_ref // 4, len_ref // 2]], np.int32), (batch, 1)),
      "example_mask": np.ones((batch,), bool),
  }


def main(argv):
  del argv
  config = FLAGS.config
  mesh = sharding.make_mesh()
  runner = train.Runner(config, mesh, FLAGS.dim)
  state = runner.init(jax.random.key(0))
  rng_data = sharding.replicate(jax.random.key_data(jax.random.key(1)), mesh)
  rng = np.random.default_rng(0)
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, batch {FLAGS.batch}, "
        f"{config.supervision} supervision, variant {config.variant}")
  print(f"{'len_ref':>8} {'compile s':>10} {'train step s':>13} {'steps/s':>8} {'eval step s':>12}")
  for len_ref in config.data.reference_buckets:
    batch = sharding.to_global(_batch(rng, FLAGS.batch, config.data.query_buckets[-1], len_ref,
                                      FLAGS.dim), mesh)
    if config.loss.cross_entropy_weight == 0:
      batch.pop("segment")
    start = time.perf_counter()
    state, metrics = runner.train_step(state, batch, rng_data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, metrics = runner.train_step(state, batch, rng_data)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / FLAGS.steps
    jax.block_until_ready(runner.eval_step(state["params"], batch))
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      out = runner.eval_step(state["params"], batch)
    jax.block_until_ready(out)
    eval_s = (time.perf_counter() - start) / FLAGS.steps
    print(f"{len_ref:>8} {compile_s:>10.1f} {step_s:>13.3f} {1 / step_s:>8.2f} {eval_s:>12.3f}",
          flush=True)


if __name__ == "__main__":
  app.run(main)
