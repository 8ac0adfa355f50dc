"""Per-layer description: keys, shapes, and counts checked against independent arithmetic."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsparse.models import build_model
from jaxsparse.penni.count import LAYER_KEYS, describe_layers, summarize
from jaxsparse.penni.layers import DecomposedConv, decompose_model, iter_layers


def test_dense_resnet20_counts():
    model = build_model("resnet20", rngs=nnx.Rngs(0))
    records = describe_layers(model)
    assert all(tuple(r) == LAYER_KEYS for r in records)
    json.dumps(records)
    params = sum(int(np.size(p)) for path, p in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
                 if "bn" not in jax.tree_util.keystr(path))
    assert summarize(records)["params"] == params
    by_name = {r["name"]: r for r in records}
    first_down = by_name["layer2.0.conv1"]
    assert (first_down["h_in"], first_down["h_out"], first_down["stride"]) == (32, 16, 2)
    assert first_down["macs_dense"] == 16 * 16 * 16 * 32 * 9
    assert by_name["linear"]["macs_dense"] == 64 * 10 and by_name["linear"]["kind"] == "linear"
    assert len(records) == 20


def test_decomposed_sparse_counts_and_activation_density():
    model = build_model("resnet20", rngs=nnx.Rngs(1))
    decompose_model(model, 5)
    layer = model.layer1[0].conv2
    c = np.array(layer.coefficients[...])
    c[:, :, 1] = 0  # basis kernel 1 unused
    c[:8] = 0  # input channels 0..7 unused
    layer.coefficients[...] = jnp.asarray(c)
    model.eval()
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    record = {r["name"]: r for r in describe_layers(model, images)}["layer1.0.conv2"]
    nnz = int(np.count_nonzero(c))
    assert record["basis"] == 5 and record["coef_density"] == nnz / c.size
    assert record["params"] == 5 * 9 + nnz
    assert record["macs_decomposed"] == 32 * 32 * (16 * 5 * 9 + 16 * 5 * 16)
    assert record["macs_sparse"] == 32 * 32 * (8 * 4 * 9 + nnz)
    assert np.allclose(record["coef_density_per_out_channel"], (c != 0).sum(axis=(0, 2)) / (16 * 5))
    # its input follows a ReLU: measured density strictly inside (0, 1)
    assert 0.0 < record["act_density"] < 1.0
    assert record["coef_bits"] == 32 and record["weight_bits"] == 0
    assert sum(1 for _ in iter_layers(model, DecomposedConv)) == 19
