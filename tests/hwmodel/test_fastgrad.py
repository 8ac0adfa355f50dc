"""Fused hand-written gradient of the ESCALATE-style grid against autodiff and finite differences."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel import cost, fastgrad
from hwmodel.hardware import Options, load_hardware
from hwmodel.workload import model_layers, workload_from_layers

# fields the fused gradient treats as data (zero cotangent)
GEOMETRY = ("h_in", "w_in", "h_out", "w_out", "c_in", "c_out", "kernel", "stride", "padding", "basis", "live_out_fraction")
DESIGNS = 3


def _inputs(seed, edges=True):
    """ResNet-20 with random densities (every third layer at 0, every third at 1) and bit widths;
    DESIGNS design points with every hardware parameter scaled by a random factor in [0.5, 2]."""
    base, _ = load_hardware(None)
    wl = workload_from_layers(model_layers("resnet20"))
    n = wl.c_in.shape[0]
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    pc = jax.random.uniform(keys[0], (n,), jnp.float32)
    pa = jax.random.uniform(keys[1], (n,), jnp.float32)
    if edges:
        pc = jnp.where(jnp.arange(n) % 3 == 0, 0.0, jnp.where(jnp.arange(n) % 3 == 1, 1.0, pc))
        pa = jnp.where(jnp.arange(n) % 4 == 0, 1.0, jnp.where(jnp.arange(n) % 4 == 1, 0.0, pa))
    bits = lambda k: jnp.round(jax.random.uniform(k, (n,), jnp.float32, 2.0, 8.0))
    wl = wl._replace(coef_density=pc, act_density=pa, coef_bits=bits(keys[2]), basis_bits=bits(keys[3]))
    leaves, treedef = jax.tree.flatten(base)
    factors = jnp.exp2(jax.random.uniform(keys[4], (len(leaves), DESIGNS), jnp.float32, -1.0, 1.0))
    hw = jax.tree.unflatten(treedef, [leaf * f for leaf, f in zip(leaves, factors)])
    weights = jax.random.uniform(keys[5], (2, DESIGNS, n), jnp.float32, 0.5, 2.0)
    return wl, hw, weights


def _loss_autodiff(order):
    def loss(wl, hw, weights):
        c = cost.evaluate_grid("escalate", wl, hw, Options(stage_order=order), relaxed=True)
        return jnp.sum(weights[0] * c.cycles) + 1e-3 * jnp.sum(weights[1] * c.energy_pj)
    return loss


def _loss_fused(order):
    def loss(wl, hw, weights):
        cycles, energy = fastgrad.escalate_grid(wl, hw, order)
        return jnp.sum(weights[0] * cycles) + 1e-3 * jnp.sum(weights[1] * energy)
    return loss


_GRADS = {}


def _grads(order):
    """Jitted value-and-gradient of both implementations (compiled once per order)."""
    if order not in _GRADS:
        autodiff = jax.jit(jax.value_and_grad(_loss_autodiff(order), argnums=(0, 1)))
        def fused(wl, hw, weights):
            return jax.value_and_grad(_loss_fused(order), argnums=(0, 1))(wl, hw, weights)

        fused = jax.jit(chex.assert_max_traces(fused, n=1))
        _GRADS[order] = autodiff, fused
    return _GRADS[order]


def _assert_grads_match(reference, fused, rtol):
    (g_wl_ref, g_hw_ref), (g_wl, g_hw) = reference, fused
    for name in g_wl._fields:
        got = np.asarray(getattr(g_wl, name))
        if name in GEOMETRY:
            np.testing.assert_array_equal(got, 0.0)
        else:
            want = np.asarray(getattr(g_wl_ref, name))
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * (np.abs(want).max() + 1e-30), err_msg=name)
    for section in ("memory", "escalate", "energy"):
        for name, want in getattr(g_hw_ref, section)._asdict().items():
            want, got = np.asarray(want), np.asarray(getattr(getattr(g_hw, section), name))
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * (np.abs(want).max() + 1e-30), err_msg=f"{section}.{name}")


@pytest.mark.slow
def test_values_and_gradients_match_autodiff():
    order = "best"  # exercises both stage orders (per element) and the undecomposed layers
    chex.clear_trace_counter()
    wl, hw, weights = _inputs(0)
    autodiff, fused = _grads(order)
    value_ref, grads_ref = autodiff(wl, hw, weights)
    value, grads = fused(wl, hw, weights)
    assert float(value) == pytest.approx(float(value_ref), rel=1e-6)
    _assert_grads_match(grads_ref, grads, rtol=2e-4)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@settings(max_examples=4)
@given(seed=st.integers(1, 10_000), edges=st.booleans())
def test_gradients_match_autodiff_random(seed, edges):
    wl, hw, weights = _inputs(seed, edges)
    autodiff, fused = _grads("best")
    _assert_grads_match(autodiff(wl, hw, weights)[1], fused(wl, hw, weights)[1], rtol=2e-4)


def _assert_matches_autodiff(wl, hw, weights, order):
    autodiff, fused = _grads(order)
    value_ref, grads_ref = autodiff(wl, hw, weights)
    value, grads = fused(wl, hw, weights)
    assert float(value) == pytest.approx(float(value_ref), rel=1e-6)
    _assert_grads_match(grads_ref, grads, rtol=2e-4)


@pytest.mark.parametrize("order", ["coefficient_first", "basis_first"])
def test_fixed_stage_order_matches_autodiff(order):
    """One stage order for every layer (the backward pass without the per-element choice)."""
    chex.clear_trace_counter()  # a new order compiles its own (trace-counted) function
    _assert_matches_autodiff(*_inputs(6), order)


@pytest.mark.parametrize("plain", ["none", "first_and_last", "all"])
def test_undecomposed_layers_match_autodiff(plain):
    """Undecomposed layers' backward pass on their own columns: none of them (the classifier
    decomposed too); the first and the last (the gathered columns are padded with copies of
    column 0, itself undecomposed here); all 20 (more than PLAIN_COLUMNS: the whole grid, masked)."""
    wl, hw, weights = _inputs(7)
    n = wl.c_in.shape[0]
    if plain == "none":
        wl = wl._replace(basis=wl.basis.at[n - 1].set(2.0))
        assert bool(jnp.all(wl.basis > 0))
    elif plain == "first_and_last":
        assert float(wl.basis[n - 1]) == 0.0  # the classifier
        wl = wl._replace(basis=wl.basis.at[0].set(0.0))
    else:
        wl = wl._replace(basis=jnp.zeros_like(wl.basis))
        assert n > fastgrad.PLAIN_COLUMNS
    _assert_matches_autodiff(wl, hw, weights, "best")


@pytest.mark.parametrize("order", ["best", "coefficient_first"])
def test_directional_derivative_matches_finite_differences(order):
    """Central differences along parameters the relaxed model is smooth in (no straight-through
    ceil on their path): PEs, multipliers, DRAM bandwidth, activation and accumulator widths,
    activation densities. "coefficient_first" also covers the fixed-order path of the backward pass."""
    wl, hw, weights = _inputs(2, edges=False)
    wl = wl._replace(act_density=0.9 * wl.act_density)  # the steps stay inside [0, 1]
    loss = _loss_fused(order)
    _, (g_wl, g_hw) = _grads(order)[1](wl, hw, weights)

    @jax.jit
    def moved(t):
        e, m = hw.escalate, hw.memory
        h = hw._replace(escalate=e._replace(pes=e.pes * (1 + t), multipliers=e.multipliers * (1 - t)),
                        memory=m._replace(dram_gbps=m.dram_gbps * (1 + t), act_bits=m.act_bits * (1 - t), acc_bits=m.acc_bits * (1 + t)))
        return loss(wl._replace(act_density=wl.act_density * (1 - t)), h, weights)

    predicted = (jnp.sum(g_hw.escalate.pes * hw.escalate.pes) - jnp.sum(g_hw.escalate.multipliers * hw.escalate.multipliers)
                 + jnp.sum(g_hw.memory.dram_gbps * hw.memory.dram_gbps) - jnp.sum(g_hw.memory.act_bits * hw.memory.act_bits)
                 + jnp.sum(g_hw.memory.acc_bits * hw.memory.acc_bits) - jnp.sum(g_wl.act_density * wl.act_density))
    step = 1e-2
    finite = (moved(step) - moved(-step)) / (2 * step)
    assert float(predicted) == pytest.approx(float(finite), rel=2e-2)


def test_design_blocks_with_padding_match_autodiff():
    """Both passes over blocks of design points: 3 designs in blocks of 2 (the last block padded
    in the forward pass, overlapping the first in the backward pass) give autodiff's gradients
    and evaluate_grid's values."""
    wl, hw, weights = _inputs(5)
    autodiff, _ = _grads("best")

    def fused_blocked(wl, hw, weights):
        def loss(wl, hw, weights):
            cycles, energy = fastgrad.escalate_grid(wl, hw, "best", design_block=2)
            return jnp.sum(weights[0] * cycles) + 1e-3 * jnp.sum(weights[1] * energy)
        return jax.value_and_grad(loss, argnums=(0, 1))(wl, hw, weights)

    value_ref, grads_ref = autodiff(wl, hw, weights)
    value, grads = jax.jit(fused_blocked)(wl, hw, weights)
    assert float(value) == pytest.approx(float(value_ref), rel=1e-6)
    _assert_grads_match(grads_ref, grads, rtol=2e-4)
    # the forward pass runs over the same blocks: every value as evaluate_grid's
    reference = cost.evaluate_grid("escalate", wl, hw, Options(stage_order="best"), relaxed=True)
    cycles, energy = jax.jit(lambda wl, hw: fastgrad.escalate_grid(wl, hw, "best", design_block=2))(wl, hw)
    np.testing.assert_allclose(np.asarray(cycles), np.asarray(reference.cycles), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(energy), np.asarray(reference.energy_pj), rtol=1e-6)


def test_one_compilation_per_shape_and_clear_error():
    wl, hw, weights = _inputs(3)
    _, fused = _grads("best")  # wrapped in chex.assert_max_traces(n=1)
    fused(wl, hw, weights)
    fused(*_inputs(4))  # new values, same shapes: no retrace
    with pytest.raises(ValueError, match="stage_order"):
        fastgrad.escalate_grid(wl, hw, "fastest")
    with pytest.raises(ValueError, match="stack_hardware"):
        fastgrad.escalate_grid(wl, load_hardware(None)[0])  # one unstacked design point
    with pytest.raises(ValueError, match="workload.c_out"):
        fastgrad.escalate_grid(wl._replace(c_out=wl.c_out[:3]), hw)
    with pytest.raises(ValueError, match="design_block"):
        fastgrad.escalate_grid(wl, hw, design_block=0)
