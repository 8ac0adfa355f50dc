"""Shrinking: the shrunk model computes what the masked model computes, for ResNet-20/56 and VGG-16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsparse.models import build_model
from jaxsparse.penni.layers import DecomposedConv, decompose_model, iter_layers
from jaxsparse.penni.shrink import CompactBasicBlock, apply_channel_masks, plan_shrink, shrink
from tests.jaxsparse.helpers import randomise_batchnorm


def _forward(model, x):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))(state, x)


def _randomise(model, seed, dead_fraction):
    """Random dead output/input channels and pruned coefficients; BatchNorm statistics far from identity."""
    rng = np.random.default_rng(seed)
    for _, layer in iter_layers(model, DecomposedConv):
        c = np.array(layer.coefficients[...])
        c[:, rng.random(c.shape[1]) < dead_fraction, :] = 0
        c[rng.random(c.shape[0]) < dead_fraction, :, :] = 0
        c[np.abs(c) < 0.5 * c.std()] = 0
        layer.coefficients[...] = jnp.asarray(c)
    randomise_batchnorm(model, rng, var_range=(0.5, 2.0))


def _num_params(model):
    return sum(int(np.size(p)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name,seed", [("resnet20", 0), ("resnet56", 1), ("vgg16", 2)])
def test_shrunk_model_equals_masked_model(name, seed):
    model = build_model(name, rngs=nnx.Rngs(seed))
    decompose_model(model, 5)
    _randomise(model, seed, dead_fraction=0.3)
    model.eval()
    x = jax.random.normal(jax.random.key(seed), (2, 32, 32, 3))
    plan = apply_channel_masks(model)
    masked = _forward(model, x)
    before = _num_params(model)
    shrink(model, plan)
    shrunk = _forward(model, x)
    assert _num_params(model) < before
    assert any(k < n for k, n in plan.kept().values())
    scale = float(jnp.max(jnp.abs(masked)))
    assert float(jnp.max(jnp.abs(shrunk - masked))) <= 1e-5 * max(scale, 1.0)
    if name.startswith("resnet"):
        assert all(isinstance(b, CompactBasicBlock) for stage in model.stages for b in stage)
    else:  # a shrunk chain is at its fixed point: nothing more to remove
        assert all(k == n for k, n in plan_shrink(model).kept().values())


def test_residual_union_and_propagation():
    """A stream channel dies only when every block writing it and every layer reading it lets it go."""
    model = build_model("resnet20", rngs=nnx.Rngs(3))
    decompose_model(model, 5)
    channel = 5
    # nothing writes stream channel 5 of layer1: the stem and every block's conv2 leave it out
    for conv in [model.conv1] + [b.conv2 for b in model.layer1]:
        c = np.array(conv.coefficients[...])
        c[:, channel, :] = 0
        conv.coefficients[...] = jnp.asarray(c)
    plan = plan_shrink(model)
    for space in ["stem", "layer1.0.out", "layer1.1.out", "layer1.2.out"]:
        assert not plan.live[space][channel]
    # layer2's option-A shortcut moves it to channel 5 + 8, whose conv2 writers remain: it lives there
    assert plan.live["layer2.0.out"][channel + 8]
    # a channel still written by one block survives (union at the residual sum)
    c = np.array(model.layer1[1].conv2.coefficients[...])
    c[:, channel, 0] = 1.0
    model.layer1[1].conv2.coefficients[...] = jnp.asarray(c)
    plan = plan_shrink(model)
    assert plan.live["layer1.1.out"][channel] and plan.live["layer1.2.out"][channel] and not plan.live["stem"][channel]
