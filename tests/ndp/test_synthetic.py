"""The synthetic Criteo-like generator: shapes, determinism, streaming, and its skew statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ndp.configs import CRITEO_KAGGLE_TABLE_SIZES, criteo_kaggle_table_sizes
from ndp.data.synthetic import (
    SyntheticConfig,
    batch_at,
    batches,
    expected_top_share,
    index_trace,
    popularity_rank,
    skew_statistics,
    top_share,
    zipf_exponent_for_top_share,
)


def test_kaggle_sizes_are_the_published_ones_and_cap_scale():
    assert len(CRITEO_KAGGLE_TABLE_SIZES) == 26
    assert sum(CRITEO_KAGGLE_TABLE_SIZES) == 33_762_577  # 33.76M rows
    capped = criteo_kaggle_table_sizes(row_cap=1_000_000)
    assert max(capped) == 1_000_000 and sum(n == 1_000_000 for n in capped) == 5
    assert criteo_kaggle_table_sizes(scale=0.5)[2] == 5_065_614
    with pytest.raises(ValueError, match="row_cap"):
        criteo_kaggle_table_sizes(row_cap=0)


@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=4),
    batch=st.integers(1, 64),
    lengths=st.tuples(st.integers(0, 3), st.integers(0, 3)).map(sorted).filter(lambda t: t[1] >= 1),
    exponent=st.floats(0.0, 2.0),
    seed=st.integers(0, 1000),
)
def test_batches_are_well_formed_and_reproducible(sizes, batch, lengths, exponent, seed):
    cfg = SyntheticConfig(tuple(sizes), batch_size=batch, zipf_exponent=exponent,
                          min_bag_length=lengths[0], max_bag_length=lengths[1], seed=seed)  # fmt: skip
    b = batch_at(cfg, 3)
    assert b.dense.shape == (batch, 13) and b.dense.dtype == np.float32
    assert b.labels.shape == (batch,) and set(np.unique(b.labels)) <= {0.0, 1.0}
    for n, bag in zip(sizes, b.tables):
        assert bag.offsets[0] == 0 and bag.offsets[-1] == bag.values.size and bag.offsets.shape == (batch + 1,)
        assert np.all((bag.lengths >= lengths[0]) & (bag.lengths <= lengths[1]))
        assert bag.values.size == 0 or (bag.values.min() >= 0 and bag.values.max() < n)
    again = batch_at(cfg, 3)
    assert all(np.array_equal(x.values, y.values) for x, y in zip(b.tables, again.tables))
    streamed = list(batches(cfg, 2, start=2))
    assert np.array_equal(streamed[1].dense, b.dense)


def test_index_trace_is_the_streamed_lookups():
    cfg = SyntheticConfig((1000, 77), batch_size=16, max_bag_length=3, seed=5)
    trace = index_trace(cfg, table=1, num_batches=4)
    assert np.array_equal(trace, np.concatenate([b.tables[1].values for b in batches(cfg, 4)]))
    with pytest.raises(ValueError, match="table"):
        index_trace(cfg, table=2, num_batches=1)


def test_popularity_rank_inverts_the_row_scattering():
    cfg = SyntheticConfig((1000, 4096, 1), batch_size=4)
    for t, n in enumerate(cfg.table_sizes):
        ranks = popularity_rank(cfg, t, np.arange(n))
        assert sorted(ranks.tolist()) == list(range(n))  # a bijection


def test_measured_skew_matches_the_power_law_and_calibration():
    # Independent reference: the exact discrete Zipf share of the top 1% ranks is close to the
    # continuous formula for large tables.
    n, s = 100_000, 0.9
    k = np.arange(1, n + 1, dtype=np.float64) ** -s
    exact = k[: n // 100].sum() / k.sum()
    assert expected_top_share(n, s) == pytest.approx(exact, abs=0.02)
    cfg = SyntheticConfig((n, 50_000), batch_size=4096, zipf_exponent=(s, 0.0), seed=1)
    hot, uniform = skew_statistics(cfg, num_batches=5)
    assert hot["top_share"] == pytest.approx(hot["expected_top_share"], abs=0.02)
    assert uniform["top_share"] == pytest.approx(0.01, abs=0.005)
    assert hot["unique_rows"] < uniform["unique_rows"]
    target = zipf_exponent_for_top_share(1_000_000, 0.45)
    assert expected_top_share(1_000_000, target) == pytest.approx(0.45, abs=1e-6)
    assert 0.7 < target < 1.0


def test_top_share_counts_hottest_rows():
    assert top_share(np.array([0, 0, 0, 1, 2, 3]), 100, 0.01) == pytest.approx(0.5)


def test_bad_config_names_the_argument():
    with pytest.raises(ValueError, match="max_bag_length"):
        SyntheticConfig((10,), min_bag_length=3, max_bag_length=2)
    with pytest.raises(ValueError, match="zipf_exponent"):
        SyntheticConfig((10, 20), zipf_exponent=(1.0,))
    with pytest.raises(ValueError, match="table_sizes"):
        SyntheticConfig((10, 0))
