"""The four modelled training systems: per-task durations, timeline, iteration time and energy.

Symbols (per iteration): ``B`` batch, ``T`` tables, ``L`` pooling factor,
``N = B T L`` lookups, ``U = u N`` distinct rows (``u`` the workload's unique
fraction), ``r`` row bytes, ``s`` optimizer-state bytes per row, ``P = B T r``
pooled bytes, ``G`` GPUs, ``C`` CSDs/SSDs. A cache holding a fraction ``c`` of all
rows hits ``h(c)`` of the lookups (the workload's LRU or static curve); the rows
missing per iteration are ``M = min(U, N (1 - h))`` (cold rows rarely repeat
within a batch).

``cpu_gpu`` (hybrid, tables in host DRAM): CPU gathers and pools
(``N`` lookups, ``N (1 - h_LLC) max(r, 64 B)`` DRAM bytes), pooled vectors go over
PCIe, MLPs run on the GPU, gradients come back, the CPU updates ``U`` rows
(read-modify-write). CPU time of a gather or an update of ``N`` lookups moving
``m`` DRAM bytes is ``N t_lookup / (2 threads) + m / (BW_mem * efficiency)``,
where ``t_lookup`` is the per-lookup cost of a whole training step: the form
calibrated on this machine's measured steps (``benchmarks/ndrec_calibration.py``);
``h_LLC`` is the LRU hit rate of the host's last-level cache.

``gpu_cache`` (FBGEMM UVM cache, LRU): ``min(load factor x rows, HBM budget)``
rows cached in HBM; before the lookup the ``M`` missing rows are read from host
memory over PCIe at small-transfer efficiency while the evicted (dirty) rows are
written back; gather, pool and update run at HBM bandwidth.

``ssd`` (tables on NVMe SSDs, no near-data compute): host DRAM caches rows
(LRU); every missing row costs a flash page read (read amplification
``page / r``) and, dirty, a page write back; the CPU does the rest as in ``cpu_gpu``.

``ndrec`` (NDRec-style): tables sharded row-wise over ``C`` CSDs; each CSD's
DRAM holds the statistically hottest rows of its shard (static cache from
profiled access counts); missing rows are read from flash into DRAM, the CSD's
compute pools, pooled vectors go to the GPUs over CXL, gradients come back, the
CSD updates rows in DRAM and writes dirty misses back to flash (log-structured,
with write amplification). With ``lookahead_batches = k >= 1`` the flash reads
of batch ``b`` are issued ``k`` batches early, and batch ``b``'s pooling and CXL
transfer run one batch early, overlapped with the GPU's work on batch ``b - 1``.
Rows that batch ``b`` shares with batch ``b - 1`` (the workload's consecutive
overlap) were read before ``b - 1``'s update landed; the GPU, which produced that
update's gradients, adds the row deltas to the early pooled vectors
(``gpu_patch``), so the result equals a sequential step (no staleness; exact for
SGD, whose row update is a linear function of the pooled gradients). The bottom
MLP never waits for embeddings.

Energy per iteration of period ``τ``: each device ``idle_power τ + (active_power -
idle_power) busy`` (busy capped at ``τ``), plus DRAM bytes x energy per byte and
link bytes x energy per byte. The total is the sum of the components.

Example:
    >>> from ndp.configs import criteo_kaggle_config
    >>> from ndp.sysmodel.params import default_hardware, as_arrays
    >>> from ndp.sysmodel.workload import workload_from_zipf
    >>> wl = workload_from_zipf(criteo_kaggle_config(), batch_size=2048)
    >>> out = simulate("ndrec", as_arrays(default_hardware()), wl)
    >>> bool(out.period > 0), sorted(out.energy)
    (True, ['csd', 'dram', 'gpu', 'host', 'links'])
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from runkit import UsageError, check_choice, check_positive
from ndp.sysmodel.params import HardwareParams
from ndp.sysmodel.timeline import Schedule, Task, schedule, steady_state_period
from ndp.sysmodel.workload import Workload

SYSTEMS: tuple[str, ...] = ("ndrec", "cpu_gpu", "gpu_cache", "ssd")
SYSTEM_TITLES = {
    "ndrec": "NDRec-style (CSD + CXL + lookahead)",
    "cpu_gpu": "CPU-GPU hybrid",
    "gpu_cache": "GPU embedding cache (UVM, LRU)",
    "ssd": "SSD without near-data compute",
}
CACHE_POLICIES = ("static", "lru")


@dataclasses.dataclass(frozen=True)
class SystemOptions:
    """Static (structural) choices of the model, not swept by ``vmap``.

    Attributes:
      lookahead_batches: NDRec lookahead depth ``k`` (0 disables lookahead).
      csd_cache_policy: ``"static"`` (profiled statistics) or ``"lru"`` for the CSD DRAM cache.
      num_batches: batches simulated to reach the steady state.
    """

    lookahead_batches: int = 2
    csd_cache_policy: str = "static"
    num_batches: int = 8

    def __post_init__(self):
        check_positive("lookahead_batches", self.lookahead_batches, allow_zero=True)
        check_choice("csd_cache_policy", self.csd_cache_policy, CACHE_POLICIES)
        if self.num_batches < self.lookahead_batches + 4:
            raise UsageError(
                f"num_batches: expected at least lookahead_batches + 4 = {self.lookahead_batches + 4}, got {self.num_batches}"
            )


class SimulationResult(NamedTuple):
    """Outcome for one system (every leaf a jnp array; batched under ``vmap``).

    Attributes:
      period: steady-state seconds per iteration.
      durations: seconds of each task (dict by task name).
      schedule: start/finish of each task of each simulated batch.
      energy: joules per iteration, by component.
      hit_rate: hit rate of the system's embedding cache (0 where there is none).
    """

    period: jax.Array
    durations: dict
    schedule: Schedule
    energy: dict
    hit_rate: jax.Array

    @property
    def total_energy(self):
        return sum(self.energy.values())


def _mlp_durations(hw: HardwareParams, wl: Workload) -> dict:
    """GPU work: bottom MLP forward (no embedding dependency), the rest of forward + backward, gradient sync."""
    fwd_flops = wl.batch_size * wl.mlp_flops_per_example
    rate = hw.gpu_count * hw.gpu_flops * hw.gpu_flop_efficiency
    sync = 2.0 * (hw.gpu_count - 1.0) / hw.gpu_count * wl.mlp_weight_bytes / hw.nvlink_bandwidth
    return {
        "bottom_mlp_fwd": wl.bottom_flop_fraction * fwd_flops / rate,
        "mlp_fwd_bwd": (3.0 - wl.bottom_flop_fraction) * fwd_flops / rate + hw.gpu_iteration_overhead,
        "allreduce": sync,
    }


def _host_time(hw: HardwareParams, lookups, bytes_moved):
    """CPU time of embedding work: half a training step's per-lookup cost (gather *or* update) plus DRAM traffic."""
    return 0.5 * lookups * hw.host_lookup_time / hw.host_threads + bytes_moved / (hw.host_mem_bandwidth * hw.host_mem_efficiency)


