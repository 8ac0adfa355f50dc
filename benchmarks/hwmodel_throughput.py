"""Layer x design evaluations per second of the ESCALATE-style cost model, forward and gradient.

All ResNet-56 layers (56) x D random design points in one jitted, doubly vmapped call
(``evaluate_grid``); forward in exact and relaxed mode, and forward+gradient (relaxed, value
and gradient in one call) with respect to the layers' densities and bit widths and the
relaxed memory/ESCALATE sizes of every design: once with the fused hand-written backward
pass of ``hwmodel.fastgrad.escalate_grid`` (the headline) and once by plain autodiff of
``evaluate_grid`` (same loss, same inputs), whose gradients must agree. The fused backward
pass runs over blocks of design points (``fastgrad.DESIGN_BLOCK``), and so does its forward
pass (``evaluate_grid`` per block); the relaxed forward is timed both over the whole grid
(``evaluate_grid``) and over blocks (``escalate_grid``). The gradient's cost is stated against
the exact forward whose throughput is the headline (``grad_over_forward``) and, beside it,
against the faster of the two relaxed forwards, the function it differentiates
(``grad_over_relaxed_forward``). Each function is wrapped in
``chex.assert_max_traces(n=1)`` and called repeatedly with fresh inputs of the same shape,
so a second compilation would fail the run. The compiled programs' loops over the
[designs x layers] grid, and over [block x layers] inside the loop over blocks, are counted
from the HLO. Wall time (median of interleaved rounds, with min and max) is the headline;
process CPU time (median of rounds) is recorded beside it, as the machine is shared.

    python benchmarks/hwmodel_throughput.py [--designs 4096] [--repeats 10]

Last line: JSON with forward_evals_per_s, grad_over_forward and grad_over_relaxed_forward.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time

import chex
import jax
import jax.numpy as jnp

from hwmodel.cost import evaluate_grid
from hwmodel.fastgrad import DESIGN_BLOCK, design_block_rows, escalate_grid
from hwmodel.hardware import load_hardware
from hwmodel.workload import model_layers, workload_from_layers
from runkit import atomic_write_json


def random_designs(base, count: int, key) -> object:
    """``count`` design points: every hardware scalar scaled by a random factor in [0.5, 2]."""
    leaves, treedef = jax.tree.flatten(base)
    keys = jax.random.split(key, len(leaves))
    scaled = [leaf * jnp.exp2(jax.random.uniform(k, (count,), jnp.float32, -1.0, 1.0)) for leaf, k in zip(leaves, keys)]
    tree = jax.tree.unflatten(treedef, scaled)
    # lanes stay powers of two (log2 appears in the network energy; any positive value is fine)
    return tree


def _time_interleaved(functions, make_inputs, repeats):
    """Wall seconds of every call and median process CPU seconds per call of each function,
    in interleaved rounds (the machine is shared: interleaving exposes every function to the
    same background load)."""
    for fn in functions:
        jax.block_until_ready(fn(*make_inputs(0)))  # compile + warm up
    inputs = [make_inputs(i + 1) for i in range(repeats)]
    jax.block_until_ready(inputs)
    walls = [[] for _ in functions]
    cpu_times = [[] for _ in functions]
    for x in inputs:
        for j, fn in enumerate(functions):
            cpu, start = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn(*x))
            walls[j].append(time.perf_counter() - start)
            cpu_times[j].append(time.process_time() - cpu)
    return walls, [statistics.median(times) for times in cpu_times]


def _spread(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def grid_loops(fn, args, grid_shape, block_shape) -> dict[str, int]:
    """Fusions (loops) of the compiled program: in the entry computation, those writing a full
    grid array, and those writing a [block x layers] array (in the body of a loop over blocks,
    so each runs once per block; counted in every branch of a conditional, including branches
    a given workload does not take)."""
    text = fn.lower(*args).compile().as_text()
    split = text.index("\nENTRY")
    body, entry = text[:split], text[split:]
    shapes = lambda code: re.findall(r"= (\S+) fusion\(", code)
    full = "f32[" + ",".join(str(n) for n in grid_shape) + "]"
    part = "f32[" + ",".join(str(n) for n in block_shape) + "]"
    counts = {"fusions": len(shapes(entry)), "grid_loops": sum(s.startswith(full) for s in shapes(entry))}
    if block_shape != grid_shape:
        counts["block_loops"] = sum(s.startswith(part) for s in shapes(body))
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--designs", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--remat", action="store_true", help="jax.checkpoint the per-layer cost in the gradient")
    parser.add_argument("--out", default="benchmarks/results/hwmodel_throughput.json")
    args = parser.parse_args(argv)

    base, options = load_hardware(None)
    workload = workload_from_layers(model_layers("resnet56"))
    layers = int(workload.c_in.shape[0])
    evals = layers * args.designs

    def make_inputs(i):
        key = jax.random.PRNGKey(i)
        k1, k2 = jax.random.split(key)
        wl = workload._replace(coef_density=jax.random.uniform(k1, (layers,), jnp.float32, 0.05, 1.0))
        return wl, random_designs(base, args.designs, k2)

    def grid_sum(x):
        # the same sum as jnp.sum, as two matrix-vector products: XLA:CPU's full reduction of a
        # [D, L] array is scalar code and costs a third of the relaxed forward pass here
        exact = jax.lax.Precision.HIGHEST
        return jnp.matmul(jnp.ones((x.shape[0],), x.dtype), jnp.matmul(x, jnp.ones((x.shape[1],), x.dtype), precision=exact), precision=exact)

    def total(cycles, energy_pj):
        return grid_sum(cycles) + 1e-3 * grid_sum(energy_pj)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward_exact(wl, hw):
        c = evaluate_grid("escalate", wl, hw, options)
        return c.cycles, c.energy_pj

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward_relaxed(wl, hw):
        c = evaluate_grid("escalate", wl, hw, options, relaxed=True)
        return c.cycles, c.energy_pj

    block = design_block_rows(args.designs, DESIGN_BLOCK)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward_relaxed_blocked(wl, hw):
        return escalate_grid(wl, hw, options.stage_order)  # evaluate_grid over blocks of designs

    # differentiable inputs (the co-design variables): the layers' densities and bit widths and
    # the relaxed hardware sizes (memory and ESCALATE sections); layer geometry, the energy
    # table and the baselines' parameters are data
    def with_variables(variables, wl, hw):
        densities, bits, memory, escalate = variables
        wl = wl._replace(coef_density=densities[0], act_density=densities[1], coef_bits=bits[0], basis_bits=bits[1])
        return wl, hw._replace(memory=memory, escalate=escalate)

    def loss(variables, wl, hw):
        c = evaluate_grid("escalate", *with_variables(variables, wl, hw), options, relaxed=True, remat=args.remat)
        return total(c.cycles, c.energy_pj)

    def loss_fused(variables, wl, hw):
        return total(*escalate_grid(*with_variables(variables, wl, hw), options.stage_order))

    def variables_of(wl, hw):
        return ((wl.coef_density, wl.act_density), (wl.coef_bits, wl.basis_bits), hw.memory, hw.escalate)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def value_and_grad(wl, hw):
        return jax.value_and_grad(loss_fused)(variables_of(wl, hw), wl, hw)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def value_and_grad_autodiff(wl, hw):
        return jax.value_and_grad(loss)(variables_of(wl, hw), wl, hw)

    chex.clear_trace_counter()
    functions = [forward_exact, forward_relaxed, forward_relaxed_blocked, value_and_grad, value_and_grad_autodiff]
    walls, cpu = _time_interleaved(functions, make_inputs, args.repeats)
    spreads = dict(zip(("forward_exact", "forward_relaxed_whole_grid", "forward_relaxed_blocked", "value_and_grad",
                        "value_and_grad_autodiff"), (_spread(w) for w in walls)))  # fmt: skip
    t_exact, t_whole, t_blocked, t_grad, t_autodiff = (x["median"] for x in spreads.values())
    cpu_exact, cpu_whole, cpu_blocked, cpu_grad, cpu_autodiff = cpu
    # the reference forward is the faster of the two relaxed forwards (CPU: median per call)
    t_relaxed, cpu_relaxed = min(t_whole, t_blocked), min(cpu_whole, cpu_blocked)
    check = make_inputs(99)
    (value, grads), (value_ref, grads_ref) = value_and_grad(*check), value_and_grad_autodiff(*check)
    finite = all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # largest difference per gradient leaf, relative to that leaf's largest magnitude
    grad_diff = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)))
    grid = (args.designs, layers)
    loops = {name: grid_loops(fn, check, grid, (block, layers)) for name, fn in [("forward_relaxed", forward_relaxed), ("forward_relaxed_blocked", forward_relaxed_blocked), ("value_and_grad", value_and_grad), ("value_and_grad_autodiff", value_and_grad_autodiff)]}

    result = {
        "layers": layers, "designs": args.designs, "timing": "median wall time of --repeats interleaved rounds (wall_s_spread: median, min, max; cpu_s: median process CPU time per call)", "wall_s_spread": spreads, "evaluations_per_call": evals,
        "design_block": block,
        "forward_exact_s": t_exact, "forward_relaxed_whole_grid_s": t_whole, "forward_relaxed_blocked_s": t_blocked, "forward_relaxed_s": t_relaxed,
        "value_and_grad_s": t_grad, "value_and_grad_autodiff_s": t_autodiff,
        "cpu_s": {"forward_exact": cpu_exact, "forward_relaxed_whole_grid": cpu_whole, "forward_relaxed_blocked": cpu_blocked,
                  "value_and_grad": cpu_grad, "value_and_grad_autodiff": cpu_autodiff},
        "grad_over_relaxed_forward_cpu": cpu_grad / cpu_relaxed,
        "forward_exact_evals_per_s": evals / t_exact, "forward_relaxed_evals_per_s": evals / t_relaxed,
        "grad_evals_per_s": evals / t_grad, "grad_over_relaxed_forward": t_grad / t_relaxed,
        "grad_over_exact_forward": t_grad / t_exact, "autodiff_grad_over_relaxed_forward": t_autodiff / t_relaxed,
        "fused_vs_autodiff_speedup": t_autodiff / t_grad, "fused_vs_autodiff_max_rel_grad_diff": grad_diff,
        "fused_vs_autodiff_rel_value_diff": abs(float(value) - float(value_ref)) / abs(float(value_ref)),
        "hlo_loops": loops, "gradients_finite": finite, "compilations_per_function": 1, "remat": args.remat,
        "differentiated": "coef/act density and coef/basis bits of every layer; memory and escalate sections of every design (11 sizes)",
        "gradient": "value_and_grad: hwmodel.fastgrad.escalate_grid (fused hand-written backward over blocks of design_block designs); value_and_grad_autodiff: jax.value_and_grad of evaluate_grid (remat as --remat)",
        "loss": "sum(cycles) + 1e-3 * sum(energy_pj) over the grid, each sum as two matrix-vector products",
        "forward_reference": "forward_relaxed_s is the faster of forward_relaxed_whole_grid_s and forward_relaxed_blocked_s",
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "jax_backend": jax.default_backend(), "devices": len(jax.devices())},
        "scalesim_reference": "SCALE-Sim 3.0.0 took 0.71 s per ResNet-20 layer and dataflow on this shared machine (benchmarks/results/hwmodel_vs_scalesim.json)",
    }
    for key in ("forward_exact_evals_per_s", "forward_relaxed_evals_per_s", "grad_evals_per_s", "grad_over_exact_forward",
                "grad_over_relaxed_forward", "grad_over_relaxed_forward_cpu",
                "autodiff_grad_over_relaxed_forward", "fused_vs_autodiff_speedup", "fused_vs_autodiff_max_rel_grad_diff"):
        print(f"{key:>36}: {result[key]:.4g}")
    for name, counts in loops.items():
        per_block = f", {counts['block_loops']} per block" if "block_loops" in counts else ""
        print(f"{name:>36}: {counts['grid_loops']} loops over the grid{per_block}, {counts['fusions']} fusions")
    print(f"load average during the run: {result['machine']['load_average']}")
    # The gradient's cost against the exact forward whose throughput is the headline; against the
    # (slower) relaxed forward it differentiates, beside it.
    headline = {"forward_evals_per_s": result["forward_exact_evals_per_s"], "grad_over_forward": result["grad_over_exact_forward"],
                "grad_over_relaxed_forward": result["grad_over_relaxed_forward"]}
    atomic_write_json(args.out, {"headline": headline, **result})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
