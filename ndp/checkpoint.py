"""Checkpoints of an ndp :class:`~ndp.train.TrainState`: sharded, asynchronous, atomic, restorable on any mesh.

A checkpoint is one step folder written by ``orbax.checkpoint`` under a run's
checkpoint folder (``<dir>/<step>/``), with three items:

* ``tables``: the slab and, for row-wise Adagrad, its accumulators, exactly as
  they lie on the devices. Every process writes only the rows its devices hold;
  nothing is gathered to one host.
* ``dense``: the dense parameters, their optax state and the step counter
  (replicated; one copy is written).
* ``meta`` (JSON): the step, the data position (the index of the next training
  batch; the data sources are pure functions of it), the training history, the
  sharding plan (:meth:`ndp.plan.ShardingPlan.to_dict`) and the process count.
  The settings a run was started with live in its run folder (:func:`runkit.open_run`
  records them and refuses to resume other ones), not here.

Saves are asynchronous: :meth:`TrainCheckpoints.save` returns once the arrays are
copied to host memory, and the files are written in a background thread into a
temporary folder that is renamed to ``<step>`` only when every process has
finished (orbax's commit). A process killed during a save therefore leaves the
previous checkpoints intact; the unfinished temporary folder is ignored, and
removed when the folder is opened again. The last ``max_to_keep`` checkpoints are
kept.

:meth:`TrainCheckpoints.restore` puts a checkpoint onto any ``storage`` mesh and
sharding plan: the saved slab is read row-sharded onto the new mesh (each process
reads only its own rows) and, when its plan differs, :func:`repack` moves every
piece of every table to where the new plan wants it, on the devices. Restoring a
``cw`` checkpoint of 8 devices onto a ``rw`` run on 2 devices (or 2 processes onto
one) gives the same tables.

Example:
    >>> checkpoints = TrainCheckpoints("runs/x/dlrm/checkpoints")              # doctest: +SKIP
    >>> checkpoints.save(100, state, plan, history=history)                      # doctest: +SKIP
    >>> restored = checkpoints.restore(mesh, plan, like=state)                    # doctest: +SKIP
    >>> restored.step, restored.data_position                                   # doctest: +SKIP
    (100, 100)
    >>> checkpoints.close()   # waits for the last save                          # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from runkit import MissingFileError, UsageError, check_positive
from runkit.runs import as_json
from ndp.embedding import AXIS, ShardingPlan, TablePiece, slab_sharding
from ndp.train import TrainState, replicate

__all__ = ["FORMAT", "RESUME_HINT", "Restored", "TrainCheckpoints", "plan_from_dict", "repack", "repack_copies"]

#: Version of the ``meta`` item's layout.
FORMAT = 1
#: What an error about resuming suggests.
RESUME_HINT = "use a new --out or --no-resume"


class Restored(NamedTuple):
    """A checkpoint put back on a mesh.

    Attributes:
      state: the :class:`~ndp.train.TrainState`, laid out for the requested plan.
      step: the optimizer step it was saved at.
      data_position: index of the next training batch to read.
      history: the training history saved with it (a list of dicts).
      metadata: the whole ``meta`` item (plan, history, ...).
    """

    state: TrainState
    step: int
    data_position: int
    history: list
    metadata: dict


def plan_from_dict(d: dict) -> ShardingPlan:
    """The :class:`~ndp.plan.ShardingPlan` saved by :meth:`~ndp.plan.ShardingPlan.to_dict`.

    Example:
        >>> from ndp.embedding import plan_sharding
        >>> plan = plan_sharding((10, 3), embedding_dim=4, num_shards=2, kind="cw")
        >>> plan_from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
        True
    """
    pieces = tuple(TablePiece(**{k: int(v) for k, v in p.items()}) for t in d["tables"] for p in t["pieces"])
    return ShardingPlan(
        table_sizes=tuple(int(t["rows"]) for t in d["tables"]),
        embedding_dim=int(d["embedding_dim"]),
        num_shards=int(d["num_shards"]),
        kind=str(d["kind"]),
        pieces=tuple(sorted(pieces, key=lambda p: (p.table, p.shard))),
        slab_rows=int(d["slab_rows"]),
        slab_width=int(d["slab_width"]),
        group_size=int(d.get("group_size", 1)),
    )


# ------------------------------------------------------------------------------------------------
# Repacking a slab from one plan's layout to another's


class _Copy(NamedTuple):
    """``rows x cols`` values from global slab position ``(src_row, src_col)`` to ``(dst_row, dst_col)``;
    with ``accumulator``, the rows' accumulators go along."""

    src_row: int
    src_col: int
    dst_row: int
    dst_col: int
    rows: int
    cols: int
    accumulator: bool