def _hit(wl: Workload, cache_rows, policy: str):
    curve = wl.hit_static if policy == "static" else wl.hit_lru
    fraction = jnp.clip(cache_rows / wl.total_rows, 0.0, 1.0)
    return jnp.interp(fraction, wl.curve_fraction, curve)


def _misses(wl: Workload, hit):
    lookups = wl.lookups_per_iteration
    return jnp.minimum(wl.unique_fraction * lookups, lookups * (1.0 - hit))


def _device_energy(count, idle, active, busy, period):
    return count * (idle * period + (active - idle) * jnp.minimum(busy, period))


def _busy(durations: dict, tasks: list[Task], resources: tuple[str, ...]):
    return sum(durations[t.name] for t in tasks if t.resource in resources)


def _host_side(hw, wl, pcie_bytes_each_way):
    """DRAM bytes of the CPU's gather+pool and of its sparse update (rows missing the LLC), and one PCIe transfer."""
    lookups = wl.lookups_per_iteration
    pooled = wl.batch_size * wl.num_tables * wl.row_bytes
    row_state = wl.row_bytes + wl.optimizer_state_bytes
    llc_miss = 1.0 - _hit(wl, hw.host_llc_bytes / jnp.maximum(row_state, hw.host_line_bytes), "lru")
    gather_bytes = lookups * llc_miss * jnp.maximum(wl.row_bytes, hw.host_line_bytes) + pooled
    update_bytes = 2.0 * wl.unique_fraction * lookups * llc_miss * jnp.maximum(row_state, hw.host_line_bytes) + pooled
    transfer = pcie_bytes_each_way / (hw.gpu_count * hw.pcie_bandwidth) + hw.pcie_latency
    return gather_bytes, update_bytes, transfer


