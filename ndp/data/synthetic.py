"""Synthetic Criteo-like click logs with power-law (Zipf) index skew, streamed batch by batch.

Each batch holds ``dense`` features (``float32 (B, num_dense)``, ``log1p`` of
exponential counts like Criteo's), one jagged multi-hot bag per table and example
(``values`` + ``offsets``, CSR-style), and a 0/1 click ``label`` drawn from a
logistic model of the dense features and per-row effects, so a model can learn.

Index skew. Row popularity rank ``k = 1..N`` has probability
``p(k) ∝ k^(-s)`` (Zipf with exponent ``s``; ``s = 0`` is uniform). Ranks are drawn
by inverting the continuous bounded power law on ``[1, N + 1)``:

.. math::
    F(x) = \\frac{x^{1-s} - 1}{(N+1)^{1-s} - 1},\\qquad
    k = \\lfloor F^{-1}(u) \\rfloor,\\; u \\sim U[0, 1)

(``F(x) = \\ln x / \\ln(N+1)`` for ``s = 1``), which costs O(1) per lookup for any
table size. Rank ``k`` maps to row ``((k-1) * a + b) mod N`` with ``gcd(a, N) = 1``,
a bijection that scatters hot rows over the table (as in real logs, hot rows are
not the first ones; this matters for row-wise sharding). The share of lookups that
hit the top fraction ``f`` of rows is ``F(f N + 1)`` in expectation
(:func:`expected_top_share`); :func:`zipf_exponent_for_top_share` inverts it to
calibrate ``s`` to a published figure (e.g. top 1% of rows take 40-50% of lookups
in Meta's production traces).

Every batch is a pure function of ``(config.seed, batch index)``, so a stream can
be restarted at any batch (checkpoint resume) and two processes can draw disjoint
batches without coordination. Nothing is materialised beyond one batch.

Example:
    >>> cfg = SyntheticConfig(table_sizes=(1000, 50), batch_size=4, max_bag_length=3, seed=0)
    >>> batch = next(iter(batches(cfg, num_batches=1)))
    >>> batch.dense.shape, batch.labels.shape, len(batch.tables)
    ((4, 13), (4,), 2)
    >>> bag = batch.tables[0]
    >>> bag.offsets.shape, int(bag.offsets[-1]) == bag.values.shape[0]
    ((5,), True)
    >>> trace = index_trace(cfg, table=0, num_batches=10)
    >>> trace.dtype, bool(trace.max() < 1000)
    (dtype('int64'), True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from runkit import UsageError, check_positive
from ndp.configs import CRITEO_NUM_DENSE

__all__ = [
    "JaggedBag",
    "SyntheticBatch",
    "SyntheticConfig",
    "batch_at",
    "batches",
    "expected_top_share",
    "index_trace",
    "popularity_rank",
    "skew_statistics",
    "top_share",
    "zipf_exponent_for_top_share",
]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What a synthetic click log looks like.

    Attributes:
      table_sizes: rows of each categorical feature's table (cardinalities).
      batch_size: examples per batch.
      zipf_exponent: power-law exponent ``s`` of index popularity (``0`` uniform).
        The default ``0.9`` puts 51% of lookups on the top 1% rows of a 1M-row
        table (54% at 10M rows, 30% at 1460 rows), in the 40-50%-and-up range of
        published production traces. A float for all tables or one per table.
      min_bag_length: fewest lookups per bag (``0`` allows empty bags).
      max_bag_length: most lookups per bag; lengths are uniform in
        ``[min_bag_length, max_bag_length]``. ``1``/``1`` is one-hot (Criteo).
      pooling_factors: mean lookups per bag of each table (e.g. DLRMv2's multi-hot sizes,
        :data:`~ndp.configs.DLRMV2_POOLING_FACTORS`); table ``t``'s lengths are then uniform in
        ``[m - m // 2, m + m // 2]`` for ``m = pooling_factors[t]`` (mean ``m``; ``0`` gives empty
        bags) and ``min_bag_length``/``max_bag_length`` must keep their defaults. ``None``: the
        same range for every table.
      num_dense: dense features per example.
      scatter_rows: map popularity ranks to scattered row ids (``True``) or keep
        row ``0`` the hottest (``False``).
      seed: base seed; batch ``i`` uses ``numpy.random.default_rng([seed, i])``.
    """

    table_sizes: tuple[int, ...]
    batch_size: int = 2048
    zipf_exponent: float | tuple[float, ...] = 0.9
    min_bag_length: int = 1
    max_bag_length: int = 1
    num_dense: int = CRITEO_NUM_DENSE
    scatter_rows: bool = True
    seed: int = 0
    pooling_factors: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "table_sizes", tuple(int(n) for n in self.table_sizes))
        if not self.table_sizes:
            raise UsageError("table_sizes: expected at least one table, got ()")
        for rows in self.table_sizes:
            check_positive("table_sizes[i]", rows)
        check_positive("batch_size", self.batch_size)
        check_positive("min_bag_length", self.min_bag_length, allow_zero=True)
        check_positive("max_bag_length", self.max_bag_length)
        if self.max_bag_length < self.min_bag_length:
            raise UsageError(
                f"max_bag_length: expected >= min_bag_length={self.min_bag_length}, got {self.max_bag_length}"
            )
        check_positive("num_dense", self.num_dense, allow_zero=True)
        if self.pooling_factors is not None:
            object.__setattr__(self, "pooling_factors", tuple(int(m) for m in self.pooling_factors))
            if len(self.pooling_factors) != len(self.table_sizes):
                raise UsageError(f"pooling_factors: expected one per table ({len(self.table_sizes)}), got {len(self.pooling_factors)}")
            for m in self.pooling_factors:
                check_positive("pooling_factors[i]", m, allow_zero=True)
            if (self.min_bag_length, self.max_bag_length) != (1, 1):
                raise UsageError(f"min_bag_length/max_bag_length: expected the defaults 1/1 with pooling_factors (they set each "
                                 f"table's lengths), got {self.min_bag_length}/{self.max_bag_length}")  # fmt: skip
        exps = self.exponents
        if len(exps) != len(self.table_sizes):
            raise UsageError(f"zipf_exponent: expected a float or {len(self.table_sizes)} floats, got {len(exps)}")
        for s in exps:
            check_positive("zipf_exponent", s, allow_zero=True)

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    def bag_length_range(self, table: int) -> tuple[int, int]:
        """The fewest and most lookups of a bag of ``table`` (lengths are uniform between them)."""
        if self.pooling_factors is None:
            return self.min_bag_length, self.max_bag_length
        m = self.pooling_factors[table]
        return m - m // 2, m + m // 2

    @property
    def longest_bag(self) -> int:
        """The most lookups any bag of any table can hold."""
        return max(self.bag_length_range(t)[1] for t in range(self.num_tables))

    @property
    def exponents(self) -> tuple[float, ...]:
        """The Zipf exponent of each table."""
        if isinstance(self.zipf_exponent, (tuple, list)):
            return tuple(float(s) for s in self.zipf_exponent)
        return (float(self.zipf_exponent),) * len(self.table_sizes)


