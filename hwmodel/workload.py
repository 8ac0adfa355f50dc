"""Per-layer workload descriptions as a batched pytree of arrays.

A workload comes either from the per-layer records a compressed model exports (plain dicts,
also stored under ``"layers"`` in its JSON report; :func:`workload_from_layers`) or from a
CIFAR architecture built here from its shapes plus a stated density profile
(:func:`model_layers`). No training code is imported: the record,
:class:`runkit.layer_record.LayerRecord`, is the interface; its conventions are documented there.

Each layer's sparsity is two numbers given by the record's producer: the coefficient density
over all coefficients and the fraction of *live* output channels (any non-zero value). Dead
output channels are skipped by every sparse design (their rows are empty in the compressed
format), so the sparse engines work on ``c_out * live_out_fraction`` channels at density
``coef_density / live_out_fraction``.

Example:
    >>> layers = model_layers("resnet20")
    >>> wl = workload_from_layers(layers)
    >>> wl.c_out.shape, float(wl.c_out[0])
    ((20,), 16.0)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from runkit import MissingFileError, UsageError, check_choice
from runkit.layer_record import DESCRIBED_KEYS, REQUIRED_KEYS, LayerRecord, live_out_fraction


class Workload(NamedTuple):
    """Layer shapes and sparsity, each field ``float32[L]`` (or ``[]`` for one layer).

    ``basis`` is the number of basis kernels ``d`` (0: the layer is not decomposed and
    ``coef_density`` / ``weight_bits`` describe its plain weights). ``padding`` is the
    zero padding on each side (``(k - 1) // 2`` unless given). Bit widths a layer does not
    use may be given as 0: a plain layer's ``coef_bits`` becomes its ``weight_bits``, and a
    decomposed layer's ``weight_bits`` (the rebuilt kernel the baselines run) becomes
    ``max(coef_bits, basis_bits)``.
    """

    h_in: jax.Array
    w_in: jax.Array
    h_out: jax.Array
    w_out: jax.Array
    c_in: jax.Array
    c_out: jax.Array
    kernel: jax.Array
    stride: jax.Array
    padding: jax.Array
    basis: jax.Array
    coef_density: jax.Array
    live_out_fraction: jax.Array
    act_density: jax.Array
    coef_bits: jax.Array
    basis_bits: jax.Array
    weight_bits: jax.Array
    window_density: jax.Array


def _layer_row(i: int, layer: LayerRecord) -> dict[str, float]:
    where = f"layers[{i}] ({layer.get('name', '?')!r})"
    missing = [k for k in REQUIRED_KEYS if k not in layer]
    if missing:
        raise UsageError(f"{where}: missing keys {missing}; expected all of {list(REQUIRED_KEYS)}")
    check_choice(f"{where}.kind", layer["kind"], ("conv", "linear"))
    row = {}
    for key in ("h_in", "w_in", "h_out", "w_out", "c_in", "c_out", "kernel_size", "stride"):
        value = layer[key]
        if not isinstance(value, (int, float)) or value < 1 or value != int(value):
            raise UsageError(f"{where}.{key}: expected a whole number >= 1, got {value!r}")
        row[key] = float(value)
    basis = layer["basis"]
    if not isinstance(basis, (int, float)) or basis < 0 or basis != int(basis):
        raise UsageError(f"{where}.basis: expected a whole number >= 0, got {basis!r}")
    for key in ("coef_density", "live_out_fraction", "act_density"):
        value = layer[key]
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise UsageError(f"{where}.{key}: expected a density in [0, 1], got {value!r}")
    live = float(layer["live_out_fraction"])
    if layer["coef_density"] > live + 1e-6:
        raise UsageError(f"{where}.coef_density: expected at most live_out_fraction ({live!r}): dead output channels hold no values, got {layer['coef_density']!r}")
    decomposed = basis > 0
    # A width that does not apply to the layer may be 0 (the compression pipeline's convention):
    # weight_bits for decomposed layers, coef_bits/basis_bits for plain ones.
    for key in ("coef_bits", "basis_bits", "weight_bits"):
        value = layer[key]
        applies = key != "weight_bits" if decomposed else key == "weight_bits"
        ok = isinstance(value, (int, float)) and (1 <= value <= 32 or (not applies and value == 0))
        if not ok:
            expected = "a bit width in [1, 32]" + ("" if applies else " (or 0: not used by this layer)")
            raise UsageError(f"{where}.{key}: expected {expected}, got {value!r}")
    per_channel = layer.get("coef_density_per_out_channel")
    if per_channel is not None:
        per_channel = np.asarray(per_channel, np.float64)
        if per_channel.shape != (int(row["c_out"]),):
            raise UsageError(f"{where}.coef_density_per_out_channel: expected length {int(row['c_out'])} (c_out), got shape {per_channel.shape}")
        if np.any(per_channel < 0) or np.any(per_channel > 1):
            raise UsageError(f"{where}.coef_density_per_out_channel: expected densities in [0, 1]")
        if abs(live_out_fraction(per_channel) - live) > 1e-6:
            raise UsageError(f"{where}.live_out_fraction: expected the fraction of non-zero coef_density_per_out_channel ({live_out_fraction(per_channel)!r}), got {live!r}")
    # A plain layer's weights run through the sparse engine as its coefficients; the baselines run a
    # decomposed layer's rebuilt kernel (W = C.B) stored at the wider of its two precisions.
    coef_bits = layer["coef_bits"] if decomposed or layer["coef_bits"] else layer["weight_bits"]
    weight_bits = layer["weight_bits"] or max(layer["coef_bits"], layer["basis_bits"])
    k = row["kernel_size"]
    return {
        "h_in": row["h_in"], "w_in": row["w_in"], "h_out": row["h_out"], "w_out": row["w_out"],
        "c_in": row["c_in"], "c_out": row["c_out"], "kernel": k, "stride": row["stride"],
        "padding": float(layer.get("padding", (int(k) - 1) // 2)),
        "basis": float(basis), "coef_density": float(layer["coef_density"]), "live_out_fraction": live,
        "act_density": float(layer["act_density"]), "coef_bits": float(coef_bits),
        "basis_bits": float(layer["basis_bits"]) if decomposed else 0.0, "weight_bits": float(weight_bits),
        "window_density": _optional_density(where, layer, "act_window_density"),
    }


def _optional_density(where: str, layer: dict[str, Any], key: str) -> float:
    value = layer.get(key)
    if value is None:
        return -1.0
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UsageError(f"{where}.{key}: expected a density in [0, 1], got {value!r}")
    return float(value)


def workload_from_layers(layers: list[LayerRecord]) -> Workload:
    """Build a batched :class:`Workload` from per-layer records (validated, with clear errors).

    Args:
      layers: :class:`~runkit.layer_record.LayerRecord` dicts: the keys of
        :data:`~runkit.layer_record.REQUIRED_KEYS` (``coef_density_per_out_channel``, checked
        against ``live_out_fraction`` when given, ``padding``, ``act_window_density`` and the
        MAC/parameter counts are optional).

    Returns:
      A :class:`Workload` whose fields have shape ``[len(layers)]``.
    """
    if not isinstance(layers, (list, tuple)) or not layers:
        raise UsageError(f"layers: expected a non-empty list of layer dicts, got {type(layers).__name__} of length {len(layers) if hasattr(layers, '__len__') else '?'}")
    rows = [_layer_row(i, layer) for i, layer in enumerate(layers)]
    return Workload(**{f: jnp.asarray([r[f] for r in rows], jnp.float32) for f in Workload._fields})


def layer_names(layers: list[dict[str, Any]]) -> list[str]:
    return [str(layer.get("name", f"layer{i}")) for i, layer in enumerate(layers)]


#: What changed in :mod:`runkit.layer_record` since the records that :func:`load_layers` refuses were written.
RECORD_VERSION_NOTE = "runkit.layer_record: 'live_out_fraction' is required and 'macs_decomposed' counts coefficient-first"


def load_layers(path: str | Path) -> list[dict[str, Any]]:
    """Read the per-layer list from a JSON report (key ``"layers"``) or a bare JSON list.

    Records written before :mod:`runkit.layer_record` required ``live_out_fraction`` (and
    counted ``macs_decomposed`` basis-first) are refused with a message saying how to
    regenerate the file: their meaning cannot be recovered exactly from what they hold.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"workload: file not found: {str(path)!r}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"workload {str(path)!r}: invalid JSON: {error}") from None
    if isinstance(data, dict):
        if "layers" not in data:
            raise UsageError(f"workload {str(path)!r}: expected a JSON list of layers or an object with key 'layers', got keys {sorted(data)[:10]}")
        data = data["layers"]
    layers = list(data)
    old = [i for i, layer in enumerate(layers) if isinstance(layer, dict) and "live_out_fraction" not in layer]
    if old:
        name = layers[old[0]].get("name", "?")
        raise UsageError(
            f"workload {str(path)!r}: layers[{old[0]}] ({name!r}) and {len(old) - 1} more have no 'live_out_fraction': the file "
            f"predates the current layer record ({RECORD_VERSION_NOTE}), so its 'macs_decomposed' also means something else. "
            f"Regenerate it with the command that wrote it (a compress run's report.json: python -m jaxsparse compress ...; "
            f"benchmarks/results/penni_cifar_*.json: python benchmarks/penni_cifar.py --model <model>)")
    return layers


# A stated density profile for models without a compressed report. Coefficient densities
# follow the shape PENNI reports (early layers keep more, late wide layers far less);
# activation densities are typical post-ReLU densities of CIFAR ResNets/VGG (about half of
# the activations are zero, more in deep layers). Bits: 4-bit coefficients, 8-bit basis,
# 8-bit plain weights and activations.
DENSITY_PROFILE = {
    "coef_density_first": 0.6,   # first conv (3 input channels)
    "coef_density_early": 0.35,  # 16/64-channel stage
    "coef_density_mid": 0.25,    # 32/128-256-channel stage
    "coef_density_late": 0.15,   # 64/512-channel stage
    "act_density_input": 1.0,    # the image
    "act_density": 0.5,          # post-ReLU
    "act_density_late": 0.4,
    "basis": 5,
    "coef_bits": 4,
    "basis_bits": 8,
    "weight_bits": 8,
}

MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "vgg16")


