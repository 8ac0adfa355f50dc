"""Lookups routed to the device that owns their row: bucket capacities, exchange volume, per-device routing.

With a ``tw``, ``rw`` or ``twrw`` plan every lookup ``(b, t, l)`` has one owner
device (:meth:`ndp.plan.ShardingPlan.owners`). Device ``s`` holds a slice of
``B / S`` examples of the batch; its lookups form ``S`` buckets, one per owner,
and every owner receives exactly the lookups of its rows. The owner gathers those
rows, sums the lookups of one bag (its partial pool) and an ``all_to_all`` returns
the partial pools, which the sender adds into its ``(B / S, T, D)`` pooled
embeddings. The backward pass sends each bag's gradient to the owners of its rows
the same way. A device therefore gathers, scatters and updates only the rows it
owns, and moves ``O(lookups / S)`` partial pools.

Batches that the host holds (numpy arrays, the same global batch in every
process) are routed on the host in one pass (:func:`host_routes`): every device
receives its buckets directly, so no ids are exchanged and the devices do no
routing work. Batches already on the devices are routed there
(:func:`route_local`: each device buckets its slice and one more ``all_to_all``
exchanges the ids); both give every device the same view (tested).

Buckets need static shapes. :func:`route_capacity` computes, on the host from the
whole batch, the largest number of lookups (and of distinct bags) that any source
device sends to any owner, and rounds it up (at most 25%, so that few distinct
capacities, hence few compilations, occur): a bucket can never overflow, so no
lookup is ever dropped, whatever the skew (a batch owned entirely by one device
gets buckets as large as a device's whole share of the batch).

Example:
    >>> import numpy as np
    >>> from ndp.plan import plan_sharding
    >>> plan = plan_sharding((8,), embedding_dim=4, num_shards=2, kind="rw")   # rows 0-3 on device 0, 4-7 on 1
    >>> ids = np.array([[[0]], [[1]], [[2]], [[7]]], np.int32)                # B=4, T=1, L=1
    >>> route_capacity(plan, ids, np.ones((4, 1), np.int32))                 # device 0 sends 2 lookups to itself
    Capacity(lookups=2, bags=2, one_id=True)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ndp.plan import AXIS, ROUTED_KINDS, ShardingPlan


class Capacity(NamedTuple):
    """Bucket sizes of a routed step, per (source device, owner device) pair.

    Attributes:
      lookups: ids a source device can send to one owner.
      bags: partial pools an owner can return to one source device (``<= lookups``).
      one_id: bags hold at most one id (``L == 1``): a bag's partial pool is its
        lookup's row, so no per-bag sums are formed.
    """

    lookups: int
    bags: int
    one_id: bool = False


def round_capacity(count: int) -> int:
    """``count`` rounded up to ``m * 2**k`` with ``m`` in ``{4, 5, 6, 7}`` (at most 25% more; counts below 8 kept; at least 1).

    Example:
        >>> [round_capacity(c) for c in (0, 3, 9, 100, 1000)]
        [1, 3, 10, 112, 1024]
    """
    count = max(1, int(count))
    grain = 1 << max(count.bit_length() - 3, 0)
    return -(-count // grain) * grain


def routed(plan: ShardingPlan) -> bool:
    """Whether ``plan``'s lookups are routed by all-to-all (several devices, one owner per lookup)."""
    return plan.num_shards > 1 and plan.kind in ROUTED_KINDS