class JaggedBag(NamedTuple):
    """One table's bags for a batch in CSR form: bag ``b`` is ``values[offsets[b]:offsets[b+1]]``.

    Attributes:
      values: ``int64 (nnz,)`` row ids.
      offsets: ``int64 (B + 1,)`` bag boundaries; ``offsets[0] == 0``, ``offsets[-1] == nnz``.
    """

    values: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """``int64 (B,)`` lookups per bag."""
        return np.diff(self.offsets)


class SyntheticBatch(NamedTuple):
    """A batch of synthetic examples.

    Attributes:
      dense: ``float32 (B, num_dense)``.
      tables: one :class:`JaggedBag` per table.
      labels: ``float32 (B,)`` clicks (0 or 1).
    """

    dense: np.ndarray
    tables: tuple[JaggedBag, ...]
    labels: np.ndarray


def _coprime_multiplier(num_rows: int, table: int) -> int:
    """A large odd multiplier coprime to ``num_rows`` (distinct per table)."""
    a = 2_654_435_761 + 2 * 40_503 * table  # Knuth's multiplicative-hash constant, varied per table
    while math.gcd(a, num_rows) != 1:
        a += 2
    return a % num_rows if num_rows > 1 else 1


def _ranks(rng: np.random.Generator, num_rows: int, exponent: float, size: int) -> np.ndarray:
    """Zero-based popularity ranks drawn from the bounded continuous power law."""
    u = rng.random(size)
    top = float(num_rows) + 1.0
    if abs(exponent - 1.0) < 1e-9:
        x = np.power(top, u)
    else:
        one_minus = 1.0 - exponent
        x = np.power(1.0 + u * (top**one_minus - 1.0), 1.0 / one_minus)
    return np.minimum(np.floor(x).astype(np.int64) - 1, num_rows - 1)


