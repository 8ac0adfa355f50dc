"""Test configuration shared by all test modules.

JAX is configured here, before any test imports it: strict dtype promotion, rank
promotion as an error, and 8 emulated CPU devices so mesh/sharding tests run on a
laptop exactly as on a pod slice.

The tests compile with XLA:CPU's LLVM back-end optimizations off (``XLA_FLAGS``, unless the
environment already sets an optimization level). What a test checks is what a program computes
and the HLO XLA builds for it (its own passes still run), not how fast the machine code is;
compiling takes about a third of the time. Subprocesses the tests start inherit the setting.

The session also keeps JAX's persistent compilation cache in a fresh temporary folder (unless
``JAX_COMPILATION_CACHE_DIR`` is set): a program that another test, or another process of the
session (a CLI run, a distributed worker, a resumed run), already compiled is loaded instead of
compiled again. Each session starts with an empty cache, so nothing carries over between runs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from tests.child_env import FAST_COMPILE_FLAGS

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), FAST_COMPILE_FLAGS]))
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # set before xdist starts its workers: they share it
    _cache = tempfile.mkdtemp(prefix="jaxsparse-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
# Start the backend now: a CLI run in-process (``ndp train --devices 2``) emulates its device count only
# when no backend has started, so without this the first test of a worker would fix the count for the rest.
jax.devices()

# Deterministic, repeatable property tests: the same examples on every run.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=15,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The shared data/model folder at ``../shared``; a test that needs it fails (never skips) without it."""
    root = Path(os.environ.get("JAXSPARSE_SHARED", REPO_ROOT.parent / "shared"))
    if not (root / "data").is_dir() or not (root / "models").is_dir():
        pytest.fail(f"shared data folder missing: expected data/ and models/ under {str(root)!r}")
    return root


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run first (otherwise in collection order): started last, the longest
    tests would leave one of the two xdist workers idle at the end of the session."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
