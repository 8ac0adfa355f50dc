"""ESCALATE-style design against dense, SCNN-like and SparTen-like baselines on CIFAR ResNet-56 and VGG-16.

Densities come from a compressed model's per-layer report when given (``--resnet56-report``,
``--vgg16-report``: JSON with a ``"layers"`` list), otherwise from the stated density profile
``hwmodel.workload.DENSITY_PROFILE``. Every design has 256 multipliers (default hardware
config, or ``--hardware``). Ratios are baseline / ESCALATE-style (> 1: ESCALATE-style is
faster / more efficient); "sparse" is the geometric mean of the SCNN-like and SparTen-like
ratios, and the headline averages are geometric means over the two networks.

    python benchmarks/escalate_table.py [--hardware cfg.toml]

Last line: JSON with latency_ratio_vs_dense, latency_ratio_vs_sparse, energy_ratio_vs_dense,
energy_ratio_vs_sparse.
"""

from __future__ import annotations

import argparse
import json
import math
import os

from hwmodel.hardware import load_hardware
from hwmodel.report import build_report
from hwmodel.workload import DENSITY_PROFILE, load_layers, model_layers
from runkit import atomic_write_json

PAPER = {"latency_ratio_vs_dense": 17.9, "latency_ratio_vs_sparse": 2.16, "energy_ratio_vs_dense": 8.3, "energy_ratio_vs_sparse": 3.77}


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hardware", default=None)
    parser.add_argument("--resnet56-report", default=None)
    parser.add_argument("--vgg16-report", default=None)
    parser.add_argument("--out", default="benchmarks/results/escalate_table.json")
    args = parser.parse_args(argv)
    hw, options = load_hardware(args.hardware)
    results, rows = {}, []
    for model, report_path in (("resnet56", args.resnet56_report), ("vgg16", args.vgg16_report)):
        layers = load_layers(report_path) if report_path else model_layers(model)
        report = build_report(layers, hw, options)
        r = report["ratios_vs_escalate"]
        entry = {
            "source": report_path or "DENSITY_PROFILE",
            "totals": report["totals"],
            "latency_ratio_vs_dense": r["systolic"]["latency_ratio"], "energy_ratio_vs_dense": r["systolic"]["energy_ratio"],
            "latency_ratio_vs_scnn": r["scnn"]["latency_ratio"], "energy_ratio_vs_scnn": r["scnn"]["energy_ratio"],
            "latency_ratio_vs_sparten": r["sparten"]["latency_ratio"], "energy_ratio_vs_sparten": r["sparten"]["energy_ratio"],
        }
        entry["latency_ratio_vs_sparse"] = _geomean([entry["latency_ratio_vs_scnn"], entry["latency_ratio_vs_sparten"]])
        entry["energy_ratio_vs_sparse"] = _geomean([entry["energy_ratio_vs_scnn"], entry["energy_ratio_vs_sparten"]])
        results[model] = entry
    headline = {k: _geomean([results[m][k] for m in results]) for k in PAPER}

    print(f"{'':<12}{'lat vs dense':>14}{'lat vs SCNN':>13}{'lat vs SparTen':>16}{'E vs dense':>12}{'E vs SCNN':>11}{'E vs SparTen':>14}")
    for model, e in results.items():
        print(f"{model:<12}{e['latency_ratio_vs_dense']:>14.2f}{e['latency_ratio_vs_scnn']:>13.2f}{e['latency_ratio_vs_sparten']:>16.2f}"
              f"{e['energy_ratio_vs_dense']:>12.2f}{e['energy_ratio_vs_scnn']:>11.2f}{e['energy_ratio_vs_sparten']:>14.2f}")
    print(f"\n{'average (geomean)':<26}{'ours':>8}{'paper':>8}")
    for k, v in headline.items():
        print(f"{k:<26}{v:>8.2f}{PAPER[k]:>8.2f}")
    for model, e in results.items():
        t = e["totals"]
        print(f"{model}: ESCALATE-style {t['escalate']['latency_ms']:.3f} ms, {t['escalate']['energy_uj']:.1f} uJ per image; dense {t['systolic']['latency_ms']:.3f} ms, {t['systolic']['energy_uj']:.1f} uJ")
    atomic_write_json(args.out, {"headline": headline, "paper": PAPER, "models": results, "density_profile": DENSITY_PROFILE, "machine": {"cpus": os.cpu_count()}})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
