"""``python -m ndp train``: DLRM training with embedding tables sharded over storage devices.

Examples::

    python -m ndp train --data ml-100k --split u1 --devices 8 --sharding rw
    python -m ndp train --data synthetic --tables criteo-kaggle --row-cap 100000 --steps 200 --batch-size 2048
    python -m ndp train --data day_0.tsv --hash-rows 1000000 --steps 10000

``--data`` is the data set: ``ml-100k`` (the folder from ``$NDP_ML100K`` or
``<shared>/data/ml-100k``: :func:`ndp.data.movielens.movielens_root`), a MovieLens-100k folder,
``synthetic``, or a Criteo TSV file. Every field of :class:`~ndp.presets.TrainCommand` is an
option; ``--preset`` picks one of :data:`ndp.presets.PRESETS` (default: the one of the data set
and model; a preset for another kind of data set is refused) and the options given override it.
Without ``--steps``, training runs ``--epochs`` passes over the data (MovieLens presets: 10, a
Criteo file: 1; synthetic data needs ``--steps``) and, without ``--eval-every``, evaluates
``--evaluations`` times (:func:`ndp.trainer.schedule`).

Writes ``<out>/<model>/{checkpoints/, metrics.json, learning_curve.png}`` (``--out`` default
``runs/train``) and resumes from the latest checkpoint when run again with the same ``--out``
(also with other ``--devices`` or ``--sharding``, or another process count; see
:mod:`ndp.checkpoint`). The last line printed is the final test metric: ``test RMSE: <value>``
(ratings) or ``test AUC: <value>`` (clicks).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from runkit import UsageError, atomic_write_json
from runkit.cli import add_common_options, check_common_options, default_out
from runkit.config_cli import ConfigOptions, flag
from ndp.configs import INTERACTIONS
from ndp.embedding import OPTIMIZERS, POOLINGS, SHARDING_KINDS
from ndp.presets import KIND_OPTIONS, PRESETS, TrainCommand, bag_lengths, check_preset_data, default_preset, table_rows

DESCRIPTION = "Train a DLRM (or matrix factorisation) with embedding tables sharded over a 'storage' device mesh."
OPTIONS = ConfigOptions(TrainCommand, PRESETS, exclude=("out_dir", "progress"),
                        default_preset=lambda args: default_preset(**{k: getattr(args, k) for k in ("data", "model") if hasattr(args, k)}),
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


def run(args: argparse.Namespace) -> int:
    check_common_options(args)
    out = args.out if args.out is not None else default_out("train")
    command = OPTIONS.build(args, out_dir=str(out), progress=args.progress)
    job, base = command.data, command.options
    kind = check_preset_data(OPTIONS.preset_name(args), job.data)
    given = OPTIONS.given(args)
    for name, kinds in KIND_OPTIONS.items():
        if name in given and kind not in kinds:
            raise UsageError(f"{flag(name)}: only used with {' or '.join(kinds)} data, but --data is {job.data!r} ({kind})")
    for count, every in (("steps", "epochs"), ("eval_every", "evaluations")):
        if count in given and every in given:
            raise UsageError(f"{flag(every)}: expected either {flag(count)} or {flag(every)}, got both")
    _prepare_devices(base.devices)
    from ndp.configs import DLRMV2_POOLING_FACTORS, criteo_kaggle_table_sizes, dlrmv2_table_sizes
    from ndp.data.synthetic import SyntheticConfig
    from ndp.trainer import SyntheticSource, dump, fit, metric_line, movielens_source, schedule

    _check_devices(base.devices)
    runs = []  # (model, source, options)
    if kind == "ml-100k":
        from ndp.data.movielens import load_movielens, movielens_root

        root = movielens_root(args.shared) if job.data == "ml-100k" else job.data
        data = load_movielens(root, split=job.split, task=job.task)
        baseline = job.baseline if job.baseline is not None else (job.task == "rating" and job.model == "dlrm")
        if baseline:  # the baseline keeps its own settings; it shares the run's schedule and machine
            shared = ("steps", "epochs", "batch_size", "eval_every", "evaluations", "devices", "sharding", "optimizer",
                      "seed", "out_dir", "checkpoint_every", "resume", "progress")  # fmt: skip
            mf = dataclasses.replace(PRESETS["ml-100k-mf"].options, **{k: getattr(base, k) for k in shared})
            runs.append(("mf", movielens_source(data, "mf", seed=base.seed), mf))
        runs.append((job.model, movielens_source(data, job.model, seed=base.seed), base))
    elif kind == "synthetic":
        sizes = table_rows(job.tables)
        pooling = None
        if sizes is None and job.tables == "dlrmv2":
            sizes = dlrmv2_table_sizes(row_cap=job.row_cap, scale=job.scale)
            pooling = DLRMV2_POOLING_FACTORS if job.bag_length is None else None
        elif sizes is None:
            sizes = criteo_kaggle_table_sizes(row_cap=job.row_cap, scale=job.scale)
        lo, hi = bag_lengths(job.bag_length) if job.bag_length is not None else (1, 1)
        config = SyntheticConfig(sizes, batch_size=base.batch_size, zipf_exponent=job.zipf, min_bag_length=lo,
                                 max_bag_length=hi, pooling_factors=pooling, seed=base.seed)  # fmt: skip
        runs.append((job.model, SyntheticSource(config), base))
    else:
        from ndp.data.criteo import CriteoTSVSource

        runs.append((job.model, CriteoTSVSource(job.data, (job.hash_rows,) * 26, eval_lines=job.eval_lines), base))

    try:  # steps and evaluations now, so a missing --steps stops the command before any training
        runs = [(model, source, schedule(options, getattr(source, "train_examples", None))) for model, source, options in runs]
    except UsageError as error:
        raise UsageError(OPTIONS.reword(str(error))) from None
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
