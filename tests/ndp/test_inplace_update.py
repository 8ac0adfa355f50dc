"""The compiled training step neither copies tables nor forms table-sized temporaries."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ndp.embedding import apply_sparse_update, lookup, plan_sharding, route_stats
from ndp.train import Batch, EmbeddingOptimizer, init_train_state, make_train_step, mse_loss, shard_batch, storage_mesh

ROWS = (200_000, 500)
DIM = 16
BATCH = 64


class LinearHead(nnx.Module):
    """Output linear in the pooled embeddings."""

    def __init__(self, tables: int):
        self.w = nnx.Param(jnp.ones((tables, DIM), jnp.float32))

    def __call__(self, dense, pooled):
        return jnp.einsum("btd,td->b", pooled, self.w[...])


def linear_loss(predictions, labels):
    """A loss whose gradient w.r.t. the embeddings does not depend on their values."""
    return -jnp.mean(predictions * labels)


def table_copies(compiled_text: str, plan) -> list[str]:
    """Copies of a device's slab or of its row-wise accumulators in the compiled step."""
    shapes = (f"f32[{plan.slab_rows},{plan.slab_width}]", f"f32[{plan.slab_rows}]")
    return [
        line
        for line in compiled_text.splitlines()
        if " copy(" in line and any(shape in line.split(" copy(")[0] for shape in shapes)
    ]


def setup(num_shards, optimizer):
    mesh = storage_mesh(num_shards)
    plan = plan_sharding(ROWS, DIM, num_shards, "rw")
    embedding_optimizer = EmbeddingOptimizer(optimizer, 0.1)
    tx = optax.sgd(0.1)
    state, graphdef = init_train_state(mesh, plan, LinearHead(len(ROWS)), tx, jax.random.key(0), embedding_optimizer)
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(0, n, size=(BATCH, 2)) for n in ROWS], axis=1).astype(np.int32)
    batch = Batch(np.zeros((BATCH, 0), np.float32), ids, np.full((BATCH, 2), 2, np.int32), np.ones(BATCH, np.float32))
    return mesh, plan, state, graphdef, tx, embedding_optimizer, shard_batch(mesh, batch)


@pytest.mark.parametrize("num_shards,optimizer,loss_fn", [
    (1, "sgd", linear_loss), (1, "rowwise_adagrad", linear_loss), (8, "rowwise_adagrad", linear_loss),
    (8, "sgd", mse_loss),
])  # fmt: skip
def test_step_has_no_table_copies_and_no_table_sized_temporaries(num_shards, optimizer, loss_fn):
    mesh, plan, state, graphdef, tx, embedding_optimizer, batch = setup(num_shards, optimizer)
    step = make_train_step(mesh, plan, graphdef, loss_fn, tx, embedding_optimizer)
    compiled = step.lower(state, batch).compile()
    assert table_copies(compiled.as_text(), plan) == []
    slab_bytes = plan.slab_rows * plan.slab_width * 4
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < slab_bytes / 8, f"step temporaries {temp} B vs one device's tables {slab_bytes} B"
    old_slab = state.slab
    state, _ = step(state, batch)
    jax.block_until_ready(state.slab)
    assert old_slab.is_deleted(), "the slab was not donated to the step"


def test_copy_detector_sees_copies_of_a_naive_step():
    """Without the data dependency the linear loss makes XLA copy the tables: the check above would notice."""
    mesh, plan, state, graphdef, tx, embedding_optimizer, batch = setup(1, "sgd")

    def naive_step(state, batch):
        pooled = lookup(mesh, plan, state.slab, batch.ids, batch.lengths)
        head = lambda params, pooled: linear_loss(nnx.merge(graphdef, params)(batch.dense, pooled), batch.labels)
        loss, grad = jax.value_and_grad(head, argnums=1)(state.params, pooled)
        slab, _ = apply_sparse_update(mesh, plan, state.slab, None, batch.ids, batch.lengths, grad, 0.1)
        return state._replace(slab=slab), loss

    compiled = jax.jit(naive_step, donate_argnums=0).lower(state, batch).compile()
    assert len(table_copies(compiled.as_text(), plan)) >= 1