def _conv(name, h_in, c_in, c_out, stride, coef_density, act_density, *, kernel=3, profile=DENSITY_PROFILE, kind="conv") -> LayerRecord:
    """One record with the conventions of :mod:`runkit.layer_record`: every output channel holds
    ``coef_density`` of its values (so all are live when it is above 0), every (input channel,
    basis kernel) map is read; a plain layer (1x1 here: the classifier) has a bias."""
    h_out = (h_in + 2 * ((kernel - 1) // 2) - kernel) // stride + 1
    d = profile["basis"] if kernel > 1 else 0
    pixels = h_out * h_out
    macs_dense = pixels * c_out * c_in * kernel * kernel
    per_out = [coef_density] * c_out
    if d:
        nnz = round(coef_density * c_in * d * c_out)
        live_pairs = c_in * d if nnz else 0
        counts = {
            "coef_bits": profile["coef_bits"], "basis_bits": profile["basis_bits"], "weight_bits": 0, "params": d * kernel * kernel + nnz,
            "macs_decomposed": h_in * h_in * c_in * d * c_out + pixels * c_out * d * kernel * kernel,
            "macs_sparse": pixels * (live_pairs * kernel * kernel + nnz),
        }
    else:
        nnz = round(coef_density * c_in * kernel * kernel * c_out)
        counts = {
            "coef_bits": 0, "basis_bits": 0, "weight_bits": profile["weight_bits"], "params": nnz + c_out,
            "macs_decomposed": macs_dense, "macs_sparse": round(macs_dense * coef_density),
        }
    record = {
        "name": name, "kind": kind, "h_in": h_in, "w_in": h_in, "h_out": h_out, "w_out": h_out,
        "c_in": c_in, "c_out": c_out, "kernel_size": kernel, "stride": stride, "basis": d,
        "coef_density": coef_density, "live_out_fraction": live_out_fraction(per_out), "act_density": act_density,
        "coef_density_per_out_channel": per_out, "macs_dense": macs_dense, **counts,
    }
    return LayerRecord(**{key: record[key] for key in DESCRIBED_KEYS})


def model_layers(model: str, profile: dict[str, Any] | None = None) -> list[LayerRecord]:
    """Per-layer records of a CIFAR-10 model (32x32 input) with the :data:`DENSITY_PROFILE`.

    ResNet-(6n+2): conv1 3->16, three stages of ``n`` BasicBlocks (two 3x3 convs each) with
    16/32/64 channels, stride 2 in the first block of stages 2 and 3 (option-A shortcuts,
    which hold no weights), global pooling, linear 64->10. VGG-16: cfg
    ``[64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M]`` on 32x32, linear 512->10.
    Every 3x3 conv is decomposed into ``profile["basis"]`` kernels; the final linear layer is
    kept dense and undecomposed. Layer names are those of the models in
    :mod:`jaxsparse.models` (``layer1.0.conv1``, ``linear``; ``features.0.conv``, ``classifier``).

    Example:
        >>> len(model_layers("resnet56")), len(model_layers("vgg16"))
        (56, 14)
    """
    check_choice("model", model, MODELS)
    p = dict(DENSITY_PROFILE, **(profile or {}))
    layers = []
    if model.startswith("resnet"):
        n = (int(model[len("resnet"):]) - 2) // 6
        layers.append(_conv("conv1", 32, 3, 16, 1, p["coef_density_first"], p["act_density_input"], profile=p))
        size, c_in = 32, 16
        for stage, (width, density) in enumerate(zip((16, 32, 64), (p["coef_density_early"], p["coef_density_mid"], p["coef_density_late"])), start=1):
            act = p["act_density_late"] if stage == 3 else p["act_density"]
            for block in range(n):
                stride = 2 if (stage > 1 and block == 0) else 1
                layers.append(_conv(f"layer{stage}.{block}.conv1", size, c_in, width, stride, density, act, profile=p))
                size //= stride
                layers.append(_conv(f"layer{stage}.{block}.conv2", size, width, width, 1, density, act, profile=p))
                c_in = width
        fc_in = 64
    else:
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
        size, c_in, index = 32, 3, 0
        for item in cfg:
            if item == "M":
                size //= 2
                continue
            if index == 0:
                density, act = p["coef_density_first"], p["act_density_input"]
            elif item <= 128:
                density, act = p["coef_density_early"], p["act_density"]
            elif item == 256:
                density, act = p["coef_density_mid"], p["act_density"]
            else:
                density, act = p["coef_density_late"], p["act_density_late"]
            layers.append(_conv(f"features.{index}.conv", size, c_in, item, 1, density, act, profile=p))
            c_in, index = item, index + 1
        fc_in = 512
    classifier = "linear" if model.startswith("resnet") else "classifier"
    layers.append(_conv(classifier, 1, fc_in, 10, 1, 1.0, p["act_density_late"], kernel=1, profile=p, kind="linear"))
    return layers


def slice_layer(workload: Workload, index: int) -> Workload:
    """One layer of a batched workload (fields become scalars)."""
    return jax.tree.map(lambda x: x[index], workload)
