"""Options beyond the paper's one-shot rule: gradual pruning while training, the channel rule,
and the compacted live-pairs inference layer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsparse.models import build_model
from jaxsparse.penni.digits import DigitsCNN
from jaxsparse.penni.layers import DecomposedConv, LiveBasisFirstConv, decompose_model
from jaxsparse.penni.pipeline import CompressConfig, gradual_prune_schedule, prune_masks
from jaxsparse.penni.prune import channel_norm_mask, masked, penni_mask
from jaxsparse.penni.shrink import free_channel_layers, param_masks_like, plan_shrink


@given(cout=st.sampled_from([1, 4, 9]), sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 1000))
def test_channel_rule_removes_the_weakest_whole_channels(cout, sparsity, seed):
    c = np.random.default_rng(seed).normal(size=(3, cout, 2)).astype(np.float32)
    keep = np.asarray(channel_norm_mask(jnp.asarray(c), sparsity))
    per_channel = keep[0, :, 0]
    assert (keep == per_channel[None, :, None]).all()  # whole channels only
    removed = int(np.floor(np.float32(sparsity) * cout))
    assert per_channel.sum() == cout - removed
    norms = np.sqrt((c**2).sum(axis=(0, 2)))
    if 0 < removed < cout:
        assert norms[~per_channel].max() <= norms[per_channel].min()


def test_channel_rule_rejects_a_flat_tensor():
    with pytest.raises(ValueError, match="coefficients"):
        channel_norm_mask(jnp.ones((4, 3)), 0.5)


def test_mask_schedule_only_shrinks_and_holds_zeros():
    params = {"w": jnp.asarray([0.05, -2.0, 0.3, 1.0]), "b": jnp.asarray([0.01, 0.02])}

    def rule(p, step):  # prunes the two smallest of w at step 1, then asks to revive everything
        prune_now = step == 1
        w_keep = (jnp.abs(p["w"]) >= 0.5) | ~prune_now
        return {"w": w_keep, "b": jnp.ones(2, jnp.bool_)}

    tx = masked(optax.sgd(0.1, momentum=0.9), mask_schedule=rule)
    state = tx.init(params)
    for step in range(4):
        grads = {"w": jnp.full(4, -1.0), "b": jnp.full(2, -1.0)}  # would push every entry up
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if step == 0:
            assert bool(jnp.all(params["w"] != 0))  # at step 0 the rule keeps everything
    assert params["w"][0] == 0.0 and params["w"][2] == 0.0  # pruned at step 1, never revived
    assert bool(jnp.all(params["w"][jnp.asarray([1, 3])] != 0)) and bool(jnp.all(params["b"] != 0))
    np.testing.assert_array_equal(state.masks["w"], [False, True, False, True])


def test_masked_refuses_two_rules():
    from jaxsparse.penni.prune import polynomial_sparsity

    with pytest.raises(ValueError, match="mask_schedule"):
        masked(optax.sgd(0.1), sparsity_schedule=polynomial_sparsity(0.5, begin_step=0, end_step=2), mask_schedule=lambda p, s: p)


def test_free_channel_layers_follow_the_structure():
    resnet = build_model("resnet20", rngs=nnx.Rngs(0))
    assert free_channel_layers(resnet) == tuple(f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))
    chain = DigitsCNN(rngs=nnx.Rngs(0))  # a chain of conv/BN units with a classifier, like VGG-16
    assert free_channel_layers(chain) == tuple(f"features.{i}.conv" for i in range(len(chain.features)))


def _decomposed_resnet():
    model = build_model("resnet20", rngs=nnx.Rngs(0))
    decompose_model(model, 5)
    return model


def test_prune_masks_apply_penni_rule_and_channel_rule():
    model = _decomposed_resnet()
    params = nnx.state(model, nnx.Param)
    plain = prune_masks(params, prune_std=1.0)
    layer = model.layer1[0].conv1
    c = layer.coefficients[...]
    np.testing.assert_array_equal(plain["layer1"][0]["conv1"]["coefficients"][...], penni_mask(c, 1.0))
    np.testing.assert_array_equal(plain["layer1"][0]["bn1"]["scale"][...], np.ones(16, bool))
    both = prune_masks(params, prune_std=1.0, channel_sparsity=0.5, channel_layers=("layer1.0.conv1",))
    expected = np.asarray(penni_mask(c, 1.0)) & np.asarray(channel_norm_mask(c, 0.5))
    np.testing.assert_array_equal(both["layer1"][0]["conv1"]["coefficients"][...], expected)
    np.testing.assert_array_equal(both["layer1"][0]["conv2"]["coefficients"][...], penni_mask(model.layer1[0].conv2.coefficients[...], 1.0))


def test_gradual_schedule_ramps_from_nothing_to_the_final_rule():
    model = _decomposed_resnet()
    config = CompressConfig(model="resnet20", gradual_prune=0.5, channel_sparsity=0.5)
    schedule = gradual_prune_schedule(config, model, total_steps=20)
    params = nnx.state(model, nnx.Param)
    start = schedule(params, 0)
    assert all(bool(jnp.all(m)) for m in jax.tree.leaves(start))
    final = prune_masks(params, prune_std=1.0, channel_sparsity=0.5, channel_layers=free_channel_layers(model))
    for step in (10, 15):  # ramp over the first half of 20 steps, then the final rule
        for got, want in zip(jax.tree.leaves(schedule(params, step)), jax.tree.leaves(final)):
            np.testing.assert_array_equal(got, want)
    middle = sum(int(jnp.sum(m)) for m in jax.tree.leaves(schedule(params, 3)))
    assert sum(int(jnp.sum(m)) for m in jax.tree.leaves(final)) < middle < sum(int(m.size) for m in jax.tree.leaves(start))


@pytest.mark.parametrize("field, value", [("gradual_prune", 1.5), ("gradual_prune", -0.1), ("channel_sparsity", 1.0)])
def test_config_rejects_bad_fractions(field, value):
    with pytest.raises(ValueError, match=field):
        CompressConfig(**{field: value})


def test_channel_masks_cover_batchnorm_of_dead_channels():
    model = _decomposed_resnet()
    layer = model.layer1[0].conv1
    c = np.array(layer.coefficients[...])
    c[:, 3, :] = 0.0
    layer.coefficients[...] = jnp.asarray(c)
    plan = plan_shrink(model)
    masks = param_masks_like(model, plan)
    scale = np.asarray(masks["layer1"][0]["bn1"]["scale"][...])
    assert not scale[3] and scale.sum() == 15
    assert not np.asarray(masks["layer1"][0]["conv2"]["coefficients"][...])[3].any()


@settings(max_examples=8)  # every example compiles new shapes; 8 cover strides x basis sizes x densities
@given(
    stride=st.sampled_from([1, 2]),
    d=st.sampled_from([1, 5, 9]),
    density=st.sampled_from([0.0, 0.2, 1.0]),
    seed=st.integers(0, 1000),
)
def test_live_basis_first_equals_training_form(stride, d, density, seed):
    cin, cout, size = 4, 3, 6
    keys = jax.random.split(jax.random.key(seed), 4)
    basis = jax.random.normal(keys[0], (d, 3, 3))
    coefficients = jax.random.normal(keys[1], (cin, cout, d)) * jax.random.bernoulli(keys[2], density, (cin, cout, d)).astype(jnp.float32)
    layer = DecomposedConv(basis, coefficients, strides=(stride, stride), padding=((1, 1), (1, 1)))
    x = jax.nn.relu(jax.random.normal(keys[3], (2, size, size, cin)))
    compact = LiveBasisFirstConv(layer)
    live_pairs = int(np.any(np.asarray(coefficients) != 0, axis=1).sum())
    assert compact.num_pairs == max(live_pairs, 1)
    reference = layer(x, "train")
    out = compact(x)
    assert out.shape == reference.shape
    scale = max(float(jnp.max(jnp.abs(reference))), 1e-6)
    assert float(jnp.max(jnp.abs(out - reference))) <= 1e-4 * scale + (0.0 if density > 0 else 1e-7)


def test_live_basis_first_keeps_quantized_values():
    layer = DecomposedConv(jax.random.normal(jax.random.key(0), (3, 3, 3)), jax.random.normal(jax.random.key(1), (4, 5, 3)),
                           coef_bits=4, basis_bits=8)
    x = jax.random.normal(jax.random.key(2), (1, 6, 6, 4))
    np.testing.assert_allclose(LiveBasisFirstConv(layer)(x), layer(x), rtol=1e-4, atol=1e-4)
