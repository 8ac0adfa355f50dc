"""Normalisation and the standard CIFAR training augmentation, as pure JAX functions.

The augmentation is the one of the CIFAR ResNet papers and torchvision's
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``: pad each image with 4
zero (black) pixels on every side, crop a random 32x32 window, flip it left-right
with probability 1/2. Like torchvision, apply it to the uint8 pixels, then
:func:`normalize`.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from runkit import UsageError

#: Per-channel (R, G, B) mean of the [0, 1] pixels used to train the pretrained CIFAR
#: ResNets (``models/cifar10-resnet``; these are the ImageNet statistics).
CIFAR_MEAN = (0.485, 0.456, 0.406)
#: Per-channel standard deviation matching :data:`CIFAR_MEAN`.
CIFAR_STD = (0.229, 0.224, 0.225)


def normalize(images: jax.Array, mean=CIFAR_MEAN, std=CIFAR_STD) -> jax.Array:
    """uint8 pixels ``(..., 3)`` -> float32 ``(x / 255 - mean) / std`` per channel.

    Example:
        >>> import numpy as np
        >>> [round(float(v), 3) for v in normalize(np.full((1, 1, 1, 3), 255, np.uint8)).ravel()]
        [2.249, 2.429, 2.64]
    """
    images = jnp.asarray(images)
    if images.dtype != jnp.uint8:
        raise UsageError(f"images: expected dtype uint8 (raw pixels), got {images.dtype}")
    if images.ndim < 1 or images.shape[-1] != len(mean):
        raise UsageError(f"images: expected shape (..., {len(mean)}), got {tuple(images.shape)}")
    shape = (1,) * (images.ndim - 1) + (len(mean),)
    mean = jnp.reshape(jnp.asarray(mean, jnp.float32), shape)
    std = jnp.reshape(jnp.asarray(std, jnp.float32), shape)
    return (jnp.asarray(images, jnp.float32) / 255.0 - mean) / std


class CropFlip(NamedTuple):
    """Random choices of :func:`augment`: ``offsets`` int32 (N, 2) = top-left (row, col) of
    the crop in the padded image, in ``[0, 2 * pad]``; ``flips`` bool (N,)."""

    offsets: jax.Array
    flips: jax.Array


def sample_crop_flip(key: jax.Array, num_images: int, pad: int = 4) -> CropFlip:
    """Draw independent crop offsets and flips for ``num_images`` images."""
    offset_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(offset_key, (num_images, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    flips = jax.random.bernoulli(flip_key, 0.5, (num_images,))
    return CropFlip(offsets, flips)


def apply_crop_flip(images: jax.Array, params: CropFlip, pad: int = 4) -> jax.Array:
    """Zero-pad each image by ``pad``, crop at ``params.offsets``, flip where ``params.flips``."""
    height, width, channels = images.shape[1:]

    def one(image, offset, flip):
        padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        crop = jax.lax.dynamic_slice(padded, (offset[0], offset[1], jnp.zeros((), jnp.int32)), (height, width, channels))
        return jnp.where(flip, crop[:, ::-1, :], crop)

    return jax.vmap(one)(images, params.offsets, params.flips)


@partial(jax.jit, static_argnames=("pad",))
def augment(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Random crop (after zero-padding ``pad``) and random horizontal flip, independently per image.

    Args:
      key: PRNG key; the same key gives the same result.
      images: ``(N, H, W, C)``, any dtype (typically uint8, before :func:`normalize`).
      pad: zero padding on each side before cropping back to ``H x W``.

    Returns:
      Augmented images, same shape and dtype.

    Example:
        >>> x = jnp.zeros((8, 32, 32, 3), jnp.uint8)
        >>> augment(jax.random.key(0), x).shape
        (8, 32, 32, 3)
    """
    return apply_crop_flip(images, sample_crop_flip(key, images.shape[0], pad), pad)
