"""MLPerf's DLRMv2 in ndp: the DCNv2 cross network, the model's shape, multi-hot synthetic bags, a training run."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from ndp.configs import DLRMV2_POOLING_FACTORS, DLRMV2_TABLE_SIZES, DLRMConfig, dlrmv2_config
from ndp.data.synthetic import SyntheticConfig, batch_at
from ndp.model import DLRMHead, LowRankCrossNet


def _cross_reference(x0, layers):
    """DCNv2's low-rank cross layers in numpy, from the paper's formula: x_{l+1} = x0 * (U (V x_l) + b) + x_l."""
    x = x0
    for v, u, b in layers:
        x = x0 * ((x @ v) @ u + b) + x
    return x


@settings(max_examples=5)
@given(width=st.integers(1, 12), layers=st.integers(0, 3), rank=st.integers(1, 6), seed=st.integers(0, 100))
def test_cross_network_follows_the_dcnv2_formula(width, layers, rank, seed):
    net = LowRankCrossNet(width, layers, rank, rngs=nnx.Rngs(seed))
    for up in net.up:  # non-zero biases, so they are checked too
        up.bias[...] = jax.random.normal(jax.random.key(seed + 1), up.bias.shape)
    x0 = np.random.default_rng(seed).normal(size=(5, width)).astype(np.float32)
    weights = [(np.asarray(d.kernel[...]), np.asarray(u.kernel[...]), np.asarray(u.bias[...])) for d, u in zip(net.down, net.up)]
    np.testing.assert_allclose(np.asarray(net(jnp.asarray(x0))), _cross_reference(x0, weights), rtol=1e-4, atol=1e-4)


def test_dcn_head_is_the_top_mlp_over_the_crossed_concatenation():
    config = DLRMConfig(num_dense=3, table_sizes=(10, 20), embedding_dim=4, bottom_mlp=(8, 4), top_mlp=(6, 1),
                        interaction="dcn", cross_layers=2, cross_rank=3)  # fmt: skip
    assert config.interaction_width == 3 * 4
    head = DLRMHead(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    dense = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    pooled = jnp.asarray(rng.normal(size=(5, 2, 4)), jnp.float32)
    bottom = head.bottom(dense)
    x0 = np.concatenate([np.asarray(bottom)[:, None, :], np.asarray(pooled)], axis=1).reshape(5, -1)
    weights = [(np.asarray(d.kernel[...]), np.asarray(u.kernel[...]), np.asarray(u.bias[...])) for d, u in zip(head.cross.down, head.cross.up)]
    expected = np.asarray(head.top(jnp.asarray(_cross_reference(x0, weights))))[:, 0]
    np.testing.assert_allclose(np.asarray(head(dense, pooled)), expected, rtol=1e-5, atol=1e-5)


def _design_numbers(shared_root, after: str, count: int) -> tuple[int, ...]:
    """The first ``count`` integers after ``after`` in the shared DESIGN.md (its DLRMv2 facts)."""
    text = (shared_root / "DESIGN.md").read_text()
    tail = text[text.index(after) + len(after):]
    return tuple(int(n) for n in re.findall(r"\d+", tail)[:count])


def test_dlrmv2_config_matches_the_mlperf_reference(shared_root):
    assert DLRMV2_TABLE_SIZES == _design_numbers(shared_root, "26 tables of", 26)
    assert DLRMV2_POOLING_FACTORS == _design_numbers(shared_root, "(uniform\n  distribution)", 26)
    cfg = dlrmv2_config(row_cap=1_000_000)
    assert (cfg.embedding_dim, cfg.bottom_mlp, cfg.top_mlp) == (128, (512, 256, 128), (1024, 1024, 512, 256, 1))
    assert (cfg.interaction, cfg.cross_layers, cfg.cross_rank, cfg.pooling) == ("dcn", 3, 512, "sum")
    assert cfg.table_sizes == tuple(min(n, 1_000_000) for n in DLRMV2_TABLE_SIZES)
    assert cfg.interaction_width == 27 * 128


def test_synthetic_multi_hot_bags_follow_each_tables_pooling_factor():
    factors = (0, 1, 2, 7, 100)
    config = SyntheticConfig((50, 1000, 30, 7, 100_000), batch_size=4096, pooling_factors=factors, seed=3)
    batch = batch_at(config, 0)
    for table, (m, bag) in enumerate(zip(factors, batch.tables)):
        lengths = bag.lengths
        assert (lengths.min(), lengths.max()) == config.bag_length_range(table) == (m - m // 2, m + m // 2)
        assert abs(lengths.mean() - m) <= 0.05 * m + 1e-9  # uniform around the mean
        assert bag.values.shape == (int(lengths.sum()),) and (bag.values < config.table_sizes[table]).all()
    assert config.longest_bag == 150
    again = batch_at(config, 0)  # a pure function of (seed, index)
    assert all(np.array_equal(a.values, b.values) for a, b in zip(batch.tables, again.tables))
    with pytest.raises(ValueError, match=r"^pooling_factors: expected one per table \(5\), got 2"):
        SyntheticConfig((50, 1000, 30, 7, 100_000), pooling_factors=(1, 2))
    with pytest.raises(ValueError, match="^min_bag_length/max_bag_length: expected the defaults 1/1 with pooling_factors"):
        SyntheticConfig((50, 1000), pooling_factors=(1, 2), max_bag_length=4)


def test_train_dlrmv2_preset_end_to_end(tmp_path, capsys):
    """The DLRMv2 preset at a small scale (narrow widths, 200-row tables): DCN interaction, 26 multi-hot
    tables with bags of up to 150 ids, row-wise Adagrad; it trains, evaluates and records the cross settings."""
    from ndp.__main__ import main
    from runkit import read_settings

    out = tmp_path / "run"
    status = main(["train", "--preset", "synthetic-dlrmv2", "--row-cap", "200", "--batch-size", "64", "--steps", "3",
                   "--embedding-dim", "8", "--bottom-mlp", "16,8", "--top-mlp", "16,1", "--cross-rank", "4",
                   "--devices", "2", "--no-progress", "--out", str(out)])  # fmt: skip
    assert status == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test AUC: ")
    recorded = read_settings(out / "dlrm")
    assert recorded["interaction"] == "dcn" and recorded["cross_layers"] == 3 and recorded["cross_rank"] == 4
    assert recorded["table_sizes"] == [min(n, 200) for n in DLRMV2_TABLE_SIZES]
