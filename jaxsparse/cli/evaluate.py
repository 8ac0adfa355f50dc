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
import dataclasses
from pathlib import Path

from runkit import UsageError, atomic_write_json, check_positive
from runkit.cli import add_common_options, check_common_options, default_out
from runkit.config_cli import ConfigOptions
from jaxsparse.userfiles import DATA_HELP, MODEL_NAMES, check_data_folder, check_weights_file, resolve_data, resolve_weights

DESCRIPTION = "Top-1 accuracy and images/s of a CIFAR-10 model on an image folder or the CIFAR-10 python download."


@dataclasses.dataclass(frozen=True)
class EvaluateSettings:
    """What ``python -m jaxsparse evaluate`` measures (the data, shared and output folders are common options)."""

    model: str = dataclasses.field(default="resnet56", metadata={"help": "architecture", "choices": MODEL_NAMES})
    weights: Path | None = dataclasses.field(default=None, metadata={
        "help": "PyTorch-layout .npz of the model (none: the shared pretrained weights)"})
    split: str = dataclasses.field(default="test", metadata={"help": "split to evaluate", "choices": ("test", "train")})
    batch_size: int = dataclasses.field(default=500, metadata={"help": "images per step"})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "evaluate N images spread evenly over the split (none: all)"})
    cache_dir: Path | None = dataclasses.field(default=None, metadata={
        "help": "decoded-image cache (none: $JAXSPARSE_CACHE or ~/.cache/jaxsparse)"})

    def __post_init__(self):
        check_positive("batch_size", self.batch_size)
        if self.limit is not None:
            check_positive("limit", self.limit)
        if self.cache_dir is not None and self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise UsageError(f"cache_dir: expected a folder, got the file {str(self.cache_dir)!r}")


OPTIONS = ConfigOptions(EvaluateSettings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    OPTIONS.add_arguments(parser)
    add_common_options(parser, out_default="runs/evaluate/<model>; writes result.json there", data_help=DATA_HELP)


def run(args: argparse.Namespace) -> int:
    # Everything the user named is checked before JAX starts: a wrong value or file is reported at once.
    check_common_options(args)
    settings = OPTIONS.build(args)
    data_path = check_data_folder(resolve_data(args.data, args.shared), settings.split)
    weights_path = check_weights_file(resolve_weights(settings.model, settings.weights, args.shared), settings.model)
    out = args.out if args.out is not None else default_out("evaluate", settings.model)

    import jax
    import numpy as np
    from flax import nnx

    from jaxsparse.data import load_split
    from jaxsparse.models import build_model, evaluate_accuracy, load_pytorch_npz

    model = load_pytorch_npz(build_model(settings.model, rngs=nnx.Rngs(0)), weights_path)
    images, labels, class_names = load_split(data_path, settings.split, cache_dir=settings.cache_dir, progress=args.progress)
    if len(class_names) != model.num_classes:
        raise UsageError(
            f"--data: expected {model.num_classes} classes for {settings.model}, got {len(class_names)} in {str(data_path)!r}"
        )
    if settings.limit is not None and settings.limit < len(images):
        index = (np.arange(settings.limit) * len(images)) // settings.limit  # every class, in proportion
        images, labels = images[index], labels[index]

    result = evaluate_accuracy(model, images, labels, batch_size=settings.batch_size, progress=args.progress)
    device = jax.devices()[0]
    print(f"model:      {settings.model} ({weights_path})")
    print(f"data:       {data_path} [{settings.split}], {result.total} images, {len(class_names)} classes")
    print(f"top-1:      {100 * result.accuracy:.2f}% ({result.correct}/{result.total})")
    print(
        f"throughput: {result.images_per_second:.1f} images/s "
        f"(batch {result.batch_size} on {result.num_devices} {device.platform} device(s), after warm-up compilation; "
        f"{result.total / max(result.cpu_seconds, 1e-9):.1f} images per CPU-second)"
    )
    path = atomic_write_json(out / "result.json", {
        "model": settings.model, "weights": str(weights_path), "data": str(data_path), "split": settings.split,
        "platform": device.platform, **result._asdict(),
    })  # fmt: skip
    print(f"wrote {path}")
    return 0
