"""The localization predictor's recurrent layers, by one of two implementations.

`bidirectional_lstm` (the BiLSTM of eq. 10) and `lstm` (the LSTM of eq. 12) are called
inside a module's compact method and create their parameters in that module, under the
same paths whatever the implementation (model_config().lstm_implementation):

  "scan"   Flax's ``nn.RNN`` over ``nn.OptimizedLSTMCell`` (a ``lax.scan``): the portable
           path, and the only one on CPU and TPU.
  "cudnn"  ``jax.experimental.rnn.lstm``: one cuDNN call per layer (both directions of the
           BiLSTM in one). CUDA GPUs only.
  "auto"   "cudnn" when the default backend is a CUDA GPU and the job has one device,
           else "scan" (see `resolve`).

Parameters (``forward/cell/ii/kernel``, ..., ``backward/cell/...``, ``lstm/cell/...``):
  ``i{i,f,g,o}/kernel`` [in, H] (no bias) and ``h{i,f,g,o}/kernel`` [H, H] with
  ``h{i,f,g,o}/bias`` [H], exactly as ``OptimizedLSTMCell`` lays them out, so checkpoints
  and exports move freely between implementations. The cuDNN path packs them, inside
  the jit-compiled program, into cuDNN's flat weight vector (`pack_lstm_weights`).

Facts about ``jax.experimental.rnn`` (jax 0.10.2) that this module relies on:
  * Flat weight layout (module docstring of jax/experimental/rnn.py and
    ``_get_params_shapes_in_lstm``): per pseudo-layer (layer 0 forward, layer 0
    reverse, layer 1 forward, ...) W_ih [4H, in] then W_hh [4H, H], row-major; then,
    after all the matrices, per pseudo-layer b_ih [4H] then b_hh [4H]. Gates in the
    order (i, f, g, o) on the leading axis, the same order as Flax's cell; cuDNN adds
    two biases, Flax has one (on the hidden gates), so b_ih is zero.
  * Gate equations (``lstm_ref``): i, f, o sigmoid, g tanh, c' = f c + i g,
    h' = o tanh(c'), as ``OptimizedLSTMCell``.
  * Variable lengths: batch-major padded I/O with ``seq_lengths`` (int32); outputs at
    padded steps are 0 and the reverse direction starts at each sequence's last valid
    step (``lstm_ref``'s ``_flip_sequence``, as Flax's ``flip_sequences``).
  * Length 0 fails in cuDNN (jax-ml/jax#17966: the forward pass when every length is
    0, the backward pass when any is), so lengths are clamped to 1 and the outputs of
    empty sequences zeroed (`cudnn_lstm`).
  * float32 only (jaxlib's kernel sets CUDNN_DATA_FLOAT); inputs are cast to float32
    and the outputs back to the layer's dtype. The math follows
    ``jax.default_matmul_precision`` (TF32 allowed by default, "highest" forbids it,
    "bfloat16" is refused by jax).
  * Lowered on CUDA (and ROCm, whose MIOpen gate order differs: ``swap_lstm_gates``;
    jax's own test skips bidirectional there), never on CPU/TPU. Tracing it needs the
    CUDA plugin (its abstract evaluation asks cuDNN for the reserve-space size).
  * jaxlib's kernel (jaxlib/gpu/rnn_kernels.cc) copies ``seq_lengths`` to the host and
    synchronizes the stream at every forward and backward call, and always runs the
    forward in training mode (with a reserve space), in evaluation too.
  * The custom call has no SPMD partitioning rule: on a mesh of several devices XLA
    gathers the batch and every device runs the whole LSTM; hence "auto" picks it only
    for a single device.
  * Not in ``jax.export``'s stable custom calls, and its shapes must be static: exported
    programs always use "scan" (`vreloc_jax.export`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.recurrent import DenseParams
from jax.experimental import rnn

IMPLEMENTATIONS = ("auto", "scan", "cudnn")
# The cuDNN path's code (packing, length clamp, masking) with jax's pure-JAX reference
# kernel `rnn.lstm_ref` in place of cuDNN: runs anywhere; for tests.
REFERENCE = "cudnn_reference"
GATES = ("i", "f", "g", "o")  # Flax's and cuDNN's gate order.

Params = Mapping[str, Mapping[str, jax.Array]]  # one cell: {"ii": {"kernel"}, "hi": {...}, ...}


def cuda_backend() -> bool:
  """Whether the default backend is a CUDA GPU (not ROCm, CPU or TPU)."""
  if jax.default_backend() != "gpu":
    return False
  version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
  return "rocm" not in version and "hip" not in version


def resolve(implementation: str) -> str:
  """The implementation that runs: "scan", "cudnn" (or the tests' `REFERENCE`).

  "auto" is "cudnn" on a single CUDA GPU (the default backend, one device in the job),
  else "scan".

  Raises:
    ValueError: an unknown name, or "cudnn" where the default backend is not CUDA.
  """
  if implementation not in IMPLEMENTATIONS + (REFERENCE,):
    raise ValueError(f"model.lstm_implementation must be one of {IMPLEMENTATIONS}, got "
                     f"{implementation!r}")
  if implementation == "auto":
    return "cudnn" if cuda_backend() and jax.device_count() == 1 else "scan"
  if implementation == "cudnn" and not cuda_backend():
    raise ValueError(
        "model.lstm_implementation='cudnn' needs a CUDA GPU (jax.experimental.rnn runs on "
        f"CUDA only); the default backend is {jax.default_backend()!r}: use 'auto' or 'scan'")
  return implementation


def pack_lstm_weights(cells: Sequence[Params]) -> jax.Array:
  """cuDNN's flat float32 weight vector of one LSTM layer from Flax cell parameters.

  Args:
    cells: the ``OptimizedLSTMCell`` parameters of each pseudo-layer in cuDNN's order
      (one layer: [forward] or [forward, backward]).

  Returns:
    float32[rnn.get_num_params_in_lstm(in, H, 1, len(cells) == 2)]: W_ih, W_hh of each
    pseudo-layer, then b_ih (zero: Flax's cell has one bias) and b_hh of each.
  """
  matrices, biases = [], []
  for cell in cells:
    w_ih = jnp.concatenate([cell[f"i{g}"]["kernel"].T for g in GATES], axis=0)  # [4H, in]
    w_hh = jnp.concatenate([cell[f"h{g}"]["kernel"].T for g in GATES], axis=0)  # [4H, H]
    b_hh = jnp.concatenate([cell[f"h{g}"]["bias"] for g in GATES], axis=0)  # [4H]
    matrices += [w_ih.reshape(-1), w_hh.reshape(-1)]
    biases += [jnp.zeros_like(b_hh), b_hh]
  return jnp.concatenate(matrices + biases).astype(jnp.float32)


def reference_kernel(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers,
                     dropout, bidirectional):
  """``rnn.lstm``'s signature on ``rnn.lstm_ref`` (pure JAX, any backend): for tests."""
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size,
                                                   num_layers, bidirectional)
  return rnn.lstm_ref(x, h_0, c_0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size,
                      hidden_size, num_layers, dropout, bidirectional)


def cudnn_lstm(x: jax.Array, lengths: jax.Array, cells: Sequence[Params], *,
               kernel: Callable[..., Any] = rnn.lstm) -> jax.Array:
  """One (bi)directional LSTM layer through ``jax.experimental.rnn``'s flat-weight kernel.

  Args:
    x: [batch, steps, in] inputs (any float dtype; computed in float32).
    lengths: int[batch] valid steps of each sequence, 0 to steps.
    cells: Flax ``OptimizedLSTMCell`` parameters: [forward] or [forward, backward].
    kernel: ``rnn.lstm`` (cuDNN) or `reference_kernel` (same flat layout, pure JAX).

  Returns:
    float32[batch, steps, H * len(cells)], forward then backward features; 0 at
    padded steps and for sequences of length 0. Zero initial state, as Flax's.
  """
  batch, steps, input_size = x.shape
  hidden_size = cells[0]["hi"]["kernel"].shape[-1]
  directions = len(cells)
  if batch == 0 or steps == 0:
    return jnp.zeros((batch, steps, directions * hidden_size), jnp.float32)
  lengths = lengths.astype(jnp.int32)
  zeros = jnp.zeros((directions, batch, hidden_size), jnp.float32)  # [dirs, B, H]
  y, _, _ = kernel(x.astype(jnp.float32), zeros, zeros, pack_lstm_weights(cells),
                   jnp.maximum(lengths, 1),  # cuDNN fails on length 0 (jax-ml/jax#17966).
                   input_size, hidden_size, 1, 0.0, directions == 2)  # [B, T, dirs * H]
  valid = jnp.arange(steps, dtype=jnp.int32)[None, :] < lengths[:, None]  # [B, T]
  return jnp.where(valid[..., None], y, 0.0)


class _CellParams(nn.Module):
  """The parameters of ``nn.OptimizedLSTMCell(features)``, declared as it declares them."""

  features: int

  @nn.compact
  def __call__(self, input_features: int) -> dict[str, dict[str, jax.Array]]:
    inputs = jnp.zeros((1, input_features), jnp.float32)  # only its shape is read
    hidden = jnp.zeros((1, self.features), jnp.float32)
    recurrent_init = nn.initializers.orthogonal()
    params = {}
    for g in GATES:  # OptimizedLSTMCell's names, shapes and initializers.
      kernel, _ = DenseParams(self.features, use_bias=False, name=f"i{g}")(inputs)
      params[f"i{g}"] = {"kernel": kernel}
      kernel, bias = DenseParams(self.features, use_bias=True, kernel_init=recurrent_init,
                                 name=f"h{g}")(hidden)
      params[f"h{g}"] = {"kernel": kernel, "bias": bias}
    return params


class _RNNParams(nn.Module):
  """Stands where ``nn.RNN`` stands in the tree: the cell's parameters under ``cell``."""

  features: int

  @nn.compact
  def __call__(self, input_features: int) -> dict[str, dict[str, jax.Array]]:
    return _CellParams(self.features, name="cell")(input_features)


def _kernel(implementation: str) -> Callable[..., Any]:
  return reference_kernel if implementation == REFERENCE else rnn.lstm


def bidirectional_lstm(x: jax.Array, lengths: jax.Array, *, features: int, dtype: Any,
                       implementation: str) -> jax.Array:
  """The BiLSTM; call it in a compact method (parameters ``forward/cell``, ``backward/cell``).

  Args:
    x: [batch, steps, in] inputs.
    lengths: int[batch] valid steps; the backward direction starts at the last one.
    features: H, per direction.
    dtype: the computation dtype (of the scan; cuDNN computes in float32).
    implementation: `IMPLEMENTATIONS` or `REFERENCE`.

  Returns:
    [batch, steps, 2H] in ``dtype``, forward then backward; values at padded steps are
    unspecified (0 on the cuDNN path).
  """
  implementation = resolve(implementation)
  if implementation == "scan":
    def cell() -> nn.OptimizedLSTMCell:
      return nn.OptimizedLSTMCell(features, dtype=dtype, parent=None)
    bilstm = nn.Bidirectional(nn.RNN(cell(), name="forward"),
                              nn.RNN(cell(), name="backward"), name="bilstm")
    return bilstm(x, seq_lengths=lengths)
  cells = [_RNNParams(features, name=name)(x.shape[-1]) for name in ("forward", "backward")]
  return cudnn_lstm(x, lengths, cells, kernel=_kernel(implementation)).astype(dtype)


def lstm(x: jax.Array, lengths: jax.Array, *, features: int, dtype: Any, implementation: str,
         name: str = "lstm") -> jax.Array:
  """A unidirectional LSTM; call it in a compact method (parameters ``<name>/cell``).

  Returns:
    [batch, steps, H] in ``dtype``; values at padded steps are unspecified (0 on the
    cuDNN path). Arguments as `bidirectional_lstm`'s.
  """
  implementation = resolve(implementation)
  if implementation == "scan":
    return nn.RNN(nn.OptimizedLSTMCell(features, dtype=dtype, parent=None), name=name)(
        x, seq_lengths=lengths)
  cells = [_RNNParams(features, name=name)(x.shape[-1])]
  return cudnn_lstm(x, lengths, cells, kernel=_kernel(implementation)).astype(dtype)
