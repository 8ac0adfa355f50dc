"""Command-line options generated from a frozen dataclass: one option per field, defaults stated once.

Each field ``some_name`` becomes ``--some-name``; its type comes from the annotation
(``int``, ``float``, ``str``, ``Path``, ``bool`` as ``--x/--no-x``, ``X | None``, ``tuple[X, ...]``
as comma-separated values), its help and choices from ``dataclasses.field(metadata={"help": ...,
"choices": ...})``. A field whose type is itself a dataclass contributes its fields' options
(flattened, names must not collide). ``--preset NAME`` picks a named configuration (a mapping
name -> instance kept next to the config class); the flags a user gives override it, the
others keep the preset's values. Validation stays in the classes' ``__post_init__``: a
:class:`~runkit.checks.UsageError` that starts with a field's name is re-worded to name the
option instead (``batch_size: ...`` -> ``--batch-size: ...``).

Example:
    >>> import argparse, dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Job:
    ...     steps: int = dataclasses.field(default=10, metadata={"help": "optimizer steps"})
    ...     fast: bool = False
    >>> options = ConfigOptions(Job, presets={"long": Job(steps=1000)})
    >>> parser = argparse.ArgumentParser()
    >>> options.add_arguments(parser)
    >>> options.build(parser.parse_args(["--preset", "long", "--fast"]))
    Job(steps=1000, fast=True)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runkit.checks import UsageError

PRESET_DEST = "preset"


def flag(name: str) -> str:
    """The option spelling of a field name: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return annotation, False


def _scalar_parser(kind: Any, option: str) -> Callable[[str], Any]:
    if kind in (int, float, str):
        return kind
    if kind in (Path, os.PathLike) or (typing.get_origin(kind) in (typing.Union, types.UnionType) and Path in typing.get_args(kind)):
        return Path
    raise TypeError(f"{option}: no command-line form for the type {kind!r}")


