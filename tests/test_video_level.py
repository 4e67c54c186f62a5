"""Tests of vreloc_jax.comparators.video_level, Feng et al.'s baseline (tiny sizes, CPU).

As in test_cgbm.py, compilation dominates: one batch holds a zero-padded and a
garbage-padded copy (NaN and large values) of every example, checked against an
independent float64 numpy forward pass that encodes every candidate segment ALONE
(not with the module's window trick). Three programs are compiled in all:
evaluation, training without dropout (the sampled starts), and a gradient step with
dropout. The tiny sizes differ (D 6, E 5, H 4, K 3) so that a transposed weight
cannot go unnoticed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.test_model import applied
from tests.test_model import assert_padding_invariant
from tests.test_model import batch_variants
from tests.test_model import sequences
from vreloc_jax.comparators import candidates
from vreloc_jax.comparators import losses
from vreloc_jax.comparators import video_level

D = 6  # input feature dimension of the tiny tests
K = 3  # candidate lengths of the tiny tests
TOL = dict(rtol=1e-5, atol=1e-5)
NUMPY_TOL = dict(rtol=1e-4, atol=1e-5)
LEN_REF, LEN_QUERY = 9, 5  # padded lengths of the test batch
REF_LENGTHS = [7, 4, 2, 1, 0]  # the last example is an empty filler
SEGMENTS = np.array([[2, 5], [1, 3], [0, 2], [0, 1], [0, 1]], np.int32)  # ground truths


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  cfg = video_level.video_level_config()
  cfg.num_lengths = K
  cfg.embed_dim = 5
  cfg.hidden_dim = 4
  cfg.train_starts = 2
  cfg.dropout = 0.5
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


# ----------------------------------------------------------------- numpy reference


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_embedding(p, xs):
  """Unit embedding of one unpadded sequence [n, D]: projection, LSTM, last hidden state."""
  cell = p["lstm"]["cell"]
  x = xs @ p["projection"]["kernel"] + p["projection"]["bias"]  # [n, E]
  units = cell["hi"]["bias"].shape[0]
  c, h = np.zeros(units), np.zeros(units)
  for step in x:
    gate = {g: step @ cell[f"i{g}"]["kernel"] + h @ cell[f"h{g}"]["kernel"] + cell[f"h{g}"]["bias"]
            for g in "ifgo"}
    c = sigmoid(gate["f"]) * c + sigmoid(gate["i"]) * np.tanh(gate["g"])
    h = sigmoid(gate["o"]) * np.tanh(c)
  norm = np.linalg.norm(h)
  return h / norm if norm > 0 else h


def np_scores(params, query, reference, len_ref, num_lengths):
  """Float64 grid [len_ref, K]: -||e(query) - e(reference[s:s+k+1])||^2, NaN where invalid."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
  q = np_embedding(p, query.astype(np.float64))
  grid = np.full((len_ref, num_lengths), np.nan)
  for s in range(len(reference)):
    for k in range(num_lengths):
      if s + k + 1 <= len(reference):
        segment = reference[s:s + k + 1].astype(np.float64)
        grid[s, k] = -np.sum((q - np_embedding(p, segment)) ** 2)
  return grid


# ----------------------------------------------------------------- evaluation


def _batch():
  """Five examples, zero- and garbage-padded; query 0 is reference 0's steps [2, 5)."""
  ref_seqs = sequences(31, REF_LENGTHS, D)
  query_seqs = sequences(32, [3, 2, 1, 0, 0], D)  # query 3 is empty
  query_seqs[0] = ref_seqs[0][2:5].copy()
  ref, ref_mask = batch_variants(ref_seqs, total=LEN_REF, seed=33)
  query, query_mask = batch_variants(query_seqs, total=LEN_QUERY, seed=34)
  return ref_seqs, query_seqs, (query, query_mask, ref, ref_mask)


@pytest.fixture(scope="module")
def tiny_model():
  return applied(video_level.VideoLevel(tiny_config()), _batch())


