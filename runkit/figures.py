"""PNG figures without pyplot's global state: :func:`subplots` makes one, :func:`save_figure` writes it.

A figure made here is a bare :class:`matplotlib.figure.Figure` rendered by the Agg canvas, so
nothing selects a global backend (``matplotlib.use``) and no figure is registered with pyplot
(nothing to leak when a run makes many). :func:`save_figure` writes the PNG through
:func:`runkit.io.atomic_write_bytes`, so a reader never sees half a file, and closes the figure.

Example:
    >>> fig, ax = subplots(figsize=(4, 3))
    >>> _ = ax.plot([0, 1], [1, 0])
    >>> save_figure(fig, "/tmp/line.png").suffix
    '.png'
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

from runkit.io import atomic_write_bytes


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs: Any):
    """``(figure, axes)`` like ``matplotlib.pyplot.subplots``, on an Agg canvas and unknown to pyplot.

    Args:
      nrows, ncols: the grid of axes.
      figsize: ``(width, height)`` in inches (matplotlib's default when None).
      **kwargs: passed to :meth:`matplotlib.figure.Figure.subplots` (``squeeze``, ``sharex``, ...).

    Returns:
      ``(fig, axes)``: ``axes`` is one ``Axes`` or an array of them, as pyplot's.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Render ``fig`` as a PNG at ``path`` (atomically) and close it.

    Args:
      fig: a matplotlib figure (from :func:`subplots`, or from pyplot: it is then closed there).
      path: the PNG to write; parent folders are created.
      dpi: resolution.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)  # render with Agg whatever backend pyplot selected
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot = sys.modules.get("matplotlib.pyplot")  # a figure pyplot knows is closed there; others only need dropping
    if pyplot is not None:
        pyplot.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
