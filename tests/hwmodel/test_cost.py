"""Cost model: SCALE-Sim closed form against a per-fold loop, gradients, invariants, vmap/jit."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwmodel import cost
from hwmodel.hardware import Options, hardware_from_dict, load_hardware, stack_hardware
from hwmodel.workload import model_layers, slice_layer, workload_from_layers


def _scalesim_fold_loop(m, k, n, rows, cols, dataflow):
    """Straightforward re-derivation from SCALE-Sim's compute modules: build each fold's
    ofmap demand matrix length (prefix of idle rows, the fold's rows, the systolic skew) and
    add them up; SCALE-Sim reports the index of the last cycle."""
    sr, sc, t = {"os": (m, n, k), "ws": (k, n, m), "is": (k, m, n)}[dataflow]
    total = 0
    for _ in range(math.ceil(sc / cols)):
        for _ in range(math.ceil(sr / rows)):
            if dataflow == "os":
                prefix, body = t - 1, rows          # outputs drain after T-1 idle rows
            else:
                prefix, body = 2 * rows - 1, t      # weights/inputs preloaded, then T rows stream
            skew = cols - 1                        # skew_matrix adds (columns - 1) rows
            total += prefix + body + skew
    return total - 1


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_systolic_closed_form_matches_fold_loop_on_resnet20(dataflow):
    wl = workload_from_layers(model_layers("resnet20"))
    hw, _ = hardware_from_dict({"systolic": {"rows": 32, "cols": 32}})
    ours = np.asarray(cost.evaluate("systolic", wl, hw, Options(dataflow=dataflow)).compute_cycles)
    for i, layer in enumerate(model_layers("resnet20")):
        m = layer["h_out"] * layer["w_out"]
        k = layer["kernel_size"] ** 2 * layer["c_in"]
        assert ours[i] == _scalesim_fold_loop(m, k, layer["c_out"], 32, 32, dataflow)


@given(m=st.integers(1, 3000), k=st.integers(1, 600), n=st.integers(1, 300), rows=st.integers(1, 64), cols=st.integers(1, 64), dataflow=st.sampled_from(["os", "ws", "is"]))
def test_systolic_closed_form_matches_fold_loop_random(m, k, n, rows, cols, dataflow):
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    ours = cost.systolic_compute_cycles(f32(m), f32(k), f32(n), f32(rows), f32(cols), dataflow)
    expected = _scalesim_fold_loop(m, k, n, rows, cols, dataflow)
    if expected < 2**24:  # cycles are float32 (differentiable): whole numbers are exact below 2**24
        assert int(ours) == expected
    else:
        assert abs(float(ours) - expected) <= expected * 2.0**-23


@given(h=st.integers(1, 40), k=st.integers(1, 7), stride=st.integers(1, 3), pad=st.integers(0, 3))
def test_valid_tap_fraction_matches_brute_force(h, k, stride, pad):
    pad = min(pad, k // 2)  # the model's domain (as PyTorch: padding at most half the kernel)
    h_out = (h + 2 * pad - k) // stride + 1
    if h_out < 1:
        return
    inside = sum(0 <= y * stride + t - pad < h for y in range(h_out) for t in range(k))
    expected = (inside / (h_out * k)) ** 2
    layer = dict(model_layers("resnet20")[1], h_in=h, w_in=h, h_out=h_out, w_out=h_out, kernel_size=k, stride=stride, padding=pad, basis=0, weight_bits=8)  # a plain layer stores weights
    got = float(cost.valid_tap_fraction(slice_layer(workload_from_layers([layer]), 0)))
    assert got == pytest.approx(expected, rel=1e-6)


@given(length=st.integers(0, 200), p=st.floats(0, 1))
def test_sparten_expected_join_cycles_matches_binomial_sum(length, p):
    expected = sum(math.comb(length, x) * p**x * (1 - p) ** (length - x) * max(1, x) for x in range(length + 1)) if length else 0.0
    got = float(cost._expected_join_cycles(jnp.float32(length), jnp.float32(p)))
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_dense_mac_energy_matches_independent_count():
    layers = model_layers("resnet20")
    hw, options = load_hardware(None)
    c = cost.evaluate("systolic", workload_from_layers(layers), hw, options)
    per_mac = 0.2 * 8 * 8 / 64 + 0.1 * 16 / 32  # Horowitz 8-bit mult + 16-bit add, pJ
    np.testing.assert_allclose(np.asarray(c.mac_pj), [l["macs_dense"] * per_mac for l in layers], rtol=1e-5)


def _density_layer(pc, pa):
    layer = dict(model_layers("resnet20")[3], coef_density=pc, act_density=pa)
    layer.pop("coef_density_per_out_channel")
    return slice_layer(workload_from_layers([layer]), 0)


@given(pc=st.floats(0.0, 1.0), pa=st.floats(0.0, 1.0), dp=st.floats(0.0, 0.5), order=st.sampled_from(["coefficient_first", "basis_first"]))
def test_escalate_cost_monotone_in_densities(pc, pa, dp, order):
    hw, _ = load_hardware(None)
    lo = cost.escalate_layer(_density_layer(pc, pa), hw, stage_order=order)
    hi_c = cost.escalate_layer(_density_layer(min(1.0, pc + dp), pa), hw, stage_order=order)
    hi_a = cost.escalate_layer(_density_layer(pc, min(1.0, pa + dp)), hw, stage_order=order)
    for hi in (hi_c, hi_a):
        assert float(hi.compute_cycles) >= float(lo.compute_cycles) * (1 - 1e-6)
        assert float(hi.energy_pj) >= float(lo.energy_pj) * (1 - 1e-6)


@pytest.mark.parametrize("relaxed", [False, True])
@pytest.mark.parametrize("design", cost.DESIGNS)
def test_gradients_finite_at_density_edges(design, relaxed):
    hw, options = load_hardware(None)

    def total(pc, pa, bits, hw):
        layers = [dict(l, coef_density=1.0, act_density=1.0, coef_bits=4) for l in model_layers("resnet20")]
        wl = workload_from_layers(layers)
        n = wl.c_in.shape[0]
        wl = wl._replace(coef_density=jnp.full((n,), pc), act_density=jnp.full((n,), pa), coef_bits=jnp.full((n,), bits))
        c = cost.evaluate(design, wl, hw, options, relaxed=relaxed)
        return jnp.sum(c.cycles) + jnp.sum(c.energy_pj) * 1e-3

    grad = jax.jit(jax.grad(total, argnums=(0, 1, 2, 3)))
    for pc in (0.0, 0.5, 1.0):
        for pa in (0.0, 1.0):
            g = grad(jnp.float32(pc), jnp.float32(pa), jnp.float32(4.0), hw)
            leaves = jax.tree.leaves(g)
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves), (design, pc, pa, g)
    if relaxed and design == "escalate":
        g = grad(jnp.float32(0.5), jnp.float32(0.5), jnp.float32(4.0), hw)
        assert float(g[0]) > 0 and float(g[1]) > 0  # denser -> costlier
        assert float(g[3].escalate.pes) < 0          # more PEs -> cheaper (relaxed size)


@pytest.mark.parametrize("design", cost.DESIGNS)
def test_relaxed_model_close_to_exact(design):
    hw, options = load_hardware(None)
    wl = workload_from_layers(model_layers("resnet56"))
    exact = float(cost.evaluate(design, wl, hw, options).cycles.sum())
    relaxed = float(cost.evaluate(design, wl, hw, options, relaxed=True).cycles.sum())
    assert relaxed == pytest.approx(exact, rel=0.15)


def test_grid_vmap_equals_per_design_and_compiles_once():
    base, options = load_hardware(None)
    designs = [hardware_from_dict({"escalate": {"pes": p, "lanes": n}})[0] for p, n in [(16, 16), (64, 32), (8, 64)]]
    wl = workload_from_layers(model_layers("resnet20"))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grid(wl, hw):
        return cost.evaluate_grid("escalate", wl, hw, options)

    chex.clear_trace_counter()
    out = grid(wl, stack_hardware(designs))
    out2 = grid(jax.tree.map(lambda x: x * 1.0, wl), stack_hardware(designs[::-1]))  # same shapes: no retrace
    for i, hw in enumerate(designs):
        single = cost.evaluate("escalate", wl, hw, options)
        np.testing.assert_allclose(np.asarray(out.cycles[i]), np.asarray(single.cycles), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(out2.energy_pj[2 - i]), np.asarray(single.energy_pj), rtol=1e-6)


def test_best_order_is_the_faster_one():
    hw, _ = load_hardware(None)
    wl = workload_from_layers(model_layers("vgg16"))
    best = cost.evaluate("escalate", wl, hw, Options(stage_order="best")).cycles
    a = cost.evaluate("escalate", wl, hw, Options(stage_order="coefficient_first")).cycles
    b = cost.evaluate("escalate", wl, hw, Options(stage_order="basis_first")).cycles
    np.testing.assert_allclose(np.asarray(best), np.minimum(np.asarray(a), np.asarray(b)), rtol=1e-6)


def test_unknown_design_is_a_clear_error():
    hw, options = load_hardware(None)
    with pytest.raises(ValueError, match="design: expected one of"):
        cost.evaluate("eyeriss", workload_from_layers(model_layers("resnet20")), hw, options)
