"""Prints the speed of the jit-compiled train and eval steps, per reference bucket.

  python benchmarks/bench_train_step.py [--config=configs/weak.py] [--batch=128]

Random inputs of the benchmark's shapes (query bucket 32, feature dim 500) on
every device of this machine; times are after compilation, averaged over a few
steps, with the compile time printed beside them.

Side by side with the PyTorch peer implementation of the same model
(``shared/bench/torch_peer.py``, run by a separate python that has torch; make
one with ``benchmarks/make_peer_venv.sh``; torch is never a dependency of this
project):

  python benchmarks/bench_train_step.py --peer_python=/tmp/vreloc-peer-venv/bin/python \
    [--config=configs/full.py] [--len_refs=64,300] [--batch=128] [--len_query=32] \
    [--steps=10] [--rounds=2] [--json=FILE]

For each reference length of ``--len_refs`` and each mode (train: fwd + bwd +
Adam; eval: this project's `eval_step` against the peer's ``--mode infer``),
both sides run the same shapes (all lengths full, no padding) and the same
number of timed steps, in ``--rounds`` interleaved rounds (round 1: ours then
the peer for every shape; round 2: the same again; ...). Each side's figure is
its best (lowest) per-step median over the rounds, because the machine is
noisy. The peer runs as a subprocess with ``--threads`` equal to this
machine's cores; ours uses JAX's default devices. The report ends with the
issue's goals, each MET or NOT MET. Compare only ratios measured in one run,
and never time while another job shares the cores.

The train step timed is the phase before the co-attention masks
(``loss.mask_after_steps``): the step counter is reset before each timing, so
every round times the same program; the peer's co-attention loss likewise
uses the soft predicted probabilities.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.flops import matmul_gflops, model_flops  # noqa: E402
from vreloc_jax import configuration, sharding, train  # noqa: E402

# The peer's script, beside the repository: <repo>/../shared/bench/torch_peer.py.
DEFAULT_PEER_SCRIPT = REPO.parent / "shared" / "bench" / "torch_peer.py"
SIDE_BY_SIDE_CONFIG = "configs/full.py"  # The issue's numbers are for this configuration.
PEER_DIM = 500  # The peer's feature dimension (fixed in its code).
MODES = ("train", "eval")  # Ours; the peer's eval is its "--mode infer".
PEER_MODES = {"train": "train", "eval": "infer"}
GOAL_TRAIN_LEN_REFS = (64, 300)
GOAL_RATIO = 0.5

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "configs/weak.py",
    f"Configuration (side by side, without --config: {SIDE_BY_SIDE_CONFIG}).")
flags.DEFINE_integer("batch", 128, "Global batch size.")
flags.DEFINE_integer("steps", None, "Timed steps per bucket (default 3; side by side 10).")
flags.DEFINE_integer("dim", 500, "Feature dimension.")
flags.DEFINE_string("peer_python", None,
                    "Python with torch (benchmarks/make_peer_venv.sh): runs side by side with "
                    "the PyTorch peer.")
flags.DEFINE_string("peer_script", str(DEFAULT_PEER_SCRIPT), "The peer's benchmark script.")
flags.DEFINE_list("len_refs", ["64", "300"], "Side by side: reference lengths.")
flags.DEFINE_integer("len_query", 32, "Side by side: query length.")
flags.DEFINE_integer("rounds", 2, "Side by side: interleaved rounds; the best of each side counts.")
flags.DEFINE_integer("warmup", 2, "Side by side: untimed steps before the timed ones, per side, "
                     "mode and shape (ours: the first one of round 1 compiles).")
flags.DEFINE_string("json", None, "Side by side: writes every measurement to this JSON file.")


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


def single(config: ml_collections.ConfigDict) -> None:
  """This project alone: every reference bucket of the config (the default mode)."""
  steps = FLAGS.steps or 3
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
    for _ in range(steps):
      state, metrics = runner.train_step(state, batch, rng_data)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / steps
    jax.block_until_ready(runner.eval_step(state["params"], batch))
    start = time.perf_counter()
    for _ in range(steps):
      out = runner.eval_step(state["params"], batch)
    jax.block_until_ready(out)
    eval_s = (time.perf_counter() - start) / steps
    print(f"{len_ref:>8} {compile_s:>10.1f} {step_s:>13.3f} {1 / step_s:>8.2f} {eval_s:>12.3f}",
          flush=True)


class _Ours:
  """This project's jit-compiled train and eval steps at fixed shapes, timed per step."""

  def __init__(self, config: ml_collections.ConfigDict, batch_size: int, len_query: int,
               dim: int):
    self.config = config
    self.batch_size = batch_size
    self.len_query = len_query
    self.dim = dim
    self.mesh = sharding.make_mesh()
    configuration.check_batch_size(batch_size, "batch size", self.mesh.size)
    self.runner = train.Runner(config, self.mesh, dim)
    self.state = self.runner.init(jax.random.key(0))
    self.rng_data = sharding.replicate(jax.random.key_data(jax.random.key(1)), self.mesh)
    self.num_params = int(sum(x.size for x in jax.tree.leaves(self.state["params"])))
    self._rng = np.random.default_rng(0)
    self._batches: dict[int, dict[str, jax.Array]] = {}
    self._compiled: set[tuple[str, int]] = set()

  def _batch(self, len_ref: int) -> dict[str, jax.Array]:
    if len_ref not in self._batches:
      local = _batch(self._rng, self.batch_size, self.len_query, len_ref, self.dim)
      if self.config.loss.cross_entropy_weight == 0:
        local.pop("segment")
      self._batches[len_ref] = sharding.to_global(local, self.mesh)
    return self._batches[len_ref]

  def _call(self, mode: str, batch: dict[str, jax.Array]) -> Callable[[], Any]:
    if mode == "eval":
      return lambda: self.runner.eval_step(self.state["params"], batch)

    def train_call():
      self.state, metrics = self.runner.train_step(self.state, batch, self.rng_data)
      return self.state, metrics

    return train_call

  def gflop(self, mode: str, len_ref: int) -> float:
    """Matrix-product GFLOP of one step (`benchmarks.flops.model_flops` of its jaxpr)."""
    batch = self._batch(len_ref)
    if mode == "eval":
      traced = self.runner.eval_step.trace(self.state["params"], batch)
    else:
      traced = self.runner.train_step.trace(self.state, batch, self.rng_data)
    return model_flops(traced.jaxpr)[0] / 1e9

  def measure(self, mode: str, len_ref: int, steps: int, warmup: int) -> dict[str, Any]:
    """Times ``steps`` steps after ``warmup`` untimed ones (the first ever compiles).

    Returns:
      ``step_s`` (every timed step), their median and minimum, and on the first
      call of a (mode, len_ref) ``compile_s``: the first call's seconds.
    """
    batch = self._batch(len_ref)
    if mode == "train":  # The same program every round: before the co-attention masks.
      self.state = {**self.state, "step": sharding.replicate(np.int32(0), self.mesh)}
    call = self._call(mode, batch)
    result: dict[str, Any] = {}
    for i in range(max(warmup, 1)):
      start = time.perf_counter()
      jax.block_until_ready(call())
      if i == 0 and (mode, len_ref) not in self._compiled:
        result["compile_s"] = time.perf_counter() - start
        self._compiled.add((mode, len_ref))
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      jax.block_until_ready(call())
      times.append(time.perf_counter() - start)
    result.update(step_s=times, step_s_median=statistics.median(times), step_s_min=min(times))
    return result


