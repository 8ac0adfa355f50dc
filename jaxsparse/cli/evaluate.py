"""``python -m jaxsparse evaluate``: top-1 accuracy and images/s of a CIFAR-10 model.

Examples::

    # from the repository root, with the shared data/weights at ../shared
    python -m jaxsparse evaluate --model resnet56

    # the official CIFAR-10 download and a weights file of your own
    python -m jaxsparse evaluate --model resnet20 --weights resnet20.npz --data cifar-10-batches-py

Data is found from ``--data``, else ``$JAXSPARSE_CIFAR10``, else
``<shared>/data/cifar10-jpeg`` (shared folder: ``--shared``, ``$JAXSPARSE_SHARED``
or ``../shared`` beside the repository). Weights: ``--weights``, else
``<shared>/models/cifar10-resnet/<model>.npz``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from runkit import MissingFileError, SHARED_ENV, UsageError, atomic_write_json, check_positive, find_shared_root
from jaxsparse.data import CIFAR10_PYTHON_URL, load_split
from jaxsparse.models import MODEL_NAMES, PRETRAINED_NAMES, PRETRAINED_SUBDIR, build_model, evaluate_accuracy, load_pytorch_npz

DESCRIPTION = "Top-1 accuracy and images/s of a CIFAR-10 model on an image folder or the CIFAR-10 python download."

#: Environment variable naming a CIFAR-10 folder (image folder or cifar-10-batches-py).
DATA_ENV = "JAXSPARSE_CIFAR10"
SHARED_DATA_SUBDIR = Path("data") / "cifar10-jpeg"

HOW_TO_GET_CIFAR10 = f"""no CIFAR-10 data found. Either
  * download the python version: curl -O {CIFAR10_PYTHON_URL} && tar xzf cifar-10-python.tar.gz
    and pass --data cifar-10-batches-py (or set {DATA_ENV}=path/to/cifar-10-batches-py), or
  * pass --data an image folder laid out as <root>/<split>/<class>/<image> (e.g. test/airplane/0000.jpg)
    or <root>/<class>/<image> (class index = sorted folder-name order), or
  * set {SHARED_ENV} to a folder holding {SHARED_DATA_SUBDIR.as_posix()}/ and {PRETRAINED_SUBDIR.as_posix()}/.
Weights: --weights PATH (a PyTorch-layout .npz; the pretrained ResNets are {PRETRAINED_SUBDIR.as_posix()}/resnetNN.npz)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnet56", choices=MODEL_NAMES, help="architecture (default: %(default)s)")
    parser.add_argument("--weights", type=Path, help="PyTorch-layout .npz (default: the shared pretrained weights)")
    parser.add_argument(
        "--data",
        type=Path,
        help=f"image folder (<root>/<class>/<image> or <root>/<split>/...) or cifar-10-batches-py "
        f"(default: ${DATA_ENV}, else <shared>/{SHARED_DATA_SUBDIR.as_posix()})",
    )
    parser.add_argument("--split", default="test", choices=("test", "train"), help="split to evaluate (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=500, help="images per step (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="evaluate N images spread evenly over the split (default: all)")
    parser.add_argument("--shared", type=Path, help=f"shared data/model folder (default: ${SHARED_ENV} or ../shared)")
    parser.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $JAXSPARSE_CACHE or ~/.cache/jaxsparse)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def resolve_data(data: Path | None, shared: Path | None) -> Path:
    """The data location from the flag, ``$JAXSPARSE_CIFAR10`` or the shared folder."""
    for source, path in (("--data", data), (f"${DATA_ENV}", os.environ.get(DATA_ENV) or None)):
        if path is not None:
            if not Path(path).is_dir():
                raise MissingFileError(f"{source}: expected a folder, got {str(path)!r}, which does not exist.\n{HOW_TO_GET_CIFAR10}")
            return Path(path)
    root = find_shared_root(shared, required=False)
    if root is not None and (root / SHARED_DATA_SUBDIR).is_dir():
        return root / SHARED_DATA_SUBDIR
    raise MissingFileError(HOW_TO_GET_CIFAR10)


def resolve_weights(model: str, weights: Path | None, shared: Path | None) -> Path:
    """The weights file from the flag or the shared pretrained folder."""
    if weights is not None:
        if not weights.is_file():
            raise MissingFileError(f"--weights: expected a .npz file, got {str(weights)!r}, which does not exist")
        return weights
    if model not in PRETRAINED_NAMES:
        raise UsageError(f"--weights: no pretrained weights ship for {model!r} (only {list(PRETRAINED_NAMES)}); pass --weights PATH")
    root = find_shared_root(shared, required=False)
    if root is None or not (root / PRETRAINED_SUBDIR / f"{model}.npz").is_file():
        raise MissingFileError(f"no weights for {model!r} found.\n{HOW_TO_GET_CIFAR10}")
    return root / PRETRAINED_SUBDIR / f"{model}.npz"


def run(args: argparse.Namespace) -> int:
    check_positive("--batch-size", args.batch_size)
    if args.limit is not None:
        check_positive("--limit", args.limit)
    data_path = resolve_data(args.data, args.shared)
    weights_path = resolve_weights(args.model, args.weights, args.shared)

    model = load_pytorch_npz(build_model(args.model, rngs=nnx.Rngs(0)), weights_path)
    images, labels, class_names = load_split(data_path, args.split, cache_dir=args.cache_dir, progress=not args.no_progress)
    if len(class_names) != model.num_classes:
        raise UsageError(
            f"--data: expected {model.num_classes} classes for {args.model}, got {len(class_names)} in {str(data_path)!r}"
        )
    if args.limit is not None and args.limit < len(images):
        index = (np.arange(args.limit) * len(images)) // args.limit  # every class, in proportion
        images, labels = images[index], labels[index]

    result = evaluate_accuracy(model, images, labels, batch_size=args.batch_size, progress=not args.no_progress)
    device = jax.devices()[0]
    print(f"model:      {args.model} ({weights_path})")
    print(f"data:       {data_path} [{args.split}], {result.total} images, {len(class_names)} classes")
    print(f"top-1:      {100 * result.accuracy:.2f}% ({result.correct}/{result.total})")
    print(
        f"throughput: {result.images_per_second:.1f} images/s "
        f"(batch {result.batch_size} on {result.num_devices} {device.platform} device(s), after warm-up compilation; "
        f"{result.total / max(result.cpu_seconds, 1e-9):.1f} images per CPU-second)"
    )
    if args.out is not None:
        atomic_write_json(
            args.out,
            {
                "model": args.model,
                "weights": str(weights_path),
                "data": str(data_path),
                "split": args.split,
                "platform": device.platform,
                **result._asdict(),
            },
        )
    return 0

