"""TF1's `BasicLSTMCell` in Flax, so that a TF1 model's LSTM weights map one to one (CGBM).

z = [x; h] W + b; (i, j, f, o) = split(z); c' = c sigmoid(f + forget_bias) + sigmoid(i)
tanh(j); h' = tanh(c') sigmoid(o): one kernel over [x; h], gate order i, j, f, o, forget
bias 1.0 by default, TF1's initializers; carries and gate arithmetic are float32 even
with a bfloat16 matrix product.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# TF1's defaults: tf.get_variable (LSTM kernels) and slim.fully_connected both use
# Glorot (Xavier) uniform weights and zero biases.
KERNEL_INIT = nn.initializers.xavier_uniform()

Carry = tuple[jax.Array, jax.Array]  # (c, h), each float32[batch, units]


class BasicLSTMCell(nn.RNNCellBase):
  """TF1's `BasicLSTMCell`: z = [x; h] W + b; (i, j, f, o) = split(z);
  c' = c sigmoid(f + forget_bias) + sigmoid(i) tanh(j); h' = tanh(c') sigmoid(o).

  Attributes:
    features: number of units.
    forget_bias: constant added to the forget gate's pre-activation.
    dtype: computation dtype of the matrix product (gates and carry are float32).
  """

  features: int
  forget_bias: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: Carry, inputs: jax.Array) -> tuple[Carry, jax.Array]:
    """One step.

    Args:
      carry: (c, h), each float32[batch, features].
      inputs: [batch, input_size].

    Returns:
      ((c', h'), h') with float32 arrays [batch, features].
    """
    c, h = carry
    x = jnp.concatenate([inputs.astype(jnp.float32), h], axis=-1)  # [B, in + H]
    kernel = self.param("kernel", KERNEL_INIT, (x.shape[-1], 4 * self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (4 * self.features,), jnp.float32)
    z = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype),
                preferred_element_type=jnp.float32) + bias  # [B, 4H]
    i, j, f, o = jnp.split(z.astype(jnp.float32), 4, axis=-1)
    new_c = c * jax.nn.sigmoid(f + self.forget_bias) + jax.nn.sigmoid(i) * jnp.tanh(j)
    new_h = jnp.tanh(new_c) * jax.nn.sigmoid(o)
    return (new_c, new_h), new_h

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Carry:
    """Zero (c, h) for inputs of shape [*batch, input_size]."""
    del rng
    shape = (*input_shape[:-1], self.features)
    return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)

  @property
  def num_feature_axes(self) -> int:
    return 1
