"""Analytic latency and energy of one layer on the ESCALATE-style design and three baselines.

All functions here take one layer (a :class:`~hwmodel.workload.Workload` of scalars) and one
design point (a :class:`~hwmodel.hardware.Hardware` of scalars) and return a
:class:`LayerCost` of scalars; :func:`evaluate` vectorises them over layers and design points
with ``jax.vmap``. They are pure ``jnp`` and differentiable; ``relaxed=True`` swaps the few
non-smooth operations for the surrogates of :mod:`hwmodel.relax`.

Counting follows Sparseloop (expected counts = dense counts x density, metadata per format),
latency follows DOSA-style rooflines (``max(compute, traffic / bandwidth)`` per stage) and
energy Accelergy-style (``sum(action count x energy per action)`` with the table in
:class:`~hwmodel.hardware.EnergyTable`). Every assumption is listed in ``ASSUMPTIONS`` and in
the docstrings of the per-design functions.

Example:
    >>> from hwmodel.hardware import load_hardware
    >>> from hwmodel.workload import model_layers, workload_from_layers
    >>> hw, options = load_hardware(None)
    >>> wl = workload_from_layers(model_layers("resnet20"))
    >>> cost = evaluate("escalate", wl, hw, options)
    >>> cost.cycles.shape
    (20,)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from hwmodel import relax
from hwmodel.hardware import EnergyTable, Hardware, Options
from hwmodel.workload import Workload
from runkit import UsageError

DESIGNS = ("escalate", "systolic", "scnn", "sparten")

ASSUMPTIONS = {
    "escalate.structure": "P sparse PEs, each an N-lane inverse-butterfly matcher feeding M multipliers through a FIFO, plus a dense basis engine of B MACs; the two stages stream row by row through an on-chip line buffer.",
    "escalate.sparse_stage": "A work unit is one output value of the sparse 1x1 stage (pixel, output channel[, basis]); its reduction of length R is scanned in ceil(R/N) chunks, one chunk per cycle per PE; matched pairs queue for the M multipliers, so a PE needs max(chunks, matches / M) cycles. Units are dispatched dynamically to idle PEs (no row barrier); the last PE to finish needs on average half a unit longer than the mean.",
    "escalate.dead_channels": "Output channels whose coefficients are all zero are skipped (empty rows of the compressed format).",
    "escalate.coefficient_first": "Sparse coefficients x sparse post-ReLU activations at input resolution (Cout*d maps), then the depthwise basis conv per output channel (dense, B MACs/cycle).",
    "escalate.basis_first": "Depthwise basis conv of every input channel first (dense), then sparse coefficients x the intermediate, whose density is the workload's measured window density when given, else estimated as 1 - (1 - act_density)^(k*k*f) (a window is zero only if all its f*k*k in-bounds inputs are; f = fraction of taps not in the padding; this assumes independent zeros and overestimates for real, clustered feature maps).",
    "escalate.precision": "Coefficients at coef_bits, basis at basis_bits, activations at act_bits, the stage-to-stage intermediate at acc_bits; multiplier energy scales with the product of operand widths.",
    "escalate.undecomposed": "Layers with basis = 0 (1x1 convs, the classifier) run on the sparse engine alone as an im2col reduction of length Cin*k*k (padding taps count as zero activations).",
    "escalate.latency": "One cycle from matcher to multipliers is added to every layer; DRAM rooflines per stage as in 'pipeline'.",
    "pipeline": "Two row-streamed stages: latency = max(n1*t1 + tail*t2, head*t1 + n2*t2), where head is the number of producer rows the first consumer row needs, tail the number of consumer rows that need the last producer row and t = max(compute, DRAM traffic / bandwidth) per row.",
    "memory": "Weights (compressed with a 1-bit-per-position bitmap for ESCALATE and SparTen, run-length indices for SCNN, dense for the systolic array) stay on chip if they fit in half the global buffer; otherwise they are tiled and the input is re-read once per tile. Output activations are written compressed at the layer's input density.",
    "systolic": "SCALE-Sim v3 closed form: GEMM M = Hout*Wout, K = k*k*Cin, N = Cout; OS maps (Sr, Sc, T) = (M, N, K) with R + C + T - 2 cycles per fold; WS (K, N, M) and IS (K, M, N) with 2R + C + T - 2; folds = ceil(Sr/R) * ceil(Sc/C); minus one cycle (SCALE-Sim reports the index of the last output cycle). SRAM reads counted per fold as SCALE-Sim does.",
    "sparse_baselines": "SCNN-like and SparTen-like designs run the same compressed model with each kernel reconstructed (W = C . B), so a kernel is either all zero or dense: weight density = live_fraction * (1 - (1 - coef_density_live)^d).",
    "scnn": "Input plane split over PEs; per input channel, F non-zero weights x I non-zero activations per cycle: Cin * ceil(nnzW_c / F) * ceil(nnzA_tile / I) cycles, plus an accumulator-bank conflict overhead; all Cartesian products are computed (also those a stride discards) and scattered through an F*I -> 2*F*I crossbar.",
    "sparten": "One output per compute unit at a time; bitmask inner join over chunks of L positions, max(1, matches) cycles per chunk (one MAC per cycle); perfect greedy load balance across units.",
}


class LayerCost(NamedTuple):
    """Cost of one layer on one design (scalars, or batched arrays from :func:`evaluate`).

    Attributes:
      cycles: latency in cycles (compute and memory rooflines combined).
      compute_cycles: latency with infinite DRAM bandwidth.
      memory_cycles: DRAM traffic / bandwidth.
      mac_pj, buffer_pj, dram_pj, network_pj: energy breakdown in pJ.
      useful_macs: non-zero multiply-accumulates the layer needs on this design.
      multipliers: multipliers the design has (for utilisation).
      dram_bits: off-chip traffic.
    """

    cycles: jax.Array
    compute_cycles: jax.Array
    memory_cycles: jax.Array
    mac_pj: jax.Array
    buffer_pj: jax.Array
    dram_pj: jax.Array
    network_pj: jax.Array
    useful_macs: jax.Array
    multipliers: jax.Array
    dram_bits: jax.Array

    @property
    def energy_pj(self) -> jax.Array:
        return self.mac_pj + self.buffer_pj + self.dram_pj + self.network_pj

    @property
    def utilization(self) -> jax.Array:
        return self.useful_macs / (self.cycles * self.multipliers)


# ----------------------------------------------------------------------------- energy table


def _mult_pj(e: EnergyTable, a, b):
    return e.technology_scale * e.mult_8x8_pj * a * b / 64.0


def _add_pj(e: EnergyTable, bits):
    return e.technology_scale * e.add_32_pj * bits / 32.0


def _sram_bit_pj(e: EnergyTable, kib):
    # sqrt of a size floored at 0.25 KiB: finite slope even for an empty buffer.
    return e.technology_scale * e.sram_64b_8kib_pj * jnp.sqrt(jnp.maximum(kib, 0.25) / 8.0) / 64.0


def _dram_bit_pj(e: EnergyTable):
    return e.technology_scale * e.dram_64b_pj / 64.0


def _bits_per_cycle(hw: Hardware):
    return hw.memory.dram_gbps * 8.0 / hw.memory.clock_ghz


def _safe_div(a, b):
    ok = b > 0
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


def _weight_tiles(weight_bits_total, hw: Hardware, relaxed: bool):
    """Times the input is streamed: once per half-global-buffer of weights (at least once)."""
    half_glb_bits = hw.memory.glb_kib * 8192.0 / 2.0
    return relax.maximum(relax.ceil(weight_bits_total / half_glb_bits, relaxed=relaxed), jnp.float32(1.0), relaxed=relaxed)


def _pipeline(n1, t1, n2, t2, head, tail, relaxed: bool, finish1=0.0, finish2=0.0):
    """Latency of a producer stage (n1 rows of t1 cycles) streaming into a consumer (n2 rows of t2).

    ``head``: producer rows the first consumer row needs; ``tail``: consumer rows that need
    the last producer row (they can only run after the producer has finished);
    ``finish1/2``: extra cycles at the end of a stage (load imbalance of its last work).
    """
    return relax.maximum(n1 * t1 + finish1 + tail * t2 + finish2, head * t1 + n2 * t2 + finish2, relaxed=relaxed)


def _outside_taps(excess, stride):
    """Window taps falling into the zero padding on one border: ``sum_i max(0, excess - i*stride)``."""
    n = jnp.ceil(jnp.maximum(excess, 0.0) / stride)
    return n * excess - stride * n * (n - 1.0) / 2.0


def valid_tap_fraction(layer: Workload):
    """Fraction of the ``h_out*w_out*k*k`` window taps of a padded conv that land inside the input.

    Padding zeros are not activations, so the im2col density is ``act_density`` times this.
    Geometry only (no gradient is needed through it); exact for ``padding <= kernel // 2``,
    also when the input is smaller than the kernel.
    """
    k, s, pad = layer.kernel, layer.stride, layer.padding

    def border(excess, size_out):
        # only the size_out windows that exist count (small inputs: fewer windows than the padding spans)
        return _outside_taps(excess, s) - _outside_taps(excess - size_out * s, s)

    def one_axis(size_in, size_out):
        over = (size_out - 1.0) * s + k - pad - size_in
        outside = border(pad, size_out) + border(over, size_out)
        return (size_out * k - outside) / (size_out * k)

    return one_axis(layer.h_in, layer.h_out) * one_axis(layer.w_in, layer.w_out)


def _live(layer: Workload):
    """Live output channels and the coefficient density among them."""
    live = layer.live_out_fraction
    return layer.c_out * live, jnp.minimum(_safe_div(layer.coef_density, live), 1.0)


# ----------------------------------------------------------------------------- ESCALATE-style


class _Sparse(NamedTuple):
    row_cycles: jax.Array
    chunks: jax.Array   # per row
    matches: jax.Array  # per row
    finish: jax.Array   # expected extra cycles of the last PE to finish: half a work unit


def _sparse_stage(units_row, reduction, density, hw: Hardware, relaxed: bool) -> _Sparse:
    e = hw.escalate
    chunks = units_row * relax.ceil(reduction / e.lanes, relaxed=relaxed)
    matches = units_row * reduction * density
    row = relax.maximum(chunks, matches / e.multipliers, relaxed=relaxed) / e.pes
    unit = relax.maximum(relax.ceil(reduction / e.lanes, relaxed=relaxed), reduction * density / e.multipliers, relaxed=relaxed)
    return _Sparse(row, chunks, matches, 0.5 * unit)


# The multipliers take a pair one cycle after the matcher produced it.
MATCHER_TO_MULTIPLIER_CYCLES = 1.0


def _coefficient_first_head_tail(layer: Workload):
    """``head`` and ``tail`` of :func:`_pipeline` for input rows streaming into the basis conv."""
    k = layer.kernel
    head = jnp.minimum(k - layer.padding, layer.h_in)
    # output row r needs input rows up to r*s + k - 1 - pad; those reaching the last input row wait for it
    tail = jnp.clip(layer.h_out - jnp.ceil((layer.h_in - k + layer.padding) / layer.stride), 1.0, layer.h_out)
    return head, tail


def _intermediate_density(layer: Workload):
    """Density of the basis conv's output: measured when given, else independent activations over the valid taps."""
    independent = 1.0 - (1.0 - layer.act_density) ** (layer.kernel * layer.kernel * valid_tap_fraction(layer))
    return jnp.where(layer.window_density >= 0.0, layer.window_density, independent)


