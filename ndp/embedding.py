"""Embedding tables sharded over a ``storage`` mesh axis, looked up, pooled and updated where they live.

The tables live in one *slab* per storage device laid out by a
:class:`~ndp.plan.ShardingPlan` (``tw``, ``rw``, ``cw``, ``twrw``; see
:mod:`ndp.plan`). A training step (:func:`lookup` then
:func:`apply_sparse_update`) never leaves the devices that hold the rows, and each
device works only on its own share of the batch's lookups:

1. ``tw``, ``rw`` and ``twrw``: every device sends each of its lookups to the one
   device that owns the row (an all-to-all of bucketed ids, :mod:`ndp.routing`);
   the owner gathers its rows, pools them per bag and sends the partial pools
   back (a second all-to-all), so each device ends with the pooled embeddings
   ``(B / S, T, D)`` of its data-parallel slice of the batch, the input of the MLPs.
   ``cw``: every row is spread over all devices, ``D / S`` columns each, so every
   device gathers every lookup on its columns (ids all-gathered) and the pooled
   columns are exchanged by an all-to-all.
2. The gradient w.r.t. the pooled embeddings travels back the same way and each
   owner applies a sparse row update (SGD, or row-wise Adagrad as in FBGEMM/DLRM)
   to its own rows with ``.at[rows].add``.

No dense table gradient is formed and, with the slab donated, no table is copied.

Pooling of a bag ``b`` of table ``t`` with ids ``i_1..i_n``:
``sum``: :math:`\\sum_k E_t[i_k]`; ``mean``: :math:`\\frac{1}{\\max(n,1)}\\sum_k E_t[i_k]`
(an empty bag pools to zeros).

Example:
    >>> import jax, numpy as np
    >>> mesh = jax.make_mesh((1,), ("storage",))
    >>> plan = plan_sharding((5, 3), embedding_dim=4, num_shards=1, kind="rw")
    >>> tables = [np.ones((5, 4), np.float32), 2 * np.ones((3, 4), np.float32)]
    >>> slab = put_slab(mesh, plan, pack_tables(plan, tables))
    >>> ids = np.array([[[0, 1], [2, 0]]], np.int32)      # (B=1, T=2, L=2)
    >>> lengths = np.array([[2, 1]], np.int32)
    >>> pooled = lookup(mesh, plan, slab, ids, lengths, pooling="sum")
    >>> np.asarray(pooled)[0, :, 0].tolist()
    [2.0, 2.0]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from runkit import UsageError, check_choice, check_positive
from ndp import bag_kernels
from ndp.bags import Bags
from ndp.plan import (
    AXIS,
    OPTIMIZERS,
    POOLINGS,
    ROUTED_KINDS,
    SHARDING_KINDS,
    ShardingPlan,
    TablePiece,
    default_group_size,
    pack_tables,
    plan_sharding,
    unpack_tables,
)
from ndp.routing import (
    Capacity,
    Routed,
    host_routes,
    pool_routed,
    route_capacity,
    route_local,
    route_stats,
    routed,
    row_grads_routed,
)

__all__ = [
    "AXIS",
    "OPTIMIZERS",
    "POOLINGS",
    "ROUTED_KINDS",
    "SHARDING_KINDS",
    "Capacity",
    "ShardingPlan",
    "TablePiece",
    "BAG_PATHS",
    "Bags",
    "apply_bags_update",
    "apply_routed_update",
    "apply_sparse_update",
    "batch_capacity",
    "default_group_size",
    "init_rowwise_state",
    "init_slab",
    "lookup",
    "lookup_bags",
    "lookup_routed",
    "pack_tables",
    "place_routed",
    "plan_sharding",
    "put_slab",
    "route",
    "route_capacity",
    "route_stats",
    "slab_sharding",
    "unpack_tables",
]



def slab_sharding(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
    """Rows of the slab over ``storage``, columns whole."""
    return jax.NamedSharding(mesh, jax.P(AXIS))


def put_slab(mesh: jax.sharding.Mesh, plan: ShardingPlan, host_slab: np.ndarray) -> jax.Array:
    """Place a host slab on the mesh (each process supplies only its own devices' rows)."""
    _check_mesh(mesh, plan)
    host_slab = np.asarray(host_slab, np.float32)
    return jax.make_array_from_callback(host_slab.shape, slab_sharding(mesh), lambda index: host_slab[index])


def init_slab(mesh: jax.sharding.Mesh, plan: ShardingPlan, key: jax.Array, *, block_rows: int = 65536) -> jax.Array:
    """A slab with DLRM's initialisation, row ``r`` of table ``t`` uniform in ``±1/sqrt(N_t)``.

    Each device fills its own rows in blocks of ``block_rows`` (in place, inside a
    loop), so building the tables needs their size plus one block, never a host copy
    or a second table-sized buffer.
    """
    _check_mesh(mesh, plan)
    check_positive("block_rows", block_rows)
    rows, width = plan.slab_rows, plan.slab_width
    # Per device, the slab ranges of its pieces and their bounds (padded; computed per block on
    # the device, so no slab-sized host array is built).
    count = max(sum(p.shard == s for p in plan.pieces) for s in range(plan.num_shards))
    starts = np.full((plan.num_shards, count), rows, np.int32)
    ends = np.full((plan.num_shards, count), rows, np.int32)
    bounds = np.zeros((plan.num_shards, count), np.float32)
    for s in range(plan.num_shards):
        mine = sorted((p for p in plan.pieces if p.shard == s), key=lambda p: p.slab_offset)
        for i, p in enumerate(mine):
            starts[s, i], ends[s, i] = p.slab_offset, p.slab_offset + p.row_end - p.row_start
            bounds[s, i] = 1.0 / np.sqrt(plan.table_sizes[p.table])
    block = min(block_rows, rows)
    blocks = -(-rows // block)

    def fill(key, starts, ends, bounds):
        device = jax.lax.axis_index(AXIS)
        device_key = jax.random.fold_in(key, device)
        starts, ends, bounds = starts[device], ends[device], bounds[device]

        def body(i, slab):
            start = jnp.minimum(i * block, rows - block)  # the last block may overlap the previous one
            local = start + jnp.arange(block, dtype=jnp.int32)
            piece = jnp.maximum(jnp.searchsorted(starts, local, side="right") - 1, 0)
            scale = jnp.where(local < ends[piece], bounds[piece], 0.0)
            values = jax.random.uniform(jax.random.fold_in(device_key, i), (block, width), jnp.float32, -1.0, 1.0)
            return jax.lax.dynamic_update_slice_in_dim(slab, values * scale[:, None], start, axis=0)

        empty = jax.lax.pcast(jnp.zeros((rows, width), jnp.float32), (AXIS,), to="varying")
        return jax.lax.fori_loop(0, blocks, body, empty)

    make = jax.jit(
        jax.shard_map(fill, mesh=mesh, in_specs=(jax.P(), jax.P(), jax.P(), jax.P()), out_specs=jax.P(AXIS))
    )
    return make(key, jnp.asarray(starts), jnp.asarray(ends), jnp.asarray(bounds))


def init_rowwise_state(mesh: jax.sharding.Mesh, plan: ShardingPlan) -> jax.Array:
    """Row-wise Adagrad accumulators: one ``float32`` per slab row, zero, sharded like the slab."""
    _check_mesh(mesh, plan)
    shape = (plan.num_shards * plan.slab_rows,)
    return jax.jit(lambda: jnp.zeros(shape, jnp.float32), out_shardings=slab_sharding(mesh))()


def _check_mesh(mesh: jax.sharding.Mesh, plan: ShardingPlan) -> None:
    if AXIS not in mesh.shape:
        raise ValueError(f"mesh: expected an axis named {AXIS!r}, got axes {tuple(mesh.shape)}")
    if mesh.shape[AXIS] != plan.num_shards:
        raise ValueError(f"mesh: expected {AXIS!r} of size {plan.num_shards} (the plan's), got {mesh.shape[AXIS]}")


# --------------------------------------------------------------------------------------------
# Per-device pieces (run inside shard_map)


def _local_rows(routing, ids, lengths, local_rows):
    """Local slab row of every lookup this device holds, ``local_rows`` (out of range) for the others
    (the unrouted path: one device, or ``cw``, where every device holds every row's own columns).

    ``routing``: ``(S, 3, T)`` (replicated); ``ids``: ``(B, T, L)``; ``lengths``: ``(B, T)``.
    Returns the rows flattened to ``(B * T * L,)``. Lookups past a bag's length and
    rows held by other devices both get the out-of-range row, which
    :func:`_gather_rows` reads as zeros and scatters drop (``mode="drop"``), so no
    per-lookup weights are needed for sum pooling.

    The result is materialised: fused into its consumers,
    XLA:CPU would redo this index arithmetic for every element of every gathered or
    scattered row, which costs more than the memory traffic of the rows themselves.
    """
    mine = routing[jax.lax.axis_index(AXIS)]
    start, end, offset = mine[0], mine[1], mine[2]
    length_cap = ids.shape[2]
    position = jnp.arange(length_cap, dtype=jnp.int32).reshape(1, 1, length_cap)
    valid = position < lengths[:, :, None]
    hit = valid & (ids >= start[None, :, None]) & (ids < end[None, :, None])
    local = jnp.where(hit, ids - start[None, :, None] + offset[None, :, None], local_rows).reshape(-1)
    # ``min(local, local_rows)`` is ``local``; written as a reduction, it is materialised once.
    return jnp.min(jnp.stack([local, jnp.full_like(local, local_rows)]), axis=0)


def _gather_rows(table, rows):
    """``table[rows]`` with out-of-range ``rows`` (the ``table.shape[0]`` sentinel) read as zeros.

    Clamping and masking row-wise is cheaper on XLA:CPU than ``mode="fill"``, whose
    bounds test is emitted per element.
    """
    size = table.shape[0]
    gathered = table.at[jnp.minimum(rows, size - 1)].get(mode="promise_in_bounds")
    inside = jnp.expand_dims(rows < size, tuple(range(1, gathered.ndim)))
    return jnp.where(inside, gathered, 0.0)


def _bag_scale(lengths):
    """``1 / max(n, 1)`` per bag, the factor of mean pooling."""
    return 1.0 / jnp.maximum(lengths, 1).astype(jnp.float32)


def _single_device() -> bool:
    # On a one-device axis the collectives are identities; XLA:CPU still runs them as copies.
    return jax.lax.axis_size(AXIS) == 1


def _gather_batch(x):
    if _single_device():
        return x
    return jax.lax.all_gather(x, AXIS, axis=0, tiled=True)


def _lookup_local(pooling, slab, routing, ids, lengths):
    ids, lengths = _gather_batch(ids), _gather_batch(lengths)
    local = _local_rows(routing, ids, lengths, slab.shape[0])
    rows = _gather_rows(slab, local).reshape(*ids.shape, slab.shape[1])  # not mine / past the bag: 0
    partial = rows[:, :, 0] if rows.shape[2] == 1 else jnp.sum(rows, axis=2)  # (B, T, W)
    if pooling == "mean":
        partial = partial * _bag_scale(lengths)[:, :, None]
    if _single_device():
        return partial
    # Several devices reach this path only with ``cw`` (other layouts are routed): columns back.
    return jax.lax.all_to_all(partial, AXIS, split_axis=0, concat_axis=2, tiled=True)


def _update_local(pooling, optimizer, dim, eps, slab, state, routing, ids, lengths, grad, lr):
    ids, lengths = _gather_batch(ids), _gather_batch(lengths)
    split_columns = not _single_device()  # several devices: ``cw`` (other layouts are routed)
    if split_columns:
        grad = jax.lax.all_to_all(grad, AXIS, split_axis=2, concat_axis=0, tiled=True)  # (B, T, W)
    if pooling == "mean":
        grad = grad * _bag_scale(lengths)[:, :, None]
    rows = _local_rows(routing, ids, lengths, slab.shape[0])  # not mine / past the bag: dropped
    width = slab.shape[1]
    if ids.shape[2] == 1:
        row_grads = grad.reshape(-1, width)
    else:
        row_grads = jnp.broadcast_to(grad[:, :, None, :], (*ids.shape, width)).reshape(-1, width)
    if optimizer == "sgd":
        # SGD is linear in the gradient: a scatter-add sums duplicate rows exactly, no de-duplication.
        return slab.at[rows].add(-lr * row_grads, mode="drop"), state
    return _rowwise_adagrad_update(split_columns, dim, eps, slab, state, rows, row_grads, lr)


def _rowwise_adagrad_update(split_columns, dim, eps, slab, state, rows, row_grads, lr):
    """Row-wise Adagrad (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``) of the looked-up ``rows`` (out of range: dropped).

    Duplicate lookups of a row are summed first, then
    :math:`a_r \\mathrel{+}= \\frac{1}{D}\\sum_j g_{rj}^2` and
    :math:`E_r \\mathrel{-}= \\eta\\, g_r / (\\sqrt{a_r} + \\epsilon)`.

    De-duplication without sorting: the accumulators are non-negative, so a
    scatter-min of ``-1 - j`` over the lookups ``j`` leaves in every looked-up row's
    accumulator slot the (negated) last lookup ``j*`` of that row, its
    representative. A scatter-add of every other lookup's gradient onto its
    representative's (a batch-sized buffer) sums each row's gradients there, and
    only representatives write the row back (``set`` of the new accumulator,
    ``add`` of the step), so each row is updated once. This costs a few passes over
    the ``M`` looked-up rows and no ``O(M log M)`` sort; every temporary is
    batch-sized, and the result does not depend on which lookup is elected.
    """
    size = rows.shape[0]
    if size >= 2**24:
        raise UsageError(f"ids: expected fewer than 2**24 lookups per device and step, got {size}")
    slots = jnp.arange(size, dtype=jnp.int32)
    old = _gather_rows(state, rows)
    # The marks depend on ``old`` so that this read is ordered before the in-place write
    # (otherwise XLA keeps a copy of the accumulators alive).
    marks = -1.0 - slots.astype(jnp.float32) + 0.0 * old
    marked = state.at[rows].min(marks, mode="drop")
    elected = marked.at[jnp.minimum(rows, state.shape[0] - 1)].get(mode="promise_in_bounds")
    representative = jnp.where(rows < state.shape[0], (-1.0 - elected).astype(jnp.int32), size)
    # Each row's gradients summed in its representative's slot (which starts from its own gradient).
    others = jnp.where(representative == slots, size, representative)
    summed = row_grads.at[others].add(row_grads, mode="drop")
    square = jnp.sum(summed * summed, axis=1)
    if split_columns:
        square = jax.lax.psum(square, AXIS)  # a row's columns are spread over the devices
    target = jnp.where(representative == slots, rows, state.shape[0])  # one lookup per row; others dropped
    accumulated = old + square / dim
    state = marked.at[target].set(accumulated, mode="drop")
    step = -lr * summed / (jnp.sqrt(accumulated) + eps)[:, None]
    return slab.at[target].add(step, mode="drop"), state


# --------------------------------------------------------------------------------------------
# Public API


def _valid_capacity(capacity) -> Capacity:
    capacity = Capacity(*capacity)
    if capacity.lookups < 1 or not 1 <= capacity.bags <= capacity.lookups or (
        capacity.one_id and capacity.bags != capacity.lookups
    ):
        raise ValueError(f"capacity: expected 1 <= bags <= lookups (bags == lookups with one_id), got {capacity}")
    return capacity


def _route_batch(mesh, plan: ShardingPlan, ids, lengths, capacity: Capacity | None) -> tuple[Routed, Capacity]:
    """A routed plan's batch routed once, with its capacity (checked against the batch where it can be read):
    host ids in one host pass that both sizes and routes them, device ids on the devices."""
    if not isinstance(ids, jax.Array) and not isinstance(lengths, jax.Array):
        routes = host_routes(plan, ids, lengths)
        capacity = routes.capacity() if capacity is None else _valid_capacity(capacity)
        return place_routed(mesh, routes.routed(capacity, plan.slab_rows)), capacity  # refuses a too-small capacity
    capacity = batch_capacity(plan, ids, lengths, capacity)
    return _route_fn(mesh, plan, capacity)(ids, lengths), capacity


def batch_capacity(plan: ShardingPlan, ids, lengths, capacity: Capacity | None = None) -> Capacity:
    """The bucket sizes a routed step needs for this batch: ``capacity`` if given, else
    :func:`ndp.routing.route_capacity` of the (host-readable) ids.

    Raises:
      ValueError: when the ids are traced or spread over processes and no capacity is given.
    """
    if not routed(plan):
        return Capacity(0, 0)
    traced = isinstance(ids, jax.core.Tracer) or isinstance(lengths, jax.core.Tracer)
    unreadable = not traced and isinstance(ids, jax.Array) and not ids.is_fully_addressable
    if capacity is not None:
        capacity = _valid_capacity(capacity)
        if not (traced or unreadable):
            needed = route_capacity(plan, np.asarray(ids), np.asarray(lengths))
            if needed.lookups > capacity.lookups or needed.bags > capacity.bags or needed.one_id != capacity.one_id:
                raise ValueError(f"capacity: this batch needs at least {needed}, got {capacity}")
        return capacity
    if traced:
        raise ValueError(
            "capacity: expected a Capacity (ndp.routing.route_capacity of the host batch) when the ids are "
            f"traced inside jit with a routed {plan.kind!r} plan on {plan.num_shards} devices, got None"
        )
    if unreadable:
        raise ValueError(
            "ids: a batch spread over several processes cannot be read here; pass the host batch (the same "
            "numpy arrays in every process) or a capacity from ndp.routing.route_capacity, got a global array"
        )
    return route_capacity(plan, np.asarray(ids), np.asarray(lengths))


def lookup(
    mesh, plan: ShardingPlan, slab: jax.Array, ids, lengths, *, pooling: str = "sum", capacity: Capacity | None = None
) -> jax.Array:
    """Pooled embeddings ``float32 (B, T, D)``, batch-sharded over ``storage``.

    Args:
      mesh: a mesh with a ``storage`` axis of ``plan.num_shards`` devices.
      plan: the table layout.
      slab: the global slab ``(S * R, W)``.
      ids: ``int32 (B, T, L)`` row ids per example, table and bag position (``B`` a
        multiple of ``S``); entries at positions ``>= lengths`` are ignored.
      lengths: ``int32 (B, T)`` bag lengths (``0`` for an empty bag).
      pooling: ``"sum"`` or ``"mean"``.
      capacity: bucket sizes of a routed plan; computed from ``ids`` when ``None``
        (which needs ids readable on this host, not traced).
    """
    check_choice("pooling", pooling, POOLINGS)
    _check_mesh(mesh, plan)
    if not routed(plan):
        return _lookup_fn(mesh, plan, pooling)(slab, jnp.asarray(ids, jnp.int32), jnp.asarray(lengths, jnp.int32))
    routed_batch, capacity = _route_batch(mesh, plan, ids, lengths, capacity)
    return lookup_routed(mesh, plan, slab, routed_batch, jnp.asarray(lengths, jnp.int32), pooling, capacity)


def apply_sparse_update(
    mesh,
    plan: ShardingPlan,
    slab: jax.Array,
    state: jax.Array | None,
    ids,
    lengths,
    pooled_grad: jax.Array,
    lr,
    *,
    pooling: str = "sum",
    optimizer: str = "sgd",
    eps: float = 1e-8,
    capacity: Capacity | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Update the rows a batch looked up, on the devices that hold them.

    Args:
      slab, state: the slab and (for ``rowwise_adagrad``) its ``(S * R,)`` accumulators.
      ids, lengths: the batch's lookups, as for :func:`lookup`.
      pooled_grad: ``float32 (B, T, D)``, the loss gradient w.r.t. the pooled embeddings.
      lr: learning rate (scalar).
      optimizer: ``"sgd"`` or ``"rowwise_adagrad"``.
      capacity: as for :func:`lookup`.

    Returns:
      ``(new_slab, new_state)``; jit with the slab donated to update it in place.
    """
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("pooling", pooling, POOLINGS)
    _check_mesh(mesh, plan)
    if optimizer == "rowwise_adagrad" and state is None:
        raise ValueError("state: expected row-wise Adagrad accumulators (init_rowwise_state), got None")
    lr = jnp.asarray(lr, jnp.float32)
    if not routed(plan):
        fn = _update_fn(mesh, plan, pooling, optimizer, float(eps))
        return fn(slab, state, jnp.asarray(ids, jnp.int32), jnp.asarray(lengths, jnp.int32), pooled_grad, lr)
    routed_batch, capacity = _route_batch(mesh, plan, ids, lengths, capacity)
    lengths = jnp.asarray(lengths, jnp.int32)
    return apply_routed_update(
        mesh, plan, slab, state, routed_batch, lengths, pooled_grad, lr, pooling, optimizer, float(eps), capacity
    )


def _on_batch(mesh, x):
    """``x`` sharded by its leading (batch) dimension over ``storage``."""
    return jax.reshard(x, jax.NamedSharding(mesh, jax.P(AXIS)))


# --------------------------------------------------------------------------------------------
# Routed plans (tw, rw, twrw on several devices): route once, then look up and update


def route(mesh, plan: ShardingPlan, ids, lengths, capacity: Capacity) -> Routed:
    """Bucket every device's lookups by owner and hand each owner its own.

    Host (numpy) ids are routed on the host (:func:`ndp.routing.host_routes`, the
    same global batch in every process) and each device receives its view: no ids
    are exchanged. Device ids are routed on the devices (:func:`ndp.routing.route_local`)
    with one all-to-all.

    Returns a :class:`~ndp.routing.Routed` whose leaves are sharded over ``storage``
    (device ``s`` holds its own view); :func:`lookup_routed` and
    :func:`apply_routed_update` take it, so a training step routes its batch once.
    """
    return _route_batch(mesh, plan, ids, lengths, capacity)[0]


def place_routed(mesh, stacked: Routed) -> Routed:
    """Each device's block of a host-routed batch (:meth:`ndp.routing.HostRoutes.routed`) onto that device."""
    sharding = jax.NamedSharding(mesh, jax.P(AXIS))
    return Routed(*(jax.make_array_from_callback(x.shape, sharding, lambda index, x=x: x[index]) for x in stacked))


@functools.lru_cache(maxsize=64)
def _route_fn(mesh, plan: ShardingPlan, capacity: Capacity):
    owners = plan.owners()
    fn = jax.shard_map(
        lambda owners, ids, lengths: route_local(owners, capacity, plan.slab_rows, ids, lengths),
        mesh=mesh,
        in_specs=(jax.P(), jax.P(AXIS), jax.P(AXIS)),
        out_specs=jax.P(AXIS),
    )
    return jax.jit(
        lambda ids, lengths: fn(tuple(jnp.asarray(a) for a in owners), _on_batch(mesh, ids), _on_batch(mesh, lengths))
    )


def lookup_routed(mesh, plan: ShardingPlan, slab, routed_batch: Routed, lengths, pooling: str, capacity: Capacity):
    """:func:`lookup` of a batch already routed by :func:`route`."""
    return _lookup_routed_fn(mesh, plan, pooling, Capacity(*capacity))(slab, routed_batch, lengths)


@functools.lru_cache(maxsize=64)
def _lookup_routed_fn(mesh, plan: ShardingPlan, pooling: str, capacity: Capacity):
    def local(slab, routed_batch, lengths):
        pooled = pool_routed(_gather_rows, slab, routed_batch, capacity, *lengths.shape)
        if pooling == "mean":
            pooled = pooled * _bag_scale(lengths)[:, :, None]
        return pooled

    fn = jax.shard_map(local, mesh=mesh, in_specs=(jax.P(AXIS), jax.P(AXIS), jax.P(AXIS)), out_specs=jax.P(AXIS))
    return jax.jit(lambda slab, routed_batch, lengths: fn(slab, routed_batch, _on_batch(mesh, lengths)))


def apply_routed_update(mesh, plan: ShardingPlan, slab, state, routed_batch: Routed, lengths, pooled_grad, lr,
                        pooling: str, optimizer: str, eps: float, capacity: Capacity):  # fmt: skip
    """:func:`apply_sparse_update` of a batch already routed by :func:`route`."""
    fn = _routed_update_fn(mesh, plan, pooling, optimizer, float(eps), Capacity(*capacity))
    return fn(slab, state, routed_batch, lengths, pooled_grad, lr)


@functools.lru_cache(maxsize=64)
def _routed_update_fn(mesh, plan: ShardingPlan, pooling: str, optimizer: str, eps: float, capacity: Capacity):
    dim = float(plan.embedding_dim)

    def local(slab, state, routed_batch, lengths, grad, lr):
        if pooling == "mean":
            grad = grad * _bag_scale(lengths)[:, :, None]
        row_grads = row_grads_routed(_gather_rows, grad, routed_batch, capacity)
        if optimizer == "sgd":
            return slab.at[routed_batch.rows].add(-lr * row_grads, mode="drop"), state
        return _rowwise_adagrad_update(False, dim, eps, slab, state, routed_batch.rows, row_grads, lr)

    batch = jax.P(AXIS)
    if optimizer == "sgd":
        fn = jax.shard_map(
            lambda slab, routed_batch, lengths, grad, lr: local(slab, None, routed_batch, lengths, grad, lr)[0],
            mesh=mesh, in_specs=(batch, batch, batch, batch, jax.P()), out_specs=batch,
        )  # fmt: skip
        return jax.jit(
            lambda slab, state, routed_batch, lengths, grad, lr: (
                fn(slab, routed_batch, _on_batch(mesh, lengths), _on_batch(mesh, grad), lr), state
            )
        )
    fn = jax.shard_map(local, mesh=mesh, in_specs=(batch, batch, batch, batch, batch, jax.P()), out_specs=(batch, batch))
    return jax.jit(
        lambda slab, state, routed_batch, lengths, grad, lr: fn(
            slab, state, routed_batch, _on_batch(mesh, lengths), _on_batch(mesh, grad), lr
        )
    )


# --------------------------------------------------------------------------------------------
# Unrouted plans (one device, or cw): every device sees the batch's ids


@functools.lru_cache(maxsize=64)
def _lookup_fn(mesh, plan: ShardingPlan, pooling: str):
    # jit (cached per layout) so that inputs on any sharding are moved to the batch sharding.
    routing = plan.routing()
    fn = jax.shard_map(
        functools.partial(_lookup_local, pooling),
        mesh=mesh,
        in_specs=(jax.P(AXIS), jax.P(), jax.P(AXIS), jax.P(AXIS)),
        out_specs=jax.P(AXIS),
    )
    return jax.jit(
        lambda slab, ids, lengths: fn(
            slab, jnp.asarray(routing), _on_batch(mesh, ids), _on_batch(mesh, lengths)
        )
    )


@functools.lru_cache(maxsize=64)
def _update_fn(mesh, plan: ShardingPlan, pooling: str, optimizer: str, eps: float):
    routing = plan.routing()
    body = functools.partial(_update_local, pooling, optimizer, float(plan.embedding_dim), eps)
    if optimizer == "sgd":
        fn = jax.shard_map(
            lambda slab, routing, ids, lengths, grad, lr: body(slab, None, routing, ids, lengths, grad, lr)[0],
            mesh=mesh,
            in_specs=(jax.P(AXIS), jax.P(), jax.P(AXIS), jax.P(AXIS), jax.P(AXIS), jax.P()),
            out_specs=jax.P(AXIS),
        )
        return jax.jit(
            lambda slab, state, ids, lengths, grad, lr: (
                fn(slab, jnp.asarray(routing), _on_batch(mesh, ids), _on_batch(mesh, lengths), _on_batch(mesh, grad), lr),
                state,
            )
        )
    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(jax.P(AXIS), jax.P(AXIS), jax.P(), jax.P(AXIS), jax.P(AXIS), jax.P(AXIS), jax.P()),
        out_specs=(jax.P(AXIS), jax.P(AXIS)),
    )
    return jax.jit(
        lambda slab, state, ids, lengths, grad, lr: fn(
            slab, state, jnp.asarray(routing), _on_batch(mesh, ids), _on_batch(mesh, lengths), _on_batch(mesh, grad), lr
        )
    )


# --------------------------------------------------------------------------------------------
# Jagged bags on one device (ndp.bags): the CPU kernels, or the same functions in XLA

#: How :func:`lookup_bags` and :func:`apply_bags_update` run: ``"auto"`` (the CPU kernels of
#: :mod:`ndp.bag_kernels` where they can run, else XLA), ``"kernel"`` or ``"xla"``.
BAG_PATHS = ("auto", "kernel", "xla")


def _bag_tables(plan: ShardingPlan) -> tuple[np.ndarray, np.ndarray]:
    """``(table_offsets, table_sizes)`` of a one-device plan: table ``t`` is slab rows ``offsets[t]:offsets[t] + sizes[t]``."""
    if plan.num_shards != 1:
        raise UsageError(f"ids: jagged Bags are looked up on a one-device mesh (pass padded ids, or let "
                         f"ndp.train.BatchStep convert them), got a plan over {plan.num_shards} devices")  # fmt: skip
    start, end, offset = plan.routing()[0]
    sizes = np.asarray(plan.table_sizes, np.int32)
    if np.any(start != 0) or np.any(end != sizes):
        raise UsageError(f"plan: expected every table whole on the one device, got row ranges {list(zip(start, end))}")
    return offset.astype(np.int32), sizes


def _whole_bags(mesh, bags: Bags):
    """``(values, offsets)`` of ``bags`` whole on every device of ``mesh``."""
    whole = jax.NamedSharding(mesh, jax.P())
    return tuple(jax.reshard(jnp.asarray(x, jnp.int32), whole) for x in (bags.values, bags.offsets))


def _use_kernel(path: str) -> bool:
    check_choice("path", path, BAG_PATHS)
    ok, reason = bag_kernels.available()
    if path == "kernel" and not ok:
        raise UsageError(f"path: the 'kernel' path needs the CPU kernels, which are unavailable here: {reason}")
    return ok and path != "xla"


def _bag_lookups(offsets_sizes, bags: Bags, batch: int, slab_rows: int):
    """Per entry of ``bags.values``: its slab row (``slab_rows`` for padding or a bad id) and its
    bag's position ``b * T + t`` in the pooled ``(B * T, W)`` rows (``B * T`` for padding)."""
    table_offsets, table_sizes = (jnp.asarray(a) for a in offsets_sizes)
    values, offsets = jnp.asarray(bags.values, jnp.int32), jnp.asarray(bags.offsets, jnp.int32)
    tables = table_offsets.shape[0]
    entry = jnp.arange(values.shape[0], dtype=jnp.int32)
    bag = jnp.searchsorted(offsets, entry, side="right").astype(jnp.int32) - 1  # T * B for padding
    table = jnp.minimum(bag // batch, tables - 1)
    valid = (entry < offsets[-1]) & (values >= 0) & (values < table_sizes[table])
    rows = jnp.where(valid, table_offsets[table] + values, slab_rows)
    pooled_at = jnp.where(valid, (bag % batch) * tables + table, batch * tables)
    return rows, pooled_at


def lookup_bags(mesh, plan: ShardingPlan, slab, bags: Bags, lengths, *, pooling: str = "sum", path: str = "auto"):
    """Pooled embeddings ``float32 (B, T, D)`` of jagged bags (:mod:`ndp.bags`) on a one-device mesh.

    Callable inside jit. ``lengths``: ``int32 (B, T)`` (read by mean pooling only).

    Example:
        >>> import jax, numpy as np
        >>> from ndp.bags import bags_from_jagged
        >>> mesh = jax.make_mesh((1,), ("storage",))
        >>> plan = plan_sharding((5, 3), embedding_dim=2, num_shards=1, kind="tw")
        >>> slab = put_slab(mesh, plan, pack_tables(plan, [np.ones((5, 2), np.float32), 2 * np.ones((3, 2), np.float32)]))
        >>> bags = bags_from_jagged([(np.array([0, 4]), np.array([0, 2])), (np.array([1, 2, 0]), np.array([0, 3]))])
        >>> np.asarray(lookup_bags(mesh, plan, slab, bags, np.array([[2, 3]])))[0].tolist()
        [[2.0, 2.0], [6.0, 6.0]]
    """
    check_choice("pooling", pooling, POOLINGS)
    _check_mesh(mesh, plan)
    tables = _bag_tables(plan)
    kernel = _use_kernel(path)
    batch = (bags.offsets.shape[0] - 1) // plan.num_tables

    def local(slab, values, offsets, lengths):
        if kernel:
            pooled = bag_kernels.pool(slab, *tables, values, offsets, batch_size=batch)
        else:
            rows, pooled_at = _bag_lookups(tables, Bags(values, offsets), batch, slab.shape[0])
            width = slab.shape[1]
            pooled = jnp.zeros((batch * plan.num_tables, width), slab.dtype).at[pooled_at].add(
                _gather_rows(slab, rows), mode="drop"
            ).reshape(batch, plan.num_tables, width)
        if pooling == "mean":
            pooled = pooled * _bag_scale(lengths)[:, :, None]
        return pooled

    fn = jax.shard_map(local, mesh=mesh, in_specs=(jax.P(AXIS), jax.P(), jax.P(), jax.P(AXIS)), out_specs=jax.P(AXIS))
    values, offsets = _whole_bags(mesh, bags)
    return fn(_on_batch(mesh, slab), values, offsets, _on_batch(mesh, jnp.asarray(lengths, jnp.int32)))


def apply_bags_update(mesh, plan: ShardingPlan, slab, state, bags: Bags, lengths, pooled_grad, lr, *,
                      pooling: str = "sum", optimizer: str = "sgd", eps: float = 1e-8, path: str = "auto"):  # fmt: skip
    """:func:`apply_sparse_update` of jagged bags (:mod:`ndp.bags`) on a one-device mesh, callable inside jit.

    Returns ``(slab, state)``; with both donated to the enclosing jit they are updated in place.
    """
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("pooling", pooling, POOLINGS)
    _check_mesh(mesh, plan)
    tables = _bag_tables(plan)
    kernel = _use_kernel(path)
    adagrad = optimizer == "rowwise_adagrad"
    if adagrad and state is None:
        raise ValueError("state: expected row-wise Adagrad accumulators (init_rowwise_state), got None")
    if bags.values.shape[0] >= 2**24:
        raise UsageError(f"ids: expected fewer than 2**24 lookups per step, got {bags.values.shape[0]}")
    dim = plan.embedding_dim

    def local(slab, state, values, offsets, lengths, grad, lr):
        if pooling == "mean":
            grad = grad * _bag_scale(lengths)[:, :, None]
        if kernel:
            if not adagrad:
                return bag_kernels.sgd_update(slab, *tables, values, offsets, grad, lr), state
            return bag_kernels.rowwise_adagrad_update(slab, state, *tables, values, offsets, grad, lr, eps, dim)
        rows, pooled_at = _bag_lookups(tables, Bags(values, offsets), grad.shape[0], slab.shape[0])
        row_grads = _gather_rows(grad.reshape(-1, grad.shape[-1]), pooled_at)
        if not adagrad:
            return slab.at[rows].add(-lr * row_grads, mode="drop"), state
        return _rowwise_adagrad_update(False, float(dim), eps, slab, state, rows, row_grads, lr)

    batch = jax.P(AXIS)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(batch, batch, jax.P(), jax.P(), batch, batch, jax.P()),
                       out_specs=(batch, batch))  # fmt: skip
    placeholder = jnp.zeros((1,), jnp.float32) if state is None else state
    values, offsets = _whole_bags(mesh, bags)
    new_slab, new_state = fn(_on_batch(mesh, slab), _on_batch(mesh, placeholder), values, offsets,
                             _on_batch(mesh, jnp.asarray(lengths, jnp.int32)),
                             _on_batch(mesh, jnp.asarray(pooled_grad, jnp.float32)), jnp.asarray(lr, jnp.float32))  # fmt: skip
    return new_slab, (None if state is None else new_state)
