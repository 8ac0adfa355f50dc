"""Cycle-level reference simulator of the ESCALATE-style design (numpy, explicit loops).

Written independently of the analytic model in :mod:`hwmodel.cost`: it takes the *actual*
coefficient, basis and activation tensors of a layer, derives the bitmaps, and steps the
machine cycle by cycle:

* **sparse engine** -- ``P`` PEs. Work units (one output value of the sparse 1x1 stage) wait
  in a row-major queue; an idle PE takes the next unit whose input row is available. Each
  cycle a PE's matcher takes one ``N``-lane chunk of the unit's reduction, ANDs the
  coefficient and activation bitmaps and (conceptually, through the inverse butterfly)
  compacts the matching pairs into a FIFO of depth ``Q``; it stalls while the FIFO cannot
  take the chunk. The ``M`` multipliers pop up to ``M`` pairs per cycle (one *pass*). A
  row of the sparse stage is complete when its last pair has been multiplied.
* **basis engine** -- ``B`` MACs; an output row of the dense stage takes one cycle per tile of
  ``B`` multiply-accumulates and starts when its producer rows are complete and the previous
  row is done.

Only compute cycles are simulated (DRAM is assumed to keep up); compare with the analytic
``compute_cycles``. The simulator is meant for small layers (it is pure Python per cycle).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> coef = rng.normal(size=(4, 8, 2)) * (rng.random((4, 8, 2)) < 0.5)
    >>> basis = rng.normal(size=(2, 3, 3)); acts = np.maximum(rng.normal(size=(8, 5, 5)), 0)
    >>> hw = SimHardware(pes=2, lanes=8, multipliers=2, fifo_depth=16, basis_macs=8)
    >>> r = simulate_decomposed(coef, basis, acts, stride=1, padding=1, hw=hw, order="coefficient_first")
    >>> r.cycles > 0
    True
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import NamedTuple

import numpy as np
from runkit import UsageError
from runkit.layer_record import LayerRecord, live_out_fraction


@dataclasses.dataclass(frozen=True)
class SimHardware:
    """The ESCALATE-style sizes the simulator needs (whole numbers)."""

    pes: int
    lanes: int
    multipliers: int
    fifo_depth: int
    basis_macs: int

    @classmethod
    def from_hardware(cls, hw) -> "SimHardware":
        e = hw.escalate
        return cls(int(e.pes), int(e.lanes), int(e.multipliers), int(e.fifo_depth), int(e.basis_macs))


class SimResult(NamedTuple):
    """Simulated compute cycles and the event counts behind them."""

    cycles: int
    sparse_cycles: int     # time the sparse engine finished its last row
    chunks: int
    matches: int
    dense_macs: int
    stall_cycles: int      # PE-cycles the matcher waited on a full FIFO


def _run_sparse_engine(units_per_row: list[np.ndarray], row_ready: np.ndarray, hw: SimHardware) -> tuple[np.ndarray, int, int, int]:
    """Cycle-by-cycle simulation of the PE array.

    Args:
      units_per_row: for each row, an ``int[units, chunks]`` array of matches per chunk.
      row_ready: cycle from which each row's units may be dispatched.

    Returns:
      ``(row_done_cycle, chunks, matches, stall_pe_cycles)``.
    """
    queue = deque()
    remaining_chunks = np.zeros(len(units_per_row), np.int64)
    remaining_pairs = np.zeros(len(units_per_row), np.int64)
    for r, units in enumerate(units_per_row):
        remaining_chunks[r] = units.size
        remaining_pairs[r] = int(units.sum())
        for u in range(units.shape[0]):
            queue.append((r, units[u]))
    row_done = np.where((remaining_chunks == 0) & (remaining_pairs == 0), row_ready, -1).astype(np.int64)
    total_chunks, total_pairs = int(remaining_chunks.sum()), int(remaining_pairs.sum())

    pes = hw.pes
    current = [None] * pes          # (row, chunk match counts, next chunk index)
    fifos = [deque() for _ in range(pes)]  # segments [row, pairs]
    fifo_fill = [0] * pes
    stalls = 0
    cycle = 0
    open_rows = int(np.sum(row_done < 0))
    while open_rows > 0:
        for p in range(pes):
            # multipliers: one pass of up to M pairs from the FIFO (pairs pushed last cycle)
            budget = hw.multipliers
            fifo = fifos[p]
            while budget and fifo:
                row, pairs = fifo[0]
                take = min(budget, pairs)
                budget -= take
                fifo_fill[p] -= take
                remaining_pairs[row] -= take
                if take == pairs:
                    fifo.popleft()
                else:
                    fifo[0][1] = pairs - take
                if remaining_pairs[row] == 0 and remaining_chunks[row] == 0 and row_done[row] < 0:
                    row_done[row] = cycle + 1
                    open_rows -= 1
            # matcher: one chunk through the butterfly into the FIFO
            if current[p] is None and queue and row_ready[queue[0][0]] <= cycle:
                row, counts = queue.popleft()
                current[p] = [row, counts, 0]
            if current[p] is not None:
                row, counts, index = current[p]
                pairs = int(counts[index])
                if fifo_fill[p] + pairs > hw.fifo_depth:
                    stalls += 1
                    continue
                if pairs:
                    fifo.append([row, pairs])
                    fifo_fill[p] += pairs
                remaining_chunks[row] -= 1
                if remaining_chunks[row] == 0 and remaining_pairs[row] == 0 and row_done[row] < 0:
                    row_done[row] = cycle + 1
                    open_rows -= 1
                index += 1
                current[p] = None if index == len(counts) else [row, counts, index]
        cycle += 1
    return row_done, total_chunks, total_pairs, stalls


def _chunk_matches(coef_bitmap: np.ndarray, act_bitmap: np.ndarray, lanes: int) -> np.ndarray:
    """Matches per N-lane chunk: ``coef_bitmap[units, R] & act_bitmap[units, R]`` -> ``int[units, chunks]``."""
    units, length = coef_bitmap.shape
    chunks = -(-length // lanes)
    both = np.zeros((units, chunks * lanes), bool)
    both[:, :length] = coef_bitmap & act_bitmap
    return both.reshape(units, chunks, lanes).sum(-1)


def _padded(acts: np.ndarray, padding: int) -> np.ndarray:
    return np.pad(acts, ((0, 0), (padding, padding), (padding, padding)))


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _dense_rows(n_rows: int, row_macs: int, ready: np.ndarray, hw: SimHardware) -> np.ndarray:
    """Basis engine: row ``r`` starts when ``ready[r]`` and row ``r-1`` are done; one cycle per tile of B MACs."""
    done = np.zeros(n_rows, np.int64)
    t = 0
    for r in range(n_rows):
        t = max(t, int(ready[r]))
        macs_left = row_macs
        while macs_left > 0:       # one tile of B multiply-accumulates per cycle
            macs_left -= hw.basis_macs
            t += 1
        done[r] = t
    return done


def simulate_decomposed(coef: np.ndarray, basis: np.ndarray, acts: np.ndarray, *, stride: int, padding: int, hw: SimHardware, order: str) -> SimResult:
    """Simulate a decomposed conv layer.

    Args:
      coef: ``[Cout, Cin, d]`` coefficients (zeros are pruned).
      basis: ``[d, k, k]`` basis kernels.
      acts: ``[Cin, H, W]`` input activations (zeros are skipped).
      stride, padding: of the original k x k convolution.
      hw: sizes.
      order: ``"coefficient_first"`` or ``"basis_first"``.
    """
    c_out, c_in, d = coef.shape
    k = basis.shape[-1]
    _, h_in, w_in = acts.shape
    h_out, w_out = _out_size(h_in, k, stride, padding), _out_size(w_in, k, stride, padding)
    live = np.flatnonzero(np.any(coef != 0, axis=(1, 2)))
    coef_bm = coef[live] != 0                                   # [live, Cin, d]
    if order == "coefficient_first":
        # units of input row y: (x, o, j), reduction over Cin
        unit_coef = np.transpose(coef_bm, (0, 2, 1)).reshape(len(live) * d, c_in)  # [(o, j), Cin]
        rows = []
        for y in range(h_in):
            act_bm = (acts[:, y, :] != 0).T                                    # [x, Cin]
            n_units = w_in * unit_coef.shape[0]
            both_c = np.repeat(unit_coef[None], w_in, 0).reshape(n_units, c_in)
            both_a = np.repeat(act_bm[:, None, :], unit_coef.shape[0], 1).reshape(n_units, c_in)
            rows.append(_chunk_matches(both_c, both_a, hw.lanes))
        row_done, chunks, matches, stalls = _run_sparse_engine(rows, np.zeros(h_in, np.int64), hw)
        row_macs = w_out * len(live) * d * k * k
        need = np.minimum(np.arange(h_out) * stride + k - 1 - padding, h_in - 1)
        ready = np.array([row_done[: n + 1].max() for n in need], np.int64)
        dense_done = _dense_rows(h_out, row_macs, ready, hw)
        cycles = int(dense_done[-1])
    elif order == "basis_first":
        padded = _padded(acts, padding)
        inter = np.zeros((c_in, d, h_out, w_out))
        for j in range(d):
            for kh in range(k):
                for kw in range(k):
                    window = padded[:, kh: kh + stride * (h_out - 1) + 1: stride, kw: kw + stride * (w_out - 1) + 1: stride]
                    inter[:, j] += basis[j, kh, kw] * window
        row_macs = w_out * c_in * d * k * k
        dense_done = _dense_rows(h_out, row_macs, np.zeros(h_out, np.int64), hw)
        unit_coef = coef_bm.reshape(len(live), c_in * d)                       # [o, (c, j)]
        rows = []
        for y in range(h_out):
            act_bm = (inter[:, :, y, :] != 0).reshape(c_in * d, w_out).T        # [x, (c, j)]
            n_units = w_out * len(live)
            both_c = np.repeat(unit_coef[None], w_out, 0).reshape(n_units, c_in * d)
            both_a = np.repeat(act_bm[:, None, :], len(live), 1).reshape(n_units, c_in * d)
            rows.append(_chunk_matches(both_c, both_a, hw.lanes))
        row_done, chunks, matches, stalls = _run_sparse_engine(rows, dense_done, hw)
        cycles = int(row_done.max())
    else:
        raise UsageError(f"order: expected 'coefficient_first' or 'basis_first', got {order!r}")
    dense_macs = h_out * row_macs
    return SimResult(cycles, int(row_done.max()), chunks, matches, dense_macs, stalls)


def simulate_plain(weights: np.ndarray, acts: np.ndarray, *, stride: int, padding: int, hw: SimHardware) -> SimResult:
    """Simulate a layer that is not decomposed (``weights[Cout, Cin, k, k]``) on the sparse engine alone."""
    c_out, c_in, k, _ = weights.shape
    _, h_in, w_in = acts.shape
    h_out, w_out = _out_size(h_in, k, stride, padding), _out_size(w_in, k, stride, padding)
    live = np.flatnonzero(np.any(weights != 0, axis=(1, 2, 3)))
    w_bm = (weights[live] != 0).reshape(len(live), c_in * k * k)
    padded = _padded(acts, padding) != 0
    rows = []
    for y in range(h_out):
        patches = np.stack([padded[:, y * stride: y * stride + k, x * stride: x * stride + k].reshape(-1) for x in range(w_out)])
        n_units = w_out * len(live)
        both_c = np.repeat(w_bm[None], w_out, 0).reshape(n_units, w_bm.shape[1])
        both_a = np.repeat(patches[:, None, :], len(live), 1).reshape(n_units, w_bm.shape[1])
        rows.append(_chunk_matches(both_c, both_a, hw.lanes))
    row_done, chunks, matches, stalls = _run_sparse_engine(rows, np.zeros(h_out, np.int64), hw)
    cycles = int(row_done.max()) if len(row_done) else 0
    return SimResult(cycles, cycles, chunks, matches, 0, stalls)


def layer_description(coef_or_weights: np.ndarray, acts: np.ndarray, *, stride: int, padding: int, basis: np.ndarray | None = None, coef_bits: int = 4, basis_bits: int = 8, weight_bits: int = 8, name: str = "layer") -> LayerRecord:
    """The :class:`~runkit.layer_record.LayerRecord` of the tensors given to the simulator, with measured densities
    (the bit widths a layer does not use are 0, as the record's conventions say)."""
    if basis is not None:
        c_out, c_in, d = coef_or_weights.shape
        k = basis.shape[-1]
        per_channel = (coef_or_weights != 0).reshape(c_out, -1).mean(1)
    else:
        c_out, c_in, k, _ = coef_or_weights.shape
        d = 0
        per_channel = (coef_or_weights != 0).reshape(c_out, -1).mean(1)
    _, h_in, w_in = acts.shape
    h_out, w_out = _out_size(h_in, k, stride, padding), _out_size(w_in, k, stride, padding)
    nonzero = _padded(acts, padding) != 0
    window_any = np.zeros((acts.shape[0], h_out, w_out), bool)
    for kh in range(k):
        for kw in range(k):
            window_any |= nonzero[:, kh: kh + stride * (h_out - 1) + 1: stride, kw: kw + stride * (w_out - 1) + 1: stride]
    return {
        "name": name, "kind": "conv", "h_in": h_in, "w_in": w_in,
        "h_out": h_out, "w_out": w_out,
        "c_in": c_in, "c_out": c_out, "kernel_size": k, "stride": stride, "padding": padding, "basis": d,
        "coef_density": float(per_channel.mean()), "live_out_fraction": live_out_fraction(per_channel),
        "coef_density_per_out_channel": per_channel.tolist(),
        "act_density": float((acts != 0).mean()), "act_window_density": float(window_any.mean()), "coef_bits": coef_bits if d else 0,
        "basis_bits": basis_bits if d else 0, "weight_bits": 0 if d else weight_bits,
    }


#: Chunks each PE must scan, on average, for a layer to be in the analytic model's domain.
MIN_CHUNKS_PER_PE = 24
#: Fewest modelled cycles for which the analytic model is held to 10% of this simulator. Over
#: 500 seeded random small layers of the domain, layers the model puts at >= 300 cycles stayed
#: within 9.5% and those at >= 500 within 7.5%; shorter ones reached 35% (2.4% of them > 10%),
#: as stalls behind a single multiplier and the last unit's tail are not averaged out.
MIN_MODEL_CYCLES = 500


def in_analytic_domain(*, c_in: int, c_out: int, size: int, kernel: int, stride: int, basis: int, order: str, lanes: int, pes: int) -> bool:
    """Whether a layer is large enough for the analytic model's average-rate assumptions.

    The analytic model is compared with this simulator on layers where each PE scans at least
    24 chunks of ``lanes`` positions and the sparse stage has at least 2000 candidate pairs: in
    tinier layers the last work unit and the pipeline fill dominate, and the measured densities
    no longer describe the sampled positions.

    Args:
      c_in, c_out, size: input channels, output channels, square input size.
      kernel, stride, basis: the conv (``basis`` 0: not decomposed).
      order: ``"coefficient_first"`` or ``"basis_first"``.
      lanes, pes: butterfly lanes and processing elements of the design.

    Example:
        >>> in_analytic_domain(c_in=32, c_out=16, size=8, kernel=3, stride=1, basis=5, order="basis_first", lanes=16, pes=4)
        True
    """
    pad = (kernel - 1) // 2
    out = _out_size(size, kernel, stride, pad)
    if basis and order == "coefficient_first":
        units, reduction = size * size * c_out * basis, c_in
    else:
        units, reduction = out * out * c_out, c_in * max(basis, 1) * (kernel * kernel if not basis else 1)
    return units * -(-reduction // lanes) >= MIN_CHUNKS_PER_PE * pes and units * reduction >= 2000