def _escalate_decomposed(layer: Workload, hw: Hardware, order: str, relaxed: bool) -> LayerCost:
    m, e, en = hw.memory, hw.escalate, hw.energy
    d, k = layer.basis, layer.kernel
    pa = layer.act_density
    c_live, pc = _live(layer)
    bw = _bits_per_cycle(hw)
    act_bits, acc = m.act_bits, m.acc_bits

    coef_total = c_live * layer.c_in * d * (pc * layer.coef_bits + 1.0)
    basis_total = d * k * k * layer.basis_bits
    ifmap = layer.h_in * layer.w_in * layer.c_in * (pa * act_bits + 1.0)
    ofmap = layer.h_out * layer.w_out * layer.c_out * (pa * act_bits + 1.0)
    tiles = _weight_tiles(coef_total, hw, relaxed)

    if order == "coefficient_first":
        sparse = _sparse_stage(layer.w_in * c_live * d, layer.c_in, pc * pa, hw, relaxed)
        n_sparse = layer.h_in
        dense_row_macs = layer.w_out * c_live * d * k * k
        n_dense = layer.h_out
        dense_row = relax.ceil(dense_row_macs / e.basis_macs, relaxed=relaxed)
        mem_sparse, mem_dense = coef_total + tiles * ifmap, basis_total + ofmap
        t_sparse = relax.maximum(sparse.row_cycles, mem_sparse / (n_sparse * bw), relaxed=relaxed)
        t_dense = relax.maximum(dense_row, mem_dense / (n_dense * bw), relaxed=relaxed)
        head, tail = _coefficient_first_head_tail(layer)
        cycles = _pipeline(n_sparse, t_sparse, n_dense, t_dense, head, tail, relaxed, finish1=sparse.finish) + MATCHER_TO_MULTIPLIER_CYCLES
        compute = _pipeline(n_sparse, sparse.row_cycles, n_dense, dense_row, head, tail, relaxed, finish1=sparse.finish) + MATCHER_TO_MULTIPLIER_CYCLES
        sparse_mult = _mult_pj(en, layer.coef_bits, act_bits)
        dense_mult = _mult_pj(en, layer.basis_bits, acc)
        operand_bits = layer.coef_bits + act_bits
        line_buffer_values = layer.h_in * layer.w_in * c_live * d
        line_buffer_reads = n_dense * dense_row_macs / k
        line_buffer_kib = k * layer.w_in * c_live * d * acc / 8192.0
    else:  # basis_first
        dense_row_macs = layer.w_out * layer.c_in * d * k * k
        n_dense = layer.h_out
        dense_row = relax.ceil(dense_row_macs / e.basis_macs, relaxed=relaxed)
        p_intermediate = _intermediate_density(layer)
        sparse = _sparse_stage(layer.w_out * c_live, layer.c_in * d, pc * p_intermediate, hw, relaxed)
        n_sparse = layer.h_out
        mem_dense, mem_sparse = basis_total + tiles * ifmap, coef_total + ofmap
        t_dense = relax.maximum(dense_row, mem_dense / (n_dense * bw), relaxed=relaxed)
        t_sparse = relax.maximum(sparse.row_cycles, mem_sparse / (n_sparse * bw), relaxed=relaxed)
        cycles = _pipeline(n_dense, t_dense, n_sparse, t_sparse, 1.0, 1.0, relaxed, finish2=sparse.finish) + MATCHER_TO_MULTIPLIER_CYCLES
        compute = _pipeline(n_dense, dense_row, n_sparse, sparse.row_cycles, 1.0, 1.0, relaxed, finish2=sparse.finish) + MATCHER_TO_MULTIPLIER_CYCLES
        sparse_mult = _mult_pj(en, layer.coef_bits, acc)
        dense_mult = _mult_pj(en, layer.basis_bits, act_bits)
        operand_bits = layer.coef_bits + acc
        line_buffer_values = layer.h_out * layer.w_out * layer.c_in * d
        line_buffer_reads = line_buffer_values
        line_buffer_kib = layer.w_out * layer.c_in * d * acc / 8192.0

    matches = n_sparse * sparse.matches
    chunks = n_sparse * sparse.chunks
    dense_macs = n_dense * dense_row_macs
    dram_bits = mem_sparse + mem_dense
    add = _add_pj(en, acc)
    mac_pj = matches * (sparse_mult + add) + dense_macs * (dense_mult + add)
    pe_bits = chunks * 2.0 * e.lanes + matches * operand_bits
    buffer_pj = (
        dram_bits * _sram_bit_pj(en, m.glb_kib)
        + pe_bits * _sram_bit_pj(en, e.pe_buffer_kib)
        + (line_buffer_values + line_buffer_reads) * acc * _sram_bit_pj(en, line_buffer_kib)
    )
    network_pj = chunks * jnp.log2(e.lanes) * e.lanes * operand_bits * en.switch_bit_pj * en.technology_scale
    return LayerCost(
        cycles=cycles, compute_cycles=compute, memory_cycles=dram_bits / bw,
        mac_pj=mac_pj, buffer_pj=buffer_pj, dram_pj=dram_bits * _dram_bit_pj(en), network_pj=network_pj,
        useful_macs=matches + dense_macs, multipliers=e.pes * e.multipliers + e.basis_macs, dram_bits=dram_bits,
    )


