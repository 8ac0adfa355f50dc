"""A batch's lookups as jagged bags: table-major CSR, no padding to the longest bag.

Bag ``(t, b)`` (table ``t``, example ``b``) holds the table-local row ids
``values[offsets[t * B + b] : offsets[t * B + b + 1]]``. ``values`` may be longer than
``offsets[-1]`` (padding up to a rounded capacity, so that a jitted step compiles for few
shapes); entries past ``offsets[-1]`` are ignored. This is the layout FBGEMM's table-batched
embedding bags take, and the one the CPU kernels of :mod:`ndp.bag_kernels` read.

Against the padded form (``ids (B, T, L)``, ``lengths (B, T)``, :class:`ndp.train.Batch`),
jagged bags cost the lookups the batch has, not ``B * T * L``: for MLPerf's DLRMv2
pooling factors (214 lookups per example on average, the longest bag up to 150) that is
18x fewer entries.

Example:
    >>> import numpy as np
    >>> bags = bags_from_jagged([(np.array([3, 4, 5]), np.array([0, 2, 2, 3])), (np.array([1]), np.array([0, 0, 1, 1]))])
    >>> bags.values.tolist(), bags.offsets.tolist()
    ([3, 4, 5, 1], [0, 2, 2, 3, 3, 4, 4])
    >>> ids, lengths = bags_to_padded(bags, batch_size=3)
    >>> ids[:, 0].tolist(), lengths.tolist()
    ([[3, 4], [0, 0], [5, 0]], [[2, 0], [0, 1], [1, 0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from runkit import UsageError

__all__ = ["Bags", "bag_lengths", "bags_from_jagged", "bags_from_padded", "bags_to_padded", "check_bags", "pad_bags"]


class Bags(NamedTuple):
    """Jagged lookups of a batch, table-major CSR (see the module docstring).

    Attributes:
      values: ``int32 (N,)`` table-local row ids, ``N >= offsets[-1]`` (the rest is padding).
      offsets: ``int32 (T * B + 1,)`` bag boundaries, non-decreasing from 0.
    """

    values: Any
    offsets: Any

    def num_bags(self) -> int:
        return int(np.shape(self.offsets)[0]) - 1


def bags_from_jagged(tables: Sequence, capacity: int | None = None) -> Bags:
    """Concatenate per-table CSR bags (``(values, offsets)`` pairs, e.g. :class:`ndp.data.synthetic.JaggedBag`).

    Args:
      tables: one ``(values, offsets)`` per table, every table with the same ``B + 1`` offsets.
      capacity: length of ``values`` (padded with zeros); ``None``: exactly the lookups.
    """
    if not tables:
        raise UsageError("tables: expected at least one table, got none")
    values = [np.asarray(v) for v, _ in tables]
    offsets = [np.asarray(o, np.int64) for _, o in tables]
    batch = offsets[0].shape[0] - 1
    for t, o in enumerate(offsets):
        if o.shape != (batch + 1,) or o[0] != 0 or o[-1] != values[t].shape[0] or np.any(np.diff(o) < 0):
            raise UsageError(f"offsets[{t}]: expected {batch + 1} non-decreasing offsets from 0 to {values[t].shape[0]} "
                             f"(the table's values), got shape {o.shape} from {o[:1].tolist()} to {o[-1:].tolist()}")  # fmt: skip
    starts = np.cumsum([0] + [v.shape[0] for v in values])
    flat = np.concatenate([o[:-1] + starts[t] for t, o in enumerate(offsets)] + [starts[-1:]])
    return pad_bags(Bags(np.concatenate(values).astype(np.int32, copy=False), flat.astype(np.int32)), capacity)


def pad_bags(bags: Bags, capacity: int | None) -> Bags:
    """``bags`` with ``values`` padded (zeros) to ``capacity`` entries; ``None`` keeps them as they are."""
    values = np.asarray(bags.values, np.int32)
    if capacity is None or capacity == values.shape[0]:
        return Bags(values, np.asarray(bags.offsets, np.int32))
    used = int(np.asarray(bags.offsets)[-1])
    if capacity < used:
        raise UsageError(f"capacity: expected at least the batch's {used} lookups, got {capacity}")
    padded = np.zeros(capacity, np.int32)
    padded[:used] = values[:used]
    return Bags(padded, np.asarray(bags.offsets, np.int32))


def bags_from_padded(ids, lengths, capacity: int | None = None) -> Bags:
    """Jagged bags of a padded batch (``ids (B, T, L)``, ``lengths (B, T)``)."""
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    if ids.ndim != 3 or lengths.shape != ids.shape[:2]:
        raise UsageError(f"ids, lengths: expected (B, T, L) and (B, T), got {ids.shape} and {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > ids.shape[2]):
        raise UsageError(f"lengths: expected values in [0, {ids.shape[2]}] (L), got [{lengths.min()}, {lengths.max()}]")
    by_table = np.swapaxes(ids, 0, 1)  # (T, B, L)
    mask = np.arange(ids.shape[2])[None, None, :] < np.swapaxes(lengths, 0, 1)[:, :, None]
    offsets = np.concatenate([[0], np.cumsum(np.swapaxes(lengths, 0, 1).reshape(-1))])
    return pad_bags(Bags(by_table[mask].astype(np.int32), offsets.astype(np.int32)), capacity)


def bag_lengths(bags: Bags, batch_size: int) -> np.ndarray:
    """``int32 (B, T)`` lookups per bag."""
    return np.diff(np.asarray(bags.offsets)).reshape(-1, batch_size).T.astype(np.int32)


def bags_to_padded(bags: Bags, batch_size: int, max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The padded form ``(ids (B, T, L), lengths (B, T))``; ``L`` is ``max_length`` or the longest bag (at least 1)."""
    lengths = bag_lengths(bags, batch_size)
    longest = int(lengths.max()) if lengths.size else 0
    cap = max(1, longest) if max_length is None else int(max_length)
    if longest > cap:
        raise UsageError(f"max_length: expected >= the longest bag ({longest}), got {cap}")
    offsets, values = np.asarray(bags.offsets), np.asarray(bags.values)
    flat_lengths = lengths.T.reshape(-1)
    bag = np.repeat(np.arange(flat_lengths.size), flat_lengths)
    position = np.arange(bag.size) - offsets[bag]
    ids = np.zeros((lengths.shape[1], batch_size, cap), np.int32)  # (T, B, L)
    ids.reshape(-1, cap)[bag, position] = values[: bag.size]
    return np.ascontiguousarray(np.swapaxes(ids, 0, 1)), lengths


