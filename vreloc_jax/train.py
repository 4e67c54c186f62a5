"""Training one model: optimizer, state, `train_step`, `eval_step`, and the loop.

`train_and_evaluate(config, workdir)` is the whole run: it trains (resuming from the
latest checkpoint), evaluates on val every ``train.eval_every`` steps, then tests the
selected checkpoint (`vreloc_jax.evaluation`). The steps are jit-compiled over a
`Mesh` of all devices: batches are sharded on the ``data`` axis, the state is
replicated and donated. Per-step randomness is ``fold_in(key, step)`` and the batch of
a step is a pure function of ``(seed, step)``, so a resumed run follows the
uninterrupted trajectory. The model is reached through its family
(`vreloc_jax.family`), never by name.

A signal stops the run at a step boundary with a checkpoint (`vreloc_jax.preemption`).
Nothing non-finite is saved: the loss and gradient norm of every step, and the whole
state before each save, are checked first (`FloatingPointError` naming the step).
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vreloc_jax import checkpoints
from vreloc_jax import compilation
from vreloc_jax import configuration
from vreloc_jax import evaluation
from vreloc_jax import family as family_lib
from vreloc_jax import losses
from vreloc_jax import metrics
from vreloc_jax import models
from vreloc_jax import preemption
from vreloc_jax import sharding
from vreloc_jax import storage
from vreloc_jax import workdir as workdir_lib
from vreloc_jax.data import batching
from vreloc_jax.data import benchmark

# Step metrics that must be finite before anything of the step is saved.
FINITE_METRICS = {"loss": "loss", "grad_norm": "gradient norm"}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam, learning rate divided by 10 every ``decay_every`` steps, global-norm clipping."""
  schedule = optax.exponential_decay(config.train.learning_rate,
                                     transition_steps=config.train.decay_every,
                                     decay_rate=config.train.decay_factor, staircase=True)
  return optax.chain(optax.clip_by_global_norm(config.train.grad_clip_norm),
                     optax.adam(schedule))


def create_train_state(config: ml_collections.ConfigDict, family: family_lib.Family,
                       rng: jax.Array, feature_dim: int) -> dict[str, Any]:
  """Parameters, optimizer state and step, as one pytree (what a checkpoint holds)."""
  query = jnp.zeros((1, 4, feature_dim), jnp.float32)
  reference = jnp.zeros((1, 8, feature_dim), jnp.float32)
  params = family.module.init(rng, query, jnp.ones((1, 4), bool), reference,
                              jnp.ones((1, 8), bool), deterministic=True)["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "opt_state": make_optimizer(config).init(params)}


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array, *,
               family: family_lib.Family, config: ml_collections.ConfigDict
               ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: {"step", "params", "opt_state"} (replicated; donated by the caller).
    batch: a global batch (`vreloc_jax.data.batching`); weak batches carry no ``segment``.
    rng: the run's base key as raw key data (uint32); dropout uses ``fold_in(rng, step)``.
    family: the model's family (its module and loss).
    config: the run's configuration.

  Returns:
    The new state, and scalar metrics: loss, gradient norm, learning rate, loss terms.
  """
  step = state["step"]
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(rng), step)

  def loss_fn(params):
    return family.loss(family.apply(params, batch, dropout_rng), batch, step)

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  tx = make_optimizer(config)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  lr = config.train.learning_rate * config.train.decay_factor ** (step // config.train.decay_every)
  new_state = {"step": step + 1, "params": params, "opt_state": opt_state}
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                     "learning_rate": lr, **terms}


def eval_step(params: Any, batch: dict[str, jax.Array], *, family: family_lib.Family,
              config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Predictions of a global batch, and how well each separates the query's action.

  Returns:
    The family's prediction (`family.Family.predict`) and ``loss_c``, float32 [batch]:
    the co-attention loss of each example with the masks of its predicted segment (what
    weak training minimizes once masks are on; uniform regions for the window and
    self-training objectives, which score windows so); it reads no annotation.
  """
  prediction = family.predict(family.apply(params, batch), batch)
  action_mask = losses.segment_mask(prediction["segments"],
                                    batch["reference_mask"].shape[1])  # [batch, len_ref]
  region_probs = prediction["probs"]  # [batch, len_ref, 4]
  if family_lib.coattention_form(config) != "paper":
    # Uniform weights on each region: the criterion of the predicted window, as those
    # objectives score windows (`losses.window_criterion`).
    region_probs = jnp.stack([jnp.zeros_like(action_mask), jnp.zeros_like(action_mask),
                              action_mask, ~action_mask], axis=-1).astype(jnp.float32)
  loss_c = losses.coattention_per_example(
      batch["query"], batch["query_mask"], batch["reference"], batch["reference_mask"],
      region_probs, config.loss.alpha, action_mask=action_mask)  # [batch]
  return {**prediction, "loss_c": loss_c}


def leaves_finite(tree: Any) -> Any:
  """Whether each leaf of a pytree is all finite: a pytree of bool scalars."""
  return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree)