@functools.lru_cache(maxsize=64)
def _owner_arrays(plan: ShardingPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return plan.owners()


class HostRoutes(NamedTuple):
    """Where every lookup of a host batch goes, by source device: the host half of routing.

    Computed in one pass over the global batch by :func:`host_routes`; it gives
    the bucket sizes (:meth:`capacity`) and each device's :class:`Routed` view
    (:meth:`routed`), so a step fed host batches exchanges no ids and routes nothing
    on the devices. Every array is ``(S, N)`` with ``N = B/S * T * L`` (source
    device ``s``'s lookups in ``(b, t, l)`` order).

    Attributes:
      owner: owner device of each lookup (``S`` for a position past its bag's length).
      row: its local slab row on the owner.
      rank: its position among the source's lookups to that owner.
      slot: its bag's position among the source's bags that have lookups on that owner.
      first: whether it is the first lookup of its bag to that owner.
      lookups: ``(S, S)`` lookups from each source to each owner.
      bags: ``(S, S)`` bags from each source with lookups on each owner.
      bag_size: ``L``, id positions per bag.
    """

    owner: np.ndarray
    row: np.ndarray
    rank: np.ndarray
    slot: np.ndarray
    first: np.ndarray
    lookups: np.ndarray
    bags: np.ndarray
    bag_size: int

    def capacity(self) -> Capacity:
        """The smallest rounded bucket sizes (:func:`round_capacity`) that carry this batch."""
        lookups = round_capacity(int(self.lookups.max()))
        if self.bag_size == 1:
            return Capacity(lookups, lookups, True)
        return Capacity(lookups, min(lookups, round_capacity(int(self.bags.max()))), False)

    def routed(self, capacity: Capacity, slab_rows: int) -> Routed:
        """Every device's :class:`Routed` view, stacked: numpy arrays whose leading axis splits
        into ``S`` equal blocks, block ``s`` being device ``s``'s (its ``overflow`` is 0).

        Raises:
          ValueError: when ``capacity`` is smaller than this batch needs.
        """
        s, n = self.owner.shape
        c_l, c_b, one_id = Capacity(*capacity)
        if one_id != (self.bag_size == 1) or self.lookups.max() > c_l or (not one_id and self.bags.max() > c_b):
            raise ValueError(f"capacity: this batch needs at least {self.capacity()}, got {Capacity(*capacity)}")
        rows = np.full(s * s * c_l, slab_rows, np.int32)  # [owner, source, rank]
        slots = np.full(s * n, s * c_l, np.int32) if one_id else np.full(s * s * c_l, c_b, np.int32)
        bags = np.full(s * s * c_b, n // self.bag_size, np.int32)  # [source, owner * C_b + slot]
        _kernels()[1](self.owner, self.row, self.rank, self.slot, self.first, self.bag_size, c_l, c_b, one_id,
                      slab_rows, rows, slots, bags)  # fmt: skip
        return Routed(rows, slots, bags, np.zeros(s, np.int32))


def host_routes(plan: ShardingPlan, ids, lengths) -> HostRoutes:
    """Route a (global, host) batch on the host: owners, bucket ranks and bag slots of every lookup.

    Args:
      plan: a ``tw``, ``rw`` or ``twrw`` plan.
      ids: ``int32 (B, T, L)``, the whole batch as every process holds it.
      lengths: ``int32 (B, T)``.

    Raises:
      ValueError: for an id outside its table (it would be looked up in another
        table's rows), or a batch the devices cannot split evenly.

    Example:
        >>> import numpy as np
        >>> from ndp.plan import plan_sharding
        >>> plan = plan_sharding((8,), embedding_dim=4, num_shards=2, kind="rw")
        >>> routes = host_routes(plan, np.array([[[0]], [[5]], [[2]], [[7]]], np.int32), np.ones((4, 1), np.int32))
        >>> routes.lookups.tolist()   # device 0 sends one lookup to each device; device 1 too
        [[1, 1], [1, 1]]
    """
    ids, lengths = np.ascontiguousarray(ids), np.ascontiguousarray(lengths)
    if not (np.issubdtype(ids.dtype, np.integer) and np.issubdtype(lengths.dtype, np.integer)):
        raise ValueError(f"ids, lengths: expected integer arrays, got {ids.dtype} and {lengths.dtype}")
    batch, tables, cap = ids.shape
    s = plan.num_shards
    if batch % s:
        raise ValueError(f"ids: expected a batch that is a multiple of the {s} devices, got {batch}")
    if tables != plan.num_tables or lengths.shape != (batch, tables):
        raise ValueError(f"ids, lengths: expected (B, {plan.num_tables}, L) and (B, {plan.num_tables}) (the plan's "
                         f"tables), got {ids.shape} and {lengths.shape}")  # fmt: skip
    starts, shards, offsets = _owner_arrays(plan)
    sizes = np.asarray(plan.table_sizes, np.int32)
    n = batch // s * tables * cap
    owner, row, rank, slot = (np.empty((s, n), np.int32) for _ in range(4))
    first = np.empty((s, n), np.bool_)
    lookups, bags = np.zeros((s, s), np.int64), np.zeros((s, s), np.int64)
    bad = _kernels()[0](ids, lengths, sizes, starts, shards, offsets, owner, row, rank, slot, first, lookups, bags)
    if bad >= 0:
        b, t, k = np.unravel_index(bad, ids.shape)
        raise ValueError(f"ids: expected ids of table {t} in [0, {plan.table_sizes[t]}), got {int(ids[b, t, k])}")
    return HostRoutes(owner, row, rank, slot, first, lookups, bags, cap)


@functools.cache
def _kernels():
    """The numba loops of host routing (compiled on first use, cached on disk): one pass over the
    batch computes every lookup's owner, row, bucket rank and bag slot; one pass scatters them
    into the devices' views. numpy needs a dozen passes and a sort for the same."""
    from numba import njit

    @njit(cache=True)
    def route(ids, lengths, sizes, starts, shards, offsets, owner, row, rank, slot, first, lookups, bags):
        batch, tables, cap = ids.shape
        s = owner.shape[0]
        local = batch // s
        pieces = starts.shape[1]
        last_bag = np.empty(s, np.int64)
        for source in range(s):
            last_bag[:] = -1
            for b in range(local):
                g = source * local + b
                for t in range(tables):
                    bag = b * tables + t
                    for l in range(cap):
                        k = bag * cap + l
                        if l >= lengths[g, t]:
                            owner[source, k] = s
                            row[source, k] = rank[source, k] = slot[source, k] = 0
                            first[source, k] = False
                            continue
                        i = ids[g, t, l]
                        if i < 0 or i >= sizes[t]:
                            return (g * tables + t) * cap + l
                        p = 0
                        while p + 1 < pieces and starts[t, p + 1] <= i:
                            p += 1
                        o = shards[t, p]
                        owner[source, k] = o
                        row[source, k] = i - starts[t, p] + offsets[t, p]
                        rank[source, k] = lookups[source, o]
                        lookups[source, o] += 1
                        first[source, k] = last_bag[o] != bag
                        if last_bag[o] != bag:
                            last_bag[o] = bag
                            bags[source, o] += 1
                        slot[source, k] = bags[source, o] - 1
        return -1

    @njit(cache=True)
    def scatter(owner, row, rank, slot, first, bag_size, c_l, c_b, one_id, slab_rows, rows, slots, bags):
        s, n = owner.shape
        for source in range(s):
            for k in range(n):
                o = owner[source, k]
                if o == s:
                    continue
                at = (o * s + source) * c_l + rank[source, k]  # device o's bucket from source
                rows[at] = row[source, k]
                bag = k // bag_size
                if one_id:
                    slots[source * n + k] = o * c_l + rank[source, k]
                    bags[source * s * c_l + o * c_l + rank[source, k]] = bag
                else:
                    slots[at] = slot[source, k]
                    if first[source, k]:
                        bags[source * s * c_b + o * c_b + slot[source, k]] = bag

    return route, scatter


def route_capacity(plan: ShardingPlan, ids, lengths) -> Capacity:
    """The bucket sizes that carry a (global, host) batch without overflow.

    Args:
      plan: a ``tw``, ``rw`` or ``twrw`` plan on several devices (other plans need
        none: ``Capacity(0, 0)``).
      ids: ``int32 (B, T, L)``, the whole batch as every process holds it.
      lengths: ``int32 (B, T)``.

    Returns:
      :class:`Capacity`, each count rounded by :func:`round_capacity`; for one-id
      bags (``L == 1``) ``bags == lookups``.

    Raises:
      ValueError: for an id outside its table (it would be looked up in another
        table's rows), or a batch the devices cannot split evenly.
    """
    if not routed(plan):
        return Capacity(0, 0)
    return host_routes(plan, ids, lengths).capacity()


def route_stats(plan: ShardingPlan, ids, lengths, *, bytes_per_value: int = 4, host_routed: bool = True) -> dict:
    """What one training step moves between and gathers on the devices, from the plan and a batch.

    Per device: ``lookups_per_device`` (ids it owns among the batch's lookups, i.e.
    rows it gathers and updates); ``gathered_rows_per_device`` (rows its compiled
    step gathers, buckets padded to capacity; for ``cw`` every lookup, on ``D / S``
    columns); ``exchange_bytes_per_device`` (bytes it sends to other devices in one
    step's collectives, forward and backward, padding included: routed plans send
    partial pools and bag gradients, plus id buckets when the batch is routed on the
    devices (``host_routed=False``; a step fed host batches routes them on the host);
    ``cw`` all-gathers ids and lengths and all-to-alls pooled columns and their
    gradients; row-wise Adagrad on ``cw`` adds a ``psum`` of one float per lookup,
    not counted here).

    Example:
        >>> import numpy as np
        >>> from ndp.plan import plan_sharding
        >>> plan = plan_sharding((8,), embedding_dim=4, num_shards=2, kind="rw")
        >>> ids = np.array([[[0]], [[1]], [[2]], [[7]]], np.int32)
        >>> route_stats(plan, ids, np.ones((4, 1), np.int32))["lookups_per_device"]
        [3, 1]
    """
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    s, batch, tables, cap = plan.num_shards, *ids.shape
    value = bytes_per_value
    valid = np.arange(cap)[None, None, :] < lengths[:, :, None]
    total = int(valid.sum())
    if s == 1:
        return {"kind": plan.kind, "num_shards": 1, "lookups_per_device": [total],
                "gathered_rows_per_device": [batch * tables * cap], "exchange_bytes_per_device": [0]}  # fmt: skip
    if plan.kind == "cw":
        local = batch // s
        ids_bytes = (s - 1) * local * (tables * cap + tables) * 4  # all-gather of ids and lengths
        pooled_bytes = 2 * (s - 1) * local * tables * plan.slab_width * value  # forward and backward all-to-all
        return {"kind": "cw", "num_shards": s, "lookups_per_device": [total] * s,
                "gathered_rows_per_device": [batch * tables * cap] * s,
                "exchange_bytes_per_device": [ids_bytes + pooled_bytes] * s}  # fmt: skip
    routes = host_routes(plan, ids, lengths)
    lookups, capacity = routes.lookups, routes.capacity()
    id_bytes = 0 if host_routed else capacity.lookups * 4 * (1 if cap == 1 else 2)  # row ids (and bag slots)
    per_pair = id_bytes + 2 * capacity.bags * plan.slab_width * value  # ids out; partial pools back; gradients out
    return {
        "kind": plan.kind,
        "num_shards": s,
        "capacity": capacity._asdict(),
        "lookups_per_device": [int(x) for x in lookups.sum(axis=0)],
        "gathered_rows_per_device": [s * capacity.lookups] * s,
        "exchange_bytes_per_device": [(s - 1) * per_pair] * s,
    }


# ------------------------------------------------------------------------------------------------
# Per device (inside shard_map over ``storage``)


class Routed(NamedTuple):
    """One device's view of a routed batch (all ``int32``).

    Attributes:
      rows: ``(S * C_l,)`` local slab rows it must gather, bucket ``s`` holding the
        lookups sent by device ``s`` (padding: ``R``, one past the slab).
      slots: ``(S * C_l,)`` for multi-id bags, the partial-pool slot of each received
        lookup in its source's bucket (padding: ``C_b``). For one-id bags, on the
        sending side, ``(B/S * T,)``: where each bag's row comes back in the exchanged
        buffer (padding, for an empty bag: ``S * C_l``), so pooling is a gather.
      bags: ``(S * C_b,)`` on the sending side, the local bag ``b * T + t`` of each
        partial pool it will receive back from owner ``s`` (padding: ``B/S * T``).
      overflow: ``(1,)``, 1 where one of this device's buckets held more lookups (or bags)
        than ``capacity`` allows (only possible with a capacity not made by
        :func:`route_capacity` for this batch, inside jit where it cannot be checked);
        its pooled embeddings and bag gradients are then NaN rather than silently short.
    """

    rows: jax.Array
    slots: jax.Array
    bags: jax.Array
    overflow: jax.Array


def _exchange(x):
    """Bucket ``s`` of ``x`` (leading axis ``S * C``) goes to device ``s``; bucket ``s`` of the result came from it."""
    return jax.lax.all_to_all(x, AXIS, split_axis=0, concat_axis=0, tiled=True)


def _prefix_sum(x):
    """Inclusive prefix sum along axis 0 (an explicit associative scan: on XLA:CPU about twice as
    fast as ``jnp.cumsum``'s lowering for the long, narrow arrays of routing)."""
    return jax.lax.associative_scan(jnp.add, x, axis=0)


def route_local(owners, capacity: Capacity, slab_rows: int, ids, lengths) -> Routed:
    """Sort this device's lookups into per-owner buckets and exchange them (see the module docstring).

    Args:
      owners: ``(starts, shards, offsets)`` of :meth:`ShardingPlan.owners` (replicated).
      capacity: static bucket sizes from :func:`route_capacity`.
      slab_rows: ``R``, rows of a device's slab (the padding row id).
      ids, lengths: this device's ``(B/S, T, L)`` ids and ``(B/S, T)`` lengths.
    """
    starts, shards, offsets = owners
    s = jax.lax.axis_size(AXIS)
    local_batch, tables, cap = ids.shape
    c_l, c_b, _ = capacity
    valid = jnp.arange(cap, dtype=jnp.int32)[None, None, :] < lengths[:, :, None]
    piece = jnp.sum((ids[..., None] >= starts[None, :, None, :]).astype(jnp.int32), axis=-1) - 1
    table = jnp.arange(tables, dtype=jnp.int32)[None, :, None]
    owner = jnp.where(valid, shards[table, piece], s).reshape(-1)  # s: no lookup
    row = (ids - starts[table, piece] + offsets[table, piece]).reshape(-1)
    hits = (owner[:, None] == jnp.arange(s, dtype=jnp.int32)[None, :]).astype(jnp.int32)  # (N, S)
    # Local: an overflowing sender poisons its own pooled embeddings and bag gradients (NaN), hence
    # the loss and every update; lookups past a bucket's end are dropped, never spilled into the next.
    overflow = jnp.max(jnp.sum(hits, axis=0)) > c_l
    rank = jnp.sum((_prefix_sum(hits) - 1) * hits, axis=1)  # position among the lookups to its owner
    position = jnp.where((owner < s) & (rank < c_l), owner * c_l + rank, s * c_l)
    send_rows = jnp.full((s * c_l,), slab_rows, jnp.int32).at[position].set(row, mode="drop")
    bag = jnp.repeat(jnp.arange(local_batch * tables, dtype=jnp.int32), cap)
    if capacity.one_id:  # one lookup per bag: a bag's slot is its lookup's
        if cap != 1:
            raise ValueError(f"capacity: one_id=True needs one id per bag, got ids of shape {ids.shape}")
        bags = jnp.full((s * c_b,), local_batch * tables, jnp.int32).at[position].set(bag, mode="drop")
        return Routed(_exchange(send_rows), position, bags, overflow.astype(jnp.int32).reshape(1))
    # The lookups of one bag are consecutive, so a bag's lookups to one owner share one slot:
    # the count of that owner's first-of-bag lookups so far.
    per_bag = hits.reshape(local_batch * tables, cap, s)
    first = ((jnp.cumsum(per_bag, axis=1) - per_bag) == 0) & (per_bag == 1)
    first = first.reshape(-1, s).astype(jnp.int32)
    overflow = overflow | (jnp.max(jnp.sum(first, axis=0)) > c_b)
    slot = jnp.sum((_prefix_sum(first) - 1) * hits, axis=1)
    send_slots = jnp.full((s * c_l,), c_b, jnp.int32).at[position].set(jnp.minimum(slot, c_b), mode="drop")
    is_first = jnp.sum(first, axis=1) > 0
    bag_position = jnp.where(is_first & (slot < c_b), owner * c_b + slot, s * c_b)
    bags = jnp.full((s * c_b,), local_batch * tables, jnp.int32).at[bag_position].set(bag, mode="drop")
    received = _exchange(jnp.stack([send_rows, send_slots], axis=1))  # one exchange for both
    return Routed(received[:, 0], received[:, 1], bags, overflow.astype(jnp.int32).reshape(1))


def pool_routed(gather_rows, slab, routed_batch: Routed, capacity: Capacity, local_batch: int, tables: int):
    """Pooled ``(B/S, T, W)`` sums of this device's bags from a routed batch (``gather_rows`` reads padding as 0)."""
    s = jax.lax.axis_size(AXIS)
    c_l, c_b, one_id = capacity
    width = slab.shape[1]
    rows = gather_rows(slab, routed_batch.rows)  # (S * C_l, W): the rows this device owns, per source
    if one_id:  # each bag's row comes back in one known place
        pooled = gather_rows(_exchange(rows), routed_batch.slots)
    else:
        source = jnp.repeat(jnp.arange(s, dtype=jnp.int32), c_l)
        target = jnp.where(routed_batch.slots < c_b, source * c_b + routed_batch.slots, s * c_b)
        rows = jnp.zeros((s * c_b, width), rows.dtype).at[target].add(rows, mode="drop")
        partial = _exchange(rows)  # partial pools back to the devices that asked
        pooled = jnp.zeros((local_batch * tables, width), partial.dtype).at[routed_batch.bags].add(partial, mode="drop")
    pooled = jnp.where(routed_batch.overflow[0] > 0, jnp.nan, pooled)
    return pooled.reshape(local_batch, tables, width)


def row_grads_routed(gather_rows, grad, routed_batch: Routed, capacity: Capacity):
    """The gradient of every received lookup, ``(S * C_l, W)``, from this device's bag gradients ``(B/S, T, W)``."""
    s = jax.lax.axis_size(AXIS)
    c_l, c_b, one_id = capacity
    flat = jnp.where(routed_batch.overflow[0] > 0, jnp.nan, grad.reshape(-1, grad.shape[-1]))
    received = _exchange(gather_rows(flat, routed_batch.bags))  # (S * C_b, W): bag gradients, per source
    if one_id:
        return received
    source = jnp.repeat(jnp.arange(s, dtype=jnp.int32), c_l)
    index = jnp.where(routed_batch.slots < c_b, source * c_b + routed_batch.slots, s * c_b)
    return gather_rows(received, index)
