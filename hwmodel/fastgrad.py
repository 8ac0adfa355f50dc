"""ESCALATE-style cycles and energy on a layer x design grid, with a hand-written gradient.

:func:`escalate_grid` returns the same numbers as
``evaluate_grid("escalate", workload, designs, options, relaxed=True)`` (its forward pass *is*
that call) but carries a ``jax.custom_vjp`` whose backward pass is written out by hand as
elementwise arithmetic over the ``[D, L]`` grid.

Why: reverse-mode autodiff of the vmapped model is correct but slow on CPU. Every use of a
per-design parameter inside the per-layer function becomes its own broadcast, and its
transpose its own reduction, which XLA:CPU fuses with the reduction's elementwise operands
and materialises everything else; the backward pass of ResNet-56 x 4096 designs becomes
some 180 separate loops over the grid (a forward pass needs about 20). Here the backward
pass works on per-layer ``[1, L]`` and per-design ``[D, 1]`` *leaves* (the few derived
quantities the grid arithmetic combines, e.g. bits per cycle or the multiplier energy per
bit^2), accumulates their adjoints elementwise on ``[D, L]`` and sums each leaf once, as a
matrix-vector product; the leaves are then differentiated back to the workload and hardware
fields by ordinary autodiff on ``[L]`` and ``[D]`` arrays, which is cheap. XLA still splits
it into about 100 loops (one per leaf adjoint, each recomputing the cheap shared terms, plus
the stored slopes, square roots and quotients, see :func:`_keep`), each writing a temporary
as large as its grid. So both passes run over blocks of at most ``design_block`` design
points (``jax.lax.map``): a ``[352, 56]`` temporary is 77 KiB, and the loops' temporaries stay
in cache, where over the whole grid they went to memory. Blocks more than halve the backward
pass's time; the forward pass (``evaluate_grid`` on each block) gains up to 20% from them
(``benchmarks/hwmodel_throughput.py`` times it both ways).

The backward pass's cost is about proportional to its elementwise operations, so it does no
work that a mask would discard: with ``stage_order="best"`` the two stage orders share one
backward pass, fed per element with the chosen order's forward values (``jnp.where`` on the
cheaper order; both forward passes are needed to choose), where a backward pass per order,
each masked, did twice the adjoint arithmetic; and the undecomposed layers (typically just
the classifier) get their backward pass on their own columns of the grid, gathered (up to
``PLAIN_COLUMNS`` of them, else on the whole grid), not on every layer masked. On ResNet-56 x
4096 designs this cut the forward-plus-gradient time by about 15% (2-core CPU).

The hand-written backward pass is the exact derivative of the relaxed model (smooth maximum
including the slope of its width, straight-through ``ceil``, ties of ``min``/``max`` split
half and half as ``jax.grad`` does); ``tests/hwmodel/test_fastgrad.py`` checks it against
``jax.grad`` of :func:`~hwmodel.cost.evaluate_grid` and against finite differences.

Differentiable inputs: the layers' ``coef_density``, ``act_density``, ``coef_bits``,
``basis_bits``, ``weight_bits`` and ``window_density``, and every ``memory``, ``escalate``
and ``energy`` field of the designs. Layer geometry (shapes, ``basis``, ``padding``) and
``live_out_fraction`` are treated as data: their cotangent is zero (``jax.grad`` of the
plain model gives slopes for them too, which a co-design search never uses).

Example:
    >>> from hwmodel.hardware import load_hardware, stack_hardware
    >>> from hwmodel.workload import model_layers, workload_from_layers
    >>> hw, _ = load_hardware(None)
    >>> wl = workload_from_layers(model_layers("resnet20"))
    >>> def loss(wl, hw):
    ...     cycles, energy = escalate_grid(wl, hw)
    ...     return cycles.sum() + 1e-3 * energy.sum()
    >>> g_wl, g_hw = jax.grad(loss, argnums=(0, 1))(wl, stack_hardware([hw, hw]))
    >>> g_hw.escalate.pes.shape, bool(g_wl.coef_density[3] > 0)
    ((2,), True)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hwmodel import relax
from hwmodel.cost import MATCHER_TO_MULTIPLIER_CYCLES, _coefficient_first_head_tail, _intermediate_density, _live, _sram_bit_pj, evaluate_grid, valid_tap_fraction
from hwmodel.hardware import STAGE_ORDERS, Hardware, Options
from hwmodel.workload import Workload
from runkit import check_choice, check_positive, check_shape

_C = relax.SMOOTH_MAX_TEMPERATURE

# layer fields treated as data (zero cotangent)
_DATA_FIELDS = ("h_in", "w_in", "h_out", "w_out", "c_in", "c_out", "kernel", "stride", "padding", "basis", "live_out_fraction")
# per-layer leaves with a gradient, and per-design leaves (all have one)
_LAYER_LEAVES = ("pc", "pa", "cb", "bb", "wb", "p_int")
_DESIGN_LEAVES = ("bw", "half", "ab", "acc", "lanes", "mult", "pes", "bmacs", "ts_m8", "ts_a32", "sram_glb", "sram_pe", "ts_sram", "dram_bit", "net_unit")


# Design points per block: measured on ResNet-56 (2-core CPU, 4096 designs), blocks of 288-352
# rows took 15-17 ms per forward+gradient, 256, 384 and 512 rows 19-21 ms, the whole grid 45 ms.
DESIGN_BLOCK = 352
# Undecomposed layers whose backward pass runs on their own grid columns (more: on the whole grid).
PLAIN_COLUMNS = 8


def escalate_grid(workload: Workload, designs: Hardware, stage_order: str = "best", *, design_block: int = DESIGN_BLOCK) -> tuple[jax.Array, jax.Array]:
    """Relaxed ESCALATE-style ``(cycles, energy_pj)`` of every layer on every design, ``[D, L]`` each.

    Values equal ``evaluate_grid("escalate", workload, designs, Options(stage_order=...),
    relaxed=True)``; the gradient (any cotangent on either output) is the fused hand-written
    one described in the module docstring.

    Args:
      workload: layers, fields ``[L]``.
      designs: design points, fields ``[D]``.
      stage_order: ``"coefficient_first"``, ``"basis_first"`` or ``"best"``.
      design_block: at most this many design points per block (the forward and backward
        passes run block by block, so that their ``[block, L]`` temporaries stay in cache);
        ``D`` need not be a multiple of it.

    Returns:
      ``(cycles, energy_pj)``, each ``float32[D, L]``.
    """
    check_choice("stage_order", stage_order, STAGE_ORDERS)
    check_positive("design_block", design_block)
    first = jax.tree.leaves(designs)[0]
    if jnp.ndim(workload.c_in) != 1 or jnp.ndim(first) != 1:
        raise ValueError(
            "escalate_grid: expected workload fields of shape [L] and design fields of shape [D] "
            f"(stack design points with stack_hardware), got {jnp.shape(workload.c_in)} and {jnp.shape(first)}"
        )
    for name, leaf in zip(workload._fields, workload):
        check_shape(f"workload.{name}", jnp.shape(leaf), jnp.shape(workload.c_in))
    for path, leaf in jax.tree_util.tree_leaves_with_path(designs):
        check_shape(f"designs{jax.tree_util.keystr(path)}", jnp.shape(leaf), jnp.shape(first))
    return _grid(stage_order, int(design_block), workload, designs)


def design_block_rows(n_designs: int, design_block: int) -> int:
    """Rows per block: at most ``design_block``, as even as possible (4096 -> 12 blocks of 342)."""
    n_blocks = -(-n_designs // design_block)
    return -(-n_designs // n_blocks)


def _pad_designs(tree, n_designs, block):
    """Leaves ``[D, ...]`` -> ``[blocks, block, ...]``, the last block padded with copies of the last row."""
    n_blocks = -(-n_designs // block)
    pad = n_blocks * block - n_designs

    def split(x):
        if pad:
            x = jnp.concatenate([x, jnp.broadcast_to(x[-1:], (pad,) + x.shape[1:])])
        return x.reshape((n_blocks, block) + x.shape[1:])

    return jax.tree.map(split, tree)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _grid(stage_order: str, design_block: int, workload: Workload, designs: Hardware):
    # evaluate_grid over the same blocks of design points as the backward pass: the same
    # values, a little faster than over the whole grid at once (its temporaries stay in cache)
    def block_cost(block):
        cost = evaluate_grid("escalate", workload, block, Options(stage_order=stage_order), relaxed=True)
        return cost.cycles, cost.energy_pj

    n_designs = jax.tree.leaves(designs)[0].shape[0]
    if n_designs <= design_block:
        return block_cost(designs)
    cycles, energy = jax.lax.map(block_cost, _pad_designs(designs, n_designs, design_block_rows(n_designs, design_block)))
    n_layers = cycles.shape[-1]
    return cycles.reshape(-1, n_layers)[:n_designs], energy.reshape(-1, n_layers)[:n_designs]


def _grid_fwd(stage_order, design_block, workload, designs):
    return _grid(stage_order, design_block, workload, designs), (workload, designs)


def _grid_bwd(stage_order, design_block, residuals, cotangents):
    workload, designs = residuals
    g_cycles, g_energy = cotangents
    (layer, design), leaves_vjp = jax.vjp(_leaves, workload, designs)
    geometry = _geometry(workload)
    n_layers, n_designs = workload.c_in.shape[0], jax.tree.leaves(designs)[0].shape[0]
    lv = {k: v.reshape(1, n_layers) for k, v in {**layer, **geometry}.items()}
    # The backward pass runs over blocks of design points: its ~100 loops over the grid each
    # write a [block, L] temporary, which stays in cache at this size (over the whole grid
    # they spill to memory and the pass takes twice as long).
    block = design_block_rows(n_designs, design_block)
    n_blocks = -(-n_designs // block)
    pad = n_blocks * block - n_designs
    columns = {k: v.reshape(n_designs, 1) for k, v in design.items()}

    def one_block(i):
        # the last block ends at the last design point; the rows it shares with the block
        # before get a zero cotangent (slicing in place: padding would copy the cotangents)
        start = jnp.minimum(i * block, n_designs - block)
        fresh = (start + jnp.arange(block) >= i * block)[:, None]
        rows = lambda x: jax.lax.dynamic_slice_in_dim(x, start, block)
        dv = {k: rows(v) for k, v in columns.items()}
        return _block_bwd(stage_order, lv, (dv, jnp.where(fresh, rows(g_cycles), 0.0), jnp.where(fresh, rows(g_energy), 0.0)))

    g_layer, g_design = jax.lax.map(one_block, jnp.arange(n_blocks))
    g_layer = {k: v.sum(0) for k, v in g_layer.items()}
    g_design = {k: jnp.concatenate([v[:-1].reshape(-1), v[-1, pad:]]) if pad else v.reshape(-1) for k, v in g_design.items()}
    return leaves_vjp((g_layer, g_design))


def _block_bwd(stage_order, lv, block):
    """Per-layer ``[L]`` and per-design ``[block]`` leaf adjoints of one block of design points."""
    dv, g_cycles, g_energy = block
    n_designs, n_layers = g_cycles.shape
    dv = dict(dv)
    dv["one"] = (0.0 * lv["pa"] + 1.0) * (0.0 * dv["bw"] + 1.0)  # [block, L], see _keep
    adj = _backward(stage_order, lv, dv, g_cycles, g_energy)
    g_layer, g_design = _leaf_sums(adj, n_designs, n_layers)
    plain_layer, plain_design = _plain_sums(lv, dv, g_cycles, g_energy)
    g_layer = {k: v + plain_layer[k] for k, v in g_layer.items()}
    g_design = {k: v + plain_design[k] for k, v in g_design.items()}
    return g_layer, g_design


_grid.defvjp(_grid_fwd, _grid_bwd)


# ----------------------------------------------------------------------------- leaves


def _leaves(workload: Workload, designs: Hardware):
    """Differentiable per-layer ``[L]`` and per-design ``[D]`` quantities the grid arithmetic combines."""
    data = workload._replace(**{name: jax.lax.stop_gradient(getattr(workload, name)) for name in _DATA_FIELDS})
    _, pc = jax.vmap(_live)(data)
    p_int = jax.vmap(_intermediate_density)(data)
    layer = {"pc": pc, "pa": workload.act_density, "cb": workload.coef_bits, "bb": workload.basis_bits, "wb": workload.weight_bits, "p_int": p_int}
    m, e, en = designs.memory, designs.escalate, designs.energy
    ts = en.technology_scale
    design = {
        "bw": m.dram_gbps * 8.0 / m.clock_ghz, "half": m.glb_kib * 8192.0 / 2.0, "ab": m.act_bits, "acc": m.acc_bits,
        "lanes": e.lanes, "mult": e.multipliers, "pes": e.pes, "bmacs": e.basis_macs,
        "ts_m8": ts * en.mult_8x8_pj, "ts_a32": ts * en.add_32_pj,
        "sram_glb": _sram_bit_pj(en, m.glb_kib), "sram_pe": _sram_bit_pj(en, e.pe_buffer_kib), "ts_sram": ts * en.sram_64b_8kib_pj,
        "dram_bit": ts * en.dram_64b_pj / 64.0, "net_unit": jnp.log2(e.lanes) * e.lanes * en.switch_bit_pj * ts,
    }
    return layer, design


def _geometry(workload: Workload):
    w = jax.tree.map(jax.lax.stop_gradient, workload)
    k = w.kernel
    head, tail = _coefficient_first_head_tail(w)
    return {
        "h_in": w.h_in, "w_in": w.w_in, "h_out": w.h_out, "w_out": w.w_out, "c_in": w.c_in, "c_out": w.c_out,
        "k": k, "d": w.basis, "c_live": w.c_out * w.live_out_fraction, "vtf": jax.vmap(valid_tap_fraction)(w),
        "head": head, "tail": tail,
    }


# ----------------------------------------------------------------------------- primitives


def _st_ceil(x):
    return x + (jnp.ceil(x) - x)  # the value of relax.ceil(x, relaxed=True), op for op


def _sign(x):
    return jnp.where(x >= 0.0, 1.0, -1.0)  # slope of |x| as jax.grad takes it (1 at 0)


def _keep(one, *xs):
    """``xs`` unchanged, each divided by ``one`` (exactly 1.0, but computed at run time).

    XLA:CPU fuses cheap elementwise operations into every consumer, so a value used by many
    adjoints is recomputed in each of their loops; a division is "expensive" to XLA, and one
    used several times is computed once and stored. Dividing by a run-time one turns the
    values below into such stored arrays (about a third fewer operations in the backward
    pass). ``one`` must not be a broadcast (XLA would rewrite the division as a product).
    """
    return tuple(x / one for x in xs)


def _smax(a, b, one):
    """relax.maximum(a, b, relaxed=True) and its two partial derivatives (stored, see _keep)."""
    tau = _C * 0.5 * (jnp.abs(a) + jnp.abs(b)) + 1e-6
    diff = a - b
    s = jnp.sqrt(jnp.square(diff) + jnp.square(tau))
    slope_tau = tau * (0.5 * _C)
    # each slope ends in a division, which XLA stores once instead of recomputing its
    # operands in every consumer
    return _keep(one, 0.5 * (a + b + s), 0.5 + 0.5 * ((diff + slope_tau * _sign(a)) / s), 0.5 + 0.5 * ((slope_tau * _sign(b) - diff) / s))


def _tie_slope(x, bound):
    """Slope of max(x, bound) with respect to x (ties split half and half, as jax.grad does)."""
    return jnp.where(x > bound, 1.0, jnp.where(x == bound, 0.5, 0.0))


class _Adjoints(dict):
    def add(self, key, value):
        self[key] = self[key] + value if key in self else value


# ----------------------------------------------------------------------------- per design


def _sparse_forward(units_row, reduction, density, dv):
    lanes_q = reduction / dv["lanes"]
    per_unit = _st_ceil(lanes_q)
    chunks, = _keep(dv["one"], units_row * per_unit)
    matches = units_row * reduction * density
    b_row = matches / dv["mult"]
    row_max, row_a, row_b = _smax(chunks, b_row, dv["one"])
    row = row_max / dv["pes"]
    b_unit = reduction * density / dv["mult"]
    unit, unit_a, unit_b = _smax(per_unit, b_unit, dv["one"])
    return dict(units_row=units_row, reduction=reduction, lanes_q=lanes_q, chunks=chunks, matches=matches, b_row=b_row,
                row_a=row_a, row_b=row_b, row=row, b_unit=b_unit, unit_a=unit_a, unit_b=unit_b, finish=0.5 * unit)


def _sparse_backward(s, dv, adj, g_row, g_finish, g_chunks, g_matches):
    """Adjoints of the sparse stage's inputs; returns the adjoint of its density."""
    g_smax = g_row / dv["pes"]
    adj.add("pes", -g_row * s["row"] / dv["pes"])
    g_chunks = g_chunks + g_smax * s["row_a"]
    g_brow = g_smax * s["row_b"]
    g_matches = g_matches + g_brow / dv["mult"]
    g_unit = 0.5 * g_finish
    g_bunit = g_unit * s["unit_b"]
    adj.add("mult", -(g_brow * s["b_row"] + g_bunit * s["b_unit"]) / dv["mult"])
    g_per_unit = g_unit * s["unit_a"] + g_chunks * s["units_row"]
    adj.add("lanes", -g_per_unit * s["lanes_q"] / dv["lanes"])
    return (g_bunit / dv["mult"] + g_matches * s["units_row"]) * s["reduction"]


