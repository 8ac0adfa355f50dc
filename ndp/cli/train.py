"""``python -m ndp train``: DLRM training with embedding tables sharded over storage devices.

Examples::

    python -m ndp train --data ml-100k --split u1 --devices 8 --sharding rw
    python -m ndp train --data synthetic --tables criteo-kaggle --row-cap 100000 --steps 200 --batch-size 2048
    python -m ndp train --data criteo-tsv day_0.tsv --hash-rows 1000000 --steps 10000

Writes ``<out>/<model>/{checkpoints/, metrics.json, learning_curve.png}`` and resumes
from the latest checkpoint when run again with the same ``--out`` (also with other
``--devices`` or ``--sharding``, or another process count; see :mod:`ndp.checkpoint`).
The last line printed is the final test metric: ``test RMSE: <value>`` (ratings) or
``test AUC: <value>`` (clicks).
"""

from __future__ import annotations

import argparse
import math
import os

from runkit import UsageError, atomic_write_json, check_positive, find_shared_root

DESCRIPTION = "Train a DLRM (or matrix factorisation) with embedding tables sharded over a 'storage' device mesh."
DATA_KINDS = ("ml-100k", "synthetic", "criteo-tsv")
ML100K_ENV = "NDP_ML100K"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", choices=DATA_KINDS, default="ml-100k", help="data source (default: ml-100k)")
    data.add_argument("path", nargs="?", default=None,
                      help=f"ml-100k folder (default: ${ML100K_ENV} or <shared>/data/ml-100k) or Criteo TSV file")  # fmt: skip
    data.add_argument("--shared", default=None, help="shared data folder (default: $JAXSPARSE_SHARED or ../shared)")
    data.add_argument("--split", default="u1", help="MovieLens split: u1..u5, ua, ub (default: u1)")
    data.add_argument("--task", choices=("rating", "click"), default="rating",
                      help="MovieLens target: rating (RMSE) or rating>=4 (AUC)")  # fmt: skip
    data.add_argument("--tables", default="criteo-kaggle",
                      help="synthetic tables: 'criteo-kaggle' or comma-separated row counts")  # fmt: skip
    data.add_argument("--row-cap", type=int, default=100_000, help="largest table for criteo-kaggle sizes")
    data.add_argument("--scale", type=float, default=1.0, help="scale factor of criteo-kaggle sizes")
    data.add_argument("--zipf", type=float, default=0.9, help="synthetic index skew exponent (default 0.9)")
    data.add_argument("--bag-length", default="1:1", help="synthetic bag lengths MIN:MAX (default 1:1, one-hot)")
    data.add_argument("--hash-rows", type=int, default=1_000_000, help="Criteo TSV: rows per table (hashing)")
    data.add_argument("--eval-lines", type=int, default=None, help="Criteo TSV: last lines held out for testing")

    model = parser.add_argument_group("model and training")
    model.add_argument("--model", choices=("dlrm", "mf"), default="dlrm")
    model.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                       help="also train biased matrix factorisation on ml-100k ratings (default: on there)")  # fmt: skip
    model.add_argument("--sharding", choices=("rw", "tw", "cw"), default="rw")
    model.add_argument("--devices", type=int, default=None, help="storage devices (default: all; CPU: emulated)")
    model.add_argument("--steps", type=int, default=None, help="training steps (default: from --epochs or 1000)")
    model.add_argument("--epochs", type=float, default=None, help="epochs over ml-100k (sets --steps)")
    model.add_argument("--batch-size", type=int, default=None, help="global batch (default 256; synthetic 2048)")
    model.add_argument("--eval-every", type=int, default=None, help="steps between evaluations")
    model.add_argument("--optimizer", choices=("sgd", "rowwise_adagrad"), default="rowwise_adagrad",
                       help="sparse optimizer of the tables")  # fmt: skip
    model.add_argument("--embedding-lr", type=float, default=None, help="table learning rate")
    model.add_argument("--dense-lr", type=float, default=None, help="Adam(W) learning rate of the MLPs")
    model.add_argument("--embedding-dim", type=int, default=None, help="table width (default 16)")
    model.add_argument("--embedding-l2", type=float, default=None, help="L2 weight on looked-up embeddings")
    model.add_argument("--pooling", choices=("sum", "mean"), default=None)
    model.add_argument("--interaction", choices=("dot", "cat", "dot_cat"), default=None)
    model.add_argument("--top-mlp", default=None, help="top MLP widths, e.g. 128,64,1")
    model.add_argument("--bottom-mlp", default=None, help="bottom MLP widths; the last is the table width")
    model.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("outputs")
    run.add_argument("--out", default="runs/ndp-train", help="folder for checkpoints, metrics and plots")
    run.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                     help="continue from the latest checkpoint in --out (default: yes; --no-resume deletes "
                          "the checkpoints there and starts over)")  # fmt: skip
    run.add_argument("--checkpoint-every", type=int, default=0, help="steps between extra checkpoints")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def _check_devices(count: int | None) -> None:
    import jax

    if count is not None and len(jax.devices()) < count:
        raise UsageError(f"devices: expected at most the {len(jax.devices())} available devices, got {count}")


def _prepare_devices(count: int | None) -> None:
    """Emulate ``count`` CPU devices when no backend has started yet (the usual CLI case)."""
    import jax

    if count is None:
        return
    check_positive("devices", count)
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized() and os.environ.get("JAX_PLATFORMS", "cpu") in ("", "cpu"):
        jax.config.update("jax_num_cpu_devices", max(count, 1))


