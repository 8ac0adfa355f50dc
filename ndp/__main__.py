"""``python -m ndp``: recommendation-model training with near-data embeddings, and the system model."""

from runkit.cli import run_subcommands

COMMANDS = {
    "train": "ndp.cli.train",
    "simulate": "ndp.cli.simulate",
}


def main(argv=None) -> int:
    return run_subcommands("python -m ndp", "Near-data recommendation training and system model.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
