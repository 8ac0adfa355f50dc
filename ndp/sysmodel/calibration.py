"""The CPU-side cost model and its fit to measured training steps.

A training step on a CPU costs a fixed overhead, the dense MLP work, a per-lookup
cost (index handling, gather/scatter issue, pooling arithmetic) and the memory
traffic of rows that miss the last-level cache:

.. math::
    t = c_0 + c_{flop} \\cdot 3 B F + t_{lookup} \\cdot N + \\frac{2 N (1 - h_{LLC}) \\max(r, 64)}{\\eta \\, BW}

with ``F`` forward MLP FLOPs per example, ``N`` lookups, ``r`` the row bytes
(plus optimizer state), ``BW`` the machine's measured streaming bandwidth,
``h_LLC`` the LRU hit rate of a last-level cache of the measured size on the
workload's rows (Che's approximation over the power-law popularity), and ``η``
the achieved fraction of streaming bandwidth for row gathers. ``c_0, c_flop,
t_lookup, 1/η`` are fitted by non-negative least squares on relative error.
``t_lookup`` and ``η`` become the host parameters ``host_lookup_time`` and
``host_mem_efficiency`` of the system model.

Example:
    >>> case = CalibrationCase(rows_per_table=1000, num_tables=2, batch_size=64, zipf_exponent=0.0,
    ...                        embedding_dim=16, mlp_flops_per_example=1e4, row_state_bytes=4)
    >>> f = case_features(case, llc_bytes=32 * 2**20, bandwidth=1e10)
    >>> f.shape, float(f[0])
    ((4,), 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ndp.sysmodel import cache

FEATURE_NAMES = ("overhead_s", "seconds_per_mlp_flop", "seconds_per_lookup", "inverse_gather_efficiency")


class CalibrationCase(NamedTuple):
    """One measured configuration."""

    rows_per_table: int
    num_tables: int
    batch_size: int
    zipf_exponent: float
    embedding_dim: int
    mlp_flops_per_example: float
    row_state_bytes: float = 0.0
    pooling_factor: float = 1.0


def llc_hit_rate(case: CalibrationCase, llc_bytes: float) -> float:
    """LRU hit rate of a last-level cache of ``llc_bytes`` on the case's embedding rows."""
    line = max(case.embedding_dim * 4.0 + case.row_state_bytes, 64.0)
    rows, prob = cache.zipf_bins(case.rows_per_table, case.zipf_exponent, num_bins=256)
    rows = np.tile(rows, case.num_tables)
    prob = np.tile(prob, case.num_tables) / case.num_tables
    return float(cache.che_lru_hit_rate(rows, prob, llc_bytes / line))


def case_features(case: CalibrationCase, *, llc_bytes: float, bandwidth: float) -> np.ndarray:
    """The four regressors ``[1, 3BF, N, 2N(1-h)max(r,64)/BW]`` of a case."""
    lookups = case.batch_size * case.num_tables * case.pooling_factor
    line = max(case.embedding_dim * 4.0 + case.row_state_bytes, 64.0)
    miss = 1.0 - llc_hit_rate(case, llc_bytes)
    return np.array(
        [1.0, 3.0 * case.batch_size * case.mlp_flops_per_example, lookups, 2.0 * lookups * miss * line / bandwidth]
    )


def fit_cost_model(features: np.ndarray, measured: Sequence[float]) -> np.ndarray:
    """Non-negative coefficients minimising the squared *relative* error of the predictions."""
    features = np.asarray(features, np.float64)
    measured = np.asarray(measured, np.float64)
    if features.ndim != 2 or features.shape[0] != measured.shape[0]:
        raise ValueError(f"features: expected shape ({measured.shape[0]}, k), got {features.shape}")
    weighted = features / measured[:, None]
    scale = np.maximum(np.abs(weighted).max(axis=0), 1e-30)  # condition the columns
    a, target = weighted / scale, np.ones_like(measured)
    k = a.shape[1]
    best, best_err = np.zeros(k), float(np.sum(target**2))
    # Exact NNLS for a handful of regressors: the optimum is the unconstrained least-squares
    # solution on some subset of columns with all coefficients >= 0; try every subset.
    for mask in range(1, 2**k):
        cols = [j for j in range(k) if mask >> j & 1]
        sol, *_ = np.linalg.lstsq(a[:, cols], target, rcond=None)
        if np.any(sol < 0):
            continue
        err = float(np.sum((a[:, cols] @ sol - target) ** 2))
        if err < best_err:
            best, best_err = np.zeros(k), err
            best[cols] = sol
    return best / scale


def predict(features: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Predicted step times of the cases (seconds)."""
    return np.asarray(features, np.float64) @ np.asarray(coefficients, np.float64)


def host_parameters(coefficients: np.ndarray, *, threads_used: float = 1.0) -> dict:
    """The system-model host parameters implied by a fit.

    ``host_lookup_time`` is per lookup and thread (the measured step runs its
    gathers and scatters on ``threads_used`` threads); ``host_mem_efficiency`` is
    the fitted share of streaming bandwidth, clipped to ``(0, 1]``.
    """
    inv_eff = float(coefficients[3])
    return {
        "host_lookup_time": float(coefficients[2]) * threads_used,
        "host_mem_efficiency": 1.0 if inv_eff <= 1.0 else 1.0 / inv_eff,
    }