def _tiles(weights_total, dv):
    ratio = weights_total / dv["half"]
    tiles, slope, _ = _smax(_st_ceil(ratio), jnp.float32(1.0), dv["one"])
    return tiles, ratio, slope


def _energy_backward(adj, lv, dv, g, n_rows, s, dram_bits, sparse_bits, dense, line_buffer):
    """Adjoints of the energy terms shared by the decomposed and plain layers.

    ``sparse_bits``: (coefficient width key, operand width key) of the sparse multiplier;
    ``dense``: None or (dense MACs, basis width key, operand width key);
    ``line_buffer``: None or (values + reads, geometry factor of its size in KiB / acc bits * 8192).
    Returns the adjoints of the sparse stage's per-row chunks and matches, and of the DRAM bits.
    """
    wkey, xkey = sparse_bits
    w, x = _operand(lv, dv, wkey), _operand(lv, dv, xkey)
    ts_m8, ts_a32, acc, lanes = dv["ts_m8"], dv["ts_a32"], dv["acc"], dv["lanes"]
    matches = n_rows * s["matches"]
    chunks = n_rows * s["chunks"]
    operand_bits = w + x
    add_pj = ts_a32 * acc / 32.0
    g_matches = g * (ts_m8 * w * x / 64.0 + add_pj)
    adj.add("ts_m8", g * matches * w * x / 64.0)
    adj.add(wkey, g * matches * ts_m8 * x / 64.0)
    _add_operand(adj, xkey, g * matches * ts_m8 * w / 64.0)
    macs = matches
    if dense is not None:
        dense_macs, bkey, ykey = dense
        b, y = lv[bkey], _operand(lv, dv, ykey)
        adj.add("ts_m8", g * dense_macs * b * y / 64.0)
        adj.add(bkey, g * dense_macs * ts_m8 * y / 64.0)
        _add_operand(adj, ykey, g * dense_macs * ts_m8 * b / 64.0)
        macs = macs + dense_macs
    adj.add("ts_a32", g * macs * acc / 32.0)
    adj.add("acc", g * macs * ts_a32 / 32.0)
    # buffers and DRAM
    adj.add("sram_glb", g * dram_bits)
    adj.add("dram_bit", g * dram_bits)
    g_dram_bits = g * (dv["sram_glb"] + dv["dram_bit"])
    pe_bits = chunks * 2.0 * lanes + matches * operand_bits
    adj.add("sram_pe", g * pe_bits)
    g_pe = g * dv["sram_pe"]
    g_chunks = g_pe * 2.0 * lanes + g * dv["net_unit"] * operand_bits
    adj.add("lanes", g_pe * 2.0 * chunks)
    g_matches = g_matches + g_pe * operand_bits
    g_operand = g_pe * matches + g * chunks * dv["net_unit"]
    adj.add("net_unit", g * chunks * operand_bits)
    adj.add(wkey, g_operand)
    _add_operand(adj, xkey, g_operand)
    if line_buffer is not None:
        accesses, size_factor = line_buffer
        kib = size_factor * acc / 8192.0
        root = jnp.sqrt(jnp.maximum(kib, 0.25) / 8.0)
        per_bit = dv["ts_sram"] * root / 64.0
        g_per_bit = g * accesses * acc
        adj.add("ts_sram", g_per_bit * root / 64.0)
        g_kib = g_per_bit * dv["ts_sram"] / 64.0 * (0.5 / root) / 8.0 * _tie_slope(kib, 0.25)
        adj.add("acc", g * accesses * per_bit + g_kib * size_factor / 8192.0)
    return n_rows * g_chunks, n_rows * g_matches, g_dram_bits


