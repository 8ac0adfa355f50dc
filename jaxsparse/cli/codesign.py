"""``python -m jaxsparse codesign``: hardware-aware compression vs the uniform PENNI rule, plus joint hardware search.

Every field of :class:`~jaxsparse.codesign.experiment.CodesignConfig` is an option;
``--preset quick|full`` picks a named configuration (:data:`~jaxsparse.codesign.experiment.PRESETS`)
that the other options override. ``--data`` and ``--shared`` mean what they mean for
``compress`` and ``evaluate`` (:func:`jaxsparse.userfiles.resolve_data`): the CIFAR-10 folder,
else ``$JAXSPARSE_CIFAR10``, else ``<shared>/data/cifar10-jpeg``; the pretrained weights come
from ``<shared>/models/cifar10-resnet``.

Example:
    python -m jaxsparse codesign --model resnet20 --preset quick --out runs/codesign/quick
    python -m jaxsparse codesign --preset quick --data cifar-10-batches-py --shared /data/shared
    python -m jaxsparse codesign --model resnet20 --cost-weights 0.25,1 --uniform-thresholds 0.6,1.0,1.4 --hardware my_design.toml
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from runkit import atomic_write_json
from runkit.checks import check_file
from runkit.cli import add_common_options, check_common_options, default_out
from runkit.config_cli import ConfigOptions
from jaxsparse.userfiles import DATA_HELP, check_data_folder, check_weights_file, resolve_data, resolve_weights

DESCRIPTION = "Co-design on CIFAR: hardware-aware per-layer pruning vs uniform PENNI thresholds, and iso-area accelerator search."
DEFAULT_PRESET = "full"


def options() -> ConfigOptions:
    """The generated options of :class:`~jaxsparse.codesign.experiment.CodesignConfig` with its presets."""
    from jaxsparse.codesign.experiment import METRICS, PRESETS, CodesignConfig
    from jaxsparse.userfiles import PRETRAINED_NAMES

    return ConfigOptions(CodesignConfig, PRESETS, default_preset=DEFAULT_PRESET,
                         choices={"model": PRETRAINED_NAMES, "metric": METRICS})  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options().add_arguments(parser)
    parser.add_argument("--hardware", type=Path, default=None, help="base design (.json/.toml); also the area budget of the search")
    add_common_options(parser, out_default="runs/codesign/<model>-<preset>; rerun to resume", data_help=DATA_HELP)


def config_from_args(args: argparse.Namespace):
    """The :class:`~jaxsparse.codesign.experiment.CodesignConfig` the options describe."""
    return options().build(args)


def run(args: argparse.Namespace) -> int:
    check_common_options(args)
    config = config_from_args(args)
    if args.hardware is not None:
        check_file("--hardware", args.hardware, (".json", ".toml"))
    # The user's files are checked before JAX starts: a wrong path is reported at once.
    data_path = check_data_folder(resolve_data(args.data, args.shared))
    check_weights_file(resolve_weights(config.model, None, args.shared), config.model, option="pretrained weights")
    from jaxsparse.codesign.experiment import condensed, format_table, run_codesign

    preset = options().preset_name(args)
    out = args.out if args.out is not None else default_out("codesign", f"{config.model}-{preset}")
    state = run_codesign(config, out, hardware=args.hardware, data=data_path, shared_root=args.shared, progress=args.progress)
    print(format_table(state))
    atomic_write_json(out / "summary.json", {"config": dataclasses.asdict(config), "summary": state["summary"]})
    atomic_write_json(out / "results_condensed.json", condensed(state))
    print(f"wrote {out / 'results.json'}, {out / 'summary.json'} and plots in {out}")
    return 0
