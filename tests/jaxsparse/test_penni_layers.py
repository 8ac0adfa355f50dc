"""The three forms of a decomposed conv agree; a decomposed model equals its dense origin at d = k*k."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from jaxsparse.penni.layers import FORMS, DecomposedConv, apply_decomposed, decompose_model, get_by_path, iter_layers, path_name, set_form

# One compilation per shape and form (eager calls would compile op by op).
_apply = jax.jit(apply_decomposed, static_argnums=(3, 4, 5))


@given(
    channels=st.sampled_from([(1, 3), (4, 2), (3, 5)]),
    k=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    d_frac=st.sampled_from([0.0, 0.5, 1.0]),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    size=st.sampled_from([5, 8]),
    seed=st.integers(0, 1000),
)
def test_restructured_forms_equal_training_form(channels, k, stride, d_frac, density, size, seed):
    cin, cout = channels
    d = 1 + int(d_frac * (k * k - 1))
    keys = jax.random.split(jax.random.key(seed), 4)
    basis = jax.random.normal(keys[0], (d, k, k))
    coefficients = jax.random.normal(keys[1], (cin, cout, d)) * jax.random.bernoulli(keys[2], density, (cin, cout, d)).astype(jnp.float32)
    x = jax.nn.relu(jax.random.normal(keys[3], (2, size, size, cin)))
    pad = k // 2
    layer = DecomposedConv(basis, coefficients, strides=(stride, stride), padding=((pad, pad), (pad, pad)))
    reference = layer(x, "train")
    np.testing.assert_allclose(_apply(x, basis, coefficients, layer.strides, layer.padding, "train"), reference, rtol=1e-5, atol=1e-5)
    scale = max(float(jnp.max(jnp.abs(reference))), 1e-6)
    for form in FORMS[1:]:
        out = _apply(x, basis, coefficients, layer.strides, layer.padding, form)
        assert out.shape == reference.shape
        assert float(jnp.max(jnp.abs(out - reference))) <= 1e-4 * scale + (0.0 if density > 0 else 1e-7)


def test_decomposed_resnet_matches_dense_at_full_basis():
    from jaxsparse.models import build_model

    model = build_model("resnet20", rngs=nnx.Rngs(0))
    model.eval()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))  # any size works; 8x8 keeps the test fast
    dense = model(x)
    stats = decompose_model(model, 9)
    assert isinstance(model.layer2[0].conv1, DecomposedConv) and len(stats) == 19
    assert model.layer2[0].conv1.strides == (2, 2)
    for form in FORMS:
        set_form(model, form)
        np.testing.assert_allclose(model(x), dense, atol=1e-4 * float(jnp.max(jnp.abs(dense))))


def test_path_name_names_graph_paths_and_parameter_leaves_alike():
    from jaxsparse.models import build_model

    model = nnx.eval_shape(lambda: build_model("resnet20", rngs=nnx.Rngs(0)))
    convs = dict(iter_layers(model, nnx.Conv))
    assert "layer1.0.conv1" in convs and all(get_by_path(model, name) is layer for name, layer in convs.items())
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    names = [path_name(path) for path, _ in leaves]
    # reference: JAX's own simple key string, less the Variable's trailing ".value" when present
    reference = [jax.tree_util.keystr(path, simple=True, separator=".").removesuffix(".value") for path, _ in leaves]
    assert names == reference and "layer1.0.conv1.kernel" in names
    assert {name.rpartition(".")[0] for name in names} >= set(convs)
