"""Calibrate the CPU-side cost model on this machine's measured ``ndp`` training steps.

1. Measures streaming memory bandwidth (numpy copy of a 256 MiB array, median of runs).
2. Times ``ndp.train.make_train_step`` (lookups, DLRM head, row-wise Adagrad sparse
   update on a donated slab; one CPU device, one XLA:CPU thread) for several table
   sizes, batch sizes and Zipf skews: median of repeated steps after compilation.
   The measured quantity is the process CPU time of a step: on a shared machine
   wall-clock time mostly measures other users' load (it varied 2-4x between
   repeats of one case here), while CPU time of a single-threaded step is its run
   time on a quiet core. Wall-clock medians are recorded beside it.
3. Fits the model of :mod:`ndp.sysmodel.calibration` on two thirds of the cases and
   predicts the held-out third; reports the error of every case.

Results are checkpointed after every case (``--out``); a rerun resumes from them
(``--fresh`` starts over). Ends with one JSON line of headline figures:
``max_heldout_rel_err``, ``max_loo_rel_err`` (leave-one-out) and the fitted host parameters.

    python benchmarks/ndrec_calibration.py                   # 32 cases x 3 passes, ~20 min on 2 busy cores
    python benchmarks/ndrec_calibration.py --preset quick    # 6 cases, 1 pass: a smoke test (its own --out)

A saved state of another grid or repeat count in ``--out`` is refused (use ``--fresh`` or another ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# One XLA:CPU thread per step: process CPU time then equals the step's run time on a quiet
# core, and other users' load (which inflates wall-clock time on a shared machine) drops out.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                           " intra_op_parallelism_threads=1").strip()  # fmt: skip

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runkit import UsageError, atomic_write_json, check_choice, check_positive  # noqa: E402
from runkit.config_cli import ConfigOptions  # noqa: E402
from ndp.sysmodel.calibration import (  # noqa: E402
    FEATURE_NAMES,
    CalibrationCase,
    case_features,
    fit_cost_model,
    host_parameters,
    llc_hit_rate,
    predict,
)

EMBEDDING_DIM = 16
NUM_TABLES = 8
BOTTOM_MLP = (64, 16)
TOP_MLP = (64, 1)


def measure_bandwidth(size_bytes: int = 256 * 2**20, repeats: int = 7) -> float:
    """Streaming copy bandwidth (bytes read + written per second), median of ``repeats``."""
    src = np.ones(size_bytes // 8, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2.0 * size_bytes / statistics.median(times)


def llc_bytes() -> float:
    """Last-level cache size from sysfs (32 MiB if unknown)."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        value = int(text[:-1]) * (1024 if text.endswith("K") else 2**20 if text.endswith("M") else 1)
        best = max(best, value)
    return float(best or 32 * 2**20)


def time_training_step(rows: int, batch_size: int, exponent: float, bag: int, repeats: int):
    """Per-step process CPU seconds and wall seconds of the ``ndp`` training step (lists), and MLP FLOPs/example."""
    import jax
    import optax
    from flax import nnx

    from ndp.configs import DLRMConfig
    from ndp.data.synthetic import SyntheticConfig, batch_at
    from ndp.embedding import plan_sharding
    from ndp.model import DLRMHead
    from ndp.sysmodel.workload import mlp_costs
    from ndp.train import Batch, EmbeddingOptimizer, bce_loss, init_train_state, jagged_to_padded, make_train_step
    from ndp.train import shard_batch, storage_mesh

    cfg = DLRMConfig(13, (rows,) * NUM_TABLES, EMBEDDING_DIM, BOTTOM_MLP, TOP_MLP)
    mesh = storage_mesh(1)
    plan = plan_sharding(cfg.table_sizes, EMBEDDING_DIM, 1, "rw")
    head = DLRMHead(cfg, rngs=nnx.Rngs(0))
    tx = optax.sgd(0.01)
    opt = EmbeddingOptimizer("rowwise_adagrad", 0.01)
    state, graphdef = init_train_state(mesh, plan, head, tx, jax.random.key(0), opt)
    step = make_train_step(mesh, plan, graphdef, bce_loss, tx, opt)
    synth = SyntheticConfig(table_sizes=cfg.table_sizes, batch_size=batch_size, zipf_exponent=exponent, seed=1,
                            min_bag_length=bag, max_bag_length=bag)  # fmt: skip
    batches = []
    for i in range(4):
        b = batch_at(synth, i)
        ids, lengths = jagged_to_padded([t.values for t in b.tables], [t.offsets for t in b.tables])
        batches.append(shard_batch(mesh, Batch(b.dense, ids, lengths, b.labels)))
    for i in range(3):  # compile and warm up
        state, loss = step(state, batches[i % 4])
    jax.block_until_ready(loss)
    cpu, wall = [], []
    for i in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        state, loss = step(state, batches[i % 4])
        jax.block_until_ready((state.slab, loss))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    del state
    return cpu, wall, mlp_costs(cfg)[0]