def test_shapes_mask_and_padding_invariance(tiny_model):
  _, _, _, (ref_seqs, _, args), out = tiny_model
  ref_mask = args[3]
  n = len(ref_seqs)
  scores, mask = np.asarray(out["candidate_scores"]), np.asarray(out["candidate_mask"])
  assert set(out) == {"candidate_scores", "candidate_mask"}
  assert scores.shape == mask.shape == (2 * n, LEN_REF, K)
  assert scores.dtype == np.float32 and mask.dtype == bool
  lengths = ref_mask.sum(axis=1)
  np.testing.assert_array_equal(mask, candidates.candidate_mask(lengths, LEN_REF, K))
  assert np.isfinite(scores).all()
  np.testing.assert_array_equal(scores[~mask], 0.0)
  assert (scores[mask] <= 1e-6).all() and (scores[mask] >= -4.0 - 1e-5).all()  # unit vectors
  assert_padding_invariant(scores, mask)  # garbage-padded rows == zero-padded rows
  # Query 0 is the reference's segment [2, 5): distance 0 there, the best candidate.
  np.testing.assert_allclose(scores[0, 2, 2], 0.0, atol=1e-6)
  best = candidates.best_candidate(out["candidate_scores"], jnp.asarray(lengths))
  np.testing.assert_array_equal(np.asarray(best)[[0, n]], [[2, 5], [2, 5]])
  # The empty query's embedding is 0: every candidate is at distance 1.
  np.testing.assert_allclose(scores[3][mask[3]], -1.0, rtol=1e-6)


def test_scores_match_numpy_segments_encoded_alone(tiny_model):
  """Each candidate's score is that of its segment encoded alone, end to end in float64."""
  _, params, _, (ref_seqs, query_seqs, args), out = tiny_model
  n = len(ref_seqs)
  scores = np.asarray(out["candidate_scores"])
  for b in range(n):
    expected = np_scores(params, query_seqs[b], ref_seqs[b], LEN_REF, K)
    valid = ~np.isnan(expected)
    assert valid.sum() == np.asarray(out["candidate_mask"])[b].sum()
    for row in (b, n + b):  # zero-padded and garbage-padded copies
      np.testing.assert_allclose(scores[row][valid], expected[valid], **NUMPY_TOL)


# ----------------------------------------------------------------- training


def test_training_scores_the_ground_truth_and_sampled_starts(tiny_model):
  _, params, _, (ref_seqs, _, args), eval_out = tiny_model
  model = video_level.VideoLevel(tiny_config(dropout=0.0))  # same parameters, no dropout
  n = len(ref_seqs)
  segment = np.concatenate([SEGMENTS, SEGMENTS])
  lengths = args[3].sum(axis=1)

  @jax.jit
  def train(p, key):
    return model.apply(p, *args, deterministic=False, segment=segment, rngs={"dropout": key})

  eval_scores, eval_mask = np.asarray(eval_out["candidate_scores"]), eval_out["candidate_mask"]
  drawn = np.zeros((2 * n, LEN_REF), int)
  masks = []
  for seed in range(30):
    out = train(params, jax.random.key(seed, impl="rbg"))
    scores, mask = np.asarray(out["candidate_scores"]), np.asarray(out["candidate_mask"])
    masks.append(mask)
    assert scores.shape == mask.shape == (2 * n, LEN_REF, K)
    assert not (mask & ~eval_mask).any()  # only real candidates
    np.testing.assert_array_equal(scores[~mask], 0.0)
    np.testing.assert_allclose(scores[mask], eval_scores[mask], **TOL)  # the same scores
    scored = mask.any(axis=2)  # [2n, Lr]: the scored starts (start s has [s, s+1) at least)
    np.testing.assert_array_equal(scored.sum(axis=1), np.minimum(1 + 2, lengths))
    for row, (s, e) in enumerate(segment):
      if lengths[row]:
        assert mask[row, s, e - s - 1]  # the ground truth's cell is always scored
        np.testing.assert_array_equal(mask[row, s], eval_mask[row, s])  # all its lengths
    drawn += scored
  np.testing.assert_array_equal(train(params, jax.random.key(3, impl="rbg"))["candidate_mask"],
                                masks[3])
  # The draw follows the key and reaches every valid start.
  assert any((m != masks[0]).any() for m in masks[1:])
  for row in range(2 * n):
    np.testing.assert_array_equal(drawn[row] > 0, np.arange(LEN_REF) < lengths[row])
  # deterministic=True ignores the segment (every start scored): the very same program.

  def program(**kwargs):
    return str(jax.make_jaxpr(lambda p: model.apply(p, *args, deterministic=True, **kwargs))(params))
  assert program(segment=segment) == program()