def _rows_from_ranks(ranks: np.ndarray, num_rows: int, table: int, scatter: bool) -> np.ndarray:
    if not scatter or num_rows == 1:
        return ranks
    a = _coprime_multiplier(num_rows, table)
    b = (7919 * (table + 1)) % num_rows
    return (ranks * a + b) % num_rows  # int64: ranks < 2^31 and a < num_rows keep the product < 2^62


def popularity_rank(config: SyntheticConfig, table: int, rows: np.ndarray) -> np.ndarray:
    """Zero-based popularity rank of each row id of ``table`` (``0`` is the hottest row).

    Inverts the rank-to-row scattering, so ``rank < k`` tests membership in the
    generator's own top-``k`` rows (used for unbiased skew estimates and for
    warming caches with the truly hottest rows).
    """
    n = config.table_sizes[table]
    rows = np.asarray(rows, np.int64)
    if not config.scatter_rows or n == 1:
        return rows
    a = _coprime_multiplier(n, table)
    b = (7919 * (table + 1)) % n
    return ((rows - b) % n) * pow(a, -1, n) % n


def _row_effect(rows: np.ndarray, table: int) -> np.ndarray:
    """A fixed pseudo-random effect in [-0.5, 0.5) of each row on the click probability."""
    h = (rows * 2_654_435_761 + (table + 1) * 97_531) % 1_000_003
    return h.astype(np.float64) / 1_000_003.0 - 0.5


