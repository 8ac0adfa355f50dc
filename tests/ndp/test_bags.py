"""Jagged bags: the host conversions, the CPU kernels and their XLA twin against brute force, training with them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from runkit import UsageError
from ndp import bag_kernels
from ndp.bags import Bags, bag_lengths, bags_from_jagged, bags_from_padded, bags_to_padded, check_bags
from ndp.configs import DLRMConfig
from ndp.embedding import apply_bags_update, lookup_bags, pack_tables, plan_sharding, unpack_tables
from ndp.model import DLRMHead
from ndp.train import (
    Batch,
    EmbeddingOptimizer,
    bce_loss,
    init_train_state,
    jagged_to_padded,
    make_train_step,
    shard_batch,
    storage_mesh,
    to_host,
)
from tests.ndp.test_inplace_update import table_copies
from tests.ndp.test_train_equivalence import DIM, LR, random_batches, reference_training

PATHS = ["kernel", "xla"]


def random_tables(rng, sizes, batch, max_length):
    """Per-table CSR bags (empty bags included) with duplicate-heavy ids."""
    tables = []
    for n in sizes:
        lengths = rng.integers(0, max_length + 1, size=batch)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        tables.append((rng.integers(0, n, size=int(offsets[-1])), offsets))
    return tables


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4), batch=st.integers(1, 6),
       max_length=st.integers(0, 4), seed=st.integers(0, 2**16))  # fmt: skip
def test_jagged_and_padded_forms_convert_into_each_other(sizes, batch, max_length, seed):
    tables = random_tables(np.random.default_rng(seed), sizes, batch, max_length)
    bags = bags_from_jagged(tables)
    want_ids, want_lengths = jagged_to_padded([v for v, _ in tables], [o for _, o in tables])
    ids, lengths = bags_to_padded(bags, batch)
    np.testing.assert_array_equal(lengths, want_lengths)
    np.testing.assert_array_equal(ids, want_ids)
    again = bags_from_padded(ids, lengths, capacity=bags.values.shape[0] + 5)
    np.testing.assert_array_equal(again.offsets, bags.offsets)
    np.testing.assert_array_equal(again.values[: bags.offsets[-1]], bags.values)
    np.testing.assert_array_equal(bag_lengths(bags, batch), lengths)
    check_bags(bags, sizes, batch)


def brute_force(slab, offsets, sizes, tables, grad, lr, eps, state):
    """Pooled sums, SGD and row-wise Adagrad of per-table CSR bags, one lookup at a time
    (table ``t`` from slab row ``offsets[t]``)."""
    batch = tables[0][1].shape[0] - 1
    pooled = np.zeros((batch, len(sizes), slab.shape[1]), np.float64)
    sgd = slab.astype(np.float64)
    row_grad = np.zeros_like(sgd)
    for t, (values, bounds) in enumerate(tables):
        for b in range(batch):
            for v in values[bounds[b] : bounds[b + 1]]:
                pooled[b, t] += slab[offsets[t] + v]
                sgd[offsets[t] + v] -= lr * grad[b, t]
                row_grad[offsets[t] + v] += grad[b, t]
    touched = np.any(row_grad != 0, axis=1)
    accumulated = state + touched * np.mean(row_grad**2, axis=1)
    adagrad = slab - touched[:, None] * lr * row_grad / (np.sqrt(accumulated)[:, None] + eps)
    return pooled, sgd, adagrad, accumulated


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=3), batch=st.integers(1, 5),
       max_length=st.integers(0, 5), width=st.sampled_from([1, 3, 16, 19]), seed=st.integers(0, 2**16))  # fmt: skip
def test_pooling_and_updates_match_brute_force(path, sizes, batch, max_length, width, seed):
    """Duplicates (tables of a few rows), empty bags, widths that are no multiple of a vector, and
    padding past the lookups filled with ids that must be ignored."""
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, sizes, batch, max_length)
    bags = bags_from_jagged(tables, capacity=int(sum(o[-1] for _, o in tables)) + 7)
    bags = Bags(np.where(np.arange(bags.values.shape[0]) < bags.offsets[-1], bags.values,
                         rng.integers(-3, 50, bags.values.shape[0])).astype(np.int32), bags.offsets)  # fmt: skip
    plan = plan_sharding(sizes, width, 1, "tw")
    mesh = storage_mesh(1)
    slab = rng.normal(size=(plan.slab_rows, width)).astype(np.float32)
    grad = rng.normal(size=(batch, len(sizes), width)).astype(np.float32)
    state = rng.random(plan.slab_rows).astype(np.float32)
    lengths = bag_lengths(bags, batch)
    lr, eps = 0.1, 1e-3
    pooled, sgd, adagrad, accumulated = brute_force(slab, plan.routing()[0][2], sizes, tables, grad, lr, eps, state)

    got = jax.jit(lambda s: lookup_bags(mesh, plan, s, bags, lengths, path=path))(slab)
    np.testing.assert_allclose(np.asarray(got), pooled, atol=1e-5)
    update = jax.jit(lambda s, a, optimizer: apply_bags_update(mesh, plan, s, a, bags, lengths, grad, lr, optimizer=optimizer,
                                                                eps=eps, path=path), static_argnums=2)  # fmt: skip
    new_slab, _ = update(jnp.asarray(slab), None, "sgd")
    np.testing.assert_allclose(np.asarray(new_slab), sgd, atol=1e-5)
    new_slab, new_state = update(jnp.asarray(slab), jnp.asarray(state), "rowwise_adagrad")
    np.testing.assert_allclose(np.asarray(new_state), accumulated, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new_slab), adagrad, atol=1e-5)


def bag_training(tables, head, batches, optimizer, pooling, num_shards, path):
    mesh = storage_mesh(num_shards)
    plan = plan_sharding([t.shape[0] for t in tables], DIM, num_shards, "rw")
    tx = optax.sgd(LR)
    embedding_optimizer = EmbeddingOptimizer(optimizer, LR)
    state, graphdef = init_train_state(mesh, plan, head, tx, jax.random.key(0), embedding_optimizer,
                                       host_slab=pack_tables(plan, tables))  # fmt: skip
    step = make_train_step(mesh, plan, graphdef, bce_loss, tx, embedding_optimizer, pooling=pooling, bag_path=path)
    for batch in batches:
        bags = bags_from_padded(batch.ids, batch.lengths)
        state, loss = step(state, batch._replace(ids=bags, lengths=None))
        jax.block_until_ready(loss)
    return unpack_tables(plan, to_host(mesh, state.slab)), state.params


@pytest.mark.parametrize("optimizer,pooling,num_shards,path", [
    ("sgd", "sum", 1, "kernel"), ("rowwise_adagrad", "mean", 1, "kernel"), ("rowwise_adagrad", "sum", 1, "xla"),
    ("sgd", "mean", 1, "xla"), ("rowwise_adagrad", "sum", 2, "auto"),
])  # fmt: skip
def test_training_on_jagged_bags_matches_textbook_training(optimizer, pooling, num_shards, path):
    """Against dense autodiff gradients and dense updates (Zipf ids: many duplicates); on 2 devices the
    step converts the bags to the padded form its routing takes."""
    rng = np.random.default_rng(3)
    sizes = [3, 17, 40]
    tables = [rng.normal(size=(n, DIM)).astype(np.float32) for n in sizes]
    cfg = DLRMConfig(num_dense=3, table_sizes=tuple(sizes), embedding_dim=DIM, bottom_mlp=(DIM,), top_mlp=(4, 1))
    batches = random_batches(rng, sizes, 4, num_batches=3, skew=1.3)
    want, want_params = reference_training(tables, DLRMHead(cfg, rngs=nnx.Rngs(0)), batches, optimizer, pooling)
    got, got_params = bag_training(tables, DLRMHead(cfg, rngs=nnx.Rngs(0)), batches, optimizer, pooling, num_shards, path)
    for t, (w, g) in enumerate(zip(want, got)):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0, err_msg=f"table {t}")
    assert any(not np.array_equal(a, b) for a, b in zip(want, tables)), "training did not move the tables"
    for w, g in zip(jax.tree.leaves(want_params), jax.tree.leaves(got_params)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_kernel_step_updates_the_tables_in_place(optimizer):
    mesh = storage_mesh(1)
    sizes = (200_000, 500)
    plan = plan_sharding(sizes, DIM, 1, "tw")
    cfg = DLRMConfig(num_dense=3, table_sizes=sizes, embedding_dim=DIM, bottom_mlp=(DIM,), top_mlp=(4, 1))
    embedding_optimizer = EmbeddingOptimizer(optimizer, LR)
    tx = optax.sgd(LR)
    state, graphdef = init_train_state(mesh, plan, DLRMHead(cfg, rngs=nnx.Rngs(0)), tx, jax.random.key(0),
                                       embedding_optimizer)  # fmt: skip
    step = make_train_step(mesh, plan, graphdef, bce_loss, tx, embedding_optimizer, bag_path="kernel")
    batch = random_batches(np.random.default_rng(0), sizes, 3, num_batches=1)[0]
    batch = shard_batch(mesh, step.prepare(batch._replace(ids=bags_from_padded(batch.ids, batch.lengths)))[0])
    compiled = step.lower(state, batch).compile()
    assert "ndp_bags" in compiled.as_text(), "the step does not call the kernels"
    assert table_copies(compiled.as_text(), plan) == []
    old_slab = state.slab
    state, _ = step(state, batch)
    jax.block_until_ready(state.slab)
    assert old_slab.is_deleted(), "the slab was not donated to the step"


def test_bad_bags_are_refused_with_the_table_and_the_id():
    bags = bags_from_jagged([(np.array([0, 1]), np.array([0, 1, 2])), (np.array([4]), np.array([0, 0, 1]))])
    check_bags(bags, (2, 5), 2)
    with pytest.raises(UsageError, match=r"ids of table 1 in \[0, 4\), got 4"):
        check_bags(bags, (2, 4), 2)
    with pytest.raises(UsageError, match=r"ids.offsets: expected 7 offsets"):
        check_bags(bags, (2, 5, 3), 2)
    with pytest.raises(UsageError, match=r"offsets\[1\]: expected 3 non-decreasing offsets"):
        bags_from_jagged([(np.array([0, 1]), np.array([0, 1, 2])), (np.array([4]), np.array([0, 2, 1]))])
    mesh = storage_mesh(1)
    plan = plan_sharding((2, 4), DIM, 1, "tw")
    head = DLRMHead(DLRMConfig(num_dense=1, table_sizes=(2, 4), embedding_dim=DIM, bottom_mlp=(DIM,), top_mlp=(1,)),
                    rngs=nnx.Rngs(0))  # fmt: skip
    state, graphdef = init_train_state(mesh, plan, head, optax.sgd(LR), jax.random.key(0), EmbeddingOptimizer())
    with pytest.raises(UsageError, match="bag_path"):
        make_train_step(mesh, plan, graphdef, bce_loss, optax.sgd(LR), EmbeddingOptimizer(), bag_path="gpu")
    step = make_train_step(mesh, plan, graphdef, bce_loss, optax.sgd(LR), EmbeddingOptimizer())
    batch = Batch(np.zeros((2, 1), np.float32), bags, None, np.zeros(2, np.float32))
    with pytest.raises(UsageError, match="table 1"):
        step(state, batch)


def test_the_kernel_path_is_refused_where_the_kernels_cannot_run(monkeypatch):
    monkeypatch.setattr(bag_kernels, "available", lambda: (False, "backend 'gpu', the kernel runs on 'cpu'"))
    plan, mesh = plan_sharding((3,), 2, 1, "tw"), storage_mesh(1)
    bags = bags_from_jagged([(np.array([0, 2]), np.array([0, 2]))])
    with pytest.raises(UsageError, match="path: the 'kernel' path needs the CPU kernels.*backend 'gpu'"):
        lookup_bags(mesh, plan, jnp.ones((3, 2)), bags, np.array([[2]]), path="kernel")
    # "auto" falls back to XLA there.
    pooled = lookup_bags(mesh, plan, jnp.ones((3, 2)), bags, np.array([[2]]))
    np.testing.assert_allclose(np.asarray(pooled), [[[2.0, 2.0]]])
