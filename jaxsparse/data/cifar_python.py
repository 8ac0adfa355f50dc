"""The official CIFAR-10 "python version" download (``cifar-10-batches-py``).

Obtain it with::

    curl -O https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
    tar xzf cifar-10-python.tar.gz      # creates cifar-10-batches-py/

The folder holds pickles ``data_batch_1`` ... ``data_batch_5`` (train, 10,000 images
each), ``test_batch`` and ``batches.meta``. Each batch is a dict with ``b"data"``, a
``(10000, 3072)`` uint8 array of channel-major rows (1024 red, 1024 green, 1024 blue
values, row by row), and ``b"labels"``, a list of ints. Arrays are returned NHWC, in
the same form as :func:`jaxsparse.data.load_image_folder`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
from runkit import MissingFileError, UsageError
from jaxsparse.userfiles import CIFAR10_PYTHON_URL

#: URL of the official download.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


class CifarSplits(NamedTuple):
    """Train and test splits, each ``(images uint8 (N, 32, 32, 3), labels int32 (N,))``."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    class_names: list[str]


def is_cifar10_python_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like ``cifar-10-batches-py`` (has ``test_batch`` or ``data_batch_1``)."""
    path = Path(path)
    return (path / TEST_BATCH).is_file() or (path / TRAIN_BATCHES[0]).is_file()


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise MissingFileError(f"CIFAR-10 batch {str(path)!r} is missing (download {CIFAR10_PYTHON_URL} and unpack it)")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int32)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise UsageError(f"CIFAR-10 batch {str(path)!r}: not a CIFAR-10 python pickle ({type(error).__name__}: {error})") from error
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise UsageError(
            f"CIFAR-10 batch {str(path)!r}: expected data of shape (N, 3072) and N labels, "
            f"got data {data.shape} and labels {labels.shape}"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _class_names(root: Path) -> list[str]:
    meta = root / "batches.meta"
    if meta.is_file():
        with open(meta, "rb") as f:
            names = pickle.load(f, encoding="bytes").get(b"label_names")
        if names:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return list(CIFAR10_CLASSES)


def load_cifar10_python_split(root: str | os.PathLike, split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One split, ``"train"`` or ``"test"``: ``(images uint8 (N,32,32,3), labels int32 (N,), class_names)``."""
    if split not in ("train", "test"):
        raise UsageError(f"split: expected one of ['train', 'test'], got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"CIFAR-10 folder {str(root)!r} does not exist (download {CIFAR10_PYTHON_URL} and unpack it)")
    names = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
    parts = [_read_batch(root / name) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, _class_names(root)


def load_cifar10_python(root: str | os.PathLike) -> CifarSplits:
    """Load ``cifar-10-batches-py``: train (data_batch_1..5, in order) and test (test_batch).

    Example:
        >>> splits = load_cifar10_python("cifar-10-batches-py")  # doctest: +SKIP
        >>> splits.train[0].shape, splits.test[1].dtype  # doctest: +SKIP
        ((50000, 32, 32, 3), dtype('int32'))
    """
    train_images, train_labels, class_names = load_cifar10_python_split(root, "train")
    test_images, test_labels, _ = load_cifar10_python_split(root, "test")
    return CifarSplits((train_images, train_labels), (test_images, test_labels), class_names)