def _escalate_plain(layer: Workload, hw: Hardware, relaxed: bool) -> LayerCost:
    """A layer that is not decomposed: im2col reduction on the sparse engine alone."""
    m, e, en = hw.memory, hw.escalate, hw.energy
    k, pa = layer.kernel, layer.act_density
    c_live, pw = _live(layer)
    bw = _bits_per_cycle(hw)
    reduction = layer.c_in * k * k
    sparse = _sparse_stage(layer.w_out * c_live, reduction, pw * pa * valid_tap_fraction(layer), hw, relaxed)
    weights = c_live * reduction * (pw * layer.weight_bits + 1.0)
    ifmap = layer.h_in * layer.w_in * layer.c_in * (pa * m.act_bits + 1.0)
    ofmap = layer.h_out * layer.w_out * layer.c_out * (pa * m.act_bits + 1.0)
    dram_bits = weights + _weight_tiles(weights, hw, relaxed) * ifmap + ofmap
    rows = layer.h_out
    t = relax.maximum(sparse.row_cycles, dram_bits / (rows * bw), relaxed=relaxed)
    matches, chunks = rows * sparse.matches, rows * sparse.chunks
    operand_bits = layer.weight_bits + m.act_bits
    pe_bits = chunks * 2.0 * e.lanes + matches * operand_bits
    return LayerCost(
        cycles=rows * t + sparse.finish + MATCHER_TO_MULTIPLIER_CYCLES, compute_cycles=rows * sparse.row_cycles + sparse.finish + MATCHER_TO_MULTIPLIER_CYCLES, memory_cycles=dram_bits / bw,
        mac_pj=matches * (_mult_pj(en, layer.weight_bits, m.act_bits) + _add_pj(en, m.acc_bits)),
        buffer_pj=dram_bits * _sram_bit_pj(en, m.glb_kib) + pe_bits * _sram_bit_pj(en, e.pe_buffer_kib),
        dram_pj=dram_bits * _dram_bit_pj(en),
        network_pj=chunks * jnp.log2(e.lanes) * e.lanes * operand_bits * en.switch_bit_pj * en.technology_scale,
        useful_macs=matches, multipliers=e.pes * e.multipliers + e.basis_macs, dram_bits=dram_bits,
    )


