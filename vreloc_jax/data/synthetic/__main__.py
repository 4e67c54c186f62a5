"""Command line of the synthetic benchmark generator (see the package docstring)."""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags

from vreloc_jax import cli
from vreloc_jax.data.synthetic import statistics
from vreloc_jax.data.synthetic import writer

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags."""
  flags.DEFINE_string("out", None, "Directory to write the synthetic benchmark into.")
  flags.DEFINE_integer("seed", 0, "Seed of everything generated.")
  flags.DEFINE_float("scale", 1.0, "Fraction of the real benchmark's entry counts.")
  flags.DEFINE_string("splits_from", None,
                      "A real benchmark directory: keep its splits and length.json, "
                      "synthesize only the features.")
  flags.DEFINE_bool("overwrite", False, "Replace a different dataset already at --out.")
  flags.DEFINE_bool("positive_control", False,
                    "Generate the weak objective's positive control (POSITIVE_CONTROL).")
  flags.DEFINE_string("measure", None, "Print the statistics of a benchmark directory and exit.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  if FLAGS.measure:
    statistics.print_statistics(FLAGS.measure)
    return
  if not FLAGS.out:
    raise app.UsageError("--out is required (or --measure=DIR).")
  with cli.one_line_errors("vreloc_jax.data.synthetic"):
    summary = writer.generate(FLAGS.out, seed=FLAGS.seed, scale=FLAGS.scale,
                              splits_from=FLAGS.splits_from, overwrite=FLAGS.overwrite,
                              params=writer.POSITIVE_CONTROL if FLAGS.positive_control else None)
  if summary.get("cached"):
    print(f"{FLAGS.out}: already generated (seed {summary['seed']}, scale {summary['scale']}).")
    return
  for split, s in summary["splits"].items():
    print(f"{split:5s}: {s['entries']:5d} entries, {s['videos']:5d} videos, {s['classes']:3d} classes")
  print(f"{summary['num_features']} features, {summary['feature_file_bytes'] / 2**20:.1f} MiB "
        f"({writer.HDF5_NAME}), {summary['seconds']:.1f} s -> {FLAGS.out}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "vreloc_jax.data.synthetic")
