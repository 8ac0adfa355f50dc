"""DLRM training step on 1 process (1 core) vs 2 processes (1 core each), and the exchange volume of each layout.

Workload: the Kaggle DLRM (:func:`ndp.configs.criteo_kaggle_config`: 26 tables capped
at ``--row-cap`` rows, dim 16, bottom MLP 13-512-256-64-16, dot interaction, top MLP
512-256-1), one-hot lookups with Zipf-skewed ids (:mod:`ndp.data.synthetic`,
exponent ``--zipf``), global batch ``--batch-size``, binary cross-entropy, row-wise
Adagrad on the tables and Adam on the dense head, with the learning rates of
:class:`ndp.trainer.TrainOptions` (``EMBEDDING_LR``, ``DENSE_LR`` below), i.e. the
step :func:`ndp.train.make_train_step` builds for ndp's trainer. Also the embedding
step alone (no MLPs): lookup and sparse row-wise Adagrad update with loss
``0.5 * sum(pooled^2) / B``, as ``benchmarks/embedding_train.py``'s ndp worker does.

Settings compared, same global batch, same id batches (drawn once, seeded, cycled):

* **1 process**: one CPU device, the process pinned to one core;
* **2 processes**: ``jax.distributed`` on ``127.0.0.1`` (CPU collectives: gloo), one CPU
  device each (``jax_num_cpu_devices=1``), a 2-device ``storage`` mesh with the
  ``--layout`` plan (default ``rw``), each process pinned to its own core.

Pinning: every timing worker pins all its threads to its core
(``os.sched_setaffinity``) before importing JAX, so every thread XLA:CPU starts later
inherits that core; ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` keeps Eigen's
matmuls on the calling thread, and ``OMP/OPENBLAS/MKL_NUM_THREADS=1`` keep numpy to
one thread. (The ``intra_op_parallelism_threads=1`` often quoted with that flag is a
TensorFlow session option, not an XLA flag: without ``--`` XLA ignores it, with
``--`` XLA aborts on an unknown flag, so it is not passed.) The JSON checks the
pinning: per round, process CPU time over wall time (at most ~1.0 on one core),
each worker's affinity, thread count and the cores its threads last ran on, and the
CPU time it burns while idle between rounds. The layout comparison (below) runs in
one unpinned process afterwards.

Headline (the last printed line):

* ``scaling_2proc``: 2-process samples/s over 1-process samples/s of the full step
  (median step times; > 1: the second core helps; 2.0 would be perfect scaling);
* ``scaling_2proc_embedding_only``: the same for the embedding step alone;
* ``collective_share``: fraction of the 2-process full step's wall time spent in
  collective ops, from a ``jax.profiler`` trace of ``--profile-steps`` steps in each
  process: the trace's per-op events (XLA:CPU records one per executed HLO
  instruction, named after it) are matched to the compiled step's HLO, and the union
  of the intervals of its ``all-to-all``, ``all-gather``, ``reduce-scatter``,
  ``all-reduce`` and ``collective-permute`` ops is divided by the traced steps' wall
  time; the mean over the two processes. This includes the time a process waits in
  a collective for its peer (load imbalance, or a peer descheduled by other work on
  its core, shows up as collective time), so the JSON also has
  ``collective_share_without_wait``: for each executed collective only the shortest
  of its durations in the two processes (the process that arrives last waits for
  nobody), over the traced wall time. The embedding step's shares and the
  per-process values are in the JSON too;
* ``exchange_bytes_per_device``: bytes one device sends to the others per step with
  the default layout (``rw``) on ``--layout-devices`` (8) devices, the max over
  devices, from ``ndp.embedding.route_stats(plan, ids, lengths)`` averaged over the
  id batches; every layout's per-device list (``tw``, ``rw``, ``cw``, and ``twrw``
  where ndp has it) is in the JSON. Where ``route_stats`` does not exist, these
  are ``null`` with the reason. As a cross-check that needs no ``route_stats``, each
  layout's step is also compiled on 8 emulated CPU devices in one process
  (``jax_num_cpu_devices``) and the collectives of its HLO are summed
  (``hlo_collectives``: bytes a device sends, from the per-device result shapes:
  all-to-all and all-gather ``(S-1)/S`` of the result, reduce-scatter ``S-1``
  times it, all-reduce ``2(S-1)/S`` as a ring does, each op counted once; compiled
  for the first id batch, whose bucket capacities may differ from the mean's), and,
  with ``--layout-steps``, a few steps are timed there (emulated devices share the
  machine's cores: relative figures only). ``route_stats`` counts the embedding
  exchange only; the compiled step also all-reduces the dense head's gradients
  (and, for ``cw`` with row-wise Adagrad, one float per lookup), listed by op.

Timing: the workers stay alive for all rounds of a repeat and the controller times
them alternately: round ``r`` runs ``--steps`` steps of the full model on 1 process,
then on 2 processes (the order flipped on odd rounds), then the same for the
embedding step, so that every setting sees the same phases of the machine's load
and no compilation or table initialisation falls between the rounds compared.
``--repeats`` launches fresh workers again (new processes, new allocations) and
pools the rounds. Each worker compiles and warms up (``--warmup`` steps, and at
least one pass over all id batches, so that every batch shape the step may
specialise on is compiled) before the first round, one setting after the other, and
the 2-process workers meet at a barrier (``sync_global_devices``) before each timed
round. A round's step time is its wall time (``perf_counter`` around the steps and
``jax.block_until_ready`` of the state) over ``--steps``; for 2 processes, the
slower process's. The figures are the median over all rounds with min and max;
process CPU time per step, the load average before and after every round and
every worker, peak RSS and transparent huge pages per worker are recorded next to
them. Batches are fed as host (numpy) arrays in an ``ndp.train.Batch``, the same
global batch in every process: the step computes the routing capacities and places
them itself, inside the timed region (``--feed sharded``, for ``--layout cw`` only,
places them with :func:`ndp.train.shard_batch` beforehand instead, outside it).
``--huge-pages on`` (default) runs the
workers with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` as ``embedding_train.py`` does.

Usage::

    python benchmarks/embedding_scaling.py             # full size; needs 2 quiet cores
    python benchmarks/embedding_scaling.py --preset quick   # smoke run: small tables, few short rounds
    python benchmarks/embedding_scaling.py --row-cap 100000 --rounds 3 --repeats 1 --out /tmp/s.json

Writes ``benchmarks/results/embedding_scaling.json`` (``--out``; ``--preset quick``:
``embedding_scaling_quick.json``) atomically: the settings, the machine, every round
of every worker, the profiles, the layouts and the headline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.embedding_train import load_average, proc_field_mb  # noqa: E402
from runkit import UsageError, check_choice, check_positive  # noqa: E402
from runkit.config_cli import ConfigOptions  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "embedding_scaling.json"
#: ndp.trainer.TrainOptions' defaults: Adam(W) on the dense head, row-wise Adagrad on the tables.
DENSE_LR = 1e-3
EMBEDDING_LR = 0.05
EMBEDDING_OPTIMIZER = "rowwise_adagrad"
XLA_ONE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false"
TAG = "@@embedding_scaling@@ "  # prefix of the workers' replies on stdout
MODELS = ("full", "embedding")
COLLECTIVES = ("all-to-all", "all-gather", "reduce-scatter", "all-reduce", "collective-permute", "collective-broadcast")
WORKER_TIMEOUT_S = 3600.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """The run's settings; every field is a flag (``--row-cap`` ...), ``--preset`` picks one of :data:`PRESETS`.

    Attributes:
      row_cap: rows of the largest tables (Criteo Kaggle sizes clipped at this).
      batch_size: global batch (a multiple of 2 and of --layout-devices).
      zipf: Zipf exponent of the ids.
      layout: plan of the 2-process run (tw, rw, cw, twrw where ndp has it).
      steps: steps per timed round.
      rounds: timed rounds per setting and model in each repeat (interleaved).
      repeats: launches of fresh workers; the rounds of all repeats are pooled.
      warmup: untimed steps after compilation (at least one pass over the id batches).
      index_batches: distinct id batches, drawn once and cycled.
      profile_steps: steps traced with jax.profiler in the 2-process run (0: no trace).
      layout_devices: emulated CPU devices of the layout comparison (0: skip it).
      layout_steps: timed steps per layout on the emulated devices (0: compile only).
      cores: two cores: the 1-process worker runs on the first, the 2-process workers on both.
      huge_pages: workers ask glibc's malloc for transparent huge pages (on/off).
      feed: host: numpy batches to the step; sharded: shard_batch first (outside the timed region).
      seed: seed of the id batches and of the parameters.
      out: results JSON.
    """

    row_cap: int = 1_000_000
    batch_size: int = 4096
    zipf: float = 0.9
    layout: str = "rw"
    steps: int = 20
    rounds: int = 5
    repeats: int = 2
    warmup: int = 3
    index_batches: int = 8
    profile_steps: int = 5
    layout_devices: int = 8
    layout_steps: int = 3
    cores: str = "0,1"
    huge_pages: str = dataclasses.field(default="on", metadata={"choices": ("on", "off")})
    feed: str = dataclasses.field(default="host", metadata={"choices": ("host", "sharded")})
    seed: int = 0
    out: str = str(DEFAULT_OUT)

    def __post_init__(self):
        check_choice("huge_pages", self.huge_pages, ("on", "off"))
        check_choice("feed", self.feed, ("host", "sharded"))
        if self.feed == "sharded" and self.layout != "cw":
            raise UsageError(f"feed: 'sharded' works with --layout cw only (a routed layout sizes its buckets from the "
                             f"host batch, which a batch spread over 2 processes is not), got layout {self.layout!r}")  # fmt: skip
        for name in ("row_cap", "batch_size", "steps", "rounds", "repeats", "index_batches"):
            check_positive(name, getattr(self, name))
        for name in ("warmup", "profile_steps", "layout_devices", "layout_steps", "seed"):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_positive("zipf", self.zipf, allow_zero=True)
        if self.batch_size % 2 or (self.layout_devices and self.batch_size % self.layout_devices):
            raise UsageError(f"batch_size: expected a multiple of 2 and of --layout-devices, got {self.batch_size}")


#: ``--preset`` names: ``full`` (the default, the published run) and ``quick`` (a smoke run: small
#: tables, few short rounds, written beside the full results).
PRESETS = {
    "full": Settings(),
    "quick": Settings(row_cap=10_000, batch_size=512, steps=5, rounds=3, repeats=1, warmup=2, index_batches=4,
                      profile_steps=3, layout_steps=0, out=str(DEFAULT_OUT.with_name(DEFAULT_OUT.stem + "_quick.json"))),
}  # fmt: skip


def summary(xs) -> dict | None:
    """Median, min, max (and count) of a list of numbers."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# ------------------------------------------------------------------------------------------------
