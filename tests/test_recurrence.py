"""Tests of vreloc_jax.relocalizer.recurrence: the cuDNN path's packing, lengths, masking (CPU).

cuDNN itself cannot run here: its code path runs with `recurrence.reference_kernel`
(jax's ``rnn.lstm_ref``, the pure-JAX reference of the same kernel and the same flat
weight layout) in place of ``rnn.lstm``, and is compared with Flax's ``nn.RNN`` /
``nn.Bidirectional`` over ``OptimizedLSTMCell``: outputs and gradients, padded and
unpadded, with a zero-length sequence. ``rnn.lstm`` itself is only traced (its forward
and backward primitives appear in the gradient's jaxpr). Tiny sizes, few programs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from tests.test_model import batch_variants
from tests.test_model import random_params
from tests.test_model import sequences
from tests.test_model import tiny_config
from vreloc_jax import inputs
from vreloc_jax import losses
from vreloc_jax.relocalizer import model as model_lib
from vreloc_jax.relocalizer import recurrence

TOL = dict(rtol=1e-5, atol=1e-5)
IN, H = 3, 4  # input features and hidden size of the layer tests


def random_cell(rng: np.random.Generator, in_features: int, hidden: int) -> dict[str, Any]:
  cell = {}
  for g in recurrence.GATES:
    cell[f"i{g}"] = {"kernel": rng.normal(size=(in_features, hidden)).astype(np.float32) * 0.5}
    cell[f"h{g}"] = {"kernel": rng.normal(size=(hidden, hidden)).astype(np.float32) * 0.5,
                     "bias": rng.normal(size=(hidden,)).astype(np.float32) * 0.5}
  return cell


def test_pack_lstm_weights_is_cudnn_layout():
  rng = np.random.default_rng(0)
  forward, backward = random_cell(rng, IN, H), random_cell(rng, IN, H)
  flat = recurrence.pack_lstm_weights([forward, backward])
  assert flat.dtype == jnp.float32
  assert flat.shape == (rnn.get_num_params_in_lstm(IN, H, 1, True),)
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, IN, H, 1, True)
  for layer, cell in enumerate((forward, backward)):
    for k, g in enumerate(recurrence.GATES):  # rows [kH, (k+1)H): gate k, as W_i<g> of torch
      rows = slice(k * H, (k + 1) * H)
      np.testing.assert_array_equal(w_ih[layer][rows], cell[f"i{g}"]["kernel"].T)
      np.testing.assert_array_equal(w_hh[layer][rows], cell[f"h{g}"]["kernel"].T)
      np.testing.assert_array_equal(b_hh[layer][rows], cell[f"h{g}"]["bias"])
    np.testing.assert_array_equal(b_ih[layer], 0.0)
  single = recurrence.pack_lstm_weights([forward])
  assert single.shape == (rnn.get_num_params_in_lstm(IN, H, 1, False),)
  np.testing.assert_array_equal(single[:4 * H * (IN + H)], flat[:4 * H * (IN + H)])


def _flax_layers(cells, x, lengths):
  """Flax's BiLSTM and LSTM over OptimizedLSTMCell with the given parameters."""
  def cell():
    return nn.OptimizedLSTMCell(H, parent=None)
  bilstm = nn.Bidirectional(nn.RNN(cell()), nn.RNN(cell()))
  both = bilstm.apply({"params": {"forward_rnn": {"cell": cells[0]},
                                  "backward_rnn": {"cell": cells[1]}}}, x, seq_lengths=lengths)
  one = nn.RNN(cell()).apply({"params": {"cell": cells[2]}}, x, seq_lengths=lengths)
  return both, one


def _reference_layers(cells, x, lengths):
  """The cuDNN path (packing, clamp, masking) with lstm_ref as the kernel."""
  kernel = recurrence.reference_kernel
  return (recurrence.cudnn_lstm(x, lengths, cells[:2], kernel=kernel),
          recurrence.cudnn_lstm(x, lengths, cells[2:], kernel=kernel))


def _loss(layers):
  def loss(cells, x, lengths):
    both, one = layers(cells, x, lengths)
    valid = (jnp.arange(x.shape[1])[None] < lengths[:, None])[..., None]
    weights = jnp.sin(jnp.arange(3 * H, dtype=jnp.float32))  # every feature its own weight
    y = jnp.concatenate([both, one], axis=-1)
    return jnp.sum(jnp.where(valid, y * weights, 0.0)), (both, one)
  return jax.value_and_grad(loss, has_aux=True)


