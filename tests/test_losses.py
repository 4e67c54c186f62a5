"""Tests of vreloc_jax.losses: hand-computed cases, masking, gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreloc_jax import losses
from vreloc_jax.relocalizer import model as model_lib

ALPHA = 0.3


# ----------------------------------------------------------------- labels and masks


def test_soft_labels_hand_cases():
  labels = np.asarray(losses.soft_labels(jnp.array([[1, 3], [2, 3], [0, 4]]), 5))
  assert labels.shape == (3, 5, 4) and labels.dtype == np.float32
  out = [0, 0, 0, 1]
  np.testing.assert_allclose(labels[0], [out, [.5, 0, .5, 0], [0, .5, .5, 0], out, out])
  third = 1 / 3
  np.testing.assert_allclose(labels[1], [out, out, [third, third, third, 0], out, out], rtol=1e-6)
  np.testing.assert_allclose(labels[2], [[.5, 0, .5, 0], [0, 0, 1, 0], [0, 0, 1, 0],
                                         [0, .5, .5, 0], out])
  np.testing.assert_allclose(labels.sum(-1), 1.0, rtol=1e-6)


def test_soft_labels_degenerate_segment_is_finite():
  labels = np.asarray(losses.soft_labels(jnp.array([[0, 0]]), 3))  # e.g. a filler example
  np.testing.assert_allclose(labels.sum(-1), 1.0)


def test_segment_mask():
  mask = np.asarray(losses.segment_mask(jnp.array([[1, 3], [0, 1], [2, 4]]), 4))
  np.testing.assert_array_equal(mask, [[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]])
  assert mask.dtype == bool


# ----------------------------------------------------------------- weighted cross-entropy


def test_weighted_cross_entropy_hand_case():
  p = np.array([[.1, .1, .2, .6], [.4, .2, .3, .1], [.25, .25, .25, .25]])
  logits = jnp.asarray(np.log(p)[None], jnp.float32)  # [1, 3, 4]
  loss = losses.weighted_cross_entropy(logits, jnp.array([[1, 2]]), jnp.ones((1, 3), bool))
  ce0 = -math.log(.6)  # outside
  ce1 = -(math.log(.4) + math.log(.2) + math.log(.3)) / 3  # one-step segment, weight 10
  ce2 = -math.log(.25)  # outside
  np.testing.assert_allclose(loss, (ce0 + 10 * ce1 + ce2) / 3, rtol=1e-6)


def test_weighted_cross_entropy_averages_over_valid_steps_of_the_batch():
  p = np.array([[.1, .1, .2, .6], [.4, .2, .3, .1], [.25, .25, .25, .25]])
  logits = np.zeros((2, 3, 4), np.float32)
  logits[0] = np.log(p)
  mask = np.array([[True, True, True], [True, True, False]])
  loss = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.array([[1, 2], [0, 2]]),
                                       jnp.asarray(mask))
  first = -math.log(.6) - 10 * (math.log(.4) + math.log(.2) + math.log(.3)) / 3 - math.log(.25)
  second = 2 * 10 * math.log(4)  # uniform logits, start step and end step
  np.testing.assert_allclose(loss, (first + second) / 5, rtol=1e-6)


def test_weighted_cross_entropy_ignores_padding_and_fillers():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], bool)
  segment = np.array([[1, 3], [0, 1]])
  reference = losses.weighted_cross_entropy(logits[:, :4], segment, mask[:, :4])

  garbage = np.where(mask[..., None], logits, np.nan)
  garbage[:, 5] = np.inf
  filler = rng.normal(size=(1, 6, 4)).astype(np.float32) * 1e3
  big_logits = np.concatenate([garbage, filler])
  big_mask = np.concatenate([mask, np.ones((1, 6), bool)])
  big_segment = np.concatenate([segment, [[2, 9]]])  # invalid, but a filler
  example_mask = np.array([True, True, False])

  def loss_fn(x):
    return losses.weighted_cross_entropy(x, big_segment, big_mask, example_mask)
  np.testing.assert_allclose(loss_fn(big_logits), reference, rtol=1e-6)
  grad = np.asarray(jax.grad(loss_fn)(jnp.asarray(big_logits)))
  assert np.isfinite(grad).all()
  np.testing.assert_array_equal(grad[:2][~mask], 0.0)
  np.testing.assert_array_equal(grad[2], 0.0)
  # Under jit (no eager validation) the value is the same.
  np.testing.assert_allclose(jax.jit(loss_fn)(big_logits), reference, rtol=1e-6)


def test_weighted_cross_entropy_rejects_bad_segment():
  logits = jnp.zeros((1, 4, 4))
  mask = jnp.array([[True, True, True, False]])
  with pytest.raises(ValueError, match="example 0"):
    losses.weighted_cross_entropy(logits, jnp.array([[1, 4]]), mask)  # beyond length 3
  with pytest.raises(ValueError, match="example 0"):
    losses.weighted_cross_entropy(logits, jnp.array([[2, 2]]), mask)  # empty
  with pytest.raises(ValueError, match="len_ref"):
    losses.weighted_cross_entropy(logits, jnp.array([[0, 1]]), mask[:, :3])


# ----------------------------------------------------------------- co-attention


def onehot_probs(channels):
  return jnp.asarray(np.eye(4, dtype=np.float32)[channels][None])  # [1, Lr, 4]


def coattention(query, reference, probs, **kwargs):
  query = jnp.asarray(query, jnp.float32)[None] if np.ndim(query) == 2 else query
  reference = jnp.asarray(reference, jnp.float32)[None] if np.ndim(reference) == 2 else reference
  return losses.coattention_loss(query, jnp.ones(query.shape[:2], bool), reference,
                                 jnp.ones(reference.shape[:2], bool), probs, ALPHA, **kwargs)


def test_coattention_hand_case_parallel_action():
  # q^a = [1, 1]; g^3 = [1, 0, 0] -> r^a = [1, 1]; g^4 = [0, .5, .5] -> r^b = [1, 0].
  # d+ = 1, d- = a/sqrt2 + (1 - a)/sqrt2 = 1/sqrt2.
  loss = coattention([[1, 0], [1, 2]], [[1, 1], [1, 0], [1, 0]], onehot_probs([2, 3, 3]))
  expected = math.exp(-1) / (math.exp(-1) + math.exp(-1 / math.sqrt(2)))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_coattention_hand_case_alpha():
  # r^a = [1, 0], r^b = [0, 1], q^a = [1, 1]: d+ = 1/sqrt2, d- = a/sqrt2 + (1 - a) * 0.
  loss = coattention([[1, 0], [1, 2]], [[1, 0], [0, 1], [0, 1]], onehot_probs([2, 3, 3]))
  d_pos, d_neg = 1 / math.sqrt(2), ALPHA / math.sqrt(2)
  expected = math.exp(-d_pos) / (math.exp(-d_pos) + math.exp(-d_neg))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def np_coattention(q, r, probs, alpha, action=None):
  """Straight numpy transcription of eqs. 13-18 for one unpadded example."""
  def cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  p3, p4 = probs[:, 2].astype(np.float64), probs[:, 3].astype(np.float64)
  if action is not None:
    p3, p4 = p3 * action, p4 * ~action
  qa = q.mean(axis=0)
  ra, rb = (p3 / p3.sum()) @ r, (p4 / p4.sum()) @ r
  d_pos = cos(qa, ra)
  d_neg = alpha * cos(qa, rb) + (1 - alpha) * cos(ra, rb)
  return math.exp(-d_pos) / (math.exp(-d_pos) + math.exp(-d_neg))


PROBS_3 = np.array([[.2, .2, .5, .1], [.2, .1, .3, .4], [.1, .2, .2, .5]], np.float32)
QUERY_3 = np.array([[1., 0.], [1., 2.]], np.float32)
REF_3 = np.array([[1., 1.], [2., -1.], [-1., 3.]], np.float32)


def test_coattention_matches_numpy_and_action_mask():
  probs = jnp.asarray(PROBS_3[None])
  np.testing.assert_allclose(coattention(QUERY_3, REF_3, probs),
                             np_coattention(QUERY_3, REF_3, PROBS_3, ALPHA), rtol=1e-5)
  action = np.array([True, True, False])
  # g^3 = [.5, .3, 0] / .8 and g^4 = [0, 0, 1].
  masked = coattention(QUERY_3, REF_3, probs, action_mask=jnp.asarray(action[None]))
  np.testing.assert_allclose(masked, np_coattention(QUERY_3, REF_3, PROBS_3, ALPHA, action),
                             rtol=1e-5)
  # The masked loss differs from the unmasked one here.
  assert abs(np_coattention(QUERY_3, REF_3, PROBS_3, ALPHA, action)
             - np_coattention(QUERY_3, REF_3, PROBS_3, ALPHA)) > 1e-3


def test_coattention_empty_region_falls_back_to_unmasked():
  probs = jnp.asarray(PROBS_3[None])
  unmasked = coattention(QUERY_3, REF_3, probs)
  for action in ([False, False, False], [True, True, True]):  # no action / no background
    masked = coattention(QUERY_3, REF_3, probs, action_mask=jnp.array([action]))
    np.testing.assert_allclose(masked, unmasked, rtol=1e-6)


def test_coattention_random_batch_matches_numpy_and_mean_over_examples():
  rng = np.random.default_rng(1)
  lq, lr = [3, 1], [5, 2]
  query = rng.normal(size=(2, 3, 4)).astype(np.float32)
  ref = rng.normal(size=(2, 5, 4)).astype(np.float32)
  probs = np.asarray(jax.nn.softmax(rng.normal(size=(2, 5, 4)), axis=-1), np.float32)
  qm = np.arange(3)[None] < np.array(lq)[:, None]
  rm = np.arange(5)[None] < np.array(lr)[:, None]
  loss = losses.coattention_loss(query, qm, ref, rm, probs, ALPHA)
  expected = [np_coattention(query[b, :lq[b]], ref[b, :lr[b]], probs[b, :lr[b]], ALPHA)
              for b in range(2)]
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
  per_example = losses.coattention_per_example(query, qm, ref, rm, probs, ALPHA)
  np.testing.assert_allclose(per_example, expected, rtol=1e-5)


def test_coattention_ignores_padding_and_fillers():
  rng = np.random.default_rng(2)
  probs = jnp.asarray(PROBS_3[None])
  action = jnp.array([[True, True, False]])
  reference_loss = coattention(QUERY_3, REF_3, probs, action_mask=action)

  # Example 0 padded with NaN garbage (query to 4 steps, reference to 6); example 1 a
  # filler full of garbage; the action mask is True on padded steps too.
  query = np.full((2, 4, 2), np.nan, np.float32)
  query[0, :2] = QUERY_3
  ref = 1e3 * rng.normal(size=(2, 6, 2)).astype(np.float32)
  ref[0, 3::2] = np.nan
  ref[0, :3] = REF_3
  big_probs = rng.uniform(size=(2, 6, 4)).astype(np.float32)
  big_probs[0, 4] = np.nan
  big_probs[0, :3] = PROBS_3
  qm = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  rm = np.array([[1, 1, 1, 0, 0, 0], [1] * 6], bool)
  act = np.array([[1, 1, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0]], bool)
  example_mask = np.array([True, False])

  def loss_fn(p, r):
    return losses.coattention_loss(query, qm, r, rm, p, ALPHA, action_mask=act,
                                   example_mask=example_mask)
  np.testing.assert_allclose(loss_fn(big_probs, ref), reference_loss, rtol=1e-6)
  grad_p = np.asarray(jax.grad(loss_fn)(jnp.asarray(big_probs), jnp.asarray(ref)))
  assert np.isfinite(grad_p).all()
  np.testing.assert_array_equal(grad_p[0, 3:], 0.0)
  np.testing.assert_array_equal(grad_p[1], 0.0)
  assert np.abs(grad_p[0, :3, 2]).max() > 0  # p_inside of the valid steps matters
  np.testing.assert_allclose(jax.jit(loss_fn)(big_probs, ref), reference_loss, rtol=1e-6)


def test_coattention_degenerate_inputs_are_finite():
  probs = jnp.asarray(PROBS_3[None])

  def loss_fn(p, ref):
    return coattention(QUERY_3, ref, p)
  zero_ref = jnp.zeros((1, 3, 2))
  np.testing.assert_allclose(loss_fn(probs, zero_ref), 0.5)  # all cosines are 0
  for p in (probs, jnp.zeros_like(probs)):  # zero probabilities: no mass anywhere
    grads = jax.grad(loss_fn, argnums=(0, 1))(p, zero_ref)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  # No valid example at all: 0.
  empty = losses.coattention_loss(jnp.zeros((1, 2, 2)), jnp.zeros((1, 2), bool), zero_ref,
                                  jnp.ones((1, 3), bool), probs, ALPHA)
  assert float(empty) == 0.0


def test_coattention_prefers_action_mass_on_query_like_frames():
  query = np.array([[1., 0.], [1., .2]], np.float32)
  ref = np.array([[1., .1], [0., 1.], [-.2, 1.]], np.float32)
  good = onehot_probs([2, 3, 3]) * .8 + .05
  bad = onehot_probs([3, 3, 2]) * .8 + .05
  assert float(coattention(query, ref, good)) < float(coattention(query, ref, bad))


# ----------------------------------------------------------------- gradients through the model


def test_total_loss_gradients_are_finite():
  cfg = model_lib.model_config()
  cfg.hidden_dim, cfg.attention_groups, cfg.head_dim = 8, ((2, 1, 1), (2, 3, 2)), 4
  cfg.self_attention_head_dim, cfg.lstm_dim = 4, 8
  model = model_lib.ReLocalizer(cfg)
  rng = np.random.default_rng(3)
  dim = 5
  query = rng.normal(size=(3, 4, dim)).astype(np.float32)
  ref = rng.normal(size=(3, 9, dim)).astype(np.float32)
  qm = np.arange(4)[None] < np.array([4, 2, 0])[:, None]  # last example: an empty filler
  rm = np.arange(9)[None] < np.array([9, 6, 0])[:, None]
  query[~qm] = np.nan  # garbage padding
  ref[~rm] = np.nan
  segment = np.array([[2, 5], [0, 1], [0, 0]])
  example_mask = np.array([True, True, False])
  # Random parameters with the shapes of init (flax's orthogonal LSTM init is slow to
  # compile on CPU, and random biases exercise more of the model).
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), query, qm, ref, rm,
                                             deterministic=True))
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.3, s.dtype), shapes)

  @jax.jit
  def grads(params):
    def total(params):
      out = model.apply(params, query, qm, ref, rm, deterministic=True)
      action = jax.lax.stop_gradient(losses.segment_mask(segment, ref.shape[1]))
      return (losses.weighted_cross_entropy(out["logits"], segment, rm, example_mask)
              + losses.coattention_loss(query, qm, ref, rm, out["probs"], ALPHA,
                                        action_mask=action, example_mask=example_mask))
    return jax.value_and_grad(total)(params)
  value, g = grads(params)
  assert np.isfinite(float(value))
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(g)]
  assert all(np.isfinite(x).all() for x in leaves)
  assert sum(np.abs(x).sum() for x in leaves) > 0


# ----------------------------------------------------------- window co-attention (extension)


def test_window_criterion_argmax_is_the_exhaustive_search():
  from vreloc_jax import baselines, segments
  rng = np.random.default_rng(3)
  for _ in range(5):
    lq, lr, dim = int(rng.integers(2, 9)), int(rng.integers(10, 30)), 6
    query, reference = rng.normal(size=(lq, dim)), rng.normal(size=(lr, dim))
    windows = segments.window_lengths(jnp.array([lq]), jnp.array([lr]), (1.0,))
    criterion = losses.window_criterion(jnp.asarray(query[None], jnp.float32),
                                        jnp.ones((1, lq), bool),
                                        jnp.asarray(reference[None], jnp.float32),
                                        jnp.ones((1, lr), bool), windows, ALPHA)
    start = int(np.argmax(np.asarray(criterion)[0, :lr - lq + 1, 0]))
    assert (start, start + lq) == baselines.coattention_segment(query, reference, ALPHA,
                                                                query_length=True)


def test_window_coattention_optimum_is_the_criterion_best_window():
  """Free logits trained on the loss alone end with the criterion's best window on top."""
  from vreloc_jax import segments
  rng = np.random.default_rng(5)
  batch, lq, len_ref, dim = 4, 4, 20, 8
  query = jnp.asarray(rng.normal(size=(batch, lq, dim)), jnp.float32)
  reference = jnp.asarray(rng.normal(size=(batch, len_ref, dim)), jnp.float32)
  lengths = jnp.array([20, 15, 11, 0])  # the last row is a filler with no step
  reference_mask = jnp.arange(len_ref)[None] < lengths[:, None]
  query_mask = jnp.ones((batch, lq), bool)
  loss = lambda logits: losses.window_coattention_loss(
      jax.nn.log_softmax(logits), query, query_mask, reference, reference_mask, (1.0,), ALPHA,
      temperature=0.05)
  logits = jnp.zeros((batch, len_ref, 4))
  grad = jax.grad(loss)(logits)
  assert np.isfinite(np.asarray(grad)).all()
  for _ in range(300):
    logits = logits - 2.0 * jax.grad(loss)(logits)
  predicted = np.asarray(segments.search_windows(jax.nn.log_softmax(logits), lengths,
                                                 jnp.full((batch,), lq), (1.0,)))
  windows = segments.window_lengths(jnp.full((batch,), lq), lengths, (1.0,))
  criterion = np.asarray(losses.window_criterion(query, query_mask, reference, reference_mask,
                                                 windows, ALPHA))[..., 0]
  for b in range(3):
    best = int(np.argmax(criterion[b, :int(lengths[b]) - lq + 1]))
    assert predicted[b].tolist() == [best, best + lq]
  assert predicted[3].tolist() == [0, 0]