def _select(condition, a: LayerCost, b: LayerCost) -> LayerCost:
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), a, b)


def escalate_layer(layer: Workload, hw: Hardware, *, stage_order: str = "coefficient_first", relaxed: bool = False) -> LayerCost:
    """ESCALATE-style cost of one layer (see ``ASSUMPTIONS['escalate.*']``).

    Args:
      layer: one layer (scalar fields).
      hw: one design point (scalar fields).
      stage_order: ``"coefficient_first"``, ``"basis_first"`` or ``"best"`` (the order with
        fewer cycles, per layer; its gradient is the chosen order's).
      relaxed: smooth surrogates for ceil/max (for gradients).
    """
    plain = _escalate_plain(layer, hw, relaxed)
    if stage_order == "best":
        a = _escalate_decomposed(layer, hw, "coefficient_first", relaxed)
        b = _escalate_decomposed(layer, hw, "basis_first", relaxed)
        decomposed = _select(a.cycles <= b.cycles, a, b)
    else:
        decomposed = _escalate_decomposed(layer, hw, stage_order, relaxed)
    return _select(layer.basis > 0, decomposed, plain)


# ----------------------------------------------------------------------------- baselines


def systolic_compute_cycles(m_dim, k_dim, n_dim, rows, cols, dataflow: str, *, relaxed: bool = False):
    """SCALE-Sim v3 compute cycles of a GEMM (M x K) . (K x N) on an R x C array.

    The result is float32 (so it can be differentiated): exact for counts below 2**24, within
    one float32 rounding above.

    Example:
        >>> int(systolic_compute_cycles(1024, 144, 16, 32, 32, "os"))
        6591
    """
    if dataflow == "os":
        sr, sc, t = m_dim, n_dim, k_dim
        per_fold = rows + cols + t - 2.0
    elif dataflow == "ws":
        sr, sc, t = k_dim, n_dim, m_dim
        per_fold = 2.0 * rows + cols + t - 2.0
    elif dataflow == "is":
        sr, sc, t = k_dim, m_dim, n_dim
        per_fold = 2.0 * rows + cols + t - 2.0
    else:
        raise UsageError(f"dataflow: expected one of ['os', 'ws', 'is'], got {dataflow!r}")
    folds = relax.ceil(sr / rows, relaxed=relaxed) * relax.ceil(sc / cols, relaxed=relaxed)
    return folds * per_fold - 1.0


