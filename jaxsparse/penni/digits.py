"""A real data set that ships with scikit-learn, and a small CNN for it.

Used when no CIFAR-10 copy is at hand, so ``python -m jaxsparse compress`` shows the whole
pipeline on any machine: the UCI optical-recognition digits (1,797 images, 8x8, 17 grey
levels, 10 classes), as uint8 RGB ``(N, 8, 8, 3)`` images in the same form as the CIFAR
loaders give.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from runkit import UsageError, check_positive
from jaxsparse.models import ConvBN


def load_digits_rgb(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8x8 digits as ``(train_images, train_labels, test_images, test_labels)``.

    Grey levels 0..16 are scaled to 0..255 and replicated to three channels; the split is a
    seeded random permutation.

    Example:
        >>> xtr, ytr, xte, yte = load_digits_rgb()
        >>> xtr.shape, xtr.dtype, len(xte)
        ((1438, 8, 8, 3), dtype('uint8'), 359)
    """
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"test_fraction: expected a value in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(images))
    num_test = int(round(test_fraction * len(images)))
    test, train = order[:num_test], order[num_test:]
    return images[train], labels[train], images[test], labels[test]


class DigitsCNN(nnx.Module):
    """Three conv/BN/ReLU/max-pool units (8x8 -> 1x1) and a linear classifier; a VGG in miniature.

    Same structure as :class:`~jaxsparse.models.VGG16` (``features`` of ``ConvBN`` units,
    ``classifier``), so every compression stage treats it the same way.

    Example:
        >>> model = DigitsCNN(rngs=nnx.Rngs(0))
        >>> model(jnp.zeros((2, 8, 8, 3))).shape
        (2, 10)
    """

    def __init__(self, widths=(16, 32, 32), num_classes: int = 10, *, rngs: nnx.Rngs):
        check_positive("num_classes", num_classes)
        units, in_planes = [], 3
        for width in widths:
            units.append(ConvBN(in_planes, int(width), True, rngs=rngs))
            in_planes = int(width)
        self.features = nnx.List(units)
        self.classifier = nnx.Linear(in_planes, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = x
        for unit in self.features:
            out = unit(out)
        return self.classifier(jnp.reshape(out, (out.shape[0], -1)))
