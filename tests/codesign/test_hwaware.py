"""Hardware-aware compression: gates, expected densities, end-to-end gradients, allocation by cost."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hwmodel.codesign.costfn import make_cost_fn
from hwmodel.hardware import load_hardware
from jaxsparse import hwaware
from jaxsparse.penni.count import describe_layers
from jaxsparse.penni.digits import DigitsCNN
from jaxsparse.penni.layers import DecomposedConv, decompose_model, iter_layers
from jaxsparse.penni.prune import penni_mask


def _model(seed: int = 0):
    model = DigitsCNN(widths=(4, 8, 8), rngs=nnx.Rngs(seed))
    decompose_model(model, 3)
    return model


def _data(n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, size=(n,)).astype(np.int32)


def test_ste_gate_forward_is_the_penni_rule_and_gradient_is_the_sigmoids():
    c = jax.random.normal(jax.random.key(0), (6, 7, 3), jnp.float32)
    s = jnp.float32(0.8)
    gated = hwaware.gated_coefficients(c, s, 0.1, "ste")
    np.testing.assert_array_equal(np.asarray(gated), np.asarray(jnp.where(penni_mask(c, 0.8), c, 0.0)))
    g_ste = jax.grad(lambda t: jnp.sum(hwaware.gated_coefficients(c, t, 0.1, "ste")))(s)
    g_soft = jax.grad(lambda t: jnp.sum(hwaware.gated_coefficients(c, t, 0.1, "sigmoid")))(s)
    np.testing.assert_allclose(float(g_ste), float(g_soft), rtol=1e-5)
    assert float(g_ste) != 0.0


def test_expected_density_tends_to_the_counted_density():
    c = jax.random.normal(jax.random.key(1), (4000,), jnp.float32)
    counted = float(jnp.mean(penni_mask(c, 0.7)))
    np.testing.assert_allclose(float(hwaware.expected_density(c, jnp.float32(0.7), 1e-3)), counted, atol=2e-3)
    # A wide gate smooths but still decreases with the threshold.
    assert float(hwaware.expected_density(c, jnp.float32(1.2), 0.3)) < float(hwaware.expected_density(c, jnp.float32(0.7), 0.3))


def test_hardware_cost_is_differentiable_end_to_end_from_model_parameters():
    model = _model()
    records = describe_layers(model, input_shape=(1, 8, 8, 3))
    hw, options = load_hardware(None)
    cost_fn = make_cost_fn(records, hw, options, metric="edp")
    raw = hwaware.initial_raw_thresholds(model, 1.0)
    layout = hwaware.density_layout(records, list(raw))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    config = hwaware.HwAwareConfig(cost_weight=1.0)
    reference = float(cost_fn(hwaware.layer_densities(params, raw, layout, config.temperature)))
    loss = hwaware.hardware_aware_loss(cost_fn, layout, config, reference)
    x, y = _data(4)

    def logits_fn(gated):
        return nnx.merge(graphdef, gated, rest)(jnp.asarray(x, jnp.float32) / 255.0), None

    g_params, g_raw = jax.grad(lambda p, r: loss(p, r, logits_fn, jnp.asarray(y))[0], argnums=(0, 1))(params, raw)
    for path, g in g_raw.items():
        assert np.isfinite(float(g)) and float(g) != 0.0, path
    leaves = jax.tree.leaves(g_params)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    # The cost alone reaches every layer's coefficients through the expected densities.
    g_cost = jax.grad(lambda p: cost_fn(hwaware.layer_densities(p, raw, layout, config.temperature)))(params)
    for path, g in hwaware.coefficient_leaves(g_cost).items():
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0.0, path


def test_thresholds_follow_the_cost_and_a_fixed_seed_repeats_exactly():
    x, y = _data(64)
    records = describe_layers(_model(), input_shape=(1, 8, 8, 3))
    names = [r["name"] for r in records]
    heavy = "features.1.conv"
    weights = jnp.asarray([10.0 if n == heavy else 0.1 for n in names], jnp.float32)

    def cost_fn(density):  # any differentiable function of the per-layer densities
        return jnp.sum(weights * density) + 1.0

    config = hwaware.HwAwareConfig(cost_weight=5.0, steps=12, batch_size=16, threshold_learning_rate=0.1,
                                   augment_pad=1, train_weights=False, seed=7)
    first = hwaware.hwaware_fit(_model(), x, y, cost_fn, config, records=records, progress=False)
    again = hwaware.hwaware_fit(_model(), x, y, cost_fn, config, records=records, progress=False)
    assert first.thresholds == again.thresholds and first.history == again.history
    others = [s for p, s in first.thresholds.items() if p != heavy]
    assert first.thresholds[heavy] > max(others)
    assert first.densities[heavy] < min(d for n, d in first.densities.items() if n not in (heavy, "classifier"))
    frozen = hwaware.hwaware_fit(_model(), x, y, cost_fn, dataclasses.replace(config, threshold_steps=0, steps=3),
                                 records=records, progress=False)
    assert all(abs(s - config.initial_threshold) < 1e-6 for s in frozen.thresholds.values())


def test_prune_with_thresholds_and_keep_masks():
    model = _model()
    thresholds = {p: 0.5 + 0.25 * i for i, (p, _) in enumerate(iter_layers(model, DecomposedConv))}
    before = {p: layer.coefficients[...] for p, layer in iter_layers(model, DecomposedConv)}
    kept = hwaware.prune_with_thresholds(model, thresholds)
    for path, layer in iter_layers(model, DecomposedConv):
        mask = penni_mask(before[path], thresholds[path])
        np.testing.assert_array_equal(np.asarray(layer.coefficients[...] != 0), np.asarray(mask & (before[path] != 0)))
        np.testing.assert_allclose(kept[path], float(jnp.mean(mask)))
    masks = hwaware.keep_masks(model)
    for path, m in hwaware.coefficient_leaves(masks).items():
        np.testing.assert_array_equal(np.asarray(m), np.asarray(hwaware.coefficient_leaves(nnx.state(model, nnx.Param))[path] != 0))
    with pytest.raises(ValueError, match="thresholds: expected an entry for layer"):
        hwaware.prune_with_thresholds(model, {})


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="gate"):
        hwaware.HwAwareConfig(gate="hard")
    with pytest.raises(ValueError, match="temperature"):
        hwaware.HwAwareConfig(temperature=0.0)
    x, y = _data(8)
    with pytest.raises(ValueError, match="cost_fn: expected a finite positive cost"):
        hwaware.hwaware_fit(_model(), x, y, lambda d: jnp.sum(d) * 0.0, hwaware.HwAwareConfig(steps=1, batch_size=4), progress=False)
