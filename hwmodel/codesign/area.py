"""Silicon area of an ESCALATE-style design point (45 nm), differentiable in every size.

The co-design search needs a budget that makes more hardware cost something. This model
counts the blocks that grow with the searched sizes; everything else (control, DRAM
interface, clock tree) is a fixed share that cancels out of iso-area comparisons.

Area per block (45 nm; :class:`AreaTable`, one place for every number):

* multiplier: ``282 um^2`` for 8x8 bits (Horowitz, ISSCC 2014, area table), scaled by
  the product of the operand widths (an array multiplier grows with ``a * b``);
* adder / accumulator: ``137 um^2`` per 32 bits (Horowitz), scaled linearly with width;
* SRAM: ``0.69 um^2`` per bit -- a 0.346 um^2 45 nm 6T cell doubled for decoders, sense
  amplifiers and wiring (an estimate; CACTI gives 1.5-2.5x cell area for 1-64 KiB arrays);
* register (flip-flop) bit: ``4.5 um^2`` (estimate, a 45 nm standard-cell DFF);
* one 2x2 switch of a butterfly stage, per data bit: ``4 um^2`` (two 2:1 multiplexers,
  an estimate).

Design ``hw`` (see :class:`~hwmodel.hardware.EscalateConfig`) then occupies::

    P * [ M * (mult(w, a) + add(acc))                    sparse multipliers
          + log2(N) * N/2 * (w + a) * switch             inverse butterfly
          + fifo_depth * (w + a) * register              matched-pair FIFO
          + pe_buffer_kib * 8192 * sram ]                operand buffer
    + B * (mult(basis_bits, acc) + add(acc))             dense basis engine
    + glb_kib * 8192 * sram                              global buffer

with ``w = weight_bits`` (the widest weight the sparse multipliers take, 8), ``a =
act_bits``, ``acc = acc_bits`` and ``basis_bits`` (8) from :class:`AreaTable`.

Example:
    >>> from hwmodel.hardware import load_hardware
    >>> hw, _ = load_hardware(None)
    >>> round(float(escalate_area_mm2(hw)), 3)
    2.919
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hwmodel.hardware import Hardware


class AreaTable(NamedTuple):
    """Area per block in um^2 at 45 nm (see the module docstring for sources)."""

    mult_8x8_um2: float = 282.0
    add_32_um2: float = 137.0
    sram_bit_um2: float = 0.69
    register_bit_um2: float = 4.5
    switch_bit_um2: float = 4.0
    weight_bits: float = 8.0
    basis_bits: float = 8.0


AREA_TABLE = AreaTable()


class AreaBreakdown(NamedTuple):
    """Area of each block in mm^2 (scalars, or arrays for a batch of designs)."""

    sparse_multipliers: jax.Array
    butterflies: jax.Array
    fifos: jax.Array
    pe_buffers: jax.Array
    basis_engine: jax.Array
    global_buffer: jax.Array

    @property
    def total(self) -> jax.Array:
        return sum(self, jnp.zeros_like(self.global_buffer))


def escalate_area_breakdown(hw: Hardware, table: AreaTable = AREA_TABLE) -> AreaBreakdown:
    """Area of every block of the ESCALATE-style design, in mm^2 (differentiable in all sizes)."""
    m, e = hw.memory, hw.escalate
    um2_per_mm2 = 1e6
    operand_bits = table.weight_bits + m.act_bits
    mult = table.mult_8x8_um2 * table.weight_bits * m.act_bits / 64.0
    add = table.add_32_um2 * m.acc_bits / 32.0
    basis_mult = table.mult_8x8_um2 * table.basis_bits * m.acc_bits / 64.0
    sram_kib = 8192.0 * table.sram_bit_um2
    return AreaBreakdown(
        sparse_multipliers=e.pes * e.multipliers * (mult + add) / um2_per_mm2,
        butterflies=e.pes * jnp.log2(e.lanes) * e.lanes / 2.0 * operand_bits * table.switch_bit_um2 / um2_per_mm2,
        fifos=e.pes * e.fifo_depth * operand_bits * table.register_bit_um2 / um2_per_mm2,
        pe_buffers=e.pes * e.pe_buffer_kib * sram_kib / um2_per_mm2,
        basis_engine=e.basis_macs * (basis_mult + add) / um2_per_mm2,
        global_buffer=m.glb_kib * sram_kib / um2_per_mm2,
    )


def escalate_area_mm2(hw: Hardware, table: AreaTable = AREA_TABLE) -> jax.Array:
    """Total area in mm^2 of the blocks counted by :func:`escalate_area_breakdown`."""
    return escalate_area_breakdown(hw, table).total
