"""The benchmarks' FLOP count (`benchmarks/flops.py`) against counts done by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import flops


def _count(fn, *shapes):
  args = [jnp.ones(s, jnp.float32) for s in shapes]
  return flops.model_flops(jax.make_jaxpr(fn)(*args))


def test_a_matrix_product_counts_two_m_n_k():
  total, notes = _count(lambda a, b: a @ b, (4, 8), (8, 16))
  assert total == 2 * 4 * 16 * 8
  assert notes == []


def test_a_batched_product_counts_every_batch():
  total, _ = _count(lambda a, b: jnp.einsum("dbk,dkn->dbn", a, b), (2, 4, 8), (2, 8, 16))
  assert total == 2 * (2 * 4 * 16 * 8)


def test_a_convolution_counts_its_output_times_its_kernel():
  # [batch 2, length 10, 3 channels] -> 5 channels, kernel 3, dilation 2, 'SAME'.
  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1,), "SAME", rhs_dilation=(2,),
                                        dimension_numbers=("NWC", "WIO", "NWC"))
  total, _ = _count(conv, (2, 10, 3), (3, 3, 5))
  assert total == 2 * (2 * 10 * 5) * (3 * 3)


def test_a_scan_counts_its_body_times_its_length():
  def recurrence(h, w):
    return jax.lax.scan(lambda c, _: (c @ w, None), h, None, length=7)[0]
  total, _ = _count(recurrence, (4, 8), (8, 8))
  assert total == 7 * (2 * 4 * 8 * 8)


def test_a_gradient_counts_the_backward_products_too():
  total, _ = _count(jax.grad(lambda a, b: jnp.sum(a @ b)), (4, 8), (8, 16))
  assert total == 2 * (2 * 4 * 16 * 8)  # forward, and the product giving d/da


def test_a_cond_counts_its_costliest_branch_and_says_so():
  def branches(p, a):
    return jax.lax.cond(p[0] > 0, lambda x: x @ x @ x, lambda x: x @ x, a)
  total, notes = _count(branches, (1,), (4, 4))
  assert total == 2 * (2 * 4 * 4 * 4)
  assert notes == ["cond: costliest branch"]


def test_the_matmul_rate_is_a_positive_rate():
  rate = flops.matmul_gflops(size=64, repeats=2)
  assert np.isfinite(rate) and rate > 0

