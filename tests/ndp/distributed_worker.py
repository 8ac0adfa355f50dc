"""One process of the two-process training check (run by test_distributed.py, not collected by pytest).

Usage: python distributed_worker.py PORT PROCESS_ID OUT.npz KIND OPTIMIZER
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.ndp

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def main() -> None:
    port, process_id, out, kind, optimizer = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id, initialization_timeout=60
    )
    import numpy as np

    from tests.ndp.distributed_case import train_case

    tables, params = train_case(num_devices=None, kind=kind, optimizer=optimizer)
    if process_id == 0:
        np.savez(out, *tables, *params)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
