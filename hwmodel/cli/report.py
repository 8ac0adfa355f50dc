"""``python -m hwmodel report``: per-layer cycles and energy of every design for a workload.

Example:
    python -m hwmodel report --workload resnet56 --hardware my_design.toml --out runs/report/r56

Writes ``report.json`` and ``energy.png`` into ``--out`` (default ``runs/report/<workload>``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runkit import UsageError, atomic_write_json
from runkit.checks import check_file
from runkit.cli import add_common_options, check_common_options, default_out

DESCRIPTION = "Per-layer latency/energy of the ESCALATE-style design and the dense, SCNN-like and SparTen-like baselines."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hwmodel.workload import MODELS

    parser.add_argument("--workload", required=True,
                        help=f"a JSON report with a 'layers' list (from the compression pipeline) or a model name: {', '.join(MODELS)}")  # fmt: skip
    parser.add_argument("--hardware", type=Path, default=None, help="hardware config (.json or .toml); defaults are used for missing keys")
    add_common_options(parser, out_default="runs/report/<workload>", shared=False, progress=False)


def run(args: argparse.Namespace) -> int:
    from hwmodel.workload import MODELS

    check_common_options(args)
    if args.workload not in MODELS:
        path = Path(args.workload)
        if not path.is_file() or path.suffix != ".json":
            raise UsageError(f"--workload: expected a model name ({', '.join(MODELS)}) or an existing .json file, got {args.workload!r}")
    if args.hardware is not None:
        check_file("--hardware", args.hardware, (".json", ".toml"))

    from hwmodel.hardware import load_hardware
    from hwmodel.report import build_report, format_table, plot_energy
    from hwmodel.workload import load_layers, model_layers

    if args.workload in MODELS:
        layers, label = model_layers(args.workload), args.workload
    else:
        layers, label = load_layers(Path(args.workload)), Path(args.workload).stem
    hw, options = load_hardware(args.hardware)
    report = build_report(layers, hw, options)
    report["workload"] = args.workload
    print(format_table(report))
    out = args.out if args.out is not None else default_out("report", label)
    json_path = atomic_write_json(out / "report.json", report)
    png_path = plot_energy(report, out / "energy.png", title=f"{label}: energy per inference")
    print(f"wrote {json_path} and {png_path}")
    return 0
