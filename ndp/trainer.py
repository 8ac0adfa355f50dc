"""The training job behind ``python -m ndp train``: data sources, evaluation, checkpoints, resume.

A data source yields batch ``i`` as a pure function of ``i`` (MovieLens: a
per-epoch permutation; synthetic: the generator's batch ``i``; Criteo TSV: the
``i``-th block of lines), so a run resumed from a checkpoint at step ``k``
continues with exactly the batches it would have seen. Checkpoints are sharded,
asynchronous and atomic (:mod:`ndp.checkpoint`), and a run may resume on another
device count, process count or sharding kind.

Example:
    >>> from ndp.data.synthetic import SyntheticConfig
    >>> source = SyntheticSource(SyntheticConfig((100, 20), batch_size=16, seed=0))
    >>> options = TrainOptions(steps=4, batch_size=16, eval_every=2)
    >>> result = fit("dlrm", source, options)                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from runkit import UsageError, atomic_write_json, check_choice, check_positive, open_run
from runkit.figures import save_figure, subplots
from runkit.progress import progress_bar
from runkit.runs import CHECKPOINTS
from ndp.checkpoint import RESUME_HINT, TrainCheckpoints
from ndp.configs import INTERACTIONS, DLRMConfig
from ndp.data.movielens import Examples, MovieLensData
from ndp.data.synthetic import SyntheticConfig, batch_at
from ndp.embedding import OPTIMIZERS, POOLINGS, SHARDING_KINDS, pack_tables, plan_sharding, put_slab
from ndp.model import DLRMHead, MFHead
from ndp.train import (
    Batch,
    EmbeddingOptimizer,
    bce_loss,
    init_train_state,
    jagged_to_padded,
    make_predict,
    make_train_step,
    mse_loss,
    storage_mesh,
    to_host,
)

MODELS = ("dlrm", "mf")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """How to train.

    Attributes:
      steps: optimizer steps (none: ``epochs`` passes over the training examples, rounded up to
        whole batches; synthetic data has no epochs and needs a number).
      epochs: passes over the training examples when steps is none.
      batch_size: global batch (a multiple of the device count).
      eval_every: evaluate every so many steps and at the end (none: ``evaluations`` times in all).
      evaluations: how many times to evaluate when eval_every is none (every ``max(1, steps // evaluations)`` steps).
      devices: storage devices (``None``: all).
      sharding: ``"rw"``, ``"tw"`` or ``"cw"``.
      optimizer: sparse optimizer of the tables (``"sgd"``/``"rowwise_adagrad"``).
      embedding_lr, dense_lr: learning rates of tables and of the dense head (Adam).
      embedding_dim: table width.
      embedding_l2: per-example L2 on the pooled embeddings.
      dense_weight_decay: AdamW decay of the dense head.
      pooling: ``"sum"`` or ``"mean"``.
      interaction: DLRM interaction (``"dot"``, ``"cat"``, ``"dot_cat"``, or ``"dcn"``: DCNv2 cross layers).
      cross_layers, cross_rank: the ``"dcn"`` interaction's low-rank cross layers and their rank.
      bottom_mlp, top_mlp: DLRM widths (the bottom MLP's last width is ``embedding_dim``).
      seed: initialisation and shuffling.
      out_dir: where checkpoints, metrics and the learning curve go (``None``: nowhere).
      checkpoint_every: steps between checkpoints (``0``: only at evaluations).
      resume: continue from ``out_dir``'s checkpoint when there is one.
      progress: show a progress bar.
    """

    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 256
    eval_every: int | None = None
    evaluations: int = 5
    devices: int | None = None
    sharding: str = "rw"
    optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.05
    dense_lr: float = 1e-3
    embedding_dim: int = 16
    embedding_l2: float = 0.0
    dense_weight_decay: float = 0.0
    pooling: str = "sum"
    interaction: str = "dot"
    bottom_mlp: tuple[int, ...] = (64, 16)
    top_mlp: tuple[int, ...] = (64, 32, 1)
    cross_layers: int = 3
    cross_rank: int = 512
    seed: int = 0
    out_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = True
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "eval_every"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        check_positive("epochs", self.epochs)
        check_positive("batch_size", self.batch_size)
        check_positive("evaluations", self.evaluations)
        check_choice("sharding", self.sharding, SHARDING_KINDS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_positive("embedding_lr", self.embedding_lr)
        check_positive("dense_lr", self.dense_lr)
        check_positive("embedding_dim", self.embedding_dim)
        check_positive("checkpoint_every", self.checkpoint_every, allow_zero=True)
        check_choice("interaction", self.interaction, INTERACTIONS)
        check_positive("cross_layers", self.cross_layers, allow_zero=True)
        check_positive("cross_rank", self.cross_rank)
        if self.devices is not None:
            check_positive("devices", self.devices)
        for name in ("embedding_l2", "dense_weight_decay", "seed"):
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("bottom_mlp", "top_mlp"):
            for width in getattr(self, name):
                check_positive(name, width)


def schedule(options: TrainOptions, train_examples: int | None) -> TrainOptions:
    """``options`` with ``steps`` and ``eval_every`` filled in where they are ``None``.

    ``steps = max(1, ceil(epochs * N / batch_size))`` and ``eval_every = max(1, steps // evaluations)``.

    Args:
      options: the training options; values already set are kept.
      train_examples: ``N``, the training examples of the data source (``None``: a stream without epochs).

    Returns:
      The options with both fields set.

    Raises:
      UsageError: ``steps`` is ``None`` and the source has no epochs.

    Example:
        >>> schedule(TrainOptions(epochs=2.0, batch_size=100), 1000).steps
        20
        >>> schedule(TrainOptions(steps=50, evaluations=5), None).eval_every
        10
    """
    steps = options.steps
    if steps is None:
        if train_examples is None:
            raise UsageError("steps: expected a number of steps for a data source without epochs (e.g. synthetic), got none")
        steps = max(1, math.ceil(options.epochs * train_examples / options.batch_size))
    eval_every = options.eval_every if options.eval_every is not None else max(1, steps // options.evaluations)
    return dataclasses.replace(options, steps=steps, eval_every=eval_every)


# ------------------------------------------------------------------------------------------------
# Data sources


class ArraySource:
    """In-memory examples (e.g. MovieLens): shuffled epochs, a fixed test set."""

    def __init__(self, train: Examples, test: Examples, table_sizes, task: str, *, seed: int = 0,
                 label_mean: float = 0.0, num_dense: int = 0):  # fmt: skip
        self.train, self.test = train, test
        self.table_sizes = tuple(table_sizes)
        self.task = task
        self.seed = seed
        self.label_mean = label_mean
        self.num_dense = num_dense
        self.train_examples = int(train.labels.shape[0])

    def _batch(self, examples: Examples, index: np.ndarray) -> Batch:
        n = index.size
        return Batch(np.zeros((n, self.num_dense), np.float32), examples.ids[index], examples.lengths[index],
                     examples.labels[index])  # fmt: skip

    def train_batch(self, step: int, batch_size: int) -> Batch:
        n = self.train.labels.shape[0]
        first = step * batch_size
        positions = np.arange(first, first + batch_size)
        index = np.empty(batch_size, np.int64)
        for e in np.unique(positions // n):  # a batch may straddle two epochs
            chosen = positions // n == e
            index[chosen] = np.random.default_rng([self.seed, int(e)]).permutation(n)[positions[chosen] % n]
        return self._batch(self.train, index)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Batch, int]]:
        n = self.test.labels.shape[0]
        for start in range(0, n, batch_size):
            valid = min(batch_size, n - start)
            index = np.arange(start, start + batch_size) % n  # the last batch is padded by wrapping
            yield self._batch(self.test, index), valid


def movielens_source(data: MovieLensData, model: str, *, seed: int = 0) -> ArraySource:
    """MovieLens as a source; the MF model sees only the user and item tables."""
    if model == "mf":
        return ArraySource(data.train.select((0, 1)), data.test.select((0, 1)), data.table_sizes[:2], data.task,
                           seed=seed, label_mean=data.mean_rating)  # fmt: skip
    return ArraySource(data.train, data.test, data.table_sizes, data.task, seed=seed, label_mean=data.mean_rating)


class SyntheticSource:
    """The synthetic generator: training batches from ``config.seed``, test batches from another seed."""

    def __init__(self, config: SyntheticConfig, *, eval_batches: int = 4):
        self.config = config
        self.table_sizes = config.table_sizes
        self.task = "click"
        self.label_mean = 0.0
        self.num_dense = config.num_dense
        self.num_eval = eval_batches
        self.train_examples = None  # a stream without epochs

    def _convert(self, b) -> Batch:
        ids, lengths = jagged_to_padded([t.values for t in b.tables], [t.offsets for t in b.tables],
                                        self.config.longest_bag)  # fmt: skip
        return Batch(b.dense, ids, lengths, b.labels)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        if batch_size != self.config.batch_size:
            raise ValueError(f"batch_size: expected the generator's {self.config.batch_size}, got {batch_size}")
        return self._convert(batch_at(self.config, step))

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Batch, int]]:
        held_out = dataclasses.replace(self.config, seed=self.config.seed + 1_000_003)
        for i in range(self.num_eval):
            yield self._convert(batch_at(held_out, i)), self.config.batch_size


# ------------------------------------------------------------------------------------------------
# Metrics


def rmse(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Root mean squared error of ratings, predictions clipped to the 1-5 scale."""
    return float(np.sqrt(np.mean((np.clip(predictions, 1.0, 5.0) - labels) ** 2)))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    Example:
        >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        0.75
    """
    labels = np.asarray(labels) > 0.5
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), np.float64)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


# ------------------------------------------------------------------------------------------------
# The job


def _head(model: str, source, options: TrainOptions) -> tuple[nnx.Module, Any]:
    offset = source.label_mean if source.task == "rating" else 0.0
    if model == "mf":
        if len(source.table_sizes) != 2:
            raise UsageError(f"model: 'mf' needs exactly two tables (user, item), got {len(source.table_sizes)}")
        return MFHead(global_mean=offset), None
    bottom = tuple(options.bottom_mlp[:-1]) + (options.embedding_dim,) if source.num_dense else ()
    config = DLRMConfig(num_dense=source.num_dense, table_sizes=tuple(source.table_sizes),
                        embedding_dim=options.embedding_dim, bottom_mlp=bottom, top_mlp=tuple(options.top_mlp),
                        interaction=options.interaction, pooling=options.pooling, cross_layers=options.cross_layers,
                        cross_rank=options.cross_rank)  # fmt: skip
    return DLRMHead(config, rngs=nnx.Rngs(options.seed), output_offset=offset), config


#: Options a resumed run must share with the checkpoint (the others, e.g. steps, devices and
#: sharding, may change between runs).
RESUME_SETTINGS = ("batch_size", "optimizer", "embedding_lr", "dense_lr", "embedding_dim", "embedding_l2",
                   "dense_weight_decay", "pooling", "interaction", "bottom_mlp", "top_mlp", "seed")  # fmt: skip


def run_settings(model: str, source, options: TrainOptions) -> dict:
    """What the run folder records (``settings.json``), and a resumed run must match: model, data and :data:`RESUME_SETTINGS`."""
    settings = {"model": model, "task": source.task, "table_sizes": list(source.table_sizes),
                "num_dense": source.num_dense}  # fmt: skip
    settings.update({k: getattr(options, k) for k in RESUME_SETTINGS})
    if options.interaction == "dcn":  # recorded only where they shape the model
        settings.update(cross_layers=options.cross_layers, cross_rank=options.cross_rank)
    return settings


def evaluate(predict, state, source, mesh, batch_size: int) -> dict:
    """Test metric over the source's evaluation set: RMSE (rating) or AUC and log-loss (click)."""
    predictions, labels = [], []
    for batch, valid in source.eval_batches(batch_size):
        out = to_host(mesh, predict(state, batch))
        predictions.append(out[:valid])
        labels.append(np.asarray(batch.labels)[:valid])
    p, y = np.concatenate(predictions), np.concatenate(labels)
    if source.task == "rating":
        return {"rmse": rmse(p, y)}
    probability = 1.0 / (1.0 + np.exp(-p))
    eps = 1e-7
    logloss = float(-np.mean(y * np.log(probability + eps) + (1 - y) * np.log(1 - probability + eps)))
    return {"auc": auc(p, y), "logloss": logloss}


def plot_curve(history: list[dict], path: Path, title: str) -> None:
    """Training loss and test metric against step, as a PNG."""
    steps = [h["step"] for h in history]
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(steps, [h["train_loss"] for h in history], "o-", label="train loss (mean since last eval)")
    metric = "rmse" if "rmse" in history[-1] else "auc"
    ax2 = ax.twinx()
    ax2.plot(steps, [h[metric] for h in history], "s--", color="tab:red", label=f"test {metric.upper()}")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax2.set_ylabel(f"test {metric.upper()}")
    ax.set_title(title)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def fit(model: str, source, options: TrainOptions, *, name: str | None = None) -> dict:
    """Train ``model`` (``"dlrm"`` or ``"mf"``) on ``source``; returns metrics and history.

    Steps and evaluations left ``None`` follow :func:`schedule` with the source's ``train_examples``.

    With ``options.out_dir``, ``<name>/`` is a run folder (:func:`runkit.open_run`) whose
    ``settings.json`` records :func:`run_settings`; it keeps sharded checkpoints in
    ``<name>/checkpoints/`` (:class:`ndp.checkpoint.TrainCheckpoints`: at each evaluation and
    every ``checkpoint_every`` steps, asynchronous and atomic, the last two kept), writes
    ``<name>/metrics.json`` and ``<name>/learning_curve.png``, and resumes from the
    latest checkpoint when present, also on another device count, process count or
    sharding kind. Resuming with other settings raises :class:`runkit.UsageError` naming
    them; ``options.resume=False`` starts afresh. Returns after the last checkpoint is written.
    """
    check_choice("model", model, MODELS)
    options = schedule(options, getattr(source, "train_examples", None))
    name = name or model
    mesh = storage_mesh(options.devices)
    devices = mesh.shape["storage"]
    if options.batch_size % devices:
        raise UsageError(f"batch_size: expected a multiple of the {devices} devices, got {options.batch_size}")
    head, _ = _head(model, source, options)
    plan = plan_sharding(source.table_sizes, options.embedding_dim, devices, options.sharding)
    tx = optax.adamw(options.dense_lr, weight_decay=options.dense_weight_decay)
    embedding_optimizer = EmbeddingOptimizer(options.optimizer, options.embedding_lr)
    state, graphdef = init_train_state(mesh, plan, head, tx, jax.random.key(options.seed), embedding_optimizer)
    if model == "mf":
        # Small factors, zero biases: the usual start of biased matrix factorisation.
        rng = np.random.default_rng(options.seed)
        tables = [rng.normal(0.0, 0.1, size=(n, options.embedding_dim)).astype(np.float32) for n in plan.table_sizes]
        for t in tables:
            t[:, -1] = 0.0
        state = state._replace(slab=put_slab(mesh, plan, pack_tables(plan, tables)))
    loss_fn = mse_loss if source.task == "rating" else bce_loss
    step_fn = make_train_step(mesh, plan, graphdef, loss_fn, tx, embedding_optimizer, pooling=options.pooling,
                              embedding_l2=options.embedding_l2)  # fmt: skip
    predict = make_predict(mesh, plan, graphdef, pooling=options.pooling)

    out = Path(options.out_dir) / name if options.out_dir else None
    settings = run_settings(model, source, options)
    history: list[dict] = []
    start = 0
    checkpoints = None
    if out is not None:
        legacy = out / "checkpoint.npz"
        if options.resume and legacy.is_file() and not (out / CHECKPOINTS).exists():
            raise UsageError(
                f"resume: {str(legacy)!r} is a checkpoint of an older version (a single .npz), which is no longer "
                "read; use a new --out or --no-resume"
            )
        # The run folder records the settings and refuses to resume other ones; process 0 writes it
        # (and, with --no-resume, removes the earlier checkpoints) before any process opens them.
        writer = jax.process_index() == 0
        run = open_run(out, settings, resume=options.resume, hint=RESUME_HINT, writer=writer,
                       log=print if writer else (lambda message: None))  # fmt: skip
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"ndp run folder {out}")
        checkpoints = TrainCheckpoints(run.checkpoints)
    try:
        if checkpoints is not None and checkpoints.latest_step() is not None:
            # Only shapes and shardings of the fresh state are needed: free its tables first.
            like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
            state = None
            restored = checkpoints.restore(mesh, plan, like)
            state, start, history = restored.state, restored.data_position, restored.history
            if jax.process_index() == 0:
                print(f"resumed {name} from {checkpoints.directory} at step {start}")
        return _train(model, name, source, options, mesh, plan, state, step_fn, predict, start, history,
                      checkpoints, out)  # fmt: skip
    finally:
        if checkpoints is not None:
            checkpoints.close()  # waits for the last save


def _train(model, name, source, options, mesh, plan, state, step_fn, predict, start, history, checkpoints,
           out) -> dict:  # fmt: skip
    devices = mesh.shape["storage"]

    def save(step: int) -> None:
        if checkpoints is not None:
            checkpoints.save(step, state, plan, history=history)

    serialize = devices > 1 and jax.default_backend() == "cpu"
    losses: list[jax.Array] = []
    started = time.perf_counter()
    bar = progress_bar(range(start, options.steps), initial=start, total=options.steps, desc=f"train {name}",
               disable=not options.progress, leave=False)  # fmt: skip
    for step in bar:
        batch = source.train_batch(step, options.batch_size)  # host arrays: the step routes and places them
        state, loss = step_fn(state, batch)
        if serialize:
            # XLA:CPU runs emulated devices on one thread pool; letting the next step start on some
            # devices while others still wait in this step's collectives can starve the pool
            # (an abort after a 40 s rendezvous timeout on an oversubscribed 2-core machine).
            jax.block_until_ready(loss)
        losses.append(loss)
        done = step + 1
        if done % options.eval_every == 0 or done == options.steps:
            # Finish the queued steps before other programs run: XLA:CPU collectives of two
            # programs in flight at once can starve each other on few cores.
            jax.block_until_ready(state)
            train_loss = float(np.mean([float(x) for x in losses])) if losses else float("nan")
            losses = []
            metrics = evaluate(predict, state, source, mesh, options.batch_size)
            history.append({"step": done, "train_loss": train_loss, **metrics})
            bar.set_postfix({k: round(v, 4) for k, v in metrics.items()})
            save(done)
        elif options.checkpoint_every and done % options.checkpoint_every == 0:
            jax.block_until_ready(state)
            save(done)
    elapsed = time.perf_counter() - started
    final = history[-1] if history else {}
    result = {
        "model": model,
        "task": source.task,
        "steps": options.steps,
        "seconds": elapsed,
        "final": final,
        "history": history,
        "plan": plan.to_dict() if len(plan.table_sizes) <= 64 else {"kind": plan.kind},
        "options": dataclasses.asdict(options),
    }
    if out is not None and jax.process_index() == 0:
        atomic_write_json(out / "metrics.json", result)
        if history:
            plot_curve(history, out / "learning_curve.png", f"{name}: {source.task}")
    result["plan_text"] = plan.describe()
    return result


def metric_line(result: dict) -> str:
    final = result["final"]
    if "rmse" in final:
        return f"test RMSE: {final['rmse']:.4f}"
    return f"test AUC: {final['auc']:.4f}"


def dump(result: dict) -> str:
    return json.dumps({k: v for k, v in result.items() if k not in ("history", "plan", "plan_text")}, default=str)