def _check_same_tables(old: ShardingPlan, new: ShardingPlan) -> None:
    if tuple(old.table_sizes) != tuple(new.table_sizes):
        raise UsageError(f"resume: table_sizes: expected {list(old.table_sizes)}, got {list(new.table_sizes)}; {RESUME_HINT}")
    if old.embedding_dim != new.embedding_dim:
        raise UsageError(f"resume: embedding_dim: expected {old.embedding_dim}, got {new.embedding_dim}; {RESUME_HINT}")


def repack_copies(old: ShardingPlan, new: ShardingPlan) -> tuple[_Copy, ...]:
    """The static copies that turn ``old``'s slab into ``new``'s, from their pieces alone.

    Every intersection of an ``old`` piece and a ``new`` piece of the same table
    (rows and columns) is one copy. Accumulators have one value per table row (a
    ``cw`` row holds it once per column piece), so a ``new`` piece takes its rows'
    accumulators from the copies that fill its first column (``dst_col == 0``):
    exactly one per row, whatever the kinds.

    Example:
        >>> from ndp.embedding import plan_sharding
        >>> a = plan_sharding((4,), embedding_dim=2, num_shards=2, kind="rw")
        >>> b = plan_sharding((4,), embedding_dim=2, num_shards=2, kind="cw")
        >>> [(c.src_row, c.src_col, c.dst_row, c.dst_col, c.rows) for c in repack_copies(a, b)]
        [(0, 0, 0, 0, 2), (2, 0, 2, 0, 2), (0, 1, 4, 0, 2), (2, 1, 6, 0, 2)]
    """
    _check_same_tables(old, new)
    by_table: dict[int, list[TablePiece]] = {}
    for p in old.pieces:
        by_table.setdefault(p.table, []).append(p)
    copies = []
    for q in new.pieces:
        for p in by_table.get(q.table, ()):
            r0, r1 = max(p.row_start, q.row_start), min(p.row_end, q.row_end)
            c0, c1 = max(p.col_start, q.col_start), min(p.col_end, q.col_end)
            if r0 < r1 and c0 < c1:
                src = p.shard * old.slab_rows + p.slab_offset + r0 - p.row_start
                dst = q.shard * new.slab_rows + q.slab_offset + r0 - q.row_start
                copies.append(_Copy(src, c0 - p.col_start, dst, c0 - q.col_start, r1 - r0, c1 - c0, c0 == q.col_start))
    covered = sum(c.rows * c.cols for c in copies)
    if covered != sum(new.table_sizes) * new.embedding_dim:
        raise RuntimeError(
            f"plan: expected the old plan's pieces to cover the {sum(new.table_sizes)} x {new.embedding_dim} table "
            f"values once, got {covered} values"
        )
    return tuple(copies)


def _fragments(copies, source_rows: int, dest_rows: int, devices: int):
    """The copies cut at device boundaries: ``{(source device, dest device): [(src, dst local copy), ...]}``.

    The source slab lies in blocks of ``source_rows`` rows per device, the
    destination in blocks of ``dest_rows``; a copy never crosses a destination
    block (it lies in one piece). Adjacent fragments that continue each other are merged.
    """
    pairs: dict[tuple[int, int], list[_Copy]] = {}
    for c in copies:
        dest, dst_local = divmod(c.dst_row, dest_rows)
        row = 0
        while row < c.rows:
            source, src_local = divmod(c.src_row + row, source_rows)
            n = min(c.rows - row, source_rows - src_local)
            pairs.setdefault((source, dest), []).append(
                _Copy(src_local, c.src_col, dst_local + row, c.dst_col, n, c.cols, c.accumulator)
            )
            row += n
    merged = {}
    for key, fragments in pairs.items():
        out: list[_Copy] = []
        for f in sorted(fragments):
            last = out[-1] if out else None
            if (last is not None and (last.src_col, last.dst_col, last.cols, last.accumulator)
                    == (f.src_col, f.dst_col, f.cols, f.accumulator)
                    and f.src_row == last.src_row + last.rows and f.dst_row == last.dst_row + last.rows):  # fmt: skip
                out[-1] = last._replace(rows=last.rows + f.rows)
            else:
                out.append(f)
        merged[key] = out
    return merged