def _decomposed(order, lv, dv):
    """Forward pass of a decomposed layer in one stage order (values as hwmodel.cost, op for op).

    Returns the cycles, the order's intermediate values that the backward pass uses (see
    :func:`_decomposed_backward`) and those that do not depend on the order.
    """
    d, k, pa, pc = lv["d"], lv["k"], lv["pa"], lv["pc"]
    c_live, c_in, bw, ab = lv["c_live"], lv["c_in"], dv["bw"], dv["ab"]
    coef_geom = c_live * c_in * d
    coef_total = coef_geom * (pc * lv["cb"] + 1.0)
    basis_total = d * k * k * lv["bb"]
    in_geom = lv["h_in"] * lv["w_in"] * c_in
    out_geom = lv["h_out"] * lv["w_out"] * lv["c_out"]
    act_factor = pa * ab + 1.0
    ifmap, ofmap = in_geom * act_factor, out_geom * act_factor
    tiles, tile_ratio, tile_slope = _tiles(coef_total, dv)
    ifmap, ofmap = _keep(dv["one"], ifmap, ofmap)
    if order == "coefficient_first":
        s = _sparse_forward(lv["w_in"] * c_live * d, c_in, pc * pa, dv)
        n_sparse, n_dense = lv["h_in"], lv["h_out"]
        dense_row_macs = lv["w_out"] * c_live * d * k * k
        mem_sparse, mem_dense = coef_total + tiles * ifmap, basis_total + ofmap
    else:
        dense_row_macs = lv["w_out"] * c_in * d * k * k
        n_dense = lv["h_out"]
        s = _sparse_forward(lv["w_out"] * c_live, c_in * d, pc * lv["p_int"], dv)
        n_sparse = lv["h_out"]
        mem_dense, mem_sparse = basis_total + tiles * ifmap, coef_total + ofmap
    dense_q = dense_row_macs / dv["bmacs"]
    dense_row = _st_ceil(dense_q)
    y_sparse = mem_sparse / (n_sparse * bw)
    y_dense = mem_dense / (n_dense * bw)
    t_sparse, ts_a, ts_b = _smax(s["row"], y_sparse, dv["one"])
    t_dense, td_a, td_b = _smax(dense_row, y_dense, dv["one"])
    if order == "coefficient_first":
        head, tail = lv["head"], lv["tail"]
        first = n_sparse * t_sparse + s["finish"] + tail * t_dense + 0.0
        second = head * t_sparse + n_dense * t_dense + 0.0
        # slopes of first and second in (t_sparse, t_dense, finish)
        slopes = dict(s_first=n_sparse, s_second=head, d_first=tail, d_second=n_dense, f_second=0.0)
        line_buffer = (lv["h_in"] * lv["w_in"] * c_live * d + n_dense * dense_row_macs / k, k * lv["w_in"] * c_live * d)
    else:
        first = n_dense * t_dense + 0.0 + 1.0 * t_sparse + s["finish"]
        second = 1.0 * t_dense + n_sparse * t_sparse + s["finish"]
        slopes = dict(s_first=1.0, s_second=n_sparse, d_first=n_dense, d_second=1.0, f_second=1.0)
        values = lv["h_out"] * lv["w_out"] * c_in * d
        line_buffer = (values + values, lv["w_out"] * c_in * d)
    latency, lat_a, lat_b = _smax(first, second, dv["one"])
    cycles = latency + MATCHER_TO_MULTIPLIER_CYCLES
    per_order = dict(s=s, n_sparse=n_sparse, dense_macs=n_dense * dense_row_macs, dense_q=dense_q, y_sparse=y_sparse, y_dense=y_dense,
                     ts_a=ts_a, ts_b=ts_b, td_a=td_a, td_b=td_b, lat_a=lat_a, lat_b=lat_b, mem_sparse=mem_sparse, mem_dense=mem_dense,
                     line_buffer=line_buffer, **slopes)
    common = dict(tiles=tiles, tile_ratio=tile_ratio, tile_slope=tile_slope, ifmap=ifmap, in_geom=in_geom, out_geom=out_geom, coef_geom=coef_geom)
    return cycles, per_order, common


