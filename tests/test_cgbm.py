"""Tests of vreloc_jax.comparators.cgbm, the benchmark authors' CGBM model (tiny dimensions, CPU).

As in test_model.py, compilation dominates: the padding checks put a zero-padded and
a garbage-padded copy (NaN and large values, plus extra padding) of every example in
ONE batch, compared with one unpadded single-example call and with an independent
float64 numpy forward pass of the whole model. The tiny sizes are all different
(5, 7, 6, 3, 4) so that a transposed or mismatched weight cannot go unnoticed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.test_model import batch_variants
from tests.test_model import applied
from tests.test_model import random_params
from tests.test_model import sequences
from vreloc_jax.comparators import cgbm
from vreloc_jax.comparators import tf_lstm
from vreloc_jax import losses

D = 6  # input feature dimension of the tiny tests
TOL = dict(rtol=1e-5, atol=1e-5)
NUMPY_TOL = dict(rtol=1e-4, atol=1e-5)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  cfg = cgbm.cgbm_config()
  cfg.aggregation_dim = 5
  cfg.attention_dim = 7
  cfg.matching_dim = 6
  cfg.bilinear_rank = 3
  cfg.localization_dim = 4
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


# ----------------------------------------------------------------- numpy references


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def p64(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def np_lstm_step(p, c, h, x, forget_bias=1.0):
  """TF's BasicLSTMCell: [x; h] W + b split into (i, j, f, o)."""
  i, j, f, o = np.split(np.concatenate([x, h]) @ p["kernel"] + p["bias"], 4)
  c = c * sigmoid(f + forget_bias) + sigmoid(i) * np.tanh(j)
  return c, np.tanh(c) * sigmoid(o)


def np_lstm(p, xs):
  units = p["bias"].shape[0] // 4
  c, h, out = np.zeros(units), np.zeros(units), []
  for x in xs:
    c, h = np_lstm_step(p, c, h, x)
    out.append(h)
  return np.array(out).reshape(len(xs), units)


def np_attention(p, reference_step, state, query, keys):
  """Unpadded query [Lq, d], keys [Lq, a] -> summary [d], weights [Lq]."""
  step = np.concatenate([reference_step, state]) @ p["step_projection"]["kernel"]
  step = step + p["step_projection"]["bias"]
  scores = np.tanh(keys + step) @ p["score"]["kernel"][:, 0] + p["score"]["bias"][0]
  weights = np_softmax(scores)
  return weights @ query, weights


def np_gating(p, reference_step, summary):
  query_gate = sigmoid(reference_step @ p["query_gate"]["kernel"] + p["query_gate"]["bias"])
  reference_gate = sigmoid(summary @ p["reference_gate"]["kernel"] + p["reference_gate"]["bias"])
  return reference_step * reference_gate, summary * query_gate


def np_bilinear(p, x, y, rank):
  """Output n = sum over its k factors of products of the shared projection."""
  w, b = p["projection"]["kernel"], p["projection"]["bias"]
  n = w.shape[1] // rank
  out = np.zeros(n)
  for unit in range(n):
    for m in range(rank):
      col = unit * rank + m
      out[unit] += (x @ w[:, col] + b[col]) * (y @ w[:, col] + b[col])
  return out