def systolic_layer(layer: Workload, hw: Hardware, *, dataflow: str = "os", relaxed: bool = False) -> LayerCost:
    """Dense systolic array running the dense layer (see ``ASSUMPTIONS['systolic']``)."""
    m, s, en = hw.memory, hw.systolic, hw.energy
    k = layer.kernel
    m_dim, k_dim, n_dim = layer.h_out * layer.w_out, k * k * layer.c_in, layer.c_out
    compute = systolic_compute_cycles(m_dim, k_dim, n_dim, s.rows, s.cols, dataflow, relaxed=relaxed)
    weights = k_dim * n_dim * layer.weight_bits
    ifmap = layer.h_in * layer.w_in * layer.c_in * m.act_bits
    ofmap = m_dim * n_dim * m.act_bits
    dram_bits = weights + _weight_tiles(weights, hw, relaxed) * ifmap + ofmap
    bw = _bits_per_cycle(hw)
    row_fold = relax.ceil((m_dim if dataflow == "os" else k_dim) / s.rows, relaxed=relaxed)
    col_fold = relax.ceil((m_dim if dataflow == "is" else n_dim) / s.cols, relaxed=relaxed)
    if dataflow == "os":
        reads = m_dim * k_dim * col_fold * m.act_bits + k_dim * n_dim * row_fold * layer.weight_bits + m_dim * n_dim * m.act_bits
    elif dataflow == "ws":
        reads = k_dim * n_dim * layer.weight_bits + m_dim * k_dim * col_fold * m.act_bits + m_dim * n_dim * row_fold * m.acc_bits
    else:
        reads = m_dim * k_dim * m.act_bits + k_dim * n_dim * col_fold * layer.weight_bits + m_dim * n_dim * row_fold * m.acc_bits
    macs = m_dim * k_dim * n_dim
    return LayerCost(
        cycles=relax.maximum(compute, dram_bits / bw, relaxed=relaxed), compute_cycles=compute, memory_cycles=dram_bits / bw,
        mac_pj=macs * (_mult_pj(en, layer.weight_bits, m.act_bits) + _add_pj(en, m.acc_bits)),
        buffer_pj=(reads + dram_bits) * _sram_bit_pj(en, m.glb_kib), dram_pj=dram_bits * _dram_bit_pj(en),
        network_pj=jnp.zeros_like(compute), useful_macs=macs, multipliers=s.rows * s.cols, dram_bits=dram_bits,
    )


