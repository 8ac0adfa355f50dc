"""System files: editable JSON descriptions of hardware, model options and workload, validated.

A system file has up to four sections; everything left out takes its default::

    {
      "name": "paper-like",
      "hardware": {"csd_count": 4, "gpu_count": 1, "csd_dram_bytes": 4e9},
      "options":  {"lookahead_batches": 2, "csd_cache_policy": "static"},
      "workload": {"batch_size": 2048, "zipf_exponent": 0.9, "pooling_factor": 1,
                   "optimizer": "sgd", "trace_batches": 16, "row_cap": null}
    }

``hardware`` keys are the names of :data:`ndp.sysmodel.params.PARAMETER_TABLE`.
Errors name the file, the key, what was expected and what was given.
Bundled files live in ``ndp/sysmodel/configs/`` and can be named without a path
(``paper_like``).

Example:
    >>> cfg = load_system_file("paper_like")
    >>> cfg.name, int(cfg.hardware.csd_count) >= 1
    ('paper-like', True)
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ndp.sysmodel.params import PARAMETER_TABLE, HardwareParams, default_hardware
from ndp.sysmodel.systems import CACHE_POLICIES, SystemOptions
from runkit import MissingFileError, UsageError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPTIMIZER_STATE_BYTES = {"sgd": 0.0, "rowwise_adagrad": 4.0}


@dataclasses.dataclass(frozen=True)
class WorkloadSettings:
    """How to build the workload of a run.

    Attributes:
      batch_size: examples per iteration (global).
      zipf_exponent: power-law skew of row popularity (synthetic and analytic workloads).
      pooling_factor: lookups per table and example.
      optimizer: ``"sgd"`` or ``"rowwise_adagrad"`` (sets the per-row state bytes).
      trace_batches: iterations of trace simulated for trace-driven workloads.
      row_cap: clip every table to this many rows (``None``: full size).
      synthetic_rows: rows of each table of the ``synthetic`` workload (the Kaggle tables clipped to this).
    """

    batch_size: int = 2048
    zipf_exponent: float = 0.9
    pooling_factor: float = 1.0
    optimizer: str = "sgd"
    trace_batches: int = 16
    row_cap: int | None = None
    synthetic_rows: int = 100_000

    @property
    def optimizer_state_bytes(self) -> float:
        return OPTIMIZER_STATE_BYTES[self.optimizer]


@dataclasses.dataclass(frozen=True)
class SystemFile:
    """A loaded, validated system file."""

    name: str
    description: str
    hardware: HardwareParams
    options: SystemOptions
    workload: WorkloadSettings
    path: str


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path as given, or a bundled config by name (``paper_like`` -> ``configs/paper_like.json``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = CONFIG_DIR / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if bundled.exists():
        return bundled
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    raise MissingFileError(f"config: no file {str(name_or_path)!r} and no bundled config of that name (bundled: {available})")


def _number(where: str, key: str, value: Any, *, integer=False, fraction=False, allow_zero=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{where}: {key}: expected a finite number, got {value!r}")
    if integer and float(value) != int(value):
        raise UsageError(f"{where}: {key}: expected a whole number, got {value!r}")
    if fraction and not 0.0 < value <= 1.0:
        raise UsageError(f"{where}: {key}: expected a value in (0, 1], got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{where}: {key}: expected a value {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _check_keys(where: str, section: Any, allowed) -> dict:
    if not isinstance(section, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(section).__name__}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")
    return section


def parse_system(data: Any, *, source: str = "<dict>") -> SystemFile:
    """Validate a system description (the parsed JSON) and build a :class:`SystemFile`."""
    top = _check_keys(source, data, ("name", "description", "hardware", "options", "workload"))
    hw_section = _check_keys(f"{source}: hardware", top.get("hardware", {}), PARAMETER_TABLE)
    hw = default_hardware()
    changes = {}
    for key, value in hw_section.items():
        info = PARAMETER_TABLE[key]
        zero_ok = key in ("gpu_iteration_overhead", "pcie_latency", "cxl_latency", "cxl_protocol_overhead",
                          "host_cache_bytes", "gpu_idle_power", "host_idle_power", "csd_idle_power", "ssd_idle_power",
                          "dram_energy_per_byte", "link_energy_per_byte", "host_lookup_time")  # fmt: skip
        changes[key] = _number(f"{source}: hardware", key, value, integer=info.integer, fraction=info.fraction,
                               allow_zero=zero_ok)  # fmt: skip
    if changes.get("csd_write_amplification", 1.0) < 1.0:
        raise UsageError(f"{source}: hardware: csd_write_amplification: expected >= 1, got {changes['csd_write_amplification']}")
    hw = hw._replace(**changes)
    if hw.gpu_active_power < hw.gpu_idle_power or hw.host_active_power < hw.host_idle_power or hw.csd_active_power < hw.csd_idle_power:
        raise UsageError(f"{source}: hardware: expected every *_active_power >= its *_idle_power")

    opt_section = _check_keys(f"{source}: options", top.get("options", {}), ("lookahead_batches", "csd_cache_policy", "num_batches"))
    opts = {}
    if "lookahead_batches" in opt_section:
        opts["lookahead_batches"] = int(_number(f"{source}: options", "lookahead_batches", opt_section["lookahead_batches"], integer=True, allow_zero=True))
    if "num_batches" in opt_section:
        opts["num_batches"] = int(_number(f"{source}: options", "num_batches", opt_section["num_batches"], integer=True))
    if "csd_cache_policy" in opt_section:
        policy = opt_section["csd_cache_policy"]
        if policy not in CACHE_POLICIES:
            raise UsageError(f"{source}: options: csd_cache_policy: expected one of {list(CACHE_POLICIES)}, got {policy!r}")
        opts["csd_cache_policy"] = policy
    try:
        options = SystemOptions(**opts)
    except ValueError as error:
        raise UsageError(f"{source}: options: {error}") from None

    fields = {f.name for f in dataclasses.fields(WorkloadSettings)}
    wl_section = _check_keys(f"{source}: workload", top.get("workload", {}), fields)
    wl = {}
    for key, value in wl_section.items():
        if key == "optimizer":
            if value not in OPTIMIZER_STATE_BYTES:
                raise UsageError(f"{source}: workload: optimizer: expected one of {list(OPTIMIZER_STATE_BYTES)}, got {value!r}")
            wl[key] = value
        elif key == "row_cap" and value is None:
            wl[key] = None
        elif key in ("batch_size", "trace_batches", "row_cap", "synthetic_rows"):
            wl[key] = int(_number(f"{source}: workload", key, value, integer=True))
        elif key == "zipf_exponent":
            wl[key] = _number(f"{source}: workload", key, value, allow_zero=True)
        else:
            wl[key] = _number(f"{source}: workload", key, value)
    if wl.get("trace_batches", 2) < 2:
        raise UsageError(f"{source}: workload: trace_batches: expected >= 2, got {wl['trace_batches']}")
    name = top.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise UsageError(f"{source}: name: expected a string, got {name!r}")
    return SystemFile(name, str(top.get("description", "")), hw, options, WorkloadSettings(**wl), source)


def load_system_file(name_or_path: str | Path) -> SystemFile:
    """Read and validate a system file (a path, or the name of a bundled config)."""
    path = resolve_config_path(name_or_path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"config {str(path)!r}: not valid JSON ({error.msg} at line {error.lineno})") from None
    return parse_system(data, source=str(path))
