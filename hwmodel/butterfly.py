"""Functional inverse-butterfly (compaction) and butterfly (expansion) networks.

An N-lane network (N a power of two) has ``log2 N`` stages of ``N/2`` 2x2 switches. In
stage ``s`` a switch joins the lanes ``j`` and ``j + 2**s`` (``j`` with bit ``s`` clear)
and is either *straight* or *crossed*. The **inverse butterfly** runs the stages
``s = 0, 1, ..., log2 N - 1`` (least significant bit first); the **butterfly** runs the same
switches in the reverse order, undoing it.

Compaction: a lane bitmap marks the valid values; value ``i`` must reach lane
``prefix_sum(bitmap)[i] - 1`` (the valid values, in order, in the first lanes). Routing rule:
after stage ``s`` every value sits in a lane whose bit ``s`` equals bit ``s`` of its
destination, so a switch crosses when its low-lane value wants bit ``s`` = 1 or its high-lane
value wants bit ``s`` = 0. Two values meeting at a switch come from the two halves of one
aligned block of ``2**(s+1)`` source lanes; their destinations are consecutive within the
block, so when they agree on the lower ``s`` bits they differ by exactly ``2**s`` and want
different outputs: the inverse butterfly routes every order-preserving compaction without
conflict. :func:`compaction_routing` counts conflicts anyway so tests can check that claim.

Everything is plain ``jnp`` over leading batch axes: a batch of bitmaps is routed in one
call (``log2 N`` vectorised steps, no loop per bitmap), and ``jax.vmap`` works as well.

Example:
    >>> import jax.numpy as jnp
    >>> bitmap = jnp.array([0, 1, 1, 0, 0, 0, 1, 0], bool)
    >>> packed, count = compact(jnp.arange(8), bitmap)
    >>> packed[:int(count)].tolist()
    [1, 2, 6]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from runkit import UsageError


def _num_stages(lanes: int) -> int:
    if lanes < 2 or lanes & (lanes - 1):
        raise UsageError(f"lanes: expected a power of two >= 2, got {lanes}")
    return lanes.bit_length() - 1


def _split_stage(x: jax.Array, stage: int) -> tuple[jax.Array, jax.Array]:
    """View lanes ``[..., N]`` as switch inputs: (low lanes, high lanes), each ``[..., N/2]``."""
    lanes = x.shape[-1]
    blocks = x.reshape(*x.shape[:-1], lanes >> (stage + 1), 2, 1 << stage)
    half = (*x.shape[:-1], lanes // 2)
    return blocks[..., 0, :].reshape(half), blocks[..., 1, :].reshape(half)


def _join_stage(low: jax.Array, high: jax.Array, stage: int) -> jax.Array:
    lanes = 2 * low.shape[-1]
    shape = (*low.shape[:-1], lanes >> (stage + 1), 1, 1 << stage)
    return jnp.concatenate([low.reshape(shape), high.reshape(shape)], axis=-2).reshape(*low.shape[:-1], lanes)


def _switch_stage(x: jax.Array, cross: jax.Array, stage: int) -> jax.Array:
    low, high = _split_stage(x, stage)
    return _join_stage(jnp.where(cross, high, low), jnp.where(cross, low, high), stage)


class Routing(NamedTuple):
    """Switch settings of a compaction.

    Attributes:
      cross: ``bool[..., log2 N, N/2]``; ``cross[..., s, i]`` is the setting of switch ``i`` of
        stage ``s`` (switch ``i`` joins the ``i``-th low lane, in lane order, and its partner).
      conflicts: ``int32[...]``; switches whose two inputs wanted the same output (always 0
        for compactions; kept as a checkable invariant).
      count: ``int32[...]``; number of valid lanes.
    """

    cross: jax.Array
    conflicts: jax.Array
    count: jax.Array


def compaction_routing(bitmap: jax.Array) -> Routing:
    """Switch settings that compact the valid lanes of ``bitmap`` (``bool[..., N]``) in order.

    Args:
      bitmap: valid-lane masks, any leading batch shape; ``N`` a power of two.

    Returns:
      A :class:`Routing`.

    Example:
        >>> r = compaction_routing(jnp.array([[1, 0, 1, 1]], bool))
        >>> r.cross.shape, int(r.conflicts[0]), int(r.count[0])
        ((1, 2, 2), 0, 3)
    """
    bitmap = jnp.asarray(bitmap, bool)
    stages = _num_stages(bitmap.shape[-1])
    dest = jnp.cumsum(bitmap.astype(jnp.int32), axis=-1) - 1
    valid = bitmap
    settings = []
    conflicts = jnp.zeros(bitmap.shape[:-1], jnp.int32)
    for s in range(stages):
        d_lo, d_hi = _split_stage(dest, s)
        v_lo, v_hi = _split_stage(valid, s)
        bit_lo = ((d_lo >> s) & 1) == 1
        bit_hi = ((d_hi >> s) & 1) == 1
        cross = (v_lo & bit_lo) | (v_hi & ~bit_hi)
        conflicts = conflicts + jnp.sum(v_lo & v_hi & (bit_lo == bit_hi), axis=-1, dtype=jnp.int32)
        settings.append(cross)
        dest = _switch_stage(dest, cross, s)
        valid = _switch_stage(valid, cross, s)
    return Routing(jnp.stack(settings, axis=-2), conflicts, jnp.sum(bitmap, axis=-1, dtype=jnp.int32))


def inverse_butterfly(values: jax.Array, cross: jax.Array) -> jax.Array:
    """Move ``values[..., N]`` through the inverse butterfly (stages LSB first) set by ``cross``."""
    for s in range(cross.shape[-2]):
        values = _switch_stage(values, cross[..., s, :], s)
    return values


def butterfly(values: jax.Array, cross: jax.Array) -> jax.Array:
    """Move ``values[..., N]`` through the butterfly (stages MSB first): the inverse of :func:`inverse_butterfly`."""
    for s in reversed(range(cross.shape[-2])):
        values = _switch_stage(values, cross[..., s, :], s)
    return values


def compact(values: jax.Array, bitmap: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gather the valid lanes of ``values`` into the first lanes, in order, through the network.

    Returns:
      ``(packed, count)``: ``packed[..., :count]`` are the valid values; lanes from ``count``
      on are zero.
    """
    routing = compaction_routing(bitmap)
    moved = inverse_butterfly(jnp.where(bitmap, values, jnp.zeros_like(values)), routing.cross)
    return moved, routing.count


