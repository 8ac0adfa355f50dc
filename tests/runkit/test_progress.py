"""Progress bars write plain lines, without carriage returns or escape codes, when not on a terminal."""

from __future__ import annotations

import io

from runkit.progress import PlainProgress, progress_bar


def test_plain_lines_when_the_stream_is_not_a_terminal():
    log = io.StringIO()
    bar = progress_bar(range(4), desc="epoch 1/2", file=log, interval=0, unit="img")
    assert isinstance(bar, PlainProgress)
    for i in bar:
        bar.set_postfix(loss=f"{i / 10:.1f}")
    inner = progress_bar(total=3, desc="evaluating", file=log, interval=0, initial=1)
    inner.set_postfix_str("stage prune")
    inner.update(2)
    inner.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == [
        "epoch 1/2: 1/4 img (25%) loss=0.0",  # the count advances after the loop body has run
        "epoch 1/2: 2/4 img (50%) loss=0.1",
        "epoch 1/2: 3/4 img (75%) loss=0.2",
        "epoch 1/2: 4/4 img (100%) loss=0.3",
        "evaluating: 3/3 (100%) stage prune",
    ]


def test_lines_are_rate_limited_but_the_last_count_is_always_written():
    log = io.StringIO()
    with progress_bar(total=100, desc="train", file=log, interval=3600) as bar:
        for _ in range(100):
            bar.update()
    assert log.getvalue().splitlines() == ["train: 1/100 (1%)", "train: 100/100 (100%)"]


def test_disabled_bars_write_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(3), desc="x", file=log, disable=True):
        pass
    assert log.getvalue() == ""


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_tqdm():
    from tqdm.auto import tqdm

    bar = progress_bar(total=2, file=FakeTerminal())
    assert isinstance(bar, tqdm)
    bar.close()
