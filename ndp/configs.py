"""Model configurations: DLRM on Criteo Kaggle, MLPerf-style DLRM, and their table sizes.

The Criteo Kaggle display-advertising data set has 13 dense and 26 categorical
features; its 26 embedding tables hold 33.76M rows in total (largest 10.1M), as in
facebookresearch/dlrm. Small machines cannot hold those tables, so every function
that builds table sizes takes a ``row_cap`` (clip each table) and a ``scale``
(multiply every table, rounding up, at least one row).

Example:
    >>> sizes = criteo_kaggle_table_sizes(row_cap=1_000_000)
    >>> len(sizes), max(sizes), min(sizes)
    (26, 1000000, 3)
    >>> criteo_kaggle_table_sizes(scale=1e-3)[:3]
    (2, 1, 10132)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from runkit import UsageError, check_choice, check_positive

#: Rows of the 26 Criteo Kaggle embedding tables, in feature order (C1..C26).
CRITEO_KAGGLE_TABLE_SIZES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip

#: Number of dense (integer-count) features in Criteo data.
CRITEO_NUM_DENSE = 13

#: DLRM feature interactions (see :class:`DLRMConfig`).
INTERACTIONS = ("dot", "cat", "dot_cat", "dcn")

#: Rows of the 26 tables of MLPerf Training's DLRMv2 (DCNv2 on Criteo 1TB multi-hot), C1..C26.
DLRMV2_TABLE_SIZES: tuple[int, ...] = (
    40_000_000, 39_060, 17_295, 7_424, 20_265, 3, 7_122, 1_543, 63, 40_000_000, 3_067_956, 405_282, 10,
    2_209, 11_938, 155, 4, 976, 14, 40_000_000, 40_000_000, 40_000_000, 590_152, 12_973, 108, 36,
)  # fmt: skip

#: Ids per bag (the multi-hot size) of each DLRMv2 table, in the order of :data:`DLRMV2_TABLE_SIZES`.
DLRMV2_POOLING_FACTORS: tuple[int, ...] = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)


def scale_table_sizes(sizes: Sequence[int], *, row_cap: int | None = None, scale: float = 1.0) -> tuple[int, ...]:
    """Scale then cap table sizes: ``min(row_cap, max(1, ceil(rows * scale)))``.

    Args:
      sizes: rows per table.
      row_cap: largest allowed table (``None``: no cap).
      scale: factor applied to every table before capping (``> 0``).

    Returns:
      The new sizes as a tuple of ints.
    """
    check_positive("scale", scale)
    if row_cap is not None:
        check_positive("row_cap", row_cap)
    out = []
    for rows in sizes:
        check_positive("table size", rows)
        scaled = max(1, math.ceil(rows * scale))
        out.append(int(min(scaled, row_cap)) if row_cap is not None else int(scaled))
    return tuple(out)


def criteo_kaggle_table_sizes(*, row_cap: int | None = None, scale: float = 1.0) -> tuple[int, ...]:
    """The Criteo Kaggle table sizes, scaled by ``scale`` and clipped at ``row_cap``."""
    return scale_table_sizes(CRITEO_KAGGLE_TABLE_SIZES, row_cap=row_cap, scale=scale)


@dataclasses.dataclass(frozen=True)
class DLRMConfig:
    """Shape of a DLRM: bottom MLP on dense features, embedding bags, interaction, top MLP.

    Attributes:
      num_dense: dense input features.
      table_sizes: rows of each embedding table.
      embedding_dim: width of every embedding row (the bottom MLP ends at this width).
      bottom_mlp: hidden and output widths of the bottom MLP (the last equals ``embedding_dim``).
      top_mlp: hidden widths of the top MLP and its output width (1 logit / rating).
      interaction: ``"dot"`` (pairwise dot products of the bottom output and pooled
        embeddings, plus the bottom output), ``"cat"`` (concatenation of the bottom
        output and the pooled embeddings) or ``"dot_cat"`` (both: the pairwise dot
        products next to the concatenation, as in DeepFM-style models).
      pooling: ``"sum"`` or ``"mean"`` over each multi-hot bag.
      cross_layers, cross_rank: the ``"dcn"`` interaction (DCNv2): the bottom output and the pooled
        embeddings concatenated into ``x0`` (width ``(T + 1) * D``), then ``cross_layers`` low-rank
        cross layers ``x_{l+1} = x0 * (U_l (V_l x_l) + b_l) + x_l`` with ``V_l`` of rank ``cross_rank``;
        other interactions ignore them.
    """

    num_dense: int
    table_sizes: tuple[int, ...]
    embedding_dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    interaction: str = "dot"
    pooling: str = "sum"
    cross_layers: int = 3
    cross_rank: int = 512

    def __post_init__(self):
        check_positive("embedding_dim", self.embedding_dim)
        check_positive("cross_layers", self.cross_layers, allow_zero=True)
        check_positive("cross_rank", self.cross_rank)
        check_choice("interaction", self.interaction, INTERACTIONS)
        check_choice("pooling", self.pooling, ("sum", "mean"))
        if self.bottom_mlp and self.bottom_mlp[-1] != self.embedding_dim:
            raise UsageError(
                f"bottom_mlp: expected the last width to equal embedding_dim={self.embedding_dim}, got {self.bottom_mlp}"
            )
        if not self.top_mlp:
            raise UsageError("top_mlp: expected at least the output width, got ()")
        for rows in self.table_sizes:
            check_positive("table size", rows)

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    @property
    def interaction_width(self) -> int:
        """Width of the top MLP's input."""
        features = self.num_tables + (1 if self.bottom_mlp else 0)
        pairs = features * (features - 1) // 2
        if self.interaction == "dot":
            return (self.embedding_dim if self.bottom_mlp else 0) + pairs
        if self.interaction in ("cat", "dcn"):  # the cross layers keep their input's width
            return features * self.embedding_dim
        return features * self.embedding_dim + pairs


