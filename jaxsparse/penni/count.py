"""Stage 7, *Count*: parameters, MACs, densities and bit widths, per layer, as plain data.

:func:`describe_layers` returns one :class:`runkit.layer_record.LayerRecord` per conv/linear
layer, in forward order, with the keys :data:`runkit.layer_record.DESCRIBED_KEYS`: the
interface the hardware model consumes. Units and conventions (which density is which, which
MAC count is coefficient-first and which basis-first, the bit widths a layer does not use)
are documented once, in :mod:`runkit.layer_record`. Here: ``act_density`` is measured when
images are given, else 1.0; an unquantized layer reports 32-bit widths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsparse.penni.layers import DecomposedConv, iter_layers, set_by_path
from runkit.layer_record import DESCRIBED_KEYS, LayerRecord, live_out_fraction


class _Recorder:
    def __init__(self, measure: bool):
        self.seen: dict[str, dict] = {}
        self.measure = measure  # count non-zero inputs (a concrete pass) or only record shapes (an abstract one)


class _Probe(nnx.Module):
    """Stands in for a layer during one forward pass and records its input/output shapes and input density."""

    def __init__(self, inner, recorder: _Recorder, name: str):
        self.inner = inner
        self.recorder = recorder
        self.name = name

    def __call__(self, x, *args, **kwargs):
        y = self.inner(x, *args, **kwargs)
        entry = self.recorder.seen.setdefault(self.name, {"shape_in": x.shape, "shape_out": y.shape, "count": 0})
        if self.recorder.measure:
            entry["nonzero"] = entry.get("nonzero", 0) + jnp.sum(x != 0, dtype=jnp.float32)  # traced: returned by the pass
            entry["count"] += int(np.prod(x.shape))
        return y


def _record(model: nnx.Module, images: jax.Array, *, measure: bool) -> dict[str, dict]:
    """Each layer's input and output shapes (and, with ``measure``, its inputs' non-zeros) from one forward
    pass, traced once: compiled as a whole with ``measure`` (the counts are its outputs), only abstract
    (:func:`jax.eval_shape`) without."""
    layers = [(p, layer) for p, layer in iter_layers(model, (DecomposedConv, nnx.Conv, nnx.Linear))]
    recorder = _Recorder(measure)
    for path, layer in layers:
        set_by_path(model, path, _Probe(layer, recorder, path))

    def nonzeros(x):
        model(x)
        return {name: entry["nonzero"] for name, entry in recorder.seen.items()}

    try:
        model.eval()
        if measure:
            for name, value in jax.jit(nonzeros)(images).items():
                recorder.seen[name]["nonzero"] = float(value)
        else:
            jax.eval_shape(lambda x: model(x), images)
    finally:
        for path, layer in layers:
            set_by_path(model, path, layer)
    return dict(recorder.seen)  # in call order: the forward order (graph order may differ, e.g. VGG's classifier)


def _stride(layer) -> int:
    strides = getattr(layer, "strides", 1) or 1
    return int(strides[0]) if isinstance(strides, (tuple, list)) else int(strides)


def describe_layers(model: nnx.Module, images: jax.Array | None = None, *, input_shape=(1, 32, 32, 3)) -> list[LayerRecord]:
    """Per-layer description of ``model`` (keys and conventions: :mod:`runkit.layer_record`).

    Args:
      model: any NNX model built from ``DecomposedConv``, ``nnx.Conv`` and ``nnx.Linear`` layers.
      images: a normalised float batch ``(N, H, W, C)``; when given, ``act_density`` is measured on it.
      input_shape: shape of the zero batch used to trace shapes when ``images`` is None.

    Returns:
      One :class:`~runkit.layer_record.LayerRecord` (a plain JSON-able dict) per layer, in forward order.

    Example:
        >>> from jaxsparse.models import build_model
        >>> records = describe_layers(build_model("resnet20", rngs=nnx.Rngs(0)))
        >>> records[0]["name"], records[0]["macs_dense"], records[-1]["kind"]
        ('conv1', 442368, 'linear')
    """
    measured = images is not None
    x = jnp.asarray(images, jnp.float32) if measured else jnp.zeros(input_shape, jnp.float32)
    seen = _record(model, x, measure=measured)
    layers = dict(iter_layers(model, (DecomposedConv, nnx.Conv, nnx.Linear)))
    records = []
    for path, info in seen.items():
        layer = layers[path]
        shape_in, shape_out = info["shape_in"], info["shape_out"]
        act = info["nonzero"] / max(info["count"], 1) if measured else 1.0
        if isinstance(layer, nnx.Linear):
            kind, h_in, w_in, h_out, w_out, k, stride = "linear", 1, 1, 1, 1, 1, 1
        else:
            kind, (h_in, w_in), (h_out, w_out) = "conv", shape_in[1:3], shape_out[1:3]
            k, stride = int(layer.kernel_size[0]), _stride(layer)
        c_in, c_out = int(layer.in_features), int(layer.out_features)
        pixels = int(h_out) * int(w_out)
        macs_dense = pixels * c_in * c_out * k * k
        if isinstance(layer, DecomposedConv):
            coef = np.asarray(layer.coefficients[...]) != 0  # (c_in, c_out, d)
            d = int(layer.num_basis)
            nnz = int(coef.sum())
            live_pairs = int(coef.any(axis=1).sum())  # (input channel, basis kernel) maps some coefficient reads
            per_out = coef.sum(axis=(0, 2)) / max(c_in * d, 1)
            record = dict(
                basis=d, coef_density=nnz / max(coef.size, 1), coef_bits=layer.coef_bits or 32, basis_bits=layer.basis_bits or 32,
                weight_bits=0, params=d * k * k + nnz,
                macs_decomposed=int(h_in) * int(w_in) * c_in * d * c_out + pixels * c_out * d * k * k,
                macs_sparse=pixels * (live_pairs * k * k + nnz),
            )
        else:
            kernel = np.asarray(layer.kernel[...]) != 0  # (..., c_out)
            density = float(np.mean(kernel)) if kernel.size else 1.0
            per_out = kernel.reshape(-1, c_out).mean(axis=0) if kernel.size else np.ones(c_out)
            bias = int(layer.bias.size) if getattr(layer, "bias", None) is not None and layer.use_bias else 0
            record = dict(
                basis=0, coef_density=density, coef_bits=0, basis_bits=0, weight_bits=32, params=int(kernel.sum()) + bias,
                macs_decomposed=macs_dense, macs_sparse=int(round(macs_dense * density)),
            )
        record.update(
            name=path, kind=kind, h_in=int(h_in), w_in=int(w_in), h_out=int(h_out), w_out=int(w_out), c_in=c_in, c_out=c_out,
            kernel_size=k, stride=stride, act_density=float(act), macs_dense=int(macs_dense),
            coef_density_per_out_channel=[float(v) for v in per_out], live_out_fraction=live_out_fraction(per_out),
        )
        records.append(LayerRecord(**{key: record[key] for key in DESCRIBED_KEYS}))
    return records


def summarize(records: list[dict]) -> dict:
    """Totals over :func:`describe_layers` records: ``params``, ``macs_dense``, ``macs_decomposed``, ``macs_sparse``."""
    return {key: int(sum(r[key] for r in records)) for key in ("params", "macs_dense", "macs_decomposed", "macs_sparse")}
