"""Throughput of the C3D feature extractor (vreloc_jax.features): clips/s and achieved TFLOP/s.

  python benchmarks/bench_c3d.py [--batches=1,4,16] [--steps=5] [--warmup=1] [--pca] \
    [--video=FILE] [--peak_tflops=X] [--json=FILE]

For each batch size (``--clip_batch`` of the extractor), the extractor's own jit-compiled
program (`vreloc_jax.features.extractor.Extractor.run_batch`: uint8 clips → mean → C3D →
fc7 → PCA with ``--pca``) on every device of this process (one on a one-GPU machine), with
random weights of the real network's shapes (the speed does not depend on their values)
and random clips already on the host: compile seconds, seconds per batch, clips/s and
achieved TFLOP/s (77.1 GFLOP a clip, `vreloc_jax.features.c3d.flops_per_clip`, plus the
PCA's 4.1 MFLOP; the same count as `benchmarks.flops.model_flops` of the program's jaxpr,
tests/test_c3d.py) with its share of the peak. ``--video`` also times the whole path on a
file: PyAV decoding, resizing and cropping in a thread beside the devices, clips every 8
frames, as ``python -m vreloc_jax.features`` runs.

Peak: ``--peak_tflops``, else `benchmarks.flops.PEAKS` for the device kind at the precision
the convolutions run in (float32 at JAX's default precision: TF32 tensor cores on NVIDIA
GPUs, ``JAX_DEFAULT_MATMUL_PRECISION=highest`` for true float32); on a CPU the measured rate
of XLA's float32 2048³ matrix product (`benchmarks.flops.matmul_gflops`).

On one GPU:  python benchmarks/bench_c3d.py --batches=16,32,64,128,256 --steps=10 --pca
On a CPU:    python benchmarks/bench_c3d.py --batches=1,4 --steps=2 --pca  (a few minutes)
Never time while another job shares the machine (benchmarks/README.md).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.flops import matmul_gflops, peak_for  # noqa: E402
from vreloc_jax.features import extractor as extractor_lib  # noqa: E402
from vreloc_jax.features import video  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("batches", ["1", "4", "16"], "Clips per batch (--clip_batch) to measure.")
flags.DEFINE_integer("steps", 5, "Timed batches per batch size.")
flags.DEFINE_integer("warmup", 1, "Untimed batches before them (the first compiles).")
flags.DEFINE_bool("pca", True, "Reduce to 500-d with a (random) PCA, as the benchmark's features.")
flags.DEFINE_string("video", None, "Also time decoding + extraction of this video file.")
flags.DEFINE_float("peak_tflops", None, "The devices' peak TFLOP/s (default: by device kind).")
flags.DEFINE_string("json", None, "Also write every measurement to this JSON file.")


def peak_tflops(device: Any) -> tuple[float | None, str]:
  """(peak TFLOP/s of one device or None, what it is)."""
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops, "--peak_tflops"
  if device.platform == "cpu":
    return matmul_gflops() / 1e3, "measured: XLA's float32 2048^3 matrix product on this CPU"
  if device.platform == "tpu":
    precision = "bfloat16"  # TPUs multiply float32 in bfloat16 passes at default precision.
  elif str(jax.config.jax_default_matmul_precision).lower() in ("highest", "float32"):
    precision = "float32"
  else:
    precision = "tf32"
  return peak_for(device.device_kind, precision)


def measure(extractor: extractor_lib.Extractor, steps: int, warmup: int) -> dict[str, float]:
  """Compile seconds and seconds per batch of ``extractor.run_batch`` on random clips."""
  shape = (extractor.clip_batch, 16, 112, 112, 3)
  clips = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
  start = time.perf_counter()
  jax.block_until_ready(extractor.run_batch(clips))
  compile_s = time.perf_counter() - start
  for _ in range(max(0, warmup - 1)):
    jax.block_until_ready(extractor.run_batch(clips))
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = extractor.run_batch(clips)
  jax.block_until_ready(out)
  return {"compile_s": compile_s, "s_per_batch": (time.perf_counter() - start) / steps}


def main(argv):
  del argv
  devices = jax.devices()
  peak, peak_what = peak_tflops(devices[0])
  total_peak = peak * len(devices) if peak else None
  print(f"jax {jax.__version__}, {len(devices)} x {devices[0].device_kind} "
        f"({devices[0].platform}); peak {total_peak and f'{total_peak:.4g}' or '-'} TFLOP/s "
        f"({peak_what}{f', x {len(devices)}' if len(devices) > 1 else ''}); "
        f"load average {os.getloadavg()[0]:.2f}")
  print(f"{'batch':>5} {'compile s':>9} {'s/batch':>8} {'clips/s':>8} {'GF/clip':>8} "
        f"{'TFLOP/s':>8} {'% peak':>6}", flush=True)
  rows = []
  pca = "random" if FLAGS.pca else None
  for batch in (int(b) for b in FLAGS.batches):
    extractor = extractor_lib.build("random", pca, None, batch)
    result = measure(extractor, FLAGS.steps, FLAGS.warmup)
    clips_per_s = batch / result["s_per_batch"]
    tflops = clips_per_s * extractor.flops_per_clip / 1e12
    row = {"batch": batch, **result, "clips_per_s": clips_per_s,
           "gflop_per_clip": extractor.flops_per_clip / 1e9, "achieved_tflops": tflops,
           "fraction_of_peak": tflops / total_peak if total_peak else None}
    rows.append(row)
    share = f"{100 * row['fraction_of_peak']:6.1f}" if total_peak else f"{'-':>6}"
    print(f"{batch:>5} {result['compile_s']:>9.1f} {result['s_per_batch']:>8.3f} "
          f"{clips_per_s:>8.2f} {row['gflop_per_clip']:>8.2f} {tflops:>8.3f} {share}",
          flush=True)
  end_to_end = None
  if FLAGS.video:
    info = video.probe(FLAGS.video)
    start = time.perf_counter()
    features, frames = extractor.video(FLAGS.video)
    seconds = time.perf_counter() - start
    end_to_end = {"video": FLAGS.video, "frames": frames, "width": info.width,
                  "height": info.height, "clips": len(features), "seconds": seconds,
                  "clips_per_s": len(features) / seconds, "batch": extractor.clip_batch}
    print(f"{FLAGS.video} ({info.width}x{info.height}, {frames} frames): {len(features)} clips "
          f"in {seconds:.1f} s, {len(features) / seconds:.2f} clips/s end to end "
          f"(decoding + extraction, batch {extractor.clip_batch})")
  print(f"load average {os.getloadavg()[0]:.2f} (never time on a shared machine)")
  if FLAGS.json:
    record = {"jax_version": jax.__version__, "devices": len(devices),
              "device_kind": devices[0].device_kind, "platform": devices[0].platform,
              "peak_tflops": total_peak, "peak": peak_what, "pca": FLAGS.pca,
              "steps": FLAGS.steps, "warmup": FLAGS.warmup, "rows": rows,
              "end_to_end": end_to_end}
    pathlib.Path(FLAGS.json).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  app.run(main)