def _pick(a, x, y):
    """``x`` where the coefficient-first order is taken, else ``y`` (``a``: a bool, or a boolean array)."""
    if isinstance(a, bool):
        return x if a else y
    return jnp.where(a, x, y)


def _operand(lv, dv, spec):
    """Value of a leaf named by ``spec``: a key, or ``(a, key if a, key otherwise)``."""
    if isinstance(spec, str):
        return lv[spec] if spec in lv else dv[spec]
    a, key_a, key_b = spec
    return _pick(a, _operand(lv, dv, key_a), _operand(lv, dv, key_b))


def _add_operand(adj, spec, value):
    """Adds ``value`` to the adjoint of the leaf named by ``spec`` (see :func:`_operand`)."""
    if isinstance(spec, str):
        adj.add(spec, value)
        return
    a, key_a, key_b = spec
    if isinstance(a, bool):
        adj.add(key_a if a else key_b, value)
        return
    adj.add(key_a, jnp.where(a, value, 0.0))
    adj.add(key_b, jnp.where(a, 0.0, value))


def _decomposed_backward(adj, lv, dv, f, common, a, g_cycles, g_energy):
    """Adjoints of a decomposed layer in the stage order ``a`` (True: coefficient-first,
    False: basis-first, or a boolean array choosing per element, with ``f`` the chosen order's
    values, selected the same way: one backward pass serves both orders)."""
    d, k, pa, pc, bw = lv["d"], lv["k"], lv["pa"], lv["pc"], dv["bw"]
    s, n_sparse = f["s"], f["n_sparse"]
    n_dense = lv["h_out"]
    sparse_bits, dense = ("cb", (a, "ab", "acc")), (f["dense_macs"], "bb", (a, "acc", "ab"))
    g_chunks, g_matches, g_dram = _energy_backward(adj, lv, dv, g_energy, n_sparse, s, f["mem_sparse"] + f["mem_dense"], sparse_bits, dense, f["line_buffer"])
    g_first, g_second = g_cycles * f["lat_a"], g_cycles * f["lat_b"]
    g_tsparse = g_first * f["s_first"] + g_second * f["s_second"]
    g_tdense = g_first * f["d_first"] + g_second * f["d_second"]
    g_finish = g_first if isinstance(f["f_second"], float) and f["f_second"] == 0.0 else g_first + g_second * f["f_second"]
    g_row, g_ysparse = g_tsparse * f["ts_a"], g_tsparse * f["ts_b"]
    g_drow, g_ydense = g_tdense * f["td_a"], g_tdense * f["td_b"]
    adj.add("bw", -(g_ysparse * f["y_sparse"] + g_ydense * f["y_dense"]) / bw)
    adj.add("bmacs", -g_drow * f["dense_q"] / dv["bmacs"])
    g_mem_sparse = g_ysparse / (n_sparse * bw) + g_dram
    g_mem_dense = g_ydense / (n_dense * bw) + g_dram
    # the tiled input feature map is in the sparse stage's traffic (coefficient-first) or the
    # dense stage's (basis-first), the output feature map in the other one
    g_tiled, g_out = _pick(a, g_mem_sparse, g_mem_dense), _pick(a, g_mem_dense, g_mem_sparse)
    g_coef, g_tiles, g_ifmap, g_basis, g_ofmap = g_mem_sparse, g_tiled * common["ifmap"], g_tiled * common["tiles"], g_mem_dense, g_out
    g_ratio = g_tiles * common["tile_slope"]
    g_coef = g_coef + g_ratio / dv["half"]
    adj.add("half", -g_ratio * common["tile_ratio"] / dv["half"])
    g_act = g_ifmap * common["in_geom"] + g_ofmap * common["out_geom"]
    adj.add("pa", g_act * dv["ab"])
    adj.add("ab", g_act * pa)
    adj.add("bb", g_basis * d * k * k)
    adj.add("pc", g_coef * common["coef_geom"] * lv["cb"])
    adj.add("cb", g_coef * common["coef_geom"] * pc)
    g_density = _sparse_backward(s, dv, adj, g_row, g_finish, g_chunks, g_matches)
    # the sparse stage's density: pc * pa (coefficient-first) or pc * p_int (basis-first)
    adj.add("pc", g_density * _operand(lv, dv, (a, "pa", "p_int")))
    _add_operand(adj, (a, "pa", "p_int"), g_density * pc)