def value_parser(annotation: Any, option: str) -> Callable[[str], Any]:
    """A function turning the option's text into a value of ``annotation`` (argparse ``type=``).

    ``X | None`` also accepts ``none``; ``tuple[X, ...]`` reads comma-separated values.
    Bad text raises ``argparse.ArgumentTypeError`` (argparse then names the option).
    """
    kind, optional = _unwrap_optional(annotation)
    if typing.get_origin(kind) is tuple:
        item = _scalar_parser(typing.get_args(kind)[0], option)

        def parse(text: str):
            try:
                return tuple(item(part.strip()) for part in text.split(",") if part.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None
    else:
        scalar = _scalar_parser(kind, option)

        def parse(text: str):
            try:
                return scalar(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a {scalar.__name__}, got {text!r}") from None

    if not optional:
        return parse

    def parse_optional(text: str):
        return None if text.strip().lower() == "none" else parse(text)

    return parse_optional


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> text from the ``Attributes:`` section of a class docstring (Google style).

    An entry ``a, b: text`` documents both fields; continuation lines are joined.

    Example:
        >>> class C:
        ...     '''Doc.
        ...
        ...     Attributes:
        ...       steps: optimizer steps
        ...         (more text).
        ...       lr, momentum: the SGD recipe.
        ...     '''
        >>> attribute_docs(C)["steps"], attribute_docs(C)["momentum"]
        ('optimizer steps (more text).', 'the SGD recipe.')
    """
    lines = (cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    names: list[str] = []
    indent = None
    inside = False
    for line in lines:
        if line.strip() == "Attributes:":
            inside, indent = True, None
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent:
            break
        match = re.match(r"\s*([\w, ]+):\s*(.*)$", line) if width == indent else None
        if match:
            names = [n.strip() for n in match.group(1).split(",") if n.strip()]
            for n in names:
                docs[n] = match.group(2).strip()
        else:
            for n in names:
                docs[n] = (docs[n] + " " + line.strip()).strip()
    return docs


def _metavar(annotation: Any) -> str:
    kind, _ = _unwrap_optional(annotation)
    if typing.get_origin(kind) is tuple:
        return "A,B,..."
    return {int: "N", float: "X", str: "TEXT"}.get(kind, "PATH")


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "(none)"
    return str(value)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    path: tuple[str, ...]  # field names from the top class down to the leaf
    field: dataclasses.Field
    annotation: Any


class ConfigOptions:
    """The argparse options of a frozen dataclass, and the config built back from parsed args.

    Args:
      config_class: a (frozen) dataclass; dataclass-typed fields are flattened into their fields.
      presets: optional name -> instance of ``config_class``; adds ``--preset``.
      default_preset: the preset used when ``--preset`` is not given (``None``: the class
        defaults), or a function of the parsed args returning that name.
      exclude: field names that get no option (the caller sets them).
      choices: field name -> allowed values (else ``metadata["choices"]``).

    Help texts come from ``metadata["help"]``, else from the class docstring's ``Attributes:``.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Job:
        ...     batch_size: int = 8
        ...     def __post_init__(self):
        ...         if self.batch_size <= 0:
        ...             raise UsageError(f"batch_size: expected a value > 0, got {self.batch_size}")
        >>> options = ConfigOptions(Job)
        >>> parser = argparse.ArgumentParser()
        >>> options.add_arguments(parser)
        >>> try:
        ...     options.build(parser.parse_args(["--batch-size", "0"]))
        ... except UsageError as error:
        ...     print(error)
        --batch-size: expected a value > 0, got 0
    """

    def __init__(self, config_class: type, presets: Mapping[str, Any] | None = None, *,
                 default_preset: str | Callable[[argparse.Namespace], str] | None = None,
                 exclude: tuple[str, ...] = (), choices: Mapping[str, tuple] | None = None):  # fmt: skip
        if not dataclasses.is_dataclass(config_class):
            raise TypeError(f"config_class: expected a dataclass, got {config_class!r}")
        self.config_class = config_class
        self.presets = dict(presets or {})
        self.default_preset = default_preset
        self.exclude = tuple(exclude)
        self.choices = dict(choices or {})
        self.docs: dict[str, str] = {}
        self.leaves = self._leaves(config_class, ())
        names = [leaf.path[-1] for leaf in self.leaves]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise TypeError(f"{config_class.__name__}: fields {repeated} appear twice after flattening")

    def _leaves(self, cls: type, prefix: tuple[str, ...]) -> list[_Leaf]:
        hints = typing.get_type_hints(cls)
        self.docs = {**attribute_docs(cls), **self.docs}
        leaves = []
        for f in dataclasses.fields(cls):
            if f.name in self.exclude or not f.init:
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                leaves.extend(self._leaves(hints[f.name], prefix + (f.name,)))
            else:
                leaves.append(_Leaf(prefix + (f.name,), f, hints[f.name]))
        return leaves

    # ------------------------------------------------------------------ parser

    def _value(self, config: Any, path: tuple[str, ...]) -> Any:
        for name in path:
            config = getattr(config, name)
        return config

    def _default_help(self, leaf: _Leaf) -> str:
        if not self.presets:
            try:
                return f"default: {_shown(self._value(self.config_class(), leaf.path))}"
            except TypeError:  # a class with required fields: this field's own default, if any
                f = leaf.field
                if f.default is not dataclasses.MISSING:
                    return f"default: {_shown(f.default)}"
                if f.default_factory is not dataclasses.MISSING:
                    return f"default: {_shown(f.default_factory())}"
                return "required"
        values = {name: _shown(self._value(preset, leaf.path)) for name, preset in self.presets.items()}
        if len(set(values.values())) == 1:
            return f"default: {next(iter(values.values()))}"
        return "; ".join(f"{name}: {value}" for name, value in values.items())

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add ``--preset`` (when there are presets) and one option per field to ``parser``."""
        if self.presets:
            default = self.default_preset if isinstance(self.default_preset, str) else None
            shown = f" (default: {default})" if default else (" (default: see the command's help)" if self.default_preset else "")
            parser.add_argument("--preset", dest=PRESET_DEST, choices=tuple(self.presets), default=argparse.SUPPRESS,
                                help=f"named configuration the other options override{shown}")  # fmt: skip
        for leaf in self.leaves:
            name = leaf.path[-1]
            meta = leaf.field.metadata
            text = meta.get("help") or self.docs.get(name) or name.replace("_", " ")
            text = f"{text.rstrip('.')} ({self._default_help(leaf)})".replace("%", "%%")
            kind, _ = _unwrap_optional(leaf.annotation)
            kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text}
            if not self.presets and leaf.field.default is dataclasses.MISSING and leaf.field.default_factory is dataclasses.MISSING:
                kwargs["required"] = True  # a field without a default (and no preset to supply it)
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = value_parser(leaf.annotation, flag(name))
                kwargs["metavar"] = meta.get("metavar", _metavar(leaf.annotation))
                if name in self.choices or "choices" in meta:
                    kwargs["choices"] = tuple(self.choices.get(name, meta.get("choices")))
                    kwargs.pop("metavar")
            parser.add_argument(flag(name), **kwargs)

    # ------------------------------------------------------------------ build

    def preset_name(self, args: argparse.Namespace) -> str | None:
        """The preset the args select (``--preset``, else the default), or ``None``."""
        name = getattr(args, PRESET_DEST, None)
        if name is None and self.default_preset is not None:
            name = self.default_preset if isinstance(self.default_preset, str) else self.default_preset(args)
        return name

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The field values the user gave on the command line (field name -> value)."""
        return {leaf.path[-1]: getattr(args, leaf.path[-1]) for leaf in self.leaves if hasattr(args, leaf.path[-1])}

    def build(self, args: argparse.Namespace, **fixed: Any) -> Any:
        """The config: the preset (or class defaults), overridden by the given options and ``fixed``.

        Raises:
          UsageError: a value the config rejects, re-worded to name the option.
        """
        name = self.preset_name(args)
        base = self.presets[name] if name is not None else None
        values = {**self.given(args), **fixed}
        try:
            return self._replace(self.config_class, base, (), values)
        except UsageError as error:
            raise UsageError(self.reword(str(error))) from None

    def _replace(self, cls: type, base: Any, prefix: tuple[str, ...], values: dict[str, Any]) -> Any:
        hints = typing.get_type_hints(cls)
        changes = {}
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                inner = getattr(base, f.name) if base is not None else None
                nested = self._replace(hints[f.name], inner, prefix + (f.name,), values)
                if nested is not inner:
                    changes[f.name] = nested
            elif f.name in values:
                changes[f.name] = values[f.name]
        if base is None:
            return cls(**changes)
        return dataclasses.replace(base, **changes) if changes else base

    def reword(self, message: str) -> str:
        """Replace field names before the first ``": "`` of ``message`` by their options."""
        head, sep, tail = message.partition(": ")
        if not sep:
            return message
        fields = {leaf.path[-1] for leaf in self.leaves}
        head = re.sub(r"(?<![\w-])([a-z][a-z0-9_]*)(?![\w-])", lambda m: flag(m.group(1)) if m.group(1) in fields else m.group(1), head)
        return head + sep + tail