# Compiled HLO and profiler traces


_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s*(?P<shape>.+?)\s(?P<op>[a-z][a-z0-9-]*)\((?P<rest>.*)$"
)
_ARRAY = re.compile(r"\b(pred|s4|u4|s8|u8|s16|u16|f16|bf16|s32|u32|f32|s64|u64|f64|c64|c128)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}  # fmt: skip


def _collective_kind(opcode: str) -> str | None:
    base = opcode.removesuffix("-start")
    return base if base in COLLECTIVES and not opcode.endswith("-done") else None


def hlo_instructions(text: str) -> tuple[str | None, dict[str, dict]]:
    """The module name of compiled HLO text and ``{instruction name: {"opcode", "shape", "rest"}}``."""
    module = re.search(r"^HloModule\s+([^\s,]+)", text, re.MULTILINE)
    out = {}
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            out[m["name"].lstrip("%")] = {"opcode": m["op"], "shape": m["shape"], "rest": m["rest"]}
    return (module[1] if module else None), out


def _group_size(rest: str, devices: int) -> int:
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", rest)
    if iota:
        return int(iota[2])
    listed = re.search(r"replica_groups=\{\{([0-9,]*)\}", rest)
    if listed and listed[1]:
        return len(listed[1].split(","))
    return devices


def hlo_collectives(text: str, devices: int) -> dict:
    """Collectives of compiled (SPMD-partitioned, so per-device) HLO: count, result bytes and bytes sent.

    Bytes a device sends to the others, from the result shape ``R`` and group size
    ``S``: all-to-all and all-gather ``R (S-1)/S``, reduce-scatter ``R (S-1)``,
    all-reduce ``2 R (S-1)/S`` (ring), collective-permute and -broadcast ``R``; an
    op inside a loop is counted once.
    """
    _, instructions = hlo_instructions(text)
    out: dict[str, dict] = {}
    for ins in instructions.values():
        kind = _collective_kind(ins["opcode"])
        if kind is None:
            continue
        arrays = [(_BYTES[t], [int(d) for d in dims.split(",") if d]) for t, dims in _ARRAY.findall(ins["shape"])]
        sizes = [b * int(np.prod(d, dtype=np.int64)) for b, d in arrays]
        if ins["opcode"].endswith("-start") and kind == "all-gather" and sizes:
            sizes = sizes[-1:]  # (operand, result)
        result = sum(sizes)
        s = _group_size(ins["rest"], devices)
        factor = {"all-to-all": (s - 1) / s, "all-gather": (s - 1) / s, "reduce-scatter": s - 1,
                  "all-reduce": 2 * (s - 1) / s}.get(kind, 1.0)  # fmt: skip
        entry = out.setdefault(kind, {"count": 0, "result_bytes": 0, "sent_bytes_per_device": 0})
        entry["count"] += 1
        entry["result_bytes"] += result
        entry["sent_bytes_per_device"] += int(round(result * factor)) if s > 1 else 0
    return {"by_op": out, "sent_bytes_per_device": sum(e["sent_bytes_per_device"] for e in out.values())}


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total * 1e-9


def collective_time(trace_dir: str, module: str | None, instructions: dict[str, dict]) -> dict:
    """Time in the compiled step's collective ops, from the ``.xplane.pb`` trace under ``trace_dir``."""
    import jax

    files = sorted(Path(trace_dir).rglob("*.xplane.pb"))
    if not files:
        raise RuntimeError(f"no .xplane.pb under {trace_dir}")
    data = jax.profiler.ProfileData.from_file(str(files[-1]))
    spans: dict[str, list[tuple[float, float]]] = {}
    busy: list[tuple[float, float]] = []
    events: list[tuple[float, str, float]] = []
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" not in stats or (module and stats.get("hlo_module") != module):
                    continue
                ins = instructions.get(str(stats["hlo_op"]))
                interval = (event.start_ns, event.start_ns + event.duration_ns)
                busy.append(interval)
                kind = _collective_kind(ins["opcode"]) if ins else None
                if kind:
                    spans.setdefault(kind, []).append(interval)
                    events.append((event.start_ns, str(stats["hlo_op"]), event.duration_ns))
    by_op = {kind: _union_seconds(v) for kind, v in spans.items()}
    total = _union_seconds([x for v in spans.values() for x in v])
    ordered = [[name, duration] for _, name, duration in sorted(events)]
    return {"collective_s": total, "collective_s_by_op": by_op, "executed_ops_s": _union_seconds(busy),
            "events": len(busy), "collective_events": ordered}  # fmt: skip


def collective_share_without_wait(processes: list[dict]) -> float | None:
    """Share of the traced wall time in collectives counting, for each executed collective, only the
    shortest of its durations over the processes.

    Every process runs the same collectives in the same order; the process that reaches one last
    waits for no peer, so its duration is the exchange itself, and the others' surplus is time spent
    waiting for it (load imbalance or a descheduled peer). None when the traces do not line up.
    """
    lists = [p.get("collective_events") for p in processes]
    if not lists or any(not x for x in lists) or len({len(x) for x in lists}) != 1:
        return None
    if any(len({e[0] for e in group}) != 1 for group in zip(*lists)):
        return None
    shortest = sum(min(e[1] for e in group) for group in zip(*lists)) * 1e-9
    return shortest / statistics.mean(p["traced_wall_s"] for p in processes)


# ------------------------------------------------------------------------------------------------
# Workers (run in subprocesses)


def _thread_cpus() -> list[int]:
    """Cores the threads of this process last ran on (``/proc/self/task/*/stat`` field 39)."""
    cpus = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            cpus.add(int(fields[36]))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(cpus)


def _process_info() -> dict:
    return {"affinity": sorted(os.sched_getaffinity(0)), "threads": len(os.listdir("/proc/self/task")),
            "thread_last_cpus": _thread_cpus(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "anon_huge_pages_mb": proc_field_mb("/proc/self/smaps_rollup", "AnonHugePages")}  # fmt: skip


def pin_process(core: int) -> None:
    """Pin every thread of this process (numpy's, started at import, included) to ``core``."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), {core})
        except OSError:  # a thread that has exited since
            pass
    os.sched_setaffinity(0, {core})


def _load_batches(path: str):
    with np.load(path) as data:
        sizes = tuple(int(x) for x in data["sizes"])
        count = int(data["count"])
        batches = [(data[f"dense_{i}"], data[f"ids_{i}"], data[f"labels_{i}"]) for i in range(count)]
    return sizes, batches


class _Model:
    """One step function with its state, host batches and compiled HLO."""

    def __init__(self, name, mesh, plan, head, tx, loss_fn, host_batches, feed, seed):
        import jax

        from ndp.train import EmbeddingOptimizer, init_train_state, make_train_step, shard_batch

        self.name, self.mesh = name, mesh
        embedding_optimizer = EmbeddingOptimizer(EMBEDDING_OPTIMIZER, EMBEDDING_LR)
        self.state, graphdef = init_train_state(mesh, plan, head, tx, jax.random.key(seed), embedding_optimizer)
        self.step = make_train_step(mesh, plan, graphdef, loss_fn, tx, embedding_optimizer)
        self.host_batches = host_batches
        self.feed = feed
        self.inputs = host_batches if feed == "host" else [shard_batch(mesh, b) for b in host_batches]
        self.counter = 0
        self.loss = None
        start = time.perf_counter()
        self.run(1)
        self.first_step_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = self.step.lower(self.state, self.inputs[0]).compile()
        self.lower_compile_s = time.perf_counter() - start
        self.hlo_text = compiled.as_text()
        self.module, self.instructions = hlo_instructions(self.hlo_text)
        try:
            self.temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
        except Exception:  # noqa: BLE001 - memory analysis is optional
            self.temp_bytes = None

    def run(self, n: int) -> None:
        import jax

        state = self.state
        for _ in range(n):
            state, self.loss = self.step(state, self.inputs[self.counter % len(self.inputs)])
            self.counter += 1
        jax.block_until_ready((state, self.loss))
        self.state = state

    def info(self, devices: int) -> dict:
        state_mb = (self.state.slab.nbytes + self.state.slab_state.nbytes) / 2**20
        return {"feed": self.feed, "first_step_s": self.first_step_s,
                "lower_compile_s": self.lower_compile_s, "temp_bytes": self.temp_bytes, "hlo_module": self.module,
                "hlo_collectives": hlo_collectives(self.hlo_text, devices),
                "slab_and_optimizer_state_mb": state_mb}  # fmt: skip


def _build_models(mesh, plan, sizes, batches, feed, seed, models=MODELS) -> dict:
    """The full DLRM step and the embedding-only step on ``mesh``, their host batches built from ``batches``."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from ndp.configs import criteo_kaggle_config
    from ndp.model import DLRMHead
    from ndp.train import Batch, bce_loss

    class SquaredNormHead(nnx.Module):
        """Per example ``0.5 * sum(pooled^2)``; with a mean loss, ``0.5 * sum(pooled^2) / B``."""

        def __init__(self):
            self.scale = nnx.Param(jnp.ones((), jnp.float32))

        def __call__(self, dense, pooled):
            return 0.5 * self.scale[...] * jnp.sum(pooled * pooled, axis=(1, 2))

    lengths = np.ones(batches[0][1].shape[:2], np.int32)
    out = {}
    if "full" in models:
        config = dataclasses.replace(criteo_kaggle_config(), table_sizes=tuple(sizes))
        full = [Batch(d, i, lengths, y) for d, i, y in batches]
        out["full"] = _Model("full", mesh, plan, DLRMHead(config, rngs=nnx.Rngs(seed)),
                             optax.adamw(DENSE_LR, weight_decay=0.0), bce_loss, full, feed, seed)  # fmt: skip
    if "embedding" in models:
        empty = np.zeros((batches[0][1].shape[0], 0), np.float32)
        embedding = [Batch(empty, i, lengths, y) for _, i, y in batches]
        out["embedding"] = _Model("embedding", mesh, plan, SquaredNormHead(), optax.set_to_zero(),
                                  lambda p, y: jnp.mean(p), embedding, feed, seed)  # fmt: skip
    return out


def _reply(message: dict) -> None:
    print(TAG + json.dumps(message), flush=True)


def train_worker(args) -> None:
    """A timing worker: pinned, builds both models, then serves the controller's commands on stdin."""
    pin_process(args.core)  # before JAX exists, so its thread pools see one core
    import jax

    jax.config.update("jax_num_cpu_devices", 1)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                                   process_id=args.process_id, initialization_timeout=300)  # fmt: skip
    from jax.experimental import multihost_utils

    from ndp.embedding import plan_sharding
    from ndp.train import storage_mesh

    settings = Settings(**json.loads(args.settings))
    sizes, batches = _load_batches(args.batches)
    devices = jax.device_count()
    mesh = storage_mesh(devices)
    # On one device every layout holds every table whole; rw is the plain one.
    plan = plan_sharding(sizes, 16, devices, settings.layout if devices > 1 else "rw")
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    models = _build_models(mesh, plan, sizes, batches, settings.feed, settings.seed)
    for model in models.values():  # warm-up: every id batch at least once
        model.run(max(settings.warmup, len(batches)) - 1)
    setup = {"wall_s": time.perf_counter() - start_wall, "cpu_s": time.process_time() - start_cpu}

    def barrier(name):
        if args.num_processes > 1:
            multihost_utils.sync_global_devices(name)

    _reply({"ready": True, "process_id": args.process_id, "devices": devices, "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS"), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            "setup": setup, "plan": {"kind": plan.kind, "rows_per_device": plan.rows_per_shard()},
            "models": {k: m.info(devices) for k, m in models.items()}, **_process_info()})  # fmt: skip
    idle_cpu, idle_from = 0.0, time.process_time()
    rounds = 0
    for line in sys.stdin:
        command = json.loads(line)
        idle_cpu += time.process_time() - idle_from
        if command["cmd"] == "quit":
            break
        model = models[command["model"]]
        barrier(f"{command['cmd']}-{rounds}")
        rounds += 1
        load_before = load_average()
        if command["cmd"] == "round":
            t0, c0 = time.perf_counter(), time.process_time()
            model.run(command["steps"])
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            _reply({"wall_s": wall / command["steps"], "cpu_s": cpu / command["steps"], "loss": float(model.loss),
                    "load_avg_before": load_before, "load_avg_after": load_average()})  # fmt: skip
        elif command["cmd"] == "profile":
            trace_dir = tempfile.mkdtemp(prefix=f"trace-{args.process_id}-", dir=args.tmp)
            jax.profiler.start_trace(trace_dir)
            t0, c0 = time.perf_counter(), time.process_time()
            model.run(command["steps"])
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            jax.profiler.stop_trace()
            result = {"traced_wall_s": wall, "traced_cpu_s": cpu, "steps": command["steps"],
                      "load_avg_before": load_before, "load_avg_after": load_average()}  # fmt: skip
            try:
                result.update(collective_time(trace_dir, model.module, model.instructions))
                result["collective_share"] = result["collective_s"] / wall
                executed = max(result["executed_ops_s"], 1e-12)
                result["collective_share_of_executed_ops"] = result["collective_s"] / executed
            except Exception as error:  # noqa: BLE001 - report, keep the timings
                result["error"] = repr(error)
            _reply(result)
        idle_from = time.process_time()
    barrier("quit")
    _reply({"rounds": rounds, "idle_cpu_s": idle_cpu, **_process_info()})
    if args.num_processes > 1:
        jax.distributed.shutdown()