DEFAULT_OUT = REPO / "benchmarks" / "results" / "ndrec_calibration.json"
#: The measured cases ``(rows per table, batch, Zipf exponent, bag length)`` of each ``grid``.
GRIDS = {
    "full": list(itertools.product((10_000, 100_000, 1_000_000, 3_000_000), (512, 2048), (0.0, 1.05), (1, 4))),
    # Bag length (lookups per table and example) varies lookups independently of the MLP work.
    "quick": [(10_000, 256, 0.0, 1), (300_000, 1024, 0.0, 4), (100_000, 512, 1.05, 1), (30_000, 2048, 1.05, 4),
              (300_000, 256, 0.0, 4), (10_000, 1024, 1.05, 1)],
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    """What the calibration measures; every field is a flag, ``--preset`` picks one of :data:`PRESETS`.

    Attributes:
      grid: the measured cases (full: 32, quick: 6 small ones).
      repeats: timed steps per case and pass (at least 3).
      passes: passes over the grid; a case's time is the median of all its samples.
      out: results JSON, also the checkpoint a rerun resumes from.
      fresh: ignore results already in --out.
    """

    grid: str = dataclasses.field(default="full", metadata={"choices": tuple(GRIDS)})
    repeats: int = 9
    passes: int = 3
    out: str = str(DEFAULT_OUT)
    fresh: bool = False

    def __post_init__(self):
        check_choice("grid", self.grid, tuple(GRIDS))
        if self.repeats < 3:
            raise UsageError(f"repeats: expected >= 3, got {self.repeats}")
        check_positive("passes", self.passes)


PRESETS = {
    "full": CalibrationSettings(),
    "quick": CalibrationSettings(grid="quick", passes=1, out=str(DEFAULT_OUT.with_name(DEFAULT_OUT.stem + "_quick.json"))),
}


def saved_state(out: Path, grid: list, repeats: int) -> dict:
    """The passes and bandwidths checkpointed in ``out`` (empty when there is none).

    Raises:
      UsageError: ``out`` is not a results file, or holds another grid or repeat count.
    """
    if not out.exists():
        return {"passes": [], "bandwidths": []}
    hint = "use --fresh to start over or another --out"
    try:
        loaded = json.loads(out.read_text())["checkpoint"]
        saved_grid, saved_repeats = loaded["grid"], loaded["repeats"]
        state = {"passes": loaded["passes"], "bandwidths": loaded["bandwidths"]}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UsageError(f"out: {str(out)!r} is not a calibration results file ({type(error).__name__}: {error}); {hint}") from None
    if saved_grid != [list(g) for g in grid] or saved_repeats != repeats:
        raise UsageError(f"out: {str(out)!r} holds a checkpoint of other cases or repeats: expected {len(grid)} cases x "
                         f"{repeats} repeats (this grid), got {len(saved_grid)} cases x {saved_repeats} repeats; {hint}")  # fmt: skip
    return state


def main(argv=None) -> int:
    options = ConfigOptions(CalibrationSettings, PRESETS, default_preset="full")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_arguments(parser)
    try:
        args = options.build(parser.parse_args(argv))
        grid = GRIDS[args.grid]
        out = Path(args.out)
        state = {"passes": [], "bandwidths": []} if args.fresh else saved_state(out, grid, args.repeats)
    except UsageError as error:
        parser.error(options.reword(str(error)))

    from runkit.progress import progress_bar

    llc = llc_bytes()
    load_before = os.getloadavg()
    flops_of = {}
    # Several passes over the whole grid: load on a shared machine comes in bursts, so
    # samples of one case taken minutes apart are less correlated than consecutive ones.
    for p in range(args.passes):
        if p == len(state["passes"]):
            state["passes"].append({})
            state["bandwidths"].append(measure_bandwidth())
        done = state["passes"][p]
        for rows, batch, exponent, bag in progress_bar(grid, desc=f"timing ndp training steps, pass {p + 1}/{args.passes}", unit="case"):
            key = json.dumps([rows, batch, exponent, bag])
            if key in done:
                continue
            cpu, wall, flops = time_training_step(rows, batch, exponent, bag, args.repeats)
            done[key] = {"cpu_s": [round(x, 6) for x in cpu], "wall_s": [round(x, 6) for x in wall], "flops": flops}
            atomic_write_json(out, {"partial": True, "checkpoint": {"grid": grid, "repeats": args.repeats, **state}})
    bandwidth = statistics.median(state["bandwidths"][: args.passes])
    cases = []
    for rows, batch, exponent, bag in grid:
        key = json.dumps([rows, batch, exponent, bag])
        runs = [state["passes"][p][key] for p in range(args.passes)]
        cpu = [x for r in runs for x in r["cpu_s"]]
        wall = [x for r in runs for x in r["wall_s"]]
        cases.append({"key": [rows, batch, exponent, bag], "rows_per_table": rows, "batch_size": batch,
                      "zipf_exponent": exponent, "bag_length": bag, "mlp_flops_per_example": runs[0]["flops"],
                      "measured_s": statistics.median(cpu), "wall_median_s": statistics.median(wall),
                      "pass_medians_s": [statistics.median(r["cpu_s"]) for r in runs]})  # fmt: skip

    for i, c in enumerate(cases):
        case = CalibrationCase(c["rows_per_table"], NUM_TABLES, c["batch_size"], c["zipf_exponent"], EMBEDDING_DIM,
                               c["mlp_flops_per_example"], row_state_bytes=4.0, pooling_factor=c["bag_length"])  # fmt: skip
        c["features"] = case_features(case, llc_bytes=llc, bandwidth=bandwidth).tolist()
        c["llc_hit_rate"] = llc_hit_rate(case, llc)
        c["held_out"] = i % 3 == 2
    features = np.array([c["features"] for c in cases])
    measured = np.array([c["measured_s"] for c in cases])
    held = np.array([c["held_out"] for c in cases])
    coef = fit_cost_model(features[~held], measured[~held])
    predicted = predict(features, coef)
    rel = (predicted - measured) / measured
    for c, p, e in zip(cases, predicted, rel):
        c["predicted_s"], c["rel_err"] = float(p), float(e)

    print(f"memory bandwidth (numpy copy, read+write): {bandwidth / 1e9:.2f} GB/s; LLC {llc / 2**20:.0f} MiB")
    print(f"{'rows/table':>10} {'batch':>6} {'bag':>4} {'zipf':>5} {'LLC hit':>8} {'measured ms':>12} {'predicted ms':>13} {'err':>7}  set")
    for c in cases:
        print(f"{c['rows_per_table']:>10} {c['batch_size']:>6} {c['bag_length']:>4} {c['zipf_exponent']:>5.2f} {c['llc_hit_rate']:>8.3f} "
              f"{1e3 * c['measured_s']:>12.2f} {1e3 * c['predicted_s']:>13.2f} {100 * c['rel_err']:>6.1f}%  "
              f"{'held-out' if c['held_out'] else 'fit'}")  # fmt: skip
    # Leave-one-out: every case predicted by a fit on all the others.
    loo = []
    for i in range(len(cases)):
        keep = np.arange(len(cases)) != i
        loo.append(float(predict(features[i : i + 1], fit_cost_model(features[keep], measured[keep]))[0] / measured[i] - 1.0))
    for c, e in zip(cases, loo):
        c["leave_one_out_rel_err"] = e
    wall_rel = np.array([c["wall_median_s"] for c in cases]) / measured - 1.0
    params = host_parameters(coef)
    headline = {
        "max_heldout_rel_err": float(np.max(np.abs(rel[held]))),
        "mean_heldout_rel_err": float(np.mean(np.abs(rel[held]))),
        "max_fit_rel_err": float(np.max(np.abs(rel[~held]))),
        "heldout_cases": int(held.sum()),
        "max_loo_rel_err": float(np.max(np.abs(loo))),
        "median_wall_over_cpu_time": float(np.median(wall_rel + 1.0)),
        "fit_cases": int((~held).sum()),
        **params,
    }
    result = {
        "description": "CPU-side step-time model fitted on measured ndp training steps (one CPU device, "
        f"{NUM_TABLES} tables of dim {EMBEDDING_DIM}, DLRM head bottom {BOTTOM_MLP} top {TOP_MLP}, row-wise Adagrad)",
        "conditions": {
            "machine": "2-core shared VM (AMD EPYC, KVM), other jobs running",
            "cpu_count": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "statistic": f"median of {args.passes} x {args.repeats} steps (passes minutes apart), each after 3 warm-up steps",
            "measured_quantity": "process CPU time per step with one XLA:CPU thread (wall-clock medians kept as wall_median_s)",
        },
        "memory_bandwidth_bytes_per_s": bandwidth,
        "llc_bytes": llc,
        "coefficients": dict(zip(FEATURE_NAMES, coef.tolist())),
        "headline": headline,
        "cases": cases,
        "checkpoint": {"grid": grid, "repeats": args.repeats, **state},
    }
    atomic_write_json(out, result)
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