def _ml100k_path(args) -> str:
    if args.path:
        return args.path
    if os.environ.get(ML100K_ENV):
        return os.environ[ML100K_ENV]
    return str(find_shared_root(args.shared) / "data" / "ml-100k")


def _bag_lengths(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(f"bag-length: expected MIN:MAX (e.g. 1:4), got {text!r}") from None
    return lo, hi


def _widths(name: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        widths = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{name}: expected comma-separated layer widths (e.g. 128,64,1), got {text!r}") from None
    for w in widths:
        check_positive(name, w)
    return widths


def run(args: argparse.Namespace) -> int:
    _prepare_devices(args.devices)
    from ndp.configs import criteo_kaggle_table_sizes
    from ndp.data.synthetic import SyntheticConfig
    from ndp.trainer import SyntheticSource, TrainOptions, dump, fit, metric_line, movielens_source

    _check_devices(args.devices)
    sources = []
    defaults: dict = {}
    if args.data == "ml-100k":
        from ndp.data.movielens import load_movielens

        data = load_movielens(_ml100k_path(args), split=args.split, task=args.task)
        baseline = args.baseline if args.baseline is not None else (args.task == "rating" and args.model == "dlrm")
        batch = args.batch_size or 256
        epochs = args.epochs if args.epochs is not None else 10.0
        steps = args.steps or max(1, math.ceil(epochs * data.train.labels.shape[0] / batch))
        defaults = dict(batch_size=batch, steps=steps, eval_every=args.eval_every or max(1, steps // 10))
        # Settings chosen on the u1 split (10 epochs of batch 256); flags override them.
        mf_settings = {"embedding_dim": 33, "embedding_l2": 0.1, "embedding_lr": 0.1, "pooling": "sum"}
        dlrm_settings = {"embedding_dim": 8, "embedding_l2": 0.1, "embedding_lr": 0.03, "dense_lr": 3e-4,
                         "pooling": "mean", "interaction": "dot_cat", "top_mlp": (128, 64, 1)}  # fmt: skip
        if baseline:
            sources.append(("mf", movielens_source(data, "mf", seed=args.seed), mf_settings, False))
        sources.append((args.model, movielens_source(data, args.model, seed=args.seed),
                        mf_settings if args.model == "mf" else dlrm_settings, True))  # fmt: skip
    elif args.data == "synthetic":
        if args.tables == "criteo-kaggle":
            sizes = criteo_kaggle_table_sizes(row_cap=args.row_cap, scale=args.scale)
        else:
            try:
                sizes = tuple(int(x) for x in args.tables.split(","))
            except ValueError:
                raise UsageError(f"tables: expected 'criteo-kaggle' or comma-separated row counts, got {args.tables!r}") from None
        lo, hi = _bag_lengths(args.bag_length)
        batch = args.batch_size or 2048
        config = SyntheticConfig(sizes, batch_size=batch, zipf_exponent=args.zipf, min_bag_length=lo,
                                 max_bag_length=hi, seed=args.seed)  # fmt: skip
        steps = args.steps or 1000
        defaults = dict(batch_size=batch, steps=steps, eval_every=args.eval_every or max(1, steps // 5))
        sources.append((args.model, SyntheticSource(config), {"embedding_lr": 0.05}, True))
    else:
        from ndp.data.criteo import CriteoTSVSource

        if not args.path:
            raise UsageError("path: expected the Criteo TSV file after --data criteo-tsv, got nothing")
        check_positive("hash-rows", args.hash_rows)
        source = CriteoTSVSource(args.path, (args.hash_rows,) * 26, eval_lines=args.eval_lines)
        batch = args.batch_size or 2048
        steps = args.steps or max(1, source.train_lines // batch)
        defaults = dict(batch_size=batch, steps=steps, eval_every=args.eval_every or max(1, steps // 5))
        sources.append((args.model, source, {"embedding_lr": 0.05}, True))

    results = []
    flags = {
        "embedding_lr": args.embedding_lr, "embedding_l2": args.embedding_l2, "pooling": args.pooling,
        "interaction": args.interaction, "dense_lr": args.dense_lr, "embedding_dim": args.embedding_dim,
        "top_mlp": _widths("top-mlp", args.top_mlp), "bottom_mlp": _widths("bottom-mlp", args.bottom_mlp),
    }  # fmt: skip
    for model, source, settings, is_main in sources:
        chosen = dict(settings)
        if is_main:  # the baseline keeps its own settings
            chosen.update({k: v for k, v in flags.items() if v is not None})
        options = TrainOptions(devices=args.devices, sharding=args.sharding, optimizer=args.optimizer,
                               seed=args.seed, out_dir=args.out, resume=args.resume,
                               checkpoint_every=args.checkpoint_every, progress=args.progress,
                               **defaults, **chosen)  # fmt: skip
        result = fit(model, source, options)
        print(result["plan_text"])
        print(f"{model}: {dump(result)}")
        results.append(result)
    summary = {r["model"]: r["final"] for r in results}
    atomic_write_json(os.path.join(args.out, "summary.json"), summary)
    for r in results[:-1]:
        label = "biased matrix factorisation (baseline)" if r["model"] == "mf" else r["model"]
        print(f"{label}: {metric_line(r)}")
    label = "biased matrix factorisation" if results[-1]["model"] == "mf" else "DLRM"
    print(f"{label}: {metric_line(results[-1])}")
    print(metric_line(results[-1]))
    return 0
