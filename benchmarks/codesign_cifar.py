"""Hardware-aware compression vs the uniform PENNI rule on CIFAR-10 ResNet-20 (shared data and weights).

Runs :func:`hwmodel.codesign.experiment.run_codesign` (see that module for the protocol):
the pretrained ResNet-20 is decomposed (d = 5); the baseline prunes every layer with one
PENNI threshold ``s`` (swept) and fine-tunes; the hardware-aware method learns per-layer
thresholds against ``cross-entropy + lambda * modelled latency`` on the default
ESCALATE-style design (swept over ``lambda``), prunes and fine-tunes, with the same number
of SGD steps in total. Both are costed exactly and evaluated on the same test images.
A joint round then searches the hardware (iso-area) for the compressed workload and
compresses again against it.

Headline (last line): ``latency_reduction`` (best hardware-aware point vs the fastest
uniform point that is at least as accurate within 0.3 points; null when none is) and
``top1_gap`` (uniform minus hardware-aware top-1 of that pair).

    python benchmarks/codesign_cifar.py --quick     # reduced run, ~20-40 min on 2 busy cores
    python benchmarks/codesign_cifar.py             # full protocol (hours on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hwmodel.codesign.experiment import CodesignConfig, condensed, format_table, quick_config, run_codesign  # noqa: E402
from jaxsparse.common import atomic_write_json  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run that still compares both methods")
    parser.add_argument("--run-dir", default=None, help="checkpoints and plots (default runs/codesign-cifar[-quick]); rerun to resume")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/codesign_cifar[_quick].json)")
    parser.add_argument("--shared", default=None, help="shared data/model folder")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    config = quick_config() if args.quick else CodesignConfig()
    run_dir = Path(args.run_dir or REPO / f"runs/codesign-cifar{suffix.replace('_', '-')}")
    state = run_codesign(config, run_dir, shared_root=args.shared, progress=not args.no_progress)
    print(format_table(state))
    comparison = state["summary"]["comparison"]
    headline = {
        "latency_reduction": comparison["latency_reduction"],
        "top1_gap": comparison["top1_gap"],
        "quick": bool(args.quick),
        "test_images": config.test_subset or 10000,
        "hwaware_top1": comparison["hwaware"]["top1"] if comparison["hwaware"] else None,
        "uniform_top1": comparison["uniform"]["top1"] if comparison["uniform"] else None,
    }
    on_searched = state["summary"].get("comparison_on_searched_design")
    if on_searched is not None:
        headline["latency_reduction_on_searched_design"] = on_searched["latency_reduction"]
        headline["top1_gap_on_searched_design"] = on_searched["top1_gap"]
    if "joint" in state["summary"]:
        j = state["summary"]["joint"]
        headline["joint_latency_vs_compression_only"] = j["joint"]["latency_ms"] / j["compression_only"]["latency_ms"]
        headline["joint_latency_vs_hardware_only"] = j["joint"]["latency_ms"] / j["hardware_only"]["latency_ms"]
    out = Path(args.out or REPO / f"benchmarks/results/codesign_cifar{suffix}.json")
    atomic_write_json(out, {"headline": headline, "plots": str(run_dir), **condensed(state)})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
