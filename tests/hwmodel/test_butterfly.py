"""Inverse butterfly / butterfly networks: exhaustive for N <= 16, property tests up to N = 256."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwmodel.butterfly import compact, compaction_routing, expand, match_pairs


_routing = jax.jit(compaction_routing)
_compact = jax.jit(compact)
_expand = jax.jit(expand)
# vmap over the batch: the network itself is written for one vector of lanes
_match = jax.jit(jax.vmap(lambda wi, ai, m: match_pairs(wi, ai, wi != 0, ai != 0, m), in_axes=(0, 0, None)), static_argnums=2)


def _all_bitmaps(lanes):
    codes = jnp.arange(2**lanes, dtype=jnp.int32)
    return ((codes[:, None] >> jnp.arange(lanes, dtype=jnp.int32)[None, :]) & 1).astype(bool)


def _reference_gather(values, bitmap):
    """Independent reference: np.nonzero gather per row, zero-filled."""
    out = np.zeros_like(values)
    for i in range(values.shape[0]):
        idx = np.nonzero(bitmap[i])[0]
        out[i, : len(idx)] = values[i, idx]
    return out


@pytest.mark.parametrize("lanes", [2, 4, 8, 16])
def test_exhaustive_compaction_no_conflict_and_matches_nonzero_gather(lanes):
    bitmaps = _all_bitmaps(lanes)
    routing = _routing(bitmaps)
    assert int(routing.conflicts.max()) == 0
    values = jnp.broadcast_to(jnp.arange(1, lanes + 1, dtype=jnp.int32), bitmaps.shape)
    packed, count = _compact(values, bitmaps)
    np.testing.assert_array_equal(np.asarray(count), np.asarray(bitmaps).sum(1))
    # vectorised reference: the k-th valid lane of each row by stable argsort of ~bitmap
    order = np.argsort(~np.asarray(bitmaps), axis=1, kind="stable")
    expected = np.where(np.arange(lanes)[None, :] < np.asarray(count)[:, None], order + 1, 0)
    np.testing.assert_array_equal(np.asarray(packed), expected)
    if lanes <= 8:  # the literal per-row np.nonzero gather, on every bitmap of the small sizes
        np.testing.assert_array_equal(np.asarray(packed), _reference_gather(np.asarray(values), np.asarray(bitmaps)))


@pytest.mark.parametrize("lanes", [4, 16])
def test_exhaustive_expand_inverts_compact(lanes):
    bitmaps = _all_bitmaps(lanes)
    values = jnp.broadcast_to(jnp.arange(1, lanes + 1, dtype=jnp.int32), bitmaps.shape)
    packed, _ = _compact(values, bitmaps)
    restored = _expand(packed, bitmaps)
    np.testing.assert_array_equal(np.asarray(restored), np.where(np.asarray(bitmaps), np.asarray(values), 0))


@given(log_lanes=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), density=st.floats(0.0, 1.0))
def test_property_compaction_up_to_256_lanes(log_lanes, seed, density):
    lanes = 2**log_lanes
    rng = np.random.default_rng(seed)
    bitmap = rng.random((3, lanes)) < density
    values = rng.normal(size=(3, lanes)).astype(np.float32)
    routing = _routing(jnp.asarray(bitmap))
    assert int(routing.conflicts.max()) == 0
    packed, count = _compact(jnp.asarray(values), jnp.asarray(bitmap))
    np.testing.assert_array_equal(np.asarray(packed), _reference_gather(values, bitmap))
    np.testing.assert_array_equal(np.asarray(_expand(packed, jnp.asarray(bitmap))), np.where(bitmap, values, 0))


@pytest.mark.slow
@given(log_lanes=st.integers(1, 8), multipliers=st.integers(1, 40), seed=st.integers(0, 2**31 - 1), dw=st.floats(0, 1), da=st.floats(0, 1))
def test_property_two_sided_matching(log_lanes, multipliers, seed, dw, da):
    lanes = 2**log_lanes
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(2, lanes)) * (rng.random((2, lanes)) < dw)).astype(np.float32)
    a = (np.abs(rng.normal(size=(2, lanes))) * (rng.random((2, lanes)) < da)).astype(np.float32)
    m = _match(jnp.asarray(w), jnp.asarray(a), multipliers)
    both = (w != 0) & (a != 0)
    np.testing.assert_array_equal(np.asarray(m.matches), both.sum(1))
    np.testing.assert_array_equal(np.asarray(m.passes), -(-both.sum(1) // multipliers))
    for i in range(2):
        idx = np.nonzero(both[i])[0]
        valid = np.asarray(m.valid[i]).reshape(-1)
        np.testing.assert_array_equal(np.asarray(m.coefficients[i]).reshape(-1)[valid], w[i, idx])
        np.testing.assert_array_equal(np.asarray(m.activations[i]).reshape(-1)[valid], a[i, idx])
        # passes actually used = rows of the pass grid holding a valid pair
        assert int(np.asarray(m.valid[i]).any(axis=1).sum()) == int(m.passes[i])
    np.testing.assert_allclose(np.asarray(jnp.where(m.valid, m.coefficients * m.activations, 0.0).sum((1, 2))), (w * a).sum(1), rtol=1e-5, atol=1e-5)


def test_bad_lane_count_is_a_clear_error():
    with pytest.raises(ValueError, match="lanes: expected a power of two"):
        compaction_routing(jnp.ones((3, 6), bool))