@jax.jit
def _compare(cells, x, lengths, x_changed, alone, alone_lengths):
  """One program: both paths' outputs and gradients, and the cuDNN path on other inputs."""
  return (_loss(_reference_layers)(cells, x, lengths), _loss(_flax_layers)(cells, x, lengths),
          _reference_layers(cells, x_changed, lengths),
          _reference_layers(cells, alone, alone_lengths))


def test_cudnn_path_matches_flax_lstms_padded_and_not():
  """Forward, bidirectional and the 2nd (unidirectional) LSTM; gradients; length 0."""
  rng = np.random.default_rng(1)
  cells = [random_cell(rng, IN, H) for _ in range(3)]
  seqs = sequences(2, [7, 4, 1, 7, 0], IN)  # rows 0 and 3 unpadded, row 4 empty
  x, mask = batch_variants(seqs, total=7, seed=3)  # rows 5..9: the same, garbage-padded
  x[5:][~mask[5:]] = np.nan_to_num(x[5:][~mask[5:]])  # finite garbage: Flax computes on it
  lengths = mask.sum(axis=1).astype(np.int32)
  x_changed = x.copy()
  x_changed[1, 3] += 1.0  # the last valid step of sequence 1
  ((_, (both, one)), grads), ((_, (both_flax, one_flax)), grads_flax), changed, alone = _compare(
      cells, x, lengths, x_changed, seqs[1][None], np.array([4], np.int32))
  both, one, both_flax, one_flax = map(np.asarray, (both, one, both_flax, one_flax))
  assert both.shape == (10, 7, 2 * H) and one.shape == (10, 7, H)
  np.testing.assert_allclose(both[mask], both_flax[mask], **TOL)
  np.testing.assert_allclose(one[mask], one_flax[mask], **TOL)
  np.testing.assert_array_equal(both[~mask], 0.0)  # padded steps and the empty sequence
  np.testing.assert_array_equal(one[~mask], 0.0)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_flax)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Padding invariance: zero- and garbage-padded copies agree; unpadded alone as well.
  np.testing.assert_allclose(both[5:][mask[5:]], both[:5][mask[:5]], **TOL)
  np.testing.assert_allclose(one[5:][mask[5:]], one[:5][mask[:5]], **TOL)
  np.testing.assert_allclose(alone[0][0], both[1, :4], **TOL)
  np.testing.assert_allclose(alone[1][0], one[1, :4], **TOL)
  # The backward direction starts at each sequence's last valid step: sequence 1's step 0
  # depends on its step 3 through the backward half only.
  both_changed, one_changed = map(np.asarray, changed)
  assert np.abs(both_changed[1, 0, H:] - both[1, 0, H:]).max() > 1e-4
  np.testing.assert_allclose(both_changed[1, :3, :H], both[1, :3, :H], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(one_changed[1, :3], one[1, :3], rtol=1e-6, atol=1e-7)


def test_cudnn_lstm_empty_shapes():
  cells = [random_cell(np.random.default_rng(0), IN, H)] * 2
  out = recurrence.cudnn_lstm(jnp.zeros((2, 0, IN)), jnp.zeros((2,), jnp.int32), cells)
  assert out.shape == (2, 0, 2 * H) and out.dtype == jnp.float32


def test_cudnn_kernel_traces_forward_and_backward(monkeypatch):
  """``rnn.lstm`` itself, traced (not run): its abstract evaluation asks the CUDA plugin for
  the reserve-space size, replaced here; lengths reach it clamped to >= 1."""
  gpu_rnn = getattr(rnn, "gpu_rnn", None)
  if gpu_rnn is None:
    pytest.skip("jax.experimental.rnn has no gpu_rnn module")
  monkeypatch.setattr(gpu_rnn, "compute_rnn_workspace_reserve_space_sizes",
                      lambda *args: (16, 16), raising=False)
  cells = [random_cell(np.random.default_rng(0), IN, H) for _ in range(2)]

  def loss(cells, x, lengths):
    return jnp.sum(recurrence.cudnn_lstm(x, lengths, cells) ** 2)
  closed = jax.make_jaxpr(jax.grad(loss))(cells, jnp.ones((3, 5, IN)),
                                          jnp.array([5, 2, 0], jnp.int32))
  eqns = {e.primitive.name: e for e in closed.jaxpr.eqns}
  assert {"rnn_fwd", "rnn_bwd"} <= set(eqns)
  fwd = eqns["rnn_fwd"]
  assert fwd.params["bidirectional"] and fwd.params["hidden_size"] == H
  assert fwd.params["input_size"] == IN and fwd.params["num_layers"] == 1
  assert fwd.invars[3].aval.shape == (rnn.get_num_params_in_lstm(IN, H, 1, True),)
  producer = {v: e for e in closed.jaxpr.eqns for v in e.outvars}[fwd.invars[4]]
  assert producer.primitive.name == "max"  # the lengths, clamped to >= 1


# ----------------------------------------------------------------- the predictor


class _TodaysPredictor(nn.Module):
  """LocalizationPredictor as it was before `recurrence` (frozen copy, for bit-identity)."""

  lstm_dim: int = 128
  dropout_in: float = 0.4
  dropout_out: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, *, deterministic):
    lengths = mask.sum(axis=1).astype(jnp.int32)

    def cell():
      return nn.OptimizedLSTMCell(self.lstm_dim, dtype=self.dtype, parent=None)

    x = inputs.mask_steps(x, mask)
    x = nn.Dropout(self.dropout_in)(x, deterministic=deterministic)
    bilstm = nn.Bidirectional(nn.RNN(cell(), name="forward"),
                              nn.RNN(cell(), name="backward"), name="bilstm")
    h = bilstm(x, seq_lengths=lengths)
    h = inputs.mask_steps(h, mask)
    h = nn.Dropout(self.dropout_out)(h, deterministic=deterministic)
    h = nn.RNN(cell(), name="lstm")(h, seq_lengths=lengths)
    logits = nn.Dense(losses.NUM_CLASSES, dtype=self.dtype, name="classifier")(h)
    return logits.astype(jnp.float32)


