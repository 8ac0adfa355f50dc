"""Cache simulators against straightforward reference simulations, and the analytic models against traces."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ndp.data.synthetic import SyntheticConfig, index_trace
from ndp.sysmodel import cache

traces = st.lists(st.integers(0, 9), min_size=1, max_size=60)
capacities = st.integers(0, 8)
warmups = st.sampled_from([0.0, 0.25, 0.5])


def _counted(n, warmup):
    return n - math.floor(n * warmup)


def reference_lru(trace, capacity, warmup):
    resident, hits = [], 0  # most recent at the end
    start = math.floor(len(trace) * warmup)
    for pos, key in enumerate(trace):
        if key in resident:
            resident.remove(key)
            resident.append(key)
            hits += pos >= start
        elif capacity:
            if len(resident) == capacity:
                resident.pop(0)
            resident.append(key)
    return hits / _counted(len(trace), warmup)


def reference_static(trace, capacity, warmup):
    start = math.floor(len(trace) * warmup)
    profile = trace[:start] if start else trace
    counts = {}
    for key in profile:
        counts[key] = counts.get(key, 0) + 1
    chosen = set(sorted(counts, key=lambda k: (-counts[k], k))[:capacity])
    rest = trace[start:]
    return sum(k in chosen for k in rest) / len(rest)


def reference_lfu(trace, capacity, warmup):
    start = math.floor(len(trace) * warmup)
    counts, last, resident, hits = {}, {}, set(), 0
    for pos, key in enumerate(trace):
        counts[key] = counts.get(key, 0) + 1
        last[key] = pos
        if key in resident:
            hits += pos >= start
        elif capacity:
            if len(resident) == capacity:
                resident.remove(min(resident, key=lambda k: (counts[k], last[k])))
            resident.add(key)
    return hits / _counted(len(trace), warmup)


def reference_lookahead(trace, capacity, batch_size, k, warmup):
    start = math.floor(len(trace) * warmup)
    n = len(trace)
    resident, last, hits = set(), {}, 0

    def next_use(key, pos):
        return next((j for j in range(pos + 1, n) if trace[j] == key), n)

    for pos, key in enumerate(trace):
        end = n if math.isinf(k) else min(n, (pos // batch_size + 1 + k) * batch_size)
        if key in resident:
            hits += pos >= start
        elif capacity:
            if len(resident) == capacity:
                idle = [r for r in resident if next_use(r, last[r]) >= end]
                if idle:
                    victim = min(idle, key=lambda r: last[r])
                else:
                    victim = max(resident, key=lambda r: next_use(r, last[r]))
                resident.remove(victim)
            resident.add(key)
        last[key] = pos
    return hits / _counted(n, warmup)


@given(traces, capacities, warmups)
def test_lru_matches_reference(trace, capacity, warmup):
    expected = reference_lru(trace, capacity, warmup)
    stack = cache.lru_hit_rates(np.array(trace), [capacity], warmup_fraction=warmup)[0]
    direct = cache.lru_hit_rate_ordered_dict(np.array(trace), capacity, warmup_fraction=warmup)
    assert math.isclose(stack, expected, abs_tol=1e-12)
    assert math.isclose(direct, expected, abs_tol=1e-12)


@given(traces, capacities, warmups)
def test_static_matches_reference(trace, capacity, warmup):
    got = cache.static_hit_rates(np.array(trace), [capacity], warmup_fraction=warmup)[0]
    assert math.isclose(got, reference_static(trace, capacity, warmup), abs_tol=1e-6)


@given(traces, capacities, warmups)
def test_lfu_matches_reference(trace, capacity, warmup):
    got = cache.lfu_hit_rate(np.array(trace), capacity, warmup_fraction=warmup)
    assert math.isclose(got, reference_lfu(trace, capacity, warmup), abs_tol=1e-12)


@given(traces, capacities, st.integers(1, 6), st.sampled_from([0, 1, 3, math.inf]), warmups)
def test_lookahead_matches_reference(trace, capacity, batch_size, k, warmup):
    got = cache.lookahead_hit_rate(np.array(trace), capacity, batch_size=batch_size, lookahead_batches=k,
                                   warmup_fraction=warmup)  # fmt: skip
    assert math.isclose(got, reference_lookahead(trace, capacity, batch_size, k, warmup), abs_tol=1e-12)


@given(traces, st.integers(1, 8))
def test_full_lookahead_is_optimal(trace, capacity):
    """Belady's MIN (lookahead over the whole trace) never hits less than LRU or LFU."""
    t = np.array(trace)
    best = cache.lookahead_hit_rate(t, capacity, batch_size=1, lookahead_batches=math.inf, warmup_fraction=0.0)
    assert best >= cache.lru_hit_rates(t, [capacity], warmup_fraction=0.0)[0] - 1e-12
    assert best >= cache.lfu_hit_rate(t, capacity, warmup_fraction=0.0) - 1e-12


