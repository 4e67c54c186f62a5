"""What a step asks of the machine and what the machine can do: for the benchmarks.

`model_flops` counts the matrix products of a step's jaxpr (its floating-point work, less
the elementwise part): 2·M·N·K per ``dot_general``, 2·(output size)·(kernel size / output
features) per convolution, a ``scan`` body times its length, a ``cond`` by its costliest
branch, a ``while`` body once (the segment searches: no matrix products of note);
``jax.experimental.rnn``'s cuDNN LSTM ``rnn_fwd`` as 2·B·T·dirs·4H·(in + H) and
``rnn_bwd`` as twice that, which is what a scan's products count.
``Compiled.cost_analysis()["flops"]`` is no substitute: XLA counts a while loop's body
once (a 300-step LSTM scan as one step; checked on CPU with jax 0.10.2) and a custom
call as nothing.

`matmul_gflops` measures the rate of one large float32 matrix product, compiled by XLA on
the default device with all its threads: what the machine's cores do at best. A step
whose work is all matrix products cannot run faster than ``model_flops / rate``.

`PEAKS` are the accelerators' vendor peaks, `peak_for` looks one up by device kind.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp


def _rnn_flops(eqn: Any) -> float:
  """Matrix-product FLOPs of jax.experimental.rnn's forward kernel (its ``rnn_fwd``)."""
  p = eqn.params
  x = eqn.invars[0].aval if eqn.primitive.name == "rnn_fwd" else eqn.invars[3].aval
  batch, steps, _ = x.shape
  dirs = 2 if p["bidirectional"] else 1
  hidden = p["hidden_size"]
  total = 0.0
  for layer in range(p["num_layers"]):
    inputs = p["input_size"] if layer == 0 else dirs * hidden
    total += 2.0 * batch * steps * dirs * 4 * hidden * (inputs + hidden)
  return total


def model_flops(jaxpr: Any) -> tuple[float, list[str]]:
  """FLOPs of the matrix products of a (closed) jaxpr, and notes on what was approximated."""
  notes: set[str] = set()

  def count(j: Any) -> float:
    j = j.jaxpr if isinstance(j, jex_core.ClosedJaxpr) else j
    total = 0.0
    for eqn in j.eqns:
      name = eqn.primitive.name
      if name == "dot_general":
        (contracting, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contracting)
      elif name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
      elif name == "rnn_fwd":
        total += _rnn_flops(eqn)
      elif name == "rnn_bwd":  # data and weight gradients: twice the forward products
        total += 2.0 * _rnn_flops(eqn)
      elif name == "scan":
        total += eqn.params["length"] * count(eqn.params["jaxpr"])
      elif name == "cond":
        total += max(count(b) for b in eqn.params["branches"])
        notes.add("cond: costliest branch")
      elif name == "while":
        body = count(eqn.params["body_jaxpr"]) + count(eqn.params["cond_jaxpr"])
        if body:
          notes.add("while: body counted once")
        total += body
      else:
        for sub in jex_core.jaxprs_in_params(eqn.params):  # jit, custom_jvp/vjp, remat, ...
          total += count(sub)
    return total

  return count(jaxpr), sorted(notes)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
  """GFLOP/s of the fastest of ``repeats`` float32 [size, size] x [size, size] products."""
  a = jnp.ones((size, size), jnp.float32)
  product = jax.jit(lambda x: x @ x)
  jax.block_until_ready(product(a))  # compiles
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(product(a))
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best / 1e9


# Dense peak TFLOP/s (no 2:4 sparsity: half the datasheets' "with sparsity" tensor figures).
# NVIDIA H100 and H200 datasheets (SXM: FP32 67, TF32 989/2, BF16 1979/2; PCIe: FP32 51,
# TF32 756/2, BF16 1513/2; NVL: FP32 60, TF32 835/2, BF16 1671/2), A100 datasheet
# (FP32 19.5, TF32 156, BF16 312); Cloud TPU system architecture pages (BF16 per chip:
# v4 275, v5e 197, v5p 459, v6e 918). The first name found in the device kind counts.
PEAKS = (
    ("H200", {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4}),
    ("H100 PCIe", {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.5}),
    ("H100 NVL", {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5}),
    ("H100", {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4}),
    ("A100", {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0}),
    ("TPU v4", {"bfloat16": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0}),
    ("TPU v5p", {"bfloat16": 459.0}),
    ("TPU v5", {"bfloat16": 459.0}),
    ("TPU v6 lite", {"bfloat16": 918.0}),
)


def peak_for(device_kind: str, precision: str) -> tuple[float | None, str]:
  """(the `PEAKS` TFLOP/s of a device kind at ``precision``, or None; the entry's name)."""
  for name, peaks in PEAKS:
    if name.lower() in device_kind.lower() and precision in peaks:
      return peaks[precision], f"{name} dense {precision}"
  return None, f"no peak known for {device_kind!r} ({precision})"