def layouts_worker(args) -> None:
    """Every layout on ``layout_devices`` emulated devices: route_stats, compiled collectives, a few timed steps."""
    import jax

    settings = Settings(**json.loads(args.settings))
    devices = settings.layout_devices
    jax.config.update("jax_num_cpu_devices", devices)
    import ndp.embedding as embedding
    from ndp.train import storage_mesh

    sizes, batches = _load_batches(args.batches)
    kinds = list(getattr(embedding, "SHARDING_KINDS", ("tw", "rw", "cw")))
    route_stats = getattr(embedding, "route_stats", None)
    lengths = np.ones(batches[0][1].shape[:2], np.int32)
    mesh = storage_mesh(devices)
    result: dict = {"devices": devices, "kinds": kinds, "route_stats_available": route_stats is not None, "layouts": {}}
    for kind in [*kinds, *(["twrw"] if "twrw" not in kinds else [])]:
        entry: dict = {}
        result["layouts"][kind] = entry
        if kind not in kinds:
            entry["error"] = f"ndp.embedding.SHARDING_KINDS {tuple(kinds)} has no {kind!r} layout yet"
            continue
        try:
            plan = embedding.plan_sharding(sizes, 16, devices, kind)
            entry["rows_per_device"] = plan.rows_per_shard()
            entry["imbalance"] = plan.imbalance()
            if route_stats is None:
                entry["exchange_bytes_per_device"] = entry["lookups_per_device"] = None
                entry["route_stats_reason"] = "ndp.embedding.route_stats does not exist yet"
            else:
                stats = [route_stats(plan, ids, lengths) for _, ids, _ in batches]
                for key in ("exchange_bytes_per_device", "lookups_per_device"):
                    if any(s.get(key) is None for s in stats):
                        entry[key] = None
                        entry[f"{key}_reason"] = f"route_stats returned no {key!r}"
                        continue
                    per_batch = np.asarray([s[key] for s in stats], np.float64)
                    entry[key] = [int(round(x)) for x in per_batch.mean(axis=0)]  # per step, mean over the id batches
                    entry[f"{key}_per_batch"] = per_batch.astype(np.int64).tolist()
                entry["route_stats_batch0"] = stats[0]
        except Exception as error:  # noqa: BLE001 - one layout failing must not hide the others
            entry["error"] = repr(error)
            continue
        if args.no_compile:
            continue
        try:
            models = _build_models(mesh, plan, sizes, batches, settings.feed, settings.seed, models=("full",))
            model = models["full"]
            entry["model"] = model.info(devices)
            if settings.layout_steps > 0:
                model.run(max(settings.warmup, len(batches)) - 1)
                t0, c0 = time.perf_counter(), time.process_time()
                model.run(settings.layout_steps)
                entry["step_s"] = (time.perf_counter() - t0) / settings.layout_steps
                entry["cpu_s"] = (time.process_time() - c0) / settings.layout_steps
            del models, model
        except Exception as error:  # noqa: BLE001
            entry["compile_error"] = repr(error)
    result.update(_process_info())
    Path(args.worker_out).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------
