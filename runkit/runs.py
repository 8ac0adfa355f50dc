"""Run folders: the settings a run was started with, and the checkpoints that may resume it.

A run folder holds ``settings.json`` (the settings the run was started with, written
atomically before anything else) and ``checkpoints/`` (its state files). Opening a folder
with :func:`open_run`

* starts a new run when the folder holds neither (writing ``settings.json``);
* resumes when the recorded settings equal the given ones;
* refuses, with :class:`~runkit.UsageError` naming every setting that differs
  (``key: expected <recorded>, got <given>``), when they do not, or when the folder holds
  checkpoints without a settings record (an older or unfinished fresh start);
* with ``resume=False`` starts afresh: it says so, removes the settings record, then the
  checkpoints, then writes the new settings.

That order keeps the folder consistent whatever moment a crash picks: checkpoints are never
found under settings they were not written for (they are either under their own record, or
under none, which is refused until the run is started afresh).

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> run = open_run(folder, {"lr": 0.1, "model": {"depth": 20}})
    >>> _ = run.save("epoch", {"w": np.ones(2)}, {"epoch": 1})
    >>> open_run(folder, {"lr": 0.1, "model": {"depth": 20}}).load("epoch")[1]
    {'epoch': 1}
    >>> open_run(folder, {"lr": 0.2, "model": {"depth": 56}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    runkit.checks.UsageError: resume: run folder '...' was written with other settings: lr: expected 0.1, got 0.2; model.depth: expected 20, got 56; ...
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runkit.checks import MissingFileError, UsageError
from runkit.io import _to_jsonable, atomic_write_json, load_checkpoint, save_checkpoint

#: The settings record of a run folder.
SETTINGS_FILE = "settings.json"
#: The folder of a run's state files.
CHECKPOINTS = "checkpoints"
_HINT = "use another folder, or start afresh (resume=False / --no-resume)"
_UNSET = "<not set>"


def as_json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, arrays lists, paths strings).

    Example:
        >>> import numpy as np
        >>> as_json({"widths": (4, 8), "lr": np.float32(0.5)})
        {'widths': [4, 8], 'lr': 0.5}
    """
    return json.loads(json.dumps(_to_jsonable(obj)))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _merged(base: Any, over: Any) -> Any:
    """``over`` with the keys it lacks taken from ``base``, recursively through dicts."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    return {**base, **{k: _merged(base.get(k), v) for k, v in over.items()}}


def settings_differences(recorded: Mapping, given: Mapping) -> list[str]:
    """``"key: expected <recorded>, got <given>"`` for every differing setting (nested keys dotted), sorted.

    Example:
        >>> settings_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4})
        ['b.c: expected 2, got 3', "d: expected '<not set>', got 4"]
    """
    old, new = _flatten(as_json(dict(recorded))), _flatten(as_json(dict(given)))
    return [f"{key}: expected {old.get(key, _UNSET)!r}, got {new.get(key, _UNSET)!r}"
            for key in sorted(set(old) | set(new)) if old.get(key, _UNSET) != new.get(key, _UNSET)]  # fmt: skip


def check_same_settings(recorded: Mapping, given: Mapping, *, where: str, option: str = "resume", hint: str = _HINT) -> None:
    """Raise :class:`~runkit.UsageError` naming every setting of ``given`` that differs from ``recorded``.

    The message reads ``"<option>: <where> was written with other settings: <differences>; <hint>"``.

    Example:
        >>> check_same_settings({"dim": 8}, {"dim": 8}, where="run 'x'")
        >>> check_same_settings({"dim": 8}, {"dim": 16}, where="run 'x'", hint="use a new --out")
        Traceback (most recent call last):
        ...
        runkit.checks.UsageError: resume: run 'x' was written with other settings: dim: expected 8, got 16; use a new --out
    """
    differences = settings_differences(recorded, given)
    if differences:
        raise UsageError(f"{option}: {where} was written with other settings: {'; '.join(differences)}; {hint}")


def read_settings(path: str | os.PathLike) -> dict:
    """The settings recorded in the run folder ``path`` (:class:`~runkit.MissingFileError` without a record)."""
    record = Path(path) / SETTINGS_FILE
    if not record.is_file():
        raise MissingFileError(f"run: expected a run folder with {str(record)!r}, found none")
    return json.loads(record.read_text())


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """An open run folder (see :func:`open_run`): its path, its settings, atomic state files.

    Attributes:
      path: the folder.
      settings: the run's settings as recorded (their JSON form).
      resumed: whether the folder held checkpoints of this run when it was opened.
    """

    path: Path
    settings: dict
    resumed: bool = False

    @property
    def checkpoints(self) -> Path:
        """The folder of the run's state files (and of nested runs)."""
        return self.path / CHECKPOINTS

    def state_path(self, name: str) -> Path:
        """The file of state ``name``: ``checkpoints/<name>.npz``."""
        return self.checkpoints / f"{name}.npz"

    def has(self, name: str) -> bool:
        """Whether state ``name`` has been saved."""
        return self.state_path(name).is_file()

    def save(self, name: str, tree: Any, metadata: dict | None = None) -> Path:
        """Save a pytree (and JSON-able ``metadata``) as state ``name``, atomically (:func:`~runkit.save_checkpoint`)."""
        return save_checkpoint(self.state_path(name), tree, metadata)

    def load(self, name: str, like: Any = None) -> tuple[Any, dict]:
        """``(tree, metadata)`` of state ``name`` (:func:`~runkit.load_checkpoint`)."""
        if not self.has(name):
            raise MissingFileError(f"run: expected state {name!r} in {str(self.checkpoints)!r}, found none")
        return load_checkpoint(self.state_path(name), like=like)

    def nested(self, name: str, settings: Mapping, **options) -> RunFolder:
        """Open the run folder ``checkpoints/<name>`` of a part of this run (options of :func:`open_run`)."""
        return open_run(self.checkpoints / name, settings, **options)


