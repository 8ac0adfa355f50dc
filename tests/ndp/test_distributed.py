"""Training under ``jax.distributed`` with two local CPU processes matches one process."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.child_env import child_env
from tests.ndp.distributed_case import train_case

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    out = tmp_path / "two_processes.npz"
    port = str(free_port())
    env = child_env()
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), port, str(i), str(out), "rw", "rowwise_adagrad"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-3000:]}"
    with np.load(out) as data:
        distributed = [data[f"arr_{i}"] for i in range(len(data.files))]
    tables, params = train_case(num_devices=1, kind="rw", optimizer="rowwise_adagrad")
    single = [*tables, *params]
    assert len(distributed) == len(single)
    for got, want in zip(distributed, single):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
