"""Quantized tensors lie on their grids; zero stays zero; the straight-through gradient is the identity."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from jaxsparse.penni.quantize import dequantize, fake_quant, on_grid, quantize


@given(
    bits=st.integers(2, 8),
    shape=st.sampled_from([(1, 1, 1), (3, 4, 2), (2, 5, 3)]),
    per_channel=st.booleans(),
    zeros=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_quantized_values_lie_on_the_grid(bits, shape, per_channel, zeros, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, shape) * jax.random.bernoulli(k2, 1.0 - zeros, shape).astype(jnp.float32)
    axis = 1 if per_channel else None
    q = quantize(x, bits, axis)
    qmax = 2 ** (bits - 1) - 1
    values = np.asarray(q.values)
    assert np.all(np.abs(values) <= qmax)
    rebuilt = dequantize(q)
    assert bool(on_grid(rebuilt, q))
    # round to nearest: error at most half a step
    assert bool(jnp.all(jnp.abs(rebuilt - x) <= 0.5 * q.scale + 1e-6))
    # zero (a pruned coefficient) stays exactly zero
    assert np.all(values[np.asarray(x) == 0] == 0)
    fq = fake_quant(x, bits, axis)
    np.testing.assert_allclose(fq, rebuilt, rtol=1e-6, atol=1e-7)
    assert bool(on_grid(fq, q))


def test_straight_through_gradient():
    x = jnp.asarray([0.31, -0.77, 0.0, 1.2])
    grad = jax.grad(lambda v: jnp.sum(fake_quant(v, 3) * jnp.arange(4.0)))(x)
    np.testing.assert_array_equal(grad, jnp.arange(4.0))


def test_bits_zero_is_float():
    x = jnp.asarray([0.123456])
    assert fake_quant(x, 0) is x
