"""Per-layer description: keys, shapes, and counts checked against independent arithmetic."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsparse.models import build_model
from jaxsparse.penni.count import describe_layers, summarize
from jaxsparse.penni.layers import DecomposedConv, decompose_model, iter_layers
from runkit.layer_record import DESCRIBED_KEYS


def test_dense_resnet20_counts():
    model = build_model("resnet20", rngs=nnx.Rngs(0))
    records = describe_layers(model)
    assert all(tuple(r) == DESCRIBED_KEYS for r in records)
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
    c[:, 3] = 0  # output channel 3 dead
    layer.coefficients[...] = jnp.asarray(c)
    linear = np.array(model.linear.kernel[...])  # (64, 10)
    linear[:40, 2] = 0
    linear[:, 7] = 0  # class 7 dead
    model.linear.kernel[...] = jnp.asarray(linear)
    model.eval()
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    record = {r["name"]: r for r in describe_layers(model, images)}["layer1.0.conv2"]
    nnz = int(np.count_nonzero(c))
    assert record["basis"] == 5 and record["coef_density"] == nnz / c.size
    assert record["params"] == 5 * 9 + nnz
    # coefficient-first: a 1x1 combination at input resolution into c_out * d maps, then the basis per map
    assert record["macs_decomposed"] == 32 * 32 * 16 * 5 * 16 + 32 * 32 * 16 * 5 * 9
    assert record["macs_sparse"] == 32 * 32 * (8 * 4 * 9 + nnz)
    assert np.allclose(record["coef_density_per_out_channel"], (c != 0).sum(axis=(0, 2)) / (16 * 5))
    assert record["live_out_fraction"] == 15 / 16
    # its input follows a ReLU: measured density strictly inside (0, 1)
    assert 0.0 < record["act_density"] < 1.0
    assert record["coef_bits"] == 32 and record["weight_bits"] == 0
    records = {r["name"]: r for r in describe_layers(model)}
    down = records["layer2.0.conv1"]  # stride 2: the coefficient stage runs on the 32x32 input, the basis on 16x16
    assert down["macs_decomposed"] == 32 * 32 * 16 * 5 * 32 + 16 * 16 * 32 * 5 * 9
    # a plain layer's densities are those of its weights
    fc = records["linear"]
    assert fc["basis"] == 0 and fc["coef_density"] == (640 - 40 - 64) / 640
    assert np.allclose(fc["coef_density_per_out_channel"], (linear != 0).mean(axis=0)) and fc["live_out_fraction"] == 9 / 10
    assert fc["params"] == int(np.count_nonzero(linear)) + 10 and fc["macs_sparse"] == round(64 * 10 * fc["coef_density"])
    assert sum(1 for _ in iter_layers(model, DecomposedConv)) == 19