def run_peer(python: str, script: str, mode: str, batch: int, len_ref: int, len_query: int,
             steps: int, warmup: int, threads: int) -> dict[str, Any]:
  """Runs the peer once (a subprocess) and reads its JSON line.

  Returns:
    The peer's fields (``torch_version``, ``params``, ``warmup_s``, ...) with its
    step times in seconds as ``step_s_median`` / ``step_s_min``, or ``error``.
  """
  cmd = [python, script, "--mode", PEER_MODES[mode], "--batch", str(batch),
         "--len_ref", str(len_ref), "--len_query", str(len_query), "--steps", str(steps),
         "--warmup", str(warmup), "--threads", str(threads)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"[:500], "command": cmd}
  peer = json.loads(lines[-1])
  result = {k: v for k, v in peer.items() if k not in ("step_ms_median", "step_ms_min")}
  if "step_ms_median" in peer:
    result["step_s_median"] = peer["step_ms_median"] / 1e3
    result["step_s_min"] = peer["step_ms_min"] / 1e3
  elif "error" not in result:
    result["error"] = "no step times in the peer's output"
  result["command"] = cmd
  return result


# One large float32 matrix product in the peer's torch, as `benchmarks.flops.matmul_gflops`
# measures XLA's: the fastest of five after a warmup, printed in GFLOP/s.
_PEER_MATMUL = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.ones(2048, 2048)
a @ a
best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - start)
print(2 * 2048**3 / best / 1e9)
"""


def peer_matmul_gflops(python: str, threads: int) -> float | None:
  """The peer's torch on one large float32 matrix product, GFLOP/s (None if it failed)."""
  proc = subprocess.run([python, "-c", _PEER_MATMUL, str(threads)], capture_output=True,
                        text=True, check=False)
  try:
    return float(proc.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError):
    return None