# Controller


class Worker:
    """A worker subprocess: JSON commands on its stdin, tagged JSON replies read from its stdout by a thread."""

    def __init__(self, cmd: list[str], env: dict, log_path: Path, name: str):
        self.name, self.log_path = name, log_path
        self.load_avg_before = load_average()
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1)  # fmt: skip
        self.replies: queue.Queue = queue.Queue()
        self.other: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(TAG):
                self.replies.put(json.loads(line[len(TAG) :]))
            else:
                self.other.append(line)
        self.replies.put(None)

    def send(self, **command) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = WORKER_TIMEOUT_S) -> dict:
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            reply = None
        if reply is None:
            self.log.flush()
            tail = self.log_path.read_text()[-4000:] + "".join(self.other)[-2000:]
            raise RuntimeError(f"worker {self.name} exited or timed out (rc {self.proc.poll()}):\n{tail}")
        return reply

    def close(self, timeout: float = 120.0) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_info() -> dict:
    import jax

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = None
    return {"cpu_model": model, "cpus": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)),
            "mem_total_mb": proc_field_mb("/proc/meminfo", "MemTotal"), "transparent_hugepage": thp,
            "jax": jax.__version__, "python": sys.version.split()[0], "platform": os.uname().release}  # fmt: skip


def make_batches(sizes, batch_size: int, count: int, seed: int, zipf: float):
    """``count`` (dense, ids (B, T, 1), labels) batches of one-hot Zipf lookups."""
    from ndp.data.synthetic import SyntheticConfig, batch_at

    cfg = SyntheticConfig(tuple(sizes), batch_size=batch_size, zipf_exponent=zipf, seed=seed)
    out = []
    for i in range(count):
        b = batch_at(cfg, i)
        ids = np.stack([t.values for t in b.tables], axis=1).astype(np.int32)[:, :, None]
        out.append((b.dense.astype(np.float32), ids, b.labels.astype(np.float32)))
    return out


