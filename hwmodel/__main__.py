"""``python -m hwmodel``: accelerator cost reports."""

from runkit.cli import run_subcommands

COMMANDS = {
    "report": "hwmodel.cli.report",
}


def main(argv=None) -> int:
    return run_subcommands("python -m hwmodel", "ESCALATE-style accelerator model in JAX.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