def test_predictor_scan_is_bit_identical_and_cudnn_path_agrees():
  seqs = sequences(9, [8, 5, 1, 0], 5)  # the last one an empty filler
  x, mask = batch_variants(seqs, total=9, seed=10)  # zero-padded, then garbage (NaN) padded
  todays = _TodaysPredictor(lstm_dim=6)
  scan = model_lib.LocalizationPredictor(lstm_dim=6, lstm_implementation="scan")
  cudnn_path = model_lib.LocalizationPredictor(lstm_dim=6,
                                               lstm_implementation=recurrence.REFERENCE)
  # One parameter tree (paths, shapes, dtypes), whichever implementation.
  trees = [jax.eval_shape(lambda m=m: m.init(jax.random.key(0), x, mask, deterministic=True))
           for m in (todays, scan, cudnn_path)]
  assert trees[1] == trees[0] and trees[2] == trees[0]
  params = random_params(lambda: todays.init(jax.random.key(0), x, mask, deterministic=True))

  @jax.jit
  def run(params, key):  # dropout on (the same masks in every module), and off
    train = [m.apply(params, x, mask, deterministic=False, rngs={"dropout": key})
             for m in (todays, scan, cudnn_path)]
    return train, cudnn_path.apply(params, x, mask, deterministic=True)
  train, deterministic = run(params, jax.random.key(1))
  expected, from_scan, from_cudnn_path = map(np.asarray, train)
  np.testing.assert_array_equal(from_scan, expected)  # "scan" is today's program
  np.testing.assert_allclose(from_cudnn_path[mask], expected[mask], **TOL)
  # The cuDNN path's padding invariance (without dropout: rows draw different masks).
  deterministic = np.asarray(deterministic)
  assert np.isfinite(deterministic).all()  # garbage (NaN) padding never leaks
  n = len(seqs)
  np.testing.assert_allclose(deterministic[n:][mask[n:]], deterministic[:n][mask[:n]], **TOL)


def test_resolve_and_config_wiring():
  assert recurrence.resolve("auto") == "scan"  # CPU
  assert recurrence.resolve("scan") == "scan"
  with pytest.raises(ValueError, match="needs a CUDA GPU"):
    recurrence.resolve("cudnn")
  with pytest.raises(ValueError, match="lstm_implementation must be one of"):
    recurrence.resolve("pallas")
  query, query_mask = np.zeros((2, 3, 6), np.float32), np.ones((2, 3), bool)
  ref, ref_mask = np.zeros((2, 5, 6), np.float32), np.ones((2, 5), bool)

  def jaxpr(implementation):
    model = model_lib.ReLocalizer(tiny_config(lstm_implementation=implementation))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), query, query_mask, ref,
                                                  ref_mask, deterministic=True))
    return str(jax.make_jaxpr(lambda v: model.apply(v, query, query_mask, ref, ref_mask,
                                                    deterministic=True))(variables))
  assert "lstm_ref" in jaxpr(recurrence.REFERENCE)  # the config field reaches the predictor
  assert "lstm_ref" not in jaxpr("scan")
  with pytest.raises(ValueError, match="needs a CUDA GPU"):
    jaxpr("cudnn")
