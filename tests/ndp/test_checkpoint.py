"""Checkpoints (ndp.checkpoint): restore onto other device and process counts, kills, other settings.

Every restored run is compared with an uninterrupted run of the same steps, never
with the code's own output.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from flax import nnx

from runkit import read_settings
from ndp.checkpoint import TrainCheckpoints, plan_from_dict, repack, repack_copies
from ndp.configs import DLRMConfig
from ndp.embedding import pack_tables, plan_sharding, unpack_tables
from ndp.model import DLRMHead
from ndp.train import (
    Batch,
    EmbeddingOptimizer,
    bce_loss,
    init_train_state,
    make_train_step,
    shard_batch,
    storage_mesh,
    to_host,
)
from tests.child_env import child_env
from tests.ndp.checkpoint_worker import KILLED, fit_case
from tests.ndp.test_distributed import free_port

WORKER = Path(__file__).with_name("checkpoint_worker.py")
TABLE_SIZES = (37, 5, 64)
DIM = 8
BATCH = 8
ATOL = 1e-5


# ------------------------------------------------------------------------------------------------
# A small run driven step by step


@functools.cache
def _setup(devices: int, kind: str, optimizer: str):
    mesh = storage_mesh(devices)
    plan = plan_sharding(TABLE_SIZES, DIM, devices, kind)
    cfg = DLRMConfig(num_dense=3, table_sizes=TABLE_SIZES, embedding_dim=DIM, bottom_mlp=(DIM,), top_mlp=(4, 1))
    tx = optax.sgd(0.05, momentum=0.9)  # a dense optimizer with state
    embedding_optimizer = EmbeddingOptimizer(optimizer, 0.1)
    head = DLRMHead(cfg, rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(head)
    step = make_train_step(mesh, plan, graphdef, bce_loss, tx, embedding_optimizer)
    return mesh, plan, cfg, tx, embedding_optimizer, step


def fresh_state(devices: int, kind: str, optimizer: str = "rowwise_adagrad"):
    mesh, plan, cfg, tx, embedding_optimizer, _ = _setup(devices, kind, optimizer)
    rng = np.random.default_rng(0)
    tables = [rng.normal(size=(n, DIM)).astype(np.float32) for n in TABLE_SIZES]
    state, _ = init_train_state(mesh, plan, DLRMHead(cfg, rngs=nnx.Rngs(0)), tx, jax.random.key(0),
                                embedding_optimizer, host_slab=pack_tables(plan, tables))  # fmt: skip
    return state


def batch_at(i: int) -> Batch:
    rng = np.random.default_rng([7, i])
    lengths = rng.integers(0, 3, size=(BATCH, len(TABLE_SIZES))).astype(np.int32)
    ids = np.stack([rng.integers(0, n, size=(BATCH, 2)) for n in TABLE_SIZES], axis=1).astype(np.int32)
    labels = (rng.random(BATCH) < 0.5).astype(np.float32)
    return Batch(rng.normal(size=(BATCH, 3)).astype(np.float32), ids, lengths, labels)


def train(devices: int, kind: str, state, steps: range, optimizer: str = "rowwise_adagrad"):
    mesh, *_, step = _setup(devices, kind, optimizer)
    for i in steps:
        state, loss = step(state, shard_batch(mesh, batch_at(i)))
        jax.block_until_ready(loss)
    return state


def host_view(devices: int, kind: str, state) -> dict:
    """Tables, per-row accumulators and dense leaves of ``state`` as host arrays, independent of the layout."""
    mesh, plan, *_ = _setup(devices, kind, "rowwise_adagrad")
    view = {f"table{t}": x for t, x in enumerate(unpack_tables(plan, to_host(mesh, state.slab)))}
    if state.slab_state.size:
        wide = np.repeat(to_host(mesh, state.slab_state)[:, None], plan.slab_width, axis=1)
        for t, x in enumerate(unpack_tables(plan, wide)):
            view[f"accumulators{t}"] = x  # every column of a row holds its accumulator
    for i, leaf in enumerate(jax.tree.leaves((state.params, state.opt_state))):
        view[f"dense{i}"] = to_host(mesh, leaf)
    view["step"] = to_host(mesh, state.step)
    return view


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=ATOL, rtol=0, err_msg=key)


# ------------------------------------------------------------------------------------------------
# One process, other device counts and kinds


@pytest.mark.parametrize(("before", "after"), [((8, "cw"), (2, "cw")), ((2, "cw"), (1, "rw")), ((1, "tw"), (8, "cw"))])
def test_restore_onto_another_device_count_continues_like_an_uninterrupted_run(tmp_path, before, after):
    """Row-wise Adagrad, so accumulators matter; 1 -> 8 reads 106 saved rows padded to 112 (8 devices)."""
    k, m = 2, 2
    state = train(*before, fresh_state(*before), range(k))
    with TrainCheckpoints(tmp_path) as checkpoints:
        checkpoints.save(k, state, _setup(*before, "rowwise_adagrad")[1], history=[{"step": k}])
    del state
    mesh, plan, *_ = _setup(*after, "rowwise_adagrad")
    with TrainCheckpoints(tmp_path) as checkpoints:  # as a new run would
        restored = checkpoints.restore(mesh, plan, like=fresh_state(*after))
    assert (restored.step, restored.data_position, restored.history) == (k, k, [{"step": k}])
    assert restored.state.slab.sharding.is_equivalent_to(jax.NamedSharding(mesh, jax.P("storage")), 2)
    assert restored.state.params["top"]["layers"][0]["kernel"].sharding.is_fully_replicated
    resumed = train(*after, restored.state, range(k, k + m))
    straight = train(*after, fresh_state(*after), range(k + m))
    assert_same(host_view(*after, resumed), host_view(*after, straight))


def test_restore_sgd_checkpoint_onto_twrw(tmp_path):
    """No accumulators (SGD); 8 cw devices onto 3 twrw ones (the saved rows do not divide over 3)."""
    state = fresh_state(8, "cw", "sgd")
    want = host_view(8, "cw", state)
    with TrainCheckpoints(tmp_path) as checkpoints:
        checkpoints.save(0, state, _setup(8, "cw", "sgd")[1])
    mesh, plan, *_ = _setup(3, "twrw", "sgd")
    assert state.slab.shape[0] % 3
    with TrainCheckpoints(tmp_path) as checkpoints:
        restored = checkpoints.restore(mesh, plan, like=fresh_state(3, "twrw", "sgd"))
    assert restored.state.slab_state.shape == (0,)
    assert_same(host_view(3, "twrw", restored.state), want)


def test_repack_is_driven_by_pieces_alone():
    rng = np.random.default_rng(1)
    sizes = (13, 4, 30)
    tables = [rng.normal(size=(n, 8)).astype(np.float32) for n in sizes]
    for (a_devices, a_kind), (b_devices, b_kind) in [((4, "twrw"), (8, "cw")), ((8, "tw"), (4, "twrw"))]:
        old, new = plan_sharding(sizes, 8, a_devices, a_kind), plan_sharding(sizes, 8, b_devices, b_kind)
        mesh = storage_mesh(b_devices)
        host = np.zeros((-(-old.num_shards * old.slab_rows // b_devices) * b_devices, old.slab_width), np.float32)
        host[: old.num_shards * old.slab_rows] = pack_tables(old, tables)
        slab = jax.make_array_from_callback(host.shape, jax.NamedSharding(mesh, jax.P("storage")), lambda i: host[i])
        moved, _ = repack(mesh, old, new, slab)
        for got, want in zip(unpack_tables(new, to_host(mesh, moved)), tables):
            np.testing.assert_array_equal(got, want)
    assert plan_from_dict(new.to_dict()) == new
    with pytest.raises(ValueError, match=r"resume: table_sizes: expected \[13, 4, 30\], got \[13, 4\]"):
        repack_copies(new, plan_sharding(sizes[:2], 8, 2, "rw"))


# ------------------------------------------------------------------------------------------------
# Kills and other settings


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    env = child_env()
    done = subprocess.run([sys.executable, str(WORKER), "kill-during-save", str(folder)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == KILLED, done.stdout + done.stderr
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("_")) == ["1", "2.orbax-checkpoint-tmp"]
    with TrainCheckpoints(folder) as checkpoints:
        assert checkpoints.steps() == [1]
        arrays, meta = checkpoints.read()
    assert meta["step"] == 1 and int(arrays["dense"]["step"]) == 1
    assert np.all(arrays["tables"]["slab"] == 1.0) and np.all(arrays["tables"]["slab_state"] == 0.5)
    assert not any("tmp" in p.name for p in folder.iterdir())  # the unfinished save is cleaned up


# ------------------------------------------------------------------------------------------------
# Two processes


def run_two_processes(out: Path, steps: int, kill_at: int = -1) -> list[str]:
    """Run the two-process :func:`fit_case`; with ``kill_at``, process 1 dies there and process 0 is killed."""
    port = str(free_port())
    env = child_env()
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), "fit", port, str(i), str(out), str(steps), str(kill_at)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for i in range(2)
    ]
    logs = ["", ""]
    try:
        if kill_at >= 0:
            logs[1] = procs[1].communicate(timeout=180)[0]
            assert procs[1].returncode == KILLED, f"process 1 was not killed:\n{logs[1][-3000:]}"
            procs[0].kill()  # the rest of the job goes down with it
            logs[0] = procs[0].communicate(timeout=60)[0]
        else:
            for i, p in enumerate(procs):
                logs[i] = p.communicate(timeout=180)[0]
            for i, p in enumerate(procs):
                assert p.returncode == 0, f"process {i} failed:\n{logs[i][-3000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return logs


STEPS, KILL_AT = 6, 5  # checkpoints every 2 steps; batch 5 is never trained in the killed run


@pytest.fixture(scope="module")
def killed_two_process_run(tmp_path_factory) -> Path:
    """The checkpoint folder of a two-process run (4 devices, cw) killed at step 5."""
    out = tmp_path_factory.mktemp("killed")
    logs = run_two_processes(out, STEPS, KILL_AT)
    assert f"killed at step {KILL_AT}" in logs[1]
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run: 4 devices (rw) in one process."""
    out = tmp_path_factory.mktemp("straight")
    fit_case(out, STEPS, devices=4, sharding="rw")
    return out