def best_of_rounds(measurements: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict]:
  """The lowest per-step median of each (mode, len_ref, side) over the rounds."""
  best: dict[tuple[str, int, str], dict] = {}
  for m in measurements:
    if "step_s_median" not in m:
      continue
    key = (m["mode"], m["len_ref"], m["side"])
    if key not in best or m["step_s_median"] < best[key]["step_s_median"]:
      best[key] = m
  return best


def _ratio(best: dict, mode: str, len_ref: int) -> float | None:
  ours, peer = best.get((mode, len_ref, "ours")), best.get((mode, len_ref, "peer"))
  if ours is None or peer is None:
    return None
  return ours["step_s_median"] / peer["step_s_median"]


def _goal(name: str, pairs: list[tuple[str, float | None]], limit: float,
          note: str = "") -> dict[str, Any]:
  """A goal met when every ratio of ``pairs`` (label, ours/peer) is <= limit."""
  missing = [label for label, r in pairs if r is None]
  met = bool(pairs) and not missing and all(r <= limit for _, r in pairs)
  numbers = ", ".join(f"{label}: {r:.2f}x" for label, r in pairs if r is not None)
  if missing:
    numbers += ("; " if numbers else "") + "not measured: " + ", ".join(missing)
  if note:
    numbers += f"; {note}"
  return {"goal": name, "met": met, "limit": limit, "ratios": dict(pairs), "detail": numbers}


def goals(best: dict, len_refs: list[int], buckets: tuple[int, ...]) -> list[dict[str, Any]]:
  """The issue's goals, from the best ratios (ours / peer) of one run."""
  train_lens = GOAL_TRAIN_LEN_REFS
  unmeasured = [b for b in buckets if b not in len_refs]
  return [
      _goal("train step <= 0.5x peer at len_ref 64 and 300",
            [(f"len_ref {n}", _ratio(best, "train", n)) for n in train_lens], GOAL_RATIO),
      _goal("eval step <= 0.5x peer",
            [(f"len_ref {n}", _ratio(best, "eval", n)) for n in len_refs], GOAL_RATIO),
      _goal("every bucket at least as fast as the peer",
            [(f"{mode} {n}", _ratio(best, mode, n)) for mode in MODES for n in len_refs], 1.0,
            note=(f"config buckets not measured: {', '.join(map(str, unmeasured))}"
                  if unmeasured else "")),
  ]


