"""``python -m hwmodel report``: per-layer cycles and energy of every design for a workload.

Example:
    python -m hwmodel report --workload resnet56 --hardware my_design.toml --out reports/r56
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hwmodel.hardware import load_hardware
from hwmodel.report import build_report, format_table, plot_energy
from hwmodel.workload import MODELS, load_layers, model_layers
from runkit import MissingFileError, atomic_write_json

DESCRIPTION = "Per-layer latency/energy of the ESCALATE-style design and the dense, SCNN-like and SparTen-like baselines."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", required=True, help=f"a JSON report with a 'layers' list (from the compression pipeline) or a model name: {', '.join(MODELS)}")
    parser.add_argument("--hardware", default=None, help="hardware config (.json or .toml); defaults are used for missing keys")
    parser.add_argument("--out", default=None, help="output prefix; writes <out>.json and <out>.png (default: hwmodel_report_<workload>)")


def run(args: argparse.Namespace) -> int:
    if args.workload in MODELS:
        layers, label = model_layers(args.workload), args.workload
    else:
        path = Path(args.workload)
        if not path.exists():
            raise MissingFileError(f"--workload: expected a model name ({', '.join(MODELS)}) or an existing JSON file, got {args.workload!r}")
        layers, label = load_layers(path), path.stem
    hw, options = load_hardware(args.hardware)
    report = build_report(layers, hw, options)
    report["workload"] = args.workload
    print(format_table(report))
    prefix = Path(args.out) if args.out else Path(f"hwmodel_report_{label}")
    json_path = atomic_write_json(prefix.with_name(prefix.name + ".json"), report)
    png_path = plot_energy(report, prefix.with_name(prefix.name + ".png"), title=f"{label}: energy per inference")
    print(f"wrote {json_path} and {png_path}")
    return 0
