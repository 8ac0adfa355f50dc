"""Embedding training step: ndp (JAX) vs PyTorch ``nn.EmbeddingBag(sparse=True)`` vs FBGEMM's CPU TBE.

Workload (same in all three, same run, same machine): 26 tables with the Criteo
Kaggle sizes capped at ``--row-cap`` (1M: 5.57M rows), dim 16, batch 2048,
one-hot lookups with Zipf-skewed indices from :mod:`ndp.data.synthetic` (the same
index batches are fed to every framework), sum pooling, loss
``0.5 * sum(pooled^2) / B``, and a sparse optimizer update of the looked-up rows:

* ``ndp``: :func:`ndp.train.make_train_step` on a ``storage`` mesh (``--devices``),
  SGD and row-wise Adagrad, tables donated and updated in place;
* PyTorch: 26 ``nn.EmbeddingBag(mode="sum", sparse=True)`` + ``torch.optim.SGD``;
* FBGEMM: ``SplitTableBatchedEmbeddingBagsCodegen`` on CPU with the optimizer fused
  into the backward pass (``EXACT_SGD``, ``EXACT_ROWWISE_ADAGRAD``).

Also measured: ndp's SGD step with every table 10x larger (``--large-scale``: each
capped size times 10, 55.7M rows, 3.4 GB, index batches drawn from the same Zipf
law over the larger tables) to show step time does not grow with table rows.
``slowdown_at_10x_rows`` = step time of the headline's own lookups on the 10x tables /
on the headline tables, both timed in one process after the 10x run's own rounds, their
rounds interleaved so that both see the same load: only the table size changes, which
is what work growing with rows (a table copy, a dense gradient) would show in.
``slowdown_at_10x_rows_new_draws`` times the 10x tables with lookups drawn from the same
Zipf law over their rows instead: that is a different workload, whose batches touch
more distinct rows (53% of the lookups instead of 40%), so it adds cache and TLB misses
that any implementation pays; as a
secondary figure, the headline size over 10x smaller tables (``--small-scale``;
``slowdown_full_vs_0p1x_rows``: those fit nearly in the L3 cache, so this ratio
measures cache residency rather than work that grows with rows); and the peak RSS
of every ndp process next to the size of its tables and the compiled step's
temporary buffers (``peak_rss_mb`` at the headline size, ``peak_rss_mb_at_10x_rows``).
The 10x run is skipped, with the reason in the JSON, when the machine lacks the
memory for it.

PyTorch and FBGEMM are optional (``pip install torch==2.13.0 fbgemm-gpu-cpu==1.8.0``,
the CPU builds). When they are not importable here, ``--torch-python`` names an
interpreter that has them; it runs this file in ``--worker`` mode on the same index
batches. Timing is the median over ``--rounds`` of ``--steps`` steps after warm-up,
around ``block_until_ready`` (JAX) or synchronous CPU execution (PyTorch); process
CPU time per step is recorded next to it, and the load average before and after
every worker.

Fairness on a small shared machine:

* the peers run once per ``--torch-threads`` setting (default 2 and 1). XLA:CPU
  uses every core for its intra-op parallelism, so on 2 cores torch with 2 threads
  is the like-for-like peer when the machine is quiet; under load PyTorch's
  OpenMP threads stall on each other and 1 thread is much faster. The headline
  ratios (``--headline-threads best``) therefore use, for each peer, its faster
  setting in this run, which never flatters ndp; every setting's ratios (wall and
  CPU time) are in the JSON;
* ``--huge-pages on`` (default) starts every worker, ndp and peers alike, with
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: glibc's malloc then asks for
  transparent huge pages (``madvise``) for its large mappings, which takes TLB
  misses out of random row accesses in tables of hundreds of MB (it needs THP in
  ``madvise`` or ``always`` mode; the JSON records the huge pages each process got);
* ``--repeats`` runs the whole sequence of workers again and pools the rounds, so a
  busy phase of the machine does not fall on one framework only.

Usage::

    python benchmarks/embedding_train.py --torch-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_OUT = REPO / "benchmarks" / "results" / "embedding_train.json"
LEARNING_RATE = 0.01
EPS = 1e-8


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed_rounds(run_steps, steps: int, rounds: int, cpu: list | None = None) -> list[float]:
    """Wall-clock seconds per step of each round; process CPU seconds per step are appended to ``cpu``."""
    out = []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        run_steps(steps)
        out.append((time.perf_counter() - start) / steps)
        if cpu is not None:
            cpu.append((time.process_time() - start_cpu) / steps)
    return out


# ------------------------------------------------------------------------------------------------
# PyTorch / FBGEMM worker (imports neither jax nor ndp)


def load_indices(path):
    """``(sizes, dim, batch_size, batches)`` of an index file; each batch is table-major CSR ``(values, offsets)``."""
    with np.load(path) as data:
        batches = [(data[f"values_{i}"], data[f"offsets_{i}"]) for i in range(int(data["count"]))]
        return [int(x) for x in data["sizes"]], int(data["dim"]), int(data["batch_size"]), batches


def torch_worker(indices_path: str, out_path: str, steps: int, rounds: int, warmup: int, threads: int | None,
                 embeddingbag: bool) -> None:  # fmt: skip
    import torch

    if threads:
        torch.set_num_threads(threads)
    sizes, dim, batch_size, batches = load_indices(indices_path)
    tables = len(sizes)
    results: dict = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}
    cpu = results.setdefault("cpu_s", {})
    step_counter = [0]

    if embeddingbag:
        # PyTorch EmbeddingBag, one per table, sparse gradients, SGD.
        bags = [torch.nn.EmbeddingBag(n, dim, mode="sum", sparse=True) for n in sizes]
        params = [p for b in bags for p in b.parameters()]
        sgd = torch.optim.SGD(params, lr=LEARNING_RATE)
        torch_inputs = []
        for values, offsets in batches:
            per_table = []
            for t in range(tables):
                lo, hi = int(offsets[t * batch_size]), int(offsets[(t + 1) * batch_size])
                per_table.append((torch.from_numpy(values[lo:hi].astype(np.int64)),
                                  torch.from_numpy((offsets[t * batch_size:(t + 1) * batch_size] - lo).astype(np.int64))))
            torch_inputs.append(per_table)  # fmt: skip

        def embedding_bag_steps(n):
            for _ in range(n):
                ids = torch_inputs[step_counter[0] % len(torch_inputs)]
                step_counter[0] += 1
                pooled = torch.cat([bag(*ids[t]) for t, bag in enumerate(bags)], dim=1)
                loss = 0.5 * (pooled * pooled).sum() / batch_size
                sgd.zero_grad(set_to_none=True)
                loss.backward()
                sgd.step()

        embedding_bag_steps(warmup)
        results["torch_embeddingbag_sgd_s"] = timed_rounds(
            embedding_bag_steps, steps, rounds, cpu.setdefault("torch_embeddingbag_sgd", [])
        )
        results["anon_huge_pages_mb_embeddingbag"] = anon_huge_pages_mb()
        del bags, params, sgd

    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception as error:  # noqa: BLE001 - report why FBGEMM is missing, keep the rest
        results["fbgemm_error"] = repr(error)
    else:
        # The same table-major CSR bags FBGEMM takes: values, offsets over (table, example) bags.
        tbe_inputs = [(torch.from_numpy(v.astype(np.int64)), torch.from_numpy(o.astype(np.int64))) for v, o in batches]
        for name, optimizer in (("sgd", EmbOptimType.EXACT_SGD), ("rowwise_adagrad", EmbOptimType.EXACT_ROWWISE_ADAGRAD)):
            tbe = SplitTableBatchedEmbeddingBagsCodegen(
                [(n, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for n in sizes],
                optimizer=optimizer, learning_rate=LEARNING_RATE, eps=EPS,
            )  # fmt: skip

            def tbe_steps(n, tbe=tbe):
                for _ in range(n):
                    values, offs = tbe_inputs[step_counter[0] % len(tbe_inputs)]
                    step_counter[0] += 1
                    pooled = tbe(values, offs)
                    loss = 0.5 * (pooled * pooled).sum() / batch_size
                    loss.backward()

            tbe_steps(warmup)
            results[f"fbgemm_{name}_s"] = timed_rounds(tbe_steps, steps, rounds, cpu.setdefault(f"fbgemm_{name}", []))
            results[f"anon_huge_pages_mb_fbgemm_{name}"] = anon_huge_pages_mb()
            del tbe
    results["peak_rss_mb"] = peak_rss_mb()
    Path(out_path).write_text(json.dumps(results))


# ------------------------------------------------------------------------------------------------
# JAX (ndp)


def ndp_worker(indices_path: str, out_path: str, optimizer: str, devices: int, steps: int, rounds: int,
               warmup: int, paired: dict[str, str] | None = None, bag_format: str = "padded") -> None:
    """Time ndp's step in a fresh process, so its peak RSS is the step's own (runtime + tables + batch).

    ``bag_format``: ``"padded"`` feeds ``ids (B, T, L)`` (XLA's gathers and scatters, the one-hot
    path), ``"jagged"`` feeds :class:`ndp.bags.Bags` (the CPU kernels of :mod:`ndp.bag_kernels`).

    ``paired`` (name -> index file) adds configurations timed in the same process after
    the peak RSS of the first one is taken, their rounds interleaved with its rounds, so
    that their step-time ratios see the same machine load (``<name>_step_s``,
    ``<name>_cpu_s``). A paired configuration with the same table sizes reuses the
    first one's tables with its own index batches.
    """
    import jax

    if devices > 1:
        jax.config.update("jax_num_cpu_devices", devices)
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from ndp.bags import Bags, bags_to_padded
    from ndp.embedding import plan_sharding
    from ndp.train import Batch, EmbeddingOptimizer, init_train_state, make_train_step, storage_mesh

    def load(path):
        sizes, dim, batch_size, batches = load_indices(path)
        return sizes, [(Bags(v, o), batch_size) for v, o in batches], dim

    sizes, batches, dim = load(indices_path)
    jax.block_until_ready(jnp.zeros(()))
    rss_runtime = peak_rss_mb()  # the JAX runtime and the index batches, before any table exists

    class SquaredNormHead(nnx.Module):
        def __init__(self):
            self.scale = nnx.Param(jnp.ones((), jnp.float32))

        def __call__(self, dense, pooled):
            return 0.5 * self.scale[...] * jnp.sum(pooled * pooled, axis=(1, 2))

    mesh = storage_mesh(devices)
    embedding_optimizer = EmbeddingOptimizer(optimizer, LEARNING_RATE, EPS)
    tx = optax.set_to_zero()

    def device_batches(step, batches):
        host = []
        for bags, batch_size in batches:
            empty, labels = np.zeros((batch_size, 0), np.float32), np.zeros(batch_size, np.float32)
            if bag_format == "padded":
                host.append(Batch(empty, *bags_to_padded(bags, batch_size), labels))
            else:
                host.append(Batch(empty, bags, None, labels))
        for batch in host:  # the largest capacity first, so that every batch has the same shapes
            step.prepare(batch)
        return [step.prepare(batch)[0] for batch in host]

    def build(sizes, batches, holder=None):
        """A ``run(n)`` that takes ``n`` steps, its holder (state and step) and the compiled step's temporaries."""
        plan = plan_sharding(sizes, dim, devices, "rw" if devices > 1 else "tw")
        if holder is None:
            state, graphdef = init_train_state(mesh, plan, SquaredNormHead(), tx, jax.random.key(0),
                                               embedding_optimizer)  # fmt: skip
            step = make_train_step(mesh, plan, graphdef, lambda p, y: jnp.mean(p), tx, embedding_optimizer)
            holder = {"state": state, "step": step, "plan": plan}
        inputs = device_batches(holder["step"], batches)
        temp = holder["step"].lower(holder["state"], inputs[0]).compile().memory_analysis().temp_size_in_bytes
        counter = [0]

        def run(n):
            s = holder["state"]
            for _ in range(n):
                s, _ = holder["step"](s, inputs[counter[0] % len(inputs)])
                counter[0] += 1
            jax.block_until_ready(s.slab)
            holder["state"] = s

        run(warmup)
        return run, holder, temp

    run, holder, temp_bytes = build(sizes, batches)
    cpu_per_step: list[float] = []
    per_step = timed_rounds(run, steps, rounds, cpu_per_step)
    table_bytes = sum(sizes) * dim * 4
    state_bytes = sum(x.nbytes for x in (holder["state"].slab, holder["state"].slab_state))
    result = {"step_s": per_step, "cpu_s": cpu_per_step, "temp_bytes": int(temp_bytes), "table_mb": table_bytes / 2**20,
              "slab_and_optimizer_state_mb": state_bytes / 2**20, "rows": int(sum(sizes)),
              "plan_imbalance": holder["plan"].imbalance(), "rss_runtime_mb": rss_runtime, "peak_rss_mb": peak_rss_mb(),
              "anon_huge_pages_mb": anon_huge_pages_mb(), "bag_format": bag_format,
              "lookups_per_step": [int(b.offsets[-1]) for b, _ in batches]}  # fmt: skip
    if paired:
        runs = {"": run}
        for name, path in paired.items():
            other_sizes, other_batches, _ = load(path)
            runs[f"{name}_"] = build(other_sizes, other_batches, holder if other_sizes == sizes else None)[0]
        times: dict[str, list[float]] = {key: [] for key in runs}
        cpu: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(rounds):  # interleaved: every configuration sees the same phases of the machine's load
            for key, fn in runs.items():
                times[key] += timed_rounds(fn, steps, 1, cpu[key])
        result["interleaved_step_s"], result["interleaved_cpu_s"] = times.pop(""), cpu.pop("")
        for key in times:
            result[f"{key}step_s"], result[f"{key}cpu_s"] = times[key], cpu[key]
    Path(out_path).write_text(json.dumps(result))


