"""Where CIFAR-10 and the pretrained weights are, and fast checks of a user's files (numpy only, no JAX).

The command-line tools call these before they import JAX or build a model, so that a wrong
path or a bad weights file is reported in well under a second instead of after start-up
and compilation. Importing this module imports neither JAX nor flax.

Data is found from an explicit path (``--data``), else ``$JAXSPARSE_CIFAR10``, else
``<shared>/data/cifar10-jpeg`` (the shared folder from ``--shared``, ``$JAXSPARSE_SHARED``
or ``../shared`` beside the repository). Weights: an explicit path (``--weights``), else
``<shared>/models/cifar10-resnet/<model>.npz``.

Example:
    >>> resnet_blocks_per_stage(["conv1.weight", "layer1.0.conv1.weight", "layer1.2.bn2.bias"])
    3
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

from runkit import SHARED_ENV, MissingFileError, UsageError, find_shared_root

#: Depths of the ready-made CIFAR ResNets (6n + 2).
RESNET_DEPTHS = (20, 32, 44, 56)
#: Names accepted by :func:`jaxsparse.models.build_model`.
MODEL_NAMES = tuple(f"resnet{d}" for d in RESNET_DEPTHS) + ("vgg16",)
#: Models with pretrained CIFAR-10 weights in ``<shared>/models/cifar10-resnet``.
PRETRAINED_NAMES = tuple(f"resnet{d}" for d in RESNET_DEPTHS)
#: Location of the pretrained weights inside the shared folder.
PRETRAINED_SUBDIR = Path("models") / "cifar10-resnet"
#: Location of CIFAR-10 (JPEG image folders) inside the shared folder.
SHARED_DATA_SUBDIR = Path("data") / "cifar10-jpeg"
#: Environment variable naming a CIFAR-10 folder (image folder or cifar-10-batches-py).
DATA_ENV = "JAXSPARSE_CIFAR10"
#: The official CIFAR-10 python download.
CIFAR10_PYTHON_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

#: Help of the ``--data`` option of the commands that read CIFAR-10.
DATA_HELP = (f"CIFAR-10: an image folder (<root>/<class>/<image> or <root>/<split>/...) or cifar-10-batches-py "
             f"(default: ${DATA_ENV}, else <shared>/{SHARED_DATA_SUBDIR.as_posix()})")

HOW_TO_GET_CIFAR10 = f"""no CIFAR-10 data found. Either
  * download the python version: curl -O {CIFAR10_PYTHON_URL} && tar xzf cifar-10-python.tar.gz
    and pass --data cifar-10-batches-py (or set {DATA_ENV}=path/to/cifar-10-batches-py), or
  * pass --data an image folder laid out as <root>/<split>/<class>/<image> (e.g. test/airplane/0000.jpg)
    or <root>/<class>/<image> (class index = sorted folder-name order), or
  * set {SHARED_ENV} to a folder holding {SHARED_DATA_SUBDIR.as_posix()}/ and {PRETRAINED_SUBDIR.as_posix()}/.
