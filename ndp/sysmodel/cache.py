"""Embedding-cache hit rates: trace-driven simulation and analytic (independent-reference) models.

Trace-driven policies, all over a 1-D array of row keys in access order:

* **static** (:func:`static_hit_rates`): the ``C`` rows most frequent in a profiling
  prefix of the trace stay cached (NDRec's statistics-driven placement); evaluated
  on the rest. All capacities at once from one sort.
* **LRU** (:func:`lru_stack_distances`, :func:`lru_hit_rates`): Mattson's stack
  algorithm. The stack distance of an access is the number of distinct keys used
  since the previous access of the same key; an LRU cache of ``C`` rows hits iff
  that distance is ``< C``, so one pass gives every capacity. Distances are
  counted offline (a dominance count over ``log2(n)`` levels of sorted blocks,
  vectorised in numpy): ``O(n log^2 n)`` work and no Python loop per access.
* **LFU** (:func:`lfu_hit_rate`): perfect LFU (frequency counts kept for every key
  seen, evict the smallest count, ties to the least recently used).
* **lookahead** (:func:`lookahead_hit_rate`): the cache sees the next ``k``
  batches (Bagpipe/ScratchPipe): evict a resident row not needed in the current
  or next ``k`` batches (least recently used first); if every resident row is
  needed, evict the one needed farthest ahead. ``k = inf`` is Belady's optimum.

Only accesses after a warm-up prefix (``warmup_fraction``) are counted, so short
traces do not report cold misses as steady-state behaviour.

Analytic models for tables too large to trace (Criteo Terabyte scale): rows of a
power-law popularity ``p(k) ∝ k^-s`` (the ``ndp`` generator's law) are grouped in
log-spaced rank bins (:func:`zipf_bins`); under the independent reference model

* static / perfect LFU: the top-``C`` rows' probability mass (:func:`irm_static_hit_rate`);
* LRU: Che's approximation, :math:`h = \\sum_i p_i (1 - e^{-p_i t_C})` with the
  characteristic time :math:`t_C` solving :math:`\\sum_i (1 - e^{-p_i t_C}) = C`
  (:func:`che_lru_hit_rate`, pure jnp, vmappable over capacities);
* expected distinct rows in ``n`` lookups: :math:`\\sum_i 1 - (1 - p_i)^n`.

Example:
    >>> import numpy as np
    >>> trace = np.array([1, 2, 1, 3, 1, 2, 4, 1])
    >>> lru_hit_rates(trace, [1, 2, 3], warmup_fraction=0.0).tolist()
    [0.0, 0.25, 0.5]
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from runkit import check_positive

__all__ = [
    "che_lru_hit_rate",
    "consecutive_batch_overlap",
    "expected_unique_rows",
    "irm_static_hit_rate",
    "lfu_hit_rate",
    "lookahead_hit_rate",
    "lru_hit_rate_ordered_dict",
    "lru_hit_rates",
    "lru_stack_distances",
    "next_occurrence",
    "previous_occurrence",
    "static_hit_rates",
    "unique_fraction_per_batch",
    "zipf_bins",
]


def _as_trace(trace) -> np.ndarray:
    trace = np.asarray(trace)
    if trace.ndim != 1:
        raise ValueError(f"trace: expected a 1-D array of row keys, got shape {trace.shape}")
    if trace.size and not np.issubdtype(trace.dtype, np.integer):
        raise ValueError(f"trace: expected integer row keys, got dtype {trace.dtype}")
    return trace.astype(np.int64)


def _warm_start(n: int, warmup_fraction: float) -> int:
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction: expected a value in [0, 1), got {warmup_fraction}")
    return int(math.floor(n * warmup_fraction))


def previous_occurrence(trace) -> np.ndarray:
    """Position of the previous access to the same key (``-1`` for a first access)."""
    trace = _as_trace(trace)
    order = np.argsort(trace, kind="stable")
    sorted_keys = trace[order]
    prev = np.full(trace.size, -1, np.int64)
    same = sorted_keys[1:] == sorted_keys[:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def next_occurrence(trace) -> np.ndarray:
    """Position of the next access to the same key (``len(trace)`` when there is none)."""
    trace = _as_trace(trace)
    prev = previous_occurrence(trace)
    nxt = np.full(trace.size, trace.size, np.int64)
    has = prev >= 0
    nxt[prev[has]] = np.nonzero(has)[0]
    return nxt


def _count_earlier_below(prev: np.ndarray, queries: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """For each query ``i`` with bound ``b``: ``#{j < i : prev[j] < b}``, vectorised over levels.

    ``[0, i)`` splits into aligned blocks of size ``2^l``, one per set bit ``l`` of
    ``i`` (block number ``(i >> l) - 1``); per level, one sort of ``(block, prev)``
    keys answers every query with two binary searches.
    """
    n = prev.size
    big = np.int64(n + 2)
    shifted = prev + 1  # in [0, n]
    positions = np.arange(n, dtype=np.int64)
    total = np.zeros(queries.size, np.int64)
    level = 0
    while (1 << level) <= n:
        keys = np.sort((positions >> level) * big + shifted)
        use = ((queries >> level) & 1) == 1
        block = (queries[use] >> level) - 1
        upper = np.searchsorted(keys, block * big + (bounds[use] + 1), side="left")
        lower = np.searchsorted(keys, block * big, side="left")
        total[use] += upper - lower
        level += 1
    return total


def lru_stack_distances(trace) -> np.ndarray:
    """LRU stack distance of every access (``-1`` for a first access, i.e. an infinite distance).

    Example:
        >>> lru_stack_distances([5, 6, 5, 5, 7, 6]).tolist()
        [-1, -1, 1, 0, -1, 2]
    """
    trace = _as_trace(trace)
    if trace.size == 0:
        return np.zeros(0, np.int64)
    prev = previous_occurrence(trace)
    distances = np.full(trace.size, -1, np.int64)
    again = np.nonzero(prev >= 0)[0]
    p = prev[again]
    # Distinct keys in (p, i) are the j there whose previous access precedes p; every j <= p
    # has prev[j] < p, so subtract those p + 1 positions from the count over j < i.
    distances[again] = _count_earlier_below(prev, again, p) - (p + 1)
    return distances


def lru_hit_rates(trace, capacities: Sequence[int], *, warmup_fraction: float = 0.5) -> np.ndarray:
    """LRU hit rate of every capacity (rows) in one pass (counted after the warm-up prefix)."""
    trace = _as_trace(trace)
    caps = np.asarray(capacities, np.int64)
    start = _warm_start(trace.size, warmup_fraction)
    dist = lru_stack_distances(trace)[start:]
    if dist.size == 0:
        return np.zeros(caps.shape, np.float64)
    hit = (dist[None, :] >= 0) & (dist[None, :] < caps[:, None])
    return hit.mean(axis=1)


def lru_hit_rate_ordered_dict(trace, capacity: int, *, warmup_fraction: float = 0.5) -> float:
    """LRU hit rate of one capacity by direct simulation (an ``OrderedDict``); a cross-check."""
    trace = _as_trace(trace)
    check_positive("capacity", capacity, allow_zero=True)
    start = _warm_start(trace.size, warmup_fraction)
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for pos, key in enumerate(trace.tolist()):
        if key in cache:
            cache.move_to_end(key)
            hits += pos >= start
        elif capacity > 0:
            if len(cache) >= capacity:
                cache.popitem(last=False)
            cache[key] = None
    counted = trace.size - start
    return hits / counted if counted else 0.0


def static_hit_rates(
    trace, capacities: Sequence[int], *, warmup_fraction: float = 0.5, num_rows: int | None = None
) -> np.ndarray:
    """Hit rate of a static cache of the ``C`` rows most frequent in the profiling prefix.

    The prefix ``trace[:warmup]`` is profiled (ties broken by smaller key); the
    cache is evaluated on ``trace[warmup:]``. With ``warmup_fraction=0`` the whole
    trace is both profiled and evaluated (an oracle bound). Given ``num_rows`` (the
    key space), capacity beyond the profiled rows holds an arbitrary share of the
    unprofiled ones, which then hit in proportion (all of them once ``C >= num_rows``).
    """
    trace = _as_trace(trace)
    caps = np.asarray(capacities, np.int64)
    start = _warm_start(trace.size, warmup_fraction)
    profile = trace[:start] if start > 0 else trace
    evaluate = trace[start:]
    if evaluate.size == 0:
        return np.zeros(caps.shape, np.float64)
    keys, profile_counts = np.unique(profile, return_counts=True)
    order = np.lexsort((keys, -profile_counts))  # most frequent first, then smaller key
    ranked = keys[order]
    eval_keys, eval_counts = np.unique(evaluate, return_counts=True)
    where = np.searchsorted(eval_keys, ranked)
    where = np.minimum(where, max(eval_keys.size - 1, 0))
    found = eval_keys[where] == ranked
    served = jnp.cumsum(jnp.asarray(np.where(found, eval_counts[where], 0), jnp.float32))
    served = jnp.concatenate([jnp.zeros(1, jnp.float32), served])
    index = jnp.clip(jnp.asarray(caps), 0, ranked.size)
    rates = np.asarray(served[index], np.float64) / evaluate.size
    if num_rows is not None and num_rows > ranked.size:
        unprofiled = 1.0 - float(served[-1]) / evaluate.size
        spare = np.clip((caps - ranked.size) / (num_rows - ranked.size), 0.0, 1.0)
        rates = rates + spare * unprofiled
    return rates


def lfu_hit_rate(trace, capacity: int, *, warmup_fraction: float = 0.5) -> float:
    """Perfect-LFU hit rate: counts kept for every key seen; evict smallest count, then least recent."""
    trace = _as_trace(trace)
    check_positive("capacity", capacity, allow_zero=True)
    start = _warm_start(trace.size, warmup_fraction)
    counts: dict[int, int] = {}
    last: dict[int, int] = {}
    resident: set[int] = set()
    heap: list[tuple[int, int, int]] = []  # (count, last use, key); stale entries skipped
    hits = 0
    for pos, key in enumerate(trace.tolist()):
        counts[key] = counts.get(key, 0) + 1
        last[key] = pos
        if key in resident:
            hits += pos >= start
        elif capacity > 0:
            if len(resident) >= capacity:
                while True:
                    c, t, victim = heapq.heappop(heap)
                    if victim in resident and counts[victim] == c and last[victim] == t:
                        resident.remove(victim)
                        break
            resident.add(key)
        if key in resident:
            heapq.heappush(heap, (counts[key], pos, key))
    counted = trace.size - start
    return hits / counted if counted else 0.0


def lookahead_hit_rate(
    trace, capacity: int, *, batch_size: int, lookahead_batches: int | float, warmup_fraction: float = 0.5
) -> float:
    """Hit rate of a cache that knows the current and the next ``lookahead_batches`` batches.

    Position ``t`` lies in batch ``t // batch_size``; a row is *needed* if its next
    use falls before the end of batch ``t // batch_size + lookahead_batches``. On a
    miss with a full cache the victim is the least recently used row that is not
    needed; if all are needed, the one whose next use is farthest away.
    """
    trace = _as_trace(trace)
    check_positive("capacity", capacity, allow_zero=True)
    check_positive("batch_size", batch_size)
    check_positive("lookahead_batches", lookahead_batches, allow_zero=True)
    start = _warm_start(trace.size, warmup_fraction)
    nxt = next_occurrence(trace).tolist()
    n = trace.size
    resident_next: dict[int, int] = {}  # key -> next use of its latest access
    resident_last: dict[int, int] = {}
    idle: list[tuple[int, int]] = []  # (last use, key): candidates believed not needed
    needed: list[tuple[int, int]] = []  # (-next use, key)
    hits = 0
    for pos, key in enumerate(trace.tolist()):
        if math.isinf(lookahead_batches):
            window_end = n
        else:
            window_end = min(n, (pos // batch_size + 1 + int(lookahead_batches)) * batch_size)
        if key in resident_next:
            hits += pos >= start
        elif capacity > 0:
            if len(resident_next) >= capacity:
                victim = None
                while idle:
                    t, cand = heapq.heappop(idle)
                    if resident_last.get(cand) != t:
                        continue  # stale
                    if resident_next[cand] < window_end:
                        heapq.heappush(needed, (-resident_next[cand], cand))
                        continue
                    victim = cand
                    break
                while victim is None:
                    neg, cand = heapq.heappop(needed)
                    if cand in resident_next and resident_next[cand] == -neg:
                        victim = cand
                del resident_next[victim]
                del resident_last[victim]
        else:
            continue
        resident_next[key] = nxt[pos]
        resident_last[key] = pos
        if nxt[pos] < window_end:
            heapq.heappush(needed, (-nxt[pos], key))
        else:
            heapq.heappush(idle, (pos, key))
    counted = n - start
    return hits / counted if counted else 0.0


def unique_fraction_per_batch(trace, batch_size: int) -> float:
    """Mean share of distinct rows among a batch's lookups (the rows a sparse update writes)."""
    trace = _as_trace(trace)
    check_positive("batch_size", batch_size)
    nb = trace.size // batch_size
    if nb == 0:
        return 1.0
    blocks = np.sort(trace[: nb * batch_size].reshape(nb, batch_size), axis=1)
    distinct = 1 + (blocks[:, 1:] != blocks[:, :-1]).sum(axis=1)
    return float(distinct.mean() / batch_size)


