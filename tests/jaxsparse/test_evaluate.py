"""``python -m jaxsparse evaluate`` end to end on the 80 golden-logit images."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxsparse.__main__ import main
from jaxsparse.data import decode_image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSPARSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXSPARSE_CIFAR10", raising=False)


@pytest.fixture(scope="module")
def golden(shared_root):
    with np.load(shared_root / "models" / "cifar10-resnet" / "golden_logits.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def mini_shared(tmp_path_factory, shared_root, golden):
    """A shared folder holding only the 80 golden images (test split) and the pretrained weights."""
    root = tmp_path_factory.mktemp("shared")
    for rel in golden["paths"]:
        target = root / "data" / "cifar10-jpeg" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_root / "data" / "cifar10-jpeg" / rel, target)
    (root / "models").mkdir()
    (root / "models" / "cifar10-resnet").symlink_to(shared_root / "models" / "cifar10-resnet")
    return root


def reference_accuracy(golden, name):
    return float(np.mean(golden[name].argmax(-1) == golden["labels"]))


def test_evaluate_matches_the_reference_predictions(mini_shared, golden, tmp_path, capsys):
    out = tmp_path / "evaluation"
    data = mini_shared / "data" / "cifar10-jpeg"
    # batch 30 -> 32 on the 8 test devices: 2 full batches and a padded one.
    status = main(["evaluate", "--model", "resnet20", "--data", str(data), "--batch-size", "30", "--out", str(out), "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    expected = reference_accuracy(golden, "resnet20")
    assert result["total"] == 80 and result["batch_size"] == 32 and result["num_devices"] == 8
    assert result["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert f"{100 * expected:.2f}%" in printed and "images/s" in printed
    assert result["images_per_second"] > 0 and result["cpu_seconds"] > 0
    assert "images per CPU-second" in printed


def test_defaults_come_from_the_shared_folder_env_var(mini_shared, golden, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("JAXSPARSE_SHARED", str(mini_shared))
    assert main(["evaluate", "--model", "resnet20", "--limit", "40", "--batch-size", "30", "--no-progress", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    # --limit 40 takes every second image: 4 per class.
    picked = np.arange(0, 80, 2)
    expected = np.mean(golden["resnet20"][picked].argmax(-1) == golden["labels"][picked])
    assert f"{100 * expected:.2f}% ({int(round(40 * expected))}/40)" in printed
    assert str(mini_shared / "models" / "cifar10-resnet" / "resnet20.npz") in printed


def test_cifar10_python_folder_is_accepted(shared_root, golden, tmp_path, monkeypatch, capsys):
    images = np.stack([decode_image(shared_root / "data" / "cifar10-jpeg" / p) for p in golden["paths"]])
    rows = images.transpose(0, 3, 1, 2).reshape(80, 3072)
    batches_dir = tmp_path / "download" / "cifar-10-batches-py"
    batches_dir.mkdir(parents=True)
    with open(batches_dir / "test_batch", "wb") as f:
        pickle.dump({b"data": rows, b"labels": golden["labels"].tolist()}, f)
    monkeypatch.setenv("JAXSPARSE_CIFAR10", str(tmp_path / "download"))
    assert main(["evaluate", "--model", "resnet20", "--batch-size", "30", "--no-progress", "--out", str(tmp_path / "out")]) == 0
    assert f"{100 * reference_accuracy(golden, 'resnet20'):.2f}%" in capsys.readouterr().out


def test_missing_data_explains_how_to_get_cifar10(tmp_path):
    empty = tmp_path / "empty_shared"
    empty.mkdir()
    env = {**os.environ, "JAXSPARSE_SHARED": str(empty)}
    env.pop("JAXSPARSE_CIFAR10", None)
    proc = subprocess.run(
        [sys.executable, "-m", "jaxsparse", "evaluate", "--model", "resnet56"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in proc.stderr
    assert "--data" in proc.stderr and "--weights" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_arguments_get_clear_errors(mini_shared, shared_root, tmp_path, capsys):
    data = str(mini_shared / "data" / "cifar10-jpeg")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", "resnet18", "--data", data])
    assert exit_info.value.code == 2
    assert "invalid choice: 'resnet18'" in capsys.readouterr().err

    wrong_depth = str(shared_root / "models" / "cifar10-resnet" / "resnet20.npz")
    assert main(["evaluate", "--model", "resnet56", "--weights", wrong_depth, "--data", data]) == 1
    assert "ResNet-20" in capsys.readouterr().err

    assert main(["evaluate", "--model", "vgg16", "--data", data]) == 1
    assert "pass --weights" in capsys.readouterr().err

    assert main(["evaluate", "--batch-size", "0", "--data", data]) == 1
    assert "--batch-size: expected a value > 0, got 0" in capsys.readouterr().err

    assert main(["evaluate", "--data", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err

    two_classes = tmp_path / "two"
    for name in ("a", "b"):
        (two_classes / name).mkdir(parents=True)
        shutil.copyfile(mini_shared / "data" / "cifar10-jpeg" / "test" / "cat" / "0000.jpg", two_classes / name / "x.jpg")
    assert main(["evaluate", "--model", "resnet20", "--data", str(two_classes), "--no-progress"]) == 1
    assert "expected 10 classes for resnet20, got 2" in capsys.readouterr().err


@pytest.mark.parametrize("command_name", ["evaluate", "compress"])
@pytest.mark.parametrize("content", [b"not a zip file", None])
def test_a_bad_weights_file_is_reported_within_three_seconds(tmp_path, shared_root, content, command_name):
    """Checked before JAX starts: an unreadable file, or weights of another depth, named in the
    message with the option that gave it."""
    (tmp_path / "data" / "cat").mkdir(parents=True)
    bad = tmp_path / "my_weights.npz"
    if content is None:  # a readable file of ResNet-20 weights given for ResNet-56
        shutil.copyfile(shared_root / "models" / "cifar10-resnet" / "resnet20.npz", bad)
    else:
        bad.write_bytes(content)
    command = [sys.executable, "-m", "jaxsparse", command_name, "--model", "resnet56", "--weights", str(bad), "--data", str(tmp_path / "data")]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--weights" in proc.stderr and "my_weights.npz" in proc.stderr
    assert ("not a readable .npz" if content else "ResNet-20") in proc.stderr
    assert elapsed < 3.0, f"took {elapsed:.1f} s"
