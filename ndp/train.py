"""One jitted training step: lookups near the data, data-parallel MLPs, sparse updates in place.

A step of :func:`make_train_step`:

1. pooled embeddings come from the storage devices (:func:`ndp.embedding.lookup`);
2. loss and gradients of the dense head (an NNX module) w.r.t. its parameters and
   w.r.t. the pooled embeddings, data-parallel over the batch;
3. the dense parameters are updated with an optax transformation; the pooled
   gradients travel back to the storage devices, which update their rows
   (:func:`ndp.embedding.apply_sparse_update`).

The train state is donated, so tables and accumulators are updated in place. The
pooled gradient is made to depend on the pooled embeddings (``g + 0 * pooled``, one
fused multiply-add over ``(B, T, D)``): when the loss is linear in the embeddings
the true gradient does not, XLA may then order the row update before the lookup,
and it copies every table to keep the old values alive (two table-sized copies
per step, tens of times slower, growing with table size). An
``optimization_barrier`` on the slab does not prevent those copies; the data
dependency does (tests/ndp check the compiled step for table-sized copies).

Example:
    >>> import jax, numpy as np, optax
    >>> from flax import nnx
    >>> from ndp.configs import DLRMConfig
    >>> from ndp.embedding import plan_sharding
    >>> from ndp.model import DLRMHead
    >>> mesh = storage_mesh(1)
    >>> cfg = DLRMConfig(num_dense=2, table_sizes=(10, 7), embedding_dim=4, bottom_mlp=(4,), top_mlp=(1,))
    >>> plan = plan_sharding(cfg.table_sizes, 4, 1, "rw")
    >>> head = DLRMHead(cfg, rngs=nnx.Rngs(0))
    >>> tx = optax.sgd(0.1)
    >>> state, graphdef = init_train_state(mesh, plan, head, tx, jax.random.key(0), EmbeddingOptimizer("sgd", 0.1))
    >>> step = make_train_step(mesh, plan, graphdef, bce_loss, tx, EmbeddingOptimizer("sgd", 0.1))
    >>> batch = Batch(np.ones((4, 2), np.float32), np.zeros((4, 2, 1), np.int32), np.ones((4, 2), np.int32), np.ones(4, np.float32))
    >>> state, loss = step(state, shard_batch(mesh, batch))
    >>> int(state.step), bool(loss > 0)
    (1, True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

from runkit import UsageError, check_choice, check_positive
from ndp.embedding import (
    AXIS,
    BAG_PATHS,
    OPTIMIZERS,
    POOLINGS,
    Capacity,
    ShardingPlan,
    apply_bags_update,
    apply_routed_update,
    apply_sparse_update,
    batch_capacity,
    init_rowwise_state,
    init_slab,
    lookup,
    lookup_bags,
    lookup_routed,
    place_routed,
    put_slab,
    route,
)
from ndp.bags import Bags, bag_lengths, bags_to_padded, check_bags, pad_bags
from ndp.routing import Routed, host_routes, round_capacity, routed


class Batch(NamedTuple):
    """A training batch in fixed-shape form.

    Attributes:
      dense: ``float32 (B, F)`` dense features (``F`` may be 0).
      ids: ``int32 (B, T, L)`` row ids per table, padded to ``L`` lookups.
      lengths: ``int32 (B, T)`` bag lengths (entries past them are ignored).
      labels: ``float32 (B,)`` click (0/1) or rating.
    """

    dense: Any
    ids: Any
    lengths: Any
    labels: Any


class EmbeddingOptimizer(NamedTuple):
    """The sparse optimizer of the tables: ``"sgd"`` or ``"rowwise_adagrad"``."""

    name: str = "rowwise_adagrad"
    learning_rate: float = 0.01
    eps: float = 1e-8


class TrainState(NamedTuple):
    """Everything a step changes. ``slab_state`` holds row-wise Adagrad accumulators
    (or is an empty placeholder for SGD)."""

    slab: jax.Array
    slab_state: jax.Array
    params: Any
    opt_state: Any
    step: jax.Array


def storage_mesh(num_devices: int | None = None, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh named ``storage`` over the first ``num_devices`` devices (all by default)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if num_devices is None else int(num_devices)
    if not 1 <= n <= len(devices):
        raise UsageError(f"num_devices: expected 1..{len(devices)} (devices available), got {num_devices}")
    return jax.make_mesh((n,), (AXIS,), devices=devices[:n])


def jagged_to_padded(values: Sequence[np.ndarray], offsets: Sequence[np.ndarray], max_length: int | None = None):
    """Convert per-table CSR bags (``values``, ``offsets``) to ``ids (B, T, L)`` and ``lengths (B, T)``.

    ``L`` is ``max_length`` or the longest bag (at least 1). Bags longer than ``L``
    raise ``ValueError`` rather than being silently cut.

    Example:
        >>> ids, lengths = jagged_to_padded([np.array([3, 4, 5])], [np.array([0, 2, 2, 3])])
        >>> ids[:, 0].tolist(), lengths[:, 0].tolist()
        ([[3, 4], [0, 0], [5, 0]], [2, 0, 1])
    """
    if len(values) != len(offsets):
        raise ValueError(f"offsets: expected one array per table ({len(values)}), got {len(offsets)}")
    lengths = np.stack([np.diff(np.asarray(o)) for o in offsets], axis=1).astype(np.int32)
    batch, tables = lengths.shape
    longest = int(lengths.max()) if lengths.size else 0
    cap = max(1, longest) if max_length is None else int(max_length)
    if longest > cap:
        raise ValueError(f"max_length: expected >= the longest bag ({longest}), got {cap}")
    ids = np.zeros((batch, tables, cap), np.int32)
    for t, (v, o) in enumerate(zip(values, offsets)):
        o = np.asarray(o)
        rows = np.repeat(np.arange(batch), lengths[:, t])
        cols = np.arange(int(o[-1]) - int(o[0])) - np.repeat(o[:-1] - o[0], lengths[:, t])
        ids[rows, t, cols] = np.asarray(v)[int(o[0]) : int(o[-1])]
    return ids, lengths


def shard_batch(mesh: jax.sharding.Mesh, batch: Batch) -> Batch:
    """Place a host batch (the same on every process) on the mesh, batch dimension over ``storage``."""
    sharding = jax.NamedSharding(mesh, jax.P(AXIS))

    def put(x, dtype):
        x = np.asarray(x, dtype)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    if isinstance(batch.ids, Bags):  # one device (BatchStep converts them for more): whole, on it
        whole = jax.NamedSharding(mesh, jax.P())
        ids = Bags(*(jax.device_put(np.asarray(x, np.int32), whole) for x in batch.ids))
    else:
        ids = put(batch.ids, np.int32)
    return Batch(put(batch.dense, np.float32), ids, put(batch.lengths, np.int32), put(batch.labels, np.float32))


def replicate(mesh: jax.sharding.Mesh, tree):
    """Put every leaf of ``tree`` on all devices of ``mesh`` (works across processes)."""
    sharding = jax.NamedSharding(mesh, jax.P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def init_train_state(
    mesh: jax.sharding.Mesh,
    plan: ShardingPlan,
    head: nnx.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    embedding_optimizer: EmbeddingOptimizer,
    *,
    host_slab: np.ndarray | None = None,
) -> tuple[TrainState, nnx.GraphDef]:
    """A fresh train state on ``mesh`` and the head's graph definition.

    Args:
      head: the dense model (its parameters are replicated).
      tx: the optax transformation of the dense parameters.
      key: initialises the tables (ignored when ``host_slab`` is given).
      host_slab: explicit initial tables packed with :func:`ndp.embedding.pack_tables`.
    """
    check_choice("embedding_optimizer", embedding_optimizer.name, OPTIMIZERS)
    graphdef, params = nnx.split(head)
    params = replicate(mesh, params)
    opt_state = jax.jit(tx.init, out_shardings=jax.NamedSharding(mesh, jax.P()))(params)
    slab = init_slab(mesh, plan, key) if host_slab is None else put_slab(mesh, plan, host_slab)
    if embedding_optimizer.name == "rowwise_adagrad":
        slab_state = init_rowwise_state(mesh, plan)
    else:
        slab_state = replicate(mesh, np.zeros((0,), np.float32))
    step = replicate(mesh, np.zeros((), np.int32))
    return TrainState(slab, slab_state, params, opt_state, step), graphdef


LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def bce_loss(predictions: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of click logits."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(predictions, labels))


def mse_loss(predictions: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean squared error of ratings."""
    return jnp.mean(jnp.square(predictions - labels))