def consecutive_batch_overlap(trace, batch_size: int) -> float:
    """Mean share of a batch's distinct rows that the previous batch also used (read-after-update hazards)."""
    trace = _as_trace(trace)
    check_positive("batch_size", batch_size)
    nb = trace.size // batch_size
    if nb < 2:
        return 0.0
    shares = []
    for b in range(1, nb):
        cur = np.unique(trace[b * batch_size : (b + 1) * batch_size])
        prev = np.unique(trace[(b - 1) * batch_size : b * batch_size])
        shares.append(np.isin(cur, prev, assume_unique=True).mean())
    return float(np.mean(shares))


# ----------------------------------------------------------------------------- analytic models


def zipf_bins(num_rows: int, exponent: float, *, num_bins: int = 512, weight: float = 1.0):
    """Rank bins of a bounded power law ``p(k) ∝ k^-s`` on ranks ``1..num_rows``.

    Uses the continuous law of :mod:`ndp.data.synthetic` (ranks ``floor(x)`` of
    ``x`` on ``[1, N + 1)``), so bin masses are exact; each row in a bin gets the
    bin's mean probability. ``weight`` scales all probabilities (a table's share
    of a multi-table stream).

    Returns:
      ``(rows_per_bin, prob_per_row)``: two ``float64`` arrays; ``sum(rows) == num_rows``
      and ``sum(rows * prob) == weight``.
    """
    check_positive("num_rows", num_rows)
    check_positive("exponent", exponent, allow_zero=True)
    edges = np.unique(np.round(np.geomspace(1, num_rows + 1, num_bins + 1)).astype(np.int64))
    edges[0], edges[-1] = 1, num_rows + 1
    top = float(num_rows) + 1.0
    x = edges.astype(np.float64)
    if abs(exponent - 1.0) < 1e-9:
        cdf = np.log(x) / np.log(top)
    else:
        a = 1.0 - exponent
        cdf = (x**a - 1.0) / (top**a - 1.0)
    rows = np.diff(edges).astype(np.float64)
    mass = np.diff(cdf) * weight
    return rows, mass / rows


