"""Stage 6, *Quantize*: symmetric uniform quantization, fake-quant with a straight-through estimator.

Hybrid precision as in ESCALATE: the coefficients (many, sparse, each used once per
output pixel) get few bits (default 4), the basis kernels (few, reused by every input
channel) get more (default 8). A tensor ``x`` with ``b`` bits is mapped to the grid
``scale * {-(2^(b-1) - 1) .. 2^(b-1) - 1}`` with ``scale = max|x| / (2^(b-1) - 1)``, per
tensor or per channel. Zero stays exactly zero, so pruned coefficients stay pruned.

``bits = 0`` means "not quantized" everywhere in the package.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from runkit import UsageError, check_positive


class QuantizedTensor(NamedTuple):
    """Integer values and the scale that maps them back: ``x ~= values * scale``.

    ``scale`` has the shape of ``values`` with every reduced axis kept as size 1
    (so it broadcasts without rank promotion).
    """

    values: jax.Array
    scale: jax.Array
    bits: int


def _reduce_axes(ndim: int, channel_axis: int | None) -> tuple[int, ...]:
    if channel_axis is None:
        return tuple(range(ndim))
    axis = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != axis)


def quantization_scale(x: jax.Array, bits: int, channel_axis: int | None = None) -> jax.Array:
    """``max|x| / (2^(bits-1) - 1)`` over the tensor (or all axes but ``channel_axis``); 1 where ``x`` is all zero."""
    if bits < 2:
        raise UsageError(f"bits: expected an integer >= 2 for symmetric quantization, got {bits!r}")
    qmax = float(2 ** (bits - 1) - 1)
    amax = jnp.max(jnp.abs(x), axis=_reduce_axes(x.ndim, channel_axis), keepdims=True)
    return jnp.where(amax > 0, amax / qmax, 1.0).astype(x.dtype)


def quantize(x: jax.Array, bits: int, channel_axis: int | None = None) -> QuantizedTensor:
    """Quantize ``x`` to signed ``bits``-bit integers (symmetric, round to nearest).

    Args:
      x: float tensor.
      bits: bit width, >= 2.
      channel_axis: one scale per index of this axis (None: one scale for the tensor).

    Returns:
      :class:`QuantizedTensor` with int8 values (int32 above 8 bits).

    Example:
        >>> q = quantize(jnp.asarray([-1.0, 0.0, 0.5, 1.0]), 4)
        >>> q.values.tolist(), float(q.scale[0])
        ([-7, 0, 4, 7], 0.1428571492433548)
    """
    x = jnp.asarray(x)
    scale = quantization_scale(x, bits, channel_axis)
    qmax = 2 ** (bits - 1) - 1
    values = jnp.clip(jnp.round(x / scale), -qmax, qmax)
    return QuantizedTensor(values.astype(jnp.int8 if bits <= 8 else jnp.int32), scale, bits)


def dequantize(q: QuantizedTensor) -> jax.Array:
    """``values * scale`` as float32."""
    return jnp.asarray(q.values, jnp.float32) * jnp.asarray(q.scale, jnp.float32)


def fake_quant(x: jax.Array, bits: int, channel_axis: int | None = None) -> jax.Array:
    """Quantize-dequantize in the forward pass, identity gradient (straight-through estimator).

    ``bits = 0`` returns ``x`` unchanged.

    Example:
        >>> g = jax.grad(lambda v: jnp.sum(fake_quant(v, 4) * 3.0))(jnp.asarray([0.3, -0.9]))
        >>> g.tolist()
        [3.0, 3.0]
    """
    if bits == 0:
        return x
    check_positive("bits", bits)
    scale = jax.lax.stop_gradient(quantization_scale(x, bits, channel_axis))
    qmax = 2 ** (bits - 1) - 1
    snapped = jnp.clip(jnp.round(x / scale), -qmax, qmax) * scale
    return x + jax.lax.stop_gradient(snapped - x)


def on_grid(x: jax.Array, q: QuantizedTensor, *, rtol: float = 1e-6) -> jax.Array:
    """True when every entry of ``x`` equals ``k * scale`` for an integer ``|k| <= 2^(bits-1) - 1``."""
    ratio = jnp.asarray(x, jnp.float32) / jnp.asarray(q.scale, jnp.float32)
    qmax = 2 ** (q.bits - 1) - 1
    return jnp.all(jnp.abs(ratio - jnp.round(ratio)) <= rtol * jnp.maximum(1.0, jnp.abs(ratio))) & jnp.all(
        jnp.abs(jnp.round(ratio)) <= qmax
    )
