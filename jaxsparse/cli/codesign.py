"""``python -m jaxsparse codesign``: hardware-aware compression vs the uniform PENNI rule, plus joint hardware search.

Example:
    python -m jaxsparse codesign --model resnet20 --quick --out runs/codesign-quick
    python -m jaxsparse codesign --model resnet20 --lambdas 0.25,1 --uniform 0.6,1.0,1.4 --hardware my_design.toml
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from runkit import UsageError, atomic_write_json

DESCRIPTION = "Co-design on CIFAR: hardware-aware per-layer pruning vs uniform PENNI thresholds, and iso-area accelerator search."


def _floats(name: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"{name}: expected positive numbers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnet20", help="pretrained CIFAR ResNet (resnet20, resnet32, resnet44, resnet56)")
    parser.add_argument("--quick", action="store_true", help="reduced run (minutes): 4 thresholds, 2 lambdas, 100 steps each, 2,000 test images")
    parser.add_argument("--out", default=None, help="output folder (default runs/codesign-<model>[-quick]); rerun to resume")
    parser.add_argument("--hardware", default=None, help="base design (.json/.toml); also the area budget of the search")
    parser.add_argument("--shared", default=None, help="shared data/model folder (default: $JAXSPARSE_SHARED or ../shared)")
    parser.add_argument("--uniform", default=None, help="comma-separated PENNI thresholds s of the baseline sweep")
    parser.add_argument("--lambdas", default=None, help="comma-separated cost weights of the hardware-aware sweep")
    parser.add_argument("--hwaware-steps", type=int, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--train-subset", type=int, default=None, help="training images used (0: all)")
    parser.add_argument("--test-subset", type=int, default=None, help="test images for top-1 (0: all)")
    parser.add_argument("--joint-rounds", type=int, default=None, help="rounds of the joint hardware/compression loop (0: none)")
    parser.add_argument("--threshold-lr", type=float, default=None, help="Adam learning rate of the per-layer thresholds")
    parser.add_argument("--metric", default=None, choices=("latency", "energy", "edp"))
    parser.add_argument("--no-channel-gates", action="store_true",
                        help="hardware-aware method learns coefficient thresholds only (no channel thresholds / live-channel cost)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace):
    from jaxsparse.codesign.experiment import CodesignConfig, quick_config

    overrides = {}
    if args.uniform is not None:
        overrides["uniform_thresholds"] = _floats("--uniform", args.uniform)
    if args.lambdas is not None:
        overrides["cost_weights"] = _floats("--lambdas", args.lambdas)
    for flag in ("hwaware_steps", "finetune_steps", "batch_size", "train_subset", "test_subset", "joint_rounds", "metric", "seed"):
        value = getattr(args, flag)
        if value is not None:
            overrides[flag] = value
    if getattr(args, "no_channel_gates", False):
        overrides["channel_gates"] = False
    if args.threshold_lr is not None:
        overrides["threshold_learning_rate"] = args.threshold_lr
    overrides["model"] = args.model
    return quick_config(**overrides) if args.quick else CodesignConfig(**overrides)


def run(args: argparse.Namespace) -> int:
    from jaxsparse.codesign.experiment import condensed, format_table, run_codesign

    config = config_from_args(args)
    out = Path(args.out) if args.out else Path(f"runs/codesign-{config.model}{'-quick' if args.quick else ''}")
    state = run_codesign(config, out, hardware=args.hardware, shared_root=args.shared, progress=not args.no_progress)
    print(format_table(state))
    atomic_write_json(out / "summary.json", {"config": dataclasses.asdict(config), "summary": state["summary"]})
    atomic_write_json(out / "results_condensed.json", condensed(state))
    print(f"wrote {out / 'results.json'}, {out / 'summary.json'} and plots in {out}")
    return 0
