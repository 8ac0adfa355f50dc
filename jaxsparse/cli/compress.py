"""``python -m jaxsparse compress``: the whole PENNI pipeline, resumable, with a JSON report and a PNG figure.

Examples::

    # quick demonstration (a few minutes on 2 CPU cores): pretrained ResNet-20 on a
    # CIFAR-10 subset when the shared folder is found, else scikit-learn's 8x8 digits
    python -m jaxsparse compress

    # the paper's CIFAR recipe (100 retraining + 30 fine-tuning epochs, all 50,000 images)
    python -m jaxsparse compress --model resnet56 --full

    # anything in between
    python -m jaxsparse compress --model resnet56 --retrain-epochs 4 --finetune-epochs 2 --train-subset 10000

Rerunning the same command resumes after the last finished stage or epoch (Ctrl-C is
safe). Outputs in ``--out`` (default ``runs/compress-<model>``): ``report.json`` (stages,
per-layer description under ``"layers"``), ``report.png``, ``quantized.npz``, checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from runkit import check_positive, find_shared_root
from jaxsparse.data import decode_image, list_image_folder, load_split

DESCRIPTION = "Compress a CNN with PENNI (decompose, retrain, prune, fine-tune, shrink, quantize, count); resumable."

#: Settings of the quick default run and of ``--full`` (the paper's recipe); flags override both.
#: The quick CIFAR run is the CPU schedule: pruning ramped while retraining and distillation from the dense model
#: (short schedules cannot recover from the paper's one-shot prune); ``--full`` is the paper's recipe.
QUICK_CIFAR = dict(retrain_epochs=3, finetune_epochs=1, alternate_every=0, train_subset=4096, test_subset=2000, batch_size=64,
                   gradual_prune=0.67, distill=0.7)
QUICK_DIGITS = dict(retrain_epochs=6, finetune_epochs=3, alternate_every=2, pretrain_epochs=15, batch_size=64,
                    gradual_prune=0.0, distill=0.0)
FULL_RECIPE = dict(retrain_epochs=100, finetune_epochs=30, alternate_every=2, train_subset=None, test_subset=None, batch_size=128,
                   gradual_prune=0.0, distill=0.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxsparse.penni.pipeline import PIPELINE_MODELS

    parser.add_argument("--model", default="auto", choices=("auto",) + PIPELINE_MODELS,
                        help="architecture; 'auto' = resnet20 with the shared data, else digits-cnn (default: %(default)s)")
    parser.add_argument("--weights", type=Path, help="PyTorch-layout .npz of the dense model (default: the shared pretrained ResNet)")
    parser.add_argument("--data", type=Path, help="CIFAR-10 image folder or cifar-10-batches-py (default: <shared>/data/cifar10-jpeg)")
    parser.add_argument("--shared", type=Path, help="shared data/model folder (default: $JAXSPARSE_SHARED or ../shared)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/compress-<model>)")
    parser.add_argument("--full", action="store_true", help="the paper's recipe: 100 + 30 epochs on all training images (a GPU job)")
    parser.add_argument("--basis", type=int, default=5, help="basis kernels per 3x3 layer (default: %(default)s)")
    parser.add_argument("--centered", action="store_true", help="PCA basis of mean-removed kernels instead of SVD of the raw kernels")
    parser.add_argument("--l1", type=float, default=1e-4, help="L1 weight on coefficients while retraining (default: %(default)s)")
    parser.add_argument("--retrain-epochs", type=int, help="retraining epochs (quick: 3 CIFAR / 6 digits; --full: 100)")
    parser.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (quick: 1 CIFAR / 3 digits; --full: 30)")
    parser.add_argument("--pretrain-epochs", type=int, help="epochs to train the dense model from scratch (digits: 15; CIFAR: 0)")
    parser.add_argument("--alternate-every", type=int, help="epochs per basis/coefficient phase, 0 = joint (default 2; quick CIFAR 0)")
    parser.add_argument("--prune-std", type=float, default=1.0, help="prune |c| < s * std(c) per layer (default: %(default)s)")
    parser.add_argument("--gradual-prune", type=float,
                        help="prune while retraining, the threshold rising over this fraction of its steps (0 = once, after; "
                             "quick CIFAR: 0.67; digits and --full: 0)")
    parser.add_argument("--channel-sparsity", type=float, default=0.0,
                        help="also remove this fraction of the output channels of each block's first conv, by coefficient norm "
                             "(0 = off, as the paper; default: %(default)s)")
    parser.add_argument("--distill", type=float,
                        help="weight of distillation from the dense model's softened logits while retraining and "
                             "fine-tuning (0 = off, as the paper; quick CIFAR: 0.7; digits and --full: 0)")
    parser.add_argument("--distill-temperature", type=float, default=4.0,
                        help="softmax temperature of the distillation term (default: %(default)s)")
    parser.add_argument("--coef-bits", type=int, default=4, help="coefficient bits, 0 = float (default: %(default)s)")
    parser.add_argument("--basis-bits", type=int, default=8, help="basis bits, 0 = float (default: %(default)s)")
    parser.add_argument("--per-channel", action="store_true", help="one coefficient scale per output channel")
    parser.add_argument("--no-qat", action="store_true", help="quantize after fine-tuning instead of fine-tuning with fake-quant")
    parser.add_argument("--batch-size", type=int, help="training batch (quick: 64; --full: 128)")
    parser.add_argument("--lr", type=float, default=0.01, help="retraining learning rate (default: %(default)s)")
    parser.add_argument("--finetune-lr", type=float, default=0.01, help="fine-tuning learning rate (default: %(default)s)")
    parser.add_argument("--train-subset", type=int, help="use N training images (quick CIFAR: 4096; --full: all)")
    parser.add_argument("--test-subset", type=int, help="evaluate on N test images (quick CIFAR: 2000; --full: all)")
    parser.add_argument("--seed", type=int, default=0, help="data order, augmentation, subsets (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $JAXSPARSE_CACHE or ~/.cache/jaxsparse)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def load_cifar(path: Path, split: str, subset: int | None, *, seed: int, cache_dir: Path | None, progress: bool):
    """A split of CIFAR-10; with ``subset`` only that many images (a seeded choice), decoding only those files."""
    folder = path / split if (path / split).is_dir() else None
    if subset is not None and folder is not None:
        files, labels, _ = list_image_folder(folder)
        if subset < len(files):
            pick = np.sort(np.random.default_rng((seed, 1 if split == "train" else 2)).permutation(len(files))[:subset])
            return np.stack([decode_image(files[i]) for i in pick]), labels[pick]
    images, labels, _ = load_split(path, split, cache_dir=cache_dir, progress=progress)
    if subset is not None and subset < len(images):
        pick = np.sort(np.random.default_rng((seed, 1 if split == "train" else 2)).permutation(len(images))[:subset])
        images, labels = images[pick], labels[pick]
    return images, labels


def run(args: argparse.Namespace) -> int:
    from jaxsparse.cli.evaluate import resolve_data, resolve_weights
    from jaxsparse.penni.digits import load_digits_rgb
    from jaxsparse.penni.pipeline import CompressConfig, Dataset, compress, finished_report

    model = args.model
    data_path = None
    if model == "auto":
        try:
            data_path = resolve_data(args.data, args.shared)
            model = "resnet20"
        except FileNotFoundError:
            model = "digits-cnn"
            print("no CIFAR-10 data found: compressing a small CNN on scikit-learn's 8x8 digits instead", file=sys.stderr)
    digits = model == "digits-cnn"
    preset = dict(FULL_RECIPE if args.full else (QUICK_DIGITS if digits else QUICK_CIFAR))
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else preset.get(name)  # noqa: E731
    for name in ("retrain_epochs", "finetune_epochs", "pretrain_epochs", "alternate_every", "train_subset", "test_subset", "batch_size",
                 "gradual_prune", "distill"):
        value = pick(name)
        if value is not None:
            check_positive(f"--{name.replace('_', '-')}", value, allow_zero=name not in ("batch_size", "train_subset", "test_subset"))

    if digits:  # small and bundled: loaded at once, so its image counts are known
        weights, data_name = None, "sklearn-digits-8x8"
        xtr, ytr, xte, yte = load_digits_rgb(seed=args.seed)
        subset = pick("train_subset")
        if subset is not None:
            xtr, ytr = xtr[:subset], ytr[:subset]
        digits_data = Dataset(xtr, ytr, xte, yte, data_name)
        counts = len(xtr), len(xte)
        load_data = lambda: digits_data  # noqa: E731
    else:
        data_path = data_path or resolve_data(args.data, args.shared)
        weights = resolve_weights(model, args.weights, args.shared) if (args.weights or model != "vgg16") else None
        data_name = f"cifar10:{Path(data_path).name}"

        def load_data():
            progress = not args.no_progress
            xtr, ytr = load_cifar(data_path, "train", pick("train_subset"), seed=args.seed, cache_dir=args.cache_dir, progress=progress)
            xte, yte = load_cifar(data_path, "test", pick("test_subset"), seed=args.seed, cache_dir=args.cache_dir, progress=progress)
            return Dataset(xtr, ytr, xte, yte, data_name)

        counts = pick("train_subset"), pick("test_subset")  # the subsets' sizes (None: unknown until listed)

    config = CompressConfig(
        model=model, num_basis=args.basis, centered=args.centered, l1=args.l1,
        retrain_epochs=pick("retrain_epochs"), finetune_epochs=pick("finetune_epochs"),
        pretrain_epochs=pick("pretrain_epochs") if pick("pretrain_epochs") is not None else (0 if weights is not None else 30),
        alternate_every=pick("alternate_every"), prune_std=args.prune_std, gradual_prune=pick("gradual_prune"),
        channel_sparsity=args.channel_sparsity, distill=pick("distill"), distill_temperature=args.distill_temperature,
        coef_bits=args.coef_bits,
        basis_bits=args.basis_bits, per_channel=args.per_channel, qat=not args.no_qat, batch_size=pick("batch_size"),
        learning_rate=args.lr, finetune_learning_rate=args.finetune_lr, augment_pad=1 if digits else 4, seed=args.seed,
    )
    out = args.out if args.out is not None else Path("runs") / f"compress-{model}"
    report = finished_report(out, config, weights=str(weights) if weights else None, data_name=data_name,
                             train=counts[0], test=counts[1])  # fmt: skip
    if report is None:
        data = load_data()
        print(f"compressing {model} on {data.name} ({len(data.train_images)} train / {len(data.test_images)} test images) -> {out}",
              file=sys.stderr)
        report = compress(config, data, out, weights=str(weights) if weights else None, progress=not args.no_progress,
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
