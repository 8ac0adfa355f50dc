"""Analytic ESCALATE-style cycles against the cycle-level simulator (random and real sparsity)."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hwmodel import cost
from hwmodel.hardware import hardware_from_dict
from hwmodel.pruned_resnet import decompose_and_prune, forward, load_image, load_params
from hwmodel.simulator import MIN_MODEL_CYCLES, SimHardware, in_analytic_domain, layer_description, simulate_decomposed, simulate_plain
from hwmodel.workload import slice_layer, workload_from_layers

TOLERANCE = 0.10


def _analytic(desc, hw, order):
    layer = slice_layer(workload_from_layers([desc]), 0)
    return float(cost.escalate_layer(layer, hw, stage_order=order).compute_cycles)


def _hardware(pes, lanes, multipliers, basis_macs):
    hw, _ = hardware_from_dict({"escalate": {"pes": pes, "lanes": lanes, "multipliers": multipliers, "fifo_depth": 4 * lanes, "basis_macs": basis_macs}})
    return hw, SimHardware.from_hardware(hw)


layer_strategy = st.fixed_dictionaries({
    "c_in": st.integers(4, 40), "c_out": st.integers(4, 16), "h": st.integers(4, 10),
    "kernel": st.sampled_from([1, 3]), "stride": st.sampled_from([1, 2]), "basis": st.sampled_from([0, 2, 3, 5]),
    "coef_density": st.floats(0.05, 1.0), "act_density": st.floats(0.1, 1.0),
    "pes": st.sampled_from([2, 4, 8]), "lanes": st.sampled_from([8, 16, 32]), "multipliers": st.sampled_from([1, 2, 4]),
    "basis_macs": st.sampled_from([8, 16, 32]), "order": st.sampled_from(["coefficient_first", "basis_first"]),
    "seed": st.integers(0, 2**31 - 1),
})


@given(spec=layer_strategy)
def test_analytic_within_tolerance_of_simulator_random_layers(spec):
    rng = np.random.default_rng(spec["seed"])
    k = spec["kernel"]
    d = spec["basis"] if k == 3 else 0
    pad = (k - 1) // 2
    assume(in_analytic_domain(c_in=spec["c_in"], c_out=spec["c_out"], size=spec["h"], kernel=k, stride=spec["stride"],
                              basis=d, order=spec["order"], lanes=spec["lanes"], pes=spec["pes"]))
    acts = np.maximum(rng.normal(size=(spec["c_in"], spec["h"], spec["h"])), 0.0) * (rng.random((spec["c_in"], spec["h"], spec["h"])) < spec["act_density"])
    hw, sim_hw = _hardware(spec["pes"], spec["lanes"], spec["multipliers"], spec["basis_macs"])
    if d:
        coef = rng.normal(size=(spec["c_out"], spec["c_in"], d)) * (rng.random((spec["c_out"], spec["c_in"], d)) < spec["coef_density"])
        basis = rng.normal(size=(d, k, k))
        order = spec["order"]
        sim = simulate_decomposed(coef, basis, acts, stride=spec["stride"], padding=pad, hw=sim_hw, order=order)
        desc = layer_description(coef, acts, stride=spec["stride"], padding=pad, basis=basis)
        # the simulator multiplies exactly the non-zero pairs (independent count)
        if order == "coefficient_first":
            live = np.any(coef != 0, axis=(1, 2))
            pairs = np.einsum("ocj,cyx->", (coef[live] != 0).astype(np.int64), (acts != 0).astype(np.int64))
            assert sim.matches == pairs
    else:
        weights = rng.normal(size=(spec["c_out"], spec["c_in"], k, k)) * (rng.random((spec["c_out"], spec["c_in"], k, k)) < spec["coef_density"])
        order = "coefficient_first"
        sim = simulate_plain(weights, acts, stride=spec["stride"], padding=pad, hw=sim_hw)
        desc = layer_description(weights, acts, stride=spec["stride"], padding=pad)
    analytic = _analytic(desc, hw, order)
    assume(analytic >= MIN_MODEL_CYCLES)
    assert abs(analytic - sim.cycles) <= TOLERANCE * sim.cycles, (analytic, sim)


@pytest.fixture(scope="module")
def resnet20_patterns(shared_root):
    params = load_params(shared_root / "models" / "cifar10-resnet" / "resnet20.npz")
    image = load_image(shared_root / "data" / "cifar10-jpeg" / "test" / "cat" / "0000.jpg")
    _, convs = forward(params, image)
    return {c.name: c for c in convs}


@pytest.mark.parametrize("name,crop", [("layer1.0.conv2", 10), ("layer2.1.conv1", 8), ("layer3.2.conv2", 8)])
@pytest.mark.parametrize("order", ["coefficient_first", "basis_first"])
def test_analytic_within_tolerance_on_pruned_resnet20(resnet20_patterns, name, crop, order):
    conv = resnet20_patterns[name]
    coef, basis = decompose_and_prune(conv.kernel, basis=5)
    acts = conv.activations[:, :crop, :crop]  # a corner of the real feature map, real zeros
    hw, sim_hw = _hardware(8, 16, 2, 32)
    sim = simulate_decomposed(coef, basis, acts, stride=conv.stride, padding=1, hw=sim_hw, order=order)
    analytic = _analytic(layer_description(coef, acts, stride=conv.stride, padding=1, basis=basis), hw, order)
    assert abs(analytic - sim.cycles) <= TOLERANCE * sim.cycles, (analytic, sim)


def test_numpy_forward_reproduces_golden_logits(shared_root):
    """The activations driving the simulator come from a correct forward pass."""
    params = load_params(shared_root / "models" / "cifar10-resnet" / "resnet20.npz")
    golden = np.load(shared_root / "models" / "cifar10-resnet" / "golden_logits.npz")
    for i in (0, 40):
        logits, _ = forward(params, load_image(shared_root / "data" / "cifar10-jpeg" / str(golden["paths"][i])))
        np.testing.assert_allclose(logits, golden["resnet20"][i], atol=1e-3)


def test_pruning_rule_and_decomposition():
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(6, 4, 3, 3))
    coef, basis = decompose_and_prune(kernel, basis=9, threshold=0.0)
    np.testing.assert_allclose(np.einsum("ocj,jhw->ochw", coef, basis), kernel, atol=1e-9)  # full basis: exact
    coef, _ = decompose_and_prune(kernel, basis=5, threshold=1.0)
    dense, _ = decompose_and_prune(kernel, basis=5, threshold=0.0)
    kept = coef != 0
    assert np.all(np.abs(dense[kept]) >= dense.std()) and np.all(np.abs(dense[~kept]) < dense.std())
