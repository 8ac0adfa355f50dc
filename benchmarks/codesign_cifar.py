"""Hardware-aware compression vs the uniform PENNI rule on CIFAR-10 ResNet-20 (shared data and weights).

Runs :func:`jaxsparse.codesign.experiment.run_codesign` (see that module for the protocol):
the pretrained ResNet-20 is decomposed (d = 5); the baseline prunes every layer with one
PENNI threshold ``s`` (swept) and fine-tunes; the hardware-aware method learns per-layer
thresholds against ``cross-entropy + lambda * modelled latency`` on the default
ESCALATE-style design (swept over ``lambda``), prunes and fine-tunes, with the same number
of SGD steps in total. Both are costed exactly and evaluated on the same test images.
A joint round then searches the hardware (iso-area) for the compressed workload and
compresses again against it.

Headline (last line): ``latency_reduction`` at equal top-1: the best hardware-aware point
against the uniform Pareto front interpolated linearly at that point's top-1 (so
``top1_gap`` is 0 by construction; null when no hardware-aware point lies inside the
uniform front's top-1 range), and the same against the nearest *measured* uniform point
within 0.3 points of top-1 (``latency_reduction_nearest_pair``, ``top1_gap_nearest_pair``:
uniform minus hardware-aware top-1; null when no pair is that close). Also the process CPU
time and wall time summed over resumed runs, and the load averages per point.

    python benchmarks/codesign_cifar.py --quick     # reduced run, ~7 min on 2 quiet cores
    python benchmarks/codesign_cifar.py             # full run (about 30 min on 2 quiet cores)
    python benchmarks/codesign_cifar.py --report-only   # summarise a run cut short
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxsparse.codesign.experiment import PRESETS, condensed, format_table, job_order, run_codesign  # noqa: E402
from jaxsparse.userfiles import DATA_HELP  # noqa: E402
from runkit import atomic_write_bytes, atomic_write_json  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run that still compares both methods")
    parser.add_argument("--run-dir", default=None, help="checkpoints and plots (default runs/codesign-cifar[-quick]); rerun to resume")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/codesign_cifar[_quick].json)")
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--shared", default=None, help="shared data/model folder")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the points a (cut) run has finished")
    args = parser.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    config = PRESETS["quick" if args.quick else "full"]
    run_dir = Path(args.run_dir or REPO / f"runs/codesign-cifar{suffix.replace('_', '-')}")
    state = run_codesign(config, run_dir, data=args.data, shared_root=args.shared, progress=not args.no_progress, report_only=args.report_only)
    print(format_table(state))
    comparison = state["summary"]["comparison"]
    interpolated = state["summary"]["comparison_interpolated"]
    matched = [r for r in interpolated["points"] if r["latency_reduction"] is not None]
    best = max(matched, key=lambda r: r["latency_reduction"]) if matched else None
    headline = {
        "latency_reduction": best["latency_reduction"] if best else None,
        "top1_gap": 0.0 if best else None,
        "matching": "uniform Pareto front interpolated linearly at the hardware-aware point's top-1",
        "hwaware_cost_weight": best["cost_weight"] if best else None,
        "hwaware_top1": best["top1"] if best else None,
        "hwaware_latency_ms": best["latency_ms"] if best else None,
        "uniform_latency_ms_at_same_top1": best["uniform_latency_ms_at_same_top1"] if best else None,
        "latency_reduction_nearest_pair": comparison["latency_reduction"],
        "top1_gap_nearest_pair": comparison["top1_gap"],
        "quick": bool(args.quick),
        "test_images": config.test_subset or 10000,
        "points_done": f"{len(state['points'])}/{len(job_order(config))}",
        "cpu_minutes": round(state["resources"]["cpu_seconds"] / 60.0, 1),
        "wall_minutes": round(state["resources"]["wall_seconds"] / 60.0, 1),
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
    figure = out.with_name(out.stem + "_pareto.png")
    atomic_write_bytes(figure, (run_dir / "pareto.png").read_bytes())
    headline["figure"] = str(figure.relative_to(REPO)) if figure.is_relative_to(REPO) else str(figure)
    atomic_write_json(out, {"headline": headline, "plots": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir), **condensed(state)})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
