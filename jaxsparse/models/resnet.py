"""The CIFAR ResNet of He et al. (2016), depths 6n+2, with "option A" shortcuts.

Layout follows the widely used PyTorch reference (akamaster/pytorch_resnet_cifar10),
so its pretrained checkpoints load exactly (see :mod:`jaxsparse.models.pytorch_io`):

* ``conv1`` 3x3, 3->16, stride 1, no bias; ``bn1``; ReLU;
* ``layer1``, ``layer2``, ``layer3``: ``n`` :class:`BasicBlock` each, 16/32/64
  channels; the first block of ``layer2`` and ``layer3`` has stride 2;
* global average pool, ``linear`` 64->``num_classes`` (with bias).

Tensors are NHWC. Convolutions use an explicit zero padding of 1 on every side,
as PyTorch does (``"SAME"`` padding would pad stride-2 convolutions asymmetrically).
BatchNorm uses eps 1e-5 and ``momentum=0.9`` (flax's convention for PyTorch's 0.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from runkit import UsageError, check_choice, check_positive
from jaxsparse.userfiles import RESNET_DEPTHS  # depth of each ready-made CIFAR ResNet (6n+2, n blocks per stage)

BN_EPSILON = 1e-5
#: Running-statistics decay in flax's convention: ``new = m * old + (1 - m) * batch``
#: (PyTorch's ``momentum=0.1``).
BN_MOMENTUM = 0.9

# PyTorch reference initialisation (kaiming_normal_, fan_in, gain sqrt(2)).
_kaiming_normal = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def conv3x3(in_planes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
    """3x3 convolution, zero padding 1 on every side, no bias; kernel layout HWIO."""
    return nnx.Conv(
        in_planes,
        planes,
        kernel_size=(3, 3),
        strides=(stride, stride),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=_kaiming_normal,
        rngs=rngs,
    )


def batch_norm(planes: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults (eps 1e-5, momentum 0.1 in PyTorch's convention)."""
    return nnx.BatchNorm(planes, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, rngs=rngs)


def option_a_shortcut(x: jax.Array, pad: int) -> jax.Array:
    """Parameter-free shortcut used when a block halves resolution and doubles width.

    Takes every second pixel in H and W and zero-pads the channel axis by ``pad`` on
    each side: ``(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C + 2 * pad)``.

    Example:
        >>> option_a_shortcut(jnp.ones((1, 4, 4, 2)), 1).shape
        (1, 2, 2, 4)
    """
    return jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))


class BasicBlock(nnx.Module):
    """conv3x3(stride) -> bn -> relu -> conv3x3 -> bn, plus shortcut, then relu.

    Attributes:
      conv1, bn1, conv2, bn2: the layers.
      stride: stride of ``conv1`` (1 or 2).
      in_planes, planes: input and output channels.
      option_a_shortcut: True when the shortcut subsamples and zero-pads channels
        (stride != 1 or in_planes != planes); False for the identity shortcut.
      shortcut_pad: channels padded on each side by the option-A shortcut (0 if unused).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.in_planes = in_planes
        self.planes = planes
        self.stride = stride
        self.conv1 = conv3x3(in_planes, planes, stride, rngs=rngs)
        self.bn1 = batch_norm(planes, rngs=rngs)
        self.conv2 = conv3x3(planes, planes, 1, rngs=rngs)
        self.bn2 = batch_norm(planes, rngs=rngs)
        self.option_a_shortcut = stride != 1 or in_planes != planes
        if self.option_a_shortcut and (stride != 2 or planes != 2 * in_planes):
            raise UsageError(
                f"option-A shortcut: expected stride 2 and planes == 2 * in_planes, got stride={stride}, "
                f"in_planes={in_planes}, planes={planes}"
            )
        self.shortcut_pad = planes // 4 if self.option_a_shortcut else 0

    def shortcut(self, x: jax.Array) -> jax.Array:
        """The residual path: identity, or option-A subsample + channel zero-pad."""
        return option_a_shortcut(x, self.shortcut_pad) if self.option_a_shortcut else x

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nnx.relu(out + self.shortcut(x))


class CifarResNet(nnx.Module):
    """CIFAR ResNet-``depth`` (depth = 6n+2), NHWC input ``(N, 32, 32, 3)`` normalised float32.

    Args:
      depth: 20, 32, 44, 56, 110, ... (any 6n+2 with n >= 1).
      num_classes: width of the classifier.
      rngs: initialisation randomness (Kaiming-normal convs and linear, as the
        PyTorch reference does; BatchNorm scale 1, bias 0).

    Call ``model.eval()`` before inference (BatchNorm uses running statistics) and
    ``model.train()`` for training (batch statistics, running averages updated).

    Example:
        >>> from flax import nnx
        >>> model = CifarResNet(20, rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> model(jnp.zeros((2, 32, 32, 3))).shape
        (2, 10)
    """

    def __init__(self, depth: int, num_classes: int = 10, *, rngs: nnx.Rngs):
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise UsageError(f"depth: expected 6n+2 with n >= 1 (e.g. {list(RESNET_DEPTHS)}), got {depth!r}")
        check_positive("num_classes", num_classes)
        self.depth = depth
        self.num_classes = num_classes
        self.blocks_per_stage = (depth - 2) // 6
        self.conv1 = conv3x3(3, 16, 1, rngs=rngs)
        self.bn1 = batch_norm(16, rngs=rngs)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(self.blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, rngs=rngs))
                in_planes = planes
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nnx.Linear(64, num_classes, kernel_init=_kaiming_normal, rngs=rngs)

    @property
    def stages(self) -> tuple[nnx.List, nnx.List, nnx.List]:
        """``(layer1, layer2, layer3)``."""
        return (self.layer1, self.layer2, self.layer3)

    def features(self, x: jax.Array) -> jax.Array:
        """Pooled 64-d features before the classifier, ``(N, 64)``."""
        out = nnx.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            for block in stage:
                out = block(out)
        return jnp.mean(out, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(self.features(x))


def resnet_depth_from_name(name: str) -> int:
    """``"resnet56" -> 56`` for the ready-made depths in :data:`RESNET_DEPTHS`."""
    check_choice("name", name, [f"resnet{d}" for d in RESNET_DEPTHS])
    return int(name.removeprefix("resnet"))