def _plain(lv, dv):
    """Forward pass of an undecomposed layer (values as hwmodel.cost, op for op) and its backward closure."""
    k, pa, pc, c_live, bw, ab = lv["k"], lv["pa"], lv["pc"], lv["c_live"], dv["bw"], dv["ab"]
    reduction = lv["c_in"] * k * k
    s = _sparse_forward(lv["w_out"] * c_live, reduction, pc * pa * lv["vtf"], dv)
    weight_geom = c_live * reduction
    weights = weight_geom * (pc * lv["wb"] + 1.0)
    in_geom = lv["h_in"] * lv["w_in"] * lv["c_in"]
    out_geom = lv["h_out"] * lv["w_out"] * lv["c_out"]
    act_factor = pa * ab + 1.0
    ifmap, ofmap = in_geom * act_factor, out_geom * act_factor
    tiles, tile_ratio, tile_slope = _tiles(weights, dv)
    dram_bits = weights + tiles * ifmap + ofmap
    rows = lv["h_out"]
    y = dram_bits / (rows * bw)
    t, t_a, t_b = _smax(s["row"], y, dv["one"])
    cycles = rows * t + s["finish"] + MATCHER_TO_MULTIPLIER_CYCLES

    def backward(adj, g_cycles, g_energy):
        g_chunks, g_matches, g_dram = _energy_backward(adj, lv, dv, g_energy, rows, s, dram_bits, ("wb", "ab"), None, None)
        g_t = g_cycles * rows
        g_row, g_y = g_t * t_a, g_t * t_b
        adj.add("bw", -g_y * y / bw)
        g_dram = g_dram + g_y / (rows * bw)
        g_ratio = g_dram * ifmap * tile_slope
        g_weights = g_dram + g_ratio / dv["half"]
        adj.add("half", -g_ratio * tile_ratio / dv["half"])
        g_act = g_dram * tiles * in_geom + g_dram * out_geom
        adj.add("pa", g_act * ab)
        adj.add("ab", g_act * pa)
        adj.add("pc", g_weights * weight_geom * lv["wb"])
        adj.add("wb", g_weights * weight_geom * pc)
        g_density = _sparse_backward(s, dv, adj, g_row, g_cycles, g_chunks, g_matches)
        adj.add("pc", g_density * pa * lv["vtf"])
        adj.add("pa", g_density * pc * lv["vtf"])

    return cycles, backward


