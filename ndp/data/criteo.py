"""Criteo display-advertising logs in their TSV form (or as CSV with a header), streamed in batches.

Each line is ``label \\t I1..I13 \\t C1..C26``: a 0/1 click, 13 integer counts and
26 categorical values as 8-digit hex strings; any field may be empty. A file whose first line
is the header ``label,I1,...,C26`` is read as comma-separated values (counts may be written as
``260.0``), the layout of the samples that ship with DeepCTR-style libraries. As in
facebookresearch/dlrm's preprocessing, a count ``x`` becomes ``log(1 + max(x, 0))``
(missing: 0) and a category is hashed into its table: ``1 + int(hex, 16) mod
(rows - 1)``, with row 0 kept for "missing".

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "day_0.tsv"
    >>> line = "1\\t" + "\\t".join(["3"] * 13) + "\\t" + "\\t".join(["68fd1e64"] * 26)
    >>> _ = path.write_text(line + "\\n")
    >>> batch = next(read_batches(path, table_sizes=(1000,) * 26, batch_size=1))
    >>> batch.labels.tolist(), round(float(batch.dense[0, 0]), 4), batch.ids.shape
    ([1.0], 1.3863, (1, 26, 1))
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from runkit import MissingFileError, UsageError, check_positive
from ndp.configs import CRITEO_NUM_DENSE
from ndp.train import Batch

NUM_CATEGORICAL = 26


def _count(text: str) -> int:
    """An integer count, also when written as a float with no fraction (``"260.0"``)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise ValueError(f"expected an integer count, got {text!r}") from None
        return int(value)


def parse_line(line: str, table_sizes: Sequence[int], line_number: int = 0, *,
               path: str | os.PathLike | None = None, separator: str = "\t") -> tuple[float, np.ndarray, np.ndarray]:  # fmt: skip
    """One TSV (or, with ``separator=","``, CSV) line to ``(label, dense float32 (13,), ids int32 (26,))``.

    Errors name ``path`` (when given) and the 1-based ``line_number`` an editor shows.
    """
    where = f"{str(path)!r}, line {line_number}" if path is not None else f"criteo line {line_number}"
    fields = line.rstrip("\n").rstrip("\r").split(separator)
    expected = 1 + CRITEO_NUM_DENSE + NUM_CATEGORICAL
    if len(fields) != expected:
        kind = "tab-separated" if separator == "\t" else f"{separator!r}-separated"
        raise UsageError(f"{where}: expected {expected} {kind} fields, got {len(fields)}")
    try:
        label = float(int(fields[0]))
        dense = np.array(
            [math.log1p(max(_count(x), 0)) if x else 0.0 for x in fields[1 : 1 + CRITEO_NUM_DENSE]], np.float32
        )
        ids = np.array(
            [
                1 + int(x, 16) % (n - 1) if x and n > 1 else 0
                for x, n in zip(fields[1 + CRITEO_NUM_DENSE :], table_sizes)
            ],
            np.int32,
        )
    except ValueError as error:
        raise UsageError(f"{where}: {error}") from None
    return label, dense, ids


#: The header line of the CSV layout.
CSV_HEADER = ",".join(["label", *(f"I{i}" for i in range(1, CRITEO_NUM_DENSE + 1)), *(f"C{i}" for i in range(1, NUM_CATEGORICAL + 1))])


def file_layout(path: str | os.PathLike) -> tuple[str, int]:
    """``(separator, header lines)`` of a Criteo file: ``(",", 1)`` when its first line is :data:`CSV_HEADER`, else ``("\\t", 0)``."""
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
    return (",", 1) if first == CSV_HEADER else ("\t", 0)


def count_lines(path: str | os.PathLike) -> int:
    """Examples in a Criteo file (lines, less the CSV header)."""
    with open(path, "rb") as f:
        return sum(1 for _ in f) - file_layout(path)[1]


