"""The legal design space of the accelerator search and its continuous relaxation.

A :class:`SearchSpace` lists, per searched parameter, its legal values (sorted, e.g. powers
of two for butterfly lanes, whole numbers for multipliers). Every design point is a vector
of integer *indices* into those lists; the exhaustive grid is their Cartesian product.

Relaxation. An unconstrained real ``theta_d`` per parameter maps to a position
``t_d = (n_d - 1) * sigmoid(theta_d)`` in ``[0, n_d - 1]``; the relaxed value is the
log-linear interpolation between the two neighbouring legal values::

    log v(t) = (1 - f) log v[i] + f log v[i + 1],   i = floor(t), f = t - i

so it equals the legal value at integer positions, is monotone, and stays inside the legal
range whatever ``theta`` is. Rounding goes back to indices (nearest, or every floor/ceil
corner, see :func:`corner_indices`).

Example:
    >>> space = default_space()
    >>> space.size, space.names[:2]
    (51840, ('escalate.pes', 'escalate.lanes'))
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hwmodel.hardware import Hardware, hardware_from_dict, hardware_to_dict
from runkit import UsageError


class Dimension(NamedTuple):
    """One searched parameter: ``section.key`` of the hardware config and its legal values."""

    section: str
    key: str
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


class SearchSpace(NamedTuple):
    """Searched parameters (the rest of the design is taken from a base design)."""

    dims: tuple[Dimension, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(d.values) for d in self.dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.sizes))

    def value_table(self) -> np.ndarray:
        """``float32[D, max_n]`` of the legal values, each row padded with its last value."""
        width = max(self.sizes)
        return np.asarray([list(d.values) + [d.values[-1]] * (width - len(d.values)) for d in self.dims], np.float32)

    def log_table(self) -> np.ndarray:
        """``float32[D, max_n]`` of log legal values (see :meth:`value_table`)."""
        return np.log(self.value_table())


def default_space() -> SearchSpace:
    """PE count, butterfly lanes, multipliers per PE, basis MACs, PE buffer and global buffer.

    ``6 * 6 * 8 * 6 * 5 * 6 = 51,840`` points before the area budget is applied.
    """
    powers = lambda lo, hi: tuple(float(2**i) for i in range(lo, hi + 1))
    return SearchSpace((
        Dimension("escalate", "pes", powers(3, 8)),
        Dimension("escalate", "lanes", powers(2, 7)),
        Dimension("escalate", "multipliers", tuple(float(m) for m in range(1, 9))),
        Dimension("escalate", "basis_macs", powers(4, 9)),
        Dimension("escalate", "pe_buffer_kib", (0.5, 1.0, 2.0, 4.0, 8.0)),
        Dimension("memory", "glb_kib", powers(5, 10)),
    ))


def validate_space(space: SearchSpace, base: Hardware) -> None:
    """Every listed value must be accepted by the hardware validation; values sorted, distinct."""
    config = hardware_to_dict(base)
    for dim in space.dims:
        if dim.section not in config or dim.key not in config[dim.section]:
            raise UsageError(f"search space: unknown parameter {dim.name!r}")
        values = np.asarray(dim.values, np.float64)
        if values.size < 1 or np.any(np.diff(values) <= 0):
            raise UsageError(f"search space: {dim.name} values must be distinct and increasing, got {dim.values}")
        for v in dim.values:
            hardware_from_dict({dim.section: {dim.key: float(v)}})


def _set(base: Hardware, space: SearchSpace, values: jax.Array) -> Hardware:
    parts = {section: getattr(base, section) for section in base._fields}
    for j, dim in enumerate(space.dims):
        section = parts[dim.section]
        parts[dim.section] = section._replace(**{dim.key: jnp.asarray(values[j], jnp.float32)})
    return Hardware(**parts)


def positions(space: SearchSpace, theta: jax.Array) -> jax.Array:
    """Relaxed positions ``t = (n - 1) * sigmoid(theta)`` (``float32[D]``)."""
    top = jnp.asarray(np.asarray(space.sizes, np.float32) - 1.0)
    return top * jax.nn.sigmoid(theta)


def theta_for_positions(space: SearchSpace, t: np.ndarray) -> np.ndarray:
    """Inverse of :func:`positions` (positions are clipped just inside the open range)."""
    top = np.asarray(space.sizes, np.float64) - 1.0
    frac = np.clip(np.asarray(t, np.float64) / np.maximum(top, 1.0), 1e-3, 1.0 - 1e-3)
    return np.log(frac / (1.0 - frac)).astype(np.float32)


def relaxed_values(space: SearchSpace, t: jax.Array) -> jax.Array:
    """Log-linear interpolation of the legal values at real positions ``t`` (``float32[D]``)."""
    table = jnp.asarray(space.log_table())
    sizes = np.asarray(space.sizes)
    low = jnp.clip(jnp.floor(t), 0.0, jnp.asarray(np.maximum(sizes - 2, 0), jnp.float32))
    frac = jnp.clip(t - low, 0.0, 1.0)
    index = low.astype(jnp.int32)
    upper = jnp.minimum(index + 1, jnp.asarray(sizes - 1, jnp.int32))
    rows = jnp.arange(len(space.dims))
    return jnp.exp((1.0 - frac) * table[rows, index] + frac * table[rows, upper])


def relaxed_hardware(space: SearchSpace, base: Hardware, theta: jax.Array) -> Hardware:
    """The design at unconstrained parameters ``theta`` (``float32[D]``), real-valued sizes."""
    return _set(base, space, relaxed_values(space, positions(space, theta)))


def values_at(space: SearchSpace, indices) -> jax.Array:
    """Legal values at integer ``indices`` (``int[..., D]``)."""
    table = jnp.asarray(space.value_table())
    idx = jnp.asarray(indices, jnp.int32)
    rows = jnp.arange(len(space.dims))
    return table[rows, idx]


def hardware_at(space: SearchSpace, base: Hardware, indices) -> Hardware:
    """The legal design at integer ``indices`` (``[D]``, or ``[G, D]`` for a batch)."""
    idx = jnp.asarray(indices, jnp.int32)
    if idx.ndim == 1:
        return _set(base, space, values_at(space, idx))
    return jax.vmap(lambda i: _set(base, space, values_at(space, i)))(idx)


def exact_values(space: SearchSpace, indices) -> dict[str, float]:
    """``{"section.key": value}`` of one index vector, from the listed values (no float drift)."""
    return {d.name: float(d.values[int(i)]) for d, i in zip(space.dims, np.asarray(indices))}


def legal_hardware(space: SearchSpace, base: Hardware, indices) -> Hardware:
    """The design at ``indices`` rebuilt through :func:`~hwmodel.hardware.hardware_from_dict` (validated)."""
    config = hardware_to_dict(base)
    for name, value in exact_values(space, indices).items():
        section, key = name.split(".")
        config[section][key] = value
    hw, _ = hardware_from_dict(config)
    return hw


def nearest_indices(space: SearchSpace, t) -> np.ndarray:
    """Round relaxed positions to the nearest legal index."""
    top = np.asarray(space.sizes) - 1
    return np.clip(np.rint(np.asarray(t, np.float64)), 0, top).astype(np.int32)


def corner_indices(space: SearchSpace, t) -> np.ndarray:
    """Every floor/ceil combination of relaxed positions ``t`` (``int32[<= 2^D, D]``, distinct rows)."""
    t = np.asarray(t, np.float64)
    top = np.asarray(space.sizes) - 1
    options = []
    for j in range(len(space.dims)):
        lo = int(np.clip(np.floor(t[j] + 1e-6), 0, top[j]))
        hi = int(np.clip(np.ceil(t[j] - 1e-6), 0, top[j]))
        options.append(sorted({lo, hi}))
    return np.asarray(list(itertools.product(*options)), np.int32)


def all_indices(space: SearchSpace) -> np.ndarray:
    """The whole grid, ``int32[space.size, D]`` (C order: the last parameter varies fastest)."""
    grids = np.meshgrid(*[np.arange(n) for n in space.sizes], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=-1).astype(np.int32)
