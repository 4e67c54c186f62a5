"""Trains and evaluates a re-localization model.

  python -m vreloc_jax.main --config=configs/weak.py --workdir=/tmp/weak

With no data configured, the synthetic benchmark is generated once (cached)
and used; ``--config.data.dir=DIR`` (and ``--config.data.features=FILE``)
points at the real one. A rerun with the same workdir resumes.

Exit status: 0 when done; 75 (`sharding.PREEMPTED_EXIT_CODE`) when SIGTERM or SIGINT
stopped the run after it saved a checkpoint (rerun the same command to resume; the
launchers in launch/ requeue on it); 1 with a one-line message for bad input or a
diverged run.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vreloc_jax import sharding
from vreloc_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
config_flags.DEFINE_config_file("config", None, "Training configuration (a configs/*.py file).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  try:
    # Handlers first: a scheduler's SIGTERM while the cluster forms or the data loads
    # also ends in exit status 75 (requeued), not in the default 143.
    with train.StopSignals() as stop:
      sharding.start_process()
      logging.info("JAX process %d/%d, local devices %s", jax.process_index(),
                   jax.process_count(), jax.local_devices())
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir, stop)
  except train.Preempted as e:  # Saved, then stopped on a signal: the launcher reruns it.
    print(f"vreloc_jax.main: {e} (exit status {sharding.PREEMPTED_EXIT_CODE})", file=sys.stderr,
          flush=True)
    sys.exit(sharding.PREEMPTED_EXIT_CODE)
  except (ValueError, FloatingPointError) as e:  # Bad input or a diverged run: say what, no traceback.
    raise SystemExit(f"vreloc_jax.main: error: {e}") from None


if __name__ == "__main__":
  app.run(main)
