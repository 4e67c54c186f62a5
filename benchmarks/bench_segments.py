"""Throughput of the segment searches (vreloc_jax.segments) on the current backend.

Usage: python benchmarks/bench_segments.py [--batch 128] [--len-ref 300] [--repeats 50]

Times the jitted kernels after a warm-up call, with block_until_ready, on random
log_softmax outputs and random lengths in [1, len_ref]. Prints rows per second.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # Run from a checkout.
from vreloc_jax import segments  # noqa: E402


def _time(fn, *args, repeats: int) -> float:
  """Median seconds per call of fn(*args) over `repeats` timed calls, after a warm-up."""
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  durations = []
  for _ in range(repeats):
    begin = time.perf_counter()
    jax.block_until_ready(fn(*args))
    durations.append(time.perf_counter() - begin)
  return float(np.median(durations))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--len-ref", type=int, default=300)
  parser.add_argument("--repeats", type=int, default=50)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  logits = rng.normal(size=(args.batch, args.len_ref, 4)).astype(np.float32) * 2.0
  log_probs = jax.device_put(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))  # [B, L, 4]
  p_inside = jnp.exp(log_probs[:, :, 2])  # [B, L]
  lengths = jax.device_put(rng.integers(1, args.len_ref + 1, size=args.batch).astype(np.int32))

  print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
        f"batch={args.batch} len_ref={args.len_ref} repeats={args.repeats}")
  cases = [(f"search_full form={form} max_length={segments.DEFAULT_MAX_LENGTH}",
            lambda lp, ln, form=form: segments.search_full(lp, ln, form=form), log_probs)
           for form in segments.FULL_FORMS]
  cases.append(("search_weak", segments.search_weak, p_inside))
  for name, fn, inputs in cases:
    # Called through jax.jit so the timing excludes the eager argument checks.
    seconds = _time(jax.jit(fn), inputs, lengths, repeats=args.repeats)
    print(f"{name:<42s} {seconds * 1e3:9.3f} ms/batch  {args.batch / seconds:12,.0f} rows/s")


if __name__ == "__main__":
  main()
