"""Both sparse kernels (numba on CPU; Pallas, interpret mode here) equal the rebuilt dense conv on the real
ResNet-56 layer shapes, on patterns with whole dead channels, density 0 and 1, and a real model's pruned
coefficients; the Pallas kernel's epilogue (bias, residual, ReLU) against the same arithmetic in jnp."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse.penni.inference import as_dense_conv
from jaxsparse.penni.layers import DecomposedConv, decompose_model, iter_layers
from jaxsparse.penni.prune import penni_mask
from jaxsparse.penni.sparse_cpu import SparseCoefficientConv
from jaxsparse.penni.sparse_pallas import PallasSparseConv

KERNELS = {"numba": SparseCoefficientConv, "pallas": lambda layer: PallasSparseConv(layer, interpret=True)}
# (H, Cin, Cout, stride): ResNet-56's 3x3 convs, the stride-2 ones at the start of stages 2 and 3
SHAPES = [(32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1), (16, 32, 64, 2), (8, 64, 64, 1)]


def _pattern(rng, cin, cout, d, density):
    """Coefficients of the given density with a quarter of the input and of the output channels dead."""
    c = rng.standard_normal((cin, cout, d)).astype(np.float32) * (rng.random((cin, cout, d)) < density)
    c[rng.permutation(cin)[: cin // 4]] = 0.0
    c[:, rng.permutation(cout)[: cout // 4]] = 0.0
    return c


def _check(kernel, layer, x):
    want = np.asarray(as_dense_conv(layer)(x))
    got = np.asarray(jax.jit(lambda v: kernel(v))(x))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(float(np.abs(want).max()), 1e-6))


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("h,cin,cout,stride", SHAPES)
def test_equals_the_dense_conv_on_resnet56_shapes(name, h, cin, cout, stride):
    rng = np.random.default_rng(h * cin + stride)
    layer = DecomposedConv(jnp.asarray(rng.standard_normal((5, 3, 3)), jnp.float32),
                           jnp.asarray(_pattern(rng, cin, cout, 5, 0.3)), strides=(stride, stride))  # fmt: skip
    x = jax.nn.relu(jnp.asarray(rng.standard_normal((4, h, h, cin)), jnp.float32))
    _check(KERNELS[name](layer), layer, x)


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("density", [0.0, 1.0])
def test_density_zero_and_one(name, density):
    rng = np.random.default_rng(7)
    c = rng.standard_normal((32, 32, 5)).astype(np.float32) * density
    layer = DecomposedConv(jnp.asarray(rng.standard_normal((5, 3, 3)), jnp.float32), jnp.asarray(c))
    x = jnp.asarray(rng.standard_normal((4, 16, 16, 32)), jnp.float32)
    kernel = KERNELS[name](layer)
    _check(kernel, layer, x)
    if density == 0.0:
        assert float(jnp.abs(kernel(x)).max()) == 0.0


@pytest.fixture(scope="module")
def pruned_resnet20(shared_root):
    """The shared pretrained ResNet-20, decomposed (5 basis kernels) and pruned by PENNI's rule (1 std)."""
    from jaxsparse.models import load_pretrained

    model = load_pretrained("resnet20", shared_root=shared_root)
    decompose_model(model, 5)
    layers = []
    for path, layer in iter_layers(model, DecomposedConv):
        layer.coefficients[...] = jnp.where(penni_mask(layer.coefficients[...], 1.0), layer.coefficients[...], 0.0)
        layers.append((path, layer))
    return layers


@pytest.mark.parametrize("name", list(KERNELS))
def test_a_real_models_pruned_coefficients(name, pruned_resnet20):
    rng = np.random.default_rng(3)
    checked = 0
    for path, layer in pruned_resnet20:
        density = float(np.mean(np.asarray(layer.coefficients[...]) != 0))
        assert 0.0 < density < 1.0, (path, density)
        h = {3: 32, 16: 32, 32: 16, 64: 8}[layer.in_features]  # a stride-2 conv reads the previous stage's maps
        x = jax.nn.relu(jnp.asarray(rng.standard_normal((4, h, h, layer.in_features)), jnp.float32))
        _check(KERNELS[name](layer), layer, x)
        checked += 1
    assert checked >= 10


def test_pallas_epilogue_adds_bias_and_residual_before_the_relu():
    rng = np.random.default_rng(11)
    cin, cout = 16, 32
    layer = DecomposedConv(jnp.asarray(rng.standard_normal((5, 3, 3)), jnp.float32),
                           jnp.asarray(_pattern(rng, cin, cout, 5, 0.4)), strides=(2, 2))  # fmt: skip
    x = jnp.asarray(rng.standard_normal((4, 16, 16, cin)), jnp.float32)
    residual = jnp.asarray(rng.standard_normal((4, 16, 16, cin)), jnp.float32)
    source = tuple(int(o) if o < cin else -1 for o in range(cout))  # a downsampling shortcut: new channels get nothing
    bias = jnp.asarray(rng.standard_normal(cout), jnp.float32)
    scale = rng.uniform(0.5, 2.0, cout).astype(np.float32)
    kernel = PallasSparseConv(layer, interpret=True)
    kernel.scale_outputs(scale)
    kernel.set_epilogue(bias, relu=True)
    got = np.asarray(kernel(x, residual, residual_source=source, residual_stride=2))
    conv = np.asarray(as_dense_conv(layer)(x)) * scale
    shortcut = np.asarray(residual)[:, ::2, ::2, :]
    added = np.stack([shortcut[..., s] if s >= 0 else np.zeros(shortcut.shape[:3], np.float32) for s in source], -1)
    want = np.maximum(conv + np.asarray(bias) + added, 0.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
    with pytest.raises(ValueError, match="residual_source: expected 32 channel indices"):
        kernel(x, residual, residual_source=(0,) * 3, residual_stride=2)
    with pytest.raises(ValueError, match="tile: expected a power of two, got 100"):
        PallasSparseConv(layer, tile=100)


@pytest.mark.parametrize("platform,lowering", [("gpu", "cuda"), ("tpu", "tpu")])
def test_pallas_kernel_lowers_for_gpu_and_tpu(platform, lowering):
    """Cross-platform lowering from this CPU machine: the kernel's blocks, slices and product are accepted by
    Pallas' Triton (GPU) and Mosaic (TPU) lowerings at ResNet-56 shapes (compiling them needs the device)."""
    rng = np.random.default_rng(5)
    for h, cin, cout, stride in SHAPES[:2]:
        layer = DecomposedConv(jnp.asarray(rng.standard_normal((5, 3, 3)), jnp.float32),
                               jnp.asarray(_pattern(rng, cin, cout, 5, 0.3)), strides=(stride, stride))  # fmt: skip
        kernel = PallasSparseConv(layer, interpret=False, platform=platform)
        kernel.set_epilogue(jnp.ones(cout), relu=True)
        x = jax.ShapeDtypeStruct((128, h, h, cin), jnp.float32)
        source = tuple(o if o < cin else -1 for o in range(cout))
        fn = jax.jit(lambda v, r: kernel(v, r, residual_source=source, residual_stride=stride))
        text = fn.trace(x, x).lower(lowering_platforms=(lowering,)).as_text()
        assert ("__gpu$xla.gpu.triton" in text or "triton" in text) if platform == "gpu" else "tpu_custom_call" in text
