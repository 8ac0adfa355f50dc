"""Hardware-aware compression: gates, expected densities, end-to-end gradients, allocation by cost."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hwmodel.codesign.costfn import deployment_layers, make_cost_fn
from hwmodel.codesign.search import network_metric
from hwmodel.hardware import load_hardware
from hwmodel.workload import workload_from_layers
from jaxsparse.penni import hwaware
from jaxsparse.penni.count import describe_layers
from jaxsparse.penni.digits import DigitsCNN
from jaxsparse.penni.layers import DecomposedConv, decompose_model, iter_layers
from jaxsparse.penni.prune import penni_mask
from jaxsparse.penni.train import TrainConfig, training_loss


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
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    config = hwaware.HwAwareConfig(cost_weight=1.0)
    reference = float(cost_fn(hwaware.layer_densities(params, raw, layout, config.temperature)))
    # The loss the training loop runs: the task loss of the gated model plus the objective's term.
    loss = training_loss(graphdef, rest, TrainConfig(epochs=1), hwaware.hwaware_objective(cost_fn, layout, config, reference, (raw, {})))
    x, y = _data(4)
    x = jnp.asarray(x, jnp.float32) / 255.0

    # jitted: one compilation instead of op-by-op dispatch of the whole backward pass
    g_params, (g_raw, _) = jax.jit(jax.grad(lambda p, e: loss(p, e, stats, x, jnp.asarray(y))[0], argnums=(0, 1)))(params, (raw, {}))
    for path, g in g_raw.items():
        assert np.isfinite(float(g)) and float(g) != 0.0, path
    leaves = jax.tree.leaves(g_params)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    # The cost alone reaches every layer's coefficients through the expected densities.
    g_cost = jax.jit(jax.grad(lambda p: cost_fn(hwaware.layer_densities(p, raw, layout, config.temperature))))(params)
    for path, g in hwaware.coefficient_leaves(g_cost).items():
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0.0, path


def _one_heavy_layer(heavy="features.1.conv"):
    """Layer records of the test model and per-layer cost weights that make one layer dominate."""
    records = describe_layers(_model(), input_shape=(1, 8, 8, 3))
    names = [r["name"] for r in records]
    weights = jnp.asarray([10.0 if n == heavy else 0.1 for n in names], jnp.float32)
    return records, names, heavy, weights


def test_thresholds_follow_the_cost_and_a_fixed_seed_repeats_exactly():
    x, y = _data(64)
    records, names, heavy, weights = _one_heavy_layer()

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


def test_channel_gate_forward_is_the_channel_rule_and_prune_matches_it():
    c = jax.random.normal(jax.random.key(3), (6, 5, 3), jnp.float32) * jnp.asarray([0.05, 1.0, 2.0, 0.3, 1.5], jnp.float32)[None, :, None]
    s, g = jnp.float32(0.5), jnp.float32(0.6)
    gated = hwaware.gated_coefficients(c, s, 0.1, "ste", g, 0.1)
    norms = np.sqrt(np.mean(np.asarray(c) ** 2, axis=(0, 2)))
    keep_channel = norms >= 0.6 * norms.mean()  # independent count of the channel rule
    assert 0 < keep_channel.sum() < 5
    expected = np.where(np.asarray(penni_mask(c, 0.5)) & keep_channel[None, :, None], np.asarray(c), 0.0)
    np.testing.assert_array_equal(np.asarray(gated), expected)
    g_grad = jax.grad(lambda t: jnp.sum(jnp.square(hwaware.gated_coefficients(c, s, 0.1, "ste", t, 0.3))))(g)
    assert np.isfinite(float(g_grad)) and float(g_grad) < 0.0  # a higher channel threshold removes energy
    # Expected live fraction tends to the counted one for a narrow gate.
    np.testing.assert_allclose(float(hwaware.expected_live_fraction(c, g, 1e-4)), keep_channel.mean(), atol=1e-3)

    model = _model()
    paths = [p for p, _ in iter_layers(model, DecomposedConv)]
    before = {p: layer.coefficients[...] for p, layer in iter_layers(model, DecomposedConv)}
    hwaware.prune_with_thresholds(model, {p: 0.3 for p in paths}, {p: 0.9 for p in paths})
    for path, layer in iter_layers(model, DecomposedConv):
        n = np.sqrt(np.mean(np.asarray(before[path]) ** 2, axis=(0, 2)))
        dead = n < 0.9 * n.mean()
        after = np.asarray(layer.coefficients[...])
        assert np.all(after[:, dead, :] == 0)
        np.testing.assert_array_equal(after[:, ~dead, :] != 0, np.asarray(penni_mask(before[path], 0.3))[:, ~dead, :])
    with pytest.raises(ValueError, match="channel_thresholds: expected an entry"):
        hwaware.prune_with_thresholds(_model(), {p: 0.3 for p in paths}, {paths[0]: 0.5})


def test_channel_gated_cost_is_differentiable_and_the_relaxation_counts_what_the_design_charges():
    model = _model()
    records = describe_layers(model, input_shape=(1, 8, 8, 3))
    hw, options = load_hardware(None)
    cost_fn = make_cost_fn(records, hw, options, metric="latency")
    config = hwaware.HwAwareConfig(cost_weight=1.0, channel_gates=True, channel_temperature=0.3)
    raw = hwaware.initial_raw_thresholds(model, 1.0)
    channel_raw = hwaware.initial_raw_thresholds(model, 0.8)
    layout = hwaware.density_layout(records, list(raw))
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    live = hwaware.layer_live_fractions(params, channel_raw, layout, config.channel_temperature)
    dens = hwaware.layer_densities(params, raw, layout, config.temperature, channel_raw, config.channel_temperature)
    reference = float(cost_fn(dens, live))
    objective = hwaware.hwaware_objective(cost_fn, layout, config, reference, (raw, channel_raw))
    loss = training_loss(graphdef, rest, TrainConfig(epochs=1), objective)  # the loss the training loop runs
    x, y = _data(4)
    x = jnp.asarray(x, jnp.float32) / 255.0

    g_raw, g_channel = jax.jit(jax.grad(lambda e: loss(params, e, stats, x, jnp.asarray(y))[0]))((raw, channel_raw))
    for path in raw:
        assert np.isfinite(float(g_raw[path])) and np.isfinite(float(g_channel[path])) and float(g_channel[path]) != 0.0, path

    # Fewer live channels at the same density never cost more latency, and the exact cost of a
    # pruned model's own description equals the cost function at its counted densities and live fractions.
    all_live = float(cost_fn(dens))
    assert float(cost_fn(dens, live)) <= all_live * (1 + 1e-6)
    hwaware.prune_with_thresholds(model, {p: 0.5 for p in raw}, {p: 0.8 for p in raw})
    pruned = describe_layers(model, input_shape=(1, 8, 8, 3))
    counted = jnp.asarray([r["coef_density"] for r in pruned], jnp.float32)
    counted_live = jnp.asarray([r["live_out_fraction"] for r in pruned], jnp.float32)
    assert float(jnp.min(counted_live)) < 1.0
    exact = make_cost_fn(records, hw, options, metric="latency", relaxed=False)
    direct = float(network_metric(workload_from_layers(deployment_layers(pruned)), hw, options, "latency"))
    np.testing.assert_allclose(float(exact(counted, counted_live)), direct, rtol=1e-5)


def test_channel_thresholds_follow_a_cost_of_live_channels():
    x, y = _data(64)
    records, names, heavy, weights = _one_heavy_layer()

    def cost_fn(density, live):  # charges live channels only, as a dense engine does
        return jnp.sum(weights * live) + 0.0 * jnp.sum(density) + 1.0

    config = hwaware.HwAwareConfig(cost_weight=5.0, steps=8, batch_size=16, threshold_learning_rate=0.1, channel_gates=True,
                                   channel_temperature=0.3, train_weights=False, augment_pad=1, seed=3)
    first = hwaware.hwaware_fit(_model(), x, y, cost_fn, config, records=records, progress=False)
    assert set(first.channel_thresholds) == set(first.thresholds)
    others = [g for p, g in first.channel_thresholds.items() if p != heavy]
    assert first.channel_thresholds[heavy] > max(others)
    assert first.live_fractions[heavy] < min(v for n, v in first.live_fractions.items() if n not in (heavy, "classifier"))
    assert first.live_fractions["classifier"] == 1.0


def test_interrupted_run_resumes_mid_epoch_exactly_and_other_settings_are_refused(tmp_path, monkeypatch, capsys):
    from jaxsparse.penni import train

    x, y = _data(64)  # 4 steps per epoch
    records, _, _, weights = _one_heavy_layer()

    def cost_fn(density):
        return jnp.sum(weights * density) + 1.0

    config = hwaware.HwAwareConfig(cost_weight=2.0, steps=6, batch_size=16, augment_pad=1, seed=1, checkpoint_every=3)
    straight = hwaware.hwaware_fit(_model(), x, y, cost_fn, config, records=records, progress=False)
    assert [row["step"] for row in straight.history] == [4, 6]

    real_batches = train.batches

    def dying_batches(*args, **kwargs):  # killed when asked for step 4 (checkpoint at step 3, mid-epoch)
        for index, batch in enumerate(real_batches(*args, **kwargs)):
            if kwargs.get("start_epoch") == 0 and index == 3:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(train, "batches", dying_batches)
    with pytest.raises(KeyboardInterrupt):
        hwaware.hwaware_fit(_model(), x, y, cost_fn, config, records=records, checkpoint=tmp_path / "run", progress=False)
    monkeypatch.undo()
    capsys.readouterr()
    resumed = hwaware.hwaware_fit(_model(), x, y, cost_fn, config, records=records, checkpoint=tmp_path / "run", progress=True)
    assert resumed.thresholds == straight.thresholds and resumed.history == straight.history
    # Progress (plain lines, stderr is not a terminal): resumed at step 3 of epoch 1 (4 steps), then epoch 2's 2 steps;
    # each bar ends at its total, never above it.
    counts = {}
    for line in capsys.readouterr().err.splitlines():
        if match := re.fullmatch(r"hw-aware (\d)/2: (\d+)/(\d+) \((\d+)%\).*", line):
            counts.setdefault(match[1], []).append((int(match[2]), int(match[3])))
    assert {epoch: rows[-1] for epoch, rows in counts.items()} == {"1": (4, 4), "2": (2, 2)}
    assert all(n <= total for rows in counts.values() for n, total in rows)

    with pytest.raises(ValueError, match=r"checkpoint: run folder .* other settings: objective\.hwaware\.cost_weight: "
                                         r"expected 2\.0, got 3\.0"):
        hwaware.hwaware_fit(_model(), x, y, cost_fn, dataclasses.replace(config, cost_weight=3.0), records=records,
                            checkpoint=tmp_path / "run", progress=False)
