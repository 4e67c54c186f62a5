"""Tests of vreloc_jax.comparators.sst, the query-agnostic SST comparator (tiny dimensions, CPU).

As in test_cgbm.py, compilation dominates: one batch holds a zero-padded and a
garbage-padded copy (NaN and large values, plus extra padding) of every example and
is compared with one unpadded single-example call and with an independent float64
numpy forward pass (flax's GRUCell equations, then the end -> start re-indexing).
The tiny sizes (D 6, H 5, K 4) differ so that a transposed weight cannot go unnoticed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.test_model import applied
from tests.test_model import assert_padding_invariant
from tests.test_model import batch_variants
from tests.test_model import sequences
from vreloc_jax.comparators import sst

D = 6  # input feature dimension of the tiny tests
K = 4  # candidate lengths of the tiny tests
NUMPY_TOL = dict(rtol=1e-4, atol=1e-5)
REF_LENGTHS = [9, 5, 3, 1, 5, 5, 0]  # the last one an empty filler
QUERY_LENGTHS = [4, 2, 3, 1, 3, 2, 0]


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  cfg = sst.sst_config()
  cfg.num_lengths = K
  cfg.hidden_dim = 5
  cfg.num_layers = 2
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def gru_parameters(d: int, h: int) -> int:
  """One flax GRUCell layer: six kernels, biases on the three input projections and W_hn."""
  return 3 * h * (d + h) + 4 * h


# ----------------------------------------------------------------- numpy reference


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_gru(p, xs):
  """flax's GRUCell over xs [L, d] from a zero state: r and z gates, n with the reset
  applied to (W_hn h + b_hn), h' = (1 - z) n + z h."""
  def dense(name, x):
    return x @ p[name]["kernel"] + p[name].get("bias", 0.0)
  h, out = np.zeros(p["hr"]["kernel"].shape[0]), []
  for x in xs:
    r = sigmoid(dense("ir", x) + dense("hr", h))
    z = sigmoid(dense("iz", x) + dense("hz", h))
    n = np.tanh(dense("in", x) + r * dense("hn", h))
    h = (1.0 - z) * n + z * h
    out.append(h)
  return np.array(out).reshape(len(xs), -1)


