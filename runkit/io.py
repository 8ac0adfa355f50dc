"""Atomic file writes and pytree checkpoints.

Every file the project writes for a user goes through :func:`atomic_write_bytes`:
the data lands in a temporary file in the same folder, is flushed to disk, and is
renamed over the target, so a crash or Ctrl-C leaves either the old file or the new
one, never a torn one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; give results the permissions an ordinary open() would.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("jax"):  # jax is imported only when used
        return _to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically; numpy/jax arrays and scalars become lists/numbers."""
    return atomic_write_text(path, json.dumps(_to_jsonable(obj), indent=indent) + "\n")


def save_checkpoint(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> Path:
    """Save a pytree of arrays (plus JSON-able ``metadata``) atomically as one ``.npz`` file.

    Leaves are stored under their ``jax.tree_util.keystr`` paths, so a checkpoint can be
    inspected with plain numpy. Restore with :func:`load_checkpoint`.

    Example:
        >>> import jax.numpy as jnp, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "ck.npz")
        >>> _ = save_checkpoint(p, {"w": jnp.ones(3)}, {"epoch": 2})
        >>> tree, meta = load_checkpoint(p, like={"w": jnp.zeros(3)})
        >>> meta["epoch"], tree["w"].tolist()
        (2, [1.0, 1.0, 1.0])
    """
    import jax

    leaves_with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays = {jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in leaves_with_paths}
    arrays["__metadata__"] = np.frombuffer(json.dumps(_to_jsonable(metadata or {})).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, like: Any = None) -> tuple[Any, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
      path: the ``.npz`` file.
      like: a pytree with the structure to restore into; without it a flat
        ``{keystr: array}`` dict is returned.

    Returns:
      ``(tree, metadata)``.
    """
    import jax

    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    metadata = json.loads(arrays.pop("__metadata__").tobytes().decode()) if "__metadata__" in arrays else {}
    if like is None:
        return arrays, metadata
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for p, leaf in paths_and_leaves:
        key = jax.tree_util.keystr(p)
        if key not in arrays:
            raise KeyError(f"checkpoint {str(path)!r} has no entry {key!r}")
        value = arrays[key]
        if np.shape(value) != np.shape(leaf):
            raise ValueError(f"checkpoint {str(path)!r} entry {key!r}: expected shape {np.shape(leaf)}, got {value.shape}")
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves), metadata
