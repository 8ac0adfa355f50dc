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


def torch_worker(indices_path: str, out_path: str, steps: int, rounds: int, warmup: int, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    with np.load(indices_path) as data:
        sizes = [int(x) for x in data["sizes"]]
        batches = [data[f"batch_{i}"] for i in range(int(data["count"]))]  # (B, T) int
        dim = int(data["dim"])
    batch_size, tables = batches[0].shape
    results: dict = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}

    # PyTorch EmbeddingBag, one per table, sparse gradients, SGD.
    bags = [torch.nn.EmbeddingBag(n, dim, mode="sum", sparse=True) for n in sizes]
    params = [p for b in bags for p in b.parameters()]
    sgd = torch.optim.SGD(params, lr=LEARNING_RATE)
    offsets = torch.arange(batch_size, dtype=torch.int64)
    torch_inputs = [[torch.from_numpy(np.ascontiguousarray(b[:, t]).astype(np.int64)) for t in range(tables)]
                    for b in batches]  # fmt: skip
    step_counter = [0]

    def embedding_bag_steps(n):
        for _ in range(n):
            ids = torch_inputs[step_counter[0] % len(torch_inputs)]
            step_counter[0] += 1
            pooled = torch.cat([bag(ids[t], offsets) for t, bag in enumerate(bags)], dim=1)
            loss = 0.5 * (pooled * pooled).sum() / batch_size
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            sgd.step()

    embedding_bag_steps(warmup)
    cpu = results.setdefault("cpu_s", {})
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
        # Table-major concatenation of the lookups, offsets over (table, example) bags.
        tbe_inputs = []
        for b in batches:
            values = torch.from_numpy(np.ascontiguousarray(b.T).reshape(-1).astype(np.int64))
            tbe_inputs.append((values, torch.arange(tables * batch_size + 1, dtype=torch.int64)))
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
               warmup: int, paired: dict[str, str] | None = None) -> None:
    """Time ndp's step in a fresh process, so its peak RSS is the step's own (runtime + tables + batch).

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

    from ndp.embedding import plan_sharding
    from ndp.train import Batch, EmbeddingOptimizer, init_train_state, make_train_step, shard_batch, storage_mesh

    def load(path):
        with np.load(path) as data:
            batches = [data[f"batch_{i}"] for i in range(int(data["count"]))]
            return [int(x) for x in data["sizes"]], batches, int(data["dim"])

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

    def device_batches(batches):
        batch_size, tables = batches[0].shape
        return [
            shard_batch(mesh, Batch(np.zeros((batch_size, 0), np.float32), b.astype(np.int32)[:, :, None],
                                    np.ones((batch_size, tables), np.int32), np.zeros(batch_size, np.float32)))
            for b in batches
        ]  # fmt: skip

    def build(sizes, batches, holder=None):
        """A ``run(n)`` that takes ``n`` steps, its holder (state and step) and the compiled step's temporaries."""
        plan = plan_sharding(sizes, dim, devices, "rw" if devices > 1 else "tw")
        inputs = device_batches(batches)
        if holder is None:
            state, graphdef = init_train_state(mesh, plan, SquaredNormHead(), tx, jax.random.key(0),
                                               embedding_optimizer)  # fmt: skip
            step = make_train_step(mesh, plan, graphdef, lambda p, y: jnp.mean(p), tx, embedding_optimizer)
            holder = {"state": state, "step": step, "plan": plan}
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
              "anon_huge_pages_mb": anon_huge_pages_mb()}  # fmt: skip
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


def make_batches(sizes, batch_size, count, seed, zipf):
    from ndp.data.synthetic import SyntheticConfig, batch_at

    cfg = SyntheticConfig(tuple(sizes), batch_size=batch_size, zipf_exponent=zipf, seed=seed)
    return [np.stack([t.values for t in batch_at(cfg, i).tables], axis=1) for i in range(count)]


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


def save_indices(path, sizes, dim: int, batches) -> None:
    """The index batches of a run and its table sizes, as the workers read them."""
    np.savez(path, sizes=np.asarray(sizes), dim=dim, count=len(batches), **{f"batch_{i}": b for i, b in enumerate(batches)})


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
    small = merge([run[2] for run in runs])
    large = merge([run[3] for run in runs]) if runs[0][3] is not None else None
    return peers, ours, small, large