def np_cgbm(params, cfg, query, reference):
  """Float64 forward pass of one unpadded example -> (logits [Lr, 4], attention [Lr, Lq])."""
  p = p64(params["params"])
  if cfg.share_aggregation:
    query_p = reference_p = p["aggregation"]["cell"]
  else:
    query_p, reference_p = p["query_aggregation"]["cell"], p["reference_aggregation"]["cell"]
  hq, hr = np_lstm(query_p, query), np_lstm(reference_p, reference)
  matching = p["matching_aggregation"]
  cell = matching["cell"]

  def direction(name, steps):
    suffix = "" if cfg.share_matching else f"_{name}"
    keys = hq @ matching[f"query_projection{suffix}"]["kernel"]
    c = h = np.zeros(cfg.matching_dim)
    outs, weights = [], []
    for r in steps:
      summary, w = np_attention(cell[f"attentive_query_summary{suffix}"], r, h, hq, keys)
      gated_r, gated_s = np_gating(cell[f"cross_gating{suffix}"], r, summary)
      t = np_bilinear(cell[f"bilinear_matching{suffix}"], gated_r, gated_s, cfg.bilinear_rank)
      c, h = np_lstm_step(cell[f"{name}_lstm"], c, h, t)
      outs.append(h)
      weights.append(w)
    return np.array(outs), np.array(weights)

  forward, forward_w = direction("forward", hr)
  backward, backward_w = direction("backward", hr[::-1])
  hm = np.concatenate([forward, backward[::-1]], axis=1)  # [Lr, 2m]
  loc = np_lstm(p["localization"]["lstm"]["cell"], hm)
  classifier = p["localization"]["classifier"]
  return loc @ classifier["kernel"] + classifier["bias"], 0.5 * (forward_w + backward_w[::-1])


# ----------------------------------------------------------------- submodules


def test_basic_lstm_cell_is_tf_basic_lstm():
  cell = tf_lstm.BasicLSTMCell(features=3)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4)).astype(np.float32)
  carry = cell.initialize_carry(jax.random.key(0), x.shape)
  params = random_params(lambda: cell.init(jax.random.key(0), carry, x))
  assert params["params"]["kernel"].shape == (4 + 3, 12) and params["params"]["bias"].shape == (12,)
  c0 = rng.normal(size=(2, 3)).astype(np.float32)
  h0 = rng.normal(size=(2, 3)).astype(np.float32)
  (c, h), out = cell.apply(params, (c0, h0), x)
  np.testing.assert_array_equal(out, h)
  p = p64(params["params"])
  for b in range(2):
    ec, eh = np_lstm_step(p, c0[b].astype(np.float64), h0[b].astype(np.float64), x[b])
    np.testing.assert_allclose(c[b], ec, **NUMPY_TOL)
    np.testing.assert_allclose(h[b], eh, **NUMPY_TOL)
  # Gate layout (i, j, f, o) and the constant forget bias: with zero weights the cell
  # keeps sigmoid(1) of its memory and writes tanh(0) = 0.
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  (c, _), _ = cell.apply(zeros, (c0, h0), x)
  np.testing.assert_allclose(c, c0 * sigmoid(1.0), rtol=1e-6)


def test_attentive_query_summary_matches_numpy_and_ignores_padding():
  module = cgbm.AttentiveQuerySummary(attention_dim=7)
  rng = np.random.default_rng(1)
  lengths = [4, 2]
  reference_step = rng.normal(size=(2, 5)).astype(np.float32)
  state = rng.normal(size=(2, 6)).astype(np.float32)
  query = rng.normal(size=(2, 6, 5)).astype(np.float32)
  keys = rng.normal(size=(2, 6, 7)).astype(np.float32)
  mask = np.arange(6)[None] < np.array(lengths)[:, None]
  query[~mask] = 0.0  # the caller zeroes padded query steps ...
  keys[~mask] = 1e4 * rng.normal(size=keys[~mask].shape)  # ... padded keys are ignored
  params = random_params(lambda: module.init(jax.random.key(0), reference_step, state, query,
                                             keys, mask))
  summary, weights = module.apply(params, reference_step, state, query, keys, mask)
  p = p64(params["params"])
  for b, n in enumerate(lengths):
    es, ew = np_attention(p, reference_step[b], state[b], query[b, :n], keys[b, :n])
    np.testing.assert_allclose(summary[b], es, **NUMPY_TOL)
    np.testing.assert_allclose(weights[b, :n], ew, **NUMPY_TOL)
    np.testing.assert_array_equal(weights[b, n:], 0.0)


