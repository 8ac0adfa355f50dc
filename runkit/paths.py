"""Where the project's shared data and pretrained weights live.

The shared folder holds ``data/`` (CIFAR-10 as JPEG image folders, MovieLens-100k)
and ``models/`` (pretrained CIFAR ResNets). It is found, in order, from

1. an explicit path given by the caller (a CLI flag),
2. the environment variable ``JAXSPARSE_SHARED``,
3. ``../shared`` next to the repository root (a development checkout).

Example:
    >>> from runkit import find_shared_root
    >>> root = find_shared_root()          # doctest: +SKIP
    >>> (root / "data" / "cifar10-jpeg").is_dir()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
from pathlib import Path

from runkit.checks import MissingFileError

SHARED_ENV = "JAXSPARSE_SHARED"

_HOW_TO_GET = (
    "Pass the location explicitly (e.g. --data/--weights on the command line), set the "
    f"environment variable {SHARED_ENV} to a folder containing data/ and models/, or place "
    "that folder at ../shared beside the repository."
)


def repo_root() -> Path:
    """The repository root (the folder that contains the ``jaxsparse`` package)."""
    return Path(__file__).resolve().parents[1]


def find_shared_root(explicit: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """Locate the shared data/model folder.

    Args:
      explicit: a path given by the caller; wins over everything else.
      required: raise :class:`~runkit.checks.MissingFileError` (with instructions) when nothing is found;
        otherwise return ``None``.

    Returns:
      The shared folder as an absolute ``Path`` (or ``None`` when not found and not required).
    """
    candidates: list[tuple[str, Path]] = []
    if explicit is not None:
        candidates.append(("argument", Path(explicit)))
    if os.environ.get(SHARED_ENV):
        candidates.append((f"${SHARED_ENV}", Path(os.environ[SHARED_ENV])))
    candidates.append(("../shared beside the repository", repo_root().parent / "shared"))
    for source, path in candidates:
        if path.is_dir():
            return path.resolve()
        if source != "../shared beside the repository":
            raise MissingFileError(f"shared folder from {source} does not exist: {str(path)!r}. {_HOW_TO_GET}")
    if required:
        raise MissingFileError(f"no shared data folder found (looked at {str(candidates[-1][1])!r}). {_HOW_TO_GET}")
    return None
