"""The job of ``python -m ndp train`` as one frozen config, and its named presets.

A :class:`TrainCommand` is the data set and model (:class:`TrainData`) plus how to train
(:class:`~ndp.trainer.TrainOptions`); :data:`PRESETS` names the tuned ones. Each preset is for
one kind of data set (:func:`data_kind`): ``ml-100k-dlrm`` and ``ml-100k-mf`` for MovieLens,
``synthetic`` for the generator, ``criteo-tsv`` for a Criteo file, which the preset cannot name
(its ``data`` is ``None``: the user gives it). :func:`check_preset_data` refuses a preset used
with another kind of data set.

Example:
    >>> PRESETS["ml-100k-mf"].data.model, PRESETS["ml-100k-mf"].options.epochs
    ('mf', 10.0)
    >>> data_kind("synthetic"), preset_kind("criteo-tsv")
    ('synthetic', 'criteo-tsv')
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runkit import MissingFileError, UsageError, check_choice, check_positive
from ndp.data.movielens import SPLITS, TASKS
from ndp.trainer import MODELS, TrainOptions

DATA_NAMES = ("ml-100k", "synthetic")
DATA_KINDS = ("ml-100k", "synthetic", "criteo-tsv")
#: Options only some kinds of data set use (given with another, they are an error, not ignored).
KIND_OPTIONS = {
    "split": ("ml-100k",), "task": ("ml-100k",), "baseline": ("ml-100k",),
    "epochs": ("ml-100k", "criteo-tsv"),
    "tables": ("synthetic",), "row_cap": ("synthetic",), "scale": ("synthetic",), "zipf": ("synthetic",),
    "bag_length": ("synthetic",),
    "hash_rows": ("criteo-tsv",), "eval_lines": ("criteo-tsv",),
}  # fmt: skip


def data_kind(data: str | None) -> str:
    """``ml-100k``, ``synthetic`` or ``criteo-tsv`` for a ``data`` value (a name, a folder or a file).

    Raises:
      UsageError: ``data`` is ``None``; MissingFileError: a path that does not exist.
    """
    if data is None:
        raise UsageError(f"--data: expected {' or '.join(DATA_NAMES)}, a MovieLens-100k folder or a Criteo TSV or CSV file, got none")
    if data in DATA_NAMES:
        return data
    path = Path(data)
    if path.is_dir():
        return "ml-100k"
    if path.is_file():
        return "criteo-tsv"
    raise MissingFileError(f"--data: expected {' or '.join(DATA_NAMES)}, a MovieLens-100k folder or a Criteo TSV or CSV file, "
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


#: ``--tables`` names of built-in table sets.
TABLE_SETS = ("criteo-kaggle", "dlrmv2")


def table_rows(text: str) -> tuple[int, ...] | None:
    """``"criteo-kaggle"`` or ``"dlrmv2"`` -> ``None`` (a built-in set); ``"50,30"`` -> ``(50, 30)``."""
    if text in TABLE_SETS:
        return None
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"tables: expected one of {', '.join(TABLE_SETS)} or comma-separated row counts, got {text!r}") from None
    for rows in sizes:
        check_positive("tables", rows)
    return sizes


@dataclasses.dataclass(frozen=True)
class TrainData:
    """The data set and model of ``python -m ndp train``.

    Attributes:
      data: ml-100k, synthetic, a MovieLens-100k folder or a Criteo TSV file (none: not set; the criteo-tsv preset needs --data).
      split: MovieLens split.
      task: MovieLens target: rating (RMSE) or rating>=4 (AUC).
      baseline: also train biased matrix factorisation on MovieLens ratings (none: on for DLRM on ratings).
      tables: synthetic tables: 'criteo-kaggle', 'dlrmv2' (MLPerf DLRMv2's tables, multi-hot) or comma-separated row counts.
      row_cap: largest table of the criteo-kaggle or dlrmv2 sizes.
      scale: scale factor of the criteo-kaggle or dlrmv2 sizes.
      zipf: synthetic index skew exponent.
      bag_length: synthetic bag lengths MIN:MAX (none: the tables' own, one-hot except dlrmv2's multi-hot sizes, each table's lengths uniform around its mean).
      hash_rows: Criteo TSV: rows per table (hashing).
      eval_lines: Criteo TSV: last lines held out for testing (none: the loader's default).
      model: dlrm or mf (biased matrix factorisation).
    """

    data: str | None = "ml-100k"
    split: str = dataclasses.field(default="u1", metadata={"choices": SPLITS})
    task: str = dataclasses.field(default="rating", metadata={"choices": TASKS})
    baseline: bool | None = None
    tables: str = "criteo-kaggle"
    row_cap: int = 100_000
    scale: float = 1.0
    zipf: float = 0.9
    bag_length: str | None = None
    hash_rows: int = 1_000_000
    eval_lines: int | None = None
    model: str = dataclasses.field(default="dlrm", metadata={"choices": MODELS})

    def __post_init__(self):
        check_choice("split", self.split, SPLITS)
        check_choice("task", self.task, TASKS)
        check_choice("model", self.model, MODELS)
        for name in ("row_cap", "scale", "hash_rows"):
            check_positive(name, getattr(self, name))
        check_positive("zipf", self.zipf, allow_zero=True)
        if self.eval_lines is not None:
            check_positive("eval_lines", self.eval_lines)
        if self.bag_length is not None:
            bag_lengths(self.bag_length)
        table_rows(self.tables)


@dataclasses.dataclass(frozen=True)
class TrainCommand:
    """Everything ``python -m ndp train`` is told: the data set and model, and how to train."""

    data: TrainData = TrainData()
    options: TrainOptions = TrainOptions()


#: The MovieLens settings were chosen on the u1 split (10 epochs of batch 256, 10 evaluations).
_MOVIELENS = dict(batch_size=256, epochs=10.0, evaluations=10, embedding_l2=0.1)

#: ``--preset`` names (the default follows ``--data`` and ``--model``: :func:`default_preset`).
PRESETS = {
    "ml-100k-dlrm": TrainCommand(TrainData(), TrainOptions(**_MOVIELENS, embedding_dim=8, embedding_lr=0.03, dense_lr=3e-4,
                                                           pooling="mean", interaction="dot_cat", top_mlp=(128, 64, 1))),
    "ml-100k-mf": TrainCommand(TrainData(model="mf"), TrainOptions(**_MOVIELENS, embedding_dim=33, embedding_lr=0.1, pooling="sum")),
    "synthetic": TrainCommand(TrainData(data="synthetic"), TrainOptions(steps=1000, batch_size=2048, embedding_lr=0.05)),
    # MLPerf Training's DLRMv2 (ndp.configs.dlrmv2_config) on generated multi-hot bags; --row-cap sizes it to the machine.
    "synthetic-dlrmv2": TrainCommand(TrainData(data="synthetic", tables="dlrmv2"),
                                     TrainOptions(steps=1000, batch_size=2048, embedding_dim=128, bottom_mlp=(512, 256, 128),
                                                  top_mlp=(1024, 1024, 512, 256, 1), interaction="dcn", cross_layers=3,
                                                  cross_rank=512, pooling="sum", optimizer="rowwise_adagrad", embedding_lr=0.005)),
    "criteo-tsv": TrainCommand(TrainData(data=None), TrainOptions(batch_size=2048, embedding_lr=0.05)),
}  # fmt: skip


def preset_kind(name: str) -> str:
    """The kind of data set preset ``name`` is for."""
    check_choice("preset", name, tuple(PRESETS))
    return "ml-100k" if name.startswith("ml-100k") else "synthetic" if name.startswith("synthetic") else name


def default_preset(data: str | None = TrainData.data, model: str = TrainData.model) -> str:
    """The preset of a data set and model: ``ml-100k-<model>``, ``synthetic`` or ``criteo-tsv``."""
    kind = data_kind(data)
    return f"ml-100k-{model}" if kind == "ml-100k" else kind


def check_preset_data(preset: str, data: str | None) -> str:
    """Refuse a preset used with a data set of another kind; returns the data set's kind.

    Raises:
      UsageError: naming ``--data`` (none given for a preset without a data set) or ``--preset``.
    """
    expected = preset_kind(preset)
    if data is None:
        raise UsageError(f"--data: preset {preset!r} expects a {expected} data set, got none (give --data)")
    kind = data_kind(data)
    if kind != expected:
        matching = [name for name in PRESETS if preset_kind(name) == kind]
        raise UsageError(f"--preset: expected a preset for {kind} data ({', '.join(matching)}) with --data {data!r}, "
                         f"got {preset!r}, which is for {expected} data")  # fmt: skip
    return kind
