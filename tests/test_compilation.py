"""Compiling ahead in the background, XLA's options, and the plan of a run's programs."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import weak as weak_config
from tests.conftest import make_benchmark
from tests.test_train import tiny_config
from vreloc_jax import compilation, configuration, sharding, train
from vreloc_jax.data import batching, benchmark


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  return make_benchmark(tmp_path_factory.mktemp("compilation_bench"), seed=3).root


def abstract(x: jax.Array) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


def test_program_runs_the_executable_compiled_ahead():
  traced = []

  def f(x, y):
    traced.append(x.shape)
    return x * 2 + y

  program = compilation.Program(jax.jit(f))
  x, y = jnp.arange(4.0), jnp.ones((4,))
  compiled = program.compile_ahead(abstract(x), abstract(y)).result()
  assert traced == [(4,)]  # traced once, in the background
  np.testing.assert_array_equal(program(x, y), compiled(x, y))
  np.testing.assert_array_equal(program(x, y), x * 2 + 1)
  assert traced == [(4,)]  # the call ran the executable: no trace, no compile
  assert program.compile_ahead(abstract(x), abstract(y)).result() is compiled  # once per signature
  np.testing.assert_array_equal(program(jnp.arange(3.0), jnp.ones((3,))), [1, 3, 5])
  assert traced == [(4,), (3,)]  # another signature: the jit-compiled function, as before
  assert program.lower(x, y).compile() is not None  # attributes reach the jitted function


def test_program_signature_includes_weak_types_and_dtypes():
  x = jnp.arange(4.0)
  assert compilation.signature((x,)) == compilation.signature((abstract(x),))
  assert compilation.signature((x,)) != compilation.signature((x.astype(jnp.int32),))
  weak = jnp.asarray(2.0)
  assert weak.weak_type
  assert compilation.signature((weak,)) != compilation.signature((jnp.float32(2.0),))


def test_cancelled_compilations_fall_back_to_the_jit_path():
  started, release, traced = threading.Event(), threading.Event(), []

  def f(x):
    traced.append(x.shape)
    if x.shape == (1,):
      started.set()
      release.wait(60)  # holds the background thread while the next one is queued
    return x + 1

  program = compilation.Program(jax.jit(f))
  first = program.compile_ahead(jax.ShapeDtypeStruct((1,), jnp.float32))
  queued = program.compile_ahead(jax.ShapeDtypeStruct((2,), jnp.float32))
  assert started.wait(60)
  program.cancel()
  release.set()
  assert first.result() is not None and queued.cancelled()
  np.testing.assert_array_equal(program(jnp.zeros((2,))), [1, 1])
  assert traced == [(1,), (2,)]  # (2,) traced by the call itself


def test_compile_errors_surface_at_the_call():
  def f(x):
    raise ValueError("bad input: video v_x has 3 dims")

  program = compilation.Program(jax.jit(f))
  program.compile_ahead(jax.ShapeDtypeStruct((2,), jnp.float32))
  with pytest.raises(ValueError, match="video v_x has 3 dims"):
    program(jnp.zeros((2,)))


def test_compiler_options():
  config = weak_config.get_config()
  assert config.compile.cpu_optimization_level is None
  assert compilation.compiler_options(config, "cpu") is None  # XLA's own level (3)
  for level in (0, 1, 2, 3):
    config.compile.cpu_optimization_level = level
    assert compilation.compiler_options(config, "cpu") == {"xla_backend_optimization_level": level}
    assert compilation.compiler_options(config, "gpu") is None
    assert compilation.compiler_options(config, "tpu") is None
  old = ml_collections.ConfigDict({"train": {}})  # saved before the field existed
  assert compilation.compiler_options(old, "cpu") is None
  config.compile.cpu_optimization_level = 4
  with pytest.raises(ValueError, match="cpu_optimization_level must be 0-3, got 4"):
    configuration.validate(config)


def _key(layout):
  return repr(sorted(layout.items()))


@pytest.mark.parametrize("supervision", ["weak", "full"])
def test_compile_plan_holds_every_batch_shape_of_the_run_in_order_of_use(data_dir, supervision):
  config = tiny_config(supervision, data_dir, num_steps=9, eval_every=4)
  config.data.reference_buckets = (16, 32)
  bench = benchmark.load_benchmark(config)
  batches = benchmark.train_batches(config, bench)
  for first_step in (0, 5):
    plan = compilation.compile_plan(config, bench, batches, first_step)
    keys = [(kind, _key(layout)) for kind, layout in plan]
    assert len(set(keys)) == len(keys)
    used_train = [_key({k: (v.shape, v.dtype.type) for k, v in batches.batch(s).items()})
                  for s in range(first_step, 9)]
    assert [k for kind, k in keys if kind == "train"] == list(dict.fromkeys(used_train))
    assert keys[0] == ("train", used_train[0])  # the first step's program first
    used_eval = []
    for split in ("val", "test"):
      for _, batch in batching.eval_batches(bench.pairs[split], bench.store,
                                            config.eval.batch_size, config.data.query_buckets,
                                            config.data.reference_buckets):
        used_eval.append(_key({k: (v.shape, v.dtype.type) for k, v in batch.items()}))
    assert sorted(k for kind, k in keys if kind == "eval") == sorted(set(used_eval))
    assert len(set(used_train)) > 1


def test_cpu_optimization_level_leaves_the_results_as_they_were(data_dir):
  """Level 1 against XLA's own 3 (the default): the same predictions to float rounding.

  Not to the bit: how LLVM contracts and vectorizes float arithmetic depends on the
  level and on the CPU's instruction set (so a whole training run at level 1 follows
  another trajectory; WORKSPACE.md, "Compilation"). The eval step only: a train step
  takes 15 s to compile at level 3 even for this tiny model.
  """
  # Both levels passed as options: this test session's own default is 0 (conftest.py).
  config = tiny_config("weak", data_dir)
  bench = benchmark.load_benchmark(config)
  params = None
  outputs = []
  for level in (1, 3):
    config.compile.cpu_optimization_level = level
    runner = train.Runner(config, sharding.make_mesh(), bench.feature_dim)
    if params is None:
      params = runner.init(jax.random.key(0))["params"]
    batch = next(batching.eval_batches(bench.pairs["val"], bench.store, config.eval.batch_size,
                                       config.data.query_buckets,
                                       config.data.reference_buckets))[1]
    out = runner.eval_step(params, sharding.to_global(batch, runner.mesh))
    outputs.append(jax.tree.map(np.asarray, out))
  level_1, level_3 = outputs
  for name in ("probs", "score", "loss_c", "attention"):
    np.testing.assert_allclose(level_1[name], level_3[name], rtol=1e-5, atol=1e-6, err_msg=name)
