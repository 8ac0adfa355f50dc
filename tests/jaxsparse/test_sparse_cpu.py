"""The sparse-coefficient CPU kernel equals the decomposed layer it was built from, in every layout and epilogue."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsparse.penni import sparse_cpu
from jaxsparse.penni.layers import DecomposedConv, apply_decomposed
from jaxsparse.penni.sparse_cpu import SparseCoefficientConv, pack_coefficients, supports


def _sparse_coefficients(rng, shape, density):
    values = rng.standard_normal(shape).astype(np.float32)
    return values * (rng.random(shape) < density)


@st.composite
def conv_cases(draw):
    stride = draw(st.sampled_from([1, 2]))
    pad = draw(st.sampled_from([0, 1]))
    height = draw(st.integers(3, 11))
    width = draw(st.integers(3, 11))
    if stride == 2 and (width + 2 * pad) % 2:
        width += 1  # the stride-2 kernel needs an even padded width
    return dict(
        n=draw(st.integers(1, 5)), height=height, width=width, cin=draw(st.integers(1, 9)), cout=draw(st.integers(1, 9)),
        d=draw(st.integers(1, 9)), density=draw(st.sampled_from([0.0, 0.2, 0.6, 1.0])), pad=pad, stride=stride,
        layout_in=draw(st.sampled_from(["NHWC", "NCHW"])), layout_out=draw(st.sampled_from(["NHWC", "NCHW"])),
        tile_rows=draw(st.sampled_from([None, 1, 2, 5])), images=draw(st.sampled_from([None, 1, 3])),
        relu=draw(st.booleans()), residual=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


def _to(layout, x):
    return jnp.transpose(x, (0, 3, 1, 2)) if layout == "NCHW" else x


@settings(max_examples=25)
@given(case=conv_cases())
def test_kernel_equals_training_form(case):
    """conv + bias (+ residual channel map, subsampled) (+ ReLU), against an independent XLA computation."""
    rng = np.random.default_rng(case["seed"])
    cin, cout, d, stride, pad = case["cin"], case["cout"], case["d"], case["stride"], case["pad"]
    basis = rng.standard_normal((d, 3, 3)).astype(np.float32)
    coefficients = _sparse_coefficients(rng, (cin, cout, d), case["density"])
    layer = DecomposedConv(jnp.asarray(basis), jnp.asarray(coefficients), strides=(stride, stride), padding=((pad, pad), (pad, pad)))
    x = jnp.asarray(rng.standard_normal((case["n"], case["height"], case["width"], cin)).astype(np.float32))
    bias = rng.standard_normal(cout).astype(np.float32)
    expected = apply_decomposed(x, layer.basis[...], layer.coefficients[...], (stride, stride), layer.padding, "train")
    expected = np.asarray(expected) + bias
    kernel = SparseCoefficientConv(layer, tile_rows=case["tile_rows"], images=case["images"])
    kernel.set_layouts(case["layout_in"], case["layout_out"])
    kernel.set_epilogue(jnp.asarray(bias), relu=case["relu"])
    options = {}
    if case["residual"]:
        channels = int(rng.integers(1, 10))
        residual = rng.standard_normal((case["n"], case["height"], case["width"], channels)).astype(np.float32)
        source = tuple(int(s) for s in rng.integers(-1, channels, cout))
        picked = residual[:, ::stride, ::stride][:, : expected.shape[1], : expected.shape[2]]
        expected = expected + np.stack([picked[..., s] if s >= 0 else np.zeros(picked.shape[:3], np.float32) for s in source], -1)
        options = dict(residual=_to(case["layout_in"], jnp.asarray(residual)), residual_source=source, residual_stride=stride)
    if case["relu"]:
        expected = np.maximum(expected, 0.0)
    out = jax.jit(lambda v: kernel(v, **options))(_to(case["layout_in"], x))
    out = np.asarray(jnp.transpose(out, (0, 2, 3, 1)) if case["layout_out"] == "NCHW" else out)
    assert out.shape == expected.shape
    assert np.max(np.abs(out - expected)) <= 1e-4 * max(float(np.max(np.abs(expected))), 1.0)


@settings(max_examples=20)
@given(cin=st.integers(1, 8), cout=st.integers(1, 8), d=st.integers(1, 6), density=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 99))
def test_packing_holds_exactly_the_non_zeros(cin, cout, d, density, seed):
    coefficients = _sparse_coefficients(np.random.default_rng(seed), (cin, cout, d), density)
    packed = pack_coefficients(coefficients)
    rebuilt = np.zeros_like(coefficients)
    for o in range(cout):
        for k in range(packed.row_start[o], packed.row_start[o + 1]):
            p = packed.pair_index[k]
            rebuilt[packed.pair_channel[p], o, packed.pair_basis[p]] = packed.values[k]
    np.testing.assert_array_equal(rebuilt, coefficients)
    assert packed.values.size == np.count_nonzero(coefficients)
    live = np.any(coefficients != 0, axis=1)  # every live pair once, grouped by channel
    assert sorted(zip(packed.pair_channel.tolist(), packed.pair_basis.tolist())) == list(zip(*np.nonzero(live)))
    starts = packed.channel_start
    assert all(len(set(packed.pair_channel[starts[g]:starts[g + 1]].tolist())) == 1 for g in range(len(starts) - 1))


def test_bias_and_scale_fold_like_a_batchnorm():
    rng = np.random.default_rng(0)
    layer = DecomposedConv(jnp.asarray(rng.standard_normal((3, 3, 3)), jnp.float32),
                           jnp.asarray(_sparse_coefficients(rng, (4, 5, 3), 0.5)))
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
    scale, bias = rng.uniform(0.5, 2.0, 5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    kernel = SparseCoefficientConv(layer)
    kernel.set_epilogue(jnp.asarray(bias))
    kernel.scale_outputs(scale)
    expected = (np.asarray(layer(x)) + bias) * scale
    np.testing.assert_allclose(np.asarray(kernel(x)), expected, rtol=1e-5, atol=1e-5)


def test_clear_errors():
    rng = np.random.default_rng(0)
    basis, coefficients = jnp.asarray(rng.standard_normal((2, 3, 3)), jnp.float32), jnp.ones((4, 3, 2))
    layer = DecomposedConv(basis, coefficients)
    kernel = SparseCoefficientConv(layer)
    with pytest.raises(ValueError, match="x: expected float32"):
        kernel(jnp.ones((1, 6, 6, 5)))
    with pytest.raises(ValueError, match="residual: expected"):
        kernel(jnp.ones((1, 6, 6, 4)), jnp.ones((1, 3, 3, 3)))
    with pytest.raises(ValueError, match="residual_source"):
        kernel(jnp.ones((1, 6, 6, 4)), jnp.ones((1, 6, 6, 2)), residual_source=(0, 1, 2))
    with pytest.raises(ValueError, match="layout_in"):
        kernel.set_layouts("NWHC")
    with pytest.raises(ValueError, match="bias"):
        kernel.set_epilogue(jnp.ones(4))
    with pytest.raises(ValueError, match="tile_rows"):
        SparseCoefficientConv(layer, tile_rows=0)
    stride3 = DecomposedConv(basis, coefficients, strides=(3, 3))
    assert not supports(stride3)[0]
    with pytest.raises(ValueError, match="strides"):
        SparseCoefficientConv(stride3)
    with pytest.raises(ValueError, match="3x3"):
        SparseCoefficientConv(DecomposedConv(jnp.ones((2, 5, 5)), coefficients, padding=((2, 2), (2, 2))))
    with pytest.raises(ValueError, match="both sides"):
        SparseCoefficientConv(DecomposedConv(basis, coefficients, padding=((0, 1), (1, 1))))
    strided = SparseCoefficientConv(DecomposedConv(basis, coefficients, strides=(2, 2)))
    with pytest.raises(ValueError, match="even padded width"):
        strided(jnp.ones((1, 7, 7, 4)))


def test_unavailable_kernel_is_refused_with_the_reason(monkeypatch):
    from runkit import numba_ffi

    monkeypatch.setattr(numba_ffi, "NUMBA_MISSING", True)
    ok, reason = sparse_cpu.available()
    assert not ok and "numba" in reason
    with pytest.raises(ValueError, match="numba"):
        SparseCoefficientConv(DecomposedConv(jnp.ones((2, 3, 3)), jnp.ones((4, 3, 2))))
