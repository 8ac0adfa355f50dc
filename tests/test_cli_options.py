"""Every option of every command, given an out-of-range or invalid value, stops the command with its name.

The options are read from the commands' own parsers, so an option added later is walked too.
The bad value is derived from the option: a value outside ``choices``, ``-1`` for numbers and
lists of numbers, a path that does not exist (a file where a folder is expected), an explicit
argument to a ``--x/--no-x`` switch. Each command runs in-process and must fail before it loads
data or compiles anything, so the whole walk takes seconds.
"""

from __future__ import annotations

import argparse
import importlib
import time

import pytest

import hwmodel.__main__
import jaxsparse.__main__
import ndp.__main__

PROGRAMS = {"jaxsparse": jaxsparse.__main__, "hwmodel": hwmodel.__main__, "ndp": ndp.__main__}
#: Arguments each command needs besides the option under test.
REQUIRED = {("hwmodel", "report"): ["--workload", "resnet20"]}
#: Text options whose bad value is a word rather than a path.
WORDS = {"--workload", "--tables", "--bag-length", "--config", "--data"}
#: Options that name a folder to write: the bad value is an existing file.
FOLDERS = {"--out", "--cache-dir"}


def commands():
    for program, module in PROGRAMS.items():
        for command, path in module.COMMANDS.items():
            yield program, command, path


def actions(module_path: str) -> list[argparse.Action]:
    parser = argparse.ArgumentParser()
    importlib.import_module(module_path).add_arguments(parser)
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def bad_argv(action: argparse.Action, tmp_path) -> list[str]:
    option = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [f"{option}=maybe"]
    if action.choices is not None:
        return [option, "not-a-choice"]
    if option in FOLDERS:
        existing = tmp_path / "a_file"
        existing.write_text("x")
        return [option, str(existing)]
    if action.metavar in ("N", "X", "A,B,..."):
        return [option, "-1"]
    if option in WORDS and option != "--data":
        return [option, "no-such-thing"]
    return [option, str(tmp_path / "does-not-exist")]


CASES = [(program, command, path, action.option_strings[0]) for program, command, path in commands() for action in actions(path)]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("JAXSPARSE_CIFAR10", "NDP_ML100K"):
        monkeypatch.delenv(name, raising=False)


def test_every_command_is_walked():
    walked = {(program, command) for program, command, _, _ in CASES}
    assert walked == {(p, c) for p, c, _ in commands()}
    assert len(CASES) > 100  # the generated options of all six commands


@pytest.mark.parametrize("program, command, path, option", CASES, ids=[f"{p}-{c}-{o}" for p, c, _, o in CASES])
def test_a_bad_value_is_refused_quickly_and_named(program, command, path, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written into the repository
    action = next(a for a in actions(path) if a.option_strings[0] == option)
    argv = [command, *REQUIRED.get((program, command), []), *bad_argv(action, tmp_path)]
    started = time.perf_counter()
    try:
        status = PROGRAMS[program].main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        status = exit_info.code
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert status not in (0, None), f"{program} {' '.join(argv)} succeeded"
    assert option in err or any(o in err for o in action.option_strings), f"{program} {' '.join(argv)}: {err[-500:]}"
    assert "Traceback" not in err
    assert elapsed < 5.0, f"{program} {' '.join(argv)} took {elapsed:.1f} s"
    assert not (tmp_path / "runs").exists()
