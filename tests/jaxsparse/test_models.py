"""CIFAR ResNet / VGG-16 ports: golden logits from the PyTorch reference, weight loading, errors."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from jaxsparse.data import CIFAR_MEAN, CIFAR_STD, decode_image, normalize
from jaxsparse.models import (
    MODEL_NAMES,
    VGG16,
    CifarResNet,
    build_model,
    load_pretrained,
    load_pytorch_npz,
    option_a_shortcut,
    pytorch_parameter_map,
    save_pytorch_npz,
    to_pytorch_state_dict,
)

DEPTHS = (20, 32, 44, 56)


@pytest.fixture(scope="module")
def golden(shared_root):
    with np.load(shared_root / "models" / "cifar10-resnet" / "golden_logits.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def golden_inputs(shared_root, golden):
    # Decoded here with the project's decoder; the reference logits came from PyTorch + Pillow.
    images = np.stack([decode_image(shared_root / "data" / "cifar10-jpeg" / p) for p in golden["paths"]])
    assert images.shape == (80, 32, 32, 3) and images.dtype == np.uint8
    return normalize(images)


def jitted_forward(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)), state


def test_normalisation_constants_match_the_reference(golden):
    np.testing.assert_allclose(CIFAR_MEAN, golden["normalize_mean"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(CIFAR_STD, golden["normalize_std"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("depth", DEPTHS)
def test_pretrained_resnet_reproduces_golden_logits(depth, golden, golden_inputs):
    model = load_pretrained(f"resnet{depth}")
    forward, state = jitted_forward(model)
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(forward(state, golden_inputs))
    reference = golden[f"resnet{depth}"]
    assert logits.shape == reference.shape == (80, 10)
    assert np.max(np.abs(logits - reference)) <= 1e-4
    # Sanity on the data itself: most of these test images are classified correctly.
    assert np.mean(logits.argmax(-1) == golden["labels"]) > 0.7


def test_golden_paths_are_the_first_eight_files_of_each_class(golden, shared_root):
    test_dir = shared_root / "data" / "cifar10-jpeg" / "test"
    classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    expected = [f"test/{c}/{f.name}" for c in classes for f in sorted((test_dir / c).iterdir())[:8]]
    assert list(golden["paths"]) == expected
    np.testing.assert_array_equal(golden["labels"], np.repeat(np.arange(10), 8))


def test_resnet_structure_follows_the_reference(resnet20_state):
    model = CifarResNet(20, rngs=nnx.Rngs(0))
    assert [len(s) for s in model.stages] == [3, 3, 3]
    first2, first3 = model.layer2[0], model.layer3[0]
    assert (first2.stride, first2.in_planes, first2.planes, first2.option_a_shortcut) == (2, 16, 32, True)
    assert (first3.stride, first3.in_planes, first3.planes, first3.option_a_shortcut) == (2, 32, 64, True)
    assert not any(b.option_a_shortcut for b in model.layer1)
    assert model.conv1.kernel.get_value().shape == (3, 3, 3, 16)  # HWIO
    assert model.layer2[0].conv1.bias is None
    assert model.bn1.epsilon == 1e-5
    # Trainable parameters equal those of the published checkpoint (about 0.27M).
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    assert n_params == sum(v.size for k, v in resnet20_state.items() if not k.endswith(statistics))


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    x = jnp.arange(2 * 4 * 4 * 16, dtype=jnp.float32).reshape(2, 4, 4, 16)
    out = np.asarray(option_a_shortcut(x, 8))
    assert out.shape == (2, 2, 2, 32)
    np.testing.assert_array_equal(out[..., 8:24], np.asarray(x)[:, ::2, ::2, :])
    assert not out[..., :8].any() and not out[..., 24:].any()


def test_batchnorm_running_stats_follow_pytorch_momentum():
    model = CifarResNet(8, rngs=nnx.Rngs(0))  # smallest 6n+2 depth: the stem is what is checked
    model.train()
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3), jnp.float32)
    pre = np.asarray(model.conv1(x), np.float64)
    model(x)
    # PyTorch momentum 0.1: new = 0.9 * old (zeros) + 0.1 * batch mean.
    np.testing.assert_allclose(model.bn1.mean.get_value(), 0.1 * pre.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    model.eval()
    assert model.bn1.use_running_average


def test_unknown_model_name_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="model name") as info:
        build_model("resnet18", rngs=nnx.Rngs(0))
    assert "resnet18" in str(info.value) and all(n in str(info.value) for n in MODEL_NAMES)
    with pytest.raises(ValueError, match="depth"):
        CifarResNet(21, rngs=nnx.Rngs(0))


def test_weights_of_another_depth_are_rejected(shared_root):
    model = CifarResNet(56, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ResNet-20 .*model is ResNet-56"):
        load_pytorch_npz(model, shared_root / "models" / "cifar10-resnet" / "resnet20.npz")
    with pytest.raises(ValueError, match=r"ResNet-56 .*model is ResNet-20"):
        load_pytorch_npz(CifarResNet(20, rngs=nnx.Rngs(0)), shared_root / "models" / "cifar10-resnet" / "resnet56.npz")


@pytest.fixture()
def resnet20_state(shared_root):
    with np.load(shared_root / "models" / "cifar10-resnet" / "resnet20.npz") as data:
        return {k: data[k] for k in data.files}


def test_missing_entry_is_named_with_its_shape(tmp_path, resnet20_state):
    del resnet20_state["layer2.1.conv2.weight"]
    np.savez(tmp_path / "w.npz", **resnet20_state)
    with pytest.raises(ValueError, match=r"missing.*'layer2\.1\.conv2\.weight' \(expected shape \(32, 32, 3, 3\)\)"):
        load_pytorch_npz(CifarResNet(20, rngs=nnx.Rngs(0)), tmp_path / "w.npz")


def test_extra_entry_is_named_with_its_shape(tmp_path, resnet20_state):
    resnet20_state["fc.weight"] = np.zeros((10, 64), np.float32)
    resnet20_state["module.bn1.num_batches_tracked"] = np.asarray(3)  # ignored, as in PyTorch checkpoints
    np.savez(tmp_path / "w.npz", **resnet20_state)
    with pytest.raises(ValueError, match=r"unexpected.*'fc\.weight' \(shape \(10, 64\)"):
        load_pytorch_npz(CifarResNet(20, rngs=nnx.Rngs(0)), tmp_path / "w.npz")


def test_misshaped_entry_is_named_with_both_shapes_and_nothing_is_loaded(tmp_path, resnet20_state):
    resnet20_state["linear.weight"] = np.zeros((100, 64), np.float32)
    np.savez(tmp_path / "w.npz", **resnet20_state)
    model = CifarResNet(20, rngs=nnx.Rngs(0))
    before = np.asarray(model.conv1.kernel.get_value()).copy()
    with pytest.raises(ValueError, match=r"'linear\.weight' has shape \(100, 64\), expected \(10, 64\)"):
        load_pytorch_npz(model, tmp_path / "w.npz")
    np.testing.assert_array_equal(model.conv1.kernel.get_value(), before)


def test_unreadable_or_absent_weights_file(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz"):
        load_pytorch_npz(CifarResNet(20, rngs=nnx.Rngs(0)), tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_pytorch_npz(CifarResNet(20, rngs=nnx.Rngs(0)), tmp_path / "nope.npz")


def test_pytorch_layout_conversion_matches_a_direct_cross_correlation(resnet20_state):
    """conv1 in PyTorch semantics (OIHW cross-correlation, zero padding 1), computed with numpy."""
    model = CifarResNet(20, rngs=nnx.Rngs(0))
    from jaxsparse.models import load_pytorch_state_dict

    load_pytorch_state_dict(model, resnet20_state)
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 6, 6, 3), jnp.float32))
    w = resnet20_state["conv1.weight"].astype(np.float64)  # (16, 3, 3, 3)
    padded = np.pad(x[0].astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    expected = np.zeros((6, 6, 16))
    for i in range(6):
        for j in range(6):
            expected[i, j] = np.einsum("hwc,ochw->o", padded[i : i + 3, j : j + 3], w)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model.conv1(jnp.asarray(x)))[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(model.linear.kernel.get_value(), resnet20_state["linear.weight"].T)


def test_vgg16_structure_and_pytorch_round_trip(tmp_path):
    model = VGG16(rngs=nnx.Rngs(0))
    assert [u.planes for u in model.features] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert [i for i, u in enumerate(model.features) if u.pool_after] == [1, 3, 6, 9, 12]
    assert (model.classifier.in_features, model.classifier.out_features) == (512, 10)
    keys = pytorch_parameter_map(model)
    # nn.Sequential indices of the common CIFAR VGG code: conv, bn, relu per unit; one index per max-pool.
    assert "features.0.weight" in keys and "features.1.running_var" in keys and "features.7.weight" in keys
    assert "features.41.weight" in keys and "classifier.bias" in keys
    # Random, non-trivial BatchNorm statistics so the round trip is a real check.
    for i, unit in enumerate(model.features):
        unit.bn.mean.set_value(jnp.full((unit.planes,), 0.01 * i, jnp.float32))
        unit.bn.var.set_value(jnp.full((unit.planes,), 1.0 + 0.1 * i, jnp.float32))
    save_pytorch_npz(model, tmp_path / "vgg.npz")
    other = nnx.clone(model)  # a second init would cost seconds; zeroing makes the load meaningful
    for variable, _ in pytorch_parameter_map(other).values():
        variable.set_value(jnp.zeros_like(variable.get_value()))
    load_pytorch_npz(other, tmp_path / "vgg.npz")
    for key, value in to_pytorch_state_dict(model).items():
        np.testing.assert_array_equal(to_pytorch_state_dict(other)[key], value)
    other.eval()
    # Shape inference only (no compilation): five 2x2 pools take 32x32 to the 512-d classifier input.
    logits = jax.eval_shape(other, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert logits.shape == (1, 10)


def test_vgg16_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="vgg16"):
        load_pretrained("vgg16")
