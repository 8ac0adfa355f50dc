"""Argument validation with errors that name the argument, the expectation and the value."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


class UsageError(ValueError):
    """A user's input is wrong (an option, a value, a file); the CLIs print it without a traceback.

    Every check in :mod:`runkit` raises this type, and ``python -m jaxsparse|hwmodel|ndp``
    report it as one line and exit 1. Any other exception is a bug and keeps its traceback.
    It subclasses ``ValueError`` so library callers may catch either.

    Example:
        >>> try:
        ...     check_positive("batch_size", 0)
        ... except UsageError as error:
        ...     print(error)
        batch_size: expected a value > 0, got 0
    """


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the user named (or the project needs from the user) does not exist."""


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; else raise :class:`UsageError`.

    Example:
        >>> check_choice("sharding", "rw", ("rw", "tw", "cw"))
        'rw'
    """
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> Any:
    """Return ``value`` if it is > 0 (or >= 0 with ``allow_zero``); else raise :class:`UsageError`.

    Example:
        >>> check_positive("batch_size", 128)
        128
    """
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        expected = ">= 0" if allow_zero else "> 0"
        raise UsageError(f"{name}: expected a value {expected}, got {value!r}")
    return value


def positive_ints(name: str, text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, as an option gives them.

    Example:
        >>> positive_ints("--threads", "2, 1")
        (2, 1)
        >>> positive_ints("--threads", "2,x")
        Traceback (most recent call last):
        ...
        runkit.checks.UsageError: --threads: expected comma-separated positive integers, got '2,x'
    """
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise UsageError(f"{name}: expected comma-separated positive integers, got {text!r}")
    return values


def check_shape(name: str, shape: Sequence[int], expected: Sequence[int | None]) -> None:
    """Raise :class:`UsageError` unless ``shape`` matches ``expected`` (``None`` matches any size).

    Example:
        >>> check_shape("kernel", (16, 3, 3, 3), (None, 3, 3, 3))
    """
    shape = tuple(int(s) for s in shape)
    expected = tuple(expected)
    if len(shape) != len(expected) or any(e is not None and e != s for s, e in zip(shape, expected)):
        shown = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ("," if len(expected) == 1 else "") + ")"
        raise UsageError(f"{name}: expected shape {shown}, got {shape}")


def check_file(name: str, path: Any, suffixes: Sequence[str] = ()) -> Any:
    """Return ``path`` if it is an existing file (with one of ``suffixes``, when given); else raise.

    Raises:
      MissingFileError: no such file (naming the option and the path).
      UsageError: a folder, or another suffix.

    Example:
        >>> check_file("--hardware", __file__, (".py",)) == __file__
        True
    """
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{name}: expected an existing file, got {str(path)!r}, which does not exist")
    if not p.is_file():
        raise UsageError(f"{name}: expected a file, got the folder {str(path)!r}")
    if suffixes and p.suffix not in suffixes:
        raise UsageError(f"{name}: expected a {' or '.join(suffixes)} file, got {str(path)!r}")
    return path
