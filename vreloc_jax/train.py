"""Training and evaluation: data-parallel over every device, resumable, checkpointed.

`train_and_evaluate(config, workdir)` is the whole run. Its small pure pieces —
`create_train_state`, `train_step`, `eval_step` — are jit-compiled over a
`Mesh` of all devices: batches are sharded on the ``data`` axis, the state is
replicated and donated. Per-step randomness is ``fold_in(key, step)`` and the
batch of a step is a pure function of ``(seed, step)``, so a run resumed from
a checkpoint follows the same trajectory as an uninterrupted one.

Work directory: its layout (config.json, metrics.jsonl, checkpoints/, results/) is
`vreloc_jax.workdir`'s; it may be local or on cloud storage (``gs://…``, through
`vreloc_jax.storage`). Every file is written whole, or for metrics.jsonl appended a
line at a time.

Stopping and resuming: on SIGTERM or SIGINT (the first one; a second SIGINT interrupts
at once) the run finishes its current step, saves a checkpoint of it and raises
`Preempted`, which ``vreloc_jax.main`` turns into exit status
`sharding.PREEMPTED_EXIT_CODE` (75) for launchers to requeue. With several processes
they agree after every step on whether any of them was signalled (one tiny all-gather),
so all stop at the same step. Rerunning the same command resumes and ends with the
results of an uninterrupted run. Nothing non-finite is saved: the loss and gradient norm
of every step, and the whole state before each save, are checked first
(`FloatingPointError` naming the step).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import signal
import threading
import time
import types
from typing import Any, Callable, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vreloc_jax import candidates
from vreloc_jax import cgbm
from vreloc_jax import checkpoints
from vreloc_jax import compilation
from vreloc_jax import losses
from vreloc_jax import metrics
from vreloc_jax import segments
from vreloc_jax import sharding
from vreloc_jax import sst
from vreloc_jax import storage
from vreloc_jax import video_level
from vreloc_jax import workdir as workdir_lib
from vreloc_jax.data import batching
from vreloc_jax.data import pairs as pairs_lib
from vreloc_jax.data import splits as splits_lib
from vreloc_jax.data.features import FeatureStore, find_features, open_features
from vreloc_jax.model import ReLocalizer

# Traces of each jitted function, by name: tests use it to bound compilations.
TRACE_COUNTS: collections.Counter = collections.Counter()
# Signals that stop a run gracefully: finish the step, save a checkpoint, raise `Preempted`.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Step metrics that must be finite before anything of the step is saved.
FINITE_METRICS = {"loss": "loss", "grad_norm": "gradient norm"}


@dataclasses.dataclass
class Benchmark:
  """A benchmark directory read and validated: entries, fixed pairs, features."""

  data_dir: str
  features_path: str
  store: FeatureStore
  entries: dict[str, list[splits_lib.Entry]]
  pairs: dict[str, list[pairs_lib.Pair]]
  pair_files: dict[str, str]

  @property
  def feature_dim(self) -> int:
    return int(self.store.feature_dim)


def cache_root() -> str:
  """Where generated benchmarks are cached: $VRELOC_CACHE (local or gs://…), else
  ~/.cache/vreloc_jax."""
  return os.environ.get("VRELOC_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vreloc_jax")


def synthetic_version(config: ml_collections.ConfigDict) -> int:
  """The synthetic generator version of a config (work directories from before the field: 3)."""
  return int(config.data.get("synthetic_version", 3))


def synthetic_dir(config: ml_collections.ConfigDict) -> str:
  """Where the synthetic default benchmark of a config is cached."""
  if config.data.synthetic_dir:
    return config.data.synthetic_dir
  return storage.join(cache_root(), f"synthetic-v{synthetic_version(config)}-seed"
                      f"{config.data.synthetic_seed}-scale{config.data.synthetic_scale:g}")


def recordings_dir(config: ml_collections.ConfigDict) -> str:
  """Where the real-recordings benchmark of a config is cached."""
  from vreloc_jax.data import recordings  # Imported lazily: only this benchmark needs it.
  return storage.join(cache_root(), f"recordings-{config.data.recordings}-v{recordings.VERSION}"
                      f"-seed{config.data.recordings_seed}")


# The files whose digest every host compares after building a generated benchmark.
_DIGEST_NAMES = ("manifest", "train.json", "val.json", "test.json", "length.json")


def resolve_data_dir(config: ml_collections.ConfigDict) -> str:
  """The benchmark directory: ``config.data.dir``, else a generated one (built once, cached).

  Generated: the real-recordings benchmark ``config.data.recordings`` when set,
  else the synthetic default. Several processes (hosts): with a local cache every
  process builds its own copy (a cache hit after the first run; the build is
  deterministic, takes seconds to a minute, and needs no shared file system; hosts
  sharing the directory are safe, a build is renamed into place whole); with a
  cache on cloud storage process 0 builds it and the others wait for it. Then every
  process checks that they all hold the same benchmark (a digest of its manifest and
  split files) and raises if not (say, different project versions).

  Raises:
    ValueError: the hosts' generated benchmarks differ.
  """
  if config.data.dir:
    return config.data.dir
  if config.data.get("recordings"):
    from vreloc_jax.data import recordings  # Imported lazily: only this benchmark needs it.
    out = recordings_dir(config)
    manifest_name = recordings.MANIFEST_NAME
    build = functools.partial(recordings.build, out, source=config.data.recordings,
                              seed=config.data.recordings_seed)
  else:
    from vreloc_jax.data import synthetic  # Imported lazily: only the default needs it.
    out = synthetic_dir(config)
    manifest_name = synthetic.MANIFEST_NAME
    build = functools.partial(synthetic.generate, out, seed=config.data.synthetic_seed,
                              scale=config.data.synthetic_scale,
                              version=synthetic_version(config))
  if jax.process_index() == 0 or storage.is_local(out):
    logging.info("Generated benchmark: %s (built once, then cached).", out)
    build()  # A cache hit (same generator version and settings) is instant.
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("generated benchmark ready")
    from vreloc_jax.data import directory
    names = [manifest_name if n == "manifest" else n for n in _DIGEST_NAMES]
    mine = np.frombuffer(directory.digest(out, names), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 32]
    differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
      raise ValueError(f"the generated benchmark {out} differs between processes 0 and "
                       f"{differ[0]} (another project version or numpy on that host?); "
                       "give every host the same installation, or build it once on shared "
                       "storage and pass --config.data.dir")
  return out


def load_benchmark(config: ml_collections.ConfigDict,
                   split_names: tuple[str, ...] = splits_lib.SPLITS) -> Benchmark:
  """Reads the splits, the evaluation pairs and the features a run needs."""
  data_dir = resolve_data_dir(config)
  features_path = config.data.features or find_features(data_dir)
  store = open_features(features_path)
  entries, pairs, pair_files = {}, {}, {}
  for name in split_names:
    path = splits_lib.split_path(data_dir, name)
    entries[name] = splits_lib.load_split(path)
    store.preload(entries[name])
    if name != "train":
      pairs[name], pair_files[name] = pairs_lib.load_eval_pairs(
          path, entries[name], name, seed=config.data.pair_seed)
  return Benchmark(data_dir=data_dir, features_path=features_path, store=store,
                   entries=entries, pairs=pairs, pair_files=pair_files)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam, learning rate divided by 10 every ``decay_every`` steps, global-norm clipping."""
  schedule = optax.exponential_decay(config.train.learning_rate,
                                     transition_steps=config.train.decay_every,
                                     decay_rate=config.train.decay_factor, staircase=True)
  return optax.chain(optax.clip_by_global_norm(config.train.grad_clip_norm),
                     optax.adam(schedule))


# config.model_name -> model class. The paper's model and CGBM label every reference
# step (start, end, inside, outside); the others score candidate segments.
MODELS = {"relocalizer": ReLocalizer, "cgbm": cgbm.CGBM, "sst": sst.SST,
          "video_level": video_level.VideoLevel}
# Segment-scoring models -> their training loss (`losses`), and its metric name.
CANDIDATE_LOSSES = {"sst": ("loss_p", losses.proposal_cross_entropy),
                    "video_level": ("loss_t", losses.triplet_loss)}


def model_name(config: ml_collections.ConfigDict) -> str:
  """``config.model_name``; absent: "relocalizer", the paper's."""
  return config.get("model_name", "relocalizer")


def scores_candidates(config: ml_collections.ConfigDict) -> bool:
  """Whether the configured model scores candidate segments (`vreloc_jax.candidates`)."""
  return model_name(config) in CANDIDATE_LOSSES


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The model named by ``config.model_name`` (absent: "relocalizer", the paper's)."""
  name = model_name(config)
  if name not in MODELS:
    raise ValueError(f"model_name must be one of {sorted(MODELS)}, got {name!r}")
  if name in CANDIDATE_LOSSES and (config.supervision != "full"
                                   or config.loss.coattention_weight > 0):
    raise ValueError(f"{name} trains with full supervision and its own loss only; got "
                     f"supervision={config.supervision!r}, loss.coattention_weight="
                     f"{config.loss.coattention_weight}")
  return MODELS[name](config.model)


def inference_name(config: ml_collections.ConfigDict) -> str:
  """How predictions are made, as results files record it: ``eval.inference``, or
  "best_candidate" for a segment-scoring model."""
  return "best_candidate" if scores_candidates(config) else config.eval.inference


def candidate_confidence(best: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """A segment-scoring model's score of its prediction as a confidence in [0, 1]: SST's
  sigmoid, or for the video-level baseline 1 - d^2 / 4 (d: the distance of unit vectors)."""
  if model_name(config) == "sst":
    return jax.nn.sigmoid(best)
  return 1.0 + best / 4.0


def candidate_loss(out: dict[str, jax.Array], batch: dict[str, jax.Array],
                   config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The training loss of a segment-scoring model, named as its metric."""
  name, loss_fn = CANDIDATE_LOSSES[model_name(config)]
  options = {"sst": lambda: dict(positive_iou=config.loss.positive_iou),
             "video_level": lambda: dict(margin=config.loss.triplet_margin,
                                         negative_iou=config.loss.negative_iou)}
  return {name: loss_fn(out["candidate_scores"], out["candidate_mask"], batch["segment"],
                        batch["example_mask"], **options[model_name(config)]())}


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module, rng: jax.Array,
                       feature_dim: int) -> dict[str, Any]:
  """Parameters, optimizer state and step, as one pytree (what a checkpoint holds)."""
  query = jnp.zeros((1, 4, feature_dim), jnp.float32)
  reference = jnp.zeros((1, 8, feature_dim), jnp.float32)
  params = model.init(rng, query, jnp.ones((1, 4), bool), reference, jnp.ones((1, 8), bool),
                      deterministic=True)["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "opt_state": make_optimizer(config).init(params)}


INFERENCES = ("weak", "full", "query_length", "windows")
COATTENTION_FORMS = ("paper", "windows", "both")


def coattention_form(config: ml_collections.ConfigDict) -> str:
  """``loss.coattention_form``; absent (a run of an earlier version): "paper"."""
  return config.loss.get("coattention_form", "paper")


def predict_segments(outputs: dict[str, jax.Array], batch: dict[str, jax.Array],
                     config: ml_collections.ConfigDict) -> jax.Array:
  """The predicted segment [s, e) of each reference, by the config's inference rule.

  ``eval.inference``: "weak" (the paper's longest run above the mean p_inside),
  "full" (start/end search), "query_length" (an extension: the query-long
  window of highest p_inside; `segments.search_query_length`) or "windows"
  (an extension: the candidate window of highest log-odds; `segments.search_windows`).
  """
  lengths = batch["reference_length"]  # [batch]
  if config.eval.inference == "weak":
    return segments.search_weak(outputs["probs"][..., losses.INSIDE], lengths)
  if config.eval.inference == "full":
    return segments.search_full(outputs["log_probs"], lengths, max_length=config.eval.max_length,
                                form=config.eval.search_form)
  query_lengths = batch["query_mask"].sum(axis=1).astype(jnp.int32)  # [batch]
  if config.eval.inference == "query_length":
    return segments.search_query_length(outputs["probs"][..., losses.INSIDE], lengths,
                                        query_lengths)
  if config.eval.inference == "windows":
    return segments.search_windows(outputs["log_probs"], lengths, query_lengths,
                                   tuple(config.eval.window_scales))
  raise ValueError(f"unknown eval.inference {config.eval.inference!r}; expected one of "
                   f"{INFERENCES}")


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array, *,
               model: nn.Module, config: ml_collections.ConfigDict
               ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: {"step", "params", "opt_state"} (replicated; donated by the caller).
    batch: a global batch (`vreloc_jax.data.batching`); weak batches carry no
      ``segment``, and then the cross-entropy cannot be (and is not) used.
    rng: the run's base key as raw key data (uint32, `jax.random.key_data`);
      dropout uses ``fold_in(rng, step)``.
    model: the `ReLocalizer`.
    config: the run's configuration.

  Returns:
    The new state and scalar metrics.
  """
  TRACE_COUNTS["train_step"] += 1
  step = state["step"]
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
  reference_mask = batch["reference_mask"]  # [batch, len_ref]
  example_mask = batch["example_mask"]  # [batch]
  use_ce = config.loss.cross_entropy_weight > 0
  if use_ce and "segment" not in batch:
    raise ValueError("cross-entropy needs annotated references, but the batch has no 'segment'")

  def loss_fn(params):
    extra = {"segment": batch["segment"]} if scores_candidates(config) else {}
    out = model.apply({"params": params}, batch["query"], batch["query_mask"], batch["reference"],
                      reference_mask, deterministic=False, rngs={"dropout": dropout_rng},
                      **extra)
    if scores_candidates(config):
      terms = candidate_loss(out, batch, config)
      return sum(terms.values()), terms
    terms = {}
    total = jnp.zeros((), jnp.float32)
    form = coattention_form(config)
    if config.loss.coattention_weight > 0 and form in ("windows", "both"):
      terms["loss_cw"] = losses.window_coattention_loss(
          out["log_probs"], batch["query"], batch["query_mask"], batch["reference"],
          reference_mask, tuple(config.eval.window_scales), config.loss.alpha,
          config.loss.window_temperature, example_mask=example_mask)
      total += config.loss.coattention_weight * terms["loss_cw"]
    if config.loss.coattention_weight > 0 and form in ("paper", "both"):
      coatt = functools.partial(losses.coattention_loss, batch["query"], batch["query_mask"],
                                batch["reference"], reference_mask, out["probs"],
                                config.loss.alpha, example_mask=example_mask)

      def with_masks():  # Action/background masks from the predicted segment, held fixed.
        predicted = jax.lax.stop_gradient(predict_segments(out, batch, config))  # [batch, 2]
        return coatt(action_mask=losses.segment_mask(predicted, reference_mask.shape[1]))

      # Only the branch of the current step runs (the segment search only once masks are on).
      terms["loss_c"] = jax.lax.cond(step >= config.loss.mask_after_steps, with_masks, coatt)
      total += config.loss.coattention_weight * terms["loss_c"]
    if use_ce:
      terms["loss_w"] = losses.weighted_cross_entropy(out["logits"], batch["segment"],
                                                      reference_mask, example_mask)
      total += config.loss.cross_entropy_weight * terms["loss_w"]
    return total, terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  tx = make_optimizer(config)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  lr = config.train.learning_rate * config.train.decay_factor ** (step // config.train.decay_every)
  new_state = {"step": step + 1, "params": params, "opt_state": opt_state}
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                     "learning_rate": lr, **terms}


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: nn.Module,
              config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Predictions of a global batch, and how well each separates the query's action.

  Returns:
    ``segments``: the predicted ``[s, e)``, int32 [batch, 2];
    ``score``: the model's confidence in it, in [0, 1], float32 [batch]: the mean
    p_inside over the segment, or a segment-scoring model's `candidate_confidence`;
    ``loss_c``: the co-attention loss of each example with the action and
    background masks of its predicted segment (the criterion weak training
    minimizes once masks are on; with ``loss.coattention_form="windows"`` the
    regions weigh their steps uniformly, as that objective scores windows; it
    reads no annotation), float32 [batch];
    ``probs``: float32 [batch, len_ref, 4] and ``attention``: float32
    [batch, len_ref, heads] H^matt, for figures (`vreloc_jax.figures`).
    A segment-scoring model (`scores_candidates`) predicts its best candidate;
    its ``probs`` are that segment's one-hot labels (`losses.soft_labels`), from
    which ``loss_c`` is computed alike, and its ``attention`` has no heads.
  """
  TRACE_COUNTS["eval_step"] += 1
  out = model.apply({"params": params}, batch["query"], batch["query_mask"], batch["reference"],
                    batch["reference_mask"], deterministic=True)
  if scores_candidates(config):
    # The best candidate; its one-hot labels stand in for per-step probabilities.
    scores = jnp.where(out["candidate_mask"], out["candidate_scores"], candidates.NEG_INF)
    predicted = candidates.best_candidate(scores, batch["reference_length"])  # [batch, 2]
    len_ref = batch["reference_mask"].shape[1]
    start, k = candidates.candidate_index(predicted, scores.shape[2])
    best = scores[jnp.arange(scores.shape[0]), start, k]  # [batch]
    score = candidate_confidence(best, config)  # [batch]
    out = {"probs": losses.soft_labels(predicted, len_ref),  # [batch, len_ref, 4]
           "attention": jnp.zeros(batch["reference_mask"].shape + (0,), jnp.float32)}
  else:
    predicted = predict_segments(out, batch, config)  # [batch, 2]
    inside = losses.segment_mask(predicted, batch["reference_mask"].shape[1])  # [batch, len_ref]
    score = (jnp.sum(jnp.where(inside, out["probs"][..., losses.INSIDE], 0.0), axis=1)
             / jnp.maximum(inside.sum(axis=1), 1))  # [batch]
  action_mask = losses.segment_mask(predicted, batch["reference_mask"].shape[1])  # [batch, len_ref]
  region_probs = out["probs"]
  if coattention_form(config) != "paper":
    # Uniform weights on each region: the criterion of the predicted window, as that
    # objective scores windows (`losses.window_criterion`).
    region_probs = jnp.stack([jnp.zeros_like(action_mask), jnp.zeros_like(action_mask),
                              action_mask, ~action_mask], axis=-1).astype(jnp.float32)
  loss_c = losses.coattention_per_example(
      batch["query"], batch["query_mask"], batch["reference"], batch["reference_mask"],
      region_probs, config.loss.alpha, action_mask=action_mask)  # [batch]
  return {"segments": predicted, "score": score, "loss_c": loss_c, "probs": out["probs"],
          "attention": out["attention"]}


def leaves_finite(tree: Any) -> Any:
  """Whether each leaf of a pytree is all finite: a pytree of bool scalars."""
  return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree)


class Runner:
  """The jit-compiled programs of one configuration on one mesh."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               feature_dim: int):
    self.config = config
    self.mesh = mesh
    self.feature_dim = feature_dim
    self.model = create_model(config)
    replicated = sharding.replicated(mesh)
    batch = sharding.batch_sharding(mesh)
    options = compilation.compiler_options(config, mesh.devices.flat[0].platform)
    self.init = jax.jit(functools.partial(create_train_state, config, self.model,
                                          feature_dim=feature_dim), out_shardings=replicated,
                        compiler_options=options)
    self.train_step = compilation.Program(jax.jit(
        functools.partial(train_step, model=self.model, config=config),
        in_shardings=(replicated, batch, replicated), out_shardings=(replicated, replicated),
        donate_argnums=(0,), compiler_options=options))
    self.eval_step = compilation.Program(jax.jit(
        functools.partial(eval_step, model=self.model, config=config),
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

  def abstract_batch(self, layout: dict[str, tuple[tuple[int, ...], type]]
                     ) -> dict[str, jax.ShapeDtypeStruct]:
    """A global batch of `batching.batch_layout` ``layout``, as sharded abstract arrays."""
    batch = sharding.batch_sharding(self.mesh)
    return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch)
            for name, (shape, dtype) in layout.items()}

  def compile_ahead(self, plan: Sequence[tuple[str, dict]], rng: jax.Array) -> None:
    """Compiles programs in the background, in the order of ``plan`` (`compile_plan`).

    Args:
      plan: ("train" or "eval", `batching.batch_layout`) of the batches to come.
      rng: the train step's ``rng`` argument (only its signature is used).
    """
    state = self.abstract_state()
    for kind, layout in plan:
      if kind == "train":
        self.train_step.compile_ahead(state, self.abstract_batch(layout), rng)
      else:
        self.eval_step.compile_ahead(state["params"], self.abstract_batch(layout))

  def close(self) -> None:
    """Drops the background compilations not started yet."""
    self.train_step.cancel()
    self.eval_step.cancel()

  def predict(self, params: Any, pairs: list[pairs_lib.Pair], store: FeatureStore,
              keep: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray, dict[int, Any]]:
    """Predicts every pair.

    Args:
      params: the model's parameters.
      pairs: the pairs, in any order.
      store: their features.
      keep: indices of pairs whose per-step outputs are returned too.

    Returns:
      ``[s, e)`` of every pair, int [num_pairs, 2]; each one's `loss_c`, float
      [num_pairs]; and for each index in ``keep`` its outputs over the valid
      reference steps: ``{"probs": [len_ref, 4], "attention": [len_ref, heads]}``.
    """
    config = self.config
    sharding.check_batch_size(config.eval.batch_size, self.mesh)
    predicted = np.zeros((len(pairs), 2), np.int64)
    loss_c = np.zeros((len(pairs),), np.float64)
    kept: dict[int, Any] = {}
    for indices, local in batching.eval_batches(
        pairs, store, config.eval.batch_size, config.data.query_buckets,
        config.data.reference_buckets, jax.process_index(), jax.process_count()):
      out = self.eval_step(params, sharding.to_global(local, self.mesh))
      real = indices >= 0
      predicted[indices[real]] = np.asarray(out["segments"])[real]
      loss_c[indices[real]] = np.asarray(out["loss_c"])[real]
      for row in np.nonzero(np.isin(indices, list(keep)))[0]:
        length = pairs[indices[row]].reference.window_length
        kept[int(indices[row])] = {"probs": np.asarray(out["probs"][row, :length]),
                                   "attention": np.asarray(out["attention"][row, :length])}
    return predicted, loss_c, kept


def plotted_pairs(num_pairs: int, count: int) -> list[int]:
  """The fixed pairs drawn at every evaluation: ``count`` evenly spaced indices."""
  count = min(count, num_pairs)
  return sorted({int(i) for i in np.linspace(0, num_pairs - 1, count).round()}) if count else []


def evaluate(runner: Runner, params: Any, bench: Benchmark, split: str,
             results_path: str | None, extra: dict[str, Any] | None = None,
             plot_dir: str | None = None) -> dict[str, Any]:
  """Scores a model on a split's fixed pairs; process 0 writes the files.

  The results hold, besides the mAPs, ``loss_c``: the mean co-attention loss of
  the predictions (`eval_step`), an annotation-free measure of their quality.
  With ``plot_dir``, the figures of ``eval.plot_pairs`` fixed pairs
  (`plotted_pairs`) are drawn there (`vreloc_jax.figures`).
  """
  pairs = bench.pairs[split]
  keep = plotted_pairs(len(pairs), runner.config.eval.get("plot_pairs", 0)) if plot_dir else []
  predicted, loss_c, kept = runner.predict(params, pairs, bench.store, keep=keep)
  if jax.process_index() != 0:
    results_path = None
  results = metrics.evaluate_predictions(
      split, pairs, predicted, results_path,
      extra={"pair_file": bench.pair_files[split], "loss_c": float(loss_c.mean()),
             **(extra or {})})
  if kept and jax.process_index() == 0:
    from vreloc_jax import figures  # Imported lazily: only figures need matplotlib.
    ious = metrics.iou(predicted, np.array([p.reference.segment for p in pairs]))
    for index, outputs in kept.items():
      pair = pairs[index]
      figures.plot_pair(
          storage.join(plot_dir, f"{split}_pair{index}.png"), outputs["probs"],
          predicted[index], groundtruth=pair.reference.segment,
          attention=outputs["attention"], groups=runner.config.model.get("attention_groups"),
          attention_label=figures.attention_rows(runner.config),
          title=f"{split} pair {index}: query {pair.query.describe()}, reference "
                f"{pair.reference.describe()}; IoU {ious[index]:.2f}"
                + (f"; step {extra['step']}" if extra and "step" in extra else ""))
  return results


def make_train_batches(config: ml_collections.ConfigDict, bench: Benchmark
                       ) -> batching.TrainBatches:
  """The training stream: weak (no reference annotation exists) or full supervision."""
  train = bench.entries["train"]
  if config.supervision == "weak":
    queries, references = pairs_lib.weak_split(train, seed=config.seed,
                                               query_fraction=config.data.weak_query_fraction)
    sample: Callable = pairs_lib.WeakSampler(queries, references).sample
  elif config.supervision == "full":
    sample = pairs_lib.FullSampler(train, crop_probability=config.data.crop_probability).sample
  else:
    raise ValueError(f"unknown supervision {config.supervision!r}; expected 'weak' or 'full'")
  return batching.TrainBatches(sample, bench.store, config.train.batch_size,
                               config.data.query_buckets, config.data.reference_buckets,
                               seed=config.seed, process_index=jax.process_index(),
                               process_count=jax.process_count())


def compile_plan(config: ml_collections.ConfigDict, bench: Benchmark,
                 batches: batching.TrainBatches, first_step: int) -> list[tuple[str, dict]]:
  """The programs a run needs from ``first_step`` on, in the order it first needs them.

  Returns:
    ("train" or "eval", `batching.batch_layout`) of each distinct global batch shape:
    the train batches of the remaining steps, the val batches at the first evaluation
    to come, the test batches at the end.
  """
  num_steps, every = config.train.num_steps, config.train.eval_every
  dim = bench.feature_dim
  first_use: dict[tuple, tuple[float, str, dict]] = {}

  def note(when: float, kind: str, layout: dict) -> None:
    key = (kind, tuple(sorted((k, shape, np.dtype(t).str) for k, (shape, t) in layout.items())))
    first_use.setdefault(key, (when, kind, layout))

  for step in range(first_step, num_steps):  # the batch of step + 1
    note(step, "train", batches.layout(step, dim))
  next_eval = min(num_steps, (first_step // every + 1) * every)
  evaluations = [("val", next_eval - 0.5)] if first_step < num_steps else []
  for split, when in evaluations + [("test", num_steps)]:
    for layout in batching.eval_layouts(bench.pairs[split], config.eval.batch_size,
                                        config.data.query_buckets,
                                        config.data.reference_buckets, dim):
      note(when, "eval", layout)
  return [(kind, layout) for _, kind, layout in sorted(first_use.values(), key=lambda v: v[0])]


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


def _check_state_finite(step: int, finite: Any) -> None:
  """Raises FloatingPointError naming the step if a leaf of the state is not all finite.

  Args:
    step: the step the state is at.
    finite: `leaves_finite` of the state.
  """
  bad = [jax.tree_util.keystr(path) for path, ok in jax.tree_util.tree_leaves_with_path(finite)
         if not bool(ok)]
  if bad:
    raise FloatingPointError(
        f"non-finite values in the training state after step {step}, in "
        f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}; it was not saved. Lower "
        "train.learning_rate; a rerun resumes from the last checkpoint")


def _save(manager: Any, runner: Runner, step: int, state: dict[str, Any],
          val_metrics: dict[str, float] | None = None) -> None:
  """Saves a checkpoint of ``state`` at ``step`` once the whole state is checked finite."""
  _check_state_finite(step, runner.leaves_finite(state))
  checkpoints.save(manager, step, state, val_metrics)


class Preempted(Exception):
  """A signal stopped training; every process saved a checkpoint first. Rerun to resume."""

  def __init__(self, step: int, signum: int):
    self.step = step
    self.signal_name = signal.Signals(signum).name
    super().__init__(f"stopped by {self.signal_name} with a checkpoint of step {step}; rerun "
                     "the same command to resume from it" if step else
                     f"stopped by {self.signal_name} before the first step; rerun the same "
                     "command to start")


class StopSignals:
  """Turns SIGTERM and SIGINT into a request to stop that the training loop polls.

  A context manager: it installs its handlers on entry and puts the previous ones back
  on exit. The first signal only records its number (`signum`); a second SIGINT does
  what SIGINT did before (by default: KeyboardInterrupt), so that Ctrl-C twice still
  interrupts at once. Repeated SIGTERMs are ignored: schedulers send SIGKILL when
  their grace period ends. A signal that was ignored on entry stays ignored, and off
  the main thread (where Python cannot set handlers) nothing is installed.
  """

  def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
    self.signals = signals
    self.signum = 0  # The first stop signal received; 0: none.
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Training outside the main thread: SIGTERM and SIGINT will not stop "
                      "it at a step boundary.")
      return self
    for signum in self.signals:
      previous = signal.getsignal(signum)
      if previous is signal.SIG_IGN:
        continue
      self._previous[signum] = previous
      signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    if self.signum and signum == signal.SIGINT:
      previous = self._previous.get(signum, signal.SIG_DFL)
      if callable(previous):
        previous(signum, frame)
      else:
        signal.signal(signum, previous)
        os.kill(os.getpid(), signum)
      return
    self.signum = self.signum or signum


def agree_on_signal(local: int) -> int:
  """The stop signal any process received (0: none), the same on every process.

  With several processes this is a collective (an all-gather of one int per process):
  every process must call it at the same points of the run.

  Args:
    local: the signal number this process received, or 0.
  """
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.max(multihost_utils.process_allgather(np.int32(local))))  # [processes] -> max


def _preempted(step: int, signum: int) -> Preempted:
  """The exception that stops the run once the checkpoint of ``step`` is saved (logged)."""
  logging.warning("%s received: stopping with a checkpoint of step %d.",
                  signal.Signals(signum).name, step)
  return Preempted(step, signum)


def _stop_if_signalled(stop: StopSignals, step: int) -> None:
  """Raises `Preempted` if any process received a stop signal (agreed by all processes).

  Args:
    stop: this process's signal handlers.
    step: the latest checkpoint's step (0: none), from which a rerun resumes.
  """
  signum = agree_on_signal(stop.signum)
  if signum:
    raise _preempted(step, signum)


def baseline_rows(config: ml_collections.ConfigDict, bench: Benchmark, split: str
                  ) -> dict[str, dict[str, Any]]:
  """The training-free baselines' results on a split, for the final table."""
  rows = {}
  for method in config.eval.baselines:
    from vreloc_jax import baselines  # Imported lazily: only the final table needs it.
    rows[method] = baselines.evaluate_baseline(method, bench.entries, bench.pairs[split],
                                               bench.store, split=split, seed=config.seed)
  return rows


def _evaluate_and_save(runner: Runner, bench: Benchmark, manager: Any,
                       writer: workdir_lib.MetricsWriter,
                       workdir: str, step: int, state: dict[str, Any]) -> None:
  """Evaluates ``state`` on val, saves it with the val metrics, then records them.

  Orbax records a checkpoint's metrics only when it saves it, so the evaluation comes
  first; if it fails, the checkpoint is still saved (without metrics: "best" and
  "min_loss_c" will not consider it) before the error goes on.
  """
  try:
    val = evaluate(runner, state["params"], bench, "val",
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
                       stop: StopSignals | None = None) -> dict[str, Any]:
  """Trains (resuming from the latest checkpoint), then evaluates on test.

  SIGTERM and SIGINT stop it gracefully (see the module docstring); the previous
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
  with workdir_lib.claim(workdir) as claim:
    if stop is not None:
      return _train_and_evaluate(config, workdir, stop, claim)
    with StopSignals() as own:
      return _train_and_evaluate(config, workdir, own, claim)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stop: StopSignals, claim: workdir_lib.Claim | None = None
                        ) -> dict[str, Any]:
  """`train_and_evaluate`, polling ``stop`` after every step and between phases."""
  storage.make_dirs(workdir)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, mesh, "train.batch_size")
  sharding.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  if config.eval.inference not in INFERENCES:
    raise ValueError(f"eval.inference must be one of {INFERENCES}, got {config.eval.inference!r}")
  if coattention_form(config) not in COATTENTION_FORMS:
    raise ValueError(f"loss.coattention_form must be one of {COATTENTION_FORMS}, "
                     f"got {coattention_form(config)!r}")
  if config.eval.select not in checkpoints.SELECTIONS:
    raise ValueError(f"eval.select must be one of {sorted(checkpoints.SELECTIONS)}, "
                     f"got {config.eval.select!r}")
  if config.train.checkpoint_every < 1:
    raise ValueError(f"train.checkpoint_every must be >= 1, got {config.train.checkpoint_every}")
  bench = load_benchmark(config)
  workdir_lib.save_config(config, workdir, bench.data_dir)
  logging.info("Data: %s (features %s, dim %d); %s; %d devices, %d processes.", bench.data_dir,
               bench.features_path, bench.feature_dim,
               ", ".join(f"{k} {len(v)}" for k, v in bench.entries.items()), mesh.size,
               jax.process_count())

  runner = Runner(config, mesh, bench.feature_dim)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  manager = checkpoints.manager(workdir, config.train.keep_checkpoints)
  writer = workdir_lib.MetricsWriter(workdir)
  try:
    return _train_then_test(config, workdir, stop, bench, runner, manager, writer, init_rng,
                            step_rng, claim)
  finally:
    runner.close()
    writer.close()
    manager.close()


def _train_then_test(config: ml_collections.ConfigDict, workdir: str, stop: StopSignals,
                     bench: Benchmark, runner: Runner, manager: Any,
                     writer: workdir_lib.MetricsWriter, init_rng: jax.Array,
                     step_rng: jax.Array, claim: workdir_lib.Claim | None = None
                     ) -> dict[str, Any]:
  """The training loop from the latest checkpoint, then the test evaluation.

  ``claim.started`` is set once there is a run to keep: a checkpoint resumed or a step done.
  """
  mesh = runner.mesh
  step_rng = sharding.replicate(jax.random.key_data(step_rng), mesh)
  batches = make_train_batches(config, bench)
  num_steps = config.train.num_steps
  if (config.get("compile") or {}).get("ahead", False):
    # While the parameters are initialized or restored, and then while it trains.
    runner.compile_ahead(compile_plan(config, bench, batches, manager.latest_step() or 0),
                         step_rng)
  state = checkpoints.restore(manager, "latest", runner.abstract_state())
  if state is None:
    state = runner.init(init_rng)
  else:
    logging.info("Resumed from step %d of %s.", int(state["step"]), manager.directory)
  first_step = int(state["step"])
  if claim is not None and first_step > 0:
    claim.started = True
  writer.truncate_after(first_step)
  _stop_if_signalled(stop, first_step)  # A signal during the set-up: nothing new to save.
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
    signum = agree_on_signal(stop.signum)  # Every process, every step: they stop together.
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
      raise _preempted(step, signum)
  if unchecked is not None:
    _check_finite(*unchecked)
  manager.wait_until_finished()

  rows = {}
  test = None
  # The configured selection gives the run's result (results/test.json); when it is not
  # the annotation-selected "best", that one is reported beside it, labelled. A signal
  # between these evaluations stops the run too: the rerun only evaluates.
  for which in dict.fromkeys((config.eval.select, "best")):
    _stop_if_signalled(stop, num_steps)
    step = checkpoints.resolve_step(manager, which)
    state = checkpoints.restore(manager, step, runner.abstract_state())
    results = evaluate(runner, state["params"], bench, "test",
                       workdir_lib.test_results_file(workdir, which, config.eval.select),
                       {"checkpoint_step": step, "selection": which, "config": config.supervision,
                        "variant": config.variant, "inference": inference_name(config)})
    test = test or results
    name = (f"ours ({config.supervision}, {config.variant}" if model_name(config) == "relocalizer"
            else f"{model_name(config)} ({config.supervision}")
    rows[f"{name}, {which}: step {step})"] = results
  _stop_if_signalled(stop, num_steps)
  baselines = baseline_rows(config, bench, "test")
  if jax.process_index() == 0:
    storage.write_json(workdir_lib.results_file(workdir, workdir_lib.BASELINES_NAME),
                       baselines)
  table = metrics.format_table({**baselines, **rows},
                               title=f"test split, {len(bench.pairs['test'])} pairs "
                               f"({bench.data_dir})")
  if jax.process_index() == 0:
    print(table, flush=True)
  return test
