"""Train and eval step throughput of the full model on one accelerator, per LSTM implementation.

  python benchmarks/bench_gpu.py [--config=configs/full.py] [--batches=128,256,512,1024] \
    [--len_ref=300] [--len_query=32] [--implementations=scan,cudnn] [--steps=20] \
    [--peak_tflops=X] [--json=FILE]

For each LSTM implementation (``model.lstm_implementation``, `vreloc_jax.relocalizer.recurrence`;
"cudnn" only where the default backend is CUDA, else skipped with a note) and each batch
size, on the first device only: the project's jit-compiled ``train.train_step`` (fwd +
bwd + Adam, through ``train.Runner``) and ``train.eval_step`` at one (query, reference)
shape, random features, all lengths full (``--ragged``: reference lengths drawn in
[len_ref / 2, len_ref]). Prints compile seconds, steps/s, examples/s, achieved model
TFLOP/s and its fraction of the device's peak.

FLOPs. ``Compiled.cost_analysis()["flops"]`` is printed ("xla GF") but is not the
measure: it counts a while loop's body once and a custom call (cuDNN's LSTM) as nothing.
The measure ("model GF") is `benchmarks.flops.model_flops`: the matrix products of the
step's jaxpr, counted alike for both implementations (elementwise work is not counted).

Peak: ``--peak_tflops``, else the `PEAKS` entry whose name is in
``jax.devices()[0].device_kind``: dense (no sparsity) vendor figures, for the precision
the model's matmuls run in: bfloat16 for ``--config.model.dtype=bfloat16`` and on TPU;
float32 on GPU is TF32 tensor-core math at JAX's default matmul precision (cuDNN's
LSTM too), plain FP32 with ``JAX_DEFAULT_MATMUL_PRECISION=highest`` in the environment.
On a CPU (float32) the peak is measured: `benchmarks.flops.matmul_gflops`, XLA's own
large matrix product on all cores.

A smoke check that runs anywhere (meaningless numbers; CPU: scan only):

  python benchmarks/bench_gpu.py --batches=8 --len_ref=32 --steps=2
"""

from __future__ import annotations

import copy
import json
import pathlib
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.flops import PEAKS, matmul_gflops, model_flops  # noqa: E402
from vreloc_jax import sharding, train  # noqa: E402
from vreloc_jax.relocalizer import recurrence  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", str(REPO / "configs" / "full.py"),
                                "Configuration (its model; the paper's full model by default).")
flags.DEFINE_list("batches", ["128", "256", "512", "1024"], "Batch sizes.")
flags.DEFINE_integer("len_ref", 300, "Reference length (the largest reference bucket).")
flags.DEFINE_integer("len_query", 32, "Query length (the query bucket).")
flags.DEFINE_integer("dim", 500, "Feature dimension (the benchmark's C3D PCA features).")
flags.DEFINE_list("implementations", ["scan", "cudnn"],
                  "model.lstm_implementation values to measure (cudnn: CUDA only).")
flags.DEFINE_integer("steps", 20, "Timed steps per (implementation, batch, mode).")
flags.DEFINE_integer("warmup", 2, "Untimed steps before them (the first compiles).")
flags.DEFINE_bool("ragged", False, "Reference lengths drawn in [len_ref / 2, len_ref].")
flags.DEFINE_float("peak_tflops", None, "The device's peak TFLOP/s for the model's precision "
                   "(default: PEAKS by device kind).")
flags.DEFINE_string("json", None, "Also writes every measurement to this JSON file.")

def peak_tflops(device: Any, dtype: str) -> tuple[float | None, str]:
  """(peak TFLOP/s or None, what it is) for the model's dtype on ``device``."""
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops, "--peak_tflops"
  kind = device.device_kind
  if device.platform == "tpu" or dtype == "bfloat16":
    precision = "bfloat16"  # TPUs multiply float32 in bfloat16 passes at default precision.
  elif str(jax.config.jax_default_matmul_precision).lower() in ("highest", "float32"):
    precision = "float32"
  else:
    precision = "tf32"
  for name, peaks in PEAKS:
    if name.lower() in kind.lower() and precision in peaks:
      return peaks[precision], f"{name} dense {precision}"
  if device.platform == "cpu" and dtype == "float32":
    return matmul_gflops() / 1e3, "measured: XLA's float32 2048^3 matrix product on this CPU"
  return None, f"unknown for {kind!r} ({precision}): pass --peak_tflops"


def _xla_flops(compiled: Any) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


# ----------------------------------------------------------------- measurement


