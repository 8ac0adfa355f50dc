"""Hardware parameters of the modelled systems, each with its unit and source, in one table.

:class:`HardwareParams` is a flat ``NamedTuple`` of floats, so a whole set of
hardware parameters is one pytree: it can be ``vmap``-ed over (sweeps), perturbed
one field at a time (sensitivity) and differentiated. :data:`PARAMETER_TABLE`
documents every field: default value, unit, source (a datasheet, a standard, a
paper, a measurement on this machine, or an explicit assumption).

Example:
    >>> hw = default_hardware()
    >>> hw.csd_count, hw.gpu_hbm_bandwidth / 1e9
    (4.0, 1555.0)
    >>> hw2 = replace_params(hw, csd_count=8)
    >>> float(hw2.csd_count)
    8.0
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from runkit import UsageError


class ParamInfo(NamedTuple):
    """One row of the parameter table."""

    default: float
    unit: str
    source: str
    integer: bool = False
    fraction: bool = False


# fmt: off
#: Every hardware parameter: default, unit, source. ``[A]`` marks an assumption.
PARAMETER_TABLE: dict[str, ParamInfo] = {
    # --- GPU (NVIDIA A100-SXM4-40GB) ---
    "gpu_count": ParamInfo(1, "GPUs", "paper-like single-node setup [A]", integer=True),
    "gpu_flops": ParamInfo(19.5e12, "FLOP/s", "A100 datasheet: FP32 19.5 TFLOP/s (non-tensor-core)"),
    "gpu_flop_efficiency": ParamInfo(0.6, "fraction", "achieved share of peak on DLRM-sized GEMMs [A]", fraction=True),
    "gpu_hbm_bandwidth": ParamInfo(1555e9, "B/s", "A100 datasheet: 1555 GB/s HBM2"),
    "gpu_hbm_bytes": ParamInfo(40e9, "B", "A100 datasheet: 40 GB HBM2"),
    "gpu_cache_load_factor": ParamInfo(0.2, "fraction of table rows", "FBGEMM UVM cache default load factor 0.2", fraction=True),
    "gpu_cache_hbm_budget": ParamInfo(0.75, "fraction of HBM", "HBM share left for the cache after model and activations [A]", fraction=True),
    "gpu_iteration_overhead": ParamInfo(200e-6, "s", "kernel launches and dense optimizer per iteration [A]"),
    "gpu_idle_power": ParamInfo(55.0, "W", "A100 idle draw, nvidia-smi reports 50-60 W [A]"),
    "gpu_active_power": ParamInfo(400.0, "W", "A100-SXM4 datasheet TDP 400 W"),
    "nvlink_bandwidth": ParamInfo(300e9, "B/s", "A100 NVLink3: 600 GB/s bidirectional, 300 GB/s per direction"),
    # --- host CPU and DRAM (one Xeon-class socket, 8x DDR4-3200) ---
    "host_mem_bandwidth": ParamInfo(204.8e9, "B/s", "8 channels x DDR4-3200 x 8 B = 204.8 GB/s (JEDEC)"),
    "host_mem_efficiency": ParamInfo(0.0554, "fraction", "row-gather share of streaming bandwidth, calibrated on measured ndp steps (benchmarks/results/ndrec_calibration.json); applied to the datasheet peak", fraction=True),
    "host_lookup_time": ParamInfo(100e-9, "s per lookup per thread", "CPU cost per lookup of a training step (gather + update), calibrated on measured single-threaded ndp steps (benchmarks/results/ndrec_calibration.json)"),
    "host_threads": ParamInfo(28, "threads", "Xeon Gold 6330: 28 cores; perfect scaling assumed [A]", integer=True),
    "host_line_bytes": ParamInfo(64, "B", "x86 cache line"),
    "host_llc_bytes": ParamInfo(42e6, "B", "Xeon Gold 6330: 42 MB L3"),
    "host_cache_bytes": ParamInfo(64e9, "B", "host DRAM used as page cache for SSD-resident tables [A]"),
    "host_idle_power": ParamInfo(90.0, "W", "socket + DRAM idle [A]"),
    "host_active_power": ParamInfo(250.0, "W", "Xeon Gold 6330 TDP 205 W + DRAM [A]"),
    "dram_energy_per_byte": ParamInfo(160e-12, "J/B", "Horowitz ISSCC 2014: DRAM 1.3-2.6 nJ per 64 bit (low end)"),
    # --- PCIe (GPU and SSD links) ---
    "pcie_bandwidth": ParamInfo(31.5e9, "B/s per direction", "PCIe 4.0 x16: 16 GT/s x 16 lanes, 128b/130b"),
    "pcie_small_transfer_efficiency": ParamInfo(0.3, "fraction", "row-sized (64-512 B) UVM reads reach 20-40% of link bandwidth [A]", fraction=True),
    "pcie_latency": ParamInfo(1.0e-6, "s", "PCIe round trip ~1 us [A]"),
    "link_energy_per_byte": ParamInfo(40e-12, "J/B", "SerDes links ~5 pJ/bit [A]"),
    # --- CXL (one x4 link per CSD) ---
    "cxl_bandwidth": ParamInfo(15.75e9, "B/s per direction per CSD", "CXL 2.0 on PCIe 5.0 x4: 32 GT/s x 4 lanes"),
    "cxl_latency": ParamInfo(300e-9, "s", "CXL.mem load-to-use 170-250 ns added latency, rounded up [A]"),
    "cxl_protocol_overhead": ParamInfo(0.1, "fraction of payload", "68 B flits for 64 B payload plus coherence messages [A]", fraction=True),
    # --- computational storage device (SmartSSD-like: NVMe flash + FPGA + DRAM) ---
    "csd_count": ParamInfo(4, "devices", "paper-like setup, tables sharded row-wise [A]", integer=True),
    "csd_flash_channels": ParamInfo(8, "channels", "enterprise NVMe controllers have 8-16 channels [A]", integer=True),
    "csd_channel_bandwidth": ParamInfo(1.2e9, "B/s", "ONFI 4.2: 1200 MT/s x 8 bit"),
    "csd_dies_per_channel": ParamInfo(8, "dies", "[A]", integer=True),
    "csd_flash_read_latency": ParamInfo(60e-6, "s", "TLC NAND page read tR 50-90 us [A]"),
    "csd_flash_page_bytes": ParamInfo(4096, "B", "smallest flash read unit (4 KiB sector) [A]"),
    "csd_flash_write_bandwidth": ParamInfo(2.0e9, "B/s", "enterprise NVMe sequential write ~2 GB/s (Samsung PM983 class)"),
    "csd_write_amplification": ParamInfo(2.0, "x", "log-structured write-back with garbage collection [A]"),
    "csd_dram_bytes": ParamInfo(4e9, "B", "Samsung SmartSSD: 4 GB DDR4 on the FPGA"),
    "csd_dram_bandwidth": ParamInfo(19.2e9, "B/s", "one DDR4-2400 x64 channel"),
    "csd_compute_bandwidth": ParamInfo(25e9, "B/s", "FPGA pooling/update datapath (KU15P, 512 bit at 400 MHz) [A]"),
    "csd_idle_power": ParamInfo(7.0, "W", "SmartSSD idle [A]"),
    "csd_active_power": ParamInfo(25.0, "W", "SmartSSD maximum 25 W"),
    "ssd_idle_power": ParamInfo(5.0, "W", "enterprise NVMe idle (PM983 class) [A]"),
    "ssd_active_power": ParamInfo(12.0, "W", "enterprise NVMe active (PM983 class) [A]"),
    "ssd_link_bandwidth": ParamInfo(7.88e9, "B/s", "PCIe 4.0 x4"),
}
# fmt: on

PARAMETER_NAMES: tuple[str, ...] = tuple(PARAMETER_TABLE)

HardwareParams = NamedTuple("HardwareParams", [(name, float) for name in PARAMETER_NAMES])
HardwareParams.__doc__ = (
    "Every hardware parameter of the system model as one flat pytree of floats; "
    "see :data:`PARAMETER_TABLE` for units and sources."
)


def default_hardware() -> HardwareParams:
    """The defaults of :data:`PARAMETER_TABLE` as :class:`HardwareParams` (python floats)."""
    return HardwareParams(**{name: float(info.default) for name, info in PARAMETER_TABLE.items()})


def replace_params(hw: HardwareParams, **changes: float) -> HardwareParams:
    """``hw`` with some fields changed; unknown names raise ``ValueError``."""
    for name in changes:
        if name not in PARAMETER_TABLE:
            raise UsageError(f"hardware parameter: expected one of {list(PARAMETER_NAMES)}, got {name!r}")
    return hw._replace(**{k: float(v) for k, v in changes.items()})


def as_arrays(hw: HardwareParams) -> HardwareParams:
    """Every field as a ``float32`` jax array (the form ``vmap`` and ``grad`` want)."""
    return HardwareParams(*(jnp.asarray(v, jnp.float32) for v in hw))


def stack_params(params: list[HardwareParams]) -> HardwareParams:
    """Stack a list of parameter sets into one batched :class:`HardwareParams` for ``vmap``."""
    return HardwareParams(*(jnp.asarray([p[i] for p in params], jnp.float32) for i in range(len(PARAMETER_NAMES))))


def parameter_table_markdown() -> str:
    """The parameter table as Markdown (name, default, unit, source)."""
    lines = ["| parameter | default | unit | source |", "|---|---|---|---|"]
    for name, info in PARAMETER_TABLE.items():
        lines.append(f"| `{name}` | {info.default:g} | {info.unit} | {info.source} |")
    return "\n".join(lines)
