"""Processes for the checkpoint tests (run by test_checkpoint.py, not collected by pytest).

Usage:
  python checkpoint_worker.py fit PORT PROCESS_ID OUT STEPS KILL_AT
      one of two ``jax.distributed`` processes (2 CPU devices each) training
      :func:`fit_case`; process 1 kills itself (``os._exit``) when asked for batch
      ``KILL_AT`` (``-1``: never).
  python checkpoint_worker.py kill-during-save DIR
      saves checkpoint 1, starts saving checkpoint 2 and is killed before it is written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for ndp and tests.ndp

TABLE_SIZES = (50, 30, 20)
BATCH = 8
KILLED = 9


def fit_case(out: str | os.PathLike, steps: int, devices: int | None, sharding: str, *, kill_at: int = -1,
             **overrides) -> dict:  # fmt: skip
    """A tiny synthetic DLRM run of :func:`ndp.trainer.fit` with checkpoints every 2 steps in ``out``."""
    from ndp.data.synthetic import SyntheticConfig
    from ndp.trainer import SyntheticSource, TrainOptions, fit

    source = SyntheticSource(
        SyntheticConfig(TABLE_SIZES, batch_size=BATCH, min_bag_length=0, max_bag_length=2, num_dense=3, seed=0),
        eval_batches=1,
    )
    if kill_at >= 0:
        train_batch = source.train_batch

        def killing_train_batch(step, batch_size):
            if step == kill_at:
                print(f"killed at step {step}", flush=True)
                os._exit(KILLED)
            return train_batch(step, batch_size)

        source.train_batch = killing_train_batch
    settings = dict(steps=steps, batch_size=BATCH, eval_every=steps, devices=devices, sharding=sharding,
                    optimizer="rowwise_adagrad", embedding_lr=0.1, dense_lr=0.01, embedding_dim=8,
                    bottom_mlp=(8, 8), top_mlp=(8, 1), out_dir=str(out), checkpoint_every=2,
                    progress=False)  # fmt: skip
    settings.update(overrides)
    return fit("dlrm", source, TrainOptions(**settings))


def kill_during_save(directory: str) -> None:
    """Checkpoint 1 complete, checkpoint 2 (a 12.8 MB slab) cut off by ``os._exit`` right after ``save`` returns."""
    import jax
    import numpy as np

    from ndp.checkpoint import TrainCheckpoints
    from ndp.embedding import plan_sharding, put_slab
    from ndp.train import TrainState, replicate, storage_mesh

    mesh = storage_mesh(1)
    plan = plan_sharding((200_000,), 16, 1, "rw")
    slab = put_slab(mesh, plan, np.ones((plan.slab_rows, plan.slab_width), np.float32))
    state = TrainState(slab, replicate(mesh, np.full((plan.slab_rows,), 0.5, np.float32)),
                       replicate(mesh, {"w": np.ones(3, np.float32)}), replicate(mesh, {"m": np.zeros(3, np.float32)}),
                       replicate(mesh, np.ones((), np.int32)))  # fmt: skip
    checkpoints = TrainCheckpoints(directory)
    checkpoints.save(1, state, plan)
    checkpoints.wait()
    state = state._replace(slab=state.slab + 1.0, step=replicate(mesh, np.full((), 2, np.int32)))
    jax.block_until_ready(state)
    checkpoints.save(2, state, plan)
    os._exit(KILLED)


def main() -> None:
    import jax

    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    if sys.argv[1] == "kill-during-save":
        kill_during_save(sys.argv[2])
        return
    port, process_id, out = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    steps, kill_at = int(sys.argv[5]), int(sys.argv[6])
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id, initialization_timeout=60
    )
    fit_case(out, steps, None, "rw", kill_at=kill_at if process_id == 1 else -1)
    print(f"process {process_id} done", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
