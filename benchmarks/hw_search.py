"""Gradient-based accelerator search against random search and the exhaustive grid.

For fixed compressed workloads (the CIFAR models with the stated density profile of
:mod:`hwmodel.workload`, or a compression report given with ``--workload``), searches the
ESCALATE-style design space of :func:`hwmodel.codesign.space.default_space` (PEs, butterfly
lanes, multipliers per PE, basis MACs, PE buffer, global buffer) under an area budget
(default: the area of the default design, an iso-area search) for the lowest EDP:

* grid: every legal design within the budget (its size is reported);
* gradient: relaxed Adam from ``--starts`` random points, rounding, exact re-evaluation
  and polishing (:func:`hwmodel.codesign.search.gradient_search`), one run per seed;
* random: per seed, the same number of cost evaluations as that seed's gradient run.

Cost evaluations, not seconds, are the currency: one design point costed by the model
(a relaxed value-and-gradient counts as one). Wall-clock times are recorded too, but the
grid is a single vectorised call, so on a space this small it is also the fastest in
seconds -- the evaluation counts are what carries over to larger spaces and slower models.

Headline (last line): ``edp_gap_to_best_grid`` (median over seeds of gradient EDP / best
grid EDP - 1, primary workload) and ``evaluation_ratio_grid_over_gradient``.

    python benchmarks/hw_search.py                      # ~2-4 min on 2 busy cores
    python benchmarks/hw_search.py --workloads resnet20 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hwmodel.codesign.search import GradientConfig, feasible_grid, gradient_search, grid_search, make_problem, random_search  # noqa: E402
from hwmodel.hardware import load_hardware  # noqa: E402
from hwmodel.workload import MODELS, load_layers, model_layers, workload_from_layers  # noqa: E402
from runkit import atomic_write_json  # noqa: E402


def run_workload(name: str, layers, hw, options, args) -> dict:
    problem = make_problem(workload_from_layers(layers), hw, options, budget_mm2=args.budget_mm2, metric=args.metric)
    started = time.perf_counter()
    grid = grid_search(problem)
    grid_seconds = time.perf_counter() - started
    feasible = feasible_grid(problem)
    config = GradientConfig(starts=args.starts, steps=args.steps)
    seeds = []
    for seed in range(args.seeds):
        started = time.perf_counter()
        gradient = gradient_search(problem, config, seed=seed)
        gradient_seconds = time.perf_counter() - started
        random = random_search(problem, gradient.evaluations, seed=seed, feasible=feasible)
        seeds.append({
            "seed": seed,
            "gradient": gradient.to_dict(), "gradient_seconds": gradient_seconds,
            "random": random.to_dict(),
            "gradient_gap": gradient.metric_value / grid.metric_value - 1.0,
            "random_gap": random.metric_value / grid.metric_value - 1.0,
        })
        print(f"  {name} seed {seed}: gradient gap {100 * seeds[-1]['gradient_gap']:+.3f}% ({gradient.evaluations} evals, "
              f"{gradient_seconds:.1f} s)  random gap {100 * seeds[-1]['random_gap']:+.3f}%", flush=True)
    gradient_evals = statistics.median(s["gradient"]["evaluations"] for s in seeds)
    return {
        "workload": name, "metric": args.metric, "budget_mm2": problem.budget_mm2,
        "space_size": problem.space.size, "grid_feasible": int(len(feasible)), "space": {d.name: list(d.values) for d in problem.space.dims},
        "grid": grid.to_dict(), "grid_seconds": grid_seconds,
        "seeds": seeds,
        "median_gradient_gap": statistics.median(s["gradient_gap"] for s in seeds),
        "median_random_gap": statistics.median(s["random_gap"] for s in seeds),
        "gradient_beats_or_ties_random": sum(s["gradient"]["metric_value"] <= s["random"]["metric_value"] for s in seeds),
        "median_gradient_evaluations": gradient_evals,
        "evaluation_ratio_grid_over_gradient": len(feasible) / gradient_evals,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="resnet20,resnet56,vgg16",
                        help=f"comma-separated model names ({', '.join(MODELS)}) or JSON reports; the first is the headline")
    parser.add_argument("--workload", default=None, help="a compression report (JSON with 'layers') used as the primary workload")
    parser.add_argument("--hardware", default=None, help="base design (.json/.toml); unsearched parameters and the default budget")
    parser.add_argument("--budget-mm2", type=float, default=None, help="area budget in mm^2 (default: the base design's area)")
    parser.add_argument("--metric", default="edp", choices=("edp", "latency", "energy"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/hw_search.json"))
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds: expected >= 1, got {args.seeds}")

    hw, options = load_hardware(args.hardware)
    names = [w for w in args.workloads.split(",") if w]
    if args.workload:
        names = [args.workload] + names
    results = []
    for name in names:
        if name in MODELS:
            layers = model_layers(name)
        elif Path(name).is_file():
            layers = load_layers(name)
        else:
            raise SystemExit(f"--workloads: expected model names ({', '.join(MODELS)}) or JSON files, got {name!r}")
        print(f"{name}: searching", flush=True)
        results.append(run_workload(name, layers, hw, options, args))

    print()
    print(f"{'workload':<12}{'grid size':>11}{'feasible':>10}{'grad evals':>12}{'ratio':>8}{'grad gap':>10}{'rand gap':>10}{'grad<=rand':>11}")
    for r in results:
        print(f"{Path(r['workload']).stem:<12}{r['space_size']:>11}{r['grid_feasible']:>10}{r['median_gradient_evaluations']:>12.0f}"
              f"{r['evaluation_ratio_grid_over_gradient']:>8.1f}{100 * r['median_gradient_gap']:>9.3f}%{100 * r['median_random_gap']:>9.3f}%"
              f"{r['gradient_beats_or_ties_random']:>7}/{len(r['seeds'])}")
    primary = results[0]
    headline = {
        "workload": Path(primary["workload"]).stem,
        "edp_gap_to_best_grid": primary["median_gradient_gap"],
        "evaluation_ratio_grid_over_gradient": primary["evaluation_ratio_grid_over_gradient"],
        "random_gap_to_best_grid": primary["median_random_gap"],
        "gradient_beats_or_ties_random_seeds": f"{primary['gradient_beats_or_ties_random']}/{len(primary['seeds'])}",
        "grid_feasible": primary["grid_feasible"],
        "seeds": args.seeds,
    }
    atomic_write_json(args.out, {"headline": headline, "settings": vars(args), "results": results})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
