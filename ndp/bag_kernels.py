"""CPU kernels for jagged embedding bags: sum pooling, and the SGD and row-wise Adagrad row updates.

XLA:CPU runs a gather followed by a scatter-add (the pooling) and a scatter-add into the
tables (the update) as single-threaded element loops; on multi-hot bags that is 2-3x
slower than FBGEMM's CPU kernels. These kernels (numba, called as XLA FFI custom calls
through :mod:`runkit.numba_ffi`) read :class:`ndp.bags.Bags` directly:

* :func:`pool` sums each bag's rows, bags split over the CPU cores, two rows in flight
  per bag (random rows of a large table are memory-latency bound);
* :func:`sgd_update` applies :math:`E_r \\mathrel{-}= \\eta \\sum_{j: r_j = r} g_{bag(j)}`;
  the cores own disjoint rows (by row block), so duplicate lookups need no atomics;
* :func:`rowwise_adagrad_update` is FBGEMM's ``EXACT_ROWWISE_ADAGRAD``: each looked-up
  row's gradients are summed first (duplicates linked in a per-row list, found through a
  negative mark left in the row's accumulator), then
  :math:`a_r \\mathrel{+}= \\lVert G_r \\rVert^2 / D` and
  :math:`E_r \\mathrel{-}= \\eta\\, G_r / (\\sqrt{a_r} + \\epsilon)`, once per row.

The updates write the table (and the accumulators) in place: the custom call's outputs
alias its inputs, and a jitted step that donates them updates them without a copy. Ids
outside their table are skipped (the host checks them first, :func:`ndp.bags.check_bags`).
The pure-XLA path in :mod:`ndp.embedding` computes the same functions on any backend
and is the reference the tests hold these kernels to.

Example::

    pooled = pool(slab, table_offsets, table_sizes, bags.values, bags.offsets, batch_size=B)   # (B, T, W)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from runkit import numba_ffi

__all__ = ["available", "pool", "rowwise_adagrad_update", "sgd_update"]

_OWNER = "ndp.bag_kernels"
_TARGETS = {"pool": "ndp_bags_pool_sum", "sgd": "ndp_bags_sgd", "adagrad": "ndp_bags_rowwise_adagrad"}
_ROW_BLOCK = 3  # rows are owned by cores in blocks of 2**_ROW_BLOCK
_AHEAD = 8  # lookups between a row's prefetch and its use


def available() -> tuple[bool, str]:
    """``(True, "")`` when the kernels can run here (numba installed, CPU backend)."""
    return numba_ffi.available()


def _register() -> None:
    numba_ffi.register(_TARGETS["pool"], _pool_handler, _OWNER)
    numba_ffi.register(_TARGETS["sgd"], _sgd_handler, _OWNER)
    numba_ffi.register(_TARGETS["adagrad"], _adagrad_handler, _OWNER)


def _i32(x):
    return jnp.asarray(x, jnp.int32)


def pool(slab, table_offsets, table_sizes, values, offsets, *, batch_size: int) -> jax.Array:
    """Sum-pooled bags ``float32 (B, T, W)`` of a one-device slab ``(R, W)``.

    Args:
      slab: the tables, table ``t`` from row ``table_offsets[t]``.
      table_offsets, table_sizes: ``int32 (T,)``.
      values, offsets: a :class:`ndp.bags.Bags`.
      batch_size: ``B`` (``offsets`` has ``T * B + 1`` entries).
    """
    _register()
    tables, width = int(np.shape(table_offsets)[0]), slab.shape[1]
    call = jax.ffi.ffi_call(_TARGETS["pool"], jax.ShapeDtypeStruct((batch_size, tables, width), jnp.float32))
    return call(slab, _i32(table_offsets), _i32(table_sizes), _i32(values), _i32(offsets))


def sgd_update(slab, table_offsets, table_sizes, values, offsets, grad, lr) -> jax.Array:
    """The slab after SGD on the looked-up rows: ``slab[row] -= lr * grad[b, t]`` for every lookup (in place).

    ``grad``: ``float32 (B, T, W)``, the loss gradient w.r.t. the pooled bags; ``lr`` a scalar.
    """
    _register()
    call = jax.ffi.ffi_call(_TARGETS["sgd"], jax.ShapeDtypeStruct(slab.shape, jnp.float32), input_output_aliases={0: 0})
    lr = jnp.reshape(jnp.asarray(lr, jnp.float32), (1,))
    return call(slab, _i32(table_offsets), _i32(table_sizes), _i32(values), _i32(offsets), grad, lr)


def rowwise_adagrad_update(slab, state, table_offsets, table_sizes, values, offsets, grad, lr, eps: float, dim: int):
    """``(slab, state)`` after row-wise Adagrad on the looked-up rows (in place); ``state``: ``float32 (R,)``.

    ``dim`` divides the squared norm (the embedding dimension; it may differ from the slab's width).
    """
    _register()
    call = jax.ffi.ffi_call(
        _TARGETS["adagrad"],
        (jax.ShapeDtypeStruct(slab.shape, jnp.float32), jax.ShapeDtypeStruct(state.shape, jnp.float32)),
        input_output_aliases={0: 0, 1: 1},
    )
    scalars = jnp.stack([jnp.asarray(lr, jnp.float32), jnp.float32(eps), jnp.float32(dim)])
    return call(slab, state, _i32(table_offsets), _i32(table_sizes), _i32(values), _i32(offsets), grad, scalars)


if not numba_ffi.NUMBA_MISSING:
    import numba
    from numba import njit, prange

    prefetch_row = numba_ffi.prefetch_row

    @njit(parallel=True, fastmath=True, cache=True)
    def _pool(slab, table_offsets, table_sizes, values, offsets, out, threads):
        batch, tables, width = out.shape
        bags = tables * batch
        chunks = min(bags, 16 * threads)
        for chunk in prange(chunks):
            acc = np.empty(width, np.float32)
            for k in range(chunk * bags // chunks, (chunk + 1) * bags // chunks):
                t = k // batch
                b = k - t * batch
                base, size = table_offsets[t], table_sizes[t]
                acc[:] = 0.0
                end = offsets[k + 1]
                for j in range(offsets[k], end):
                    # The row _AHEAD lookups on (in this table, nearly always: a wrong guess costs nothing).
                    ahead = j + _AHEAD if j + _AHEAD < values.shape[0] else j
                    prefetch_row(slab, base + min(max(values[ahead], 0), size - 1))
                    v = values[j]
                    if 0 <= v < size:
                        r = base + v
                        for c in range(width):
                            acc[c] += slab[r, c]
                for c in range(width):
                    out[b, t, c] = acc[c]

    @njit(fastmath=True, cache=True)
    def _owned(table_offsets, table_sizes, values, offsets, batch, part, parts, rows, bag_of):
        """The lookups of rows that core ``part`` owns, in lookup order: their slab rows and bags ``b * T + t``."""
        tables = table_offsets.shape[0]
        count = 0
        for k in range(tables * batch):
            t = k // batch
            b = k - t * batch
            base, size = table_offsets[t], table_sizes[t]
            for j in range(offsets[k], offsets[k + 1]):
                v = values[j]
                if v < 0 or v >= size:
                    continue
                r = base + v
                if (r >> _ROW_BLOCK) % parts == part:
                    rows[count] = r
                    bag_of[count] = b * tables + t
                    count += 1
        return count

    @njit(parallel=True, fastmath=True, cache=True)
    def _sgd(slab, table_offsets, table_sizes, values, offsets, grad, lr, parts):
        batch, tables, width = grad.shape
        used = offsets[tables * batch]
        flat = grad.reshape(batch * tables, width)
        step = -lr[0]
        for part in prange(parts):
            rows = np.empty(used, np.int64)
            bag_of = np.empty(used, np.int32)
            count = _owned(table_offsets, table_sizes, values, offsets, batch, part, parts, rows, bag_of)
            for i in range(count):
                if i + _AHEAD < count:
                    prefetch_row(slab, rows[i + _AHEAD])
                r, g = rows[i], bag_of[i]
                for c in range(width):
                    slab[r, c] += step * flat[g, c]

    @njit(parallel=True, fastmath=True, cache=True)
    def _adagrad(slab, state, table_offsets, table_sizes, values, offsets, grad, scalars, parts):
        batch, tables, width = grad.shape
        lr, eps, dim = scalars[0], scalars[1], scalars[2]
        used = offsets[tables * batch]
        flat = grad.reshape(batch * tables, width)
        for part in prange(parts):
            rows = np.empty(used, np.int64)
            bag_of = np.empty(used, np.int32)
            count = _owned(table_offsets, table_sizes, values, offsets, batch, part, parts, rows, bag_of)
            # Distinct rows: the first lookup of a row leaves a negative mark (its distinct index) in the
            # row's accumulator (accumulators are >= 0); later lookups of the row join its linked list.
            head = np.empty(count, np.int32)
            following = np.empty(count, np.int32)
            distinct_rows = np.empty(count, np.int64)
            old = np.empty(count, np.float32)
            distinct = 0
            for i in range(count):
                if i + _AHEAD < count:
                    numba_ffi.prefetch(state.ctypes.data + rows[i + _AHEAD] * 4)
                r = rows[i]
                mark = state[r]
                if mark >= 0.0:
                    old[distinct], distinct_rows[distinct], head[distinct], following[i] = mark, r, i, -1
                    state[r] = -1.0 - distinct
                    distinct += 1
                else:
                    q = np.int64(-1.0 - mark)
                    following[i] = head[q]
                    head[q] = i
            summed = np.empty(width, np.float32)
            for q in range(distinct):
                if q + _AHEAD < distinct:
                    prefetch_row(slab, distinct_rows[q + _AHEAD])
                summed[:] = 0.0
                i = head[q]
                while i >= 0:
                    g = bag_of[i]
                    for c in range(width):
                        summed[c] += flat[g, c]
                    i = following[i]
                square = 0.0
                for c in range(width):
                    square += summed[c] * summed[c]
                accumulated = old[q] + square / dim
                r = distinct_rows[q]
                state[r] = accumulated
                scale = -lr / (np.sqrt(accumulated) + eps)
                for c in range(width):
                    slab[r, c] += scale * summed[c]

    def _pool_handler(frame):
        args, rets = numba_ffi.call_frame(frame)
        if args != 0:
            i32 = np.int32
            _pool(numba_ffi.array2(args, 0, np.float32), numba_ffi.vector(args, 1, i32), numba_ffi.vector(args, 2, i32),
                  numba_ffi.vector(args, 3, i32), numba_ffi.vector(args, 4, i32), numba_ffi.array3(rets, 0, np.float32),
                  numba.get_num_threads())
        return numba_ffi.as_pointer(0)

    def _sgd_handler(frame):
        args, rets = numba_ffi.call_frame(frame)
        if args != 0:  # result 0 aliases argument 0: the slab is updated where it lies
            i32 = np.int32
            _sgd(numba_ffi.array2(args, 0, np.float32), numba_ffi.vector(args, 1, i32), numba_ffi.vector(args, 2, i32),
                 numba_ffi.vector(args, 3, i32), numba_ffi.vector(args, 4, i32), numba_ffi.array3(args, 5, np.float32),
                 numba_ffi.vector(args, 6, np.float32), numba.get_num_threads())
        return numba_ffi.as_pointer(0)

    def _adagrad_handler(frame):
        args, rets = numba_ffi.call_frame(frame)
        if args != 0:  # results alias arguments 0 and 1
            i32 = np.int32
            _adagrad(numba_ffi.array2(args, 0, np.float32), numba_ffi.vector(args, 1, np.float32),
                     numba_ffi.vector(args, 2, i32), numba_ffi.vector(args, 3, i32), numba_ffi.vector(args, 4, i32),
                     numba_ffi.vector(args, 5, i32), numba_ffi.array3(args, 6, np.float32),
                     numba_ffi.vector(args, 7, np.float32), numba.get_num_threads())
        return numba_ffi.as_pointer(0)