class BatchStep:
    """A jitted function of ``(state, batch)`` whose batch may be host (numpy) or device arrays.

    Pass host batches, the same global batch in every process: a routed plan
    (:mod:`ndp.routing`) is then routed on the host in one numpy pass
    (:func:`ndp.routing.host_routes`), which also sizes its buckets, and every device
    receives only its own view; the batch is placed with :func:`shard_batch`. Device
    batches are accepted when this process can read all of them (their buckets are
    sized on the host, their ids routed on the devices). The step compiles per bucket
    capacity, which never shrinks (the largest so far is kept), so a run compiles a
    few times at most.

    Jagged :class:`~ndp.bags.Bags` are checked against the tables and padded to a rounded
    capacity that never shrinks either; on several devices they are converted to the
    padded form, which routing takes.
    """

    def __init__(self, mesh: jax.sharding.Mesh, plan: ShardingPlan, fn):
        self.mesh, self.plan, self.fn = mesh, plan, fn
        self.capacity = Capacity(0, 0)  # the largest seen so far: capacities only grow, so compiles stay few
        self.bag_capacity = 0  # likewise, entries of a jagged batch's values

    def _jagged(self, batch: Batch) -> Batch:
        """A host batch of jagged bags checked and padded (one device), or converted to padded ids (several)."""
        size = int(np.shape(batch.labels)[0])
        if isinstance(batch.ids.values, jax.Array):
            if self.plan.num_shards != 1:
                raise UsageError("ids: jagged Bags on several devices must be host (numpy) arrays, got device arrays")
            return batch if batch.lengths is not None else batch._replace(lengths=bag_lengths(batch.ids, size))
        check_bags(batch.ids, self.plan.table_sizes, size)
        if self.plan.num_shards != 1:
            ids, lengths = bags_to_padded(batch.ids, size)
            return batch._replace(ids=ids, lengths=lengths)
        self.bag_capacity = max(self.bag_capacity, round_capacity(int(np.asarray(batch.ids.offsets)[-1])))
        lengths = bag_lengths(batch.ids, size) if batch.lengths is None else batch.lengths
        return batch._replace(ids=pad_bags(batch.ids, self.bag_capacity), lengths=lengths)

    def prepare(self, batch: Batch) -> tuple[Batch, Routed | None, Capacity]:
        """The batch on the mesh, its routing (host-routed batches; else ``None``) and the bucket capacity."""
        if isinstance(batch.ids, Bags):
            batch = self._jagged(batch)
            if isinstance(batch.ids, Bags):
                on_host = not isinstance(batch.ids.values, jax.Array)
                return (shard_batch(self.mesh, batch) if on_host else batch), None, Capacity(0, 0)
        on_host = not isinstance(batch.ids, jax.Array)
        routes = host_routes(self.plan, batch.ids, batch.lengths) if on_host and routed(self.plan) else None
        needed = routes.capacity() if routes is not None else batch_capacity(self.plan, batch.ids, batch.lengths)
        if needed.lookups:
            seen = self.capacity
            if seen.lookups and seen.one_id == needed.one_id:
                needed = Capacity(max(seen.lookups, needed.lookups), max(seen.bags, needed.bags), needed.one_id)
            self.capacity = needed
        routed_batch = None if routes is None else place_routed(self.mesh, routes.routed(needed, self.plan.slab_rows))
        if on_host:
            batch = shard_batch(self.mesh, batch)
        return batch, routed_batch, needed

    def __call__(self, state, batch: Batch):
        return self.fn(state, *self.prepare(batch))

    def lower(self, state, batch: Batch):
        """``jax.jit(...).lower`` for this batch's capacity (to inspect the compiled step)."""
        return self.fn.lower(state, *self.prepare(batch))


