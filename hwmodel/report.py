"""Per-layer and whole-network cost reports of all designs, as JSON-able dicts and a PNG.

Example:
    >>> from hwmodel.hardware import load_hardware
    >>> from hwmodel.workload import model_layers
    >>> hw, options = load_hardware(None)
    >>> rep = build_report(model_layers("resnet20"), hw, options)
    >>> sorted(rep["totals"]) == sorted(DESIGNS)
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from hwmodel.cost import ASSUMPTIONS, DESIGNS, evaluate
from hwmodel.hardware import Hardware, Options, hardware_to_dict
from hwmodel.workload import layer_names, workload_from_layers
from runkit.figures import save_figure, subplots

ENERGY_PARTS = ("mac_pj", "buffer_pj", "dram_pj", "network_pj")
DESIGN_LABELS = {"escalate": "ESCALATE-style", "systolic": "dense systolic", "scnn": "SCNN-like", "sparten": "SparTen-like"}


def build_report(layers: list[dict[str, Any]], hw: Hardware, options: Options) -> dict[str, Any]:
    """Evaluate every design on every layer; per-layer rows, totals and ratios versus ESCALATE-style."""
    workload = workload_from_layers(layers)
    names = layer_names(layers)
    per_design = {d: jax.tree.map(np.asarray, evaluate(d, workload, hw, options)) for d in DESIGNS}
    rows = []
    for i, name in enumerate(names):
        row = {"name": name}
        for d, c in per_design.items():
            row[d] = {
                "cycles": float(c.cycles[i]), "compute_cycles": float(c.compute_cycles[i]), "memory_cycles": float(c.memory_cycles[i]),
                **{part: float(getattr(c, part)[i]) for part in ENERGY_PARTS},
                "energy_pj": float(c.energy_pj[i]), "utilization": float(c.utilization[i]),
            }
        rows.append(row)
    totals = {}
    for d, c in per_design.items():
        cycles = float(c.cycles.sum())
        totals[d] = {
            "cycles": cycles, "latency_ms": cycles / (float(hw.memory.clock_ghz) * 1e6), "energy_uj": float(c.energy_pj.sum()) / 1e6,
            **{part: float(getattr(c, part).sum()) for part in ENERGY_PARTS},
            "utilization": float(c.useful_macs.sum() / (cycles * float(np.mean(c.multipliers)))),
        }
    ratios = {
        d: {"latency_ratio": totals[d]["cycles"] / totals["escalate"]["cycles"], "energy_ratio": totals[d]["energy_uj"] / totals["escalate"]["energy_uj"]}
        for d in DESIGNS if d != "escalate"
    }
    return {"hardware": hardware_to_dict(hw, options), "assumptions": ASSUMPTIONS, "layers": rows, "totals": totals, "ratios_vs_escalate": ratios}


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width text table: per layer cycles / energy / utilisation for every design, then totals."""
    lines = []
    head = f"{'layer':<22}" + "".join(f"{DESIGN_LABELS[d]:>30}" for d in DESIGNS)
    sub = f"{'':<22}" + "".join(f"{'kcycles':>10}{'uJ':>10}{'util':>10}" for _ in DESIGNS)
    lines += [head, sub]
    for row in report["layers"]:
        lines.append(f"{row['name'][:22]:<22}" + "".join(
            f"{row[d]['cycles'] / 1e3:>10.2f}{row[d]['energy_pj'] / 1e6:>10.3f}{row[d]['utilization']:>10.2f}" for d in DESIGNS))
    t = report["totals"]
    lines.append(f"{'TOTAL':<22}" + "".join(f"{t[d]['cycles'] / 1e3:>10.1f}{t[d]['energy_uj']:>10.2f}{t[d]['utilization']:>10.2f}" for d in DESIGNS))
    lines.append("")
    lines.append(f"{'energy breakdown (uJ)':<22}" + "".join(f"{p[:-3]:>12}" for p in ENERGY_PARTS))
    for d in DESIGNS:
        lines.append(f"{DESIGN_LABELS[d]:<22}" + "".join(f"{t[d][p] / 1e6:>12.3f}" for p in ENERGY_PARTS))
    lines.append("")
    for d, r in report["ratios_vs_escalate"].items():
        lines.append(f"ESCALATE-style vs {DESIGN_LABELS[d]}: {r['latency_ratio']:.2f}x lower latency, {r['energy_ratio']:.2f}x less energy")
    return "\n".join(lines)


def plot_energy(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Stacked bars of the energy breakdown (MACs / buffers / DRAM / network) per design."""
    t = report["totals"]
    fig, ax = subplots(figsize=(6.5, 4))
    bottom = np.zeros(len(DESIGNS))
    for part in ENERGY_PARTS:
        values = np.array([t[d][part] / 1e6 for d in DESIGNS])
        ax.bar([DESIGN_LABELS[d] for d in DESIGNS], values, bottom=bottom, label=part[:-3])
        bottom += values
    ax.set_ylabel("energy per inference (uJ)")
    ax.set_title(title or "energy breakdown")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
