"""``python -m jaxsparse``: evaluate and compress CIFAR CNNs."""

from jaxsparse.common.cli import run_subcommands

COMMANDS = {
    "evaluate": "jaxsparse.cli.evaluate",
    "compress": "jaxsparse.cli.compress",
}


def main(argv=None) -> int:
    return run_subcommands("python -m jaxsparse", "PENNI-style CNN compression in JAX.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
