"""``python -m hwmodel report``: per-layer cycles and energy of every design for a workload.

Example:
    python -m hwmodel report --workload resnet56 --hardware my_design.toml --out runs/report/r56

Every field of :class:`ReportSettings` is an option. Writes ``report.json`` and ``energy.png``
into ``--out`` (default ``runs/report/<workload>``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from runkit import UsageError, atomic_write_json
from runkit.checks import check_file
from runkit.cli import add_common_options, check_common_options, default_out
from runkit.config_cli import ConfigOptions

DESCRIPTION = "Per-layer latency/energy of the ESCALATE-style design and the dense, SCNN-like and SparTen-like baselines."


def _models() -> tuple[str, ...]:
    from hwmodel.workload import MODELS

    return tuple(MODELS)


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """What ``python -m hwmodel report`` reports on.

    Attributes:
      workload: a JSON report with a 'layers' list (from the compression pipeline) or a model name.
      hardware: hardware config (.json or .toml); defaults are used for missing keys (none: all defaults).
    """

    workload: str = dataclasses.field(metadata={"metavar": "NAME|FILE.json"})
    hardware: Path | None = None

    def __post_init__(self):
        if self.workload not in _models():
            path = Path(self.workload)
            if not path.is_file() or path.suffix != ".json":
                raise UsageError(f"workload: expected a model name ({', '.join(_models())}) or an existing .json file, "
                                 f"got {self.workload!r}")  # fmt: skip
        if self.hardware is not None:
            check_file("hardware", self.hardware, (".json", ".toml"))

    @property
    def label(self) -> str:
        """The workload's short name: the model name or the file's stem."""
        return self.workload if self.workload in _models() else Path(self.workload).stem


OPTIONS = ConfigOptions(ReportSettings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    OPTIONS.add_arguments(parser)
    add_common_options(parser, out_default="runs/report/<workload>", shared=False, progress=False)


def run(args: argparse.Namespace) -> int:
    check_common_options(args)
    settings = OPTIONS.build(args)

    from hwmodel.hardware import load_hardware
    from hwmodel.report import build_report, format_table, plot_energy
    from hwmodel.workload import load_layers, model_layers

    if settings.workload in _models():
        layers = model_layers(settings.workload)
    else:
        layers = load_layers(Path(settings.workload))
    hw, options = load_hardware(settings.hardware)
    report = build_report(layers, hw, options)
    report["workload"] = settings.workload
    print(format_table(report))
    out = args.out if args.out is not None else default_out("report", settings.label)
    json_path = atomic_write_json(out / "report.json", report)
    png_path = plot_energy(report, out / "energy.png", title=f"{settings.label}: energy per inference")
    print(f"wrote {json_path} and {png_path}")
    return 0
