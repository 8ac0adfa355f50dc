"""``python -m ndp simulate``: per-iteration time and energy of NDRec-style training against baselines.

Examples::

    python -m ndp simulate --workload mlperf                       # bundled paper_like system
    python -m ndp simulate --config my_system.json --workload kaggle --batch-size 4096
    python -m ndp simulate --workload movielens --batch-size 256 --out runs/simulate/ml

Prints, per system, each task's duration, the steady-state iteration time, the
embedding-cache hit rate and the energy per iteration by component; writes
``simulation.json``, ``gantt.png`` (one iteration per system),
``speedup_vs_cache.png`` and ``speedup_vs_skew.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from runkit import UsageError, atomic_write_json, check_choice, check_positive
from runkit.cli import add_common_options, check_common_options, default_out
from runkit.config_cli import ConfigOptions
from ndp.sysmodel.scenarios import WORKLOADS
from ndp.sysmodel.systems import SYSTEMS

DESCRIPTION = "Model NDRec-style training (CSDs + CXL + lookahead) against CPU-GPU, GPU-cache and SSD baselines."


@dataclasses.dataclass(frozen=True)
class SimulateSettings:
    """What ``python -m ndp simulate`` models; ``None`` keeps the system file's value.

    Attributes:
      config: system file (JSON) or bundled name (paper_like, multi_gpu).
      workload: the training workload.
      batch_size: override the system file's workload.batch_size.
      zipf: override workload.zipf_exponent (row-popularity skew).
      row_cap: override workload.row_cap: clip every table to this many rows.
      synthetic_rows: override workload.synthetic_rows: rows per table of the synthetic workload.
      trace_batches: iterations of access trace to simulate caches on (at least 2).
      lookahead: override options.lookahead_batches.
      systems: systems to model (must include ndrec: speedups are relative to it).
      plots: also write the Gantt chart and the sweeps as PNG.
    """

    config: str = "paper_like"
    workload: str = dataclasses.field(default="mlperf", metadata={"choices": WORKLOADS})
    batch_size: int | None = None
    zipf: float | None = None
    row_cap: int | None = None
    synthetic_rows: int | None = None
    trace_batches: int | None = None
    lookahead: int | None = None
    systems: tuple[str, ...] = SYSTEMS
    plots: bool = True

    def __post_init__(self):
        check_choice("workload", self.workload, WORKLOADS)
        for name in ("batch_size", "row_cap", "synthetic_rows"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        for name in ("zipf", "lookahead"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name), allow_zero=True)
        if self.trace_batches is not None and self.trace_batches < 2:
            raise UsageError(f"trace_batches: expected >= 2, got {self.trace_batches}")
        for s in self.systems:
            check_choice("systems", s, SYSTEMS)
        if "ndrec" not in self.systems:
            raise UsageError(f"systems: expected the list to include 'ndrec' (speedups are relative to it), got {list(self.systems)}")


OPTIONS = ConfigOptions(SimulateSettings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    OPTIONS.add_arguments(parser)
    add_common_options(parser, out_default="runs/simulate/<config>-<workload>", progress=False)


def _settings(args, system_file):
    from ndp.sysmodel.systems import SystemOptions

    changes = {}
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.zipf is not None:
        changes["zipf_exponent"] = args.zipf
    if args.row_cap is not None:
        changes["row_cap"] = args.row_cap
    if args.synthetic_rows is not None:
        changes["synthetic_rows"] = args.synthetic_rows
    if args.trace_batches is not None:
        changes["trace_batches"] = args.trace_batches
    settings = dataclasses.replace(system_file.workload, **changes)
    options = system_file.options
    if args.lookahead is not None:
        options = SystemOptions(args.lookahead, options.csd_cache_policy, max(options.num_batches, args.lookahead + 4))
    return settings, options


def run(namespace: argparse.Namespace) -> int:
    check_common_options(namespace)
    args = OPTIONS.build(namespace)  # the checked values, under the option names
    import jax

    from ndp.sysmodel import plots
    from ndp.sysmodel.config import load_system_file
    from ndp.sysmodel.params import as_arrays
    from ndp.sysmodel.scenarios import build_trace, build_workload, cache_sweep, policy_hit_rates, skew_sweep
    from ndp.sysmodel.scenarios import workload_model
    from ndp.sysmodel.systems import SYSTEM_TITLES, simulate, system_tasks

    systems = list(args.systems)
    try:
        system_file = load_system_file(args.config)
    except UsageError as error:
        raise UsageError(OPTIONS.reword(str(error))) from None
    settings, options = _settings(args, system_file)
    out = namespace.out if namespace.out is not None else default_out("simulate", f"{system_file.name}-{args.workload}")

    print(f"system: {system_file.name} ({system_file.path})")
    print(f"workload: {args.workload}, batch {settings.batch_size}, zipf {settings.zipf_exponent}, "
          f"optimizer {settings.optimizer}, lookahead {options.lookahead_batches}")  # fmt: skip
    wl = build_workload(args.workload, settings, shared_root=namespace.shared)
    hw = as_arrays(system_file.hardware)
    results = {s: simulate(s, hw, wl, options) for s in systems}
    base = float(results["ndrec"].period)

    report = {"config": system_file.name, "config_path": system_file.path, "workload": args.workload,
              "settings": dataclasses.asdict(settings), "options": dataclasses.asdict(options),
              "hardware": system_file.hardware._asdict(),
              "workload_summary": {"total_rows": float(wl.total_rows), "embedding_dim": float(wl.embedding_dim),
                                   "lookups_per_iteration": float(wl.lookups_per_iteration),
                                   "unique_fraction": float(wl.unique_fraction),
                                   "consecutive_overlap": float(wl.consecutive_overlap),
                                   "table_gb": float(wl.table_bytes) / 1e9},
              "systems": {}}  # fmt: skip
    print(f"tables: {float(wl.total_rows) / 1e6:.2f}M rows, {float(wl.table_bytes) / 1e9:.2f} GB; "
          f"{float(wl.lookups_per_iteration):.0f} lookups/iteration, {100 * float(wl.unique_fraction):.1f}% distinct")  # fmt: skip
    for s, r in results.items():
        period = float(r.period)
        energy = {k: float(v) for k, v in r.energy.items()}
        total = sum(energy.values())
        print(f"\n== {SYSTEM_TITLES[s]} [{s}]: {period * 1e3:.3f} ms/iteration, "
              f"{base and period / base:.2f}x NDRec's time, cache hit rate {float(r.hit_rate):.3f}")  # fmt: skip
        for name, d in r.durations.items():
            print(f"   {name:<18} {float(d) * 1e3:9.3f} ms")
        print("   energy/iteration: " + ", ".join(f"{k} {v:.3f} J" for k, v in energy.items()) + f"; total {total:.3f} J")
        report["systems"][s] = {"period_s": period, "throughput_examples_per_s": settings.batch_size / period,
                                "hit_rate": float(r.hit_rate),
                                "durations_s": {k: float(v) for k, v in r.durations.items()},
                                "energy_j": energy, "total_energy_j": total,
                                "speedup_of_ndrec": period / base}  # fmt: skip
    nd_energy = report["systems"]["ndrec"]["total_energy_j"]
    print("\nNDRec-style speedup: " + ", ".join(f"{report['systems'][s]['speedup_of_ndrec']:.2f}x vs {s}" for s in systems if s != "ndrec"))
    print("NDRec-style energy saving: " + ", ".join(
        f"{100 * (1 - nd_energy / report['systems'][s]['total_energy_j']):.1f}% vs {s}" for s in systems if s != "ndrec"))

    if args.workload != "mlperf":
        config, trace, per_iteration = build_trace(args.workload, settings, shared_root=namespace.shared)
        policies = policy_hit_rates(trace, per_iteration, [0.001, 0.01, 0.1], sum(config.table_sizes),
                                    lookahead_batches=max(1, options.lookahead_batches))  # fmt: skip
        report["policy_hit_rates"] = policies
        print(f"\ncache policies on the trace ({policies['accesses']} accesses, second half counted):")
        for name, values in policies.items():
            if name not in ("fraction", "accesses"):
                cells = ", ".join(f"{100 * f:g}% rows: {v:.3f}" for f, v in zip(policies["fraction"], values))
                print(f"   {name:<12} {cells}")

    fractions = np.geomspace(1e-4, 0.5, 14)
    by_cache = cache_sweep(system_file.hardware, wl, fractions, options, systems)
    exponents = np.linspace(0.0, 1.4, 15)
    by_skew = skew_sweep(system_file.hardware, workload_model(args.workload, settings), settings, exponents, options, systems)
    report["speedup_vs_cache_fraction"] = {"fraction": fractions.tolist(),
                                           **{s: (by_cache[s] / by_cache["ndrec"]).tolist() for s in systems if s != "ndrec"}}  # fmt: skip
    report["speedup_vs_zipf_exponent"] = {"zipf_exponent": exponents.tolist(),
                                          **{s: (by_skew[s] / by_skew["ndrec"]).tolist() for s in systems if s != "ndrec"}}  # fmt: skip
    path = atomic_write_json(out / "simulation.json", report)
    print(f"\nwrote {path}")
    if args.plots:
        timelines = {s: {"tasks": system_tasks(s, options), "start": r.schedule.start, "finish": r.schedule.finish,
                         "period": r.period} for s, r in results.items()}  # fmt: skip
        written = [
            plots.gantt(out / "gantt.png", timelines, SYSTEM_TITLES),
            plots.sweep(out / "speedup_vs_cache.png", fractions,
                        {f"vs {s}": by_cache[s] / by_cache["ndrec"] for s in systems if s != "ndrec"},
                        xlabel="cache capacity (fraction of all rows)", ylabel="NDRec-style speedup",
                        title=f"{system_file.name} / {args.workload}: speedup vs cache size", logx=True),
            plots.sweep(out / "speedup_vs_skew.png", exponents,
                        {f"vs {s}": by_skew[s] / by_skew["ndrec"] for s in systems if s != "ndrec"},
                        xlabel="Zipf exponent of row popularity (analytic cache model)", ylabel="NDRec-style speedup",
                        title=f"{system_file.name} / {args.workload}: speedup vs skew"),
        ]  # fmt: skip
        for p in written:
            print(f"wrote {p}")
    jax.clear_caches()
    return 0
