"""``python -m jaxsparse``: evaluate, compress and co-design CIFAR CNNs."""

from runkit.cli import run_subcommands

COMMANDS = {
    "evaluate": "jaxsparse.cli.evaluate",
    "compress": "jaxsparse.cli.compress",
    "codesign": "jaxsparse.cli.codesign",
}


def main(argv=None) -> int:
    return run_subcommands("python -m jaxsparse", "PENNI-style CNN compression and its co-design with the accelerator model, in JAX.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
