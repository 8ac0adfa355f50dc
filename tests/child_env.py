"""The environment of the Python processes a test starts (CLIs, distributed workers)."""

from __future__ import annotations

import os

#: XLA:CPU's LLVM back-end optimizations off: the tests check what programs compute, not how
#: fast their machine code is, and compile in about a third of the time (see conftest.py).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without the JAX/XLA settings of the test process (its 8 emulated devices,
    say), with the fast-compile flags, plus ``extra``.

    Example:
        >>> env = child_env(JAX_PLATFORMS="cpu")
        >>> env["JAX_PLATFORMS"], "xla_backend_optimization_level=0" in env["XLA_FLAGS"]
        ('cpu', True)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["XLA_FLAGS"] = FAST_COMPILE_FLAGS
    env.update(extra)
    return env
