"""The per-layer record means the same on both sides: ``hwmodel.workload.model_layers`` (a stated
density profile on CIFAR shapes) against ``describe_layers`` of the same architecture built by
jaxsparse, decomposed and pruned to exactly that profile, field by field."""

import numpy as np
import pytest
from flax import nnx

from hwmodel.workload import DENSITY_PROFILE, model_layers, workload_from_layers
from jaxsparse.models import build_model
from jaxsparse.penni.count import describe_layers
from jaxsparse.penni.layers import DecomposedConv, decompose_model, iter_layers
from runkit.layer_record import DESCRIBED_KEYS

# what an unmeasured float model reports: every activation counted, 32-bit values
FLOAT_PROFILE = {"act_density_input": 1.0, "act_density": 1.0, "act_density_late": 1.0, "coef_bits": 32, "basis_bits": 32, "weight_bits": 32}


def _prune_to(layer: DecomposedConv, density: float) -> None:
    """Keep ``density * c_in * d`` coefficients in every output channel, cycling so that every
    (input channel, basis kernel) pair is read by some channel (the profile's assumption)."""
    c_in, c_out, d = layer.coefficients.shape
    per_channel = density * c_in * d
    assert per_channel == round(per_channel) and c_out * per_channel >= c_in * d, "profile density must be exact here"
    keep = np.zeros((c_out, c_in * d), bool)
    for o in range(c_out):
        keep[o, (o * int(per_channel) + np.arange(int(per_channel))) % (c_in * d)] = True
    mask = keep.reshape(c_out, c_in, d).transpose(1, 0, 2)
    layer.coefficients[...] = np.where(mask, 1.0, 0.0).astype(np.float32)


@pytest.mark.parametrize("name", ["resnet20", "vgg16"])
def test_model_layers_agrees_with_describe_layers(name):
    stated = model_layers(name, FLOAT_PROFILE)
    model = build_model(name, rngs=nnx.Rngs(0))
    decompose_model(model, DENSITY_PROFILE["basis"])
    by_name = {r["name"]: r for r in stated}
    for path, layer in iter_layers(model, DecomposedConv):
        _prune_to(layer, by_name[path]["coef_density"])
    described = describe_layers(model)
    assert [r["name"] for r in described] == [r["name"] for r in stated]
    for ours, theirs in zip(described, stated):
        assert tuple(ours) == tuple(theirs) == DESCRIBED_KEYS
        for key in DESCRIBED_KEYS:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12), (ours["name"], key)
    # hence the hardware model sees one workload
    for a, b in zip(workload_from_layers(described), workload_from_layers(stated)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