def reconstructed_weight_density(layer: Workload):
    """Density of the kernels ``W = C . B`` (a kernel is non-zero iff any of its d coefficients is)."""
    _, pc = _live(layer)
    d_safe = jnp.where(layer.basis > 0, layer.basis, 1.0)
    decomposed = layer.live_out_fraction * (1.0 - (1.0 - pc) ** d_safe)
    return jnp.where(layer.basis > 0, decomposed, layer.coef_density)


def scnn_layer(layer: Workload, hw: Hardware, *, relaxed: bool = False) -> LayerCost:
    """SCNN-like Cartesian-product accelerator (see ``ASSUMPTIONS['scnn']``)."""
    m, c, en = hw.memory, hw.scnn, hw.energy
    k, pa = layer.kernel, layer.act_density
    pw = reconstructed_weight_density(layer)
    tile = relax.ceil(layer.h_in * layer.w_in / c.pes, relaxed=relaxed)
    nnz_w_channel = layer.c_out * k * k * pw
    nnz_a_tile = tile * pa
    per_channel = relax.ceil(nnz_w_channel / c.weight_vector, relaxed=relaxed) * relax.ceil(nnz_a_tile / c.act_vector, relaxed=relaxed)
    compute = layer.c_in * per_channel * (1.0 + c.conflict_overhead)
    products = layer.c_in * nnz_w_channel * layer.h_in * layer.w_in * pa
    weights = layer.c_in * nnz_w_channel * (layer.weight_bits + c.index_bits)
    ifmap = layer.h_in * layer.w_in * layer.c_in * pa * (m.act_bits + c.index_bits)
    ofmap = layer.h_out * layer.w_out * layer.c_out * pa * (m.act_bits + c.index_bits)
    dram_bits = weights + _weight_tiles(weights, hw, relaxed) * ifmap + ofmap
    bw = _bits_per_cycle(hw)
    useful = layer.h_out * layer.w_out * layer.c_out * layer.c_in * k * k * pw * pa
    return LayerCost(
        cycles=relax.maximum(compute, dram_bits / bw, relaxed=relaxed), compute_cycles=compute, memory_cycles=dram_bits / bw,
        mac_pj=products * (_mult_pj(en, layer.weight_bits, m.act_bits) + _add_pj(en, m.acc_bits)),
        buffer_pj=dram_bits * _sram_bit_pj(en, m.glb_kib) + products * 2.0 * m.acc_bits * _sram_bit_pj(en, c.accumulator_kib),
        dram_pj=dram_bits * _dram_bit_pj(en),
        network_pj=products * m.acc_bits * jnp.log2(2.0 * c.weight_vector * c.act_vector) * en.switch_bit_pj * en.technology_scale,
        useful_macs=useful, multipliers=c.pes * c.weight_vector * c.act_vector, dram_bits=dram_bits,
    )


