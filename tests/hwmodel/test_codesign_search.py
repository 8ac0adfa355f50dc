"""Accelerator search: area model, relaxation, legality of rounded designs, grid and gradient search."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel.codesign.area import AREA_TABLE, escalate_area_mm2
from hwmodel.codesign.costfn import deployment_layers, density_workload, make_cost_fn
from hwmodel.codesign.search import GradientConfig, gradient_search, grid_search, make_problem, network_metric, round_to_legal
from hwmodel.codesign.space import Dimension, SearchSpace, default_space, legal_hardware, relaxed_values
from hwmodel.cost import evaluate
from hwmodel.hardware import hardware_from_dict, load_hardware
from hwmodel.workload import model_layers, workload_from_layers

HW, OPTIONS = load_hardware(None)
SMALL_LAYERS = model_layers("resnet20")[:3] + model_layers("resnet20")[-1:]
SMALL_WORKLOAD = workload_from_layers(SMALL_LAYERS)


def test_area_of_default_design_matches_hand_count():
    t = AREA_TABLE
    p, m, n, fifo, b, pe_kib, glb_kib, act, acc = 64, 2, 32, 64, 128, 2.0, 256.0, 8, 16
    operand = t.weight_bits + act
    um2 = (
        p * m * (t.mult_8x8_um2 * t.weight_bits * act / 64 + t.add_32_um2 * acc / 32)
        + p * math.log2(n) * n / 2 * operand * t.switch_bit_um2
        + p * fifo * operand * t.register_bit_um2
        + p * pe_kib * 8192 * t.sram_bit_um2
        + b * (t.mult_8x8_um2 * t.basis_bits * acc / 64 + t.add_32_um2 * acc / 32)
        + glb_kib * 8192 * t.sram_bit_um2
    )
    np.testing.assert_allclose(float(escalate_area_mm2(HW)), um2 / 1e6, rtol=1e-5)


def test_relaxed_values_equal_legal_values_at_integer_positions_and_grow_between():
    space = default_space()
    for k in range(max(space.sizes)):
        t = jnp.asarray([min(k, n - 1) for n in space.sizes], jnp.float32)
        expected = [d.values[min(k, len(d.values) - 1)] for d in space.dims]
        np.testing.assert_allclose(np.asarray(relaxed_values(space, t)), expected, rtol=1e-5)
    ts = jnp.linspace(0.0, 5.0, 41, dtype=jnp.float32)
    lanes = np.asarray(jax.vmap(lambda x: relaxed_values(space, jnp.full((6,), x, jnp.float32)))(ts))[:, 1]
    assert np.all(np.diff(lanes) > 0)


@given(
    t=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
    budget_scale=st.floats(0.15, 3.0),
)
@settings(max_examples=12)
def test_relaxed_then_rounded_designs_are_legal_and_within_budget(t, budget_scale):
    space = default_space()
    problem = make_problem(SMALL_WORKLOAD, HW, OPTIONS, budget_mm2=budget_scale * float(escalate_area_mm2(HW)))
    positions = np.asarray(t) * (np.asarray(space.sizes) - 1)
    rows = round_to_legal(problem, positions)
    assert len(rows) >= 1
    for row in rows:
        hw = legal_hardware(space, HW, row)  # validated by hardware_from_dict
        assert float(escalate_area_mm2(hw)) <= problem.budget_mm2
        assert float(hw.escalate.lanes) in space.dims[1].values


def test_grid_search_finds_the_brute_force_optimum():
    space = SearchSpace((Dimension("escalate", "pes", (16.0, 32.0, 64.0)), Dimension("escalate", "multipliers", (1.0, 2.0, 4.0))))
    budget = 0.8 * float(escalate_area_mm2(HW))
    problem = make_problem(SMALL_WORKLOAD, HW, OPTIONS, space=space, budget_mm2=budget)
    best, best_values = math.inf, None
    for pes in space.dims[0].values:
        for mult in space.dims[1].values:
            hw, _ = hardware_from_dict({"escalate": {"pes": pes, "multipliers": mult}})
            if float(escalate_area_mm2(hw)) > budget:
                continue
            cost = evaluate("escalate", SMALL_WORKLOAD, hw, OPTIONS)
            edp = float(cost.cycles.sum()) / 1e9 * float(cost.energy_pj.sum()) * 1e-12
            if edp < best:
                best, best_values = edp, {"escalate.pes": pes, "escalate.multipliers": mult}
    result = grid_search(problem)
    assert result.values == best_values
    np.testing.assert_allclose(result.metric_value, best, rtol=1e-5)
    assert result.evaluations < space.size  # the budget excluded some points


def test_gradient_search_is_legal_within_budget_deterministic_and_matches_grid():
    problem = make_problem(SMALL_WORKLOAD, HW, OPTIONS, budget_mm2=0.7 * float(escalate_area_mm2(HW)))
    config = GradientConfig(starts=3, steps=40)
    first = gradient_search(problem, config, seed=3)
    again = gradient_search(problem, config, seed=3)
    assert first.values == again.values and first.metric_value == again.metric_value and first.evaluations == again.evaluations
    legal = legal_hardware(problem.space, HW, first.indices)
    assert float(escalate_area_mm2(legal)) <= problem.budget_mm2
    np.testing.assert_allclose(float(network_metric(SMALL_WORKLOAD, legal, OPTIONS, "edp")), first.metric_value, rtol=1e-5)
    grid = grid_search(problem)
    assert first.metric_value <= 1.05 * grid.metric_value
    assert first.evaluations * 10 <= grid.evaluations


_LAYERS = model_layers("resnet20")
_BASE = workload_from_layers(deployment_layers(_LAYERS))


@jax.jit
def _latencies(d_low, d_high, indices):
    from hwmodel.codesign.space import hardware_at

    hw = hardware_at(default_space(), HW, indices)
    out = []
    for relaxed in (False, True):
        out.append(jnp.stack([network_metric(density_workload(_BASE, d), hw, OPTIONS, "latency", relaxed=relaxed) for d in (d_low, d_high)]))
    return jnp.stack(out)


@given(
    low=st.lists(st.floats(0.0, 1.0), min_size=20, max_size=20),
    grow=st.lists(st.floats(0.0, 1.0), min_size=20, max_size=20),
    design=st.tuples(*[st.integers(0, n - 1) for n in default_space().sizes]),
)
def test_more_density_never_lowers_modelled_latency(low, grow, design):
    d_low = np.asarray(low, np.float32)
    d_high = np.minimum(d_low + np.asarray(grow, np.float32) * (1.0 - d_low), 1.0).astype(np.float32)
    latencies = np.asarray(_latencies(jnp.asarray(d_low), jnp.asarray(d_high), jnp.asarray(design, jnp.int32)))
    exact, relaxed = latencies
    assert exact[1] >= exact[0] * (1 - 1e-6)
    assert relaxed[1] >= relaxed[0] * (1 - 1e-6)


def test_cost_fn_rejects_wrong_number_of_densities():
    cost_fn = make_cost_fn(_LAYERS, HW, OPTIONS)
    with pytest.raises(ValueError, match=r"coef_density: expected shape \(20,\)"):
        cost_fn(jnp.ones((3,), jnp.float32))
