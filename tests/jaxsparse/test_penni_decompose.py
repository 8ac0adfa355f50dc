"""Decomposition: exact at d = k*k, error monotone in d, batched equals per-layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxsparse.penni.decompose import decompose_kernel, decompose_kernels, kernel_samples, reconstruct_kernel

# A small pool of (k, Cin, Cout) keeps compilations few; values vary freely.
shapes = st.sampled_from([(1, 2, 3), (3, 1, 4), (3, 3, 2), (3, 5, 6), (5, 2, 2)])
# every d of a shape is one compilation: the sweep over d stays on 1x1 and 3x3 kernels
small_shapes = st.sampled_from([(1, 2, 3), (3, 1, 4), (3, 3, 2), (3, 5, 6)])


def _kernel(seed, k, cin, cout):
    return jax.random.normal(jax.random.key(seed), (k, k, cin, cout), jnp.float32)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


@given(shape=shapes, centered=st.booleans(), seed=st.integers(0, 1000))
def test_full_basis_reconstructs_exactly(shape, centered, seed):
    k, cin, cout = shape
    kernel = _kernel(seed, k, cin, cout)
    dec = decompose_kernel(kernel, k * k, centered=centered)
    assert _rel(reconstruct_kernel(dec.basis, dec.coefficients), kernel) <= 1e-5
    # the basis is orthonormal
    flat = jnp.reshape(dec.basis, (k * k, k * k))
    np.testing.assert_allclose(flat @ flat.T, np.eye(k * k), atol=1e-5)


@given(shape=small_shapes, centered=st.booleans(), seed=st.integers(0, 1000))
def test_error_never_increases_with_d(shape, centered, seed):
    k, cin, cout = shape
    kernel = _kernel(seed, k, cin, cout)
    errors = []
    for d in range(1, k * k + 1):
        dec = decompose_kernel(kernel, d, centered=centered)
        errors.append(_rel(reconstruct_kernel(dec.basis, dec.coefficients), kernel))
        assert abs(errors[-1] - float(dec.relative_error)) <= 1e-5
        assert -1e-6 <= float(dec.explained) <= 1 + 1e-6
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:]))


def test_svd_basis_is_the_best_rank_d_fit():
    """Uncentred: the error equals the Eckart-Young bound from numpy's singular values."""
    kernel = _kernel(7, 3, 8, 16)
    samples = np.asarray(kernel_samples(kernel), np.float64)
    singular = np.linalg.svd(samples, compute_uv=False)
    for d in (1, 3, 5):
        dec = decompose_kernel(kernel, d)
        bound = np.sqrt(np.sum(singular[d:] ** 2) / np.sum(singular**2))
        assert float(dec.relative_error) == pytest.approx(bound, rel=1e-4, abs=1e-6)


def test_batched_call_equals_per_layer_calls():
    kernels = {"a": _kernel(1, 3, 4, 8), "b": _kernel(2, 3, 4, 8), "c": _kernel(3, 3, 8, 4)}
    batched = decompose_kernels(kernels, 4)
    for name, kernel in kernels.items():
        single = decompose_kernel(kernel, 4)
        np.testing.assert_allclose(batched[name].coefficients, single.coefficients, atol=1e-5)
        np.testing.assert_allclose(batched[name].basis, single.basis, atol=1e-5)


def test_bad_num_basis_is_named():
    with pytest.raises(ValueError, match="num_basis"):
        decompose_kernel(_kernel(0, 3, 2, 2), 10)