def irm_static_hit_rate(rows_per_bin, prob_per_row, capacity) -> jax.Array:
    """Hit rate of a cache holding the ``capacity`` most probable rows (bins sorted by probability)."""
    rows = jnp.asarray(rows_per_bin, jnp.float32)
    prob = jnp.asarray(prob_per_row, jnp.float32)
    order = jnp.argsort(-prob)
    rows, prob = rows[order], prob[order]
    cum_rows = jnp.cumsum(rows)
    before = cum_rows - rows
    taken = jnp.clip(jnp.asarray(capacity, jnp.float32) - before, 0.0, rows)
    return jnp.sum(taken * prob) / jnp.sum(rows * prob)


def che_lru_hit_rate(rows_per_bin, prob_per_row, capacity) -> jax.Array:
    """LRU hit rate under the independent reference model (Che's approximation), pure jnp."""
    rows = jnp.asarray(rows_per_bin, jnp.float32)
    prob = jnp.asarray(prob_per_row, jnp.float32)
    cap = jnp.clip(jnp.asarray(capacity, jnp.float32), 0.0, jnp.sum(rows) * (1.0 - 1e-6))

    def occupancy(log_t):
        return jnp.sum(rows * -jnp.expm1(-prob * jnp.exp(log_t)))

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = occupancy(mid) < cap
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 80, body, (jnp.float32(-10.0), jnp.float32(60.0)))
    t = jnp.exp(0.5 * (lo + hi))
    hit = jnp.sum(rows * prob * -jnp.expm1(-prob * t)) / jnp.sum(rows * prob)
    return jnp.where(cap > 0, hit, 0.0)


def expected_unique_rows(rows_per_bin, prob_per_row, lookups) -> jax.Array:
    """Expected distinct rows among ``lookups`` independent draws: ``sum_i 1 - (1 - p_i)^n``."""
    rows = jnp.asarray(rows_per_bin, jnp.float32)
    prob = jnp.clip(jnp.asarray(prob_per_row, jnp.float32), 0.0, 1.0 - 1e-7)
    n = jnp.asarray(lookups, jnp.float32)
    return jnp.sum(rows * -jnp.expm1(n * jnp.log1p(-prob)))


def expected_consecutive_overlap(rows_per_bin, prob_per_row, lookups) -> jax.Array:
    """Expected share of a batch's distinct rows also used by the previous batch (independent draws)."""
    rows = jnp.asarray(rows_per_bin, jnp.float32)
    prob = jnp.clip(jnp.asarray(prob_per_row, jnp.float32), 0.0, 1.0 - 1e-7)
    used = -jnp.expm1(jnp.asarray(lookups, jnp.float32) * jnp.log1p(-prob))
    return jnp.sum(rows * used * used) / jnp.maximum(jnp.sum(rows * used), 1e-30)
