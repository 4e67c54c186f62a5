"""Evaluates a saved checkpoint of a work directory on a split's fixed pairs.

  python -m vreloc_jax.evaluate --workdir=W --checkpoint=best --split=test
  python -m vreloc_jax.evaluate --model=DIR --split=test [--output=FILE] [--data_dir=D]

``--checkpoint`` is ``best`` (by val mAP_avg), ``latest``, ``min_loss_c`` (the
lowest val co-attention loss: chosen without annotations) or a step number;
``--inference`` scores with another inference rule than the run's (e.g.
``query_length`` for a run trained with the paper's weak rule).
Writes ``W/results/<split>_step<k>.json`` and its predictions file (or
``--output``) and prints the table row. Works on any number of devices.

``--model`` scores a directory written by ``vreloc_jax.export`` instead, with the
loader alone (`vreloc_jax.evaluation.score_export`; one device), on the data the run
used (or ``--data_dir``); with ``--output`` it writes the same results and
predictions files as a checkpoint's evaluation.
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax

from vreloc_jax import checkpoints
from vreloc_jax import cli
from vreloc_jax import configuration
from vreloc_jax import distributed
from vreloc_jax import evaluation
from vreloc_jax import family
from vreloc_jax import metrics
from vreloc_jax import sharding
from vreloc_jax import train
from vreloc_jax import workdir as workdir_lib
from vreloc_jax.data import benchmark

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags; defined only when run as a program (the module is importable)."""
  flags.DEFINE_string("workdir", None, "A work directory written by vreloc_jax.main.")
  flags.DEFINE_string("checkpoint", "best", "'best', 'latest', 'min_loss_c' or a step number.")
  flags.DEFINE_enum("split", "test", ["val", "test"], "Split to evaluate on.")
  flags.DEFINE_string("output", None, "Results file (default W/results/<split>_step<k>.json, "
                      "or <split>_step<k>_<inference>.json with --inference).")
  flags.DEFINE_enum("inference", None, list(family.INFERENCES),
                    "Score with this inference rule instead of the run's eval.inference.")
  flags.DEFINE_string("model", None, "An export directory (python -m vreloc_jax.export) to "
                      "score instead of a checkpoint of --workdir.")
  flags.DEFINE_string("data_dir", None, "With --model: the benchmark directory (default: the "
                      "one the run used).")
  flags.register_multi_flags_validator(
      ["workdir", "model"], lambda f: (f["workdir"] is None) != (f["model"] is None),
      message="pass exactly one of --workdir and --model")


def score_checkpoint(workdir: str, checkpoint: str | int, split: str,
                     output: str | None = None, inference: str | None = None) -> dict:
  """Restores ``checkpoint`` of ``workdir`` and scores it on ``split``.

  Args:
    workdir: a work directory written by `vreloc_jax.main`.
    checkpoint: a selection (`checkpoints.SELECTIONS`) or a step.
    split: "val" or "test".
    output: the results file; by default under ``workdir/results``.
    inference: an inference rule (`family.INFERENCES`) replacing the run's own.
  """
  config = workdir_lib.load_config(workdir)
  suffix = None
  if inference is not None and inference != config.eval.inference:
    config.eval.inference = inference
    suffix = inference
  mesh = sharding.make_mesh()
  configuration.validate(config, devices=mesh.size)
  bench = benchmark.load_benchmark(config, split_names=(split,))
  runner = train.Runner(config, mesh, bench.feature_dim)
  manager = checkpoints.manager(workdir, read_only=True)
  try:  # Closed on every path: a step never saved must not leave its threads behind.
    step = checkpoints.resolve_step(manager, checkpoint)
    state = checkpoints.restore(manager, step, runner.abstract_state())
  finally:
    manager.close()
  output = output or workdir_lib.evaluation_file(workdir, split, step, suffix)
  return evaluation.score_split(
      runner, state["params"], bench, split, output,
      evaluation.results_record(config, runner.family.inference, step, str(checkpoint)))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  with cli.one_line_errors("vreloc_jax.evaluate"):
    if FLAGS.model:
      if FLAGS.inference:
        raise ValueError("--inference cannot change an exported model's rule (it is part of "
                         "the exported program); export a run with that eval.inference instead")
      distributed.quiet_library_logs()
      results = evaluation.score_export(FLAGS.model, FLAGS.split, FLAGS.output, FLAGS.data_dir)
    else:
      distributed.start_process()
      results = score_checkpoint(FLAGS.workdir, FLAGS.checkpoint, FLAGS.split, FLAGS.output,
                                 FLAGS.inference)
  if jax.process_index() == 0:
    name = f"checkpoint {results['checkpoint_step']} ({FLAGS.split})"
    print(metrics.format_table({name: results}))


if __name__ == "__main__":
  define_flags()
  cli.run(main, "vreloc_jax.evaluate")
