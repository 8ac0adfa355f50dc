"""The environment of the Python processes a test starts (CLIs, distributed workers)."""

from __future__ import annotations

import os

#: XLA:CPU's LLVM back-end optimizations off: the tests check what programs compute, not how
#: fast their machine code is, and compile in about a third of the time (see conftest.py).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

#: The test session's persistent compilation cache (see conftest.py), passed on to the processes it
#: starts: a program compiled once is loaded, not compiled again, by the next process that builds it.
CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without the JAX/XLA settings of the test process (its 8 emulated devices,
    say), with the fast-compile flags and the session's compilation cache, plus ``extra``.

    Example:
        >>> env = child_env(JAX_PLATFORMS="cpu")
        >>> env["JAX_PLATFORMS"], "xla_backend_optimization_level=0" in env["XLA_FLAGS"]
        ('cpu', True)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["XLA_FLAGS"] = FAST_COMPILE_FLAGS
    env.update({k: os.environ[k] for k in CACHE_VARS if k in os.environ})
    env.update(extra)
    return env