def _plain_sums(lv, dv, g_cycles, g_energy):
    """Leaf adjoints of the undecomposed layers, summed: per-layer ``[L]`` and per-design ``[block]``.

    Undecomposed layers are few (a network's classifier, say), so their backward pass runs on
    their columns of the grid only, gathered (at most ``PLAIN_COLUMNS`` of them; with more,
    on the whole grid, masked).
    """
    n_designs, n_layers = g_cycles.shape
    plain = lv["d"][0] <= 0.0
    width = min(n_layers, PLAIN_COLUMNS)

    def on_columns(index):
        # index: the plain layers' columns, padded with column 0 (None: every column, masked)
        if index is None:
            sub, valid, g_c, g_e = lv, plain[None, :], g_cycles, g_energy
        else:
            sub = {k: v[:, index] for k, v in lv.items()}
            valid = (jnp.arange(width) < jnp.sum(plain))[None, :] & (sub["d"] <= 0.0)
            g_c, g_e = g_cycles[:, index], g_energy[:, index]
        sub_dv = dict(dv, one=(0.0 * sub["pa"] + 1.0) * (0.0 * dv["bw"] + 1.0))  # see _keep
        adj = _Adjoints()
        _, plain_backward = _plain(sub, sub_dv)
        plain_backward(adj, jnp.where(valid, g_c, 0.0), jnp.where(valid, g_e, 0.0))
        layer, design = _leaf_sums(adj, n_designs, g_c.shape[1])
        if index is not None:
            layer = {k: jnp.zeros((n_layers,), jnp.float32).at[index].add(v) for k, v in layer.items()}
        return layer, design

    if width == n_layers:
        return on_columns(None)
    index = jnp.nonzero(plain, size=width, fill_value=0)[0]
    return jax.lax.cond(jnp.sum(plain) <= width, lambda: on_columns(index), lambda: on_columns(None))