def test_cross_gating_matches_numpy():
  module = cgbm.CrossGating()
  rng = np.random.default_rng(2)
  reference_step = rng.normal(size=(3, 5)).astype(np.float32)
  summary = rng.normal(size=(3, 4)).astype(np.float32)  # different sizes: gates are not swapped
  params = random_params(lambda: module.init(jax.random.key(0), reference_step, summary))
  gated_r, gated_s = module.apply(params, reference_step, summary)
  assert gated_r.shape == (3, 5) and gated_s.shape == (3, 4)
  p = p64(params["params"])
  for b in range(3):
    er, es = np_gating(p, reference_step[b].astype(np.float64), summary[b].astype(np.float64))
    np.testing.assert_allclose(gated_r[b], er, **NUMPY_TOL)
    np.testing.assert_allclose(gated_s[b], es, **NUMPY_TOL)


def test_bilinear_matching_matches_numpy():
  module = cgbm.BilinearMatching(rank=3)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 5)).astype(np.float32)
  y = rng.normal(size=(2, 5)).astype(np.float32)
  params = random_params(lambda: module.init(jax.random.key(0), x, y))
  assert params["params"]["projection"]["kernel"].shape == (5, 5 * 3)  # one shared projection
  out = module.apply(params, x, y)
  assert out.shape == (2, 5)
  p = p64(params["params"])
  for b in range(2):
    np.testing.assert_allclose(out[b], np_bilinear(p, x[b], y[b], 3), **NUMPY_TOL)
  # Symmetric in its two arguments (the projection is shared).
  np.testing.assert_allclose(module.apply(params, y, x), out, rtol=1e-6)
  with pytest.raises(ValueError, match="one shape"):
    module.init(jax.random.key(0), x, y[:, :4])


# ----------------------------------------------------------------- the model


def _model_batch():
  """Six examples (the last an empty filler; the fifth the second with its last valid
  reference step changed), zero- and garbage-padded."""
  ref_seqs = sequences(11, [9, 5, 3, 1, 5, 0], D)
  ref_seqs[4] = ref_seqs[1].copy()
  ref_seqs[4][-1] += 3.0
  query_seqs = sequences(12, [4, 2, 3, 1, 2, 0], D)
  query_seqs[4] = query_seqs[1]
  ref, ref_mask = batch_variants(ref_seqs, total=11, seed=13)
  query, query_mask = batch_variants(query_seqs, total=6, seed=14)
  return ref_seqs, query_seqs, (query, query_mask, ref, ref_mask)


@pytest.fixture(scope="module")
def tiny_model():
  return applied(cgbm.CGBM(tiny_config()), _model_batch())


def test_cgbm_shapes_and_padding_invariant(tiny_model):
  _, params, apply, (ref_seqs, query_seqs, args), out = tiny_model
  query_mask, ref_mask = args[1], args[3]
  n = len(ref_seqs)
  assert out["logits"].shape == (2 * n, 11, 4) and out["attention"].shape == (2 * n, 11, 6)
  for key in ("logits", "log_probs", "probs", "attention"):
    assert out[key].dtype == jnp.float32
    assert np.isfinite(np.asarray(out[key])).all()
  np.testing.assert_array_equal(np.asarray(out["logits"])[~ref_mask], 0.0)
  attention = np.asarray(out["attention"])
  np.testing.assert_array_equal(attention[~ref_mask], 0.0)
  np.testing.assert_array_equal(np.where(query_mask[:, None, :], 0.0, attention), 0.0)
  for i in range(2 * n):  # each valid row is a distribution over the valid query steps
    if query_mask[i].any():
      np.testing.assert_allclose(attention[i][ref_mask[i]].sum(-1), 1.0, rtol=1e-5)
  for key in ("logits", "log_probs", "probs", "attention"):
    values = np.asarray(out[key])
    for i in range(n):
      np.testing.assert_allclose(values[n + i][ref_mask[i]], values[i][ref_mask[i]], **TOL)
  single = apply(params, query_seqs[1][None], np.ones((1, 2), bool),
                 ref_seqs[1][None], np.ones((1, 5), bool))
  for key in ("logits", "log_probs", "probs"):
    np.testing.assert_allclose(np.asarray(out[key])[1, :5], single[key][0], **TOL)
  np.testing.assert_allclose(attention[1, :5, :2], single["attention"][0], **TOL)
  # The backward direction carries the last valid step back to step 0 (through three
  # LSTMs of small random weights: a small but clear difference).
  logits = np.asarray(out["logits"])
  assert np.abs(logits[4, 0] - logits[1, 0]).max() > 1e-5


