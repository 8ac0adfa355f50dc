"""CIFAR CNNs in flax NNX (NHWC) and loading of PyTorch-layout pretrained weights.

Example:
    >>> from flax import nnx
    >>> from jaxsparse.models import build_model
    >>> model = build_model("resnet20", rngs=nnx.Rngs(0))
    >>> type(model).__name__, model.depth
    ('CifarResNet', 20)
"""

from __future__ import annotations

import os

from flax import nnx

from runkit import check_choice
from jaxsparse.models.evaluation import EvalResult, evaluate_accuracy, make_predict_fn
from jaxsparse.models.pytorch_io import (
    load_pytorch_npz,
    load_pytorch_state_dict,
    pytorch_parameter_map,
    save_pytorch_npz,
    to_pytorch_state_dict,
)
from jaxsparse.models.resnet import RESNET_DEPTHS, BasicBlock, CifarResNet, option_a_shortcut
from jaxsparse.models.vgg import VGG16, VGG16_CFG, ConvBN
from jaxsparse.userfiles import MODEL_NAMES, PRETRAINED_NAMES, PRETRAINED_SUBDIR, resolve_weights


def build_model(name: str, *, rngs: nnx.Rngs, num_classes: int = 10) -> nnx.Module:
    """A randomly initialised model by name (one of :data:`MODEL_NAMES`).

    Raises:
      ValueError: ``name`` is not one of :data:`MODEL_NAMES`.
    """
    check_choice("model name", name, MODEL_NAMES)
    if name == "vgg16":
        return VGG16(num_classes, rngs=rngs)
    return CifarResNet(int(name.removeprefix("resnet")), num_classes, rngs=rngs)


def load_pretrained(name: str, path: str | os.PathLike | None = None, *, shared_root: str | os.PathLike | None = None) -> nnx.Module:
    """Build ``name`` and load its pretrained CIFAR-10 weights; returned in eval mode.

    Args:
      name: ``"resnet20" | "resnet32" | "resnet44" | "resnet56"``.
      path: a PyTorch-layout ``.npz``; by default the shared copy
        ``<shared>/models/cifar10-resnet/<name>.npz`` (:func:`jaxsparse.userfiles.resolve_weights`).
      shared_root: the shared folder, when ``path`` is not given (default: ``find_shared_root()``).

    Example:
        >>> model = load_pretrained("resnet56")  # doctest: +SKIP
        >>> model(images).argmax(-1)  # doctest: +SKIP
    """
    check_choice("model name", name, MODEL_NAMES)
    path = resolve_weights(name, path, shared_root)
    model = build_model(name, rngs=nnx.Rngs(0))
    load_pytorch_npz(model, path)
    model.eval()
    return model


__all__ = [
    "MODEL_NAMES",
    "PRETRAINED_NAMES",
    "PRETRAINED_SUBDIR",
    "RESNET_DEPTHS",
    "VGG16_CFG",
    "BasicBlock",
    "CifarResNet",
    "ConvBN",
    "EvalResult",
    "VGG16",
    "build_model",
    "evaluate_accuracy",
    "load_pretrained",
    "load_pytorch_npz",
    "load_pytorch_state_dict",
    "make_predict_fn",
    "option_a_shortcut",
    "pytorch_parameter_map",
    "save_pytorch_npz",
    "to_pytorch_state_dict",
]