def _pooled_and_update(mesh, plan, pooling, embedding_optimizer, bag_path="auto"):
    """``(lookup, update)`` closures over one routing of the batch (routed plans) or the plain pair."""

    def lookup_fn(slab, batch, routed_batch, capacity):
        if isinstance(batch.ids, Bags):
            return lookup_bags(mesh, plan, slab, batch.ids, batch.lengths, pooling=pooling, path=bag_path), None
        if not routed(plan):
            return lookup(mesh, plan, slab, batch.ids, batch.lengths, pooling=pooling), None
        if routed_batch is None:  # a device batch: routed on the devices
            routed_batch = route(mesh, plan, batch.ids, batch.lengths, capacity)
        return lookup_routed(mesh, plan, slab, routed_batch, batch.lengths, pooling, capacity), routed_batch

    def update_fn(slab, slab_state, batch, routed_batch, pooled_grad, capacity):
        lr, eps = embedding_optimizer.learning_rate, embedding_optimizer.eps
        if isinstance(batch.ids, Bags):
            return apply_bags_update(mesh, plan, slab, slab_state, batch.ids, batch.lengths, pooled_grad, lr, pooling=pooling,
                                     optimizer=embedding_optimizer.name, eps=eps, path=bag_path)  # fmt: skip
        if routed_batch is None:
            return apply_sparse_update(mesh, plan, slab, slab_state, batch.ids, batch.lengths, pooled_grad, lr,
                                       pooling=pooling, optimizer=embedding_optimizer.name, eps=eps)  # fmt: skip
        return apply_routed_update(mesh, plan, slab, slab_state, routed_batch, batch.lengths, pooled_grad,
                                   jnp.asarray(lr, jnp.float32), pooling, embedding_optimizer.name, eps, capacity)  # fmt: skip

    return lookup_fn, update_fn


