"""CPU kernels written in numba and called from jitted JAX code as XLA FFI custom calls.

A kernel module defines a Python function ``handler(frame)`` that reads its buffers with
the helpers below and calls its ``@njit`` kernel, then registers it once with
:func:`register`; JAX code calls it with ``jax.ffi.ffi_call(target, ...)``. The call runs
inside the compiled program on the buffers XLA owns: no host round trip and no copies
(outputs may alias inputs for in-place updates, ``input_output_aliases``).

Buffers are read from XLA's C call frame (``xla/ffi/api/c_api.h``, API 0.3):
``XLA_FFI_CallFrame`` as 8-byte words has the extension chain at word 1, the argument
table at word 9 and the result table at word 14; each ``XLA_FFI_Buffer`` is
``struct_size, extension_start, dtype, data, rank, dims``.

Example::

    from runkit import numba_ffi

    def _handler(frame):
        args, rets = numba_ffi.call_frame(frame)
        if args != 0:
            my_kernel(numba_ffi.vector(args, 0, np.float32), numba_ffi.vector(rets, 0, np.float32))
        return numba_ffi.as_pointer(0)

    numba_ffi.register("my_target", _handler, owner="my kernel")   # once per process
    y = jax.ffi.ffi_call("my_target", jax.ShapeDtypeStruct(x.shape, x.dtype))(x)
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

try:
    from numba import carray, cfunc, njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
    from llvmlite import binding, ir
except ImportError:  # kernels are optional: available() reports why they are off
    NUMBA_MISSING = True
else:
    NUMBA_MISSING = False

# XLA FFI API version the handlers report (the headers this layout follows: xla/ffi/api/c_api.h).
FFI_API_MAJOR, FFI_API_MINOR = 0, 3


def available() -> tuple[bool, str]:
    """``(True, "")`` when numba is importable and JAX's default backend is the CPU, else ``(False, reason)``."""
    import jax

    if jax.default_backend() != "cpu":
        return False, f"backend {jax.default_backend()!r}, the kernel runs on 'cpu'"
    if NUMBA_MISSING:
        return False, "numba is not installed"
    return True, ""


@functools.cache
def start_threads(owner: str) -> str:
    """Start numba's threads with a thread-safe layer (XLA may enter a kernel from several threads).

    Returns the layer's name. Raises ``RuntimeError`` naming ``owner`` when only numba's
    default ``workqueue`` layer (not thread-safe) is available or already running.
    """
    import numba
    from numba.np.ufunc.parallel import _launch_threads

    numba.config.THREADING_LAYER = "threadsafe"
    try:
        _launch_threads()
        layer = numba.threading_layer()
    except (ValueError, RuntimeError) as err:
        raise RuntimeError(f"{owner}: numba found no thread-safe threading layer (OpenMP or TBB); "
                           "install one, e.g. `pip install tbb`") from err  # fmt: skip
    if layer == "workqueue":
        raise RuntimeError(f"{owner}: numba's threads were already started with the workqueue layer, "
                           "which is not thread-safe; set NUMBA_THREADING_LAYER=omp (or tbb) before using numba")  # fmt: skip
    return layer


@functools.cache
def register(target: str, handler, owner: str) -> None:
    """Compile ``handler(frame)`` as a C callback and register it with XLA as CPU custom call ``target``.

    Idempotent per ``(target, handler)``. Raises ``RuntimeError`` naming ``owner`` when the
    kernels cannot run here (:func:`available`).
    """
    import jax

    ok, reason = available()
    if not ok:
        raise RuntimeError(f"{owner}: the CPU kernel is unavailable: {reason}")
    start_threads(owner)
    compiled = cfunc(types.voidptr(types.voidptr))(handler)
    capsule_new = ctypes.pythonapi.PyCapsule_New
    capsule_new.restype = ctypes.py_object
    capsule_new.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
    capsule = capsule_new(compiled.address, b"xla._CUSTOM_CALL_TARGET", None)
    jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    _KEEP_ALIVE.append(compiled)


