"""runkit.figures: one atomic PNG writer for every package."""

import sys

import numpy as np
from PIL import Image

from runkit.figures import save_figure, subplots


def test_save_figure_writes_the_png_atomically_at_the_figure_size(tmp_path):
    fig, axes = subplots(1, 2, figsize=(4, 3))
    axes[0].imshow(np.zeros((4, 4)))
    axes[1].plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "plot.png", dpi=50)
    assert path == tmp_path / "sub" / "plot.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (4 * 50, 3 * 50)
    assert sorted(p.name for p in path.parent.iterdir()) == ["plot.png"]  # no temporary file left


def test_figures_leave_pyplot_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    fig, ax = subplots(figsize=(2, 2))
    ax.plot([0, 1])
    save_figure(fig, tmp_path / "a.png")
    assert matplotlib.get_backend() == backend
    if "matplotlib.pyplot" in sys.modules:  # imported by another test: this figure is none of its figures
        assert fig not in [sys.modules["matplotlib.pyplot"].figure(n) for n in sys.modules["matplotlib.pyplot"].get_fignums()]


def test_save_figure_closes_a_pyplot_figure(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1])
    number = fig.number
    save_figure(fig, tmp_path / "b.png", dpi=40)
    assert number not in plt.get_fignums()
    with Image.open(tmp_path / "b.png") as image:
        assert image.size == (80, 80)