def check_bags(bags: Bags, table_sizes: Sequence[int], batch_size: int) -> None:
    """Raise :class:`runkit.UsageError` unless ``bags`` fits ``table_sizes`` and ``batch_size`` (host arrays).

    Checks the shape of ``offsets``, that they are non-decreasing from 0 within ``values``,
    and that every id lies in its table (a wrong id would read another table's rows).
    """
    offsets, values = np.asarray(bags.offsets), np.asarray(bags.values)
    tables = len(table_sizes)
    if offsets.shape != (tables * batch_size + 1,):
        raise UsageError(f"ids.offsets: expected {tables * batch_size + 1} offsets ({tables} tables x batch "
                         f"{batch_size} + 1), got shape {offsets.shape}")  # fmt: skip
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] > values.shape[0]:
        raise UsageError(f"ids.offsets: expected non-decreasing offsets from 0 to at most {values.shape[0]} "
                         f"(len(values)), got {offsets[0]} to {offsets[-1]}")  # fmt: skip
    used = values[: offsets[-1]]
    per_table = offsets[:: batch_size]
    for t, size in enumerate(table_sizes):
        ids = used[per_table[t] : per_table[t + 1]]
        if ids.size and (ids.min() < 0 or ids.max() >= size):
            bad = ids[(ids < 0) | (ids >= size)][0]
            raise UsageError(f"ids: expected ids of table {t} in [0, {size}), got {int(bad)}")