def _varying(x):
    # Device-dependent values inside shard_map (so that every switch branch has the same type).
    return jax.lax.pcast(x, (AXIS,), to="varying")


@functools.lru_cache(maxsize=16)
def _repack_fn(mesh: jax.sharding.Mesh, old: ShardingPlan, new: ShardingPlan, source_rows: int,
               with_accumulators: bool):  # fmt: skip
    """The jitted repack for a source slab of ``source_rows`` rows per device (see :func:`repack`)."""
    devices = new.num_shards
    pairs = _fragments(repack_copies(old, new), source_rows, new.slab_rows, devices)
    width = max(f.cols for fragments in pairs.values() for f in fragments)
    buffer_width = width + (1 if with_accumulators else 0)  # the accumulator rides in the last column

    def send_branch(fragments, rows):
        def build(slab, accumulators):
            buffer = _varying(jnp.zeros((rows, buffer_width), slab.dtype))
            position = 0
            for f in fragments:
                piece = jax.lax.slice(slab, (f.src_row, f.src_col), (f.src_row + f.rows, f.src_col + f.cols))
                buffer = jax.lax.dynamic_update_slice(buffer, piece, (position, 0))
                if with_accumulators and f.accumulator:
                    column = jax.lax.slice(accumulators, (f.src_row,), (f.src_row + f.rows,))[:, None]
                    buffer = jax.lax.dynamic_update_slice(buffer, column, (position, width))
                position += f.rows
            return buffer

        return build

    def receive_branch(fragments):
        def place(out, moved, buffer):
            position = 0
            for f in fragments:
                piece = jax.lax.slice(buffer, (position, 0), (position + f.rows, f.cols))
                out = jax.lax.dynamic_update_slice(out, piece, (f.dst_row, f.dst_col))
                if with_accumulators and f.accumulator:
                    column = jax.lax.slice(buffer, (position, width), (position + f.rows, width + 1))[:, 0]
                    moved = jax.lax.dynamic_update_slice(moved, column, (f.dst_row,))
                position += f.rows
            return out, moved

        return place

    def local(slab, accumulators):
        device = jax.lax.axis_index(AXIS)
        out = _varying(jnp.zeros((new.slab_rows, new.slab_width), slab.dtype))
        moved = _varying(jnp.zeros((new.slab_rows,), slab.dtype))
        # Round k: every device d sends what device (d + k) % S needs from it (k = 0: itself).
        for shift in range(devices):
            route = [(d, (d + shift) % devices) for d in range(devices)]
            rows = max(sum(f.rows for f in pairs.get(pair, ())) for pair in route)
            if rows == 0:
                continue
            senders = [send_branch(pairs.get(pair, ()), rows) for pair in route]
            if devices > 1:
                buffer = jax.lax.switch(device, senders, slab, accumulators)
            else:
                buffer = senders[0](slab, accumulators)
            if shift:
                buffer = jax.lax.ppermute(buffer, AXIS, route)
            receivers = [receive_branch(pairs.get(((d - shift) % devices, d), ())) for d in range(devices)]
            if devices > 1:
                out, moved = jax.lax.switch(device, receivers, out, moved, buffer)
            else:
                out, moved = receivers[0](out, moved, buffer)
        return out, moved

    spec = jax.P(AXIS)
    if with_accumulators:
        body = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=(spec, spec))
        return jax.jit(body)
    body = jax.shard_map(lambda slab: local(slab, None)[0], mesh=mesh, in_specs=spec, out_specs=spec)
    return jax.jit(body)