def _draw_table(rng: np.random.Generator, config: SyntheticConfig, table: int) -> JaggedBag:
    lo, hi = config.bag_length_range(table)
    lengths = rng.integers(lo, hi + 1, size=config.batch_size)
    offsets = np.zeros(config.batch_size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n = config.table_sizes[table]
    ranks = _ranks(rng, n, config.exponents[table], int(offsets[-1]))
    return JaggedBag(values=_rows_from_ranks(ranks, n, table, config.scatter_rows), offsets=offsets)


def batch_at(config: SyntheticConfig, index: int) -> SyntheticBatch:
    """Batch number ``index`` of the stream (a pure function of ``config`` and ``index``)."""
    check_positive("index", index, allow_zero=True)
    rng = np.random.default_rng([config.seed, int(index)])
    dense = np.log1p(rng.exponential(scale=4.0, size=(config.batch_size, config.num_dense))).astype(np.float32)
    tables = tuple(_draw_table(rng, config, t) for t in range(config.num_tables))
    logit = np.zeros(config.batch_size, np.float64)
    if config.num_dense:
        logit += (dense[:, : min(3, config.num_dense)].astype(np.float64) - 1.5).sum(axis=1) * 0.5
    for t, bag in enumerate(tables):
        if bag.values.size:
            bag_ids = np.repeat(np.arange(config.batch_size), bag.lengths)
            logit += np.bincount(bag_ids, weights=_row_effect(bag.values, t), minlength=config.batch_size) * (
                4.0 / config.num_tables
            )
    labels = (rng.random(config.batch_size) < 1.0 / (1.0 + np.exp(-(logit - 1.0)))).astype(np.float32)
    return SyntheticBatch(dense=dense, tables=tables, labels=labels)


def batches(config: SyntheticConfig, num_batches: int | None = None, *, start: int = 0) -> Iterator[SyntheticBatch]:
    """Stream batches ``start, start + 1, ...`` (forever when ``num_batches`` is ``None``).

    Example:
        >>> cfg = SyntheticConfig(table_sizes=(10,), batch_size=2)
        >>> [b.tables[0].values.tolist() for b in batches(cfg, 2)] == [batch_at(cfg, i).tables[0].values.tolist() for i in range(2)]
        True
    """
    if num_batches is not None:
        check_positive("num_batches", num_batches, allow_zero=True)
    index = start
    while num_batches is None or index < start + num_batches:
        yield batch_at(config, index)
        index += 1


def index_trace(config: SyntheticConfig, table: int, num_batches: int, *, start: int = 0) -> np.ndarray:
    """The row ids that ``table`` is looked up with over ``num_batches`` batches, in stream order.

    Identical to concatenating ``batch_at(config, i).tables[table].values``; cheaper,
    because only that table's draws are kept. Returns ``int64 (total lookups,)``.
    """
    if not 0 <= table < config.num_tables:
        raise ValueError(f"table: expected an index in [0, {config.num_tables}), got {table}")
    check_positive("num_batches", num_batches, allow_zero=True)
    return np.concatenate(
        [batch_at(config, i).tables[table].values for i in range(start, start + num_batches)]
        or [np.zeros(0, np.int64)]
    )


def top_share(indices: np.ndarray, num_rows: int, fraction: float = 0.01) -> float:
    """Share of lookups in ``indices`` that hit the ``ceil(fraction * num_rows)`` most-looked-up rows."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"fraction: expected a value in (0, 1], got {fraction}")
    indices = np.asarray(indices)
    if indices.size == 0:
        return 0.0
    counts = np.bincount(indices, minlength=num_rows)
    k = max(1, math.ceil(fraction * num_rows))
    return float(np.sort(counts)[::-1][:k].sum() / indices.size)


def expected_top_share(num_rows: int, exponent: float, fraction: float = 0.01) -> float:
    """Expected share of lookups on the top ``fraction`` of rows under the generator's power law.

    Example:
        >>> round(expected_top_share(1_000_000, 0.0, 0.01), 4)
        0.01
        >>> expected_top_share(1_000_000, 1.05) > 0.5
        True
    """
    check_positive("num_rows", num_rows)
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"fraction: expected a value in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * num_rows))
    top = num_rows + 1.0
    if abs(exponent - 1.0) < 1e-9:
        return math.log(k + 1.0) / math.log(top)
    a = 1.0 - exponent
    return ((k + 1.0) ** a - 1.0) / (top**a - 1.0)


def zipf_exponent_for_top_share(num_rows: int, target_share: float, fraction: float = 0.01) -> float:
    """The exponent ``s`` whose top-``fraction`` share of lookups equals ``target_share`` (bisection).

    Example:
        >>> s = zipf_exponent_for_top_share(1_000_000, 0.45)
        >>> round(expected_top_share(1_000_000, s), 3)
        0.45
    """
    if not 0.0 < target_share < 1.0:
        raise UsageError(f"target_share: expected a value in (0, 1), got {target_share}")
    lo, hi = 0.0, 8.0
    if target_share <= expected_top_share(num_rows, lo, fraction):
        return 0.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if expected_top_share(num_rows, mid, fraction) < target_share:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def skew_statistics(
    config: SyntheticConfig, num_batches: int = 10, *, fraction: float = 0.01, tables: Sequence[int] | None = None
) -> list[dict]:
    """Measured and expected skew of each table over the first ``num_batches`` batches.

    Returns:
      One dict per table with ``table``, ``rows``, ``zipf_exponent``, ``lookups``,
      ``top_fraction``, ``top_share`` (share of all lookups that hit the generator's
      hottest ``ceil(fraction * rows)`` rows: an unbiased estimate of
      ``expected_top_share``), ``expected_top_share`` (the generator's distribution),
      ``empirical_top_share`` (share on the rows most looked up *in the sample*, as
      a trace analysis would report it; 1.0 when the sample touches fewer rows than
      the top fraction), and ``unique_rows`` touched.
    """
    check_positive("num_batches", num_batches)
    chosen = range(config.num_tables) if tables is None else tables
    stats = []
    for t in chosen:
        n = config.table_sizes[t]
        k = max(1, math.ceil(fraction * n))
        per_batch = [batch_at(config, i).tables[t].values for i in range(num_batches)]
        trace = np.concatenate(per_batch)
        stats.append(
            {
                "table": int(t),
                "rows": int(n),
                "zipf_exponent": config.exponents[t],
                "lookups": int(trace.size),
                "top_fraction": fraction,
                "top_share": float(np.mean(popularity_rank(config, t, trace) < k)) if trace.size else 0.0,
                "expected_top_share": expected_top_share(n, config.exponents[t], fraction),
                "empirical_top_share": top_share(trace, n, fraction),
                "unique_rows": int(np.unique(trace).size),
            }
        )
    return stats
