"""A small training run shared by the two-process worker and the single-process reference."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from ndp.configs import DLRMConfig
from ndp.embedding import pack_tables, plan_sharding, unpack_tables
from ndp.model import DLRMHead
from ndp.train import Batch, EmbeddingOptimizer, bce_loss, init_train_state, make_train_step, storage_mesh, to_host

TABLE_SIZES = (37, 5, 64)
DIM = 4
BATCH = 8


def train_case(num_devices: int | None, kind: str, optimizer: str, steps: int = 3):
    """Train on ``num_devices`` devices (all devices of all processes when ``None``);
    returns host copies of the tables and the dense parameters."""
    rng = np.random.default_rng(0)
    tables = [rng.normal(size=(n, DIM)).astype(np.float32) for n in TABLE_SIZES]
    mesh = storage_mesh(num_devices)
    plan = plan_sharding(TABLE_SIZES, DIM, mesh.shape["storage"], kind)
    cfg = DLRMConfig(num_dense=3, table_sizes=TABLE_SIZES, embedding_dim=DIM, bottom_mlp=(DIM,), top_mlp=(4, 1))
    tx = optax.sgd(0.05, momentum=0.9)  # optax.adam trips strict dtype promotion (float ** int32 count)
    embedding_optimizer = EmbeddingOptimizer(optimizer, 0.05)
    state, graphdef = init_train_state(
        mesh, plan, DLRMHead(cfg, rngs=nnx.Rngs(0)), tx, jax.random.key(0), embedding_optimizer,
        host_slab=pack_tables(plan, tables),
    )  # fmt: skip
    step = make_train_step(mesh, plan, graphdef, bce_loss, tx, embedding_optimizer)
    for _ in range(steps):
        lengths = rng.integers(0, 3, size=(BATCH, len(TABLE_SIZES))).astype(np.int32)
        ids = np.stack([rng.integers(0, n, size=(BATCH, 2)) for n in TABLE_SIZES], axis=1).astype(np.int32)
        batch = Batch(rng.normal(size=(BATCH, 3)).astype(np.float32), ids, lengths,
                      (rng.random(BATCH) < 0.5).astype(np.float32))  # fmt: skip
        state, loss = step(state, batch)  # the host batch: the step routes and places it
        jax.block_until_ready(loss)
    out_tables = unpack_tables(plan, to_host(mesh, state.slab))
    params = [to_host(mesh, leaf) for leaf in jax.tree.leaves(state.params)]
    return out_tables, params