def parse_settings(argv) -> Settings:
    options = ConfigOptions(Settings, PRESETS, default_preset="full")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = options.build(args)
    except UsageError as error:
        parser.error(str(error))
    try:
        cores = [int(c) for c in settings.cores.split(",")]
    except ValueError:
        cores = []
    if len(cores) != 2 or len(set(cores)) != 2 or not set(cores) <= os.sched_getaffinity(0):
        available = sorted(os.sched_getaffinity(0))
        parser.error(f"--cores: expected two distinct cores of {available}, got {settings.cores!r}")
    return settings


def worker_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=("train", "layouts"))
    parser.add_argument("--settings")
    parser.add_argument("--batches")
    parser.add_argument("--tmp")
    parser.add_argument("--core", type=int)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--worker-out")
    parser.add_argument("--no-compile", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        args = worker_args(argv)
        (train_worker if args.worker == "train" else layouts_worker)(args)
        return 0
    settings = parse_settings(argv)
    cores = [int(c) for c in settings.cores.split(",")]
    started = time.perf_counter()
    from ndp.configs import criteo_kaggle_table_sizes

    sizes = criteo_kaggle_table_sizes(row_cap=settings.row_cap)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env["XLA_FLAGS"] = XLA_ONE_THREAD_FLAGS
    env["JAX_PLATFORMS"] = "cpu"
    env.update({name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    if settings.huge_pages == "on":
        tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t and "malloc.hugetlb" not in t]
        env["GLIBC_TUNABLES"] = ":".join([*tunables, "glibc.malloc.hugetlb=1"])
    script = str(Path(__file__).resolve())
    settings_json = json.dumps(dataclasses.asdict(settings))
    load_start = load_average()
    workers_log: list[dict] = []
    rounds: dict[str, dict[str, list]] = {m: {"1proc": [], "2proc": []} for m in MODELS}
    profiles: list[dict] = []
    setups: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="embedding_scaling-") as tmp:
        batches_path = Path(tmp) / "batches.npz"
        batches = make_batches(sizes, settings.batch_size, settings.index_batches, settings.seed, settings.zipf)
        arrays = {}
        for i, (dense, ids, labels) in enumerate(batches):
            arrays.update({f"dense_{i}": dense, f"ids_{i}": ids, f"labels_{i}": labels})
        np.savez(batches_path, sizes=np.asarray(sizes), count=len(batches), **arrays)
        del batches, arrays

        def launch(name, core, process_id=0, processes=1, port=0):
            cmd = [sys.executable, script, "--worker", "train", "--settings", settings_json, "--batches",
                   str(batches_path), "--tmp", tmp, "--core", str(core), "--process-id", str(process_id),
                   "--num-processes", str(processes), "--port", str(port)]  # fmt: skip
            return Worker(cmd, env, Path(tmp) / f"{name}.log", name)

        def finish(worker, ready):
            final = worker.receive()
            worker.close()
            workers_log.append({"name": worker.name, "ready": ready, "final": final,
                                "load_avg_before": worker.load_avg_before,
                                "load_avg_after": load_average()})  # fmt: skip

        for repeat in range(settings.repeats):
            live: list[Worker] = []
            try:
                one = launch(f"r{repeat}-1proc", cores[0])
                live.append(one)
                one_ready = one.receive()
                print(f"repeat {repeat}: 1-process worker ready ({one_ready['setup']['wall_s']:.1f} s setup)",
                      flush=True)  # fmt: skip
                port = free_port()
                two = [launch(f"r{repeat}-2proc-p{i}", cores[i], i, 2, port) for i in range(2)]
                live += two
                two_ready = [w.receive() for w in two]
                setup_s = max(r["setup"]["wall_s"] for r in two_ready)
                print(f"repeat {repeat}: 2-process workers ready ({setup_s:.1f} s setup)", flush=True)
                setups.append({"repeat": repeat, "1proc": one_ready, "2proc": two_ready})
                for r in range(settings.rounds):
                    for model in MODELS:
                        order = [("1proc", [one]), ("2proc", two)]
                        for setting, group in order if r % 2 == 0 else order[::-1]:
                            for w in group:
                                w.send(cmd="round", model=model, steps=settings.steps)
                            replies = [w.receive() for w in group]
                            rounds[model][setting].append({
                                "repeat": repeat, "round": r, "step_s": max(x["wall_s"] for x in replies),
                                "wall_s": [x["wall_s"] for x in replies], "cpu_s": [x["cpu_s"] for x in replies],
                                "cpu_over_wall": [x["cpu_s"] / x["wall_s"] for x in replies],
                                "loss": replies[0]["loss"], "load_avg_before": replies[0]["load_avg_before"],
                                "load_avg_after": replies[-1]["load_avg_after"]})  # fmt: skip
                    last = {m: {s: rounds[m][s][-1]["step_s"] * 1e3 for s in ("1proc", "2proc")} for m in MODELS}
                    print(f"repeat {repeat} round {r}: " + "; ".join(
                        f"{m} {v['1proc']:.1f} ms (1 proc) {v['2proc']:.1f} ms (2 proc)" for m, v in last.items()),
                        flush=True)  # fmt: skip
                if settings.profile_steps > 0:
                    for model in MODELS:
                        for w in two:
                            w.send(cmd="profile", model=model, steps=settings.profile_steps)
                        replies = [w.receive() for w in two]
                        profiles.append({"repeat": repeat, "model": model, "processes": replies,
                                         "collective_share_without_wait": collective_share_without_wait(replies)})
                one.send(cmd="quit")
                for w in two:
                    w.send(cmd="quit")
                finish(one, one_ready)
                for w, ready in zip(two, two_ready):
                    finish(w, ready)
                live.clear()
            finally:
                for w in live:  # only after a failure: end this repeat's workers
                    if w.proc.poll() is None:
                        w.proc.kill()
                    w.close()

        layouts = None
        if settings.layout_devices > 0:
            out = Path(tmp) / "layouts.json"
            cmd = [sys.executable, script, "--worker", "layouts", "--settings", settings_json, "--batches",
                   str(batches_path), "--worker-out", str(out)]  # fmt: skip
            load_before = load_average()
            layouts_env = {**env, "XLA_FLAGS": ""}  # one process, all cores, 8 emulated devices
            done = subprocess.run(cmd, env=layouts_env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
            if done.returncode != 0 or not out.is_file():
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                layouts = {"error": f"layouts worker failed (rc {done.returncode}): {done.stderr[-1500:]}"}
            else:
                layouts = json.loads(out.read_text())
            layouts.update({"load_avg_before": load_before, "load_avg_after": load_average()})

    median = statistics.median
    figures: dict = {}
    for model in MODELS:
        per = {}
        for setting in ("1proc", "2proc"):
            xs = [r["step_s"] for r in rounds[model][setting]]
            per[setting] = {
                "step_ms": summary([1e3 * x for x in xs]),
                "samples_per_s": summary([settings.batch_size / x for x in xs]),
                "cpu_ms_per_step": [summary([1e3 * r["cpu_s"][p] for r in rounds[model][setting]])
                                    for p in range(len(rounds[model][setting][0]["cpu_s"]))],
                "cpu_over_wall": [summary([r["cpu_over_wall"][p] for r in rounds[model][setting]])
                                  for p in range(len(rounds[model][setting][0]["cpu_over_wall"]))],
            }  # fmt: skip
        # Rounds are adjacent in time in pairs (same repeat and round index): their ratios show the spread.
        pairs = [a["step_s"] / b["step_s"] for a, b in zip(rounds[model]["1proc"], rounds[model]["2proc"])]
        per["scaling"] = median(r["step_s"] for r in rounds[model]["1proc"]) / median(
            r["step_s"] for r in rounds[model]["2proc"]
        )
        per["scaling_paired_rounds"] = summary(pairs)
        figures[model] = per
    shares = {m: [p for prof in profiles if prof["model"] == m for p in prof["processes"]] for m in MODELS}
    collective = {
        m: {"collective_share": summary([p.get("collective_share") for p in v]),
            "collective_share_of_executed_ops": summary([p.get("collective_share_of_executed_ops") for p in v]),
            "collective_share_without_wait": summary([p["collective_share_without_wait"] for p in profiles
                                                      if p["model"] == m]),
            "errors": [p["error"] for p in v if "error" in p]}
        for m, v in shares.items()
    }  # fmt: skip

    def mean_share(model):
        xs = [p.get("collective_share") for p in shares[model] if p.get("collective_share") is not None]
        return statistics.mean(xs) if xs else None

    exchange = None
    exchange_reason = None
    if layouts is None:
        exchange_reason = "--layout-devices 0"
    elif "error" in layouts:
        exchange_reason = layouts["error"]
    else:
        rw = layouts["layouts"].get("rw", {})
        if rw.get("exchange_bytes_per_device"):
            exchange = max(rw["exchange_bytes_per_device"])
        else:
            exchange_reason = rw.get("route_stats_reason") or rw.get("error") or "no rw layout"
    headline = {
        "scaling_2proc": figures["full"]["scaling"],
        "scaling_2proc_embedding_only": figures["embedding"]["scaling"],
        "collective_share": mean_share("full"),
        "exchange_bytes_per_device": exchange,
    }
    report = {
        "settings": dataclasses.asdict(settings),
        "workload": {"tables": len(sizes), "table_sizes": list(sizes), "rows": int(sum(sizes)), "dim": 16,
                     "dense_optimizer": f"adamw(lr={DENSE_LR}, weight_decay=0)",
                     "embedding_optimizer": f"{EMBEDDING_OPTIMIZER}(lr={EMBEDDING_LR})",
                     "layout_2proc": settings.layout, "ids": "one-hot Zipf (ndp.data.synthetic)"},  # fmt: skip
        "machine": {**machine_info(), "load_avg_start": load_start, "load_avg_end": load_average(),
                    "worker_xla_flags": env["XLA_FLAGS"],
                    "worker_glibc_tunables": env.get("GLIBC_TUNABLES")},  # fmt: skip
        "figures": figures,
        "collectives": {**collective, "collective_share_embedding_only": mean_share("embedding")},
        "profiles": profiles,
        "rounds": rounds,
        "workers": workers_log,
        "layouts": layouts,
        "exchange_bytes_reason": exchange_reason,
        "elapsed_s": time.perf_counter() - started,
        "headline": headline,
    }
    for model in MODELS:
        f = figures[model]
        line = ", ".join(
            f"{s.replace('proc', ' proc')} {f[s]['step_ms']['median']:.1f} ms "
            f"[{f[s]['step_ms']['min']:.1f}, {f[s]['step_ms']['max']:.1f}] "
            f"({f[s]['samples_per_s']['median']:.0f} samples/s, CPU/wall "
            + "/".join(f"{c['median']:.2f}" for c in f[s]["cpu_over_wall"]) + ")"
            for s in ("1proc", "2proc")
        )
        print(f"{model:9s}: {line}; scaling {f['scaling']:.2f}x")
        c = collective[model]
        if c["collective_share"]:
            print(f"{'':9s}  2-process time in collectives {c['collective_share']['median']:.2f} of the step"
                  + (f" ({c['collective_share_without_wait']['median']:.2f} without waiting for the peer)"
                     if c["collective_share_without_wait"] else ""))  # fmt: skip
    if layouts and "layouts" in layouts:
        for kind, entry in layouts["layouts"].items():
            exchange = entry.get("exchange_bytes_per_device")
            hlo = entry.get("model", {}).get("hlo_collectives", {}).get("by_op", {})
            hlo_text = ", ".join(f"{op} {v['sent_bytes_per_device']}" for op, v in hlo.items()) or None
            step = f"{1e3 * entry['step_s']:.0f} ms" if entry.get("step_s") else None
            print(f"{kind:5s} on {layouts['devices']} devices: route_stats bytes sent/device "
                  f"{max(exchange) if exchange else None} (max), compiled HLO bytes sent/device: {hlo_text}; "
                  f"step {step}"
                  + "".join(f", {key} {entry[key]}" for key in ("error", "compile_error") if key in entry))  # fmt: skip
    print(f"load average (1, 5, 15 min): start {load_start}, end {load_average()}; elapsed {report['elapsed_s']:.0f} s")
    from runkit import atomic_write_json

    atomic_write_json(settings.out, report)
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