def _expected_join_cycles(length, p):
    """E[max(1, X)] for X ~ Binomial(length, p): ``length * p + (1 - p)^length``; 0 for length 0."""
    safe = jnp.maximum(length, 1.0)
    return jnp.where(length > 0, length * p + (1.0 - p) ** safe, 0.0)


def sparten_layer(layer: Workload, hw: Hardware, *, relaxed: bool = False) -> LayerCost:
    """SparTen-like bitmask inner-join accelerator (see ``ASSUMPTIONS['sparten']``)."""
    m, s, en = hw.memory, hw.sparten, hw.energy
    k, pa = layer.kernel, layer.act_density
    pw = reconstructed_weight_density(layer)
    c_live = layer.c_out * layer.live_out_fraction
    pw_live = jnp.minimum(_safe_div(pw, layer.live_out_fraction), 1.0)
    p = pw_live * pa
    reduction = layer.c_in * k * k
    full = jnp.floor(reduction / s.chunk)
    rest = reduction - full * s.chunk
    per_output = full * _expected_join_cycles(s.chunk, p) + _expected_join_cycles(rest, p)
    outputs = layer.h_out * layer.w_out * c_live
    compute = relax.ceil(outputs * per_output / s.units, relaxed=relaxed)
    chunks = outputs * relax.ceil(reduction / s.chunk, relaxed=relaxed)
    matches = outputs * reduction * p
    weights = layer.c_out * reduction * (1.0 + pw * layer.weight_bits)
    ifmap = layer.h_in * layer.w_in * layer.c_in * (1.0 + pa * m.act_bits)
    ofmap = layer.h_out * layer.w_out * layer.c_out * (1.0 + pa * m.act_bits)
    dram_bits = weights + _weight_tiles(weights, hw, relaxed) * ifmap + ofmap
    bw = _bits_per_cycle(hw)
    local_bits = chunks * 2.0 * s.chunk + matches * (layer.weight_bits + m.act_bits)
    return LayerCost(
        cycles=relax.maximum(compute, dram_bits / bw, relaxed=relaxed), compute_cycles=compute, memory_cycles=dram_bits / bw,
        mac_pj=matches * (_mult_pj(en, layer.weight_bits, m.act_bits) + _add_pj(en, m.acc_bits)),
        buffer_pj=dram_bits * _sram_bit_pj(en, m.glb_kib) + local_bits * _sram_bit_pj(en, s.buffer_kib),
        dram_pj=dram_bits * _dram_bit_pj(en),
        # the prefix-sum that locates matches: s.chunk * log2(s.chunk) adder bits per chunk
        network_pj=chunks * s.chunk * jnp.log2(s.chunk) * en.switch_bit_pj * en.technology_scale,
        useful_macs=matches, multipliers=s.units, dram_bits=dram_bits,
    )