def _own_cpu_s() -> float:
  """CPU seconds (user + system) used so far by this process, children excluded."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _fmt(x: float | None, spec: str) -> str:
  return format(x, spec) if x is not None else "-"


def side_by_side(config: ml_collections.ConfigDict, config_name: str) -> None:
  """This project against the PyTorch peer, interleaved rounds; see the module docstring."""
  if FLAGS.dim != PEER_DIM:
    raise app.UsageError(f"the peer's feature dimension is fixed at {PEER_DIM}; drop --dim")
  if not os.path.isfile(FLAGS.peer_script):
    raise app.UsageError(f"no peer script at {FLAGS.peer_script} (--peer_script)")
  steps = FLAGS.steps or 10
  warmup = max(FLAGS.warmup, 1)
  if warmup + steps > config.loss.mask_after_steps:
    print(f"warning: warmup + steps > loss.mask_after_steps ({config.loss.mask_after_steps}): "
          "our timed train steps include the masked phase (segment search), the peer's never do")
  len_refs = [int(n) for n in FLAGS.len_refs]
  threads = os.cpu_count() or 1
  load_before = os.getloadavg()
  ours = _Ours(config, FLAGS.batch, FLAGS.len_query, FLAGS.dim)
  matmul_rates = [matmul_gflops()]  # again after the rounds; the best counts
  peer_rates = [peer_matmul_gflops(FLAGS.peer_python, threads)]
  print(f"ours: jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"config {config_name} ({config.supervision} supervision, variant {config.variant}), "
        f"{ours.num_params:,} parameters")
  print(f"peer: {FLAGS.peer_python} {FLAGS.peer_script}, --threads {threads}")
  print(f"batch {FLAGS.batch}, len_query {FLAGS.len_query}, dim {FLAGS.dim}, len_refs "
        f"{','.join(map(str, len_refs))}, {steps} timed steps after {warmup} warmup, "
        f"{FLAGS.rounds} rounds; load average {load_before[0]:.2f} on {threads} cores")
  if load_before[0] > 0.5:
    print("warning: other jobs are using the cores: these numbers are not valid timings")
  print(f"{'round':>5} {'mode':>5} {'len_ref':>7} {'side':>4} {'median s':>9} {'min s':>8} "
        f"{'compile s':>9} {'warmup s':>8}", flush=True)
  measurements: list[dict[str, Any]] = []
  peer_info: dict[str, Any] = {}
  for round_ in range(1, FLAGS.rounds + 1):
    for len_ref in len_refs:
      for mode in MODES:
        for side in ("ours", "peer"):
          if side == "ours":
            m = ours.measure(mode, len_ref, steps, warmup)
          else:
            cpu_before, wall_before = _own_cpu_s(), time.perf_counter()
            m = run_peer(FLAGS.peer_python, FLAGS.peer_script, mode, FLAGS.batch, len_ref,
                         FLAGS.len_query, steps, warmup, threads)
            # Our process should be idle meanwhile; its CPU seconds say whether it was.
            m["peer_wall_s"] = time.perf_counter() - wall_before
            m["ours_cpu_s_during_peer"] = _own_cpu_s() - cpu_before
            peer_info.setdefault("torch_version", m.get("torch_version"))
            peer_info.setdefault("params", m.get("params"))
          m.update(round=round_, mode=mode, len_ref=len_ref, side=side)
          measurements.append(m)
          print(f"{round_:>5} {mode:>5} {len_ref:>7} {side:>4} "
                f"{_fmt(m.get('step_s_median'), '9.3f')} {_fmt(m.get('step_s_min'), '8.3f')} "
                f"{_fmt(m.get('compile_s'), '9.1f')} {_fmt(m.get('warmup_s'), '8.1f')}"
                + (f"  ERROR {m['error']}" if "error" in m else ""), flush=True)
  load_after = os.getloadavg()
  matmul_rates.append(matmul_gflops())
  peer_rates.append(peer_matmul_gflops(FLAGS.peer_python, threads))
  rate = max(matmul_rates + [r for r in peer_rates if r is not None])

  best = best_of_rounds(measurements)
  first = {(m["mode"], m["len_ref"], m["side"]): m for m in measurements if m["round"] == 1}
  print(f"\npeer: torch {peer_info.get('torch_version')}, {peer_info.get('params') or 0:,} "
        f"parameters; ours {ours.num_params:,}")
  print(f"best of {FLAGS.rounds} rounds (per-step median, s); compile s: ours' first call; "
        "warmup s: the peer's warmup steps (round 1)")
  print(f"{'mode':>5} {'len_ref':>7} {'ours s':>8} {'peer s':>8} {'ours/peer':>9} "
        f"{'compile s':>9} {'warmup s':>8} {'GFLOP':>7} {'ours GF/s':>9} {'peer GF/s':>9} "
        f"{'floor s':>7}")
  table = []
  for mode in MODES:
    for len_ref in len_refs:
      o, p = best.get((mode, len_ref, "ours")), best.get((mode, len_ref, "peer"))
      ratio = _ratio(best, mode, len_ref)
      gflop = ours.gflop(mode, len_ref)
      row = {"mode": mode, "len_ref": len_ref, "gflop": gflop, "floor_s": gflop / rate,
             "ours_s": o and o["step_s_median"], "peer_s": p and p["step_s_median"],
             "ratio": ratio,
             "ours_compile_s": first.get((mode, len_ref, "ours"), {}).get("compile_s"),
             "peer_warmup_s": first.get((mode, len_ref, "peer"), {}).get("warmup_s")}
      table.append(row)
      print(f"{mode:>5} {len_ref:>7} {_fmt(row['ours_s'], '8.3f')} {_fmt(row['peer_s'], '8.3f')} "
            f"{_fmt(ratio, '9.2f')} {_fmt(row['ours_compile_s'], '9.1f')} "
            f"{_fmt(row['peer_warmup_s'], '8.1f')} {gflop:>7.1f} "
            f"{_fmt(row['ours_s'] and gflop / row['ours_s'], '9.1f')} "
            f"{_fmt(row['peer_s'] and gflop / row['peer_s'], '9.1f')} {row['floor_s']:>7.3f}")
  print(f"GFLOP: the matrix products of our step (benchmarks/flops.py); floor s: GFLOP at "
        f"{rate:.1f} GFLOP/s, the best rate of one large float32 matrix product on all cores "
        f"(2048^3, before and after the rounds: XLA {', '.join(f'{r:.1f}' for r in matmul_rates)}"
        f"; the peer's torch {', '.join(_fmt(r, '.1f') for r in peer_rates)}): a step of the "
        "same products at that rate throughout")
  results = goals(best, len_refs, tuple(config.data.reference_buckets))
  for g in results:
    print(f"goal: {g['goal']}: {'MET' if g['met'] else 'NOT MET'} ({g['detail']})")
  for row in table:
    if row["peer_s"] is not None and row["peer_s"] * GOAL_RATIO < row["floor_s"]:
      print(f"  {row['mode']} {row['len_ref']}: {GOAL_RATIO}x the peer is "
            f"{GOAL_RATIO * row['peer_s']:.3f} s, below the floor of {row['floor_s']:.3f} s: out "
            "of reach on this machine for the same matrix products in float32")
  print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        "(never time while another job shares the cores; compare only ratios of one run)")
  peer_runs = [m for m in measurements if m["side"] == "peer"]
  print(f"our process used {sum(m['ours_cpu_s_during_peer'] for m in peer_runs):.1f} CPU s while "
        f"the peer ran ({sum(m['peer_wall_s'] for m in peer_runs):.1f} s wall; it should be ~0)")
  if FLAGS.json:
    record = {
        "config": config_name, "supervision": config.supervision, "variant": config.variant,
        "batch": FLAGS.batch, "len_query": FLAGS.len_query, "dim": FLAGS.dim,
        "len_refs": len_refs, "steps": steps, "warmup": warmup, "rounds": FLAGS.rounds,
        "cpu_count": threads, "load_average_before": load_before,
        "load_average_after": load_after,
        "ours": {"jax_version": jax.__version__, "devices": jax.device_count(),
                 "device_kind": jax.devices()[0].device_kind, "params": ours.num_params},
        "peer": {"python": FLAGS.peer_python, "script": FLAGS.peer_script, "threads": threads,
                 **peer_info},
        "matmul_gflops": {"xla": matmul_rates, "peer_torch": peer_rates},
        "measurements": measurements, "table": table, "goals": results,
    }
    pathlib.Path(FLAGS.json).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {FLAGS.json}")


def main(argv):
  del argv
  if not FLAGS.peer_python:
    single(FLAGS.config)
    return
  if FLAGS["config"].present:
    config, config_name = FLAGS.config, config_flags.get_config_filename(FLAGS["config"])
  else:
    overrides = [n for n in FLAGS if n.startswith("config.") and FLAGS[n].present]
    if overrides:
      raise app.UsageError(f"--{overrides[0]} needs an explicit --config")
    from configs import full  # pylint: disable=import-outside-toplevel
    config, config_name = full.get_config(), SIDE_BY_SIDE_CONFIG
  side_by_side(config, config_name)


if __name__ == "__main__":
  app.run(main)
