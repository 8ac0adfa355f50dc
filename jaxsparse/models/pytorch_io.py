"""Weights in PyTorch ``state_dict`` layout, stored as ``.npz`` (one array per key).

PyTorch layouts are converted on the way in (and back on the way out):

==================  ==========================  ==============================
PyTorch key suffix  PyTorch layout              flax NNX variable
==================  ==========================  ==============================
conv ``.weight``    OIHW ``(out, in, kh, kw)``  ``Conv.kernel`` HWIO
linear ``.weight``  ``(out, in)``               ``Linear.kernel`` ``(in, out)``
linear ``.bias``    ``(out,)``                  ``Linear.bias``
bn ``.weight``      ``(C,)``                    ``BatchNorm.scale``
bn ``.bias``        ``(C,)``                    ``BatchNorm.bias``
bn ``.running_mean````(C,)``                    ``BatchNorm.mean``
bn ``.running_var`` ``(C,)``                    ``BatchNorm.var``
==================  ==========================  ==============================

``num_batches_tracked`` entries are ignored and a leading ``module.`` (left by
``DataParallel``) is stripped. Key names: :class:`~jaxsparse.models.CifarResNet`
uses the akamaster/pytorch_resnet_cifar10 names (``layer2.0.conv1.weight``);
:class:`~jaxsparse.models.VGG16` uses the ``nn.Sequential`` indices of the common
CIFAR code (``features.0.weight`` conv, ``features.1.*`` BatchNorm, ReLU at 2, a
max-pool taking one index, ``classifier.*``).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from runkit import MissingFileError, UsageError, atomic_write_bytes
from jaxsparse.models.resnet import CifarResNet
from jaxsparse.models.vgg import VGG16, VGG16_CFG
from jaxsparse.userfiles import resnet_blocks_per_stage

# layout tag -> (PyTorch -> flax, flax -> PyTorch)
_LAYOUTS = {
    "conv": (lambda w: np.transpose(w, (2, 3, 1, 0)), lambda w: np.transpose(w, (3, 2, 0, 1))),
    "linear": (lambda w: np.transpose(w), lambda w: np.transpose(w)),
    "vector": (lambda w: w, lambda w: w),
}


def _conv_entries(prefix: str, conv: nnx.Conv) -> dict:
    return {f"{prefix}.weight": (conv.kernel, "conv")}


def _bn_entries(prefix: str, bn: nnx.BatchNorm) -> dict:
    return {
        f"{prefix}.weight": (bn.scale, "vector"),
        f"{prefix}.bias": (bn.bias, "vector"),
        f"{prefix}.running_mean": (bn.mean, "vector"),
        f"{prefix}.running_var": (bn.var, "vector"),
    }


def _linear_entries(prefix: str, linear: nnx.Linear) -> dict:
    return {f"{prefix}.weight": (linear.kernel, "linear"), f"{prefix}.bias": (linear.bias, "vector")}


def pytorch_parameter_map(model: nnx.Module) -> dict[str, tuple[nnx.Variable, str]]:
    """PyTorch key -> (the model's variable, layout tag ``"conv" | "linear" | "vector"``).

    Example:
        >>> from flax import nnx
        >>> from jaxsparse.models import CifarResNet
        >>> keys = pytorch_parameter_map(CifarResNet(20, rngs=nnx.Rngs(0)))
        >>> "layer2.0.conv1.weight" in keys, len(keys)
        (True, 97)
    """
    entries: dict[str, tuple[nnx.Variable, str]] = {}
    if isinstance(model, CifarResNet):
        entries |= _conv_entries("conv1", model.conv1) | _bn_entries("bn1", model.bn1)
        for s, stage in enumerate(model.stages, start=1):
            for b, block in enumerate(stage):
                p = f"layer{s}.{b}"
                entries |= _conv_entries(f"{p}.conv1", block.conv1) | _bn_entries(f"{p}.bn1", block.bn1)
                entries |= _conv_entries(f"{p}.conv2", block.conv2) | _bn_entries(f"{p}.bn2", block.bn2)
        entries |= _linear_entries("linear", model.linear)
    elif isinstance(model, VGG16):
        index = 0
        units = iter(model.features)
        for entry in VGG16_CFG:
            if entry == "M":
                index += 1
                continue
            unit = next(units)
            entries |= _conv_entries(f"features.{index}", unit.conv) | _bn_entries(f"features.{index + 1}", unit.bn)
            index += 3
        entries |= _linear_entries("classifier", model.classifier)
    else:
        raise TypeError(f"model: expected CifarResNet or VGG16, got {type(model).__name__}")
    return entries


def _torch_shape(variable: nnx.Variable, layout: str) -> tuple[int, ...]:
    return tuple(_LAYOUTS[layout][1](np.zeros(variable.get_value().shape, np.bool_)).shape)


def load_pytorch_state_dict(model: nnx.Module, state: Mapping[str, np.ndarray], *, source: str = "state dict") -> nnx.Module:
    """Copy PyTorch-layout arrays into ``model`` in place (all checked before any is written).

    Args:
      model: a :class:`~jaxsparse.models.CifarResNet` or :class:`~jaxsparse.models.VGG16`.
      state: PyTorch key -> array.
      source: how to name the weights in error messages (e.g. the file path).

    Returns:
      ``model`` (for chaining).

    Raises:
      ValueError: a missing, extra or mis-shaped entry (naming the key and both
        shapes), or weights of a ResNet of another depth.
    """
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = pytorch_parameter_map(model)
    if isinstance(model, CifarResNet):
        found = resnet_blocks_per_stage(state)
        if found is not None and found != model.blocks_per_stage:
            raise UsageError(
                f"weights {source}: they hold a ResNet-{6 * found + 2} ({found} blocks per stage) but the model is "
                f"ResNet-{model.depth} ({model.blocks_per_stage} blocks per stage); pick the matching --model/--weights"
            )
    missing = [k for k in expected if k not in state]
    if missing:
        shown = ", ".join(f"{k!r} (expected shape {_torch_shape(*expected[k])})" for k in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UsageError(f"weights {source}: missing entries {shown}{more}")
    extra = [k for k in state if k not in expected]
    if extra:
        shown = ", ".join(f"{k!r} (shape {tuple(np.shape(state[k]))}, not in the model)" for k in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise UsageError(f"weights {source}: unexpected entries {shown}{more}")
    converted = {}
    for key, (variable, layout) in expected.items():
        want, got = _torch_shape(variable, layout), tuple(np.shape(state[key]))
        if want != got:
            raise UsageError(f"weights {source}: entry {key!r} has shape {got}, expected {want} (PyTorch layout)")
        value = _LAYOUTS[layout][0](np.asarray(state[key]))
        converted[key] = np.asarray(value, dtype=variable.get_value().dtype)
    for key, (variable, _) in expected.items():
        variable.set_value(converted[key])
    return model


def load_pytorch_npz(model: nnx.Module, path: str | os.PathLike) -> nnx.Module:
    """Load a PyTorch-layout ``.npz`` into ``model`` in place (see :func:`load_pytorch_state_dict`).

    Example:
        >>> from flax import nnx
        >>> from jaxsparse.models import CifarResNet
        >>> model = load_pytorch_npz(CifarResNet(56, rngs=nnx.Rngs(0)), "resnet56.npz")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights: no such file {str(path)!r}")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UsageError(f"weights: {str(path)!r} is not a readable .npz file ({error})") from error
    return load_pytorch_state_dict(model, state, source=repr(str(path)))


def to_pytorch_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics as PyTorch-layout numpy arrays."""
    return {
        key: np.ascontiguousarray(_LAYOUTS[layout][1](np.asarray(variable.get_value())))
        for key, (variable, layout) in pytorch_parameter_map(model).items()
    }


def save_pytorch_npz(model: nnx.Module, path: str | os.PathLike) -> Path:
    """Write :func:`to_pytorch_state_dict` atomically as ``.npz`` (readable by :func:`load_pytorch_npz`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **to_pytorch_state_dict(model))
    return atomic_write_bytes(path, buffer.getvalue())
