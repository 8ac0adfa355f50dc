"""Tests for the shared utilities: argument checks, atomic files, checkpoints, paths, CLI dispatch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from runkit import (
    atomic_write_json,
    check_choice,
    check_positive,
    check_shape,
    find_shared_root,
    load_checkpoint,
    save_checkpoint,
)
from runkit.io import atomic_write_bytes

REPO = Path(__file__).resolve().parents[2]


def test_check_errors_name_argument_expected_and_given():
    with pytest.raises(ValueError, match=r"sharding: expected one of \['rw', 'tw'\], got 'xx'"):
        check_choice("sharding", "xx", ["rw", "tw"])
    with pytest.raises(ValueError, match=r"batch_size: expected a value > 0, got 0"):
        check_positive("batch_size", 0)
    assert check_positive("lr", 0.0, allow_zero=True) == 0.0
    with pytest.raises(ValueError, match=r"kernel: expected shape \(\*, 3, 3\), got \(4, 3, 5\)"):
        check_shape("kernel", (4, 3, 5), (None, 3, 3))
    check_shape("kernel", (4, 3, 3), (None, 3, 3))


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_json(target, {"a": np.float32(1.5), "b": jnp.arange(3)})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "layers": [jnp.ones(2, jnp.int32), (jnp.zeros(()),)]}
    path = save_checkpoint(tmp_path / "ck.npz", tree, {"epoch": 3, "loss": np.float64(0.25)})
    restored, meta = load_checkpoint(path, like=tree)
    assert meta == {"epoch": 3, "loss": 0.25}
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(restored["layers"][0], np.ones(2, np.int32))
    flat, _ = load_checkpoint(path)
    assert set(flat) == {"['w']", "['layers'][0]", "['layers'][1][0]"}
    with pytest.raises(ValueError, match=r"entry \"\['w'\]\": expected shape \(3, 2\), got \(2, 3\)"):
        load_checkpoint(path, like={"w": jnp.zeros((3, 2)), "layers": tree["layers"]})
    with pytest.raises(KeyError, match=r"has no entry .*v"):
        load_checkpoint(path, like={"v": jnp.zeros(1)})


def test_find_shared_root_precedence(tmp_path, monkeypatch):
    explicit = tmp_path / "mine"
    explicit.mkdir()
    assert find_shared_root(explicit) == explicit.resolve()
    monkeypatch.setenv("JAXSPARSE_SHARED", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="JAXSPARSE_SHARED"):
        find_shared_root()
    monkeypatch.setenv("JAXSPARSE_SHARED", str(explicit))
    assert find_shared_root() == explicit.resolve()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_shared_root(tmp_path / "nope")


def test_shared_folder_beside_repo_is_found(shared_root, monkeypatch):
    monkeypatch.delenv("JAXSPARSE_SHARED", raising=False)
    assert find_shared_root() == shared_root.resolve()


@pytest.mark.parametrize("package", ["jaxsparse", "hwmodel", "ndp"])
def test_cli_help_and_unknown_command(package):
    ok = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "COMMAND" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", package, "no-such-command"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert "invalid choice: 'no-such-command'" in bad.stderr