def test_cgbm_matches_numpy_forward(tiny_model):
  """Every gate, the bilinear matching and the recurrences, end to end, in float64."""
  _, params, _, (ref_seqs, query_seqs, _), out = tiny_model
  for b in range(4):
    logits, attention = np_cgbm(params, tiny_config(), query_seqs[b], ref_seqs[b])
    lr, lq = len(ref_seqs[b]), len(query_seqs[b])
    np.testing.assert_allclose(np.asarray(out["logits"])[b, :lr], logits, **NUMPY_TOL)
    np.testing.assert_allclose(np.asarray(out["attention"])[b, :lr, :lq], attention, **NUMPY_TOL)


def test_cgbm_unshared_weights_match_numpy():
  cfg = tiny_config(share_aggregation=False, share_matching=False)
  model = cgbm.CGBM(cfg)
  ref_seqs, query_seqs = sequences(21, [6, 3], D), sequences(22, [3, 2], D)
  ref, ref_mask = batch_variants(ref_seqs, total=7, seed=23)
  query, query_mask = batch_variants(query_seqs, total=4, seed=24)
  args = (query, query_mask, ref, ref_mask)
  params = random_params(lambda: model.init(jax.random.key(0), *args, deterministic=True))
  names = set(params["params"]) | set(params["params"]["matching_aggregation"]["cell"])
  assert {"query_aggregation", "reference_aggregation", "cross_gating_forward",
          "cross_gating_backward", "bilinear_matching_backward"} <= names
  out = jax.jit(lambda p: model.apply(p, *args, deterministic=True))(params)
  for b in range(2):
    logits, _ = np_cgbm(params, cfg, query_seqs[b], ref_seqs[b])
    lr = len(ref_seqs[b])
    np.testing.assert_allclose(np.asarray(out["logits"])[b, :lr], logits, **NUMPY_TOL)
    np.testing.assert_allclose(np.asarray(out["logits"])[2 + b, :lr], logits, **NUMPY_TOL)


def test_cgbm_gradient_step_with_dropout(tiny_model):
  model, params, apply, (_, _, args), out = tiny_model
  ref_mask = args[3]
  lengths = ref_mask.sum(axis=1)
  segment = np.stack([np.minimum(1, lengths - 1).clip(0), lengths], axis=1).astype(np.int32)
  example_mask = lengths > 0

  def loss_fn(p, key):
    out = model.apply(p, *args, deterministic=False, rngs={"dropout": key})
    return losses.weighted_cross_entropy(out["logits"], segment, ref_mask, example_mask)

  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(p, key):
    loss, grads = jax.value_and_grad(loss_fn)(p, key)
    updates, _ = optimizer.update(grads, optimizer.init(p), p)
    return loss, grads, optax.apply_updates(p, updates)

  # "rbg" keys: XLA compiles their dropout masks several seconds faster than threefry's.
  loss, grads, new_params = step(params, jax.random.key(1, impl="rbg"))
  loss_again, _, _ = step(params, jax.random.key(1, impl="rbg"))
  loss_other, _, _ = step(params, jax.random.key(2, impl="rbg"))
  assert np.isfinite(loss) and loss > 0
  assert loss_again == loss and loss_other != loss  # dropout follows its key
  deterministic_loss = losses.weighted_cross_entropy(out["logits"], segment, ref_mask,
                                                     example_mask)
  assert loss != deterministic_loss  # dropout is on
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name = jax.tree_util.keystr(path)
    assert np.isfinite(np.asarray(g)).all(), name
    if "['score']['bias']" in name:  # a softmax is shift-invariant: b^w gets no gradient
      np.testing.assert_allclose(g, 0.0, atol=1e-7)
    else:  # every other weight takes part
      assert np.abs(np.asarray(g)).max() > 0, name
  new_out = apply(new_params, *args)
  assert np.isfinite(np.asarray(new_out["logits"])).all()
  assert not np.allclose(new_out["logits"], out["logits"])