def system_tasks(system: str, options: SystemOptions = SystemOptions()) -> list[Task]:
    """The task list of ``system`` (static structure of its iteration)."""
    check_choice("system", system, SYSTEMS)
    mlp = _mlp_tasks
    if system == "cpu_gpu":
        return [
            Task("cpu_gather_pool", "host", deps=(("cpu_update", 1),)),
            Task("pcie_h2d", "pcie_h2d", deps=(("cpu_gather_pool", 0),)),
            *mlp("pcie_h2d"),
            Task("pcie_d2h", "pcie_d2h", deps=(("mlp_fwd_bwd", 0),)),
            Task("cpu_update", "host", deps=(("pcie_d2h", 0),)),
        ]
    if system == "gpu_cache":
        return [
            Task("cache_fetch", "pcie_h2d", deps=(("gpu_update", 1),)),
            Task("cache_writeback", "pcie_d2h", deps=(("gpu_update", 1),)),
            Task("gpu_gather_pool", "gpu", deps=(("cache_fetch", 0),)),
            *mlp("gpu_gather_pool"),
            Task("gpu_update", "gpu", deps=(("mlp_fwd_bwd", 0),)),
        ]
    if system == "ssd":
        return [
            Task("ssd_read", "flash", deps=(("cpu_update", 1),)),
            Task("cpu_gather_pool", "host", deps=(("ssd_read", 0),)),
            Task("pcie_h2d", "pcie_h2d", deps=(("cpu_gather_pool", 0),)),
            *mlp("pcie_h2d"),
            Task("pcie_d2h", "pcie_d2h", deps=(("mlp_fwd_bwd", 0),)),
            Task("cpu_update", "host", deps=(("pcie_d2h", 0),)),
            Task("ssd_writeback", "flash", deps=(("cpu_update", 0),)),
        ]
    k = options.lookahead_batches
    if k == 0:
        return [
            Task("flash_read", "flash", deps=(("csd_update", 1),)),
            Task("csd_pool", "csd_compute", deps=(("flash_read", 0), ("csd_update", 1))),
            Task("cxl_to_gpu", "cxl_up", deps=(("csd_pool", 0),)),
            *mlp("cxl_to_gpu"),
            Task("cxl_to_csd", "cxl_down", deps=(("mlp_fwd_bwd", 0),)),
            Task("csd_update", "csd_compute", deps=(("cxl_to_csd", 0),)),
            Task("flash_writeback", "flash", deps=(("csd_update", 0),)),
        ]
    return [
        Task("flash_read", "flash", deps=(("csd_update", k + 1),), lead=k),
        Task("csd_pool", "csd_compute", deps=(("flash_read", 0),), lead=1),
        Task("cxl_to_gpu", "cxl_up", deps=(("csd_pool", 0),), lead=1),
        Task("gpu_patch", "gpu", deps=(("cxl_to_gpu", 0), ("mlp_fwd_bwd", 1))),
        *mlp("gpu_patch"),
        Task("cxl_to_csd", "cxl_down", deps=(("mlp_fwd_bwd", 0),)),
        Task("csd_update", "csd_compute", deps=(("cxl_to_csd", 0),)),
        Task("flash_writeback", "flash", deps=(("csd_update", 0),)),
    ]


def _mlp_tasks(emb_task: str) -> list[Task]:
    return [
        Task("bottom_mlp_fwd", "gpu"),
        Task("mlp_fwd_bwd", "gpu", deps=((emb_task, 0), ("bottom_mlp_fwd", 0))),
        Task("allreduce", "gpu", deps=(("mlp_fwd_bwd", 0),)),
    ]