def make_train_step(
    mesh: jax.sharding.Mesh,
    plan: ShardingPlan,
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    embedding_optimizer: EmbeddingOptimizer,
    *,
    pooling: str = "sum",
    embedding_l2: float = 0.0,
    bag_path: str = "auto",
) -> BatchStep:
    """Build the jitted, state-donating step ``(state, batch) -> (state, loss)``.

    Args:
      graphdef: from :func:`init_train_state`.
      loss_fn: ``(predictions, labels) -> scalar``, a mean over the examples (e.g.
        :func:`bce_loss`, :func:`mse_loss`): each device evaluates it on its slice of
        the batch and the step averages the devices' losses and gradients.
      tx: optax transformation of the dense parameters.
      embedding_optimizer: sparse optimizer of the tables.
      pooling: ``"sum"`` or ``"mean"``.
      embedding_l2: weight of ``mean_b sum_t ||pooled_bt||^2`` added to the loss, the
        usual per-example L2 of factorisation models (it only touches looked-up rows).
      bag_path: how jagged :class:`~ndp.bags.Bags` batches are looked up and updated on one
        device (:data:`ndp.embedding.BAG_PATHS`): ``"auto"`` runs the CPU kernels where they can run.

    Returns:
      A :class:`BatchStep`: call it with a host batch (numpy arrays, the same global
      batch in every process) or a batch placed by :func:`shard_batch`.
    """
    check_choice("pooling", pooling, POOLINGS)
    check_choice("embedding_optimizer", embedding_optimizer.name, OPTIMIZERS)
    check_positive("learning_rate", embedding_optimizer.learning_rate)
    check_positive("embedding_l2", embedding_l2, allow_zero=True)
    check_choice("bag_path", bag_path, BAG_PATHS)
    lookup_fn, update_fn = _pooled_and_update(mesh, plan, pooling, embedding_optimizer, bag_path)

    def objective(params, pooled, dense, labels):
        loss = loss_fn(nnx.merge(graphdef, params)(dense, pooled), labels)
        if embedding_l2:
            loss = loss + embedding_l2 * jnp.mean(jnp.sum(jnp.square(pooled), axis=(1, 2)))
        return loss

    def single_device_grads(params, pooled, dense, labels):
        loss, (param_grads, pooled_grad) = jax.value_and_grad(objective, argnums=(0, 1))(params, pooled, dense, labels)
        return loss, param_grads, pooled_grad

    def local_grads(params, pooled, dense, labels):
        # Data parallel over ``storage``: each device differentiates the mean loss of its slice;
        # the global loss is the mean of the devices' (equal-sized) slices. The dense gradients
        # travel as one flat buffer: one all-reduce per step instead of one per parameter array
        # (across processes each collective has a fixed cost that dominates small arrays).
        # Differentiating w.r.t. a per-device copy keeps the gradients local (differentiating the
        # replicated parameters themselves would insert one all-reduce per array).
        params = jax.tree.map(lambda x: jax.lax.pcast(x, (AXIS,), to="varying"), params)
        loss, param_grads, pooled_grad = single_device_grads(params, pooled, dense, labels)
        devices = jax.lax.axis_size(AXIS)
        flat, unravel = ravel_pytree(param_grads)
        total = jax.lax.psum(jnp.concatenate([flat, loss[None]]), AXIS) / devices
        return total[-1], unravel(total[:-1]), pooled_grad / devices

    if mesh.shape[AXIS] == 1:
        head_grads = single_device_grads
    else:
        head_grads = jax.shard_map(
            local_grads, mesh=mesh, in_specs=(jax.P(), jax.P(AXIS), jax.P(AXIS), jax.P(AXIS)),
            out_specs=(jax.P(), jax.P(), jax.P(AXIS)),
        )  # fmt: skip

    def step(state: TrainState, batch: Batch, routed_batch: Routed | None, capacity: Capacity):
        pooled, routed_batch = lookup_fn(state.slab, batch, routed_batch, capacity)
        loss, param_grads, pooled_grad = head_grads(state.params, pooled, batch.dense, batch.labels)
        # Orders the in-place row update after the lookup for any loss; see the module docstring.
        pooled_grad = pooled_grad + 0.0 * pooled
        # Some optax transformations (Adam's bias correction: float ** int32 step count) need
        # standard promotion; the project's own code runs under strict promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(param_grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        adagrad = embedding_optimizer.name == "rowwise_adagrad"
        slab, slab_state = update_fn(state.slab, state.slab_state if adagrad else None, batch, routed_batch,
                                     pooled_grad, capacity)  # fmt: skip
        if slab_state is None:
            slab_state = state.slab_state
        return TrainState(slab, slab_state, params, opt_state, state.step + 1), loss

    return BatchStep(mesh, plan, jax.jit(step, donate_argnums=0, static_argnums=3))


def make_predict(mesh: jax.sharding.Mesh, plan: ShardingPlan, graphdef: nnx.GraphDef, *, pooling: str = "sum") -> BatchStep:
    """Jitted ``(state, batch) -> predictions (B,)`` (logits or ratings), a :class:`BatchStep`."""
    lookup_fn, _ = _pooled_and_update(mesh, plan, pooling, EmbeddingOptimizer())

    def predict(state: TrainState, batch: Batch, routed_batch: Routed | None, capacity: Capacity):
        pooled, _ = lookup_fn(state.slab, batch, routed_batch, capacity)
        return nnx.merge(graphdef, state.params)(batch.dense, pooled)

    return BatchStep(mesh, plan, jax.jit(predict, static_argnums=3))


@functools.lru_cache(maxsize=8)
def _gather_fn(mesh):
    return jax.jit(lambda x: x, out_shardings=jax.NamedSharding(mesh, jax.P()))


def to_host(mesh: jax.sharding.Mesh, x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) sharded array gathered to a numpy array on every process."""
    return np.asarray(_gather_fn(mesh)(x).addressable_data(0))
