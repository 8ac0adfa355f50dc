"""Sharding plans, slab packing and the sharded lookup, against plain numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ndp.embedding import (
    apply_sparse_update,
    init_rowwise_state,
    lookup,
    pack_tables,
    plan_sharding,
    put_slab,
    unpack_tables,
)
from ndp.train import jagged_to_padded, storage_mesh, to_host


@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8),
    shards=st.sampled_from([1, 2, 4, 8]),
    kind=st.sampled_from(["tw", "rw", "cw", "twrw"]),
)
def test_plans_cover_every_row_and_column_once(sizes, shards, kind):
    plan = plan_sharding(sizes, 8, shards, kind)
    for t, n in enumerate(sizes):
        covered = np.zeros((n, 8), np.int32)
        for p in plan.pieces:
            if p.table == t:
                covered[p.row_start : p.row_end, p.col_start : p.col_end] += 1
        assert (covered == 1).all()
    # No two pieces overlap in a device's slab.
    for s in range(shards):
        used = np.zeros(plan.slab_rows, np.int32)
        for p in plan.pieces:
            if p.shard == s:
                used[p.slab_offset : p.slab_offset + p.row_end - p.row_start] += 1
        assert used.max(initial=0) <= 1
    rng = np.random.default_rng(0)
    tables = [rng.normal(size=(n, 8)).astype(np.float32) for n in sizes]
    for a, b in zip(tables, unpack_tables(plan, pack_tables(plan, tables))):
        np.testing.assert_array_equal(a, b)
    if kind == "tw":
        # Greedy balance: the fullest device exceeds the ideal by at most the largest table.
        assert max(plan.rows_per_shard()) <= sum(sizes) / shards + max(sizes)
    if kind == "rw":
        assert max(plan.rows_per_shard()) - min(plan.rows_per_shard()) <= max(sizes)


@settings(max_examples=6)
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=3),
    kind=st.sampled_from(["tw", "rw", "cw", "twrw"]),
    pooling=st.sampled_from(["sum", "mean"]),
    seed=st.integers(0, 1000),
)
def test_lookup_matches_numpy_bags(sizes, kind, pooling, seed):
    rng = np.random.default_rng(seed)
    tables = [rng.normal(size=(n, 8)).astype(np.float32) for n in sizes]
    lengths = rng.integers(0, 4, size=(16, len(sizes)))
    values = [rng.integers(0, n, size=int(lengths[:, t].sum())) for t, n in enumerate(sizes)]
    offsets = [np.concatenate([[0], np.cumsum(lengths[:, t])]) for t in range(len(sizes))]
    ids, padded_lengths = jagged_to_padded(values, offsets)
    mesh = storage_mesh(8)
    plan = plan_sharding(sizes, 8, 8, kind)
    pooled = np.asarray(lookup(mesh, plan, put_slab(mesh, plan, pack_tables(plan, tables)), ids, padded_lengths,
                               pooling=pooling))  # fmt: skip
    for t in range(len(sizes)):
        for b in range(16):
            rows = tables[t][values[t][offsets[t][b] : offsets[t][b + 1]]]
            want = rows.sum(axis=0) if rows.size else np.zeros(8, np.float32)
            if pooling == "mean" and rows.shape[0]:
                want = want / rows.shape[0]
            np.testing.assert_allclose(pooled[b, t], want, atol=1e-5)


def numpy_sparse_update(tables, accumulators, ids, lengths, pooled_grad, lr, optimizer, eps):
    """Per table: the dense gradient accumulated lookup by lookup, then textbook SGD / row-wise Adagrad."""
    tables = [t.astype(np.float64) for t in tables]
    accumulators = [a.astype(np.float64) for a in accumulators]
    for t, table in enumerate(tables):
        grad = np.zeros_like(table)
        for b in range(ids.shape[0]):
            for k in range(lengths[b, t]):
                grad[ids[b, t, k]] += pooled_grad[b, t]
        if optimizer == "sgd":
            table -= lr * grad
        else:
            accumulators[t] += np.mean(grad * grad, axis=1)
            table -= lr * grad / (np.sqrt(accumulators[t])[:, None] + eps)
    return tables, accumulators


@settings(max_examples=6)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    shards=st.sampled_from([1, 8]),
    kind=st.sampled_from(["tw", "rw", "cw", "twrw"]),
    optimizer=st.sampled_from(["sgd", "rowwise_adagrad"]),
    length=st.sampled_from([1, 4]),
    seed=st.integers(0, 1000),
)
def test_sparse_update_sums_duplicate_lookups_like_a_dense_gradient(sizes, shards, kind, optimizer, length, seed):
    """Small tables, long or one-hot bags (some empty): most rows are looked up several times in one batch."""
    rng = np.random.default_rng(seed)
    dim, batch, lr, eps = 8, 16, 0.1, 1e-8
    tables = [rng.normal(size=(n, dim)).astype(np.float32) for n in sizes]
    accumulators = [rng.uniform(0.0, 2.0, size=n).astype(np.float32) for n in sizes]
    ids = np.stack([rng.integers(0, n, size=(batch, length)) for n in sizes], axis=1).astype(np.int32)
    lengths = rng.integers(0, length + 1, size=(batch, len(sizes))).astype(np.int32)
    pooled_grad = rng.normal(size=(batch, len(sizes), dim)).astype(np.float32)
    mesh = storage_mesh(shards)
    plan = plan_sharding(sizes, dim, shards, kind)
    slab = put_slab(mesh, plan, pack_tables(plan, tables))
    state = None
    if optimizer == "rowwise_adagrad":
        # Accumulators travel packed like column 0 of the tables (every device holds its rows' accumulators).
        packed = pack_tables(plan, [np.repeat(a[:, None], dim, axis=1) for a in accumulators])[:, 0]
        state = jax.device_put(packed, init_rowwise_state(mesh, plan).sharding)
    new_slab, new_state = apply_sparse_update(mesh, plan, slab, state, ids, lengths, pooled_grad, lr,
                                              optimizer=optimizer, eps=eps)  # fmt: skip
    want_tables, want_accumulators = numpy_sparse_update(tables, accumulators, ids, lengths, pooled_grad, lr,
                                                         optimizer, eps)  # fmt: skip
    for t, (got, want) in enumerate(zip(unpack_tables(plan, to_host(mesh, new_slab)), want_tables)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"table {t}")
    if optimizer == "rowwise_adagrad":
        host_state = np.repeat(to_host(mesh, new_state)[:, None], plan.slab_width, axis=1)
        for t, (got, want) in enumerate(zip(unpack_tables(plan, host_state), want_accumulators)):
            want = np.repeat(want[:, None], dim, axis=1)  # column-wise: every device holds the accumulators
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"accumulators {t}")


def test_tw_plan_is_greedy_and_describes_itself():
    plan = plan_sharding((100, 60, 50, 10), embedding_dim=4, num_shards=2, kind="tw")
    assert plan.rows_per_shard() == [110, 110]
    assert plan.imbalance() == pytest.approx(1.0)
    text = plan.describe()
    assert "device 0: 110 rows" in text and "tw sharding of 4 tables" in text
    assert plan.to_dict()["rows_per_shard"] == [110, 110]


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="embedding_dim: column-wise sharding over 3 devices needs a multiple of 3, got 8"):
        plan_sharding((10,), 8, 3, "cw")
    with pytest.raises(ValueError, match=r"kind: expected one of \['tw', 'rw', 'cw', 'twrw'\], got 'xx'"):
        plan_sharding((10,), 8, 2, "xx")
    with pytest.raises(ValueError, match="max_length"):
        jagged_to_padded([np.arange(3)], [np.array([0, 3])], max_length=2)
    plan = plan_sharding((10,), 8, 2, "rw")
    with pytest.raises(ValueError, match="mesh: expected 'storage' of size 2"):
        put_slab(storage_mesh(4), plan, np.zeros((plan.slab_rows * 2, 8), np.float32))
    with pytest.raises(ValueError, match=r"tables\[0\]: expected shape \(10, 8\)"):
        pack_tables(plan, [np.zeros((9, 8), np.float32)])
    with pytest.raises(ValueError, match="num_devices"):
        storage_mesh(len(jax.devices()) + 1)


def test_init_slab_fills_every_row_within_its_table_bound():
    sizes = (5, 40, 23)
    mesh = storage_mesh(4)
    plan = plan_sharding(sizes, 8, 4, "rw")
    from ndp.embedding import init_slab

    slab = np.asarray(init_slab(mesh, plan, jax.random.key(3), block_rows=4))  # blocks overlap at the end
    for table, n in zip(unpack_tables(plan, slab), sizes):
        bound = 1.0 / np.sqrt(n)
        assert np.all(np.abs(table) <= bound) and np.all(table != 0.0)
        assert np.abs(table).mean() > 0.3 * bound  # uniform on +-bound has mean |x| = bound / 2
    assert len({tuple(t[0]) for t in unpack_tables(plan, slab)}) == 3  # distinct random streams


# ------------------------------------------------------------------------------------------------
# Routed lookups (tw, rw, twrw on several devices): extreme batches, capacities, per-device work


def numpy_pool(tables, ids, lengths, pooling):
    out = np.zeros((ids.shape[0], len(tables), tables[0].shape[1]), np.float64)
    for b in range(ids.shape[0]):
        for t, table in enumerate(tables):
            rows = table[ids[b, t, : lengths[b, t]]]
            if rows.shape[0]:
                out[b, t] = rows.sum(axis=0) / (rows.shape[0] if pooling == "mean" else 1)
    return out


def extreme_batch(case, sizes, batch, length, rng):
    """ids (B, T, L) and lengths (B, T) of one of the extreme routing cases."""
    lengths = np.full((batch, len(sizes)), length, np.int32)
    if case == "one_owner":  # every lookup in the first rows: device 0 owns them all (rw, twrw)
        ids = rng.integers(0, 2, size=(batch, len(sizes), length))
    elif case == "same_id_everywhere":  # one id per table, looked up by every example on every device
        ids = np.broadcast_to(np.asarray([n - 1 for n in sizes])[None, :, None], (batch, len(sizes), length))
    elif case == "empty_bags":  # whole devices' shares without lookups, the rest mixed
        ids = np.stack([rng.integers(0, n, size=(batch, length)) for n in sizes], axis=1)
        lengths = rng.integers(0, length + 1, size=(batch, len(sizes))).astype(np.int32)
        lengths[: batch // 2] = 0
    else:  # "all_empty": no lookup at all
        ids = np.stack([rng.integers(0, n, size=(batch, length)) for n in sizes], axis=1)
        lengths[:] = 0
    return np.ascontiguousarray(ids, np.int32), lengths


@pytest.mark.parametrize("case", ["one_owner", "same_id_everywhere", "empty_bags", "all_empty"])
@pytest.mark.parametrize("kind,length", [("rw", 1), ("twrw", 3), ("tw", 3)])
def test_routed_step_on_extreme_batches(case, kind, length):
    """Lookup and row-wise Adagrad update on 8 devices against numpy, for batches that stress the buckets."""
    rng = np.random.default_rng(1)
    sizes, dim, batch, lr, eps = (40, 9, 17), 8, 16, 0.1, 1e-8
    tables = [rng.normal(size=(n, dim)).astype(np.float32) for n in sizes]
    accumulators = [rng.uniform(0.0, 2.0, size=n).astype(np.float32) for n in sizes]
    ids, lengths = extreme_batch(case, sizes, batch, length, rng)
    pooled_grad = rng.normal(size=(batch, len(sizes), dim)).astype(np.float32)
    mesh = storage_mesh(8)
    plan = plan_sharding(sizes, dim, 8, kind)
    slab = put_slab(mesh, plan, pack_tables(plan, tables))
    pooled = np.asarray(lookup(mesh, plan, slab, ids, lengths, pooling="mean"))
    np.testing.assert_allclose(pooled, numpy_pool(tables, ids, lengths, "mean"), atol=1e-5)
    packed = pack_tables(plan, [np.repeat(a[:, None], dim, axis=1) for a in accumulators])[:, 0]
    state = jax.device_put(packed, init_rowwise_state(mesh, plan).sharding)
    new_slab, new_state = apply_sparse_update(mesh, plan, slab, state, ids, lengths, pooled_grad, lr,
                                              optimizer="rowwise_adagrad", eps=eps)  # fmt: skip
    want_tables, want_acc = numpy_sparse_update(tables, accumulators, ids, lengths, pooled_grad, lr,
                                                "rowwise_adagrad", eps)  # fmt: skip
    for got, want in zip(unpack_tables(plan, to_host(mesh, new_slab)), want_tables):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    host_state = np.repeat(to_host(mesh, new_state)[:, None], plan.slab_width, axis=1)
    for got, want in zip(unpack_tables(plan, host_state), want_acc):
        np.testing.assert_allclose(got[:, 0], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["one_owner", "same_id_everywhere", "empty_bags", "all_empty", "zipf"])
@pytest.mark.parametrize("kind,length,shards", [("rw", 1, 8), ("twrw", 3, 8), ("tw", 3, 8), ("rw", 2, 2)])
def test_host_routing_equals_device_routing(case, kind, length, shards):
    """The numpy router (host batches) and the on-device router (device batches) give every device the same view."""
    from ndp.embedding import _route_fn
    from ndp.routing import host_routes, route_capacity

    rng = np.random.default_rng(2)
    sizes, batch = (40, 9, 17), 32
    if case == "zipf":
        ids = np.stack([rng.zipf(1.3, size=(batch, length)) % n for n in sizes], axis=1).astype(np.int32)
        lengths = rng.integers(0, length + 1, size=(batch, len(sizes))).astype(np.int32)
    else:
        ids, lengths = extreme_batch(case, sizes, batch, length, rng)
    plan = plan_sharding(sizes, 4, shards, kind)
    capacity = route_capacity(plan, ids, lengths)
    on_host = host_routes(plan, ids, lengths).routed(capacity, plan.slab_rows)
    on_device = _route_fn(storage_mesh(shards), plan, capacity)(jnp.asarray(ids), jnp.asarray(lengths))
    for name, want, got in zip(on_host._fields, on_device, on_host):
        np.testing.assert_array_equal(got, np.asarray(want), err_msg=name)
    if case != "all_empty":
        with pytest.raises(ValueError, match="capacity: this batch needs at least"):
            host_routes(plan, ids, lengths).routed(capacity._replace(lookups=0), plan.slab_rows)


def brute_force_counts(plan, ids, lengths):
    """Lookups and distinct bags per (source device, owner), by looping over every lookup."""
    s, batch = plan.num_shards, ids.shape[0]
    lookups, bags = np.zeros((s, s), int), np.zeros((s, s), int)
    for b in range(batch):
        source = b // (batch // s)
        for t in range(ids.shape[1]):
            owners = set()
            for k in range(lengths[b, t]):
                owner = next(p.shard for p in plan.pieces if p.table == t and p.row_start <= ids[b, t, k] < p.row_end)
                lookups[source, owner] += 1
                owners.add(owner)
            for owner in owners:
                bags[source, owner] += 1
    return lookups, bags


@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
    shards=st.sampled_from([2, 4, 8]),
    kind=st.sampled_from(["tw", "rw", "twrw"]),
    length=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_route_capacity_covers_the_largest_bucket(sizes, shards, kind, length, seed):
    from ndp.routing import route_capacity

    rng = np.random.default_rng(seed)
    batch = 2 * shards
    ids = np.stack([rng.zipf(1.3, size=(batch, length)) % n for n in sizes], axis=1).astype(np.int32)
    lengths = rng.integers(0, length + 1, size=(batch, len(sizes))).astype(np.int32)
    plan = plan_sharding(sizes, 4, shards, kind)
    lookups, bags = brute_force_counts(plan, ids, lengths)
    capacity = route_capacity(plan, ids, lengths)
    assert lookups.max() <= capacity.lookups <= max(1, 1.25 * lookups.max())
    assert bags.max() <= capacity.bags <= capacity.lookups
    assert capacity.one_id == (length == 1)


def test_a_too_small_capacity_poisons_the_lookup_instead_of_dropping_ids():
    from ndp.routing import Capacity

    sizes, dim = (16,), 4
    mesh = storage_mesh(2)
    plan = plan_sharding(sizes, dim, 2, "rw")
    slab = put_slab(mesh, plan, pack_tables(plan, [np.ones((16, dim), np.float32)]))
    ids = np.zeros((4, 1, 1), np.int32)  # all four lookups owned by device 0: buckets of 2 needed
    lengths = np.ones((4, 1), np.int32)
    assert np.all(np.asarray(lookup(mesh, plan, slab, ids, lengths)) == 1.0)
    with pytest.raises(ValueError, match=r"capacity: this batch needs at least Capacity\(lookups=2"):
        lookup(mesh, plan, slab, ids, lengths, capacity=Capacity(1, 1, True))
    # Traced ids cannot be checked on the host: the overflowing senders' pooled embeddings are NaN.
    traced = jax.jit(lambda ids, lengths: lookup(mesh, plan, slab, ids, lengths, capacity=Capacity(1, 1, True)))
    assert np.all(np.isnan(np.asarray(traced(ids, lengths))))
    with pytest.raises(ValueError, match=r"ids: expected ids of table 0 in \[0, 16\)"):
        lookup(mesh, plan, slab, np.full((4, 1, 1), 16, np.int32), lengths)


def test_twrw_plans_place_tables_on_groups_and_rows_within_them():
    plan = plan_sharding((100, 60, 50, 10), embedding_dim=4, num_shards=8, kind="twrw")  # groups of 2
    assert plan.group_size == 2
    for t in range(4):
        shards = sorted(p.shard for p in plan.pieces if p.table == t)
        assert len(shards) == 2 and shards[0] % 2 == 0 and shards[1] == shards[0] + 1
    assert plan.rows_per_shard() == [50, 50, 30, 30, 25, 25, 5, 5]
    with pytest.raises(ValueError, match="group_size: expected a divisor of num_shards"):
        plan_sharding((10,), 4, 8, "twrw", group_size=3)
    with pytest.raises(ValueError, match="group_size: only the 'twrw' layout"):
        plan_sharding((10,), 4, 8, "rw", group_size=2)
