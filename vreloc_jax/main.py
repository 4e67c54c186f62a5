"""Trains and evaluates a re-localization model.

  python -m vreloc_jax.main --config=configs/weak.py --workdir=/tmp/weak

With no data configured, the synthetic benchmark is generated once (cached)
and used; ``--config.data.dir=DIR`` (and ``--config.data.features=FILE``)
points at the real one. A rerun with the same workdir resumes.

Exit status: 0 when done; 75 (`preemption.PREEMPTED_EXIT_CODE`) when SIGTERM or SIGINT
stopped the run after it saved a checkpoint (rerun the same command to resume; the
launchers in launch/ requeue on it); 1 with a one-line message for bad input, a work
directory that another run holds (W/.lock, `workdir.claim`) or a diverged run. A run
that fails before its first step leaves no work directory behind (if it created it).
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vreloc_jax import cli
from vreloc_jax import distributed
from vreloc_jax import preemption
from vreloc_jax import train

PROGRAM = "vreloc_jax.main"
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
config_flags.DEFINE_config_file("config", None, "Training configuration (a configs/*.py file).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a one-line error for a config field that does not exist."""
  try:
    argv = FLAGS(argv)
    FLAGS.config.keys()  # ml_collections reports a config file it could not load only here.
    return argv
  except OSError as e:
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    raise cli.error(PROGRAM, f"cannot load the --config file: {reason}") from None
  except flags.Error as e:  # A bad value, a missing required flag, an unknown flag, a config
    raise cli.error(PROGRAM, e) from None  # file that raised (its last line, `cli.one_line`).
  except (AttributeError, KeyError) as e:  # ml_collections, for --config.<unknown>=…
    if "get_config" in str(e):  # A helper module of configs/, not a configuration.
      raise cli.error(PROGRAM, "the --config file has no get_config(): it is not a "
                      "configuration (configs/weak.py, full.py, cgbm.py, sst.py and "
                      "video_level.py are)") from None
    field = next((a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")
                  and not _config_has(a.split("=", 1)[0][len("--config."):])), None)
    raise cli.error(PROGRAM, f"unknown config field {field or e} (see the configs/*.py file "
                    "given with --config for the fields)") from None


def _config_has(path: str) -> bool:
  node = FLAGS["config"].value
  for part in path.split("."):
    if node is None or not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  try:
    # Handlers first: a scheduler's SIGTERM while the cluster forms or the data loads
    # also ends in exit status 75 (requeued), not in the default 143. Bad input or a
    # diverged run: say what, no traceback.
    with cli.one_line_errors(PROGRAM, (ValueError, FloatingPointError)), \
         preemption.StopSignals() as stop:
      distributed.start_process()
      logging.info("JAX process %d/%d, local devices %s", jax.process_index(),
                   jax.process_count(), jax.local_devices())
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir, stop)
  except preemption.Preempted as e:  # Saved, then stopped on a signal: the launcher reruns it.
    print(f"vreloc_jax.main: {e} (exit status {preemption.PREEMPTED_EXIT_CODE})",
          file=sys.stderr, flush=True)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  cli.run(main, PROGRAM, parse_flags)