# --------------------------------------------------- self-training on the criterion (extension)


def test_criterion_segments_are_the_exhaustive_search_of_the_baseline():
  from vreloc_jax import baselines
  rng = np.random.default_rng(8)
  lengths, query_lengths = [20, 13, 6, 1, 5], [4, 7, 6, 3, 2]  # row 2: query as long as it
  batch, len_ref, lq, dim = len(lengths), 20, 7, 6
  reference = rng.normal(size=(batch, len_ref, dim)).astype(np.float32)
  query = rng.normal(size=(batch, lq, dim)).astype(np.float32)
  reference_mask = np.arange(len_ref)[None] < np.array(lengths)[:, None]
  query_mask = np.arange(lq)[None] < np.array(query_lengths)[:, None]
  from vreloc_jax import segments
  windows = segments.window_lengths(query_mask.sum(axis=1), reference_mask.sum(axis=1), (1.0,))
  found = np.asarray(jax.jit(losses.criterion_segments, static_argnums=(5,))(
      query, query_mask, reference, reference_mask, windows, ALPHA))
  for b, (n, m) in enumerate(zip(lengths, query_lengths)):
    expected = baselines.coattention_segment(query[b, :m], reference[b, :n], ALPHA,
                                             query_length=True)
    assert tuple(found[b]) == expected, b