def layer_cost(design: str, layer: Workload, hw: Hardware, options: Options = Options(), *, relaxed: bool = False) -> LayerCost:
    """Cost of one layer on ``design`` (one of :data:`DESIGNS`)."""
    if design == "escalate":
        return escalate_layer(layer, hw, stage_order=options.stage_order, relaxed=relaxed)
    if design == "systolic":
        return systolic_layer(layer, hw, dataflow=options.dataflow, relaxed=relaxed)
    if design == "scnn":
        return scnn_layer(layer, hw, relaxed=relaxed)
    if design == "sparten":
        return sparten_layer(layer, hw, relaxed=relaxed)
    raise UsageError(f"design: expected one of {list(DESIGNS)}, got {design!r}")


def evaluate(design: str, workload: Workload, hw: Hardware, options: Options = Options(), *, relaxed: bool = False) -> LayerCost:
    """Cost of every layer (``[L]``) of ``workload`` on one design point."""
    return jax.vmap(lambda layer: layer_cost(design, layer, hw, options, relaxed=relaxed))(workload)


def evaluate_grid(design: str, workload: Workload, designs: Hardware, options: Options = Options(), *, relaxed: bool = False, remat: bool = False) -> LayerCost:
    """Cost of every layer on every design point: fields ``[D, L]`` (``designs`` batched on axis 0).

    ``remat=True`` wraps the per-layer cost in ``jax.checkpoint``: a gradient then recomputes
    the (cheap, elementwise) forward pass inside the backward pass instead of storing its
    intermediates, which is several times faster on CPU for large grids.

    Example:
        >>> from hwmodel.hardware import load_hardware, stack_hardware
        >>> from hwmodel.workload import model_layers, workload_from_layers
        >>> hw, opts = load_hardware(None)
        >>> grid = evaluate_grid("escalate", workload_from_layers(model_layers("resnet20")), stack_hardware([hw, hw]), opts)
        >>> grid.cycles.shape
        (2, 20)
    """
    per_layer = lambda layer, h: layer_cost(design, layer, h, options, relaxed=relaxed)
    if remat:
        per_layer = jax.checkpoint(per_layer)
    return jax.vmap(jax.vmap(per_layer, in_axes=(0, None)), in_axes=(None, 0))(workload, designs)


def network_totals(cost: LayerCost) -> dict[str, jax.Array]:
    """Sum a per-layer cost over its last axis (layers are run one after the other)."""
    return {
        "cycles": cost.cycles.sum(-1), "energy_pj": cost.energy_pj.sum(-1), "mac_pj": cost.mac_pj.sum(-1),
        "buffer_pj": cost.buffer_pj.sum(-1), "dram_pj": cost.dram_pj.sum(-1), "network_pj": cost.network_pj.sum(-1),
    }