def expand(packed: jax.Array, bitmap: jax.Array) -> jax.Array:
    """Scatter ``packed[..., :popcount(bitmap)]`` back to the valid lanes of ``bitmap`` (butterfly network).

    Example:
        >>> expand(jnp.array([7, 8, 0, 0]), jnp.array([0, 1, 0, 1], bool)).tolist()
        [0, 7, 0, 8]
    """
    routing = compaction_routing(bitmap)
    lanes = packed.shape[-1]
    lane_index = jnp.arange(lanes, dtype=jnp.int32).reshape((1,) * routing.count.ndim + (lanes,))
    in_range = lane_index < routing.count[..., None]
    moved = butterfly(jnp.where(in_range, packed, jnp.zeros_like(packed)), routing.cross)
    return jnp.where(bitmap, moved, jnp.zeros_like(moved))


class Match(NamedTuple):
    """Result of two-sided matching (see :func:`match_pairs`).

    Attributes:
      coefficients, activations: ``[..., max_passes, M]`` operand pairs, pass by pass.
      valid: ``bool[..., max_passes, M]``; which multiplier slots hold a real pair.
      matches: ``int32[...]``; number of lanes where both operands are non-zero.
      passes: ``int32[...]``; multiplier passes needed, ``ceil(matches / M)``.
    """

    coefficients: jax.Array
    activations: jax.Array
    valid: jax.Array
    matches: jax.Array
    passes: jax.Array


def match_pairs(coefficients: jax.Array, activations: jax.Array, coef_bitmap: jax.Array, act_bitmap: jax.Array, multipliers: int) -> Match:
    """Route exactly the pairs with a non-zero coefficient *and* a non-zero activation to ``M`` multipliers.

    The AND of the two bitmaps drives one compaction routing; both operand vectors go
    through identically configured inverse butterflies, so pair ``i`` lands in lane ``i`` on
    both sides. Lanes are then handed to the ``M`` multipliers ``M`` at a time.

    Args:
      coefficients, activations: ``[..., N]`` operand lanes.
      coef_bitmap, act_bitmap: ``bool[..., N]`` non-zero masks.
      multipliers: ``M``, multipliers fed per pass (``1 <= M``).

    Returns:
      A :class:`Match`; ``sum(coefficients * activations * valid)`` is the dot product.

    Example:
        >>> w = jnp.array([1., 0., 2., 3.]); a = jnp.array([5., 6., 0., 7.])
        >>> m = match_pairs(w, a, w != 0, a != 0, multipliers=1)
        >>> int(m.matches), int(m.passes), float((m.coefficients * m.activations).sum())
        (2, 2, 26.0)
    """
    if multipliers < 1:
        raise UsageError(f"multipliers: expected an integer >= 1, got {multipliers}")
    both = jnp.asarray(coef_bitmap, bool) & jnp.asarray(act_bitmap, bool)
    routing = compaction_routing(both)
    lanes = both.shape[-1]
    max_passes = -(-lanes // multipliers)
    pad = max_passes * multipliers - lanes

    def to_passes(x: jax.Array) -> jax.Array:
        x = inverse_butterfly(jnp.where(both, x, jnp.zeros_like(x)), routing.cross)
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
        return x.reshape(*x.shape[:-1], max_passes, multipliers)

    slot = jnp.arange(max_passes * multipliers, dtype=jnp.int32).reshape((1,) * routing.count.ndim + (max_passes, multipliers))
    valid = slot < routing.count[..., None, None]
    passes = (routing.count + (multipliers - 1)) // multipliers
    return Match(to_passes(coefficients), to_passes(activations), valid, routing.count, passes)