@given(st.lists(st.integers(0, 30), min_size=1, max_size=80))
def test_lru_hit_rate_grows_with_capacity(trace):
    rates = cache.lru_hit_rates(np.array(trace), list(range(0, 35)), warmup_fraction=0.0)
    assert np.all(np.diff(rates) >= 0)


def test_per_batch_statistics_against_direct_counts():
    trace = np.array([1, 2, 2, 3, 3, 3, 4, 1, 5, 5, 1, 6])
    # batches of 4: [1,2,2,3] -> {1,2,3}; [3,3,4,1] -> {1,3,4}; [5,5,1,6] -> {1,5,6}
    assert math.isclose(cache.unique_fraction_per_batch(trace, 4), (3 + 3 + 3) / 12)
    # shared with the previous batch: {1,3} of {1,3,4} -> 2/3; {1} of {1,5,6} -> 1/3
    assert math.isclose(cache.consecutive_batch_overlap(trace, 4), (2 / 3 + 1 / 3) / 2)


def test_analytic_models_track_generator_traces():
    """Che's LRU approximation and the static top-C mass agree with simulation on a generator trace."""
    synth = SyntheticConfig(table_sizes=(4000,), batch_size=4000, zipf_exponent=0.9, seed=3)
    trace = index_trace(synth, table=0, num_batches=25)
    rows, prob = cache.zipf_bins(4000, 0.9, num_bins=400)
    assert math.isclose(rows.sum(), 4000) and math.isclose((rows * prob).sum(), 1.0, rel_tol=1e-9)
    caps = [40, 400, 2000]
    simulated_lru = cache.lru_hit_rates(trace, caps, warmup_fraction=0.2)
    simulated_static = cache.static_hit_rates(trace, caps, warmup_fraction=0.2)
    for cap, lru, static in zip(caps, simulated_lru, simulated_static):
        assert abs(float(cache.che_lru_hit_rate(rows, prob, cap)) - lru) < 0.03
        assert abs(float(cache.irm_static_hit_rate(rows, prob, cap)) - static) < 0.03
    distinct = np.mean([np.unique(trace[i : i + 4000]).size for i in range(0, trace.size, 4000)])
    assert abs(float(cache.expected_unique_rows(rows, prob, 4000)) / distinct - 1.0) < 0.05


@given(traces, warmups)
def test_static_cache_fills_spare_capacity_with_unprofiled_rows(trace, warmup):
    t = np.array(trace)
    rates = cache.static_hit_rates(t, list(range(0, 12)), warmup_fraction=warmup, num_rows=10)
    plain = cache.static_hit_rates(t, list(range(0, 12)), warmup_fraction=warmup)
    assert np.all(np.diff(rates) >= -1e-12) and np.all(rates >= plain - 1e-12)
    assert math.isclose(rates[10], 1.0) and math.isclose(rates[11], 1.0)
