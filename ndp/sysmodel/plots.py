"""PNG reports of the system model (matplotlib, Agg backend): Gantt charts, sweeps, tornado plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runkit.figures import save_figure, subplots


def _save(fig, path) -> Path:
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def gantt(path, timelines: dict, titles: dict | None = None) -> Path:
    """One Gantt chart per system: tasks (rows by resource) of the steady-state iterations.

    Args:
      timelines: ``{system: {"tasks": [Task...], "start": (batches, tasks), "finish": ..., "period": s}}``;
        the window shown is one period ending at the completion of the second-to-last batch,
        with the tasks of all batches active in it (colour = batch).
    """
    fig, axes = subplots(len(timelines), 1, figsize=(11, 2.3 * len(timelines) + 0.5), squeeze=False)
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    for ax, (system, tl) in zip(axes[:, 0], timelines.items()):
        start, finish = np.asarray(tl["start"]) * 1e3, np.asarray(tl["finish"]) * 1e3
        period = float(tl["period"]) * 1e3
        b_ref = start.shape[0] - 2
        t1 = finish[b_ref].max()
        t0 = t1 - 2.0 * period
        resources = list(dict.fromkeys(t.resource for t in tl["tasks"]))
        for b in range(start.shape[0]):
            for i, task in enumerate(tl["tasks"]):
                s, f = start[b, i], finish[b, i]
                if f <= t0 or s >= t1 or f - s <= 0:
                    continue
                y = resources.index(task.resource)
                ax.barh(y, f - s, left=s, color=cmap(b % 10), edgecolor="black", linewidth=0.4, height=0.7)
                if f - s > 0.06 * (t1 - t0):
                    ax.text((max(s, t0) + min(f, t1)) / 2, y, task.name, ha="center", va="center", fontsize=7, clip_on=True)
        ax.set_yticks(range(len(resources)), resources, fontsize=8)
        ax.set_xlim(t0, t1)
        ax.invert_yaxis()
        title = (titles or {}).get(system, system)
        ax.set_title(f"{title}: {period:.3f} ms per iteration (colour = batch)", fontsize=9)
        ax.set_xlabel("time (ms)", fontsize=8)
    return _save(fig, path)


def sweep(path, x, series: dict, *, xlabel: str, ylabel: str, title: str, logx: bool = False, baseline: float | None = 1.0) -> Path:
    """Lines ``series[name](x)`` on one axis."""
    fig, ax = subplots(figsize=(6.5, 4))
    for name, y in series.items():
        ax.plot(x, np.asarray(y), marker="o", markersize=3, label=name)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linewidth=0.8, linestyle="--")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def tornado(path, base: float, effects: dict, *, label: str, factor: float, top: int = 10) -> Path:
    """Tornado plot: ``effects = {param: (value at /factor, value at *factor)}`` around ``base``."""
    items = list(effects.items())[:top][::-1]
    fig, ax = subplots(figsize=(7.5, 0.45 * len(items) + 1.2))
    for y, (name, (low, high)) in enumerate(items):
        ax.barh(y, low - base, left=base, color="tab:blue", label=f"/{factor:g}" if y == len(items) - 1 else None)
        ax.barh(y, high - base, left=base, color="tab:orange", label=f"x{factor:g}" if y == len(items) - 1 else None)
    ax.axvline(base, color="black", linewidth=0.8)
    ax.set_yticks(range(len(items)), [n for n, _ in items], fontsize=8)
    ax.set_xlabel(label)
    ax.set_title(f"sensitivity: each parameter divided / multiplied by {factor:g}", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
