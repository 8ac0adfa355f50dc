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