_KEEP_ALIVE: list = []  # compiled callbacks XLA holds raw pointers to


if not NUMBA_MISSING:
    # LLVM names the intrinsic by its pointer type: opaque pointers (LLVM 15 and newer) or i8*.
    _PREFETCH = "llvm.prefetch.p0" if binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"

    @intrinsic
    def as_pointer(typingctx, address):
        """An ``int64`` address as a ``void*`` (what a handler returns: ``as_pointer(0)`` is success)."""

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)

        return types.voidptr(types.int64), codegen

    @intrinsic
    def prefetch(typingctx, address):
        """Ask the CPU to start loading the cache line at an ``int64`` address (for reading; kept in all
        cache levels). It never faults, so an address past an array is harmless. Random rows of a large
        table are latency-bound: prefetching the rows of lookups a few steps ahead overlaps their misses."""

        def codegen(context, builder, signature, args):
            pointer = builder.inttoptr(args[0], ir.PointerType(ir.IntType(8)))
            i32 = ir.IntType(32)
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]), _PREFETCH
            )
            builder.call(function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(types.int64), codegen

    @njit
    def prefetch_row(table, row):
        """:func:`prefetch` every cache line of ``table[row]`` (a C-contiguous 2-D array)."""
        width = table.shape[1] * table.itemsize
        start = table.ctypes.data + row * width
        for line in range(0, width, 64):
            prefetch(start + line)

    @njit
    def call_frame(frame):
        """``(args, rets)`` tables of an ``XLA_FFI_CallFrame``; ``(0, 0)`` when XLA only asked for the
        handler's metadata (answered here: API version, no traits, no state)."""
        words = carray(frame, (15,), np.int64)
        if words[1] != 0:
            extension = carray(as_pointer(words[1]), (4,), np.int64)
            if (extension[1] & 0xFFFFFFFF) == 1:  # XLA_FFI_Extension_Metadata
                metadata = carray(as_pointer(extension[3]), (6,), np.int64)
                metadata[1] = 24  # XLA_FFI_Api_Version: struct_size, extension_start, major, minor
                metadata[2] = 0
                metadata[3] = FFI_API_MAJOR | (FFI_API_MINOR << 32)
                metadata[4] = 0  # traits
                if metadata[0] >= 48:
                    metadata[5] = 0  # state type id: none
                return np.int64(0), np.int64(0)
        return words[9], words[14]

    @njit
    def _descriptor(table, i):
        return carray(as_pointer(carray(as_pointer(table), (i + 1,), np.int64)[i]), (6,), np.int64)

    @njit
    def vector(table, i, dtype):
        """Buffer ``i`` of an argument or result table as a 1-D array of ``dtype``."""
        desc = _descriptor(table, i)
        return carray(as_pointer(desc[3]), (carray(as_pointer(desc[5]), (1,), np.int64)[0],), dtype)

    @njit
    def array2(table, i, dtype):
        """Buffer ``i`` as a 2-D array of ``dtype``."""
        desc = _descriptor(table, i)
        dims = carray(as_pointer(desc[5]), (2,), np.int64)
        return carray(as_pointer(desc[3]), (dims[0], dims[1]), dtype)

    @njit
    def array3(table, i, dtype):
        """Buffer ``i`` as a 3-D array of ``dtype``."""
        desc = _descriptor(table, i)
        dims = carray(as_pointer(desc[5]), (3,), np.int64)
        return carray(as_pointer(desc[3]), (dims[0], dims[1], dims[2]), dtype)

    @njit
    def array4(table, i, dtype):
        """Buffer ``i`` as a 4-D array of ``dtype``."""
        desc = _descriptor(table, i)
        dims = carray(as_pointer(desc[5]), (4,), np.int64)
        return carray(as_pointer(desc[3]), (dims[0], dims[1], dims[2], dims[3]), dtype)