# ----------------------------------------------------------------- configuration


def test_cgbm_config_defaults():
  assert cgbm.cgbm_config().to_dict() == {
      "aggregation_dim": 128, "share_aggregation": True, "attention_dim": 128,
      "matching_dim": 128, "bilinear_rank": 8, "share_matching": True,
      "localization_dim": 128, "forget_bias": 1.0, "dropout_aggregation": 0.4,
      "dropout_matching": 0.2, "dtype": "float32"}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_default_parameter_count_and_shapes(dtype):
  """The authors' sizes (D=500), shapes only (no compilation)."""
  cfg = cgbm.cgbm_config()
  cfg.dtype = dtype
  model = cgbm.CGBM(ml_collections.ConfigDict({"model": cfg}))  # a full config works too
  batch, len_query, len_ref, dim = 2, 5, 12, 500
  args = (jnp.zeros((batch, len_query, dim)), jnp.ones((batch, len_query), bool),
          jnp.zeros((batch, len_ref, dim)), jnp.ones((batch, len_ref), bool))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, deterministic=True))
  leaves = jax.tree_util.tree_leaves(variables["params"])
  assert all(x.dtype == jnp.float32 for x in leaves)
  d, a, m, k, l = 128, 128, 128, 8, 128  # aggregation, attention, matching, rank, localization

  def lstm(inputs, units):  # one kernel [inputs + units, 4 units] and a bias [4 units]
    return 4 * units * (inputs + units + 1)
  expected = (lstm(dim, d)  # aggregation (shared by query and reference)
              + d * a  # W^q (no bias)
              + (d + m) * a + a  # W^p [h^r; h^m] + b^p
              + a + 1  # w, b^w
              + 2 * (d * d + d)  # the two gates
              + d * d * k + d * k  # the shared bilinear projection
              + 2 * lstm(d, m)  # the matching LSTMs
              + lstm(2 * m, l)  # the localization LSTM
              + l * 4 + 4)  # the classifier
  assert expected == 997_381  # the count stated in the module docstring
  assert sum(x.size for x in leaves) == expected
  out = jax.eval_shape(lambda v: model.apply(v, *args, deterministic=True), variables)
  assert out["logits"].shape == (batch, len_ref, 4)
  assert out["attention"].shape == (batch, len_ref, len_query)
  assert all(o.dtype == jnp.float32 for o in out.values())


def test_cgbm_rejects_bad_inputs():
  model = cgbm.CGBM(tiny_config())
  query, query_mask = np.zeros((2, 3, D), np.float32), np.ones((2, 3), bool)
  ref, ref_mask = np.zeros((2, 5, D), np.float32), np.ones((2, 5), bool)

  def init(m, *a):
    return jax.eval_shape(lambda: m.init(jax.random.key(0), *a, deterministic=True))
  with pytest.raises(ValueError, match="reference_mask"):
    init(model, query, query_mask, ref, ref_mask[:, :4])
  with pytest.raises(ValueError, match="feature dimension"):
    init(model, query[..., :4], query_mask, ref, ref_mask)
  with pytest.raises(ValueError, match="dtype"):
    init(cgbm.CGBM(tiny_config(dtype="float16")), query, query_mask, ref, ref_mask)