def read_batches(
    path: str | os.PathLike,
    table_sizes: Sequence[int],
    batch_size: int,
    *,
    skip: int = 0,
    limit: int | None = None,
    cycle: bool = False,
) -> Iterator[Batch]:
    """Stream full batches from a Criteo TSV (or headed CSV) file (a last partial batch is dropped).

    Args:
      path: the TSV or CSV file.
      table_sizes: rows of the 26 tables (categories are hashed into them).
      batch_size: examples per batch.
      skip: examples to skip first (resume, or a held-out head).
      limit: read at most this many examples after ``skip`` (``None``: to the end).
      cycle: start over (at ``skip``) at the end, for multi-epoch training.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"Criteo TSV file not found: {str(path)!r}")
    if len(table_sizes) != NUM_CATEGORICAL:
        raise UsageError(f"table_sizes: expected {NUM_CATEGORICAL} tables, got {len(table_sizes)}")
    check_positive("batch_size", batch_size)
    separator, header = file_layout(path)
    while True:
        labels, dense, ids = [], [], []
        emitted = 0
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f):
                number -= header  # the example's index (the header is line 1 of a CSV file)
                if number < skip:
                    continue
                if limit is not None and number >= skip + limit:
                    break
                label, d, i = parse_line(line, table_sizes, number + 1 + header, path=path, separator=separator)
                labels.append(label)
                dense.append(d)
                ids.append(i)
                if len(labels) == batch_size:
                    emitted += 1
                    yield Batch(np.stack(dense), np.stack(ids)[:, :, None], np.ones((batch_size, NUM_CATEGORICAL), np.int32),
                                np.asarray(labels, np.float32))  # fmt: skip
                    labels, dense, ids = [], [], []
        if not cycle:
            return
        if emitted == 0:
            raise UsageError(f"batch_size: {str(path)!r} has fewer than {batch_size} lines to train on")


class CriteoTSVSource:
    """A Criteo TSV file as a training source: the last ``eval_lines`` lines are the test set.

    Batch ``i`` is the ``i``-th block of training lines (cycling over epochs); the
    stream is kept open and only re-read from the start when a step is requested out
    of order (after a resume).
    """

    def __init__(self, path: str | os.PathLike, table_sizes: Sequence[int], *, eval_lines: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"Criteo TSV file not found: {str(self.path)!r}")
        self.table_sizes = tuple(int(n) for n in table_sizes)
        if len(self.table_sizes) != NUM_CATEGORICAL:
            raise UsageError(f"table_sizes: expected {NUM_CATEGORICAL} tables, got {len(self.table_sizes)}")
        total = count_lines(self.path)
        self.eval_lines = min(total // 10, 100_000) if eval_lines is None else int(eval_lines)
        self.train_lines = total - self.eval_lines
        self.train_examples = self.train_lines
        if self.train_lines <= 0:
            raise UsageError(f"eval_lines: expected fewer than the file's {total} lines, got {self.eval_lines}")
        self.task = "click"
        self.label_mean = 0.0
        self.num_dense = CRITEO_NUM_DENSE
        self._stream: Iterator[Batch] | None = None
        self._next = 0

    def train_batch(self, step: int, batch_size: int) -> Batch:
        per_epoch = self.train_lines // batch_size
        if per_epoch == 0:
            raise UsageError(f"batch_size: expected at most the {self.train_lines} training lines, got {batch_size}")
        if self._stream is None or step != self._next:
            skip = (step % per_epoch) * batch_size
            self._stream = read_batches(self.path, self.table_sizes, batch_size, skip=skip,
                                        limit=self.train_lines - skip)  # fmt: skip
        try:
            batch = next(self._stream)
        except StopIteration:
            self._stream = read_batches(self.path, self.table_sizes, batch_size, limit=self.train_lines)
            batch = next(self._stream)
        self._next = step + 1
        return batch

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Batch, int]]:
        for batch in read_batches(self.path, self.table_sizes, batch_size, skip=self.train_lines):
            yield batch, batch_size
