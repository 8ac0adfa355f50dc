"""Pruning rules, the gradual schedule, the masked optimizer and basis/coefficient alternation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxsparse.penni.prune import (
    global_magnitude_masks,
    magnitude_mask,
    masked,
    penni_mask,
    polynomial_sparsity,
)
from jaxsparse.penni.train import alternating, coefficient_l1, param_groups


@given(n=st.integers(2, 60), s=st.floats(0.0, 2.0), seed=st.integers(0, 1000))
def test_penni_rule_matches_numpy(n, s, seed):
    c = np.asarray(jax.random.normal(jax.random.key(seed), (n,)))
    expected = np.abs(c) >= s * np.std(c)
    np.testing.assert_array_equal(penni_mask(jnp.asarray(c), s), expected)


@given(n=st.integers(1, 50), sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_magnitude_mask_prunes_exactly_the_smallest(n, sparsity, seed):
    x = jax.random.normal(jax.random.key(seed), (n,))
    keep = np.asarray(magnitude_mask(x, sparsity))
    pruned = int(np.floor(np.float32(sparsity) * n))
    assert keep.sum() == n - pruned
    if 0 < pruned < n:
        assert np.abs(np.asarray(x))[~keep].max() <= np.abs(np.asarray(x))[keep].min()


def test_global_masks_use_one_threshold():
    tensors = {"a": jnp.asarray([0.1, 5.0, 0.2]), "b": jnp.asarray([3.0, 0.05, 4.0, 0.3])}
    masks = global_magnitude_masks(tensors, 4 / 7)
    assert masks["a"].tolist() == [False, True, False]
    assert masks["b"].tolist() == [True, False, True, False]


def test_polynomial_schedule_is_monotone_and_reaches_target():
    schedule = polynomial_sparsity(0.9, begin_step=10, end_step=110, initial=0.1)
    values = [float(schedule(t)) for t in range(0, 130, 5)]
    assert values[0] == pytest.approx(0.1) and values[-1] == pytest.approx(0.9)
    assert all(b >= a - 1e-7 for a, b in zip(values, values[1:]))


@given(seed=st.integers(0, 1000), steps=st.integers(1, 8), density=st.floats(0.0, 1.0))
def test_finetuning_never_revives_a_pruned_coefficient(seed, steps, density):
    keys = jax.random.split(jax.random.key(seed), 3)
    params = {"coefficients": jax.random.normal(keys[0], (4, 6, 3)), "scale": jnp.ones(6)}
    keep = {"coefficients": jax.random.bernoulli(keys[1], density, (4, 6, 3)), "scale": jnp.ones(6, jnp.bool_)}
    inner = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9, nesterov=True))
    tx = masked(inner, keep)
    state = tx.init(params)
    for step in range(steps):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(keys[2], step), p.shape), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        pruned = np.asarray(params["coefficients"])[~np.asarray(keep["coefficients"])]
        assert np.all(pruned == 0.0)
    # kept entries do train
    if density > 0.5:
        assert np.any(np.asarray(params["coefficients"])[np.asarray(keep["coefficients"])] != 0)


def test_gradual_pruning_reaches_target_and_masks_only_shrink():
    params = {"coefficients": jax.random.normal(jax.random.key(0), (10, 10)), "bias": jnp.ones(3)}
    prunable = {"coefficients": True, "bias": False}
    schedule = polynomial_sparsity(0.8, begin_step=0, end_step=6)
    tx = masked(optax.sgd(0.01), prunable=prunable, sparsity_schedule=schedule, update_every=2)
    state = tx.init(params)
    previous = np.ones((10, 10), bool)
    for step in range(10):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        params = optax.apply_updates(params, updates)
        current = np.asarray(state.masks["coefficients"])
        assert not np.any(current & ~previous)
        previous = current
    assert np.mean(np.asarray(params["coefficients"]) == 0) == pytest.approx(0.8, abs=0.011)
    assert np.all(np.asarray(state.masks["bias"]))


def test_alternation_freezes_the_resting_group():
    params = {"conv": {"basis": jnp.ones((2, 3, 3)), "coefficients": jnp.ones((2, 2, 2))}, "bn": {"scale": jnp.ones(2)}}
    groups = param_groups(params)
    assert groups["conv"]["basis"] == "basis" and groups["bn"]["scale"] == "shared"
    tx = alternating(optax.sgd(0.1, momentum=0.9), groups, period_steps=2, first_group="coefficients")
    state = tx.init(params)
    for step in range(6):
        before = params
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        params = optax.apply_updates(params, updates)
        coefficient_phase = (step // 2) % 2 == 0
        moved_basis = bool(jnp.any(params["conv"]["basis"] != before["conv"]["basis"]))
        moved_coef = bool(jnp.any(params["conv"]["coefficients"] != before["conv"]["coefficients"]))
        assert moved_coef == coefficient_phase and moved_basis == (not coefficient_phase)
        assert bool(jnp.any(params["bn"]["scale"] != before["bn"]["scale"]))
    assert float(coefficient_l1(params)) == pytest.approx(float(jnp.sum(jnp.abs(params["conv"]["coefficients"]))))
