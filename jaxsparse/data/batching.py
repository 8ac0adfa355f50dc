"""Deterministic, seedable mini-batches over epochs.

Epoch ``e`` of a run with seed ``s`` always visits the examples in the same order
(a permutation drawn from ``numpy.random.default_rng((s, e))``), so a resumed run
(``start_epoch``) sees exactly the batches it would have seen without interruption.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from runkit import UsageError, check_positive


def num_batches(num_examples: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches per epoch: ``floor`` with ``drop_last``, else ``ceil`` of ``num_examples / batch_size``."""
    check_positive("batch_size", batch_size)
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)


def epoch_order(num_examples: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Indices of epoch ``epoch`` in visiting order (``arange`` when not shuffling)."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng((int(seed), int(epoch))).permutation(num_examples)


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    epochs: int | None = 1,
    start_epoch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` batches, epoch after epoch.

    Args:
      images, labels: arrays with the same leading size ``N``.
      batch_size: examples per batch (the last one of an epoch may be smaller unless ``drop_last``).
      seed: fixes every epoch's order.
      shuffle: permute each epoch (False: dataset order).
      drop_last: skip each epoch's final incomplete batch.
      epochs: number of epochs (``None``: forever).
      start_epoch: first epoch index (to resume a run).

    Example:
        >>> x, y = np.arange(10), np.arange(10)
        >>> [b[1].tolist() for b in batches(x, y, 4, shuffle=False)]
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """
    check_positive("batch_size", batch_size)
    if len(images) != len(labels):
        raise UsageError(f"labels: expected {len(images)} labels (one per image), got {len(labels)}")
    if epochs is not None:
        check_positive("epochs", epochs, allow_zero=True)
    n = len(images)
    stop = n - n % batch_size if drop_last else n
    epoch = start_epoch
    while epochs is None or epoch < start_epoch + epochs:
        order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield images[index], labels[index]
        epoch += 1