@pytest.mark.parametrize("features", ["raw", "transitions"])
def test_pseudo_label_loss_is_the_cross_entropy_toward_the_criterion_window(features):
  rng = np.random.default_rng(9)
  batch, len_ref, lq, dim = 3, 12, 3, 5
  reference = jnp.asarray(rng.normal(size=(batch, len_ref, dim)), jnp.float32)
  query = jnp.asarray(rng.normal(size=(batch, lq, dim)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(batch, len_ref, 4)), jnp.float32)
  reference_mask = jnp.arange(len_ref)[None] < jnp.array([12, 9, 7])[:, None]
  query_mask = jnp.ones((batch, lq), bool)
  example_mask = jnp.array([True, True, False])  # the last is a filler
  windows = jnp.full((batch, 1), lq)
  read = ((lambda x, mask: x) if features == "raw" else losses.transition_features)
  targets = losses.criterion_segments(read(query, query_mask), query_mask,
                                      read(reference, reference_mask), reference_mask, windows,
                                      ALPHA)
  value = losses.pseudo_label_loss(logits, query, query_mask, reference, reference_mask,
                                   (1.0,), ALPHA, example_mask=example_mask,
                                   criterion_features=features)
  expected = losses.weighted_cross_entropy(logits, targets, reference_mask, example_mask)
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  # Only the logits carry a gradient; the filler's content never enters.
  grad = jax.grad(losses.pseudo_label_loss, argnums=(0, 3))(
      logits, query, query_mask, reference, reference_mask, (1.0,), ALPHA,
      example_mask=example_mask, criterion_features=features)
  assert np.abs(np.asarray(grad[0][:2])).sum() > 0
  np.testing.assert_array_equal(grad[0][2], 0.0)
  np.testing.assert_array_equal(grad[1], 0.0)
  with pytest.raises(ValueError, match="criterion_features must be one of"):
    losses.pseudo_label_loss(logits, query, query_mask, reference, reference_mask, (1.0,),
                             ALPHA, criterion_features="order")