def criteo_kaggle_config(*, row_cap: int | None = None, scale: float = 1.0, interaction: str = "dot") -> DLRMConfig:
    """facebookresearch/dlrm's Kaggle model: dim 16, bottom 13-512-256-64-16, top 512-256-1.

    Example:
        >>> cfg = criteo_kaggle_config(row_cap=100_000)
        >>> cfg.embedding_dim, cfg.bottom_mlp, cfg.top_mlp, cfg.interaction_width
        (16, (512, 256, 64, 16), (512, 256, 1), 367)
    """
    return DLRMConfig(
        num_dense=CRITEO_NUM_DENSE,
        table_sizes=criteo_kaggle_table_sizes(row_cap=row_cap, scale=scale),
        embedding_dim=16,
        bottom_mlp=(512, 256, 64, 16),
        top_mlp=(512, 256, 1),
        interaction=interaction,
    )


def mlperf_config(*, row_cap: int | None = None, scale: float = 1.0, interaction: str = "dot") -> DLRMConfig:
    """MLPerf-style DLRM widths (dim 128, bottom 13-512-256-128, top 1024-1024-512-256-1).

    MLPerf trains on Criteo Terabyte; its tables are not bundled here, so this
    configuration uses the Kaggle table sizes (scaled and capped like the others).
    """
    return DLRMConfig(
        num_dense=CRITEO_NUM_DENSE,
        table_sizes=criteo_kaggle_table_sizes(row_cap=row_cap, scale=scale),
        embedding_dim=128,
        bottom_mlp=(512, 256, 128),
        top_mlp=(1024, 1024, 512, 256, 1),
        interaction=interaction,
    )


def dlrmv2_table_sizes(*, row_cap: int | None = None, scale: float = 1.0) -> tuple[int, ...]:
    """The DLRMv2 table sizes, scaled by ``scale`` and clipped at ``row_cap``.

    Example:
        >>> sizes = dlrmv2_table_sizes(row_cap=1_000_000)
        >>> len(sizes), max(sizes), sum(DLRMV2_POOLING_FACTORS)
        (26, 1000000, 214)
    """
    return scale_table_sizes(DLRMV2_TABLE_SIZES, row_cap=row_cap, scale=scale)


def dlrmv2_config(*, row_cap: int | None = None, scale: float = 1.0) -> DLRMConfig:
    """MLPerf Training's DLRMv2: dim 128, bottom 13-512-256-128, DCNv2 interaction (3 layers, rank 512),
    top 1024-1024-512-256-1, sum pooling, on the DLRMv2 tables (scaled and capped).

    Example:
        >>> cfg = dlrmv2_config(row_cap=1000)
        >>> cfg.interaction, cfg.cross_layers, cfg.cross_rank, cfg.interaction_width
        ('dcn', 3, 512, 3456)
    """
    return DLRMConfig(
        num_dense=CRITEO_NUM_DENSE,
        table_sizes=dlrmv2_table_sizes(row_cap=row_cap, scale=scale),
        embedding_dim=128,
        bottom_mlp=(512, 256, 128),
        top_mlp=(1024, 1024, 512, 256, 1),
        interaction="dcn",
        pooling="sum",
        cross_layers=3,
        cross_rank=512,
    )