def make_batches(sizes, batch_size, count, seed, zipf, pooling_factors=None, bag_length=1):
    """``count`` batches of table-major CSR bags ``(values, offsets)`` from :mod:`ndp.data.synthetic`:
    bags of ``bag_length`` ids, or of lengths around each table's ``pooling_factors`` (uniform in
    ``[m - m//2, m + m//2]``)."""
    from ndp.bags import bags_from_jagged
    from ndp.data.synthetic import SyntheticConfig, batch_at

    lengths = {} if pooling_factors else {"min_bag_length": bag_length, "max_bag_length": bag_length}
    cfg = SyntheticConfig(tuple(sizes), batch_size=batch_size, zipf_exponent=zipf, seed=seed,
                          pooling_factors=tuple(pooling_factors) if pooling_factors else None, **lengths)  # fmt: skip
    return [tuple(bags_from_jagged(batch_at(cfg, i).tables)) for i in range(count)]


def proc_field_mb(path: str, field: str) -> float | None:
    """A ``<field>: <n> kB`` line of a ``/proc`` file (Linux), in MB; None where it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return None


def anon_huge_pages_mb() -> float | None:
    """Transparent huge pages backing this process's anonymous memory (Linux), in MB."""
    return proc_field_mb("/proc/self/smaps_rollup", "AnonHugePages")