def test_transition_features_see_the_order_the_mean_cannot():
  rng = np.random.default_rng(10)
  atoms = rng.normal(size=(4, 8))
  ordered = np.repeat(atoms, 3, axis=0)  # four sub-actions of three steps each
  reordered = np.repeat(atoms[[2, 0, 3, 1]], 3, axis=0)
  np.testing.assert_allclose(ordered.mean(0), reordered.mean(0), atol=1e-12)
  x = jnp.asarray(np.stack([ordered, reordered]), jnp.float32)  # [2, 12, 8]
  mask = jnp.ones((2, 12), bool)
  out = np.asarray(losses.transition_features(x, mask, lag=2, dim=32))
  assert out.shape == (2, 12, 8 + 32)
  means = out.mean(axis=1)  # [2, 40]
  np.testing.assert_allclose(means[0, :8] / means[1, :8], 1.0, rtol=1e-4)  # same raw mean
  assert np.linalg.norm(means[0, 8:] - means[1, 8:]) > 0.3 * np.linalg.norm(means[0, 8:])
  # Each part has a mean step norm of 1.
  np.testing.assert_allclose(np.linalg.norm(out[..., :8], axis=-1).mean(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out[..., 8:], axis=-1).mean(1), 1.0, rtol=1e-5)


def test_transition_features_ignore_padding():
  rng = np.random.default_rng(11)
  x = rng.normal(size=(1, 9, 6)).astype(np.float32)
  padded = np.concatenate([x, np.full((1, 5, 6), np.nan, np.float32)], axis=1)  # [1, 14, 6]
  mask = np.arange(14)[None] < 9
  alone = np.asarray(losses.transition_features(x, np.ones((1, 9), bool), lag=3, dim=16))
  out = np.asarray(losses.transition_features(padded, mask, lag=3, dim=16))
  np.testing.assert_allclose(out[:, :9], alone, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out[:, 9:], 0.0)
  short = np.asarray(losses.transition_features(x[:, :2], np.ones((1, 2), bool), lag=3, dim=16))
  assert np.isfinite(short).all() and (short[..., 6:] == 0).all()  # no step 3 later
