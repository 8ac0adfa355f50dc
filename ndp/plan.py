"""Where embedding tables live on the ``storage`` devices: sharding plans and the slab layout.

All tables are packed into one *slab* per storage device, like FBGEMM's
table-batched embeddings: a global ``float32 (S * R, W)`` array sharded by rows
over the mesh axis ``storage`` (``S`` devices, ``R`` rows per device, width
``W``). A :class:`ShardingPlan` says where every table's rows and columns sit:

* ``"tw"`` (table-wise): each table whole on one device; tables are placed
  greedily, largest first, on the device with the fewest rows (memory balance).
* ``"rw"`` (row-wise): each table split into ``S`` contiguous row blocks, block
  ``s`` on device ``s``.
* ``"cw"`` (column-wise): each table split into ``S`` column blocks of width
  ``D / S``, block ``s`` on device ``s`` (``W = D / S``).
* ``"twrw"`` (table-wise then row-wise): the devices form ``S / g`` groups of
  ``g`` consecutive devices (``group_size``); tables are placed greedily on the
  group with the fewest rows, and each table is split into ``g`` row blocks over
  its group's devices.

Every lookup of a ``tw``, ``rw`` or ``twrw`` table has exactly one owner device
(:meth:`ShardingPlan.owners`); a ``cw`` lookup touches every device, each on its
own ``D / S`` columns.

Example:
    >>> plan = plan_sharding((100, 60, 50, 10), embedding_dim=8, num_shards=4, kind="twrw", group_size=2)
    >>> plan.rows_per_shard()
    [55, 55, 55, 55]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from runkit import UsageError, check_choice, check_positive

AXIS = "storage"
SHARDING_KINDS = ("tw", "rw", "cw", "twrw")
#: Layouts whose lookups each have one owner device (routed to it by an all-to-all).
ROUTED_KINDS = ("tw", "rw", "twrw")
POOLINGS = ("sum", "mean")
OPTIMIZERS = ("sgd", "rowwise_adagrad")


class TablePiece(NamedTuple):
    """Rows ``[row_start, row_end)`` and columns ``[col_start, col_end)`` of ``table``,
    stored on ``shard`` from slab row ``slab_offset`` on."""

    table: int
    shard: int
    row_start: int
    row_end: int
    col_start: int
    col_end: int
    slab_offset: int


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """Where every table's rows and columns live on the ``storage`` devices.

    Build one with :func:`plan_sharding`. ``slab_rows`` (``R``) and ``slab_width``
    (``W``) give each device's slab shape; the global slab is ``(S * R, W)``.
    """

    table_sizes: tuple[int, ...]
    embedding_dim: int
    num_shards: int
    kind: str
    pieces: tuple[TablePiece, ...]
    slab_rows: int
    slab_width: int
    group_size: int = 1

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    def _per_shard(self, field: str) -> np.ndarray:
        out = np.zeros((self.num_shards, self.num_tables), np.int32)
        for p in self.pieces:
            out[p.shard, p.table] = getattr(p, field)
        return out

    def routing(self) -> np.ndarray:
        """``int32 (S, 3, T)``: per device and table, first row, end row and slab offset it holds
        (all zero where the device holds none of the table)."""
        return np.stack(
            [self._per_shard("row_start"), self._per_shard("row_end"), self._per_shard("slab_offset")], axis=1
        )

    def owners(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per table, the row pieces in row order: ``starts``, ``shards`` and slab ``offsets``, each ``int32 (T, P)``.

        For a ``tw``, ``rw`` or ``twrw`` plan, id ``i`` of table ``t`` lives in piece
        ``p = #{k : starts[t, k] <= i} - 1`` (``starts[t, 0] == 0``; unused pieces
        start at ``2**31 - 1``), on device ``shards[t, p]`` at local slab row
        ``i - starts[t, p] + offsets[t, p]``.
        """
        if self.kind not in ROUTED_KINDS:
            raise ValueError(f"kind: owners are defined for {list(ROUTED_KINDS)}, got {self.kind!r}")
        count = max(sum(p.table == t for p in self.pieces) for t in range(self.num_tables))
        starts = np.full((self.num_tables, count), np.iinfo(np.int32).max, np.int32)
        shards = np.zeros((self.num_tables, count), np.int32)
        offsets = np.zeros((self.num_tables, count), np.int32)
        for t in range(self.num_tables):
            for k, p in enumerate(sorted((p for p in self.pieces if p.table == t), key=lambda p: p.row_start)):
                starts[t, k], shards[t, k], offsets[t, k] = p.row_start, p.shard, p.slab_offset
        return starts, shards, offsets

    def rows_per_shard(self) -> list[int]:
        """Table rows each device holds (without padding)."""
        rows = [0] * self.num_shards
        for p in self.pieces:
            rows[p.shard] += p.row_end - p.row_start
        return rows

    def bytes_per_shard(self, bytes_per_value: int = 4) -> list[int]:
        return [r * self.slab_width * bytes_per_value for r in self.rows_per_shard()]

    def imbalance(self) -> float:
        """Largest device's rows over the mean (1.0 is perfect balance)."""
        rows = self.rows_per_shard()
        mean = sum(rows) / len(rows)
        return float(max(rows) / mean) if mean else 1.0

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "num_shards": self.num_shards,
            "group_size": self.group_size,
            "embedding_dim": self.embedding_dim,
            "slab_rows": self.slab_rows,
            "slab_width": self.slab_width,
            "rows_per_shard": self.rows_per_shard(),
            "mb_per_shard": [round(b / 2**20, 3) for b in self.bytes_per_shard()],
            "imbalance": round(self.imbalance(), 4),
            "tables": [
                {"table": t, "rows": n, "pieces": [p._asdict() for p in self.pieces if p.table == t]}
                for t, n in enumerate(self.table_sizes)
            ],
        }

    def describe(self) -> str:
        """A human-readable summary: rows and MB per device, and where each table lives."""
        lines = [
            f"{self.kind} sharding of {self.num_tables} tables (dim {self.embedding_dim}) over "
            f"{self.num_shards} storage device(s); slab {self.slab_rows} x {self.slab_width} per device, "
            f"imbalance {self.imbalance():.3f}"
        ]
        for s, (rows, nbytes) in enumerate(zip(self.rows_per_shard(), self.bytes_per_shard())):
            tables = sorted({p.table for p in self.pieces if p.shard == s})
            shown = ",".join(map(str, tables[:12])) + ("..." if len(tables) > 12 else "")
            lines.append(f"  device {s}: {rows} rows, {nbytes / 2**20:.2f} MB, tables [{shown}]")
        return "\n".join(lines)


