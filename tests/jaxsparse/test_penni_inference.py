"""Inference rewrites (execution plan, BatchNorm folding, channel padding) keep the eval-mode outputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsparse.models import CifarResNet
from jaxsparse.penni.inference import (
    PLAN_FORMS,
    ChannelBias,
    apply_plan,
    bake_quantization,
    fold_batchnorm,
    fuse_sparse_resnet,
    pad_channels,
    plan_module,
)
from jaxsparse.penni.layers import DecomposedConv, LiveBasisFirstConv, decompose_model, iter_layers, set_quantization
from jaxsparse.penni.shrink import shrink
from jaxsparse.penni.sparse_cpu import SparseCoefficientConv
from jaxsparse.penni.sparse_pallas import PallasSparseConv
from tests.jaxsparse.helpers import randomise_batchnorm


def _forward(model, x):
    model.eval()
    graphdef, state = nnx.split(model)  # one compilation is cheaper than compiling op by op (eager)
    return np.asarray(jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))(state, x))


def _assert_close(out, reference, rtol=1e-4):
    assert out.shape == reference.shape
    assert float(np.max(np.abs(out - reference))) <= rtol * max(float(np.max(np.abs(reference))), 1e-6)


def _randomise_batchnorm(model, rng):
    """BatchNorm statistics and affine terms far from the identity, so folding has something to fold."""
    randomise_batchnorm(model, rng, var_range=(0.3, 3.0))


def _compressed_resnet(seed, *, quantized):
    """A fresh copy of :func:`_build_compressed_resnet` (built once per argument pair: building dominates test time)."""
    return nnx.clone(_build_compressed_resnet(seed, quantized))


@functools.lru_cache(maxsize=None)
def _build_compressed_resnet(seed, quantized, dead_fraction=0.3):
    """A decomposed ResNet-8 with pruned coefficients, dead channels and random BatchNorm, shrunk."""
    rng = np.random.default_rng(seed)
    model = CifarResNet(8, rngs=nnx.Rngs(seed))
    decompose_model(model, 5)
    for _, layer in iter_layers(model, DecomposedConv):
        c = np.array(layer.coefficients[...])
        c[:, rng.random(c.shape[1]) < dead_fraction, :] = 0
        c[np.abs(c) < 0.5 * c.std()] = 0
        layer.coefficients[...] = jnp.asarray(c)
    _randomise_batchnorm(model, rng)
    shrink(model)
    if quantized:
        set_quantization(model, 4, 8)
    model.eval()
    return model


@pytest.mark.slow
@settings(max_examples=3)
@given(form=st.sampled_from([f for f in PLAN_FORMS if f != "sparse_pallas"]), quantized=st.booleans(), fold=st.booleans(),
       seed=st.integers(0, 2))  # the Pallas form is refused on the CPU backend (tested below; its kernel has its own tests)
def test_plan_and_folding_keep_compressed_outputs(form, quantized, fold, seed):
    model = _compressed_resnet(seed, quantized=quantized)
    x = jax.nn.relu(jax.random.normal(jax.random.key(seed), (2, 8, 8, 3)))
    reference = _forward(model, x)  # eval mode, fake-quantized when quantized
    apply_plan(model, form)
    if fold:
        fold_batchnorm(model)
    expected = {"dense": nnx.Conv, "live_basis_first": LiveBasisFirstConv, "sparse_cpu": SparseCoefficientConv}.get(form, DecomposedConv)
    kinds = (nnx.Conv, DecomposedConv, LiveBasisFirstConv, SparseCoefficientConv)
    assert all(isinstance(layer, expected) for _, layer in iter_layers(model, kinds))
    _assert_close(_forward(model, x), reference)


@settings(max_examples=3)
@given(multiple=st.sampled_from([1, 3, 4, 8, 16]), fold_first=st.booleans(), seed=st.integers(0, 2))
def test_channel_padding_keeps_outputs_and_identity_shortcuts(multiple, fold_first, seed):
    model = _compressed_resnet(seed, quantized=False)
    x = jax.random.normal(jax.random.key(seed), (2, 8, 8, 3))
    reference = _forward(model, x)
    identity = [len(b.source) > 0 and b.source == tuple(range(len(b.source))) for s in model.stages for b in s]
    if fold_first:
        fold_batchnorm(model)
    pad_channels(model, multiple)
    apply_plan(model, "dense")
    for _, conv in iter_layers(model, nnx.Conv):
        assert conv.out_features % multiple == 0
        assert conv.in_features % multiple == 0 or conv.in_features == 3
    blocks = [b for s in model.stages for b in s]
    for was_identity, block in zip(identity, blocks):
        if was_identity:  # still a plain identity: no gather on the residual path
            assert block.source == tuple(range(len(block.source)))
    _assert_close(_forward(model, x), reference)


def test_plan_by_layer_and_errors():
    model = _compressed_resnet(1, quantized=True)
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 3))
    reference = _forward(model, x)
    layer = model.layer1[0].conv1
    with pytest.raises(ValueError, match="form"):
        plan_module(layer, "winograd")
    with pytest.raises(ValueError, match="'sparse_pallas' is compiled for GPU and TPU"):
        plan_module(layer, "sparse_pallas")  # the CPU backend only interprets Pallas
    with pytest.raises(ValueError, match="multiple"):
        pad_channels(model, 0)
    with pytest.raises(ValueError, match="model"):
        pad_channels(CifarResNet(8, rngs=nnx.Rngs(0)), 8)
    apply_plan(model, {"layer1.0.conv1": "coef_first", "layer2.0.conv1": "live_basis_first"})
    assert isinstance(model.layer2[0].conv1, LiveBasisFirstConv) and model.layer1[0].conv1.form == "coef_first"
    assert isinstance(model.layer3[0].conv1, DecomposedConv) and model.layer3[0].conv1.coef_bits == 4  # untouched
    model.layer3[0].conv2 = PallasSparseConv(model.layer3[0].conv2, interpret=True)  # what a GPU plan would make
    _assert_close(_forward(model, x), reference)
    bake_quantization(model)
    assert all(layer.coef_bits == 0 for _, layer in iter_layers(model, DecomposedConv))
    _assert_close(_forward(model, x), reference)
    fold_batchnorm(model)  # every kind of layer a plan makes takes the BatchNorm scale
    assert not list(iter_layers(model, nnx.BatchNorm)) and len(list(iter_layers(model, ChannelBias))) == 7
    _assert_close(_forward(model, x), reference)


@settings(max_examples=4)
@given(quantized=st.booleans(), seed=st.integers(0, 2), sparse_fraction=st.sampled_from([0.0, 0.5, 1.0]))
def test_planar_sparse_resnet_keeps_outputs(quantized, seed, sparse_fraction):
    """Kernels chained channel-planar, epilogues fused, mixed with dense layers: the logits do not change."""
    model = _compressed_resnet(seed, quantized=quantized)
    x = jax.nn.relu(jax.random.normal(jax.random.key(seed), (3, 8, 8, 3)))
    reference = _forward(model, x)
    paths = [path for path, _ in iter_layers(model, DecomposedConv)]
    chosen = np.random.default_rng(seed).random(len(paths)) < sparse_fraction
    apply_plan(model, {path: "sparse_cpu" if pick else "dense" for path, pick in zip(paths, chosen)})
    fast = fuse_sparse_resnet(fold_batchnorm(model))
    assert sum(1 for _ in iter_layers(fast, SparseCoefficientConv)) == int(chosen.sum())
    _assert_close(_forward(fast, x), reference)


def test_fuse_sparse_resnet_errors():
    with pytest.raises(ValueError, match="model"):
        fuse_sparse_resnet(CifarResNet(8, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="folded"):
        fuse_sparse_resnet(apply_plan(_compressed_resnet(0, quantized=False), "sparse_cpu"))