class Runner:
  """The jit-compiled programs of one configuration on one mesh.

  Attributes:
    config, mesh, feature_dim: what it was built for.
    family: the model's family (`vreloc_jax.models.create`).
    init: rng -> the initial state (replicated).
    train_step, eval_step: `train_step` and `eval_step` (`compilation.Program`s).
    leaves_finite: `leaves_finite`, jitted.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               feature_dim: int):
    self.config = config
    self.mesh = mesh
    self.feature_dim = feature_dim
    self.family = models.create(config)
    replicated = sharding.replicated(mesh)
    batch = sharding.batch_sharding(mesh)
    options = compilation.compiler_options(config, mesh.devices.flat[0].platform)
    self.init = jax.jit(functools.partial(create_train_state, config, self.family,
                                          feature_dim=feature_dim), out_shardings=replicated,
                        compiler_options=options)
    self.train_step = compilation.Program(jax.jit(
        functools.partial(train_step, family=self.family, config=config),
        in_shardings=(replicated, batch, replicated), out_shardings=(replicated, replicated),
        donate_argnums=(0,), compiler_options=options))
    self.eval_step = compilation.Program(jax.jit(
        functools.partial(eval_step, family=self.family, config=config),
        in_shardings=(replicated, batch), out_shardings=replicated, compiler_options=options))
    self.leaves_finite = jax.jit(leaves_finite, out_shardings=replicated)
    self._abstract_state = None

  def abstract_state(self) -> Any:
    """Shapes, dtypes and (replicated) shardings of the state: the restore target."""
    if self._abstract_state is None:
      shapes = jax.eval_shape(self.init, jax.random.key(0))
      replicated = sharding.replicated(self.mesh)
      self._abstract_state = jax.tree.map(
          lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)
    return self._abstract_state

  def batch_function(self, params: Any) -> evaluation.BatchFunction:
    """The eval step of ``params`` on this process's slice of a global batch."""
    return lambda local: self.eval_step(params, sharding.to_global(local, self.mesh))

  def compile_ahead(self, plan: Sequence[tuple[str, dict]], rng: jax.Array) -> None:
    """Compiles programs in the background, in the order of ``plan`` (`compilation.compile_plan`).

    Args:
      plan: ("train" or "eval", `batching.batch_layout`) of the batches to come.
      rng: the train step's ``rng`` argument (only its signature is used).
    """
    state, sharded = self.abstract_state(), sharding.batch_sharding(self.mesh)
    for kind, layout in plan:
      batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharded)
               for name, (shape, dtype) in layout.items()}  # The global batch, abstract.
      if kind == "train":
        self.train_step.compile_ahead(state, batch, rng)
      else:
        self.eval_step.compile_ahead(state["params"], batch)

  def close(self) -> None:
    """Drops the background compilations not started yet."""
    self.train_step.cancel()
    self.eval_step.cancel()


def _check_finite(step: int, values: dict[str, Any]) -> dict[str, float]:
  """The step's metrics on the host, after checking that its loss and gradient norm are finite.

  A non-finite gradient norm with a finite loss (computed before the update) means
  non-finite parameters after the step.

  Raises:
    FloatingPointError: naming the step and what is not finite.
  """
  host = {k: float(v) for k, v in values.items()}
  bad = [k for k in FINITE_METRICS if k in host and not np.isfinite(host[k])]
  if bad:
    raise FloatingPointError(
        f"non-finite {' and '.join(f'{FINITE_METRICS[k]} {host[k]}' for k in bad)} at step "
        f"{step} (metrics: {', '.join(f'{k}={v:.4g}' for k, v in host.items())}); nothing of "
        "this step was saved. Lower train.learning_rate or train.grad_clip_norm, or check the "
        "features for non-finite values; a rerun resumes from the last checkpoint")
  return host