def default_group_size(num_shards: int) -> int:
    """The ``twrw`` group size used when none is given: the largest divisor ``g`` of ``S`` with ``g * g <= S``.

    Example:
        >>> [default_group_size(s) for s in (1, 2, 4, 8, 16)]
        [1, 1, 2, 2, 4]
    """
    return max(g for g in range(1, int(num_shards) + 1) if num_shards % g == 0 and g * g <= num_shards)


def plan_sharding(
    table_sizes: Sequence[int], embedding_dim: int, num_shards: int, kind: str = "rw", *, group_size: int | None = None
) -> ShardingPlan:
    """Plan how tables are cut and placed over ``num_shards`` storage devices.

    Args:
      table_sizes: rows of each table.
      embedding_dim: ``D``, the width of every table.
      num_shards: ``S``, the size of the ``storage`` mesh axis.
      kind: ``"tw"`` (table-wise, greedy memory balance), ``"rw"`` (row-wise),
        ``"cw"`` (column-wise; needs ``D % S == 0``) or ``"twrw"`` (table-wise over
        groups of devices, row-wise within a group).
      group_size: ``g``, devices per ``twrw`` group (a divisor of ``S``; default
        :func:`default_group_size`). Only for ``"twrw"``.

    Returns:
      A :class:`ShardingPlan`.

    Example:
        >>> plan = plan_sharding((100, 60, 50, 10), embedding_dim=8, num_shards=2, kind="tw")
        >>> plan.rows_per_shard()
        [110, 110]
    """
    table_sizes = tuple(int(n) for n in table_sizes)
    if not table_sizes:
        raise UsageError("table_sizes: expected at least one table, got ()")
    for n in table_sizes:
        check_positive("table size", n)
    check_positive("embedding_dim", embedding_dim)
    check_positive("num_shards", num_shards)
    check_choice("kind", kind, SHARDING_KINDS)
    d, s_count = int(embedding_dim), int(num_shards)
    if group_size is not None and kind != "twrw":
        raise UsageError(f"group_size: only the 'twrw' layout has groups, got group_size={group_size} with kind {kind!r}")
    group = default_group_size(s_count) if group_size is None else int(group_size)
    if kind == "twrw" and (group < 1 or s_count % group):
        raise UsageError(f"group_size: expected a divisor of num_shards ({s_count}), got {group_size}")
    pieces: list[TablePiece] = []
    fill = [0] * s_count
    if kind == "twrw":
        groups = s_count // group
        group_fill = [0] * groups
        for t in sorted(range(len(table_sizes)), key=lambda t: (-table_sizes[t], t)):
            g = min(range(groups), key=lambda g: (group_fill[g], g))
            n = table_sizes[t]
            block = -(-n // group)
            for k in range(group):
                s, lo, hi = g * group + k, min(n, k * block), min(n, (k + 1) * block)
                if hi > lo:
                    pieces.append(TablePiece(t, s, lo, hi, 0, d, fill[s]))
                    fill[s] += hi - lo
            group_fill[g] += n
        width = d
    elif kind == "tw":
        for t in sorted(range(len(table_sizes)), key=lambda t: (-table_sizes[t], t)):
            s = min(range(s_count), key=lambda s: (fill[s], s))
            pieces.append(TablePiece(t, s, 0, table_sizes[t], 0, d, fill[s]))
            fill[s] += table_sizes[t]
        width = d
    elif kind == "rw":
        for t, n in enumerate(table_sizes):
            block = -(-n // s_count)
            for s in range(s_count):
                lo, hi = min(n, s * block), min(n, (s + 1) * block)
                if hi > lo:
                    pieces.append(TablePiece(t, s, lo, hi, 0, d, fill[s]))
                    fill[s] += hi - lo
        width = d
    else:
        if d % s_count:
            raise UsageError(
                f"embedding_dim: column-wise sharding over {s_count} devices needs a multiple of {s_count}, got {d}"
            )
        width = d // s_count
        for t, n in enumerate(table_sizes):
            for s in range(s_count):
                pieces.append(TablePiece(t, s, 0, n, s * width, (s + 1) * width, fill[s]))
                fill[s] += n
    pieces.sort(key=lambda p: (p.table, p.shard))
    group = group if kind == "twrw" else 1
    return ShardingPlan(table_sizes, d, s_count, kind, tuple(pieces), max(1, max(fill)), width, group)


def pack_tables(plan: ShardingPlan, tables: Sequence[np.ndarray]) -> np.ndarray:
    """Lay out full tables ``(N_t, D)`` as the global slab ``(S * R, W)`` (host memory).

    Example:
        >>> plan = plan_sharding((3,), embedding_dim=2, num_shards=2, kind="cw")
        >>> pack_tables(plan, [np.arange(6, dtype=np.float32).reshape(3, 2)])[:, 0].tolist()
        [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]
    """
    if len(tables) != plan.num_tables:
        raise ValueError(f"tables: expected {plan.num_tables} tables, got {len(tables)}")
    slab = np.zeros((plan.num_shards * plan.slab_rows, plan.slab_width), np.float32)
    for t, table in enumerate(tables):
        if tuple(np.shape(table)) != (plan.table_sizes[t], plan.embedding_dim):
            raise ValueError(
                f"tables[{t}]: expected shape {(plan.table_sizes[t], plan.embedding_dim)}, got {tuple(np.shape(table))}"
            )
    for p in plan.pieces:
        base = p.shard * plan.slab_rows + p.slab_offset
        slab[base : base + p.row_end - p.row_start] = np.asarray(tables[p.table])[
            p.row_start : p.row_end, p.col_start : p.col_end
        ]
    return slab


def unpack_tables(plan: ShardingPlan, slab) -> list[np.ndarray]:
    """The inverse of :func:`pack_tables`: full tables ``(N_t, D)`` from a (gathered) slab."""
    slab = np.asarray(slab)
    tables = [np.zeros((n, plan.embedding_dim), slab.dtype) for n in plan.table_sizes]
    for p in plan.pieces:
        base = p.shard * plan.slab_rows + p.slab_offset
        tables[p.table][p.row_start : p.row_end, p.col_start : p.col_end] = slab[base : base + p.row_end - p.row_start]
    return tables