def _leaf_sums(adj, n_designs, n_layers):
    """Per-layer ``[L]`` and per-design ``[block]`` sums of the leaf adjoints (zeros for absent ones)."""
    # Sums over a grid axis as matrix-vector products: a reduction would let XLA:CPU pull the
    # adjoint's elementwise arithmetic into the reduction and materialise each of its inputs.
    full = (n_designs, n_layers)
    exact = jax.lax.Precision.HIGHEST
    ones_d, ones_l = jnp.ones((n_designs,), jnp.float32), jnp.ones((n_layers,), jnp.float32)
    g_layer = {k: jnp.matmul(ones_d, jnp.broadcast_to(adj[k], full), precision=exact) if k in adj else jnp.zeros((n_layers,), jnp.float32) for k in _LAYER_LEAVES}
    g_design = {k: jnp.matmul(jnp.broadcast_to(adj[k], full), ones_l, precision=exact) if k in adj else jnp.zeros((n_designs,), jnp.float32) for k in _DESIGN_LEAVES}
    return g_layer, g_design


def _backward(stage_order, lv, dv, g_cycles, g_energy):
    adj = _Adjoints()
    decomposed = lv["d"] > 0.0
    if stage_order == "best":
        cycles_a, f_a, common = _decomposed("coefficient_first", lv, dv)
        cycles_b, f_b, _ = _decomposed("basis_first", lv, dv)
        take_a = cycles_a <= cycles_b
        f = jax.tree.map(lambda x, y: jnp.where(take_a, x, y), f_a, f_b)
    else:
        _, f, common = _decomposed(stage_order, lv, dv)
        take_a = stage_order == "coefficient_first"
    _decomposed_backward(adj, lv, dv, f, common, take_a, jnp.where(decomposed, g_cycles, 0.0), jnp.where(decomposed, g_energy, 0.0))
    return adj