def save_indices(path, sizes, dim: int, batch_size: int, batches) -> None:
    """The index batches of a run (table-major CSR) and its table sizes, as the workers read them."""
    arrays = {f"{name}_{i}": x for i, b in enumerate(batches) for name, x in zip(("values", "offsets"), b)}
    np.savez(path, sizes=np.asarray(sizes), dim=dim, batch_size=batch_size, count=len(batches), **arrays)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def merge_repeats(runs):
    """Pool repeated ``(peers, ours, small, large)`` worker results: per-step timings are concatenated, load
    averages listed per repeat, peak RSS is the largest, everything else is the first run's."""

    def merge(results: list[dict]) -> dict:
        out = {}
        for key, first in results[0].items():
            values = [r[key] for r in results]
            if key == "cpu_s" and isinstance(first, dict):
                out[key] = {name: [x for v in values for x in v[name]] for name in first}
            elif key.endswith("_s") and isinstance(first, list):
                out[key] = [x for v in values for x in v]
            elif key.startswith("load_avg"):
                out[key] = values
            elif key == "peak_rss_mb":
                out[key] = max(values)
            else:
                out[key] = first
        return out

    peers = {n: merge([run[0][n] for run in runs]) for n in runs[0][0]}
    ours = {opt: merge([run[1][opt] for run in runs]) for opt in runs[0][1]}
    small = merge([run[2] for run in runs]) if runs[0][2] is not None else None
    large = merge([run[3] for run in runs]) if runs[0][3] is not None else None
    return peers, ours, small, large


