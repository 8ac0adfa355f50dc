"""A tiny sub-command dispatcher shared by ``python -m jaxsparse|hwmodel|ndp``.

Each sub-command lives in its own module exposing

* ``DESCRIPTION: str`` — one line for ``--help``;
* ``add_arguments(parser: argparse.ArgumentParser) -> None``;
* ``run(args: argparse.Namespace) -> int | None`` — the exit status.

Modules are imported only when their sub-command runs, so ``--help`` stays fast and a
broken optional sub-command cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from runkit.checks import UsageError


def run_subcommands(prog: str, description: str, commands: Mapping[str, str], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` as ``prog <command> [options]`` and run the chosen command module.

    Args:
      prog: program name shown in help (e.g. ``"python -m jaxsparse"``).
      description: one paragraph for the top-level help.
      commands: sub-command name -> module path (``"jaxsparse.cli.evaluate"``).
      argv: arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
      The command's exit status (0 on success).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in commands else None
    modules = {}
    for name, module_path in commands.items():
        if name == chosen:
            module = importlib.import_module(module_path)
            modules[name] = module
            sp = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
            module.add_arguments(sp)
        else:
            sub.add_parser(name, help=f"(see '{prog} {name} --help')", add_help=False)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        status = modules[args.command].run(args)
    except KeyboardInterrupt:
        print(f"\n{prog} {args.command}: interrupted; completed work is kept in its checkpoints.", file=sys.stderr)
        return 130
    except UsageError as error:
        print(f"{prog} {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0 if status is None else int(status)


#: Every default output folder lies under this folder of the current directory.
RUNS_DIR = Path("runs")


def default_out(command: str, *parts: str) -> Path:
    """The default output folder of a command: ``runs/<command>/<parts...>``.

    Example:
        >>> default_out("compress", "resnet20").as_posix()
        'runs/compress/resnet20'
    """
    return RUNS_DIR.joinpath(command, *parts)


def add_common_options(parser: argparse.ArgumentParser, *, out_default: str, data_help: str | None = None,
                       shared: bool = True, progress: bool = True) -> None:  # fmt: skip
    """The options that mean the same in every command: ``--data``, ``--shared``, ``--out``, ``--progress``.

    * ``--data``: which data set to use, a kind or a path (``data_help`` says which, per command);
    * ``--shared``: the shared data/model folder (default ``$JAXSPARSE_SHARED`` or ``../shared``);
    * ``--out``: the output folder (default ``out_default``, under ``runs/``);
    * ``--progress/--no-progress``: progress bars (plain lines when stderr is not a terminal).

    Check them with :func:`check_common_options` before any heavy work.
    """
    if data_help is not None:
        parser.add_argument("--data", default=None, help=data_help)
    if shared:
        parser.add_argument("--shared", type=Path, default=None, help="shared data/model folder (default: $JAXSPARSE_SHARED or ../shared)")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: {out_default})")
    if progress:
        parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                            help="progress bars; plain lines when stderr is not a terminal (default: on)")  # fmt: skip


def check_common_options(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for a ``--shared`` folder that does not exist or an ``--out`` that is a file."""
    from runkit.checks import MissingFileError

    shared = getattr(args, "shared", None)
    if shared is not None and not Path(shared).is_dir():
        raise MissingFileError(f"--shared: expected an existing folder, got {str(shared)!r}")
    out = getattr(args, "out", None)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out: expected a folder (or a path to create one at), got the file {str(out)!r}")
