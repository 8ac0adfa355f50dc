"""Analytic ESCALATE-style cycles against the cycle-level reference simulator.

Two sets of layers, both orders of the two stages:

* random small layers (seeded; the distribution of the property test in
  tests/hwmodel/test_simulator.py, with random bitmaps and random small designs);
* every conv layer of ResNet-20 at full size with real sparsity: coefficients from an SVD
  decomposition (d = 5) of the pretrained weights pruned with |c| < std(c) (no retraining;
  hwmodel.pruned_resnet), activations from a numpy forward pass of the pretrained network on
  a CIFAR-10 test image, on the default hardware config.

    python benchmarks/hwmodel_sim_compare.py [--random-layers 60] [--image test/cat/0000.jpg]

Last line: JSON with max_rel_cycle_error (over both sets, layers the model puts at
>= hwmodel.simulator.MIN_MODEL_CYCLES cycles; shorter ones are reported separately).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from runkit.progress import progress_bar

from hwmodel import cost
from hwmodel.hardware import hardware_from_dict, load_hardware
from hwmodel.pruned_resnet import decompose_and_prune, forward, load_image, load_params
from hwmodel.simulator import MIN_MODEL_CYCLES, SimHardware, in_analytic_domain, layer_description, simulate_decomposed, simulate_plain
from hwmodel.workload import slice_layer, workload_from_layers
from runkit import atomic_write_json, find_shared_root

ORDERS = ("coefficient_first", "basis_first")


def analytic_cycles(desc, hw, order):
    return float(cost.escalate_layer(slice_layer(workload_from_layers([desc]), 0), hw, stage_order=order).compute_cycles)


def random_case(rng):
    """One layer of the property test's domain (rejection-sampled like its assume())."""
    while True:
        spec = {"c_in": int(rng.integers(4, 41)), "c_out": int(rng.integers(4, 17)), "h": int(rng.integers(4, 11)),
                "kernel": int(rng.choice([1, 3])), "stride": int(rng.choice([1, 2])), "basis": int(rng.choice([0, 2, 3, 5])),
                "coef_density": float(rng.uniform(0.05, 1.0)), "act_density": float(rng.uniform(0.1, 1.0)),
                "pes": int(rng.choice([2, 4, 8])), "lanes": int(rng.choice([8, 16, 32])), "multipliers": int(rng.choice([1, 2, 4])),
                "basis_macs": int(rng.choice([8, 16, 32])), "order": str(rng.choice(ORDERS))}
        k = spec["kernel"]
        d = spec["basis"] if k == 3 else 0
        pad = (k - 1) // 2
        if in_analytic_domain(c_in=spec["c_in"], c_out=spec["c_out"], size=spec["h"], kernel=k, stride=spec["stride"],
                              basis=d, order=spec["order"], lanes=spec["lanes"], pes=spec["pes"]):
            return spec, d, pad