def hlo_shapes(compiled_text: str) -> dict[str, str]:
    """Every named value of the compiled HLO and its shape (``f32[384,16]``)."""
    shapes = {}
    for line in compiled_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+\[[\d,]*\])", line)
        if match:
            shapes[match.group(1)] = match.group(2)
    return shapes


def rows_touched_in_slab(compiled_text: str, plan) -> tuple[list[int], list[int]]:
    """Rows read by every gather from a device's slab and rows written by every scatter into it."""
    slab = f"f32[{plan.slab_rows},{plan.slab_width}]"
    shapes = hlo_shapes(compiled_text)
    gathered, scattered = [], []
    for line in compiled_text.splitlines():
        for op, out in ((" gather(", gathered), (" scatter(", scattered)):
            if op not in line:
                continue
            result = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = (\w+\[[\d,]*\])", line).group(1)
            operands = [name.lstrip("%") for name in line.split(op)[1].split(")")[0].split(", ")]
            if op == " gather(" and shapes.get(operands[0]) == slab:
                out.append(int(result.split("[")[1].split(",")[0]))
            if op == " scatter(" and result == slab:
                out.append(int(shapes[operands[2]].split("[")[1].split(",")[0]))
    return gathered, scattered


@pytest.mark.parametrize("kind", ["rw", "twrw"])
def test_each_device_gathers_and_scatters_only_its_share_of_the_batch(kind):
    """8 devices, uniform one-hot lookups: the compiled step's gathers from the slab and scatters into it
    cover the rows a device owns (its bucket capacity), not the whole batch as an all-gather of ids would."""
    mesh = storage_mesh(8)
    sizes, batch = (5000, 3000, 800, 64), 512
    plan = plan_sharding(sizes, DIM, 8, kind)
    embedding_optimizer = EmbeddingOptimizer("rowwise_adagrad", 0.1)
    tx = optax.sgd(0.1)
    state, graphdef = init_train_state(mesh, plan, LinearHead(len(sizes)), tx, jax.random.key(0), embedding_optimizer)
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(0, n, size=(batch, 1)) for n in sizes], axis=1).astype(np.int32)
    host = Batch(np.zeros((batch, 0), np.float32), ids, np.ones((batch, len(sizes)), np.int32), np.ones(batch, np.float32))
    step = make_train_step(mesh, plan, graphdef, linear_loss, tx, embedding_optimizer)
    text = step.lower(state, host).compile().as_text()
    gathered, scattered = rows_touched_in_slab(text, plan)
    lookups = batch * len(sizes)
    stats = route_stats(plan, ids, host.lengths)
    share = max(stats["lookups_per_device"])
    assert gathered and scattered
    # Buckets are padded to the largest (source, owner) count, rounded up by at most 25%.
    assert max(gathered + scattered) <= 2 * share < lookups / 2, (gathered, scattered, share, lookups)
    # The bytes route_stats reports are those the compiled all-to-alls send (a host-routed batch: no ids).
    assert all_to_all_sent_bytes(text, 8) == stats["exchange_bytes_per_device"][0] > 0


def all_to_all_sent_bytes(compiled_text: str, devices: int) -> int:
    """Bytes one device sends in the compiled all-to-alls: ``(S - 1) / S`` of each result."""
    total = 0
    for line in compiled_text.splitlines():
        if " all-to-all(" in line:
            result = line.split(" = ", 1)[1].split(" all-to-all(")[0]
            for dtype, dims in re.findall(r"(f32|s32)\[([\d,]*)\]", result):
                total += 4 * int(np.prod([int(d) for d in dims.split(",") if d]))
    return total * (devices - 1) // devices