def repack(mesh: jax.sharding.Mesh, old: ShardingPlan, new: ShardingPlan, slab: jax.Array,
           accumulators: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:  # fmt: skip
    """Move a slab (and its row-wise accumulators) from ``old``'s layout to ``new``'s, on the devices.

    Driven only by the plans' pieces (:func:`repack_copies`), so it works between
    any kinds (``tw``, ``rw``, ``cw``, ``twrw``, ...) and device counts. One jitted
    ``shard_map`` program per plan pair, made of static slices and
    ``dynamic_update_slice`` calls: in round ``k`` every device packs what device
    ``(d + k) % S`` needs from its rows into one buffer (only the needed columns;
    the accumulators ride along in one extra column) and a ``ppermute`` delivers
    it. Only ``ppermute`` calls move data (no all-gather): a device holds its old rows,
    its new rows and the buffers of what it sends and receives, and no host copy
    of any table is made. The result is sharded as ``new``'s slab
    (:func:`ndp.embedding.slab_sharding`). Compiling costs about 10-15 ms per
    piece intersection on XLA:CPU (a few seconds for 26 tables on 8 devices).

    Args:
      mesh: the ``storage`` mesh of ``new`` (``new.num_shards`` devices).
      old, new: the plans (same tables and width).
      slab: ``old``'s global slab, row-sharded over ``mesh``; it may have more rows
        than ``old``'s (``num_shards * slab_rows``, padded to a multiple of the
        devices): those are ignored.
      accumulators: ``old``'s row-wise Adagrad accumulators (one per slab row), or ``None``.

    Returns:
      ``(slab, accumulators)`` in ``new``'s layout (``accumulators`` ``None`` when not given).

    Example:
        >>> import numpy as np
        >>> from ndp.embedding import pack_tables, plan_sharding, put_slab, unpack_tables
        >>> from ndp.train import storage_mesh, to_host
        >>> mesh = storage_mesh(1)
        >>> a = plan_sharding((3, 2), embedding_dim=2, num_shards=1, kind="rw")
        >>> b = plan_sharding((3, 2), embedding_dim=2, num_shards=1, kind="tw")
        >>> tables = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((2, 2), np.float32)]
        >>> moved, _ = repack(mesh, a, b, put_slab(mesh, a, pack_tables(a, tables)))
        >>> unpack_tables(b, to_host(mesh, moved))[0].tolist()
        [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    """
    devices = mesh.shape.get(AXIS)
    if devices != new.num_shards:
        raise ValueError(f"mesh: expected {AXIS!r} of size {new.num_shards} (the new plan's), got {dict(mesh.shape)}")
    need = old.num_shards * old.slab_rows
    if slab.ndim != 2 or slab.shape[0] < need or slab.shape[0] % devices or slab.shape[1] != old.slab_width:
        raise ValueError(
            f"slab: expected shape (>= {need} rows, a multiple of {devices}, {old.slab_width}) (the old plan's), "
            f"got {tuple(slab.shape)}"
        )
    if accumulators is not None and accumulators.shape != (slab.shape[0],):
        raise ValueError(
            f"accumulators: expected shape ({slab.shape[0]},) (one per slab row), got {tuple(accumulators.shape)}"
        )
    source_rows = slab.shape[0] // devices
    if accumulators is None:
        return _repack_fn(mesh, old, new, source_rows, False)(slab), None
    return _repack_fn(mesh, old, new, source_rows, True)(slab, accumulators)


# ------------------------------------------------------------------------------------------------
# The checkpoint folder


def _abstract(x, sharding=None) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else x.sharding)