def available_memory_mb() -> float | None:
    """``MemAvailable`` of the machine (Linux), in MB."""
    return proc_field_mb("/proc/meminfo", "MemAvailable")


def parse_threads(text: str) -> list[int]:
    from runkit.checks import positive_ints  # here, not at the top: the peers' environment has no runkit

    return list(positive_ints("--torch-threads", text))


@dataclasses.dataclass(frozen=True)
class Workload:
    """One embedding workload: tables, dimension, batch and bags; the ndp bag format it runs with."""

    name: str
    sizes: tuple[int, ...]
    dim: int
    batch_size: int
    bag_length: int = 1
    pooling_factors: tuple[int, ...] | None = None
    bag_format: str = "padded"
    embeddingbag: bool = False  # also time PyTorch's nn.EmbeddingBag (slow; the one-hot workload only)

    def describe(self) -> dict:
        return {"tables": len(self.sizes), "rows": int(sum(self.sizes)), "dim": self.dim, "batch_size": self.batch_size,
                "bag_length": None if self.pooling_factors else self.bag_length,
                "pooling_factors": list(self.pooling_factors) if self.pooling_factors else None,
                "ndp_bag_format": self.bag_format}  # fmt: skip


WORKLOAD_NAMES = ("kaggle", "one-table", "dlrmv2")