def _save(manager: Any, runner: Runner, step: int, state: dict[str, Any],
          val_metrics: dict[str, float] | None = None) -> None:
  """Saves a checkpoint of ``state`` at ``step`` once the whole state is checked finite.

  Raises:
    FloatingPointError: a leaf of the state is not all finite (naming the step).
  """
  finite = runner.leaves_finite(state)
  bad = [jax.tree_util.keystr(path) for path, ok in jax.tree_util.tree_leaves_with_path(finite)
         if not bool(ok)]
  if bad:
    raise FloatingPointError(
        f"non-finite values in the training state after step {step}, in "
        f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}; it was not saved. Lower "
        "train.learning_rate; a rerun resumes from the last checkpoint")
  checkpoints.save(manager, step, state, val_metrics)


def _evaluate_and_save(runner: Runner, bench: benchmark.Benchmark, manager: Any,
                       writer: workdir_lib.MetricsWriter, workdir: str, step: int,
                       state: dict[str, Any]) -> None:
  """Evaluates ``state`` on val, saves it with the val metrics, then records them.

  Orbax records a checkpoint's metrics only when it saves it, so the evaluation comes
  first; if it fails, the checkpoint is still saved (without metrics: "best" and
  "min_loss_c" will not consider it) before the error goes on.
  """
  try:
    val = evaluation.score_split(runner, state["params"], bench, "val",
                                 workdir_lib.val_results_file(workdir, step), {"step": step},
                                 plot_dir=workdir_lib.plots_dir(workdir, step))
  except Exception:
    logging.error("Val evaluation of step %d failed; saving its checkpoint without val metrics.",
                  step)
    _save(manager, runner, step, state)
    raise
  logging.info("step %d  val mAP_avg %.2f  val loss_c %.4f", step, val["mAP_avg"], val["loss_c"])
  _save(manager, runner, step, state, {checkpoints.BEST_METRIC: val["mAP_avg"],
                                       checkpoints.LOSS_METRIC: val["loss_c"]})
  writer.write({"step": step, "val_mAP_avg": val["mAP_avg"], "val_loss_c": val["loss_c"],
                **{f"val_mAP@{k}": v for k, v in val["mAP"].items()}})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop: preemption.StopSignals | None = None) -> dict[str, Any]:
  """Trains (resuming from the latest checkpoint), then evaluates on test.

  SIGTERM and SIGINT stop it gracefully (`vreloc_jax.preemption`); the previous
  handlers are back when it returns or raises.

  Args:
    config: the run's configuration.
    workdir: the work directory (`vreloc_jax.workdir`), local or on cloud storage.
    stop: signal handlers the caller installed earlier (so that a signal during its
      own start-up counts too); by default they are installed here.

  Returns:
    The test results of the checkpoint ``config.eval.select`` chooses.

  Raises:
    Preempted: a signal stopped the run after a checkpoint was saved.
    FloatingPointError: a step's loss, gradient norm or state was not finite.
    ValueError: bad configuration or data, a work directory of another run, or one
      that another run holds (`workdir.claim`: W/.lock; a failed start removes what it
      created).
  """
  mesh = sharding.make_mesh()
  configuration.validate(config, devices=mesh.size)
  with contextlib.ExitStack() as stack:
    claim = stack.enter_context(workdir_lib.claim(workdir))
    stop = stop or stack.enter_context(preemption.StopSignals())
    storage.make_dirs(workdir)
    bench = benchmark.load_benchmark(config)
    workdir_lib.save_config(config, workdir, bench.data_dir)
    logging.info("Data: %s (features %s, dim %d); %s; %d devices, %d processes.", bench.data_dir,
                 bench.features_path, bench.feature_dim,
                 ", ".join(f"{k} {len(v)}" for k, v in bench.entries.items()), mesh.size,
                 jax.process_count())
    runner = Runner(config, mesh, bench.feature_dim)
    manager = checkpoints.manager(workdir, config.train.keep_checkpoints)
    writer = workdir_lib.MetricsWriter(workdir)
    for close in (manager.close, writer.close, runner.close):  # Closed in reverse order.
      stack.callback(close)
    _train(runner, bench, manager, writer, workdir, stop, claim)
    return _test(runner, bench, manager, workdir, stop)