Weights: --weights PATH (a PyTorch-layout .npz; the pretrained ResNets are {PRETRAINED_SUBDIR.as_posix()}/resnetNN.npz)."""


def resolve_data(data: str | os.PathLike | None, shared: str | os.PathLike | None) -> Path:
    """The CIFAR-10 folder from ``data`` (``--data``), ``$JAXSPARSE_CIFAR10`` or the shared folder.

    Raises:
      MissingFileError: the named folder does not exist (naming the option and the path), or
        nothing was named and no shared copy exists (with instructions to get CIFAR-10).
    """
    for source, path in (("--data", data), (f"${DATA_ENV}", os.environ.get(DATA_ENV) or None)):
        if path is not None:
            if not Path(path).is_dir():
                raise MissingFileError(f"{source}: expected a folder, got {str(path)!r}, which does not exist.\n{HOW_TO_GET_CIFAR10}")
            return Path(path)
    root = find_shared_root(shared, required=False)
    if root is not None and (root / SHARED_DATA_SUBDIR).is_dir():
        return root / SHARED_DATA_SUBDIR
    raise MissingFileError(HOW_TO_GET_CIFAR10)


def resolve_weights(model: str, weights: str | os.PathLike | None, shared: str | os.PathLike | None) -> Path:
    """The weights file from ``weights`` (``--weights``) or the shared pretrained folder."""
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise MissingFileError(f"--weights: expected a .npz file, got {str(weights)!r}, which does not exist")
        return weights
    if model not in PRETRAINED_NAMES:
        raise UsageError(f"--weights: no pretrained weights ship for {model!r} (only {list(PRETRAINED_NAMES)}); pass --weights PATH")
    root = find_shared_root(shared, required=False)
    if root is None or not (root / PRETRAINED_SUBDIR / f"{model}.npz").is_file():
        raise MissingFileError(f"no weights for {model!r} found.\n{HOW_TO_GET_CIFAR10}")
    return root / PRETRAINED_SUBDIR / f"{model}.npz"


def resnet_blocks_per_stage(keys: Iterable[str]) -> int | None:
    """Blocks per stage of the ResNet whose PyTorch keys are ``keys`` (``None``: no ``layer1.*`` keys)."""
    indices = [int(m.group(1)) for k in keys if (m := re.match(r"(?:module\.)?layer1\.(\d+)\.", k))]
    return max(indices) + 1 if indices else None


def weights_file_keys(path: str | os.PathLike, option: str = "--weights") -> list[str]:
    """The array names in a ``.npz`` file, read from its zip directory (no array is loaded).

    Args:
      path: the file.
      option: what the messages call the file (the option that named it).

    Raises:
      MissingFileError: no such file.
      UsageError: the file is not a readable ``.npz`` (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{option}: no such file {str(path)!r}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as error:
        raise UsageError(f"{option}: {str(path)!r} is not a readable .npz file ({error})") from error
    if not names or not all(n.endswith(".npy") for n in names):
        raise UsageError(f"{option}: {str(path)!r} is not a .npz file of arrays (found entries {names[:5]})")
    return [n.removesuffix(".npy") for n in names]


def check_weights_file(path: str | os.PathLike, model: str, option: str = "--weights") -> Path:
    """Check, without loading arrays, that ``path`` is a ``.npz`` of weights that fits ``model``.

    Catches an unreadable file and a ResNet of another depth; shapes are checked when the
    weights are loaded (:func:`jaxsparse.models.load_pytorch_npz`).

    Args:
      path: the file.
      model: the model name it must fit.
      option: what the messages call the file (the option that named it).

    Returns:
      ``path`` as a ``Path``.
    """
    keys = weights_file_keys(path, option)
    if model.startswith("resnet"):
        depth = int(model.removeprefix("resnet"))
        found, wanted = resnet_blocks_per_stage(keys), (depth - 2) // 6
        if found is None:
            raise UsageError(f"{option} {str(path)!r}: expected a CIFAR ResNet state dict (layer1.* entries), got entries {keys[:5]}")
        if found != wanted:
            raise UsageError(
                f"{option} {str(path)!r}: they hold a ResNet-{6 * found + 2} ({found} blocks per stage) but the model is "
                f"ResNet-{depth} ({wanted} blocks per stage); pick the matching --model/--weights"
            )
    return Path(path)


def check_data_folder(path: Path, split: str | None = None) -> Path:
    """Check the layout of a CIFAR-10 folder before anything is decoded.

    Accepted: ``cifar-10-batches-py`` (or its parent), ``<root>/<split>/<class>/<image>`` or
    ``<root>/<class>/<image>``.

    Raises:
      UsageError: a folder with none of these layouts (naming ``--data`` and the folder).
    """
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    if names & {"test_batch", "data_batch_1", "cifar-10-batches-py"}:
        return path
    if split is not None and (path / split).is_dir():
        return path
    if any((path / n).is_dir() for n in names):
        return path
    raise UsageError(
        f"--data: expected a CIFAR-10 folder (cifar-10-batches-py, <root>/<split>/<class>/<image> or <root>/<class>/<image>), "
        f"got {str(path)!r} holding {sorted(names)[:5]}"
    )