def np_sst(params, cfg, reference):
  """Float64 forward pass of one unpadded reference [L, D].

  Returns the start-indexed grid [L, K] (entry (s, k): segment [s, s + k + 1)), NaN
  where the segment would end past the reference."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
  h = np.asarray(reference, np.float64)
  for layer in range(cfg.num_layers):
    h = np_gru(p[f"gru_{layer}"]["cell"], h)
  ending = h @ p["scores"]["kernel"] + p["scores"]["bias"]  # [L, K]: (t, k) ends at step t
  length = len(reference)
  grid = np.full((length, cfg.num_lengths), np.nan)
  for s in range(length):
    for k in range(cfg.num_lengths):
      if s + k < length:  # the segment [s, s + k + 1) ends at step s + k
        grid[s, k] = ending[s + k, k]
  return grid


# ----------------------------------------------------------------- the model


def _model_batch():
  """Seven references: [4] is [1] with another query, [5] is [1] with its last valid
  step changed, [6] an empty filler; zero- and garbage-padded."""
  ref_seqs = sequences(31, REF_LENGTHS, D)
  ref_seqs[4] = ref_seqs[1].copy()
  ref_seqs[5] = ref_seqs[1].copy()
  ref_seqs[5][-1] += 3.0
  query_seqs = sequences(32, QUERY_LENGTHS, D)
  ref, ref_mask = batch_variants(ref_seqs, total=11, seed=33)
  query, query_mask = batch_variants(query_seqs, total=6, seed=34)
  return ref_seqs, query_seqs, (query, query_mask, ref, ref_mask)


@pytest.fixture(scope="module")
def tiny_model():
  return applied(sst.SST(tiny_config()), _model_batch())


def test_sst_shapes_mask_and_padding_invariant(tiny_model):
  _, params, apply, (ref_seqs, _, args), out = tiny_model
  ref_mask = args[3]
  n = len(ref_seqs)
  scores, mask = np.asarray(out["candidate_scores"]), np.asarray(out["candidate_mask"])
  assert scores.shape == (2 * n, 11, K) and scores.dtype == np.float32
  assert mask.shape == (2 * n, 11, K) and mask.dtype == bool
  assert np.isfinite(scores).all()
  # Entry (s, k) is valid iff [s, s + k + 1) lies inside the reference.
  lengths = ref_mask.sum(axis=1)
  ends = np.arange(11)[:, None] + np.arange(1, K + 1)[None, :]
  np.testing.assert_array_equal(mask, ends[None] <= lengths[:, None, None])
  np.testing.assert_array_equal(scores[~mask], 0.0)
  assert not mask[n - 1].any() and not mask[2 * n - 1].any()  # the filler
  # Garbage-padded copies and the unpadded single example give the same valid scores.
  single = apply(params, np.zeros((1, 2, D), np.float32), np.ones((1, 2), bool),
                 ref_seqs[1][None], np.ones((1, 5), bool))
  assert single["candidate_scores"].shape == (1, 5, K)
  np.testing.assert_array_equal(single["candidate_mask"][0], mask[1, :5])
  assert_padding_invariant(scores, ref_mask, single["candidate_scores"], 1)
  # Causal and end-indexed: changing step 4 of reference [1] (as [5]) changes exactly
  # the candidates that end at step 4 (s + k == 4) and leaves the others.
  ends_at = np.arange(11)[:, None] + np.arange(K)[None, :]  # the last step of (s, k)
  for row in (5, n + 5):
    changed = np.abs(scores[row] - scores[1]) > 1e-6
    np.testing.assert_array_equal(changed, mask[1] & (ends_at == 4))


def test_sst_ignores_the_query(tiny_model):
  _, params, apply, (ref_seqs, _, args), out = tiny_model
  query, query_mask, ref, ref_mask = args
  scores = np.asarray(out["candidate_scores"])
  n = len(ref_seqs)
  # [4] is [1] with another query (and query length).
  np.testing.assert_array_equal(scores[4], scores[1])
  np.testing.assert_array_equal(scores[n + 4], scores[n + 1])
  # Another query batch of the same shape (other values, lengths and NaN padding).
  rng = np.random.default_rng(35)
  other = (100 * rng.normal(size=query.shape)).astype(np.float32)
  other[:, ::2, 0] = np.nan
  other_mask = rng.random(query_mask.shape) < 0.5
  again = apply(params, other, other_mask, ref, ref_mask)
  for key in ("candidate_scores", "candidate_mask"):
    np.testing.assert_array_equal(again[key], out[key])


def test_sst_matches_numpy_forward(tiny_model):
  """Both GRU layers, the output layer and the end -> start re-indexing, in float64."""
  _, params, _, (ref_seqs, _, args), out = tiny_model
  n = len(ref_seqs)
  scores, mask = np.asarray(out["candidate_scores"]), np.asarray(out["candidate_mask"])
  for b in range(n - 1):
    expected = np_sst(params, tiny_config(), ref_seqs[b])
    length = len(ref_seqs[b])
    np.testing.assert_array_equal(mask[b, :length], ~np.isnan(expected))
    for row in (b, n + b):
      np.testing.assert_allclose(scores[row, :length][mask[b, :length]],
                                 expected[~np.isnan(expected)], **NUMPY_TOL)


def test_sst_gradient_step_with_dropout_and_segment(tiny_model):
  """The training call (dropout on, `segment` passed): dropout follows its key and
  every weight gets a finite, non-zero gradient from a candidate loss. The batch holds
  the NaN-padded copies: without masking the inputs, the forward pass would still be
  invariant (the GRUs are causal and invalid entries are replaced), but NaN would reach
  the gradients through the padded steps."""
  _, params, _, (_, _, args), out = tiny_model
  model = sst.SST(tiny_config(dropout=0.3))  # same parameters: dropout has none
  lengths = args[3].sum(axis=1)
  segment = np.stack([np.zeros_like(lengths), np.minimum(lengths, 3)], axis=1).astype(np.int32)

  def loss_of(scores, mask):  # sigmoid cross-entropy: candidates starting at 0 positive
    positive = np.zeros(mask.shape, bool)
    positive[:, 0, :3] = True
    per = -jnp.where(positive, jax.nn.log_sigmoid(scores), jax.nn.log_sigmoid(-scores))
    return jnp.sum(jnp.where(mask, per, 0.0)) / jnp.maximum(mask.sum(), 1)

  @jax.jit
  def step(p, key):
    def loss_fn(p):
      o = model.apply(p, *args, deterministic=False, segment=segment, rngs={"dropout": key})
      return loss_of(o["candidate_scores"], o["candidate_mask"])
    return jax.value_and_grad(loss_fn)(p)

  # "rbg" keys: XLA compiles their dropout masks faster than threefry's.
  loss, grads = step(params, jax.random.key(1, impl="rbg"))
  loss_again, _ = step(params, jax.random.key(1, impl="rbg"))
  loss_other, _ = step(params, jax.random.key(2, impl="rbg"))
  assert np.isfinite(loss) and loss > 0
  assert loss_again == loss and loss_other != loss
  assert loss != loss_of(out["candidate_scores"], out["candidate_mask"])  # dropout is on
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name = jax.tree_util.keystr(path)
    assert np.isfinite(np.asarray(g)).all(), name
    assert np.abs(np.asarray(g)).max() > 0, name


# ----------------------------------------------------------------- configuration


def test_sst_config_defaults():
  assert sst.sst_config().to_dict() == {
      "num_lengths": 32, "hidden_dim": 128, "num_layers": 2, "dropout": 0.3,
      "dtype": "float32"}


def _shapes(model, batch, len_query, len_ref, dim):
  args = (jnp.zeros((batch, len_query, dim)), jnp.ones((batch, len_query), bool),
          jnp.zeros((batch, len_ref, dim)), jnp.ones((batch, len_ref), bool))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, deterministic=True))
  out = jax.eval_shape(lambda v: model.apply(v, *args, deterministic=True), variables)
  return variables["params"], out


def test_parameter_counts_and_shapes():
  """Tiny config against the hand count; the default config (D=500) against the
  count stated in the module docstring. Shapes only (no compilation)."""
  params, out = _shapes(sst.SST(tiny_config(num_layers=3)), 2, 3, 7, D)
  assert set(params) == {"gru_0", "gru_1", "gru_2", "scores"}
  assert params["gru_0"]["cell"]["ir"]["kernel"].shape == (D, 5)
  assert params["gru_1"]["cell"]["hn"]["bias"].shape == (5,)
  assert "bias" not in params["gru_1"]["cell"]["hr"]
  assert params["scores"]["kernel"].shape == (5, K)
  expected = gru_parameters(D, 5) + 2 * gru_parameters(5, 5) + 5 * K + K
  assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == expected
  assert out["candidate_scores"].shape == out["candidate_mask"].shape == (2, 7, K)

  for dtype in ("float32", "bfloat16"):
    cfg = sst.sst_config()
    cfg.dtype = dtype
    model = sst.SST(ml_collections.ConfigDict({"model": cfg}))  # a full config works too
    params, out = _shapes(model, 2, 5, 40, 500)
    leaves = jax.tree_util.tree_leaves(params)
    assert all(x.dtype == jnp.float32 for x in leaves)
    expected = gru_parameters(500, 128) + gru_parameters(128, 128) + 128 * 32 + 32
    assert expected == 344_608  # the count stated in the module docstring
    assert sum(x.size for x in leaves) == expected
    assert out["candidate_scores"].shape == (2, 40, 32)
    assert out["candidate_scores"].dtype == jnp.float32
    assert out["candidate_mask"].dtype == jnp.bool_


def test_sst_rejects_bad_inputs():
  query, query_mask = np.zeros((2, 3, D), np.float32), np.ones((2, 3), bool)
  ref, ref_mask = np.zeros((2, 5, D), np.float32), np.ones((2, 5), bool)

  def init(cfg, *a):
    model = sst.SST(cfg)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *a, deterministic=True))
  with pytest.raises(ValueError, match="reference_mask"):
    init(tiny_config(), query, query_mask, ref, ref_mask[:, :4])
  with pytest.raises(ValueError, match="query_mask"):  # the query is checked, though unread
    init(tiny_config(), query, query_mask[:, :2], ref, ref_mask)
  with pytest.raises(ValueError, match="feature dimension"):
    init(tiny_config(), query[..., :4], query_mask, ref, ref_mask)
  with pytest.raises(ValueError, match="dtype"):
    init(tiny_config(dtype="float16"), query, query_mask, ref, ref_mask)
  with pytest.raises(ValueError, match="num_lengths"):
    init(tiny_config(num_lengths=0), query, query_mask, ref, ref_mask)
  with pytest.raises(ValueError, match="dropout"):
    init(tiny_config(dropout=1.0), query, query_mask, ref, ref_mask)