def test_gradient_step_with_dropout_and_triplet_loss(tiny_model):
  model, params, apply, (ref_seqs, _, args), out = tiny_model
  segment = np.concatenate([SEGMENTS, SEGMENTS])
  example_mask = args[3].any(axis=1)

  def loss_fn(p, key):
    o = model.apply(p, *args, deterministic=False, segment=segment, rngs={"dropout": key})
    return losses.triplet_loss(o["candidate_scores"], o["candidate_mask"], segment,
                               example_mask, margin=0.2)

  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(p, key):
    loss, grads = jax.value_and_grad(loss_fn)(p, key)
    updates, _ = optimizer.update(grads, optimizer.init(p), p)
    return loss, grads, optax.apply_updates(p, updates)

  # "rbg" keys: XLA compiles their dropout masks faster than threefry's (test_cgbm.py).
  loss, grads, new_params = step(params, jax.random.key(1, impl="rbg"))
  loss_again, _, _ = step(params, jax.random.key(1, impl="rbg"))
  loss_other, _, _ = step(params, jax.random.key(2, impl="rbg"))
  assert np.isfinite(loss) and loss > 0
  assert loss_again == loss and loss_other != loss  # dropout and the draw follow the key
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name = jax.tree_util.keystr(path)
    assert np.isfinite(np.asarray(g)).all(), name
    assert np.abs(np.asarray(g)).max() > 0, name  # every weight takes part
  new_scores = apply(new_params, *args)["candidate_scores"]
  assert np.isfinite(np.asarray(new_scores)).all()
  assert not np.allclose(new_scores, out["candidate_scores"])


# ----------------------------------------------------------------- configuration


def test_config_defaults():
  assert video_level.video_level_config().to_dict() == {
      "num_lengths": 32, "embed_dim": 128, "hidden_dim": 128, "dropout": 0.2,
      "train_starts": 4, "dtype": "float32"}


def _lstm(inputs, units):  # input kernels, recurrent kernels, biases of the 4 gates
  return 4 * (inputs * units + units * units + units)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_default_parameter_count_and_shapes(dtype):
  """The default sizes with D=500, shapes only (no compilation)."""
  cfg = video_level.video_level_config()
  cfg.dtype = dtype
  model = video_level.VideoLevel(ml_collections.ConfigDict({"model": cfg}))  # a full config
  batch, len_query, len_ref, dim = 2, 5, 40, 500
  args = (jnp.zeros((batch, len_query, dim)), jnp.ones((batch, len_query), bool),
          jnp.zeros((batch, len_ref, dim)), jnp.ones((batch, len_ref), bool))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, deterministic=True))
  leaves = jax.tree_util.tree_leaves(variables["params"])
  assert all(x.dtype == jnp.float32 for x in leaves)
  expected = dim * 128 + 128 + _lstm(128, 128)  # projection + LSTM
  assert expected == 195_712  # the count stated in the module docstring
  assert sum(x.size for x in leaves) == expected
  for kwargs in (dict(deterministic=True),
                 dict(deterministic=False, segment=jnp.zeros((batch, 2), jnp.int32),
                      rngs={"dropout": jax.random.key(1)})):
    out = jax.eval_shape(lambda v: model.apply(v, *args, **kwargs), variables)
    assert out["candidate_scores"].shape == (batch, len_ref, 32)
    assert out["candidate_scores"].dtype == jnp.float32
    assert out["candidate_mask"].shape == (batch, len_ref, 32)


def test_tiny_parameter_count(tiny_model):
  _, params, _, _, _ = tiny_model
  assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == D * 5 + 5 + _lstm(5, 4)


def test_rejects_bad_inputs():
  query, query_mask = np.zeros((2, 3, D), np.float32), np.ones((2, 3), bool)
  ref, ref_mask = np.zeros((2, 5, D), np.float32), np.ones((2, 5), bool)

  def init(cfg, *a, **kw):
    model = video_level.VideoLevel(cfg)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *a, **kw))
  with pytest.raises(ValueError, match="reference_mask"):
    init(tiny_config(), query, query_mask, ref, ref_mask[:, :4], deterministic=True)
  with pytest.raises(ValueError, match="feature dimension"):
    init(tiny_config(), query[..., :4], query_mask, ref, ref_mask, deterministic=True)
  with pytest.raises(ValueError, match="dtype"):
    init(tiny_config(dtype="float16"), query, query_mask, ref, ref_mask, deterministic=True)
  with pytest.raises(ValueError, match="train_starts"):
    init(tiny_config(train_starts=-1), query, query_mask, ref, ref_mask, deterministic=True)
  with pytest.raises(ValueError, match="segment"):
    init(tiny_config(), query, query_mask, ref, ref_mask, deterministic=False,
         segment=np.zeros((2, 3), np.int32))