def _durations_and_energy_terms(system: str, hw: HardwareParams, wl: Workload, options: SystemOptions):
    """Task durations, plus the byte counts and busy times that energy needs."""
    d = _mlp_durations(hw, wl)
    lookups = wl.lookups_per_iteration
    unique = wl.unique_fraction * lookups
    pooled = wl.batch_size * wl.num_tables * wl.row_bytes
    row_state = wl.row_bytes + wl.optimizer_state_bytes
    zero = jnp.zeros((), jnp.float32)
    terms = {"host_dram_bytes": zero, "link_bytes": zero, "csd_dram_bytes": zero, "hit_rate": zero}
    if system in ("cpu_gpu", "ssd"):
        gather_bytes, update_bytes, transfer = _host_side(hw, wl, pooled)
        d["cpu_gather_pool"] = _host_time(hw, lookups, gather_bytes)
        d["cpu_update"] = _host_time(hw, lookups, update_bytes)
        d["pcie_h2d"] = transfer
        d["pcie_d2h"] = transfer
        terms["host_dram_bytes"] = gather_bytes + update_bytes
        terms["link_bytes"] = 2.0 * pooled
        if system == "ssd":
            hit = _hit(wl, hw.host_cache_bytes / row_state, "lru")
            misses = _misses(wl, hit)
            page = hw.csd_flash_page_bytes
            iops = jnp.minimum(
                hw.csd_flash_channels * hw.csd_channel_bandwidth / page,
                hw.csd_flash_channels * hw.csd_dies_per_channel / hw.csd_flash_read_latency,
            )
            per_device = misses / hw.csd_count
            d["ssd_read"] = jnp.maximum(per_device / iops, per_device * page / hw.ssd_link_bandwidth)
            d["ssd_writeback"] = per_device * page * hw.csd_write_amplification / hw.csd_flash_write_bandwidth
            terms["host_dram_bytes"] = terms["host_dram_bytes"] + 2.0 * misses * page
            terms["link_bytes"] = terms["link_bytes"] + 2.0 * misses * page
            terms["hit_rate"] = hit
    elif system == "gpu_cache":
        cache_rows = jnp.minimum(
            hw.gpu_cache_load_factor * wl.total_rows, hw.gpu_count * hw.gpu_hbm_bytes * hw.gpu_cache_hbm_budget / row_state
        )
        hit = _hit(wl, cache_rows, "lru")
        misses = _misses(wl, hit)
        link = hw.gpu_count * hw.pcie_bandwidth * hw.pcie_small_transfer_efficiency
        d["cache_fetch"] = misses * wl.row_bytes / link + hw.pcie_latency
        d["cache_writeback"] = misses * row_state / link + hw.pcie_latency
        hbm = hw.gpu_count * hw.gpu_hbm_bandwidth
        d["gpu_gather_pool"] = (lookups * wl.row_bytes + pooled) / hbm
        d["gpu_update"] = (2.0 * unique * row_state + pooled) / hbm
        # Model parallel across GPUs: pooled vectors and their gradients cross NVLink (all-to-all).
        d["allreduce"] = d["allreduce"] + 2.0 * pooled * (hw.gpu_count - 1.0) / hw.gpu_count / hw.nvlink_bandwidth
        terms["host_dram_bytes"] = misses * (wl.row_bytes + row_state)
        terms["link_bytes"] = misses * (wl.row_bytes + row_state)
        terms["hit_rate"] = hit
    else:  # ndrec
        cache_rows = hw.csd_count * hw.csd_dram_bytes / row_state
        hit = _hit(wl, cache_rows, options.csd_cache_policy)
        misses = _misses(wl, hit) / hw.csd_count
        page = hw.csd_flash_page_bytes
        iops = jnp.minimum(
            hw.csd_flash_channels * hw.csd_channel_bandwidth / page,
            hw.csd_flash_channels * hw.csd_dies_per_channel / hw.csd_flash_read_latency,
        )
        stream = jnp.minimum(hw.csd_dram_bandwidth, hw.csd_compute_bandwidth)
        local_lookups = lookups / hw.csd_count
        d["flash_read"] = misses / iops
        d["csd_pool"] = (local_lookups * wl.row_bytes + misses * page) / stream
        d["gpu_patch"] = 2.0 * wl.consecutive_overlap * lookups * wl.row_bytes / (hw.gpu_count * hw.gpu_hbm_bandwidth)
        cxl = pooled * (1.0 + hw.cxl_protocol_overhead)
        d["cxl_to_gpu"] = jnp.maximum(cxl / (hw.csd_count * hw.cxl_bandwidth), cxl / (hw.gpu_count * hw.pcie_bandwidth)) + hw.cxl_latency
        d["cxl_to_csd"] = d["cxl_to_gpu"]
        d["csd_update"] = (2.0 * unique / hw.csd_count * row_state + pooled / hw.csd_count) / stream
        d["flash_writeback"] = misses * row_state * hw.csd_write_amplification / hw.csd_flash_write_bandwidth
        terms["csd_dram_bytes"] = hw.csd_count * (
            local_lookups * wl.row_bytes
            + misses * page
            + (2.0 * unique / hw.csd_count * row_state)
        )
        terms["link_bytes"] = 2.0 * cxl
        terms["hit_rate"] = hit
    return d, terms