def available_memory_mb() -> float | None:
    """``MemAvailable`` of the machine (Linux), in MB."""
    return proc_field_mb("/proc/meminfo", "MemAvailable")


def parse_threads(text: str) -> list[int]:
    from runkit.checks import positive_ints  # here, not at the top: the peers' environment has no runkit

    return list(positive_ints("--torch-threads", text))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row-cap", type=int, default=1_000_000)
    parser.add_argument("--large-scale", type=float, default=10.0,
                        help="table scale of the 'large' ndp SGD run (slowdown_at_10x_rows); 0 skips it")
    parser.add_argument("--small-scale", type=float, default=0.1,
                        help="table scale of the 'small' ndp SGD run (secondary figure)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2048)
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
                        help="only ndp's SGD step at both table sizes (e.g. to test larger tables)")
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
    args = parser.parse_args(argv)
    if args.worker == "torch":
        torch_worker(args.indices, args.worker_out, args.steps, args.rounds, args.warmup, args.threads)
        return 0
    if args.worker == "ndp":
        paired = dict(item.split("=", 1) for item in args.paired.split(",")) if args.paired else None
        ndp_worker(args.indices, args.worker_out, args.optimizer, args.devices, args.steps, args.rounds, args.warmup,
                   paired)  # fmt: skip
        return 0
    try:
        threads = [] if args.no_peers else parse_threads(args.torch_threads)
    except ValueError as error:
        parser.error(str(error))
    chosen = args.headline_threads
    if chosen != "best" and (not chosen.isdigit() or int(chosen) not in threads):
        parser.error(f"--headline-threads: expected 'best' or one of --torch-threads {threads}, "
                     f"got {args.headline_threads!r}")  # fmt: skip
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive int, got {args.repeats}")
    from ndp.configs import criteo_kaggle_table_sizes, scale_table_sizes

    sizes = criteo_kaggle_table_sizes(row_cap=args.row_cap)
    small_sizes = scale_table_sizes(sizes, scale=args.small_scale)
    large_sizes = scale_table_sizes(sizes, scale=args.large_scale) if args.large_scale > 0 else None
    large_skipped = None if args.large_scale > 0 else "--large-scale 0"
    if large_sizes is not None:
        # The slab plus its step's buffers, the runtime and a margin for the other users of the machine.
        need_mb = sum(large_sizes) * args.dim * 4 / 2**20 * 1.1 + 2048
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
        done = subprocess.run(cmd, env=worker_env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 or not out.is_file():
            print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
            hint = " (install torch==2.13.0 and fbgemm-gpu-cpu==1.8.0, or pass --torch-python)" if kind == "torch" else ""
            raise SystemExit(f"{kind} worker failed with python {python!r}{hint}")
        return {**json.loads(out.read_text()), "load_avg_before": load_before, "load_avg_after": load_average()}

    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        indices, small_indices = Path(tmp) / "indices.npz", Path(tmp) / "small_indices.npz"
        large_indices, large_same_indices = Path(tmp) / "large_indices.npz", Path(tmp) / "large_same_indices.npz"
        for path, table_sizes in ((indices, sizes), (small_indices, small_sizes), (large_indices, large_sizes)):
            if table_sizes is None:
                continue
            batches = make_batches(table_sizes, args.batch_size, args.index_batches, 0, args.zipf)
            save_indices(path, table_sizes, args.dim, batches)
            if path == indices and large_sizes is not None:
                # The headline's lookups (all in range of the larger tables) on the 10x tables.
                save_indices(large_same_indices, large_sizes, args.dim, batches)
        # Each framework in its own process, one after the other, on the same index batches; with
        # --repeats the whole sequence runs again, so slow phases of a shared machine hit all alike.
        optimizers = ("sgd",) if args.no_peers else ("sgd", "rowwise_adagrad")
        runs = []
        for _ in range(args.repeats):
            peers = {str(n): worker("torch", indices, tmp, "--threads", str(n)) for n in threads}
            ours = {opt: worker("ndp", indices, tmp, "--optimizer", opt) for opt in optimizers}
            small = worker("ndp", small_indices, tmp, "--optimizer", "sgd")
            large = None
            if large_sizes is not None:
                # 10x tables; the headline tables and the headline's lookups on the 10x tables in the
                # same process, rounds interleaved, for the ratios.
                large = worker("ndp", large_indices, tmp, "--optimizer", "sgd", "--paired",
                               f"headline={indices},headline_ids={large_same_indices}")  # fmt: skip
            runs.append((peers, ours, small, large))
        peers, ours, small, large = merge_repeats(runs)
    load_end = load_average()
    median = statistics.median
    ours_ms = {opt: 1e3 * median(o["step_s"]) for opt, o in ours.items()}
    ours_cpu_ms = {opt: 1e3 * median(o["cpu_s"]) for opt, o in ours.items()}

    def ratios(peer: dict, cpu: bool = False) -> dict:
        """Peer step time over ours (> 1: ndp is faster), wall-clock or process CPU time."""

        def peer_ms(name):
            if cpu:
                xs = peer.get("cpu_s", {}).get(name)
            else:
                xs = peer.get(f"{name}_s")
            return 1e3 * median(xs) if xs else None

        mine = ours_cpu_ms if cpu else ours_ms
        out = {}
        for key, name, opt in (("speedup_vs_fbgemm_sgd", "fbgemm_sgd", "sgd"),
                               ("speedup_vs_fbgemm_rowwise_adagrad", "fbgemm_rowwise_adagrad", "rowwise_adagrad"),
                               ("speedup_vs_torch_embeddingbag", "torch_embeddingbag_sgd", "sgd")):  # fmt: skip
            theirs = peer_ms(name)
            out[key] = theirs / mine[opt] if theirs is not None and opt in mine else None
        return out

    if args.headline_threads == "best":
        # Each peer timing at its fastest thread setting: never flattering to ndp, whatever the load.
        fastest = {}  # timing key -> (torch threads, per-step times); the first setting wins ties
        for n, peer in peers.items():
            for key, value in peer.items():
                if key.endswith("_s") and key != "cpu_s" and value:
                    if key not in fastest or median(value) < median(fastest[key][1]):
                        fastest[key] = (n, value)
        headline_peer = {key: value for key, (_, value) in fastest.items()}
        headline_threads = {key[:-2]: n for key, (n, _) in fastest.items()}
    else:
        headline_peer = peers[args.headline_threads]
        headline_threads = {
            key[:-2]: args.headline_threads for key in headline_peer if key.endswith("_s") and key != "cpu_s"
        }
    small_ms, small_cpu_ms = 1e3 * median(small["step_s"]), 1e3 * median(small["cpu_s"])
    large_ms = 1e3 * median(large["interleaved_step_s"]) if large else None
    large_cpu_ms = 1e3 * median(large["interleaved_cpu_s"]) if large else None
    # In the 10x worker, interleaved with the 10x rounds: the headline tables, and the headline's lookups on
    # the 10x tables.
    paired_ms = {k: 1e3 * median(large[f"{k}_step_s"]) for k in ("headline", "headline_ids")} if large else {}
    paired_cpu_ms = {k: 1e3 * median(large[f"{k}_cpu_s"]) for k in ("headline", "headline_ids")} if large else {}
    headline = {
        **ratios(headline_peer),
        "slowdown_at_10x_rows": paired_ms["headline_ids"] / paired_ms["headline"] if large else None,
        "slowdown_at_10x_rows_new_draws": large_ms / paired_ms["headline"] if large else None,
        "peak_rss_mb": ours["sgd"]["peak_rss_mb"],
        "peak_rss_mb_at_10x_rows": large["peak_rss_mb"] if large else None,
    }
    report = {
        "workload": {"tables": len(sizes), "rows": int(sum(sizes)), "small_rows": int(sum(small_sizes)),
                     "large_rows": int(sum(large_sizes)) if large_sizes else None, "large_scale": args.large_scale,
                     "small_scale": args.small_scale, "large_skipped": large_skipped,
                     "dim": args.dim, "batch_size": args.batch_size, "zipf": args.zipf, "row_cap": args.row_cap,
                     "devices": args.devices, "steps": args.steps, "rounds": args.rounds},  # fmt: skip
        "machine": {"cpus": os.cpu_count(), "load_avg_start": load_start, "load_avg_end": load_end,
                    "huge_pages": args.huge_pages,
                    "worker_glibc_tunables": worker_env.get("GLIBC_TUNABLES")},  # fmt: skip
        "headline_torch_threads": headline_threads,
        "ndp": {**ours, "sgd_small_tables": small, "sgd_large_tables": large},
        "peers_by_torch_threads": peers,
        "median_step_ms": {
            **{f"ndp_{opt}": ms for opt, ms in ours_ms.items()},
            "ndp_sgd_small_tables": small_ms,
            **({"ndp_sgd_large_tables": large_ms, "ndp_sgd_headline_tables_in_10x_process": paired_ms["headline"],
                "ndp_sgd_large_tables_headline_ids": paired_ms["headline_ids"]} if large else {}),
            **{f"{k[:-2]}_{n}thread": 1e3 * median(v) for n, p in peers.items() for k, v in p.items()
               if k.endswith("_s") and k != "cpu_s"},
        },  # fmt: skip
        "median_cpu_ms_per_step": {
            **{f"ndp_{opt}": ms for opt, ms in ours_cpu_ms.items()},
            "ndp_sgd_small_tables": small_cpu_ms,
            **({"ndp_sgd_large_tables": large_cpu_ms, "ndp_sgd_headline_tables_in_10x_process": paired_cpu_ms["headline"],
                "ndp_sgd_large_tables_headline_ids": paired_cpu_ms["headline_ids"]} if large else {}),
            **{f"{k}_{n}thread": 1e3 * median(v) for n, p in peers.items() for k, v in p.get("cpu_s", {}).items()},
        },  # fmt: skip
        "slowdown_at_10x_rows_cpu_time": paired_cpu_ms["headline_ids"] / paired_cpu_ms["headline"] if large else None,
        "slowdown_at_10x_rows_new_draws_cpu_time": large_cpu_ms / paired_cpu_ms["headline"] if large else None,
        # The 10x worker's own rounds over the headline worker's (separate processes, not interleaved).
        "slowdown_at_10x_rows_separate_processes": 1e3 * median(large["step_s"]) / ours_ms["sgd"] if large else None,
        # Secondary: headline tables (340 MB) over 10x smaller ones (34 MB, about the L3 cache).
        "slowdown_full_vs_0p1x_rows": ours_ms["sgd"] / small_ms,
        "slowdown_full_vs_0p1x_rows_cpu_time": ours_cpu_ms["sgd"] / small_cpu_ms,
        "speedups_by_torch_threads": {
            n: {"wall": ratios(p), "cpu_time": ratios(p, cpu=True)} for n, p in peers.items()
        },
        "headline": headline,
    }
    for name, ms in report["median_step_ms"].items():
        print(f"{name:40s} {ms:9.2f} ms/step")
    for n, r in report["speedups_by_torch_threads"].items():
        wall = ", ".join(f"{k[11:]} {v:.2f}x" for k, v in r["wall"].items() if v)
        cpu = ", ".join(f"{k[11:]} {v:.2f}x" for k, v in r["cpu_time"].items() if v)
        print(f"torch/FBGEMM with {n} thread(s): wall {wall} | CPU time {cpu}")
    sized = {**ours, "sgd at 10x rows": large} if large else ours
    if large_skipped:
        print(f"ndp at {args.large_scale}x rows: skipped ({large_skipped})")
    for opt, o in sized.items():
        print(f"ndp {opt}: tables {o['table_mb']:.0f} MB (with optimizer state {o['slab_and_optimizer_state_mb']:.0f} MB), "
              f"step temporaries {o['temp_bytes'] / 2**20:.1f} MB, runtime RSS {o['rss_runtime_mb']:.0f} MB, "
              f"peak RSS {o['peak_rss_mb']:.0f} MB, huge pages {o.get('anon_huge_pages_mb')} MB")  # fmt: skip
    print(f"load average (1, 5, 15 min): start {load_start}, end {load_end}; huge pages {args.huge_pages}; "
          f"headline ratios against torch threads {headline_threads}")  # fmt: skip
    from runkit import atomic_write_json  # here, not at the top: the torch workers run in a venv without jax

    atomic_write_json(args.out, report)
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