def _train(runner: Runner, bench: benchmark.Benchmark, manager: Any,
           writer: workdir_lib.MetricsWriter, workdir: str, stop: preemption.StopSignals,
           claim: workdir_lib.Claim | None) -> None:
  """The training loop from the latest checkpoint (or the initial state) to the last step.

  Polls ``stop`` after every step; ``claim.started`` is set once there is a run to keep:
  a checkpoint resumed or a step done.
  """
  config, mesh = runner.config, runner.mesh
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  step_rng = sharding.replicate(jax.random.key_data(step_rng), mesh)
  batches = benchmark.train_batches(config, bench)
  num_steps = config.train.num_steps
  if (config.get("compile") or {}).get("ahead", False):
    # While the parameters are initialized or restored, and then while it trains.
    runner.compile_ahead(compilation.compile_plan(config, bench, batches,
                                                  manager.latest_step() or 0), step_rng)
  state = checkpoints.restore(manager, "latest", runner.abstract_state())
  if state is None:
    state = runner.init(init_rng)
  else:
    logging.info("Resumed from step %d of %s.", int(state["step"]), manager.directory)
  first_step = int(state["step"])
  if claim is not None and first_step > 0:
    claim.started = True
  writer.truncate_after(first_step)
  preemption.stop_if_signalled(stop, first_step)  # During the set-up: nothing new to save.
  stream = batching.prefetch(batches.batch(s) for s in range(first_step, num_steps))
  # (step, metrics on device) of the previous step: checked while the next step runs, and
  # always before anything is saved.
  unchecked = None
  tick, tick_step, start = time.time(), first_step, time.time()
  for step in range(first_step + 1, num_steps + 1):
    state, step_metrics = runner.train_step(state, sharding.to_global(next(stream), mesh), step_rng)
    if claim is not None:
      claim.started = True
    if unchecked is not None:
      _check_finite(*unchecked)
    unchecked = (step, step_metrics)
    signum = preemption.agree_on_signal(stop.signum)  # Every process, every step.
    log_now = step % config.train.log_every == 0 or step == num_steps
    eval_now = step % config.train.eval_every == 0 or step == num_steps
    save_now = eval_now or step % config.train.checkpoint_every == 0 or bool(signum)
    if log_now or save_now:
      host = _check_finite(*unchecked)
      unchecked = None
    if log_now:
      now = time.time()
      rate = (step - tick_step) / max(now - tick, 1e-9)
      eta = (num_steps - step) / max(rate, 1e-9)
      logging.info("step %d/%d  loss %.4f  %s  %.2f steps/s  eta %s", step, num_steps,
                   host["loss"], " ".join(f"{k} {v:.4g}" for k, v in host.items() if k != "loss"),
                   rate, time.strftime("%H:%M:%S", time.gmtime(eta)))
      writer.write({"step": step, "time": now - start, "steps_per_second": rate, **host})
      tick, tick_step = now, step
    if eval_now:  # Saves too, with the val metrics.
      _evaluate_and_save(runner, bench, manager, writer, workdir, step, state)
    elif save_now:
      _save(manager, runner, step, state)
    if signum:
      raise preemption.preempted(step, signum)
  if unchecked is not None:
    _check_finite(*unchecked)
  manager.wait_until_finished()


def _test(runner: Runner, bench: benchmark.Benchmark, manager: Any, workdir: str,
          stop: preemption.StopSignals) -> dict[str, Any]:
  """Tests the selected checkpoint (and the best by val mAP), prints the table with baselines.

  The configured selection gives the run's result (results/test.json); when it is not
  the annotation-selected "best", that one is reported beside it, labelled. A signal
  between these evaluations stops the run too: the rerun only evaluates.
  """
  config, family = runner.config, runner.family
  num_steps = config.train.num_steps
  rows, test = {}, None
  for which in dict.fromkeys((config.eval.select, "best")):
    preemption.stop_if_signalled(stop, num_steps)
    step = checkpoints.resolve_step(manager, which)
    state = checkpoints.restore(manager, step, runner.abstract_state())
    results = evaluation.score_split(
        runner, state["params"], bench, "test",
        workdir_lib.test_results_file(workdir, which, config.eval.select),
        evaluation.results_record(config, family.inference, step, which))
    test = test or results
    rows[f"{family.title}, {config.supervision} supervision, {which} checkpoint "
         f"(step {step})"] = results
  preemption.stop_if_signalled(stop, num_steps)
  baselines = evaluation.baseline_rows(config, bench, "test")
  if jax.process_index() == 0:
    storage.write_json(workdir_lib.results_file(workdir, workdir_lib.BASELINES_NAME),
                       baselines)
    print(metrics.format_table({**baselines, **rows},
                               title=f"test split, {len(bench.pairs['test'])} pairs "
                               f"({bench.data_dir})"), flush=True)
  return test
