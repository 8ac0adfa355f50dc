"""``python -m ndp train``: DLRM training with embedding tables sharded over storage devices.

Examples::

    python -m ndp train --data ml-100k --split u1 --devices 8 --sharding rw
    python -m ndp train --data synthetic --tables criteo-kaggle --row-cap 100000 --steps 200 --batch-size 2048
    python -m ndp train --data day_0.tsv --hash-rows 1000000 --steps 10000

``--data`` is the data set: ``ml-100k`` (the folder from ``$NDP_ML100K`` or
``<shared>/data/ml-100k``), a MovieLens-100k folder, ``synthetic``, or a Criteo TSV file.
Every field of :class:`~ndp.trainer.TrainOptions` is an option; ``--preset`` picks one of
:data:`~ndp.trainer.PRESETS` (default: the one of the data set and model) and the options
given override it. Without ``--steps``, MovieLens trains ``--epochs`` epochs and a Criteo file
one pass; without ``--eval-every``, it evaluates 10 (MovieLens) or 5 times.

Writes ``<out>/<model>/{checkpoints/, metrics.json, learning_curve.png}`` (``--out`` default
``runs/train``) and resumes from the latest checkpoint when run again with the same ``--out``
(also with other ``--devices`` or ``--sharding``, or another process count; see
:mod:`ndp.checkpoint`). The last line printed is the final test metric: ``test RMSE: <value>``
(ratings) or ``test AUC: <value>`` (clicks).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

from runkit import MissingFileError, UsageError, atomic_write_json, check_choice, check_positive, find_shared_root
from runkit.cli import add_common_options, check_common_options, default_out
from runkit.config_cli import ConfigOptions
from ndp.configs import INTERACTIONS
from ndp.data.movielens import SPLITS, TASKS
from ndp.embedding import OPTIMIZERS, POOLINGS, SHARDING_KINDS
from ndp.trainer import PRESETS, TrainOptions

DESCRIPTION = "Train a DLRM (or matrix factorisation) with embedding tables sharded over a 'storage' device mesh."
ML100K_ENV = "NDP_ML100K"
DATA_NAMES = ("ml-100k", "synthetic")
#: Options that only one kind of data set uses (given with another, they are an error, not ignored).
KIND_OPTIONS = {
    "ml-100k": ("split", "task", "epochs", "baseline"),
    "synthetic": ("tables", "row_cap", "scale", "zipf", "bag_length"),
    "criteo-tsv": ("hash_rows", "eval_lines"),
}


def data_kind(data: str) -> str:
    """``ml-100k``, ``synthetic`` or ``criteo-tsv`` for a ``--data`` value (a name, a folder or a file)."""
    if data in DATA_NAMES:
        return data
    path = Path(data)
    if path.is_dir():
        return "ml-100k"
    if path.is_file():
        return "criteo-tsv"
    raise MissingFileError(f"--data: expected {' or '.join(DATA_NAMES)}, a MovieLens-100k folder or a Criteo TSV file, "
                           f"got {data!r}, which does not exist")  # fmt: skip


def bag_lengths(text: str) -> tuple[int, int]:
    """``"1:4"`` -> ``(1, 4)``; a :class:`~runkit.UsageError` naming ``bag_length`` otherwise."""
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(f"bag_length: expected MIN:MAX (e.g. 1:4), got {text!r}") from None
    if not 0 <= lo <= hi:
        raise UsageError(f"bag_length: expected 0 <= MIN <= MAX, got {text!r}")
    return lo, hi


def table_rows(text: str) -> tuple[int, ...] | None:
    """``"criteo-kaggle"`` -> ``None`` (the Criteo Kaggle sizes); ``"50,30"`` -> ``(50, 30)``."""
    if text == "criteo-kaggle":
        return None
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"tables: expected 'criteo-kaggle' or comma-separated row counts, got {text!r}") from None
    for rows in sizes:
        check_positive("tables", rows)
    return sizes


@dataclasses.dataclass(frozen=True)
class TrainData:
    """The data set and model of ``python -m ndp train``.

    Attributes:
      data: ml-100k, synthetic, a MovieLens-100k folder or a Criteo TSV file.
      split: MovieLens split.
      task: MovieLens target: rating (RMSE) or rating>=4 (AUC).
      epochs: epochs over MovieLens when --steps is not given.
      baseline: also train biased matrix factorisation on MovieLens ratings (none: on for DLRM on ratings).
      tables: synthetic tables: 'criteo-kaggle' or comma-separated row counts.
      row_cap: largest table of the criteo-kaggle sizes.
      scale: scale factor of the criteo-kaggle sizes.
      zipf: synthetic index skew exponent.
      bag_length: synthetic bag lengths MIN:MAX (1:1: one-hot).
      hash_rows: Criteo TSV: rows per table (hashing).
      eval_lines: Criteo TSV: last lines held out for testing (none: the loader's default).
      model: dlrm or mf (biased matrix factorisation).
    """

    data: str = "ml-100k"
    split: str = dataclasses.field(default="u1", metadata={"choices": SPLITS})
    task: str = dataclasses.field(default="rating", metadata={"choices": TASKS})
    epochs: float = 10.0
    baseline: bool | None = None
    tables: str = "criteo-kaggle"
    row_cap: int = 100_000
    scale: float = 1.0
    zipf: float = 0.9
    bag_length: str = "1:1"
    hash_rows: int = 1_000_000
    eval_lines: int | None = None
    model: str = dataclasses.field(default="dlrm", metadata={"choices": ("dlrm", "mf")})

    def __post_init__(self):
        check_choice("split", self.split, SPLITS)
        check_choice("task", self.task, TASKS)
        check_choice("model", self.model, ("dlrm", "mf"))
        for name in ("epochs", "row_cap", "scale", "hash_rows"):
            check_positive(name, getattr(self, name))
        check_positive("zipf", self.zipf, allow_zero=True)
        if self.eval_lines is not None:
            check_positive("eval_lines", self.eval_lines)
        bag_lengths(self.bag_length)
        table_rows(self.tables)


@dataclasses.dataclass(frozen=True)
class TrainCommand:
    """Everything ``python -m ndp train`` is told: the data set and model, and how to train."""

    data: TrainData = TrainData()
    options: TrainOptions = TrainOptions()


def _default_preset(args: argparse.Namespace) -> str:
    kind = data_kind(getattr(args, "data", TrainData.data))
    return f"ml-100k-{getattr(args, 'model', TrainData.model)}" if kind == "ml-100k" else kind


#: ``--preset`` names: the trainer's presets, each with its data set and model (a Criteo file is named by ``--data``).
COMMAND_PRESETS = {
    "ml-100k-dlrm": TrainCommand(TrainData(), PRESETS["ml-100k-dlrm"]),
    "ml-100k-mf": TrainCommand(TrainData(model="mf"), PRESETS["ml-100k-mf"]),
    "synthetic": TrainCommand(TrainData(data="synthetic"), PRESETS["synthetic"]),
    "criteo-tsv": TrainCommand(TrainData(), PRESETS["criteo-tsv"]),
}
OPTIONS = ConfigOptions(TrainCommand, COMMAND_PRESETS, default_preset=_default_preset, exclude=("out_dir", "progress"),
                        choices={"sharding": SHARDING_KINDS, "optimizer": OPTIMIZERS, "pooling": POOLINGS, "interaction": INTERACTIONS})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    OPTIONS.add_arguments(parser)
    add_common_options(parser, out_default="runs/train; rerun to resume")


def _check_devices(count: int | None) -> None:
    import jax

    if count is not None and len(jax.devices()) < count:
        raise UsageError(f"--devices: expected at most the {len(jax.devices())} available devices, got {count}")


def _prepare_devices(count: int | None) -> None:
    """Emulate ``count`` CPU devices when no backend has started yet (the usual CLI case)."""
    import jax

    if count is None:
        return
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized() and os.environ.get("JAX_PLATFORMS", "cpu") in ("", "cpu"):
        jax.config.update("jax_num_cpu_devices", max(count, 1))


def _ml100k_path(data: str, shared) -> str:
    if data != "ml-100k":
        return data
    if os.environ.get(ML100K_ENV):
        return os.environ[ML100K_ENV]
    return str(find_shared_root(shared) / "data" / "ml-100k")


def run(args: argparse.Namespace) -> int:
    check_common_options(args)
    out = args.out if args.out is not None else default_out("train")
    command = OPTIONS.build(args, out_dir=str(out), progress=args.progress)
    job, base = command.data, command.options
    kind = data_kind(job.data)
    given = OPTIONS.given(args)
    for other, names in KIND_OPTIONS.items():
        for name in names:
            if name in given and other != kind:
                raise UsageError(f"--{name.replace('_', '-')}: only used with {other} data, but --data is {job.data!r} ({kind})")
    if "steps" in given and "epochs" in given:
        raise UsageError(f"--epochs: expected either --steps or --epochs, got --steps {base.steps} and --epochs {job.epochs}")
    _prepare_devices(base.devices)
    from ndp.configs import criteo_kaggle_table_sizes
    from ndp.data.synthetic import SyntheticConfig
    from ndp.trainer import SyntheticSource, dump, fit, metric_line, movielens_source

    _check_devices(base.devices)
    batch = base.batch_size
    runs = []  # (model, source, options)
    if kind == "ml-100k":
        from ndp.data.movielens import load_movielens

        data = load_movielens(_ml100k_path(job.data, args.shared), split=job.split, task=job.task)
        steps = base.steps if "steps" in given else max(1, math.ceil(job.epochs * data.train.labels.shape[0] / batch))
        base = dataclasses.replace(base, steps=steps, eval_every=base.eval_every if "eval_every" in given else max(1, steps // 10))
        baseline = job.baseline if job.baseline is not None else (job.task == "rating" and job.model == "dlrm")
        if baseline:  # the baseline keeps its own settings; it shares the run's schedule and machine
            shared = ("steps", "batch_size", "eval_every", "devices", "sharding", "optimizer", "seed", "out_dir",
                      "checkpoint_every", "resume", "progress")  # fmt: skip
            mf = dataclasses.replace(PRESETS["ml-100k-mf"], **{k: getattr(base, k) for k in shared})
            runs.append(("mf", movielens_source(data, "mf", seed=base.seed), mf))
        runs.append((job.model, movielens_source(data, job.model, seed=base.seed), base))
    elif kind == "synthetic":
        sizes = table_rows(job.tables) or criteo_kaggle_table_sizes(row_cap=job.row_cap, scale=job.scale)
        lo, hi = bag_lengths(job.bag_length)
        config = SyntheticConfig(sizes, batch_size=batch, zipf_exponent=job.zipf, min_bag_length=lo, max_bag_length=hi, seed=base.seed)
        if "eval_every" not in given:
            base = dataclasses.replace(base, eval_every=max(1, base.steps // 5))
        runs.append((job.model, SyntheticSource(config), base))
    else:
        from ndp.data.criteo import CriteoTSVSource

        source = CriteoTSVSource(job.data, (job.hash_rows,) * 26, eval_lines=job.eval_lines)
        steps = base.steps if "steps" in given else max(1, source.train_lines // batch)
        base = dataclasses.replace(base, steps=steps, eval_every=base.eval_every if "eval_every" in given else max(1, steps // 5))
        runs.append((job.model, source, base))

    results = []
    for model, source, options in runs:
        result = fit(model, source, options)
        print(result["plan_text"])
        print(f"{model}: {dump(result)}")
        results.append(result)
    summary = {r["model"]: r["final"] for r in results}
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    for r in results[:-1]:
        label = "biased matrix factorisation (baseline)" if r["model"] == "mf" else r["model"]
        print(f"{label}: {metric_line(r)}")
    label = "biased matrix factorisation" if results[-1]["model"] == "mf" else "DLRM"
    print(f"{label}: {metric_line(results[-1])}")
    print(metric_line(results[-1]))
    return 0
