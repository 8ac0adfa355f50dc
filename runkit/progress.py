"""One progress-bar factory for the whole project: tqdm on a terminal, plain lines in logs.

A tqdm bar redraws itself with ``\\r`` and (nested) cursor-movement escape codes; in a log
file those become garbage. :func:`progress_bar` returns a tqdm bar when the stream is a
terminal and otherwise a :class:`PlainProgress`, which writes whole lines such as
``train dlrm: 30/100 steps (30%) loss=0.412`` at most every ``interval`` seconds and once
when it closes. Both support the part of tqdm's interface the project uses: iteration,
``update``, ``set_postfix``, ``set_postfix_str``, ``close`` and ``with``.

Example:
    >>> import io
    >>> log = io.StringIO()
    >>> for _ in progress_bar(range(3), desc="demo", file=log, interval=0):
    ...     pass
    >>> print(log.getvalue().splitlines()[-1])
    demo: 3/3 (100%)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

#: Seconds between two plain progress lines (the last one is always written).
PLAIN_INTERVAL = 10.0


class PlainProgress:
    """A tqdm stand-in that writes one plain line per report, no ``\\r`` or escape codes.

    Args:
      iterable: what to iterate over (optional, as for tqdm).
      total: the count at completion (``len(iterable)`` when it has one).
      desc: the label at the start of every line.
      initial: the count to start from (a resumed job).
      unit: shown after the counts (e.g. ``img``).
      file: the stream (default ``sys.stderr``).
      interval: minimum seconds between two lines.
      disable: write nothing.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", initial: int = 0,
                 unit: str = "", file: TextIO | None = None, interval: float = PLAIN_INTERVAL, disable: bool = False,
                 **_ignored: Any):  # fmt: skip
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.file = file if file is not None else sys.stderr
        self.interval, self.disable = interval, disable
        self.postfix = ""
        self._last: float | None = None
        self._closed = False
        self._shown_n: int | None = None

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return self.total or 0

    def line(self) -> str:
        """The text of one report: ``desc: n/total unit (pct%) postfix``."""
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        unit = f" {self.unit}" if self.unit and self.unit != "it" else ""
        percent = f" ({100 * self.n // self.total}%)" if self.total else ""
        postfix = f" {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count}{unit}{percent}{postfix}" if self.desc else f"{count}{unit}{percent}{postfix}"

    def _write(self) -> None:
        if self.disable:
            return
        self.file.write(self.line() + "\n")
        self.file.flush()
        self._last, self._shown_n = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._last is None or time.monotonic() - self._last >= self.interval:
            self._write()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._shown_n != self.n:
                self._write()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable | None = None, *, file: TextIO | None = None, interval: float = PLAIN_INTERVAL, **kwargs: Any):
    """A progress bar on ``file`` (default stderr): tqdm on a terminal, :class:`PlainProgress` otherwise.

    Args:
      iterable: optional iterable to wrap.
      file: the stream; decides the kind of bar.
      interval: seconds between plain lines (ignored on a terminal).
      **kwargs: tqdm's ``total``, ``desc``, ``initial``, ``unit``, ``disable``, ``leave``.

    Returns:
      An object with tqdm's iteration, ``update``, ``set_postfix(_str)`` and ``close``.
    """
    file = file if file is not None else sys.stderr
    if _is_terminal(file):
        from tqdm.auto import tqdm

        return tqdm(iterable, file=file, **kwargs)
    return PlainProgress(iterable, file=file, interval=interval, **kwargs)