class TrainCheckpoints:
    """The checkpoints of one training run, in ``directory`` (one ``<step>/`` folder each).

    Every process of a multi-process run must create it and call :meth:`save` and
    :meth:`restore` together (with the same arguments); the folder must be visible
    to all of them.

    Args:
      directory: the run's checkpoint folder (created when missing).
      max_to_keep: how many of the latest checkpoints are kept.
      async_save: write in a background thread (``False``: :meth:`save` blocks).

    Example:
        >>> with TrainCheckpoints("runs/x/dlrm/checkpoints") as checkpoints:       # doctest: +SKIP
        ...     checkpoints.save(10, state, plan, history=[])
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2, async_save: bool = True):
        check_positive("max_to_keep", max_to_keep)
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,  # (orbax >= 0.12 also offers preservation_policy=LatestN(n), the same)
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # an unfinished save of a killed run
            create=True,
        )
        handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for item, handler, save, restore in [
            ("tables", ocp.handlers.StandardCheckpointHandler(), ocp.args.StandardSave, ocp.args.StandardRestore),
            ("dense", ocp.handlers.StandardCheckpointHandler(), ocp.args.StandardSave, ocp.args.StandardRestore),
            ("meta", ocp.handlers.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore),
        ]:
            handlers.add(item, save, handler)
            handlers.add(item, restore, handler)
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=handlers)

    # -- queries

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, ``None`` when there is none."""
        return self._manager.latest_step()

    def metadata(self, step: int | None = None) -> dict:
        """The ``meta`` item (step, data position, history, plan) of ``step`` (default: latest)."""
        step = self._step(step)
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise MissingFileError(
                    f"checkpoints: expected a complete checkpoint in {str(self.directory)!r}, got none"
                )
        elif step not in self._manager.all_steps():
            raise MissingFileError(
                f"step: expected one of the checkpoints {self.steps()} in {str(self.directory)!r}, got {step}"
            )
        return int(step)

    # -- saving

    def save(self, step: int, state: TrainState, plan: ShardingPlan, *, history: Sequence[dict] = ()) -> None:
        """Start saving ``state`` as checkpoint ``step`` (returns once the arrays are in host memory).

        Args:
          step: the optimizer step (also stored as the data position, the next batch's index).
          state: the train state; it may be donated to the next step as soon as this returns.
          plan: the sharding plan the slab is laid out by.
          history: the training history so far (JSON-able dicts).
        """
        check_positive("step", step, allow_zero=True)
        if state.slab.shape != (plan.num_shards * plan.slab_rows, plan.slab_width):
            raise ValueError(
                f"state.slab: expected shape {(plan.num_shards * plan.slab_rows, plan.slab_width)} (the plan's), "
                f"got {tuple(state.slab.shape)}"
            )
        tables = {"slab": state.slab}
        if state.slab_state.size:  # SGD's placeholder has none (orbax does not store empty arrays)
            tables["slab_state"] = state.slab_state
        dense = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
        meta = as_json({
            "format": FORMAT,
            "step": int(step),
            "data_position": int(step),
            "history": list(history),
            "plan": plan.to_dict(),
            "process_count": jax.process_count(),
        })  # fmt: skip
        saved = self._manager.save(
            int(step),
            args=ocp.args.Composite(
                tables=ocp.args.StandardSave(tables), dense=ocp.args.StandardSave(dense), meta=ocp.args.JsonSave(meta)
            ),
        )
        if not saved:  # orbax skips steps at or before the latest one
            raise ValueError(f"step: expected a step after the latest checkpoint {self.latest_step()}, got {step}")

    def delete_all(self) -> None:
        """Delete every checkpoint in the folder (a run that starts over)."""
        self._manager.wait_until_finished()
        for step in self.steps():
            self._manager.delete(step)

    def wait(self) -> None:
        """Block until the pending save, if any, is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the pending save and release the folder."""
        self._manager.close()

    def __enter__(self) -> TrainCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- restoring

    def restore(self, mesh: jax.sharding.Mesh, plan: ShardingPlan, like: TrainState, *, step: int | None = None) -> Restored:
        """Put checkpoint ``step`` (default: the latest) on ``mesh``, laid out by ``plan``.

        The saved plan may have another kind and device count: the saved slab is read
        row-sharded over ``mesh`` (when its rows do not divide evenly over the
        devices, it is read zero-padded to the next multiple; orbax fills the
        padding) and moved by :func:`repack`. Dense parameters and optimizer state
        are restored replicated on ``mesh``.

        Args:
          mesh: the ``storage`` mesh to restore onto.
          plan: the plan of this run (same tables and width as the saved one).
          like: a train state of this run (arrays or ``jax.ShapeDtypeStruct``): the
            structure, shapes and dtypes of ``params`` and ``opt_state``, and whether
            ``slab_state`` holds accumulators (non-empty).
          step: which checkpoint (default: the latest).

        Returns:
          A :class:`Restored`.

        Raises:
          UsageError: other tables or optimizer than the checkpoint's.
          FileNotFoundError: no such checkpoint.
        """
        step = self._step(step)
        meta = self.metadata(step)
        where = f"checkpoint {str(self.directory / str(step))!r}"
        if meta.get("format") != FORMAT:
            raise UsageError(f"resume: {where}: expected format {FORMAT}, got {meta.get('format')!r}; {RESUME_HINT}")
        old = plan_from_dict(meta["plan"])
        _check_same_tables(old, plan)
        if mesh.shape.get(AXIS) != plan.num_shards:
            raise ValueError(f"mesh: expected {AXIS!r} of size {plan.num_shards} (the plan's), got {dict(mesh.shape)}")
        saved_items = self._manager.item_metadata(step)
        has_accumulators = "slab_state" in saved_items["tables"]
        wants_accumulators = math.prod(like.slab_state.shape) > 0
        if has_accumulators != wants_accumulators:
            expected, got = ("row-wise Adagrad", "sgd") if has_accumulators else ("sgd", "row-wise Adagrad")
            raise UsageError(f"resume: {where}: optimizer: expected {expected} accumulators, got {got}; {RESUME_HINT}")

        # The saved slab, row-sharded over this mesh (zero-padded to a multiple of its devices).
        devices = plan.num_shards
        saved_rows = old.num_shards * old.slab_rows
        same_layout = old == plan
        rows = saved_rows if same_layout else -(-saved_rows // devices) * devices
        sharding = slab_sharding(mesh)
        tables_like = {"slab": jax.ShapeDtypeStruct((rows, old.slab_width), like.slab.dtype, sharding=sharding)}
        if has_accumulators:
            tables_like["slab_state"] = jax.ShapeDtypeStruct((rows,), like.slab_state.dtype, sharding=sharding)
        replicated = jax.NamedSharding(mesh, jax.P())
        dense_like = {
            "params": jax.tree.map(lambda x: _abstract(x, replicated), like.params),
            "opt_state": jax.tree.map(lambda x: _abstract(x, replicated), like.opt_state),
            "step": jax.ShapeDtypeStruct((), like.step.dtype, sharding=replicated),
        }
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                tables=ocp.args.StandardRestore(tables_like, strict=rows == saved_rows),
                dense=ocp.args.StandardRestore(dense_like),
            ),
        )
        tables, dense = restored["tables"], restored["dense"]
        slab, accumulators = tables["slab"], tables.get("slab_state")
        if not same_layout:
            slab, accumulators = repack(mesh, old, plan, slab, accumulators)
        if accumulators is None:
            accumulators = replicate(mesh, np.zeros((0,), np.float32))  # SGD's placeholder
        state = TrainState(slab, accumulators, dense["params"], dense["opt_state"], dense["step"])
        return Restored(state, int(meta["step"]), int(meta["data_position"]), list(meta["history"]), meta)

    def read(self, step: int | None = None) -> tuple[dict, dict]:
        """Checkpoint ``step`` (default: latest) as host numpy arrays, and its ``meta`` item.

        For inspection and tests only: every array is read whole into this process.

        Returns:
          ``({"tables": {...}, "dense": {...}}, meta)``, the arrays as nested dicts.
        """
        step = self._step(step)
        items = self._manager.item_metadata(step)

        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # any saved topology

        def host(tree):
            return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=here), tree)

        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                tables=ocp.args.StandardRestore(host(items["tables"])),
                dense=ocp.args.StandardRestore(host(items["dense"])),
            ),
        )
        arrays = {"tables": dict(restored["tables"]), "dense": dict(restored["dense"])}
        return jax.tree.map(np.asarray, arrays), self.metadata(step)

