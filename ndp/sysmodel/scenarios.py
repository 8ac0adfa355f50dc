"""Named workloads (Criteo Kaggle, MLPerf/Criteo Terabyte, synthetic, MovieLens) and vmapped sweeps.

* ``kaggle``: the 26 Criteo Kaggle tables (33.76M rows), dim 16, facebookresearch/dlrm
  MLPs; cache curves simulated on a trace from the ``ndp`` synthetic generator.
* ``mlperf``: MLPerf DLRM (dim 128, bottom 13-512-256-128, top 1024-1024-512-256-1) on
  Criteo Terabyte tables capped at 40M rows (the MLPerf reference's
  ``--max-ind-range=40000000``; 187.8M rows, 96 GB in fp32); analytic power-law
  cache curves (the tables are too large to trace here).
* ``synthetic``: the Kaggle model with every table clipped to ``synthetic_rows`` rows
  (:class:`~ndp.sysmodel.config.WorkloadSettings`), traced.

``row_cap`` (``None``: no cap) clips every table of every workload but ``movielens`` further.
* ``movielens``: user and item tables of MovieLens-100k (dim 16, batch of ratings),
  the ratings in timestamp order as the access trace.

Sweeps (:func:`cache_sweep`, :func:`skew_sweep`, :func:`sensitivity`) stack
parameter sets or workloads and ``vmap`` :func:`ndp.sysmodel.systems.simulate`.

Example:
    >>> wl = build_workload("mlperf", WorkloadSettings(batch_size=1024))
    >>> int(wl.embedding_dim), round(float(wl.total_rows) / 1e6, 1)
    (128, 187.8)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from runkit import UsageError, check_choice
from ndp.data.movielens import movielens_root
from ndp.configs import DLRMConfig, criteo_kaggle_config, scale_table_sizes
from ndp.sysmodel.config import WorkloadSettings
from ndp.sysmodel.params import PARAMETER_TABLE, HardwareParams, as_arrays, stack_params
from ndp.sysmodel.systems import SYSTEMS, SystemOptions, simulate
from ndp.sysmodel.workload import Workload, movielens_trace, synthetic_trace, workload_from_trace, workload_from_zipf

WORKLOADS = ("kaggle", "mlperf", "synthetic", "movielens")

# fmt: off
#: Criteo Terabyte table sizes with the MLPerf reference's 40M-row cap (facebookresearch/dlrm, ``--max-ind-range=40000000``).
CRITEO_TERABYTE_40M_TABLE_SIZES: tuple[int, ...] = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)
# fmt: on


def mlperf_terabyte_config(row_cap: int | None = None) -> DLRMConfig:
    """MLPerf DLRM on Criteo Terabyte (40M-row cap), optionally clipped further."""
    return DLRMConfig(
        num_dense=13,
        table_sizes=scale_table_sizes(CRITEO_TERABYTE_40M_TABLE_SIZES, row_cap=row_cap),
        embedding_dim=128,
        bottom_mlp=(512, 256, 128),
        top_mlp=(1024, 1024, 512, 256, 1),
    )


def workload_model(kind: str, settings: WorkloadSettings) -> DLRMConfig:
    """The DLRM shape behind a named workload."""
    check_choice("workload", kind, WORKLOADS)
    if kind == "mlperf":
        return mlperf_terabyte_config(settings.row_cap)
    if kind == "movielens":
        return DLRMConfig(num_dense=0, table_sizes=(943, 1682), embedding_dim=16, bottom_mlp=(), top_mlp=(64, 1))
    caps = [c for c in (settings.row_cap, settings.synthetic_rows if kind == "synthetic" else None) if c is not None]
    return criteo_kaggle_config(row_cap=min(caps) if caps else None)


def build_trace(kind: str, settings: WorkloadSettings, *, shared_root=None) -> tuple[DLRMConfig, np.ndarray, int]:
    """The access trace of a trace-driven workload: ``(model, global row keys, lookups per iteration)``."""
    config = workload_model(kind, settings)
    if kind == "mlperf":
        raise UsageError("workload: 'mlperf' uses analytic cache curves and has no trace; use kaggle, synthetic or movielens")
    if kind == "movielens":
        keys, _ = movielens_trace(movielens_root(shared_root) / "u.data")
        # One lookup per table and rating: a batch of B ratings is 2B consecutive keys.
        return config, keys, 2 * settings.batch_size
    from ndp.data.synthetic import SyntheticConfig

    if settings.pooling_factor != int(settings.pooling_factor):
        raise UsageError(f"pooling_factor: expected a whole number for trace-driven workloads, got {settings.pooling_factor}")
    length = int(settings.pooling_factor)
    synth = SyntheticConfig(table_sizes=config.table_sizes, batch_size=settings.batch_size,
                            zipf_exponent=settings.zipf_exponent, min_bag_length=length, max_bag_length=length)  # fmt: skip
    lookups = settings.batch_size * config.num_tables * length
    return config, synthetic_trace(synth, settings.trace_batches), lookups


def build_workload(kind: str, settings: WorkloadSettings, *, shared_root=None) -> Workload:
    """The :class:`~ndp.sysmodel.workload.Workload` of a named workload (see the module docstring)."""
    common = dict(batch_size=settings.batch_size, optimizer_state_bytes=settings.optimizer_state_bytes)
    if kind == "mlperf":
        config = workload_model(kind, settings)
        return workload_from_zipf(config, zipf_exponent=settings.zipf_exponent, pooling_factor=settings.pooling_factor, **common)
    config, trace, _ = build_trace(kind, settings, shared_root=shared_root)
    pooling = 1.0 if kind == "movielens" else settings.pooling_factor
    return workload_from_trace(config, trace, pooling_factor=pooling, **common)


def policy_hit_rates(trace, lookups_per_iteration: int, fractions, num_rows: int, *, lookahead_batches: int = 2,
                     max_accesses: int = 200_000) -> dict:  # fmt: skip
    """Hit rates of the static, LRU, LFU and lookahead policies on (a prefix of) a trace.

    Capacities are ``fractions`` of ``num_rows``; the first half of the (clipped)
    trace warms the caches (and profiles the static one). LFU and lookahead are
    simulated access by access, so the trace is clipped to ``max_accesses``.
    Returns ``{"fraction": [...], "static": [...], "lru": [...], "lfu": [...], "lookahead_k": [...]}``.
    """
    from ndp.sysmodel import cache

    trace = np.asarray(trace)[:max_accesses]
    caps = [max(0, int(round(f * num_rows))) for f in fractions]
    return {
        "fraction": [float(f) for f in fractions],
        "accesses": int(trace.size),
        "static": cache.static_hit_rates(trace, caps, num_rows=num_rows).tolist(),
        "lru": cache.lru_hit_rates(trace, caps).tolist(),
        "lfu": [cache.lfu_hit_rate(trace, c) for c in caps],
        f"lookahead_{lookahead_batches}": [
            cache.lookahead_hit_rate(trace, c, batch_size=lookups_per_iteration, lookahead_batches=lookahead_batches)
            for c in caps
        ],
    }


def _stack_workloads(workloads: list[Workload]) -> Workload:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *workloads)


def cache_sweep(hw: HardwareParams, wl: Workload, fractions, options: SystemOptions = SystemOptions(), systems=SYSTEMS):
    """Iteration time of every system when each cache holds ``fraction`` of all rows: ``{system: (K,)}``.

    NDRec's CSD DRAM, the GPU cache and the SSD system's host page cache are all
    set to the same row capacity (HBM and DRAM budgets lifted so they do not cap it).
    """
    fractions = np.asarray(fractions, np.float64)
    table_bytes = float(wl.total_rows) * float(wl.row_bytes + wl.optimizer_state_bytes)
    sets = [
        hw._replace(
            csd_dram_bytes=max(f, 1e-9) * table_bytes / float(hw.csd_count),
            gpu_cache_load_factor=max(f, 1e-9),
            gpu_cache_hbm_budget=1.0,
            gpu_hbm_bytes=max(float(hw.gpu_hbm_bytes), f * table_bytes / float(hw.gpu_count)),
            host_cache_bytes=f * table_bytes,
        )
        for f in fractions
    ]
    stacked = stack_params(sets)
    return {s: jax.vmap(lambda h, s=s: simulate(s, h, wl, options).period)(stacked) for s in systems}


def skew_sweep(hw: HardwareParams, config: DLRMConfig, settings: WorkloadSettings, exponents,
               options: SystemOptions = SystemOptions(), systems=SYSTEMS):  # fmt: skip
    """Iteration time of every system against the Zipf exponent (analytic cache curves): ``{system: (K,)}``."""
    wls = [
        workload_from_zipf(config, batch_size=settings.batch_size, zipf_exponent=float(s),
                           pooling_factor=settings.pooling_factor, optimizer_state_bytes=settings.optimizer_state_bytes)  # fmt: skip
        for s in exponents
    ]
    stacked = _stack_workloads(wls)
    hw = as_arrays(hw)
    return {s: jax.vmap(lambda w, s=s: simulate(s, hw, w, options).period)(stacked) for s in systems}


def sensitivity(hw: HardwareParams, wl: Workload, metric, *, factor: float = 2.0, names=None):
    """Change of ``metric(hw) -> scalar`` when each parameter is divided/multiplied by ``factor``.

    Fractions are clipped to ``(0, 1]`` and counts rounded to whole numbers.
    Returns ``{name: (low, high)}`` sorted by ``|high - low|``, largest first.
    """
    names = list(names or PARAMETER_TABLE)
    sets = []
    for name in names:
        info = PARAMETER_TABLE[name]
        for scale in (1.0 / factor, factor):
            value = float(getattr(hw, name)) * scale
            if info.fraction:
                value = min(value, 1.0)
            if info.integer:
                value = max(1.0, float(round(value)))
            sets.append(hw._replace(**{name: value}))
    values = np.asarray(jax.vmap(metric)(stack_params(sets))).reshape(len(names), 2)
    out = {n: (float(lo), float(hi)) for n, (lo, hi) in zip(names, values)}
    return dict(sorted(out.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0])))
