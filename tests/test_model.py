"""Tests of vreloc_jax.relocalizer.attention and .model (tiny dimensions, CPU).

Compilation dominates the cost on CPU, so each test compiles as few shapes as it
can: the padding checks put a zero-padded copy and a garbage-padded copy (NaN and
large values, plus extra padding) of every example in ONE batch, and compare with
one unpadded single-example call. Parameters are drawn with numpy from the shapes
of `init` (random, non-zero biases: zero-initialized LSTM biases would hide a
backward LSTM that started on padding).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import weak
from vreloc_jax import family as family_lib
from vreloc_jax import models
from vreloc_jax.inputs import with_centred
from vreloc_jax.inputs import with_shared_offset
from vreloc_jax.relocalizer import attention
from vreloc_jax.relocalizer import model as model_lib

D = 6  # input feature dimension of the tiny tests
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  cfg = model_lib.model_config()
  cfg.hidden_dim = 16
  cfg.attention_groups = ((2, 1, 1), (2, 3, 2))
  cfg.head_dim = 4
  cfg.self_attention_heads = 2
  cfg.self_attention_head_dim = 4
  cfg.lstm_dim = 8
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def random_params(init_fn, seed=0):
  """Random variables with the structure of `init_fn()`, without running init."""
  shapes = jax.eval_shape(init_fn)
  rng = np.random.default_rng(seed)

  def make(s):
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 4
    return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in), s.dtype)
  return jax.tree_util.tree_map(make, shapes)


def sequences(seed, lengths, dim):
  """Unpadded random sequences, one [length, dim] array per length."""
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(n, dim)).astype(np.float32) for n in lengths]


def batch_variants(seqs, total, seed):
  """Batch of 2n rows at length `total`: rows [0, n) zero-padded, rows [n, 2n) the same
  sequences padded with garbage (large values and NaN). Returns x [2n, total, dim], mask."""
  n, dim = len(seqs), seqs[0].shape[1]
  x = np.zeros((2 * n, total, dim), np.float32)
  rng = np.random.default_rng(seed)
  garbage = 100 * rng.normal(size=(n, total, dim)).astype(np.float32)
  garbage[:, ::3] = np.nan
  x[n:] = garbage
  mask = np.zeros((2 * n, total), bool)
  for i, s in enumerate(seqs):
    for row in (i, n + i):
      x[row, :len(s)] = s
      mask[row, :len(s)] = True
  return x, mask


def assert_padding_invariant(out, mask, single=None, index=None):
  """out [2n, T, ...] from batch_variants; single: [1, len, ...] output of seqs[index] alone."""
  out = np.asarray(out)
  n = out.shape[0] // 2
  for i in range(n):
    valid = mask[i]
    np.testing.assert_allclose(out[n + i][valid], out[i][valid], **TOL)
    assert np.isfinite(out[n + i]).all()
  if single is not None:
    single = np.asarray(single)[0]
    np.testing.assert_allclose(out[index, :single.shape[0]], single, **TOL)


# ----------------------------------------------------------------- numpy references


def np_conv_same(x, kernel, bias, dilation):
  """x [L, Din], kernel [k, Din, Dout]: 'SAME' dilated conv with zero padding."""
  k = kernel.shape[0]
  low = ((k - 1) * dilation) // 2
  out = np.tile(bias, (x.shape[0], 1)).astype(np.float64)
  for t in range(x.shape[0]):
    for j in range(k):
      s = t - low + j * dilation
      if 0 <= s < x.shape[0]:
        out[t] += x[s] @ kernel[j]
  return out


def np_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def np_multiscale(params, groups, head_dim, ref, query):
  """Unpadded single example: ref [Lr, d], query [Lq, d] -> [Lr, heads], head by head."""
  columns = []
  for g, (num_heads, _, dilation) in enumerate(groups):
    pr, pq = params[f"reference_conv_{g}"], params[f"query_conv_{g}"]
    r = np_conv_same(ref, np.asarray(pr["kernel"]), np.asarray(pr["bias"]), dilation)
    q = np_conv_same(query, np.asarray(pq["kernel"]), np.asarray(pq["bias"]), dilation)
    for h in range(num_heads):
      rh = r[:, h * head_dim:(h + 1) * head_dim]  # [Lr, head_dim]
      qh = q[:, h * head_dim:(h + 1) * head_dim]  # [Lq, head_dim]
      a = np_softmax(rh @ qh.T / math.sqrt(head_dim), axis=0)  # each column sums to 1
      columns.append(a.mean(axis=1))
  return np.stack(columns, axis=1)


# ----------------------------------------------------------------- FeatureMapping


def test_feature_mapping_matches_reference_and_padding_invariant():
  lengths = [7, 4, 1]
  seqs = sequences(0, lengths, D)
  x, mask = batch_variants(seqs, total=10, seed=1)
  module = model_lib.FeatureMapping(features=8, kernel_size=3)
  params = random_params(lambda: module.init(jax.random.key(0), x, mask))
  apply = jax.jit(module.apply)
  out = np.asarray(apply(params, x, mask))
  assert out.shape == (6, 10, 8)
  np.testing.assert_array_equal(out[~mask], 0.0)
  assert_padding_invariant(out, mask, apply(params, seqs[1][None], np.ones((1, 4), bool)), 1)
  p = params["params"]
  for i, s in enumerate(seqs):
    h = np_conv_same(s, np.asarray(p["conv"]["kernel"]), np.asarray(p["conv"]["bias"]), 1)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6)
    h = h * np.asarray(p["norm"]["scale"]) + np.asarray(p["norm"]["bias"])
    np.testing.assert_allclose(out[i, :len(s)], h, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- MultiscaleAttention

GROUPS = ((2, 1, 1), (1, 3, 1), (2, 3, 2))


def test_multiscale_attention_matches_per_head_reference_and_padding_invariant():
  ref_seqs = sequences(3, [9, 5, 3, 0], 8)  # the last example is an empty filler
  query_seqs = sequences(4, [4, 2, 4, 0], 8)
  ref, ref_mask = batch_variants(ref_seqs, total=12, seed=5)
  query, query_mask = batch_variants(query_seqs, total=6, seed=6)
  module = attention.MultiscaleAttention(groups=GROUPS, head_dim=4, relative=False)
  params = random_params(lambda: module.init(jax.random.key(1), ref, ref_mask, query, query_mask))
  apply = jax.jit(module.apply)
  out = np.asarray(apply(params, ref, ref_mask, query, query_mask))
  assert out.shape == (8, 12, 5) and module.num_heads == 5
  np.testing.assert_array_equal(out[~ref_mask], 0.0)
  single = apply(params, ref_seqs[1][None], np.ones((1, 5), bool),
                 query_seqs[1][None], np.ones((1, 2), bool))
  assert_padding_invariant(out, ref_mask, single, 1)
  for b in range(3):
    expected = np_multiscale(params["params"], GROUPS, 4, ref_seqs[b], query_seqs[b])
    np.testing.assert_allclose(out[b, :len(ref_seqs[b])], expected, rtol=1e-4, atol=1e-6)
    # softmax over reference frames, averaged over query frames: each head sums to 1
    np.testing.assert_allclose(out[b].sum(axis=0), 1.0, rtol=1e-5)
  # relative=True (the default) is the same attention times each reference's length.
  relative = attention.MultiscaleAttention(groups=GROUPS, head_dim=4)
  scaled = np.asarray(jax.jit(relative.apply)(params, ref, ref_mask, query, query_mask))
  np.testing.assert_allclose(scaled, out * ref_mask.sum(axis=1)[:, None, None], rtol=1e-5)


def test_multiscale_attention_rejects_bad_input():
  ref = np.zeros((1, 3, 4), np.float32)
  mask = np.ones((1, 3), bool)
  with pytest.raises(ValueError, match="attention_groups"):
    jax.eval_shape(lambda: attention.MultiscaleAttention(groups=((2, 0, 1),), head_dim=4).init(
        jax.random.key(0), ref, mask, ref, mask))
  with pytest.raises(ValueError, match="reference_mask"):
    jax.eval_shape(lambda: attention.MultiscaleAttention(groups=((1, 1, 1),), head_dim=4).init(
        jax.random.key(0), ref, mask[:, :2], ref, mask))


# ----------------------------------------------------------------- SelfAttention


def test_self_attention_matches_equations_and_padding_invariant():
  seqs = sequences(7, [6, 3], 8)
  x, mask = batch_variants(seqs, total=9, seed=8)
  module = attention.SelfAttention(num_heads=2, head_dim=3)
  params = random_params(lambda: module.init(jax.random.key(0), x, mask))
  assert set(params["params"]) == {"query", "key", "value"}  # no bias, no output projection
  apply = jax.jit(module.apply)
  out = np.asarray(apply(params, x, mask))
  assert out.shape == (4, 9, 6) and module.features == 6
  np.testing.assert_array_equal(out[~mask], 0.0)
  assert_padding_invariant(out, mask, apply(params, seqs[1][None], np.ones((1, 3), bool)), 1)
  p = params["params"]
  for b, s in enumerate(seqs):
    xb = s.astype(np.float64)
    heads = []
    for h in range(2):
      wq, wk, wv = (np.asarray(p[name]["kernel"])[:, h] for name in ("query", "key", "value"))
      a = np_softmax((xb @ wq) @ (xb @ wk).T / math.sqrt(3), axis=1)
      heads.append(a @ (xb @ wv))
    np.testing.assert_allclose(out[b, :len(s)], np.concatenate(heads, axis=1), rtol=1e-4, atol=1e-5)


def test_self_attention_output_projection_option():
  x, mask = np.zeros((1, 4, 8), np.float32), np.ones((1, 4), bool)
  module = attention.SelfAttention(num_heads=2, head_dim=3, out_features=10)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x, mask))
  assert "output" in variables["params"]
  assert jax.eval_shape(module.apply, variables, x, mask).shape == (1, 4, 10)


# ----------------------------------------------------------------- LocalizationPredictor


def test_localization_predictor_padding_invariant_and_bidirectional():
  seqs = sequences(9, [8, 5, 1, 5], 5)
  seqs[3] = seqs[1].copy()
  seqs[3][-1] += 1.0  # example 3 = example 1 with its last valid step changed
  x, mask = batch_variants(seqs, total=11, seed=10)
  module = model_lib.LocalizationPredictor(lstm_dim=6)
  params = random_params(lambda: module.init(jax.random.key(0), x, mask, deterministic=True))
  apply = jax.jit(lambda p, x, m: module.apply(p, x, m, deterministic=True))
  out = np.asarray(apply(params, x, mask))
  assert out.shape == (8, 11, 4) and out.dtype == np.float32
  assert_padding_invariant(out, mask, apply(params, seqs[1][None], np.ones((1, 5), bool)), 1)
  # The backward direction carries the last valid step back to step 0.
  assert np.abs(out[3, 0] - out[1, 0]).max() > 1e-4


# ----------------------------------------------------------------- ReLocalizer


def _model_batch():
  """Six examples (the last one an empty filler), zero- and garbage-padded."""
  ref_seqs = sequences(11, [12, 7, 3, 1, 0], D)
  query_seqs = sequences(12, [5, 2, 4, 3, 0], D)
  ref, ref_mask = batch_variants(ref_seqs, total=15, seed=13)
  query, query_mask = batch_variants(query_seqs, total=7, seed=14)
  return ref_seqs, query_seqs, (query, query_mask, ref, ref_mask)


def applied(model, batch):
  """``(model, random params, jitted apply, batch, its output)`` for a model and a test batch."""
  ref_seqs, query_seqs, args = batch
  params = random_params(lambda: model.init(jax.random.key(0), *args, deterministic=True))
  apply = jax.jit(lambda p, *a: model.apply(p, *a, deterministic=True))
  return model, params, apply, (ref_seqs, query_seqs, args), apply(params, *args)


@pytest.fixture(scope="module")
def tiny_model():
  """Tiny full model (with self-attention), random params, and its output on _model_batch."""
  return applied(model_lib.ReLocalizer(tiny_config()), _model_batch())


def test_relocalizer_padding_invariant(tiny_model):
  _, params, apply, (ref_seqs, query_seqs, args), out = tiny_model
  ref_mask = args[3]
  assert out["logits"].shape == (10, 15, 4) and out["attention"].shape == (10, 15, 4)
  for key in ("logits", "attention"):
    np.testing.assert_array_equal(np.asarray(out[key])[~ref_mask], 0.0)
  single = apply(params, query_seqs[1][None], np.ones((1, 2), bool),
                 ref_seqs[1][None], np.ones((1, 7), bool))
  for key in ("logits", "log_probs", "probs", "attention"):
    assert_padding_invariant(out[key], ref_mask, single[key], 1)


def test_relocalizer_without_self_attention_padding_invariant():
  model = model_lib.ReLocalizer(tiny_config(use_self_attention=False))
  _, _, args = _model_batch()
  params = random_params(lambda: model.init(jax.random.key(0), *args, deterministic=True))
  assert "self_attention" not in params["params"]
  out = jax.jit(lambda p, *a: model.apply(p, *a, deterministic=True))(params, *args)
  for key in ("logits", "attention"):
    assert_padding_invariant(out[key], args[3])


def test_relocalizer_outputs_and_dropout(tiny_model):
  model, params, _, (_, _, args), out = tiny_model
  ref_mask = args[3]
  train = jax.jit(lambda p, key: model.apply(p, *args, deterministic=False,
                                             rngs={"dropout": key})["logits"])
  a, b, c = (train(params, jax.random.key(seed)) for seed in (1, 1, 2))
  for key in ("logits", "log_probs", "probs", "attention"):
    assert out[key].dtype == jnp.float32
    assert np.isfinite(np.asarray(out[key])).all()
  probs = np.asarray(out["probs"])
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.exp(np.asarray(out["log_probs"])), probs, rtol=1e-5, atol=1e-7)
  has_ref = ref_mask.any(axis=1)
  # Relative attention (the default): each head sums to l_r over the valid reference steps.
  head_sums = np.asarray(out["attention"]).sum(axis=1)[has_ref]  # [examples, heads]
  np.testing.assert_allclose(head_sums, np.broadcast_to(
      ref_mask.sum(axis=1)[has_ref, None].astype(np.float32), head_sums.shape), rtol=1e-5)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert not np.allclose(a, out["logits"])
  np.testing.assert_array_equal(np.asarray(a)[~ref_mask], 0.0)


def test_relocalizer_bfloat16_compute(tiny_model):
  _, params, _, (_, _, args), out32 = tiny_model
  model16 = model_lib.ReLocalizer(tiny_config(dtype="bfloat16"))
  shapes = jax.eval_shape(lambda: model16.init(jax.random.key(0), *args, deterministic=True))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes))
  out16 = jax.jit(lambda p: model16.apply(p, *args, deterministic=True))(params)
  for key in ("logits", "probs", "attention"):
    assert out16[key].dtype == jnp.float32
    assert np.isfinite(np.asarray(out16[key])).all()
  np.testing.assert_allclose(out16["probs"], out32["probs"], atol=0.05)


def test_relocalizer_rejects_bad_inputs():
  model = model_lib.ReLocalizer(tiny_config())
  query, query_mask = np.zeros((2, 3, D), np.float32), np.ones((2, 3), bool)
  ref, ref_mask = np.zeros((2, 5, D), np.float32), np.ones((2, 5), bool)

  def init(m, *a):
    return jax.eval_shape(lambda: m.init(jax.random.key(0), *a, deterministic=True))
  with pytest.raises(ValueError, match="reference_mask"):
    init(model, query, query_mask, ref, ref_mask[:, :4])
  with pytest.raises(ValueError, match="feature dimension"):
    init(model, query[..., :4], query_mask, ref, ref_mask)
  with pytest.raises(ValueError, match="dtype"):
    init(model_lib.ReLocalizer(tiny_config(dtype="float16")), query, query_mask, ref, ref_mask)


# ----------------------------------------------------------------- configuration


def test_model_config_defaults():
  cfg = model_lib.model_config()
  assert cfg.to_dict() == {
      "hidden_dim": 128, "map_kernel_size": 3,
      "attention_groups": ((8, 1, 1), (8, 3, 1), (8, 3, 2), (8, 3, 3), (8, 3, 4)),
      "head_dim": 32, "attention_relative": True, "use_self_attention": True,
      "self_attention_heads": 2,
      "self_attention_head_dim": 32, "self_attention_out": 0, "frame_similarity": False,
      "frame_similarity_residual": False, "centred_inputs": False, "query_blind": False,
      "lstm_dim": 128, "dropout_in": 0.4, "dropout_out": 0.2,
      "lstm_implementation": "auto", "dtype": "float32"}


def test_apply_variant():
  cfg = model_lib.model_config()
  expected = {"base": (((40, 3, 1),), False), "multiscale": (model_lib.MULTISCALE_GROUPS, False),
              "selfatt": (((40, 3, 1),), True), "full": (model_lib.MULTISCALE_GROUPS, True)}
  for variant, (groups, self_att) in expected.items():
    out = model_lib.apply_variant(cfg, variant)
    assert tuple(map(tuple, out.attention_groups)) == groups
    assert sum(g[0] for g in out.attention_groups) == 40
    assert out.use_self_attention is self_att
  assert cfg.attention_groups == model_lib.MULTISCALE_GROUPS  # input not modified
  assert cfg.use_self_attention is True
  with pytest.raises(ValueError, match="variant"):
    model_lib.apply_variant(cfg, "bogus")


@pytest.mark.parametrize("variant,bilstm_in", [("full", 104), ("base", 40), ("selfatt", 104),
                                               ("multiscale", 40)])
def test_default_config_shapes(variant, bilstm_in):
  """Real default dimensions (D=500), shapes only (no compilation)."""
  cfg = model_lib.apply_variant(model_lib.model_config(), variant)
  model = model_lib.ReLocalizer(ml_collections.ConfigDict({"model": cfg}))  # full config works too
  batch, len_query, len_ref = 2, 5, 12
  args = (jnp.zeros((batch, len_query, 500)), jnp.ones((batch, len_query), bool),
          jnp.zeros((batch, len_ref, 500)), jnp.ones((batch, len_ref), bool))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, deterministic=True))
  params = variables["params"]
  assert params["predictor"]["forward"]["cell"]["ii"]["kernel"].shape == (bilstm_in, 128)
  assert params["predictor"]["backward"]["cell"]["ii"]["kernel"].shape == (bilstm_in, 128)
  assert params["predictor"]["lstm"]["cell"]["ii"]["kernel"].shape == (256, 128)
  assert params["query_mapping"]["conv"]["kernel"].shape == (3, 500, 128)
  assert ("self_attention" in params) == cfg.use_self_attention
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  if variant == "full":
    assert n_params == 1_700_100
  out = jax.eval_shape(lambda v: model.apply(v, *args, deterministic=True), variables)
  assert out["logits"].shape == (batch, len_ref, 4)
  assert out["attention"].shape == (batch, len_ref, 40)
  assert all(o.dtype == jnp.float32 for o in out.values())


# ----------------------------------------------------------------- frame similarity (extension)


def test_frame_similarity_is_the_frame_level_score_standardized_and_padding_invariant():
  ref_seqs = sequences(11, [7, 3, 1], D)
  query_seqs = sequences(12, [2, 4, 3], D)
  ref, ref_mask = batch_variants(ref_seqs, 9, seed=13)
  query, query_mask = batch_variants(query_seqs, 5, seed=14)
  out = np.asarray(jax.jit(attention.frame_similarity)(ref, ref_mask, query, query_mask))
  assert out.shape == (6, 9, 1)
  np.testing.assert_array_equal(out[~ref_mask], 0.0)
  assert_padding_invariant(out, ref_mask)
  for i, (r, q) in enumerate(zip(ref_seqs, query_seqs)):
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    score = (unit(r.astype(np.float64)) @ unit(q.astype(np.float64)).T).mean(axis=1)  # [Lr]
    spread = score.std()
    expected = (score - score.mean()) / spread if spread > 1e-6 else np.zeros_like(score)
    np.testing.assert_allclose(out[i, :len(r), 0], expected, rtol=1e-4, atol=1e-4)


def test_relocalizer_with_frame_similarity_padding_invariant():
  model = model_lib.ReLocalizer(tiny_config(frame_similarity=True))
  ref_seqs, query_seqs, args = _model_batch()
  params = random_params(lambda: model.init(jax.random.key(0), *args, deterministic=True))
  bilstm_in = params["params"]["predictor"]["forward"]["cell"]["ii"]["kernel"].shape[0]
  assert bilstm_in == 4 + 2 * 4 + 1  # heads + h * d_k + the similarity channel
  apply = jax.jit(lambda p, *a: model.apply(p, *a, deterministic=True))
  out = apply(params, *args)
  single = apply(params, query_seqs[1][None], np.ones((1, 2), bool),
                 ref_seqs[1][None], np.ones((1, 7), bool))
  assert_padding_invariant(out["logits"], args[3], single["logits"], 1)


def test_with_centred_appends_the_features_minus_their_mean_over_valid_steps():
  x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32) + 10.0
  mask = np.array([[True] * 5, [True] * 3 + [False] * 2])
  out = np.asarray(with_centred(jnp.asarray(x), jnp.asarray(mask)))
  assert out.shape == (2, 5, 6)
  np.testing.assert_array_equal(out[~mask], 0.0)
  np.testing.assert_allclose(out[mask][:, :3], x[mask])
  for b in range(2):
    valid = x[b, mask[b]]
    np.testing.assert_allclose(out[b, mask[b], 3:], valid - valid.mean(0), atol=1e-5)


def test_relocalizer_with_centred_inputs_padding_invariant_and_offset_free_half():
  model = model_lib.ReLocalizer(tiny_config(centred_inputs=True))
  ref_seqs, query_seqs, args = _model_batch()
  params = random_params(lambda: model.init(jax.random.key(0), *args, deterministic=True))
  d = args[0].shape[-1]
  for name in ("query_mapping", "reference_mapping"):
    assert params["params"][name]["conv"]["kernel"].shape[1] == 2 * d
  apply = jax.jit(lambda p, *a: model.apply(p, *a, deterministic=True))
  out = apply(params, *args)
  single = apply(params, query_seqs[1][None], np.ones((1, 2), bool),
                 ref_seqs[1][None], np.ones((1, 7), bool))
  assert_padding_invariant(out["logits"], args[3], single["logits"], 1)
  # With the raw half's weights zeroed, a constant added to a video changes nothing.
  blind = jax.tree_util.tree_map_with_path(
      lambda path, w: w.at[:, :d].set(0.0) if "mapping" in jax.tree_util.keystr(path)
      and "kernel" in jax.tree_util.keystr(path) else w, params)
  shifted = (args[0] + 3.0, args[1], args[2] - 2.0, args[3])
  np.testing.assert_allclose(np.asarray(apply(blind, *shifted)["logits"]),
                             np.asarray(apply(blind, *args)["logits"]), atol=1e-4)


def test_with_shared_offset_adds_one_offset_per_pair_to_both_videos():
  rng = np.random.default_rng(0)
  query = rng.normal(size=(3, 4, 400)).astype(np.float32)
  reference = rng.normal(size=(3, 6, 400)).astype(np.float32) * 2.0
  query_mask = np.array([[True] * 4, [True] * 2 + [False] * 2, [True] * 3 + [False]])
  reference_mask = np.array([[True] * 6, [True] * 5 + [False], [True] * 2 + [False] * 4])
  q, r = jax.jit(with_shared_offset, static_argnums=5)(
      jax.random.key(1), query, query_mask, reference, reference_mask, 0.5)
  q, r = np.asarray(q), np.asarray(r)
  np.testing.assert_array_equal(q[~query_mask], 0.0)
  np.testing.assert_array_equal(r[~reference_mask], 0.0)
  offsets = []
  for b in range(3):
    shift_q = q[b, query_mask[b]] - query[b, query_mask[b]]  # [valid, D]
    shift_r = r[b, reference_mask[b]] - reference[b, reference_mask[b]]
    np.testing.assert_allclose(shift_q, np.broadcast_to(shift_q[0], shift_q.shape), atol=1e-5)
    np.testing.assert_allclose(shift_r, np.broadcast_to(shift_q[0], shift_r.shape), atol=1e-5)
    offsets.append(shift_q[0])
  assert not np.allclose(offsets[0], offsets[1])  # A pair's own offset.
  mean_norm = np.linalg.norm(reference[reference_mask], axis=-1).mean()
  np.testing.assert_allclose(np.linalg.norm(offsets, axis=-1), 0.5 * mean_norm, rtol=0.15)


def test_family_applies_the_shared_offset_in_training_only():
  config = weak.get_config("quick")
  config.data.shared_offset = 1.0
  family = models.family_class(config)(config)
  _, _, (query, query_mask, reference, reference_mask) = _model_batch()
  batch = {"query": query, "query_mask": query_mask, "reference": reference,
           "reference_mask": reference_mask}
  params = family.module.init(jax.random.key(0), query, query_mask, reference, reference_mask,
                              deterministic=True)["params"]
  dropout = jax.random.key(3)
  shifted_query, shifted_reference = with_shared_offset(
      jax.random.fold_in(dropout, family_lib.SHARED_OFFSET_STREAM), query, query_mask, reference,
      reference_mask, 1.0)
  expected = family.module.apply({"params": params}, shifted_query, query_mask,
                                 shifted_reference, reference_mask, deterministic=False,
                                 rngs={"dropout": dropout})
  np.testing.assert_allclose(family.apply(params, batch, dropout)["logits"],
                             expected["logits"], atol=1e-5)
  plain = family.module.apply({"params": params}, query, query_mask, reference,
                              reference_mask, deterministic=True)
  np.testing.assert_array_equal(family.apply(params, batch)["logits"], plain["logits"])


def test_relocalizer_with_frame_similarity_residual_adds_the_score_to_the_logits():
  _, _, args = _model_batch()
  query, query_mask, ref, ref_mask = args
  plain = model_lib.ReLocalizer(tiny_config())
  residual = model_lib.ReLocalizer(tiny_config(frame_similarity_residual=True))
  variables = residual.init(jax.random.key(0), *args, deterministic=True)
  weight = variables["params"].pop("similarity_to_logits")
  np.testing.assert_array_equal(weight, model_lib.RESIDUAL_SIMILARITY_INIT)
  # The rest of the tree is the paper's model's, parameter for parameter.
  assert jax.tree.structure(variables) == jax.tree.structure(
      plain.init(jax.random.key(0), *args, deterministic=True))
  out_plain = plain.apply(variables, *args, deterministic=True)
  variables["params"]["similarity_to_logits"] = weight
  out = residual.apply(variables, *args, deterministic=True)
  score = np.asarray(attention.frame_similarity(ref, ref_mask, query, query_mask))  # [B, Lr, 1]
  expected = np.asarray(out_plain["logits"]) + score * np.asarray(weight)
  np.testing.assert_allclose(np.asarray(out["logits"]), np.where(ref_mask[..., None], expected, 0),
                             rtol=1e-5, atol=1e-6)
  assert_padding_invariant(out["logits"], ref_mask)
  bilstm_in = variables["params"]["predictor"]["forward"]["cell"]["ii"]["kernel"].shape[0]
  assert bilstm_in == 4 + 2 * 4  # the score is not an input channel


def test_query_blind_control_never_reads_the_query():
  model = model_lib.ReLocalizer(tiny_config(query_blind=True, frame_similarity=True))
  _, _, (query, query_mask, ref, ref_mask) = _model_batch()
  params = random_params(lambda: model.init(jax.random.key(0), query, query_mask, ref, ref_mask,
                                            deterministic=True))
  assert "query_mapping" not in params["params"]
  assert "multiscale_attention" not in params["params"]
  apply = jax.jit(lambda p, q, qm: model.apply(p, q, qm, ref, ref_mask, deterministic=True))
  a = apply(params, query, query_mask)
  b = apply(params, np.ones_like(query) * 7.0, np.ones_like(query_mask))
  np.testing.assert_array_equal(np.asarray(a["logits"]), np.asarray(b["logits"]))
  assert a["attention"].shape == (*ref.shape[:2], 0)
  assert_padding_invariant(a["logits"], ref_mask)
  with pytest.raises(ValueError, match="query_blind needs model.use_self_attention"):
    model_lib.ReLocalizer(tiny_config(query_blind=True, use_self_attention=False)).init(
        jax.random.key(0), query, query_mask, ref, ref_mask, deterministic=True)
