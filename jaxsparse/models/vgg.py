"""CIFAR VGG-16 with BatchNorm (Simonyan & Zisserman 2015, CIFAR variant).

The layout of the common CIFAR code (e.g. kuangliu/pytorch-cifar, which PENNI's
VGG-16 experiments follow): thirteen 3x3 conv -> BatchNorm -> ReLU units in five
groups, each group closed by a 2x2 max-pool, then a single ``Linear(512, num_classes)``.
With 32x32 inputs the five pools leave a 1x1x512 map, so no extra pooling is needed.

Convolutions have no bias: a bias right before BatchNorm is cancelled by the mean
subtraction, so it only adds parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from runkit import check_positive
from jaxsparse.models.resnet import _kaiming_normal, batch_norm, conv3x3

#: Output channels of each conv, "M" = 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class ConvBN(nnx.Module):
    """One VGG unit: 3x3 conv (no bias) -> BatchNorm -> ReLU, optionally followed by a 2x2 max-pool.

    Attributes:
      conv, bn: the layers.
      in_planes, planes: input/output channels.
      pool_after: True when a 2x2 max-pool (stride 2) follows the ReLU.
    """

    def __init__(self, in_planes: int, planes: int, pool_after: bool, *, rngs: nnx.Rngs):
        self.in_planes = in_planes
        self.planes = planes
        self.pool_after = pool_after
        self.conv = conv3x3(in_planes, planes, 1, rngs=rngs)
        self.bn = batch_norm(planes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn(self.conv(x)))
        if self.pool_after:
            out = nnx.max_pool(out, window_shape=(2, 2), strides=(2, 2))
        return out


class VGG16(nnx.Module):
    """CIFAR VGG-16 with BatchNorm, NHWC input ``(N, 32, 32, 3)``; random initialisation.

    Attributes:
      features: ``nnx.List`` of 13 :class:`ConvBN` units in :data:`VGG16_CFG` order
        (``pool_after`` marks the units followed by a max-pool).
      classifier: ``nnx.Linear(512, num_classes)``.

    Example:
        >>> from flax import nnx
        >>> model = VGG16(rngs=nnx.Rngs(0))
        >>> len(model.features), model.classifier.in_features
        (13, 512)
    """

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs):
        check_positive("num_classes", num_classes)
        self.num_classes = num_classes
        units = []
        in_planes = 3
        for i, entry in enumerate(VGG16_CFG):
            if entry == "M":
                continue
            pool_after = i + 1 < len(VGG16_CFG) and VGG16_CFG[i + 1] == "M"
            units.append(ConvBN(in_planes, int(entry), pool_after, rngs=rngs))
            in_planes = int(entry)
        self.features = nnx.List(units)
        self.classifier = nnx.Linear(in_planes, num_classes, kernel_init=_kaiming_normal, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = x
        for unit in self.features:
            out = unit(out)
        return self.classifier(jnp.reshape(out, (out.shape[0], -1)))
