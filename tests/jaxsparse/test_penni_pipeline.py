"""The compress command: killed mid-run and rerun, it ends with the report of an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runkit import repo_root
from tests.child_env import child_env

TINY = ["--model", "digits-cnn", "--pretrain-epochs", "2", "--retrain-epochs", "6", "--finetune-epochs", "1",
        "--alternate-every", "1", "--train-subset", "512", "--batch-size", "64", "--no-progress", "--seed", "3"]


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "jaxsparse", "compress", *TINY, "--out", str(out)]


def _env():
    return child_env(JAX_PLATFORMS="cpu")


def _deterministic(report: dict) -> dict:
    stages = [{k: v for k, v in s.items() if k not in ("seconds", "cpu_seconds")} for s in report["stages"]]
    return {"stages": stages, "summary": report["summary"], "layers": report["layers"], "config": report["config"]}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_report(tmp_path, capsys):
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    # the uninterrupted run first: the session's compilation cache then serves the other two runs
    reference = subprocess.run(_command(reference_dir), cwd=repo_root(), env=_env(), capture_output=True, text=True, timeout=600)
    reference_err = reference.stderr
    victim = subprocess.Popen(_command(resumed_dir), cwd=repo_root(), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # kill inside the retraining stage, after its first epoch checkpoint (in its nested run folder)
        epoch_file = resumed_dir / "checkpoints" / "retrain-epoch" / "checkpoints" / "train.npz"
        deadline = time.time() + 400
        while not epoch_file.is_file() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert victim.poll() is None, "the run finished before it could be interrupted"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert reference.returncode == 0, reference_err[-2000:]
    assert not (resumed_dir / "report.json").exists()
    assert not (resumed_dir / "checkpoints" / "retrain.npz").exists()
    rerun = subprocess.run(_command(resumed_dir), cwd=repo_root(), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming after stage 'decompose'" in rerun.stderr
    first = json.loads((reference_dir / "report.json").read_text())
    second = json.loads((resumed_dir / "report.json").read_text())
    assert second["resumed_after"] == ["decompose"]
    assert _deterministic(second) == _deterministic(first)
    assert (resumed_dir / "report.png").stat().st_size > 10_000
    # the compressed model is smaller than the dense one
    assert first["summary"]["params_compressed"] < first["summary"]["params_dense"]
    # rerunning the finished run answers from its report, without loading a model or training (in-process:
    # this answer needs no JAX, so the test process's own settings do not matter)
    from jaxsparse.__main__ import main

    capsys.readouterr()
    assert main(_command(resumed_dir)[3:]) == 0
    again = capsys.readouterr()
    assert "resuming" not in again.err and "compressing" not in again.err
    assert again.out == rerun.stdout
    assert again.out.splitlines()[-1].startswith("digits-cnn: params -")


def test_bad_argument_is_named():
    result = subprocess.run([sys.executable, "-m", "jaxsparse", "compress", "--model", "digits-cnn", "--num-basis", "12"],
                            cwd=repo_root(), env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "--num-basis" in result.stderr and "12" in result.stderr


@pytest.mark.slow
def test_load_compressed_rebuilds_the_model_the_run_ended_with(tmp_path):
    import jax
    from flax import nnx

    from jaxsparse.models import evaluate_accuracy
    from jaxsparse.penni.count import describe_layers, summarize
    from jaxsparse.penni.digits import load_digits_rgb
    from jaxsparse.penni.pipeline import CompressConfig, Dataset, compress, finished_report, load_compressed

    xtr, ytr, xte, yte = load_digits_rgb()
    data = Dataset(xtr[:256], ytr[:256], xte[:200], yte[:200], "digits")
    config = CompressConfig(model="digits-cnn", pretrain_epochs=1, retrain_epochs=1, finetune_epochs=1, alternate_every=0,
                            batch_size=64, augment_pad=1, prune_std=1.2, channel_sparsity=0.25)
    report = compress(config, data, tmp_path / "run", progress=False, log=lambda message: None)
    # rebuilt from the checkpoints alone: the fine-tuned state, then shrink and quantization replayed
    shrunk = load_compressed(tmp_path / "run")
    assert evaluate_accuracy(shrunk, xte[:200], yte[:200]).accuracy == report["summary"]["top1_compressed"]
    assert summarize(describe_layers(shrunk, input_shape=(1, 8, 8, 3)))["params"] == report["summary"]["params_compressed"]
    unshrunk = load_compressed(tmp_path / "run", shrunk=False)  # dead channels kept (as zeros)

    def size(model):
        return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))

    assert size(shrunk) < size(unshrunk)

    # a rerun of the finished run is answered from its run folder's record; other settings are refused, named
    counts = dict(weights=None, data_name="digits", train=256, test=200)
    assert finished_report(tmp_path / "run", config, **counts)["summary"] == report["summary"]
    assert finished_report(tmp_path / "run", config, **{**counts, "train": None}) is None  # counts unknown: no answer
    with pytest.raises(ValueError, match=r"^out: run folder .* other settings: test: expected 200, got 100; "):
        finished_report(tmp_path / "run", config, **{**counts, "test": 100})