def make_batch(rng: np.random.Generator, batch: int, config: ml_collections.ConfigDict
               ) -> dict[str, np.ndarray]:
  len_ref, len_query, dim = FLAGS.len_ref, FLAGS.len_query, FLAGS.dim
  if FLAGS.ragged:
    lengths = rng.integers(max(len_ref // 2, 2), len_ref + 1, size=batch).astype(np.int32)
  else:
    lengths = np.full((batch,), len_ref, np.int32)
  out = {
      "query": rng.normal(size=(batch, len_query, dim)).astype(np.float32),
      "query_mask": np.ones((batch, len_query), bool),
      "query_length": np.full((batch,), len_query, np.int32),
      "reference": rng.normal(size=(batch, len_ref, dim)).astype(np.float32),
      "reference_mask": np.arange(len_ref)[None, :] < lengths[:, None],
      "reference_length": lengths,
      "segment": np.stack([lengths // 4, lengths // 2], axis=1).astype(np.int32),
      "example_mask": np.ones((batch,), bool),
  }
  if config.loss.cross_entropy_weight == 0:
    out.pop("segment")
  return out


def measure(compiled: Any, call: Any, steps: int, warmup: int) -> float:
  """Seconds per step: ``warmup`` untimed calls, then ``steps`` timed (one sync at the end)."""
  for _ in range(warmup):
    jax.block_until_ready(call(compiled))
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = call(compiled)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def run_one(config: ml_collections.ConfigDict, mesh: Any, implementation: str, batch_size: int,
            peak: float | None) -> list[dict[str, Any]]:
  """Train and eval rows for one implementation and batch size."""
  config = copy.deepcopy(config)
  config.model.lstm_implementation = implementation
  runner = train.Runner(config, mesh, FLAGS.dim)
  batch = sharding.to_global(make_batch(np.random.default_rng(0), batch_size, config), mesh)
  rng = sharding.replicate(jax.random.key_data(jax.random.key(1)), mesh)
  holder = {"state": runner.init(jax.random.key(0))}
  rows = []
  for mode in ("train", "eval"):
    start = time.perf_counter()
    if mode == "train":
      traced = runner.train_step.trace(holder["state"], batch, rng)
    else:
      traced = runner.eval_step.trace(holder["state"]["params"], batch)
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    flops, notes = model_flops(traced.jaxpr)

    if mode == "train":
      def call(c):  # the state is donated: carry it
        holder["state"], metrics = c(holder["state"], batch, rng)
        return metrics
    else:
      def call(c):
        return c(holder["state"]["params"], batch)
    step_s = measure(compiled, call, FLAGS.steps, FLAGS.warmup)
    achieved = flops / step_s / 1e12
    rows.append({
        "implementation": implementation, "batch": batch_size, "mode": mode,
        "compile_s": compile_s, "step_s": step_s, "steps_per_s": 1.0 / step_s,
        "examples_per_s": batch_size / step_s, "model_gflop_per_step": flops / 1e9,
        "xla_gflop_per_step": (lambda f: f and f / 1e9)(_xla_flops(compiled)),
        "achieved_tflops": achieved, "fraction_of_peak": achieved / peak if peak else None,
        "flop_notes": notes})
  return rows


def _fmt(x: float | None, spec: str) -> str:
  return format(x, spec) if x is not None else "-"


def main(argv):
  del argv
  config = FLAGS.config
  device = jax.devices()[0]
  mesh = jax.sharding.Mesh(np.asarray([device]), (sharding.DATA_AXIS,))
  dtype = config.model.dtype
  peak, peak_what = peak_tflops(device, dtype)
  implementations = []
  for name in FLAGS.implementations:
    if name == "cudnn" and not recurrence.cuda_backend():
      print(f"note: skipping cudnn: the default backend is {jax.default_backend()!r}, not CUDA")
      continue
    recurrence.resolve(name)  # an unknown name fails here
    implementations.append(name)
  print(f"jax {jax.__version__}, 1 of {jax.device_count()} x {device.device_kind} "
        f"({device.platform}); model dtype {dtype}; peak {_fmt(peak, '.4g')} TFLOP/s ({peak_what})")
  print(f"len_ref {FLAGS.len_ref}{' (ragged)' if FLAGS.ragged else ''}, len_query "
        f"{FLAGS.len_query}, dim {FLAGS.dim}; {FLAGS.steps} timed steps after {FLAGS.warmup}")
  print(f"{'impl':>5} {'mode':>5} {'batch':>5} {'compile s':>9} {'steps/s':>8} {'ex/s':>9} "
        f"{'model GF':>9} {'xla GF':>8} {'TFLOP/s':>8} {'% peak':>6}", flush=True)
  rows = []
  for implementation in implementations:
    for batch_size in (int(b) for b in FLAGS.batches):
      for row in run_one(config, mesh, implementation, batch_size, peak):
        rows.append(row)
        fraction = row["fraction_of_peak"]
        print(f"{implementation:>5} {row['mode']:>5} {batch_size:>5} {row['compile_s']:>9.1f} "
              f"{row['steps_per_s']:>8.2f} {row['examples_per_s']:>9.0f} "
              f"{row['model_gflop_per_step']:>9.1f} {_fmt(row['xla_gflop_per_step'], '8.1f')} "
              f"{row['achieved_tflops']:>8.2f} {_fmt(fraction and 100 * fraction, '6.1f')}",
              flush=True)
  notes = sorted({n for r in rows for n in r["flop_notes"]})
  print("model GF: matrix products of the step's jaxpr (benchmarks/flops.py)"
        + (f"; {', '.join(notes)}" if notes else "")
        + "; xla GF: Compiled.cost_analysis() (while bodies once, custom calls 0)")
  if FLAGS.json:
    record = {"jax_version": jax.__version__, "device_kind": device.device_kind,
              "platform": device.platform, "dtype": dtype, "peak_tflops": peak,
              "peak": peak_what, "len_ref": FLAGS.len_ref, "len_query": FLAGS.len_query,
              "dim": FLAGS.dim, "ragged": FLAGS.ragged, "steps": FLAGS.steps,
              "warmup": FLAGS.warmup, "rows": rows}
    pathlib.Path(FLAGS.json).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  app.run(main)