def run_random(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in progress_bar(range(count), desc="random layers"):
        spec, d, pad = random_case(rng)
        hw, _ = hardware_from_dict({"escalate": {"pes": spec["pes"], "lanes": spec["lanes"], "multipliers": spec["multipliers"], "fifo_depth": 4 * spec["lanes"], "basis_macs": spec["basis_macs"]}})
        sim_hw = SimHardware.from_hardware(hw)
        shape = (spec["c_in"], spec["h"], spec["h"])
        acts = np.maximum(rng.normal(size=shape), 0.0) * (rng.random(shape) < spec["act_density"])
        if d:
            coef = rng.normal(size=(spec["c_out"], spec["c_in"], d)) * (rng.random((spec["c_out"], spec["c_in"], d)) < spec["coef_density"])
            basis = rng.normal(size=(d, 3, 3))
            order = spec["order"]
            sim = simulate_decomposed(coef, basis, acts, stride=spec["stride"], padding=pad, hw=sim_hw, order=order)
            desc = layer_description(coef, acts, stride=spec["stride"], padding=pad, basis=basis)
        else:
            w = rng.normal(size=(spec["c_out"], spec["c_in"], spec["kernel"], spec["kernel"])) * (rng.random((spec["c_out"], spec["c_in"], spec["kernel"], spec["kernel"])) < spec["coef_density"])
            order = "plain"
            sim = simulate_plain(w, acts, stride=spec["stride"], padding=pad, hw=sim_hw)
            desc = layer_description(w, acts, stride=spec["stride"], padding=pad)
        analytic = analytic_cycles(desc, hw, "coefficient_first" if order == "plain" else order)
        out.append({"set": "random", "spec": spec, "order": order, "simulated": sim.cycles, "analytic": analytic, "rel_error": (analytic - sim.cycles) / sim.cycles})
    return out


def run_resnet20(shared, image_rel, hw):
    params = load_params(shared / "models" / "cifar10-resnet" / "resnet20.npz")
    _, convs = forward(params, load_image(shared / "data" / "cifar10-jpeg" / image_rel))
    sim_hw = SimHardware.from_hardware(hw)
    out = []
    for conv in progress_bar(convs, desc="ResNet-20 layers"):
        coef, basis = decompose_and_prune(conv.kernel, basis=5)
        desc = layer_description(coef, conv.activations, stride=conv.stride, padding=1, basis=basis, name=conv.name)
        for order in ORDERS:
            start = time.perf_counter()
            sim = simulate_decomposed(coef, basis, conv.activations, stride=conv.stride, padding=1, hw=sim_hw, order=order)
            wall = time.perf_counter() - start
            analytic = analytic_cycles(desc, hw, order)
            out.append({"set": "resnet20", "layer": conv.name, "order": order, "simulated": sim.cycles, "analytic": analytic,
                        "rel_error": (analytic - sim.cycles) / sim.cycles, "coef_density": desc["coef_density"],
                        "act_density": desc["act_density"], "act_window_density": desc["act_window_density"], "simulator_s": wall})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-layers", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", default="test/cat/0000.jpg", help="CIFAR-10 test image (relative to data/cifar10-jpeg)")
    parser.add_argument("--shared", default=None, help="shared data folder (default: $JAXSPARSE_SHARED or ../shared)")
    parser.add_argument("--hardware", default=None)
    parser.add_argument("--out", default="benchmarks/results/hwmodel_sim_compare.json")
    args = parser.parse_args(argv)
    hw, _ = load_hardware(args.hardware)
    rows = run_random(args.random_layers, args.seed) + run_resnet20(find_shared_root(args.shared), args.image, hw)
    for r in rows:
        r["in_domain"] = r["analytic"] >= MIN_MODEL_CYCLES
    short = np.abs([r["rel_error"] for r in rows if not r["in_domain"]])
    if short.size:
        print(f"layers modelled under {MIN_MODEL_CYCLES} cycles (outside the model's stated domain): {short.size}, "
              f"|error| max {short.max():.2%}, share over 10% {np.mean(short > 0.1):.1%}")
    summary = {"short_layers": {"count": int(short.size), "max_abs_rel_error": float(short.max()) if short.size else None}}
    for name in ("random", "resnet20"):
        errors = np.abs([r["rel_error"] for r in rows if r["set"] == name and r["in_domain"]])
        summary[name] = {"count": int(errors.size), "max_abs_rel_error": float(errors.max()), "mean_abs_rel_error": float(errors.mean()),
                         "p90_abs_rel_error": float(np.percentile(errors, 90))}
        print(f"{name:>9}: {errors.size} layer/order cases, |error| max {errors.max():.2%}, mean {errors.mean():.2%}, p90 {np.percentile(errors, 90):.2%}")
    print(f"\n{'layer':<18}{'order':<19}{'simulated':>10}{'analytic':>10}{'error':>8}")
    for r in rows:
        if r["set"] == "resnet20":
            print(f"{r['layer']:<18}{r['order']:<19}{r['simulated']:>10}{r['analytic']:>10.0f}{r['rel_error']:>8.2%}")
    headline = {"max_rel_cycle_error": max(summary[name]["max_abs_rel_error"] for name in ("random", "resnet20"))}
    atomic_write_json(args.out, {"headline": headline, "summary": summary, "cases": rows, "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()}})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