def final_view(out: Path) -> dict:
    """The final checkpoint's tables, accumulators and dense leaves, independent of the layout."""
    with TrainCheckpoints(out / "dlrm" / "checkpoints") as checkpoints:
        assert checkpoints.latest_step() == STEPS
        arrays, meta = checkpoints.read()
    assert meta["data_position"] == STEPS and [h["step"] for h in meta["history"]] == [STEPS]
    plan = plan_from_dict(meta["plan"])
    view = {f"table{t}": x for t, x in enumerate(unpack_tables(plan, arrays["tables"]["slab"]))}
    wide = np.repeat(arrays["tables"]["slab_state"][:, None], plan.slab_width, axis=1)
    view.update({f"accumulators{t}": x for t, x in enumerate(unpack_tables(plan, wide))})
    view.update({jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(arrays["dense"])})
    return view


def resumed_step(log: str) -> int:
    lines = [line for line in log.splitlines() if line.startswith("resumed dlrm from ")]
    assert len(lines) == 1, log[-3000:]
    return int(lines[0].rsplit(" ", 1)[1])


def test_two_processes_resume_on_one(killed_two_process_run, straight, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(killed_two_process_run, out)
    fit_case(out, STEPS, devices=1, sharding="rw")  # 4 devices (rw) in two processes -> 1 device (rw) in one
    assert resumed_step(capsys.readouterr().out) in (2, 4)
    assert_same(final_view(out), final_view(straight))


def test_killed_two_process_run_resumes_from_the_last_complete_checkpoint(killed_two_process_run, straight, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(killed_two_process_run, out)
    logs = run_two_processes(out, STEPS)
    assert resumed_step(logs[0]) in (2, 4)
    assert_same(final_view(out), final_view(straight))


def test_resuming_with_other_settings_raises_and_no_resume_starts_over(straight, tmp_path):
    with pytest.raises(ValueError, match=r"resume: run folder .* was written with other settings: embedding_dim: "
                       r"expected 8, got 16; optimizer: expected 'rowwise_adagrad', got 'sgd'; use a new --out or "
                       r"--no-resume"):  # fmt: skip
        fit_case(straight, STEPS + 2, devices=1, sharding="rw", embedding_dim=16, optimizer="sgd")
    out = tmp_path / "again"
    shutil.copytree(straight, out)
    fit_case(out, 2, devices=1, sharding="rw", embedding_dim=16, resume=False)
    with TrainCheckpoints(out / "dlrm" / "checkpoints") as checkpoints:
        assert checkpoints.steps() == [2]
    assert read_settings(out / "dlrm")["embedding_dim"] == 16  # the run folder's record of the fresh start