def workloads(args) -> list[Workload]:
    """The workloads named by ``--workloads``: (a) the one-hot Kaggle tables, (b) one large table with
    bags of 20 ids, (c) MLPerf DLRMv2's tables with their multi-hot pooling factors."""
    from ndp.configs import DLRMV2_POOLING_FACTORS, criteo_kaggle_table_sizes, dlrmv2_table_sizes

    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for name in chosen:
        if name not in WORKLOAD_NAMES:
            raise ValueError(f"--workloads: expected names from {list(WORKLOAD_NAMES)}, got {name!r}")
    if not chosen:
        raise ValueError(f"--workloads: expected at least one of {list(WORKLOAD_NAMES)}, got {args.workloads!r}")
    every = {
        # One-hot bags: ndp's padded path (XLA gathers and scatters), measured faster than the kernels there.
        "kaggle": Workload("kaggle", criteo_kaggle_table_sizes(row_cap=args.row_cap), args.dim, args.batch_size,
                           embeddingbag=True),
        "one-table": Workload("one-table", (args.one_table_rows,), 64, 4096, bag_length=20, bag_format="jagged"),
        "dlrmv2": Workload("dlrmv2", dlrmv2_table_sizes(row_cap=args.row_cap), 128, 2048,
                           pooling_factors=DLRMV2_POOLING_FACTORS, bag_format="jagged"),
    }  # fmt: skip
    return [every[name] for name in chosen]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOAD_NAMES),
                        help=f"comma-separated workloads from {', '.join(WORKLOAD_NAMES)} (default: all)")
    parser.add_argument("--row-cap", type=int, default=1_000_000, help="largest table of the kaggle and dlrmv2 workloads")
    parser.add_argument("--one-table-rows", type=int, default=10_000_000, help="rows of the one-table workload")
    parser.add_argument("--large-scale", type=float, default=10.0,
                        help="table scale of the 'large' ndp SGD run of the kaggle workload (slowdown_at_10x_rows); "
                             "0 skips it")
    parser.add_argument("--small-scale", type=float, default=0.1,
                        help="table scale of the 'small' ndp SGD run of the kaggle workload (secondary figure)")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension of the kaggle workload")
    parser.add_argument("--batch-size", type=int, default=2048, help="batch of the kaggle workload")
    parser.add_argument("--zipf", type=float, default=0.9)
    parser.add_argument("--devices", type=int, default=1, help="storage devices of the ndp run (CPU: emulated)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--index-batches", type=int, default=8, help="distinct index batches, cycled")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the sequence of all workers this many times; timings of all runs are pooled")
    parser.add_argument("--torch-python", default=None, help="python with torch + fbgemm-gpu-cpu (default: this one)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--no-peers", action="store_true",
                        help="only ndp's SGD step (on the kaggle workload: at all three table sizes)")
    parser.add_argument("--torch-threads", default="2,1",
                        help="comma-separated torch.set_num_threads values, one peer run each (default 2,1)")
    parser.add_argument("--headline-threads", default="best",
                        help="torch threads of the headline ratios: 'best' (default) compares with each peer's "
                             "fastest measured thread setting, or one of --torch-threads")
    parser.add_argument("--huge-pages", choices=("on", "off"), default="on",
                        help="run every worker (ndp and peers alike) with glibc's malloc asking for transparent "
                             "huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; needs THP in madvise or always mode)")
    parser.add_argument("--worker", choices=("torch", "ndp"), help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", default="sgd", help=argparse.SUPPRESS)
    parser.add_argument("--indices", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paired", default=None, help=argparse.SUPPRESS)  # name=path,... (ndp worker)
    parser.add_argument("--bag-format", default="padded", help=argparse.SUPPRESS)  # ndp worker
    parser.add_argument("--embeddingbag", action="store_true", help=argparse.SUPPRESS)  # torch worker
    args = parser.parse_args(argv)
    if args.worker == "torch":
        torch_worker(args.indices, args.worker_out, args.steps, args.rounds, args.warmup, args.threads,
                     args.embeddingbag)  # fmt: skip
        return 0
    if args.worker == "ndp":
        paired = dict(item.split("=", 1) for item in args.paired.split(",")) if args.paired else None
        ndp_worker(args.indices, args.worker_out, args.optimizer, args.devices, args.steps, args.rounds, args.warmup,
                   paired, args.bag_format)  # fmt: skip
        return 0
    try:
        threads = [] if args.no_peers else parse_threads(args.torch_threads)
        chosen_workloads = workloads(args)
    except ValueError as error:
        parser.error(str(error))
    chosen = args.headline_threads
    if chosen != "best" and (not chosen.isdigit() or int(chosen) not in threads):
        parser.error(f"--headline-threads: expected 'best' or one of --torch-threads {threads}, "
                     f"got {args.headline_threads!r}")  # fmt: skip
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive int, got {args.repeats}")
    from ndp.configs import scale_table_sizes

    kaggle = next((w for w in chosen_workloads if w.name == "kaggle"), None)
    small_sizes = scale_table_sizes(kaggle.sizes, scale=args.small_scale) if kaggle else None
    large_sizes = scale_table_sizes(kaggle.sizes, scale=args.large_scale) if kaggle and args.large_scale > 0 else None
    large_skipped = None if args.large_scale > 0 else "--large-scale 0"
    if large_sizes is not None:
        # The slab plus its step's buffers, the runtime and a margin for the other users of the machine.
        need_mb = sum(large_sizes) * kaggle.dim * 4 / 2**20 * 1.1 + 2048
        free_mb = available_memory_mb()
        if free_mb is not None and free_mb < need_mb:
            large_skipped = f"needs about {need_mb:.0f} MB, {free_mb:.0f} MB available"
            print(f"skipping the {args.large_scale}x-rows run: {large_skipped}", file=sys.stderr)
            large_sizes = None
    worker_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if args.huge_pages == "on":
        tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t and "malloc.hugetlb" not in t]
        worker_env["GLIBC_TUNABLES"] = ":".join([*tunables, "glibc.malloc.hugetlb=1"])

    def worker(kind: str, indices: Path, tmp: str, *extra: str) -> dict:
        out = Path(tmp) / f"{kind}-{len(os.listdir(tmp))}.json"
        python = (args.torch_python or sys.executable) if kind == "torch" else sys.executable
        cmd = [python, str(Path(__file__).resolve()), "--worker", kind, "--indices", str(indices), "--worker-out",
               str(out), "--steps", str(args.steps), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
               "--devices", str(args.devices), *extra]  # fmt: skip
        load_before = load_average()
        print(f"  {kind} worker {' '.join(extra)} on {indices.name}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, env=worker_env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 or not out.is_file():
            print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
            hint = " (install torch==2.13.0 and fbgemm-gpu-cpu==1.8.0, or pass --torch-python)" if kind == "torch" else ""
            raise SystemExit(f"{kind} worker failed with python {python!r}{hint}")
        return {**json.loads(out.read_text()), "load_avg_before": load_before, "load_avg_after": load_average()}

    load_start = load_average()
    optimizers = ("sgd",) if args.no_peers else ("sgd", "rowwise_adagrad")
    runs: dict[str, list] = {w.name: [] for w in chosen_workloads}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for w in chosen_workloads:
            files[w.name] = Path(tmp) / f"{w.name}.npz"
            batches = make_batches(w.sizes, w.batch_size, args.index_batches, 0, args.zipf, w.pooling_factors,
                                   w.bag_length)  # fmt: skip
            save_indices(files[w.name], w.sizes, w.dim, w.batch_size, batches)
            if w is kaggle:
                files["small"] = Path(tmp) / "small.npz"
                save_indices(files["small"], small_sizes, w.dim, w.batch_size,
                             make_batches(small_sizes, w.batch_size, args.index_batches, 0, args.zipf))  # fmt: skip
                if large_sizes is not None:
                    # Fresh Zipf draws over the 10x tables, and the headline's lookups on the 10x tables.
                    files["large"], files["large_same"] = Path(tmp) / "large.npz", Path(tmp) / "large_same.npz"
                    save_indices(files["large"], large_sizes, w.dim, w.batch_size,
                                 make_batches(large_sizes, w.batch_size, args.index_batches, 0, args.zipf))  # fmt: skip
                    save_indices(files["large_same"], large_sizes, w.dim, w.batch_size, batches)
        # Each framework in its own process, one after the other, on the same index batches; with
        # --repeats the whole sequence runs again, so slow phases of a shared machine hit all alike.
        for repeat in range(args.repeats):
            for w in chosen_workloads:
                print(f"repeat {repeat + 1}/{args.repeats}, workload {w.name}", file=sys.stderr, flush=True)
                eb = ("--embeddingbag",) if w.embeddingbag else ()
                peers = {str(n): worker("torch", files[w.name], tmp, "--threads", str(n), *eb) for n in threads}
                ours = {opt: worker("ndp", files[w.name], tmp, "--optimizer", opt, "--bag-format", w.bag_format)
                        for opt in optimizers}  # fmt: skip
                small = large = None
                if w is kaggle:
                    small = worker("ndp", files["small"], tmp, "--optimizer", "sgd")
                    if large_sizes is not None:
                        # 10x tables with fresh draws; in the same process, rounds interleaved, the headline
                        # tables and the headline's lookups on the 10x tables, for the ratios.
                        large = worker("ndp", files["large"], tmp, "--optimizer", "sgd", "--paired",
                                       f"headline={files[w.name]},headline_ids={files['large_same']}")  # fmt: skip
                runs[w.name].append((peers, ours, small, large))
    load_end = load_average()
    report = {"machine": {"cpus": os.cpu_count(), "load_avg_start": load_start, "load_avg_end": load_end,
                          "huge_pages": args.huge_pages, "worker_glibc_tunables": worker_env.get("GLIBC_TUNABLES")},
              "settings": {"zipf": args.zipf, "devices": args.devices, "steps": args.steps, "rounds": args.rounds,
                           "repeats": args.repeats, "index_batches": args.index_batches},
              "workloads": {}, "headline": {}}  # fmt: skip
    for w in chosen_workloads:
        section = summarise(w, *merge_repeats(runs[w.name]), args.headline_threads)
        report["workloads"][w.name] = section
        report["headline"][w.name] = section["headline"]
        print(f"--- {w.name}: {w.describe()}")
        for name, ms in section["median_step_ms"].items():
            print(f"{name:40s} {ms:9.2f} ms/step")
        for n, r in section["speedups_by_torch_threads"].items():
            wall = ", ".join(f"{k} {v:.2f}x" for k, v in r["wall"].items() if v)
            print(f"torch/FBGEMM with {n} thread(s): wall {wall}")
    if kaggle is not None:
        k = report["workloads"]["kaggle"]
        report["workloads"]["kaggle"]["large_skipped"] = large_skipped
        report["headline"].update({key: k[key] for key in ("slowdown_at_10x_rows", "slowdown_at_10x_rows_same_ids",
                                                         "speedup_vs_torch_embeddingbag") if key in k})  # fmt: skip
    print(f"load average (1, 5, 15 min): start {load_start}, end {load_end}; huge pages {args.huge_pages}")
    from runkit import atomic_write_json  # here, not at the top: the torch workers run in a venv without jax

    atomic_write_json(args.out, report)
    print(json.dumps(report["headline"]))
    return 0


def summarise(w: Workload, peers: dict, ours: dict, small: dict | None, large: dict | None, headline_threads: str) -> dict:
    """One workload's medians, ratios and headline from its pooled worker results."""
    median = statistics.median
    ours_ms = {opt: 1e3 * median(o["step_s"]) for opt, o in ours.items()}
    ours_cpu_ms = {opt: 1e3 * median(o["cpu_s"]) for opt, o in ours.items()}

    def peer_ms(peer: dict, name: str, cpu: bool = False):
        xs = peer.get("cpu_s", {}).get(name) if cpu else peer.get(f"{name}_s")
        return 1e3 * median(xs) if xs else None

    def ratios(peer: dict, cpu: bool = False) -> dict:
        """Peer step time over ours (> 1: ndp is faster), wall-clock or process CPU time."""
        mine = ours_cpu_ms if cpu else ours_ms
        out = {}
        for key, name, opt in (("speedup_sgd_vs_fbgemm_sgd", "fbgemm_sgd", "sgd"),
                               ("speedup_adagrad_vs_fbgemm_adagrad", "fbgemm_rowwise_adagrad", "rowwise_adagrad"),
                               ("speedup_vs_torch_embeddingbag", "torch_embeddingbag_sgd", "sgd")):  # fmt: skip
            theirs = peer_ms(peer, name, cpu)
            out[key] = theirs / mine[opt] if theirs is not None and opt in mine else None
        fastest = [x for x in (peer_ms(peer, "fbgemm_sgd", cpu), peer_ms(peer, "fbgemm_rowwise_adagrad", cpu)) if x]
        for opt in mine:  # each ndp optimizer against FBGEMM's fastest step
            out[f"speedup_{opt}_vs_fbgemm_fastest"] = min(fastest) / mine[opt] if fastest else None
        return out

    def spread(xs):
        xs = [1e3 * x for x in xs]
        return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}

    if headline_threads == "best":
        # Each peer timing at its fastest thread setting: never flattering to ndp, whatever the load.
        fastest = {}  # timing key -> (torch threads, per-step times); the first setting wins ties
        for n, peer in peers.items():
            for key, value in peer.items():
                if key.endswith("_s") and key != "cpu_s" and value:
                    if key not in fastest or median(value) < median(fastest[key][1]):
                        fastest[key] = (n, value)
        headline_peer = {key: value for key, (_, value) in fastest.items()}
        cpu_of = {key[:-2]: peers[n]["cpu_s"][key[:-2]] for key, (n, _) in fastest.items()}
        headline_peer["cpu_s"] = cpu_of
        chosen_threads = {key[:-2]: n for key, (n, _) in fastest.items()}
    else:
        headline_peer = peers[headline_threads] if peers else {}
        chosen_threads = {key[:-2]: headline_threads for key in headline_peer if key.endswith("_s") and key != "cpu_s"}
    wall, cpu = ratios(headline_peer), ratios(headline_peer, cpu=True)
    headline = {key: wall[key] for key in ("speedup_sgd_vs_fbgemm_sgd", "speedup_adagrad_vs_fbgemm_adagrad")}
    per_opt = [v for k, v in wall.items() if k.endswith("_vs_fbgemm_fastest") and v is not None]
    # ndp's slower optimizer against FBGEMM's fastest step: the least flattering pairing.
    headline["speedup_vs_fbgemm_fastest"] = min(per_opt) if per_opt else None
    section = {
        "workload": w.describe(),
        "headline": headline,
        "headline_torch_threads": chosen_threads,
        "ratios_wall": wall,
        "ratios_cpu_time": cpu,
        "ndp": ours,
        "peers_by_torch_threads": peers,
        "step_ms_spread": {**{f"ndp_{opt}": spread(o["step_s"]) for opt, o in ours.items()},
                           **{f"{k[:-2]}_{n}thread": spread(v) for n, p in peers.items() for k, v in p.items()
                              if k.endswith("_s") and k != "cpu_s"}},  # fmt: skip
        "median_step_ms": {
            **{f"ndp_{opt}": ms for opt, ms in ours_ms.items()},
            **{f"{k[:-2]}_{n}thread": 1e3 * median(v) for n, p in peers.items() for k, v in p.items()
               if k.endswith("_s") and k != "cpu_s"},
        },  # fmt: skip
        "median_cpu_ms_per_step": {
            **{f"ndp_{opt}": ms for opt, ms in ours_cpu_ms.items()},
            **{f"{k}_{n}thread": 1e3 * median(v) for n, p in peers.items() for k, v in p.get("cpu_s", {}).items()},
        },
        "speedups_by_torch_threads": {n: {"wall": ratios(p), "cpu_time": ratios(p, cpu=True)} for n, p in peers.items()},
    }
    if small is not None:
        section["ndp"]["sgd_small_tables"] = small
        section["median_step_ms"]["ndp_sgd_small_tables"] = 1e3 * median(small["step_s"])
        section["median_cpu_ms_per_step"]["ndp_sgd_small_tables"] = 1e3 * median(small["cpu_s"])
        if "sgd" in ours_ms:
            section["slowdown_full_vs_0p1x_rows"] = ours_ms["sgd"] / section["median_step_ms"]["ndp_sgd_small_tables"]
    if wall.get("speedup_vs_torch_embeddingbag"):
        section["speedup_vs_torch_embeddingbag"] = wall["speedup_vs_torch_embeddingbag"]
    if large is not None:
        section["ndp"]["sgd_large_tables"] = large
        # In the 10x worker, interleaved with its rounds on fresh draws over the 10x tables: the headline
        # tables with the headline's lookups, and the headline's lookups on the 10x tables.
        ms = {k: 1e3 * median(large[f"{k}_step_s"]) for k in ("headline", "headline_ids")}
        cpu_ms = {k: 1e3 * median(large[f"{k}_cpu_s"]) for k in ("headline", "headline_ids")}
        large_ms, large_cpu_ms = 1e3 * median(large["interleaved_step_s"]), 1e3 * median(large["interleaved_cpu_s"])
        section["median_step_ms"].update({"ndp_sgd_large_tables": large_ms, "ndp_sgd_headline_tables_in_10x_process":
                                          ms["headline"], "ndp_sgd_large_tables_headline_ids": ms["headline_ids"]})  # fmt: skip
        section["slowdown_at_10x_rows"] = large_ms / ms["headline"]
        section["slowdown_at_10x_rows_cpu_time"] = large_cpu_ms / cpu_ms["headline"]
        section["slowdown_at_10x_rows_same_ids"] = ms["headline_ids"] / ms["headline"]
        section["slowdown_at_10x_rows_same_ids_cpu_time"] = cpu_ms["headline_ids"] / cpu_ms["headline"]
        section["peak_rss_mb_at_10x_rows"] = large["peak_rss_mb"]
    return section


if __name__ == "__main__":
    raise SystemExit(main())
