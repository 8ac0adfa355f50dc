"""Hardware descriptions: the accelerators' sizes, the memory system and the energy table.

Everything here is a pytree of ``float32`` arrays (``NamedTuple`` s), so a design point
can be batched (stack many along a leading axis and ``jax.vmap``) and differentiated
(integer sizes are relaxed to reals, see :mod:`hwmodel.relax`). Choices that change the
*structure* of the computation (systolic dataflow, order of the two ESCALATE stages) are
static :class:`Options` instead.

Designs are edited as JSON or TOML files with the sections ``memory``, ``escalate``,
``systolic``, ``scnn``, ``sparten``, ``energy`` and ``options``; any key left out keeps its
default (:func:`default_config_dict`). :func:`load_hardware` validates them and names the
offending key, the expectation and the value.

Energy table (one place, :class:`EnergyTable`): 45 nm numbers from Horowitz, "Computing's
energy problem", ISSCC 2014:

* multiplication ``0.2 pJ`` for 8x8 bits, scaled by the product of the operand widths
  (``0.2 * a * b / 64`` pJ; an array multiplier's area grows with ``a * b``);
* addition ``0.1 pJ`` per 32 bits, scaled linearly with width (accumulators at ``acc_bits``);
* SRAM read or write of 64 bits: ``10 pJ`` at 8 KB, scaled by ``sqrt(size / 8 KB)`` (which
  reproduces Horowitz's 20 pJ at 32 KB and gives 113 pJ at 1 MB against his 100 pJ);
* DRAM ``1.3 nJ`` per 64 bits (the low end of Horowitz's 1.3-2.6 nJ);
* one bit through one 2x2 switch of a butterfly / crossbar stage: ``0.003 pJ`` -- an
  estimate (not from Horowitz): about one full-adder bit, ``0.1 pJ / 32``;
* ``technology_scale`` multiplies every entry (1.0 = 45 nm); e.g. about 0.4 for 22 nm.

Example:
    >>> hw, options = load_hardware(None)          # the defaults
    >>> float(hw.escalate.lanes), options.dataflow
    (32.0, 'os')
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from runkit import MissingFileError, UsageError, check_choice


class MemoryConfig(NamedTuple):
    """Clock, off-chip bandwidth, global buffer and data widths shared by all designs."""

    clock_ghz: jax.Array          # core clock
    dram_gbps: jax.Array          # DRAM bandwidth, GB/s
    glb_kib: jax.Array            # global on-chip buffer, KiB
    act_bits: jax.Array           # activation width
    acc_bits: jax.Array           # accumulator / intermediate (stage-to-stage) width


class EscalateConfig(NamedTuple):
    """ESCALATE-style accelerator: sparse PEs with butterfly matchers plus a dense basis engine."""

    pes: jax.Array                # sparse processing elements, P
    lanes: jax.Array              # butterfly lanes per PE, N (power of two)
    multipliers: jax.Array        # multipliers per PE, M
    fifo_depth: jax.Array         # matched-pair FIFO between butterfly and multipliers (cycle simulator only)
    basis_macs: jax.Array         # multiply-accumulate units of the dense basis engine, B
    pe_buffer_kib: jax.Array      # per-PE operand buffer, KiB


class SystolicConfig(NamedTuple):
    """Dense systolic array (SCALE-Sim conventions)."""

    rows: jax.Array
    cols: jax.Array


class ScnnConfig(NamedTuple):
    """SCNN-like accelerator: PEs with an F x I Cartesian-product multiplier array."""

    pes: jax.Array
    weight_vector: jax.Array      # F non-zero weights per cycle
    act_vector: jax.Array         # I non-zero activations per cycle
    conflict_overhead: jax.Array  # fraction of extra cycles lost to accumulator-bank conflicts
    index_bits: jax.Array         # run-length index bits per non-zero
    accumulator_kib: jax.Array    # per-PE accumulator buffer, KiB


class SpartenConfig(NamedTuple):
    """SparTen-like accelerator: compute units doing bitmask inner joins, one MAC per cycle each."""

    units: jax.Array
    chunk: jax.Array              # bitmask chunk length per join step
    buffer_kib: jax.Array         # per-unit operand buffer, KiB


class EnergyTable(NamedTuple):
    """Energy per action in pJ (see the module docstring for sources)."""

    mult_8x8_pj: jax.Array
    add_32_pj: jax.Array
    sram_64b_8kib_pj: jax.Array
    dram_64b_pj: jax.Array
    switch_bit_pj: jax.Array
    technology_scale: jax.Array


class Hardware(NamedTuple):
    """All design parameters: one design point (scalars) or a batch (leading axis)."""

    memory: MemoryConfig
    escalate: EscalateConfig
    systolic: SystolicConfig
    scnn: ScnnConfig
    sparten: SpartenConfig
    energy: EnergyTable


@dataclasses.dataclass(frozen=True)
class Options:
    """Static choices (they change the computation's structure, so they are not arrays).

    Attributes:
      dataflow: systolic baseline dataflow, ``"os"``, ``"ws"`` or ``"is"``.
      stage_order: ESCALATE stage order: ``"coefficient_first"`` (sparse coefficients meet
        sparse activations, then the basis conv), ``"basis_first"`` (basis conv first, then
        sparse coefficients on the dense intermediate) or ``"best"`` (per layer, the faster).
    """

    dataflow: str = "os"
    stage_order: str = "best"

    def __post_init__(self):
        check_choice("options.dataflow", self.dataflow, DATAFLOWS)
        check_choice("options.stage_order", self.stage_order, STAGE_ORDERS)


DATAFLOWS = ("os", "ws", "is")
STAGE_ORDERS = ("coefficient_first", "basis_first", "best")

_SECTIONS = {
    "memory": MemoryConfig,
    "escalate": EscalateConfig,
    "systolic": SystolicConfig,
    "scnn": ScnnConfig,
    "sparten": SpartenConfig,
    "energy": EnergyTable,
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "memory": {"clock_ghz": 1.0, "dram_gbps": 16.0, "glb_kib": 256.0, "act_bits": 8, "acc_bits": 16},
    # 64 PEs x 2 multipliers + 128 basis MACs = 256 multipliers, like the 16x16 systolic array,
    # the 16 SCNN PEs of 4x4 and the 256 SparTen compute units below (iso-multiplier
    # comparison). The split was chosen with this model: a sweep of P, N, M at 256
    # multipliers minimising ResNet-56 x VGG-16 latency (README, "design defaults").
    "escalate": {"pes": 64, "lanes": 32, "multipliers": 2, "fifo_depth": 64, "basis_macs": 128, "pe_buffer_kib": 2.0},
    "systolic": {"rows": 16, "cols": 16},
    "scnn": {"pes": 16, "weight_vector": 4, "act_vector": 4, "conflict_overhead": 0.1, "index_bits": 4, "accumulator_kib": 6.0},
    "sparten": {"units": 256, "chunk": 128, "buffer_kib": 1.0},
    "energy": {"mult_8x8_pj": 0.2, "add_32_pj": 0.1, "sram_64b_8kib_pj": 10.0, "dram_64b_pj": 1300.0, "switch_bit_pj": 0.003, "technology_scale": 1.0},
    "options": {"dataflow": "os", "stage_order": "best"},
}

# Keys that must be whole numbers, and keys that must be powers of two.
_INTEGER_KEYS = {"act_bits", "acc_bits", "pes", "lanes", "multipliers", "fifo_depth", "basis_macs", "rows", "cols", "weight_vector", "act_vector", "index_bits", "units", "chunk"}
_POWER_OF_TWO_KEYS = {("escalate", "lanes")}
_BIT_KEYS = {"act_bits", "acc_bits", "index_bits"}
_ALLOW_ZERO = {"conflict_overhead"}


def default_config_dict() -> dict[str, dict[str, Any]]:
    """The default design as a plain dict (the layout of a config file)."""
    return copy.deepcopy(_DEFAULTS)


def _validate_value(section: str, key: str, value: Any) -> float:
    where = f"{section}.{key}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise UsageError(f"{where}: expected a finite number, got {value!r}")
    if key in _ALLOW_ZERO:
        if value < 0:
            raise UsageError(f"{where}: expected a value >= 0, got {value!r}")
    elif value <= 0:
        raise UsageError(f"{where}: expected a value > 0, got {value!r}")
    if key in _INTEGER_KEYS and value != int(value):
        raise UsageError(f"{where}: expected a whole number, got {value!r}")
    if key in _BIT_KEYS and not 1 <= value <= 32:
        raise UsageError(f"{where}: expected a bit width in [1, 32], got {value!r}")
    if (section, key) in _POWER_OF_TWO_KEYS and (value < 2 or int(value) & (int(value) - 1)):
        raise UsageError(f"{where}: expected a power of two >= 2, got {value!r}")
    return value


def hardware_from_dict(config: dict[str, Any]) -> tuple[Hardware, Options]:
    """Validate a config dict (sections as in :func:`default_config_dict`; missing keys default).

    Raises:
      ValueError: unknown section or key, non-numeric, negative/zero sizes, non-power-of-two
        lanes, bit widths outside [1, 32], unknown dataflow or stage order.
    """
    if not isinstance(config, dict):
        raise UsageError(f"hardware config: expected a mapping of sections, got {type(config).__name__}")
    merged = default_config_dict()
    for section, values in config.items():
        if section not in merged:
            raise UsageError(f"hardware config: unknown section {section!r}; expected one of {sorted(merged)}")
        if not isinstance(values, dict):
            raise UsageError(f"hardware config: section {section!r} must be a mapping, got {values!r}")
        for key, value in values.items():
            if key not in merged[section]:
                raise UsageError(f"hardware config: unknown key {section}.{key}; expected one of {sorted(merged[section])}")
            merged[section][key] = value
    options = Options(**merged["options"])
    parts = {}
    for section, cls in _SECTIONS.items():
        parts[section] = cls(**{k: jnp.asarray(_validate_value(section, k, v), jnp.float32) for k, v in merged[section].items()})
    return Hardware(**parts), options


def load_hardware(path: str | Path | None) -> tuple[Hardware, Options]:
    """Load and validate a ``.json`` or ``.toml`` hardware config (``None``: the defaults).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "hw.toml")
        >>> _ = open(p, "w").write("[escalate]\\nlanes = 64\\n")
        >>> hw, _ = load_hardware(p); float(hw.escalate.lanes)
        64.0
    """
    if path is None:
        return hardware_from_dict({})
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"hardware config: file not found: {str(path)!r}")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"hardware config {str(path)!r}: invalid JSON: {error}") from None
    elif path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UsageError(f"hardware config {str(path)!r}: invalid TOML: {error}") from None
    else:
        raise UsageError(f"hardware config: expected a .json or .toml file, got {str(path)!r}")
    return hardware_from_dict(data)


def hardware_to_dict(hw: Hardware, options: Options | None = None) -> dict[str, Any]:
    """Inverse of :func:`hardware_from_dict` for one design point (plain floats)."""
    out = {section: {k: float(v) for k, v in getattr(hw, section)._asdict().items()} for section in _SECTIONS}
    if options is not None:
        out["options"] = dataclasses.asdict(options)
    return out


def stack_hardware(designs: list[Hardware]) -> Hardware:
    """Stack design points along a new leading axis (for ``jax.vmap`` over designs)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *designs)
