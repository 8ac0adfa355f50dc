"""What one training iteration asks of the system: lookups, rows, MLP work, cache behaviour.

A :class:`Workload` is a pytree of arrays (vmappable like the hardware). Cache
behaviour enters as hit-rate *curves* over the cache capacity (a fraction of all
rows), one per policy; the system model interpolates them at the capacity a
configuration offers, so a cache-size sweep needs no new simulation. Curves come
from access traces (:func:`workload_from_trace`: the ``ndp`` synthetic generator,
MovieLens) or from the analytic power-law models (:func:`workload_from_zipf`,
for tables too large to trace).

Example:
    >>> from ndp.configs import criteo_kaggle_config
    >>> wl = workload_from_zipf(criteo_kaggle_config(), batch_size=2048, zipf_exponent=0.9)
    >>> int(wl.lookups_per_iteration), wl.curve_fraction.shape
    (53248, (33,))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from runkit import UsageError, check_positive
from ndp.configs import DLRMConfig
from ndp.sysmodel import cache

#: Capacity grid (fraction of all rows) on which hit-rate curves are tabulated.
CURVE_FRACTIONS = np.concatenate([[0.0], np.geomspace(1e-5, 1.0, 32)])


class Workload(NamedTuple):
    """One iteration of DLRM training, as the system model sees it.

    Attributes:
      batch_size: examples per iteration (global batch).
      num_tables: embedding tables.
      pooling_factor: mean lookups per table and example.
      embedding_dim: row width.
      value_bytes: bytes per embedding value (4 for fp32).
      optimizer_state_bytes: bytes of optimizer state per row (0 SGD, 4 row-wise Adagrad).
      total_rows: rows of all tables together.
      mlp_flops_per_example: forward FLOPs of bottom MLP + interaction + top MLP.
      bottom_flop_fraction: share of those FLOPs in the bottom MLP (runs before the embeddings arrive).
      mlp_weight_bytes: dense parameters (bytes), all-reduced across GPUs.
      unique_fraction: distinct rows / lookups within one iteration.
      consecutive_overlap: share of an iteration's distinct rows also used by the previous one.
      curve_fraction: capacity grid (fraction of ``total_rows``).
      hit_lru, hit_static: hit rates of LRU and of the statistics-driven static cache on that grid.
    """

    batch_size: jax.Array
    num_tables: jax.Array
    pooling_factor: jax.Array
    embedding_dim: jax.Array
    value_bytes: jax.Array
    optimizer_state_bytes: jax.Array
    total_rows: jax.Array
    mlp_flops_per_example: jax.Array
    bottom_flop_fraction: jax.Array
    mlp_weight_bytes: jax.Array
    unique_fraction: jax.Array
    consecutive_overlap: jax.Array
    curve_fraction: jax.Array
    hit_lru: jax.Array
    hit_static: jax.Array

    @property
    def lookups_per_iteration(self):
        return self.batch_size * self.num_tables * self.pooling_factor

    @property
    def row_bytes(self):
        return self.embedding_dim * self.value_bytes

    @property
    def table_bytes(self):
        return self.total_rows * (self.row_bytes + self.optimizer_state_bytes)


def mlp_costs(config: DLRMConfig) -> tuple[float, float, float]:
    """Forward FLOPs per example, bottom-MLP share, and dense weight bytes (fp32) of a DLRM.

    A dense layer ``a -> b`` costs ``2ab`` FLOPs forward; the dot interaction costs
    ``2 F^2 D`` for ``F`` features of width ``D``.

    Example:
        >>> from ndp.configs import criteo_kaggle_config
        >>> flops, bottom, weights = mlp_costs(criteo_kaggle_config(row_cap=10))
        >>> round(flops / 1e6, 3), round(bottom, 3)
        (0.972, 0.319)
    """
    def layers(width_in, widths):
        total_flops, total_weights = 0.0, 0.0
        for w in widths:
            total_flops += 2.0 * width_in * w
            total_weights += width_in * w + w
            width_in = w
        return total_flops, total_weights

    bottom_flops, bottom_weights = layers(config.num_dense, config.bottom_mlp)
    top_flops, top_weights = layers(config.interaction_width, config.top_mlp)
    features = config.num_tables + (1 if config.bottom_mlp else 0)
    interaction = 2.0 * features * features * config.embedding_dim if config.interaction == "dot" else 0.0
    total = bottom_flops + top_flops + interaction
    return total, bottom_flops / total, 4.0 * (bottom_weights + top_weights)


def _make(config, batch_size, pooling_factor, optimizer_state_bytes, unique, overlap, lru, static) -> Workload:
    check_positive("batch_size", batch_size)
    check_positive("pooling_factor", pooling_factor)
    flops, bottom, weights = mlp_costs(config)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return Workload(
        batch_size=f32(batch_size),
        num_tables=f32(config.num_tables),
        pooling_factor=f32(pooling_factor),
        embedding_dim=f32(config.embedding_dim),
        value_bytes=f32(4.0),
        optimizer_state_bytes=f32(optimizer_state_bytes),
        total_rows=f32(sum(config.table_sizes)),
        mlp_flops_per_example=f32(flops),
        bottom_flop_fraction=f32(bottom),
        mlp_weight_bytes=f32(weights),
        unique_fraction=f32(unique),
        consecutive_overlap=f32(overlap),
        curve_fraction=f32(CURVE_FRACTIONS),
        hit_lru=f32(np.maximum.accumulate(np.asarray(lru, np.float64))),
        hit_static=f32(np.maximum.accumulate(np.asarray(static, np.float64))),
    )


def workload_from_zipf(
    config: DLRMConfig,
    *,
    batch_size: int,
    zipf_exponent: float | Sequence[float] = 0.9,
    pooling_factor: float = 1.0,
    optimizer_state_bytes: float = 0.0,
    num_bins: int = 256,
) -> Workload:
    """A workload whose rows follow the generator's power law, with analytic (IRM) cache curves.

    All tables share one cache; table ``t``'s rows get probability
    ``p_t(k) / T`` (each table is looked up equally often). LRU uses Che's
    approximation, the static cache the exact top-``C`` mass.
    """
    sizes = config.table_sizes
    exps = [float(zipf_exponent)] * len(sizes) if np.isscalar(zipf_exponent) else [float(s) for s in zipf_exponent]
    if len(exps) != len(sizes):
        raise UsageError(f"zipf_exponent: expected a float or {len(sizes)} floats, got {len(exps)}")
    bins = [cache.zipf_bins(n, s, num_bins=num_bins, weight=1.0 / len(sizes)) for n, s in zip(sizes, exps)]
    rows = np.concatenate([b[0] for b in bins])
    prob = np.concatenate([b[1] for b in bins])
    total = float(rows.sum())
    caps = jnp.asarray(CURVE_FRACTIONS * total, jnp.float32)
    lru = jax.vmap(lambda c: cache.che_lru_hit_rate(rows, prob, c))(caps)
    static = jax.vmap(lambda c: cache.irm_static_hit_rate(rows, prob, c))(caps)
    lookups = batch_size * len(sizes) * pooling_factor
    unique = float(cache.expected_unique_rows(rows, prob, lookups)) / lookups
    overlap = float(cache.expected_consecutive_overlap(rows, prob, lookups))
    return _make(config, batch_size, pooling_factor, optimizer_state_bytes, unique, overlap, np.asarray(lru), np.asarray(static))


def workload_from_trace(
    config: DLRMConfig,
    trace,
    *,
    batch_size: int,
    pooling_factor: float = 1.0,
    optimizer_state_bytes: float = 0.0,
    warmup_fraction: float = 0.5,
    steady_state: bool = True,
) -> Workload:
    """A workload whose cache curves are simulated on an access trace of global row keys.

    ``trace`` holds, in access order, every lookup of consecutive iterations
    (``batch_size * num_tables * pooling_factor`` keys each), with table ``t``'s
    rows offset by the rows of tables ``< t``. LRU and static hit rates come from
    :func:`ndp.sysmodel.cache.lru_hit_rates` / :func:`~ndp.sysmodel.cache.static_hit_rates`
    after the warm-up prefix.

    A trace of a few iterations touches many rows for the first time; over a long
    run such compulsory misses are rare (a Criteo Kaggle epoch looks up 1.2G
    times among 33.8M rows). With ``steady_state`` (default) hit rates are taken
    over re-references only, ``h / (1 - c)`` with ``c`` the share of counted
    accesses that are first accesses; ``False`` keeps the raw trace hit rates.
    """
    trace = np.asarray(trace, np.int64)
    lookups = int(round(batch_size * config.num_tables * pooling_factor))
    if trace.size < 2 * lookups:
        raise ValueError(f"trace: expected at least two iterations ({2 * lookups} lookups), got {trace.size}")
    total = sum(config.table_sizes)
    caps = np.round(CURVE_FRACTIONS * total).astype(np.int64)
    lru = cache.lru_hit_rates(trace, caps, warmup_fraction=warmup_fraction)
    static = cache.static_hit_rates(trace, caps, warmup_fraction=warmup_fraction, num_rows=total)
    if steady_state:
        start = int(np.floor(trace.size * warmup_fraction))
        cold = float(np.mean(cache.previous_occurrence(trace)[start:] < 0))
        lru, static = (np.minimum(1.0, h / max(1.0 - cold, 1e-12)) for h in (lru, static))
    unique = cache.unique_fraction_per_batch(trace, lookups)
    overlap = cache.consecutive_batch_overlap(trace, lookups)
    return _make(config, batch_size, pooling_factor, optimizer_state_bytes, unique, overlap, lru, static)


def synthetic_trace(synthetic_config, num_batches: int) -> np.ndarray:
    """Global row keys of all tables' lookups from the ``ndp`` generator, iteration by iteration."""
    from ndp.data.synthetic import batch_at

    offsets = np.concatenate([[0], np.cumsum(synthetic_config.table_sizes)[:-1]]).astype(np.int64)
    parts = []
    for b in range(num_batches):
        batch = batch_at(synthetic_config, b)
        parts.extend(bag.values + offsets[t] for t, bag in enumerate(batch.tables))
    return np.concatenate(parts)


def movielens_trace(path) -> tuple[np.ndarray, tuple[int, int]]:
    """Access trace of MovieLens ratings (``u.data``) in timestamp order: user then item per rating.

    Returns ``(keys, (num_users, num_items))``; items are offset by the number of
    users, so the two tables share one key space.
    """
    data = np.loadtxt(path, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] < 4:
        raise UsageError(f"movielens file {str(path)!r}: expected rows 'user item rating timestamp', got shape {data.shape}")
    data = data[np.argsort(data[:, 3], kind="stable")]
    users, items = data[:, 0] - 1, data[:, 1] - 1
    num_users, num_items = int(users.max()) + 1, int(items.max()) + 1
    keys = np.stack([users, items + num_users], axis=1).reshape(-1)
    return keys, (num_users, num_items)
