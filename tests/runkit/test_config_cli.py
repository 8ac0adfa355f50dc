"""Options generated from a frozen dataclass: types, presets, overrides, errors that name the option."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from runkit import UsageError
from runkit.config_cli import ConfigOptions, flag


@dataclasses.dataclass(frozen=True)
class Inner:
    depth: int = 3
    where: Path | None = None


@dataclasses.dataclass(frozen=True)
class Job:
    batch_size: int = dataclasses.field(default=8, metadata={"help": "examples per step"})
    rate: float = 0.1
    kind: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
    widths: tuple[int, ...] = (4, 2)
    weight: float | None = None
    shuffle: bool = True
    inner: Inner = Inner()

    def __post_init__(self):
        if self.batch_size <= 0:
            raise UsageError(f"batch_size: expected a value > 0, got {self.batch_size}")
        if self.rate <= 0 or self.inner.depth <= 0:
            raise UsageError(f"rate / depth: expected positive values, got {self.rate}, {self.inner.depth}")


PRESETS = {"small": Job(batch_size=2, rate=0.5), "big": Job(batch_size=64, widths=(8, 8, 8), inner=Inner(depth=9))}


def parse(argv, **kwargs):
    options = ConfigOptions(Job, **kwargs)
    parser = argparse.ArgumentParser(exit_on_error=False)
    options.add_arguments(parser)
    return options, parser, parser.parse_args(argv)


def test_flag_spelling():
    assert flag("batch_size") == "--batch-size"


def test_every_field_becomes_one_typed_option():
    options, parser, args = parse(["--batch-size", "3", "--rate", "2.5", "--kind", "b", "--widths", "1,2,3", "--weight", "none",
                                   "--no-shuffle", "--depth", "5", "--where", "x/y"])
    assert options.build(args) == Job(3, 2.5, "b", (1, 2, 3), None, False, Inner(5, Path("x/y")))
    assert sorted(a.option_strings[0] for a in parser._actions[1:]) == sorted(
        ["--batch-size", "--rate", "--kind", "--widths", "--weight", "--shuffle", "--depth", "--where"])
    assert options.build(parse(["--weight", "0.3"])[2]).weight == 0.3


def test_class_defaults_when_nothing_is_given_and_help_states_them():
    options, parser, args = parse([])
    assert options.build(args) == Job()
    text = parser.format_help()
    assert "examples per step (default: 8)" in text and "(default: 4,2)" in text


def test_presets_are_overridden_only_by_given_flags():
    options, parser, args = parse(["--preset", "big", "--rate", "0.2"], presets=PRESETS)
    assert options.build(args) == dataclasses.replace(PRESETS["big"], rate=0.2)
    options, _, args = parse(["--depth", "1"], presets=PRESETS, default_preset="small")
    assert options.build(args) == dataclasses.replace(PRESETS["small"], inner=Inner(depth=1))
    # a default preset chosen from the other arguments
    options, _, args = parse(["--batch-size", "5"], presets=PRESETS, default_preset=lambda a: "big")
    assert options.build(args) == dataclasses.replace(PRESETS["big"], batch_size=5)
    help_text = parser.format_help()
    assert "small: 2; big: 64" in " ".join(help_text.split())


def test_validation_errors_name_the_option():
    options, _, args = parse(["--batch-size", "0"])
    with pytest.raises(UsageError, match=r"^--batch-size: expected a value > 0, got 0$"):
        options.build(args)
    options, _, args = parse(["--depth", "-1"])
    with pytest.raises(UsageError, match=r"^--rate / --depth: expected positive"):
        options.build(args)


@pytest.mark.parametrize("argv", [["--batch-size", "x"], ["--widths", "1,a"], ["--kind", "c"], ["--rate", "fast"]])
def test_unparsable_values_are_argparse_errors_naming_the_option(argv):
    with pytest.raises(argparse.ArgumentError, match=argv[0]):
        parse(argv)


def test_fixed_values_and_excluded_fields():
    options = ConfigOptions(Job, exclude=("kind",))
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    assert "--kind" not in parser.format_help()
    assert options.build(parser.parse_args([]), kind="b").kind == "b"


@dataclasses.dataclass(frozen=True)
class Documented:
    """Settings.

    Attributes:
      steps: optimizer steps
        of the run.
      lr, momentum: the SGD recipe.
    """

    steps: int = 1
    lr: float = 0.1
    momentum: float = 0.9
    mode: str = "x"


def test_help_from_the_docstring_and_choices_given_by_the_caller():
    options = ConfigOptions(Documented, choices={"mode": ("x", "y")})
    parser = argparse.ArgumentParser(exit_on_error=False)
    options.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "optimizer steps of the run (default: 1)" in text and "the SGD recipe (default: 0.9)" in text
    with pytest.raises(argparse.ArgumentError, match="--mode"):
        parser.parse_args(["--mode", "z"])