def simulate(system: str, hw: HardwareParams, wl: Workload, options: SystemOptions = SystemOptions()) -> SimulationResult:
    """Iteration time, timeline and energy of ``system`` (pure jnp; ``vmap`` over ``hw`` or ``wl``).

    Example:
        >>> from ndp.configs import criteo_kaggle_config
        >>> from ndp.sysmodel.params import default_hardware, stack_params, replace_params
        >>> from ndp.sysmodel.workload import workload_from_zipf
        >>> wl = workload_from_zipf(criteo_kaggle_config(), batch_size=2048)
        >>> hws = stack_params([replace_params(default_hardware(), csd_count=c) for c in (1, 2, 4)])
        >>> periods = jax.vmap(lambda h: simulate("ndrec", h, wl).period)(hws)
        >>> periods.shape
        (3,)
    """
    tasks = system_tasks(system, options)
    durations, terms = _durations_and_energy_terms(system, hw, wl, options)
    durations = {t.name: jnp.asarray(durations[t.name], jnp.float32) for t in tasks}
    sched = schedule(tasks, durations, num_batches=options.num_batches)
    period = steady_state_period(sched)
    energy = {
        "gpu": _device_energy(hw.gpu_count, hw.gpu_idle_power, hw.gpu_active_power, _busy(durations, tasks, ("gpu",)), period),
        "host": _device_energy(1.0, hw.host_idle_power, hw.host_active_power, _busy(durations, tasks, ("host",)), period),
        "dram": terms["host_dram_bytes"] * hw.dram_energy_per_byte,
        "links": terms["link_bytes"] * hw.link_energy_per_byte,
    }
    if system == "ndrec":
        busy = _busy(durations, tasks, ("flash", "csd_compute"))
        energy["csd"] = _device_energy(hw.csd_count, hw.csd_idle_power, hw.csd_active_power, busy, period)
        energy["dram"] = energy["dram"] + terms["csd_dram_bytes"] * hw.dram_energy_per_byte
    elif system == "ssd":
        energy["ssd"] = _device_energy(hw.csd_count, hw.ssd_idle_power, hw.ssd_active_power, _busy(durations, tasks, ("flash",)), period)
    energy = {k: jnp.asarray(v, jnp.float32) for k, v in energy.items()}
    return SimulationResult(period, durations, sched, energy, jnp.asarray(terms["hit_rate"], jnp.float32))


def simulate_all(hw: HardwareParams, wl: Workload, options: SystemOptions = SystemOptions(), systems=SYSTEMS) -> dict:
    """:func:`simulate` for several systems: ``{system: SimulationResult}``."""
    return {s: simulate(s, hw, wl, options) for s in systems}


def speedups(results: dict, reference: str = "ndrec") -> dict:
    """Iteration-time ratio ``period(other) / period(reference)`` for every other system."""
    return {s: results[s].period / results[reference].period for s in results if s != reference}