def open_run(
    path: str | os.PathLike,
    settings: Mapping,
    *,
    resume: bool = True,
    option: str = "resume",
    hint: str = _HINT,
    writer: bool = True,
    log: Callable[[str], None] = print,
    defaults: Mapping | None = None,
) -> RunFolder:
    """Open (or create) the run folder ``path`` for a run of ``settings``.

    Args:
      path: the folder (created when missing).
      settings: JSON-able mapping of what the run depends on (nested mappings allowed).
      resume: keep the folder's checkpoints when its settings match (False: start afresh,
        removing them, and say so through ``log``).
      option: the option named in errors (``"resume"``, ``"out"``, ``"checkpoint"``, ...).
      hint: what the error suggests doing instead.
      writer: whether this process writes (False on all but one process of a multi-process
        run: the others only check).
      log: where the message of a fresh start goes.
      defaults: settings a record written before they existed is read with (nested keys
        merged): a run recorded before an option was added resumes when it uses its default.

    Returns:
      A :class:`RunFolder`.

    Raises:
      UsageError: the folder was written with other settings (every differing key named),
        or holds checkpoints but no settings record.
    """
    folder = Path(path)
    record = folder / SETTINGS_FILE
    given = as_json(dict(settings))
    where = f"run folder {str(folder)!r}"
    has_checkpoints = (folder / CHECKPOINTS).is_dir() and any((folder / CHECKPOINTS).iterdir())
    if not resume:
        if writer and (record.exists() or (folder / CHECKPOINTS).exists()):
            log(f"starting afresh: removing the settings and checkpoints of an earlier run in {folder}")
            if record.exists():
                record.unlink()
            shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)
        if writer:
            atomic_write_json(record, given)
        return RunFolder(folder, given, resumed=False)
    if record.is_file():
        recorded = _merged(as_json(dict(defaults)), json.loads(record.read_text())) if defaults else json.loads(record.read_text())
        check_same_settings(recorded, given, where=where, option=option, hint=hint)
        return RunFolder(folder, given, resumed=has_checkpoints)
    if has_checkpoints:
        raise UsageError(f"{option}: {where} holds checkpoints but no {SETTINGS_FILE} (an older version's or an "
                         f"interrupted fresh start), so they cannot be checked; {hint}")  # fmt: skip
    if writer:
        atomic_write_json(record, given)
    return RunFolder(folder, given, resumed=False)


__all__ = ["CHECKPOINTS", "SETTINGS_FILE", "RunFolder", "as_json", "check_same_settings", "open_run", "read_settings",
           "settings_differences"]  # fmt: skip

