"""``python -m jaxsparse compress``: the whole PENNI pipeline, resumable, with a JSON report and a PNG figure.

Every field of :class:`~jaxsparse.compress_settings.CompressRun` (the pipeline's
:class:`~jaxsparse.compress_settings.CompressConfig` and the image subsets) is an option;
``--preset quick|digits|full`` picks one of :data:`~jaxsparse.compress_settings.PRESETS` (default:
``quick``, or ``digits`` with ``--model digits-cnn``) and the options given override it.

Examples::

    # quick demonstration (a few minutes on 2 CPU cores): pretrained ResNet-20 on a CIFAR-10 subset
    python -m jaxsparse compress

    # a small CNN on scikit-learn's 8x8 digits (no data needed)
    python -m jaxsparse compress --model digits-cnn

    # the paper's CIFAR recipe (100 retraining + 30 fine-tuning epochs, all 50,000 images)
    python -m jaxsparse compress --model resnet56 --preset full

    # anything in between
    python -m jaxsparse compress --model resnet56 --retrain-epochs 4 --finetune-epochs 2 --train-subset 10000

Rerunning the same command resumes after the last finished stage or epoch (Ctrl-C is
safe). Outputs in ``--out`` (default ``runs/compress/<model>-<preset>``): ``report.json`` (stages,
per-layer description under ``"layers"``), ``report.png``, ``quantized.npz``, checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runkit import UsageError
from runkit.cli import add_common_options, check_common_options, default_out
from runkit.config_cli import ConfigOptions
from jaxsparse.compress_settings import PIPELINE_MODELS, PRESETS, CompressRun
from jaxsparse.userfiles import PRETRAINED_NAMES, check_data_folder, check_weights_file, resolve_data, resolve_weights

DESCRIPTION = "Compress a CNN with PENNI (decompose, retrain, prune, fine-tune, shrink, quantize, count); resumable."
DIGITS = "digits-cnn"


def _default_preset(args: argparse.Namespace) -> str:
    return "digits" if getattr(args, "model", None) == DIGITS else "quick"


def options() -> ConfigOptions:
    """The generated options of :class:`~jaxsparse.compress_settings.CompressRun` with its presets."""
    return ConfigOptions(CompressRun, PRESETS, default_preset=_default_preset, choices={"model": PIPELINE_MODELS})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options().add_arguments(parser)
    parser.add_argument("--weights", type=Path, help="PyTorch-layout .npz of the dense model (default: the shared pretrained ResNet)")
    parser.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $JAXSPARSE_CACHE or ~/.cache/jaxsparse)")
    add_common_options(parser, out_default="runs/compress/<model>-<preset>", data_help=(
        "CIFAR-10 image folder or cifar-10-batches-py (default: $JAXSPARSE_CIFAR10, else <shared>/data/cifar10-jpeg); "
        f"not used by --model {DIGITS}, which trains on scikit-learn's digits"))


def _check_files(args: argparse.Namespace, model: str, pretrain_epochs: int) -> tuple[Path | None, Path | None]:
    """The CIFAR folder and the weights file, checked before any data is read (``None`` for the digits)."""
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise UsageError(f"--cache-dir: expected a folder, got the file {str(args.cache_dir)!r}")
    if model == DIGITS:
        for name in ("data", "weights"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name}: not used by --model {DIGITS} (it trains on scikit-learn's digits from scratch), "
                                 f"got {str(getattr(args, name))!r}")  # fmt: skip
        return None, None
    data_path = check_data_folder(resolve_data(args.data, args.shared))
    if args.weights is None and model not in PRETRAINED_NAMES:
        if pretrain_epochs == 0:
            raise UsageError(f"--weights: no pretrained weights ship for {model!r}; pass --weights PATH or --pretrain-epochs N")
        return data_path, None
    return data_path, check_weights_file(resolve_weights(model, args.weights, args.shared), model)


def run(args: argparse.Namespace) -> int:
    check_common_options(args)
    opts = options()
    job = opts.build(args)
    config = job.config
    data_path, weights = _check_files(args, config.model, config.pretrain_epochs)

    from jaxsparse.data import load_split_subset
    from jaxsparse.penni.digits import load_digits_rgb
    from jaxsparse.penni.pipeline import Dataset, compress, finished_report

    if data_path is None:  # small and bundled: loaded at once, so its image counts are known
        data_name = "sklearn-digits-8x8"
        xtr, ytr, xte, yte = load_digits_rgb(seed=config.seed)
        if job.train_subset is not None:
            xtr, ytr = xtr[: job.train_subset], ytr[: job.train_subset]
        if job.test_subset is not None:
            xte, yte = xte[: job.test_subset], yte[: job.test_subset]
        digits_data = Dataset(xtr, ytr, xte, yte, data_name)
        counts = len(xtr), len(xte)
        load_data = lambda: digits_data  # noqa: E731
    else:
        data_name = f"cifar10:{Path(data_path).name}"

        def load_data():
            kwargs = dict(seed=config.seed, cache_dir=args.cache_dir, progress=args.progress)
            xtr, ytr = load_split_subset(data_path, "train", job.train_subset, **kwargs)
            xte, yte = load_split_subset(data_path, "test", job.test_subset, **kwargs)
            return Dataset(xtr, ytr, xte, yte, data_name)

        counts = job.train_subset, job.test_subset  # the subsets' sizes (None: unknown until listed)

    out = args.out if args.out is not None else default_out("compress", f"{config.model}-{opts.preset_name(args)}")
    report = finished_report(out, config, weights=str(weights) if weights else None, data_name=data_name,
                             train=counts[0], test=counts[1])  # fmt: skip
    if report is None:
        data = load_data()
        print(f"compressing {config.model} on {data.name} ({len(data.train_images)} train / {len(data.test_images)} test images) -> {out}",
              file=sys.stderr)
        report = compress(config, data, out, weights=str(weights) if weights else None, progress=args.progress,
                          log=lambda m: print(m, file=sys.stderr))
    print_summary(report, out)
    return 0


def print_summary(report: dict, out: Path) -> None:
    """The per-stage table, where the outputs are, and one closing sentence."""
    s = report["summary"]
    print(f"{'stage':<10} {'top-1':>7} {'params':>11} {'MACs':>13}")
    for r in report["stages"]:
        print(f"{r['stage']:<10} {100 * r['top1']:6.2f}% {r['params']:>11,} {r['macs']:>13,}")
    print(f"figure: {out / 'report.png'}, integer tensors: {out / 'quantized.npz'}, per-layer record: {out / 'report.json'}")
    dense, compressed = 100 * s["top1_dense"], 100 * s["top1_compressed"]
    print(f"{report['config']['model']}: params -{100 * s['param_reduction']:.0f}%, MACs -{100 * s['mac_reduction']:.0f}%, "
          f"top-1 {dense:.1f}% -> {compressed:.1f}% ({compressed - dense:+.1f} points, {report['data']['test']} test images); "
          f"report in {out}/")
