"""Data: image folders (cached decode), the CIFAR-10 python download, augmentation, batching.

Example:
    >>> from jaxsparse.data import load_split, normalize, augment, batches  # doctest: +SKIP
    >>> images, labels, classes = load_split("../shared/data/cifar10-jpeg", "train")  # doctest: +SKIP
    >>> for x, y in batches(images, labels, 128, seed=0, epochs=2):  # doctest: +SKIP
    ...     x = normalize(augment(key, x))
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxsparse.data.batching import batches, epoch_order, num_batches
from jaxsparse.data.cifar_python import (
    CIFAR10_CLASSES,
    CIFAR10_PYTHON_URL,
    CifarSplits,
    is_cifar10_python_dir,
    load_cifar10_python,
    load_cifar10_python_split,
)
from jaxsparse.data.image_folder import (
    CACHE_ENV,
    IMAGE_EXTENSIONS,
    cache_path,
    decode_image,
    default_cache_dir,
    folder_fingerprint,
    list_image_folder,
    load_image_folder,
)
from jaxsparse.data.transforms import CIFAR_MEAN, CIFAR_STD, CropFlip, apply_crop_flip, augment, normalize, sample_crop_flip
from runkit import MissingFileError, UsageError


def load_split(
    path: str | os.PathLike,
    split: str = "test",
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Load one split from any supported layout: ``(images uint8, labels int32, class_names)``.

    ``path`` may be

    * a ``cifar-10-batches-py`` folder (or the folder it was unpacked in);
    * a folder holding ``<split>/<class>/<image>`` (e.g. ``cifar10-jpeg``);
    * an image folder ``<class>/<image>`` itself (``split`` is then not used).
    """
    if split not in ("train", "test"):
        raise UsageError(f"split: expected one of ['train', 'test'], got {split!r}")
    path = Path(path)
    if not path.is_dir():
        raise MissingFileError(f"data {str(path)!r} does not exist or is not a folder")
    for candidate in (path, path / "cifar-10-batches-py"):
        if is_cifar10_python_dir(candidate):
            return load_cifar10_python_split(candidate, split)
    if (path / split).is_dir():
        folder = path / split
    elif any((path / other).is_dir() for other in ("train", "test")):
        present = [s for s in ("train", "test") if (path / s).is_dir()]
        raise MissingFileError(f"split: expected a {split!r} sub-folder in {str(path)!r}, found only {present}")
    else:
        folder = path
    return load_image_folder(folder, cache_dir=cache_dir, progress=progress)


def load_split_subset(
    path: str | os.PathLike,
    split: str,
    subset: int | None,
    *,
    seed: int,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """One split as ``(images, labels)``; with ``subset`` only that many images, a seeded choice.

    From an image folder only the chosen files are decoded (fast for small subsets);
    other layouts are loaded whole and then subsampled. The choice depends on ``seed`` and
    the split (train and test draw from different streams) and keeps the files' order.

    Example:
        >>> x, y = load_split_subset("../shared/data/cifar10-jpeg", "test", 100, seed=0)  # doctest: +SKIP
        >>> x.shape, y.shape  # doctest: +SKIP
        ((100, 32, 32, 3), (100,))
    """
    path = Path(path)
    rng = np.random.default_rng((seed, 1 if split == "train" else 2))
    folder = path / split if (path / split).is_dir() else None
    if subset is not None and folder is not None:
        files, labels, _ = list_image_folder(folder)
        if subset < len(files):
            pick = np.sort(rng.permutation(len(files))[:subset])
            return np.stack([decode_image(files[i]) for i in pick]), labels[pick]
    images, labels, _ = load_split(path, split, cache_dir=cache_dir, progress=progress)
    if subset is not None and subset < len(images):
        pick = np.sort(rng.permutation(len(images))[:subset])
        images, labels = images[pick], labels[pick]
    return images, labels


__all__ = [
    "CACHE_ENV",
    "CIFAR10_CLASSES",
    "CIFAR10_PYTHON_URL",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CifarSplits",
    "CropFlip",
    "IMAGE_EXTENSIONS",
    "apply_crop_flip",
    "augment",
    "batches",
    "cache_path",
    "decode_image",
    "default_cache_dir",
    "epoch_order",
    "folder_fingerprint",
    "is_cifar10_python_dir",
    "list_image_folder",
    "load_cifar10_python",
    "load_cifar10_python_split",
    "load_image_folder",
    "load_split",
    "load_split_subset",
    "normalize",
    "num_batches",
    "sample_crop_flip",
]
