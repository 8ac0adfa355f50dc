"""The whole PENNI pipeline with a checkpoint after every stage (and every training epoch).

Stages, in order (:data:`STAGES`, the names of :data:`STAGE_TABLE`)::

    dense -> decompose -> retrain -> prune -> finetune -> shrink -> quantize -> count

* ``dense``: the starting model, evaluated (trained first when it has no pretrained weights);
* ``decompose``: every 3x3 conv -> ``d`` basis kernels + coefficients;
* ``retrain``: SGD recipe + L1 on coefficients, basis and coefficients in turn;
* ``prune``: PENNI's per-layer rule ``|c| < s * std(c)`` (optionally also a channel rule,
  and optionally reached gradually during ``retrain``; both off by default, see
  :class:`CompressConfig`);
* ``finetune``: pruned coefficients and dead channels held at zero by optimizer masks,
  with fake-quantization (quantization-aware) when bit widths are set;
* ``shrink``: dead channels and basis kernels sliced away (exact);
* ``quantize``: hybrid low-bit coefficients / higher-bit basis; integer tensors exported;
* ``count``: the per-layer description, the report and its figure.

The stages form a table (:data:`STAGE_TABLE`: name, function, whether the stage's checkpoint
holds the model, how a restore passes the stage). ``<out>`` is a run folder
(:func:`runkit.open_run`): ``settings.json`` records the run's settings, and a rerun with
other settings is refused, naming them. Every stage ends with an atomic checkpoint
``<out>/checkpoints/<stage>.npz`` holding the model state (stages that save it) and the
results so far; training stages also checkpoint each epoch, in nested run folders
``<out>/checkpoints/<stage>-epoch``. A rerun with the same settings continues after the
last completed stage (or epoch). ``shrink``, ``quantize`` and ``count`` are pure functions
of the fine-tuned state: their checkpoints hold no model, and one restore function
(:func:`_restore`, also behind :func:`load_compressed`) rebuilds the model after any stage
from the last saved state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from runkit import MissingFileError, RunFolder, UsageError, atomic_write_bytes, atomic_write_json, open_run, read_settings
from runkit.figures import save_figure, subplots
from runkit.progress import progress_bar
from jaxsparse.data import normalize
from jaxsparse.models import build_model, evaluate_accuracy, load_pytorch_npz
from jaxsparse.compress_settings import CompressConfig
from jaxsparse.penni.count import describe_layers, summarize
from jaxsparse.penni.digits import DigitsCNN
from jaxsparse.penni.layers import DecomposedConv, decompose_model, iter_layers, path_name, set_quantization
from jaxsparse.penni.prune import apply_masks, channel_norm_mask, penni_mask, polynomial_sparsity
from jaxsparse.penni.quantize import quantize
from jaxsparse.penni.shrink import apply_channel_masks, free_channel_layers, param_masks_like, param_module_path, shrink
from jaxsparse.penni.train import TrainConfig, fit

class Dataset(NamedTuple):
    """uint8 NHWC images and int32 labels of both splits, and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    name: str


def initial_model(config: CompressConfig, weights: str | None = None) -> nnx.Module:
    """The dense starting model: built from its name, with PyTorch-layout weights when given."""
    if config.model == "digits-cnn":
        if weights is not None:
            raise UsageError("weights: the digits CNN is trained from scratch, expected no weights file")
        return DigitsCNN(rngs=nnx.Rngs(config.seed))
    if weights is None:
        model = build_model(config.model, rngs=nnx.Rngs(config.seed))
    else:  # every variable comes from the file: build only the structure (no initialiser runs or compiles)
        model = nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(config.seed)))
        load_pytorch_npz(model, weights)
        unset = [path_name(path) for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))
                 if isinstance(leaf, jax.ShapeDtypeStruct)]  # fmt: skip
        if unset:
            raise UsageError(f"weights: {str(weights)!r} sets no value for {len(unset)} variables of {config.model}, e.g. {unset[:3]}")
    model.eval()
    return model


def _train_config(config: CompressConfig, epochs: int, *, l1: float, learning_rate: float, alternate: int,
                  distill: bool = True) -> TrainConfig:
    return TrainConfig(
        epochs=epochs, batch_size=config.batch_size, learning_rate=learning_rate, momentum=config.momentum,
        weight_decay=config.weight_decay, l1=l1, alternate_every=alternate, augment_pad=config.augment_pad,
        distill=config.distill if distill else 0.0, distill_temperature=config.distill_temperature, seed=config.seed,
    )


def prune_masks(params: Any, *, prune_std: float | jax.Array, channel_sparsity: float | jax.Array = 0.0,
                channel_layers: tuple[str, ...] = ()) -> Any:
    """Keep-masks like ``params`` (an ``nnx.Param`` state): PENNI's rule on every coefficient tensor.

    Layers listed in ``channel_layers`` also lose the ``channel_sparsity`` fraction of their
    output channels of smallest coefficient norm (:func:`~jaxsparse.penni.prune.channel_norm_mask`).
    Other leaves are kept whole. Thresholds may be traced (a gradual schedule).
    """
    def leaf(path, p):
        module, attr = param_module_path(path)
        if attr != "coefficients":
            return jnp.ones(jnp.shape(p), jnp.bool_)
        keep = penni_mask(p, prune_std)
        if module in channel_layers:
            keep = keep & channel_norm_mask(p, channel_sparsity)
        return keep

    return jax.tree_util.tree_map_with_path(leaf, params)


def gradual_prune_schedule(config: CompressConfig, model: nnx.Module, total_steps: int):
    """``(params, step) -> keep-masks``: the prune rule of ``config`` with the cubic ramp of ``gradual_prune``."""
    ramp = polynomial_sparsity(1.0, begin_step=0, end_step=max(1, int(round(config.gradual_prune * total_steps))), power=3.0)
    channel_layers = _channel_layers(model, config)

    def schedule(params, step):
        fraction = ramp(step)  # 1 - (1 - t / T)^3, clipped to [0, 1]
        return prune_masks(params, prune_std=config.prune_std * fraction,
                           channel_sparsity=config.channel_sparsity * fraction, channel_layers=channel_layers)

    return schedule


def _channel_layers(model: nnx.Module, config: CompressConfig) -> tuple[str, ...]:
    if config.channel_sparsity <= 0:
        return ()
    decomposed = {path for path, _ in iter_layers(model, DecomposedConv)}
    return tuple(p for p in free_channel_layers(model) if p in decomposed)


def _totals(model: nnx.Module, sample: jax.Array) -> dict:
    return summarize(describe_layers(model, input_shape=(1, *sample.shape[1:])))


def _coefficient_masks(model: nnx.Module) -> nnx.State:
    """Keep-masks for fine-tuning: non-zero coefficients and channels the shrink plan keeps."""
    plan = apply_channel_masks(model)
    masks = param_masks_like(model, plan)
    params = nnx.state(model, nnx.Param)
    return jax.tree.map(lambda m, p: m & (p != 0), masks, params)


def export_quantized(model: nnx.Module, path: str | Path, *, coef_bits: int, basis_bits: int, per_channel: bool) -> dict:
    """Write integer coefficient/basis tensors and their scales of every decomposed layer to ``.npz`` (atomically)."""
    import io

    arrays, sizes = {}, {"coefficient_bits_total": 0, "basis_bits_total": 0}
    for name, layer in iter_layers(model, DecomposedConv):
        if coef_bits:
            q = quantize(layer.coefficients[...], coef_bits, 1 if per_channel else None)
            arrays[f"{name}.coefficients"], arrays[f"{name}.coefficients_scale"] = np.asarray(q.values), np.asarray(q.scale)
            sizes["coefficient_bits_total"] += int(np.count_nonzero(np.asarray(q.values))) * coef_bits
        if basis_bits:
            q = quantize(layer.basis[...], basis_bits)
            arrays[f"{name}.basis"], arrays[f"{name}.basis_scale"] = np.asarray(q.values), np.asarray(q.scale)
            sizes["basis_bits_total"] += int(q.values.size) * basis_bits
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return sizes


def _plot(report: dict, path: Path) -> None:
    layers = [r for r in report["layers"] if r["kind"] == "conv"]
    dense_channels = {r["name"]: r["c_out"] for r in report["dense_layers"]}
    stages = report["stages"]
    fig, axes = subplots(2, 2, figsize=(13, 8))
    x = np.arange(len(layers))
    axes[0, 0].bar(x, [r["coef_density"] for r in layers], color="tab:blue")
    axes[0, 0].set(title="coefficient density per conv layer", ylabel="non-zero fraction", ylim=(0, 1.05))
    axes[0, 1].bar(x, [dense_channels.get(r["name"], r["c_out"]) for r in layers], color="lightgray", label="dense")
    axes[0, 1].bar(x, [r["c_out"] for r in layers], color="tab:green", label="kept")
    axes[0, 1].set(title="output channels per conv layer", ylabel="channels")
    axes[0, 1].legend()
    for ax in axes[0]:
        ax.set_xticks(x[:: max(1, len(x) // 12)])
        ax.set_xlabel("conv layer (forward order)")
    names = [s["stage"] for s in stages]
    axes[1, 0].plot(names, [100 * s["top1"] for s in stages], "o-")
    axes[1, 0].set(title=f"top-1 on {report['data']['name']} (test subset of {report['data']['test']})", ylabel="%")
    width = 0.4
    sx = np.arange(len(stages))
    axes[1, 1].bar(sx - width / 2, [s["params"] for s in stages], width, label="params (non-zero)")
    axes[1, 1].bar(sx + width / 2, [s["macs"] for s in stages], width, label="MACs (sparse-effective)")
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_xticks(sx, names)
    axes[1, 1].set(title="model size and compute per stage")
    axes[1, 1].legend()
    for ax in axes[1]:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"PENNI compression of {report['config']['model']}")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


class _Context:
    """What the stage functions share: the run's settings, data, folder, model, and the results so far."""

    def __init__(self, config, data, run, model, weights, teacher, progress, extras):
        self.config, self.data, self.run, self.model = config, data, run, model
        self.weights, self.given_teacher, self.progress, self.extras = weights, teacher, progress, extras

    @functools.cached_property
    def teacher(self) -> nnx.Module | None:
        """The distillation teacher: given, or the dense model as saved by the ``dense`` stage."""
        if self.config.distill <= 0:
            return None
        return self.given_teacher if self.given_teacher is not None else _restore("dense", self.config, self.weights, self.run)

    def fit(self, stage: str, epochs: int, recipe: dict, **options) -> None:
        """Train the model for one stage (``recipe``: options of the stage's :class:`TrainConfig`), epoch
        checkpoints in the nested run folder ``checkpoints/<stage>-epoch``."""
        fit(self.model, self.data.train_images, self.data.train_labels, _train_config(self.config, epochs, **recipe),
            checkpoint=self.run.checkpoints / f"{stage}-epoch", description="pretrain" if stage == "dense" else stage,
            progress=self.progress, **options)  # fmt: skip


def _dense(ctx: _Context) -> dict:
    config = ctx.config
    if ctx.weights is None and config.pretrain_epochs > 0:
        ctx.fit("dense", config.pretrain_epochs,
                recipe=dict(l1=0.0, learning_rate=config.pretrain_learning_rate, alternate=0, distill=False))
    return {}


def _decompose(ctx: _Context) -> dict:
    stats = decompose_model(ctx.model, ctx.config.num_basis, centered=ctx.config.centered)
    ctx.extras["decomposition"] = stats
    return {"mean_relative_error": float(np.mean([s["relative_error"] for s in stats.values()]))}


def _retrain(ctx: _Context) -> dict:
    config, schedule = ctx.config, None
    if config.gradual_prune > 0:
        total_steps = config.retrain_epochs * (len(ctx.data.train_images) // config.batch_size)
        schedule = gradual_prune_schedule(config, ctx.model, total_steps)
    ctx.fit("retrain", config.retrain_epochs, recipe=dict(l1=config.l1, learning_rate=config.learning_rate,
                                                          alternate=config.alternate_every),
            mask_schedule=schedule, teacher=ctx.teacher)  # fmt: skip
    return {}


def _prune(ctx: _Context) -> dict:
    params = nnx.state(ctx.model, nnx.Param)
    keep = prune_masks(params, prune_std=ctx.config.prune_std, channel_sparsity=ctx.config.channel_sparsity,
                       channel_layers=_channel_layers(ctx.model, ctx.config))
    nnx.update(ctx.model, apply_masks(params, keep))
    return {}


def _qat_structure(model: nnx.Module, config: CompressConfig) -> None:
    if config.qat and (config.coef_bits or config.basis_bits):
        set_quantization(model, config.coef_bits, config.basis_bits, config.per_channel)


def _finetune(ctx: _Context) -> dict:
    masks = _coefficient_masks(ctx.model)
    _qat_structure(ctx.model, ctx.config)
    ctx.fit("finetune", ctx.config.finetune_epochs, recipe=dict(l1=0.0, learning_rate=ctx.config.finetune_learning_rate, alternate=0),
            masks=masks, teacher=ctx.teacher)
    return {}


def _shrink(ctx: _Context) -> dict:
    _, plan = shrink(ctx.model)
    ctx.extras["channels"] = {s: list(v) for s, v in plan.kept().items()}
    return {"fixed_point_iterations": plan.iterations}


def _quantized_structure(model: nnx.Module, config: CompressConfig) -> None:
    set_quantization(model, config.coef_bits, config.basis_bits, config.per_channel)


def _quantize(ctx: _Context) -> dict:
    config = ctx.config
    _quantized_structure(ctx.model, config)
    ctx.extras["quantized_sizes"] = export_quantized(ctx.model, ctx.run.path / "quantized.npz", coef_bits=config.coef_bits,
                                                     basis_bits=config.basis_bits, per_channel=config.per_channel)  # fmt: skip
    return {}


def _count(ctx: _Context) -> dict:
    return {}


class Stage(NamedTuple):
    """One row of :data:`STAGE_TABLE`.

    Attributes:
      name: the stage's name (its checkpoint is ``checkpoints/<name>.npz``).
      run: ``context -> extra fields of the stage's record``: does the stage's work on the model.
      saves_model: whether the checkpoint holds the model's state (else it holds only the
        results, and restoring redoes ``rebuild`` on the last saved state).
      rebuild: ``(model, config) -> None``: what restoring applies to a model restored up to
        the stage before: the structure the stage's saved state loads into, or the whole
        (deterministic) effect of a stage that saves no model (None: nothing).
    """

    name: str
    run: Callable[[_Context], dict]
    saves_model: bool
    rebuild: Callable[[nnx.Module, CompressConfig], None] | None = None


def _decomposed_structure(model: nnx.Module, config: CompressConfig) -> None:
    decompose_model(model, config.num_basis, centered=config.centered)


def _shrunk(model: nnx.Module, config: CompressConfig) -> None:
    shrink(model)


#: The pipeline, in order: what each stage does, what it saves, how a restore passes it.
STAGE_TABLE = (
    Stage("dense", _dense, True),
    Stage("decompose", _decompose, True, _decomposed_structure),
    Stage("retrain", _retrain, True),
    Stage("prune", _prune, True),
    Stage("finetune", _finetune, True, _qat_structure),
    Stage("shrink", _shrink, False, _shrunk),
    Stage("quantize", _quantize, False, _quantized_structure),
    Stage("count", _count, False),
)
STAGES = tuple(stage.name for stage in STAGE_TABLE)


def _restore(stage: str, config: CompressConfig, weights: str | None, run: RunFolder, *, skip: tuple[str, ...] = ()) -> nnx.Module:
    """The model as it was after ``stage``: rebuilt from the last model state saved up to it.

    Every stage's ``rebuild`` up to ``stage`` (except those in ``skip``) is applied in order,
    and the last saved state is loaded right after its own stage's rebuild.
    """
    rows = STAGE_TABLE[: STAGES.index(stage) + 1]
    saved = [row.name for row in rows if row.saves_model][-1]
    if not run.has(saved):
        raise MissingFileError(f"checkpoints: expected the checkpoint of stage {saved!r} in {str(run.checkpoints)!r} "
                               "(a run finished up to it), found none")
    model = initial_model(config, weights)
    for row in rows:
        if row.rebuild is not None and row.name not in skip:
            row.rebuild(model, config)
        if row.name == saved:
            state, _ = run.load(saved, like=nnx.state(model))
            nnx.update(model, state)
    model.eval()
    return model


def _settings(config: CompressConfig, weights: str | None, data_name: str, train: int, test: int, teacher_name: str) -> dict:
    settings = {"config": dataclasses.asdict(config), "weights": str(weights) if weights else None, "data": data_name,
                "train": int(train), "test": int(test)}
    if config.distill > 0:
        settings["teacher"] = teacher_name
    return settings


def _open(out_dir: str | Path, config: CompressConfig, settings: dict) -> RunFolder:
    """The run folder of :func:`compress` (refused, naming the settings, when it was written with others)."""
    return open_run(out_dir, settings, option="out", hint="use another output folder or delete it to start over",
                    defaults={"config": dataclasses.asdict(CompressConfig(model=config.model))})  # fmt: skip


def compress(
    config: CompressConfig,
    data: Dataset,
    out_dir: str | Path,
    *,
    weights: str | None = None,
    teacher: nnx.Module | None = None,
    teacher_name: str = "dense",
    progress: bool = True,
    log=print,
) -> dict:
    """Run (or resume) the whole pipeline; write ``report.json``, ``report.png``, ``quantized.npz`` under ``out_dir``.

    ``out_dir`` is a run folder (:func:`runkit.open_run`): its ``settings.json`` records the
    settings the run was started with, and a rerun with others is refused, naming them.

    Args:
      config: the run's settings; a rerun must use the same ones to resume.
      data: the data set.
      out_dir: output folder (checkpoints in ``out_dir/checkpoints``).
      weights: PyTorch-layout ``.npz`` of the dense model (None: random init, trained for
        ``config.pretrain_epochs``).
      teacher: the model distilled from when ``config.distill > 0`` (default: the dense
        model the run starts from, after any pretraining).
      teacher_name: how the teacher is named in the saved settings (a resumed run must
        name the same one).
      progress: progress bars.
      log: where one-line stage messages go.

    Returns:
      The report (also written to ``out_dir/report.json``).

    Example:
        >>> report = compress(CompressConfig(model="digits-cnn", retrain_epochs=2), data, "runs/demo")  # doctest: +SKIP
    """
    run = _open(out_dir, config, _settings(config, weights, data.name, len(data.train_images), len(data.test_images), teacher_name))
    out = run.path
    done = next((name for name in reversed(STAGES) if run.has(name)), None)
    meta = run.load(done)[1] if done is not None else {}
    results: list[dict] = list(meta.get("results", []))
    extras: dict = dict(meta.get("extras", {}))
    resumed = list(meta.get("resumed", []))
    if done is not None:
        log(f"resuming after stage '{done}' (checkpoints in {run.checkpoints})")
        resumed.append(done)
        model = _restore(done, config, weights, run)
    else:
        model = initial_model(config, weights)
    sample = jnp.asarray(normalize(data.test_images[:1]))
    ctx = _Context(config, data, run, model, weights, teacher, progress, extras)

    start = STAGES.index(done) + 1 if done is not None else 0
    bar = progress_bar(STAGES, desc="compress", initial=start, total=len(STAGES), disable=not progress, file=sys.stderr)
    for row in STAGE_TABLE[start:]:
        bar.set_postfix_str(row.name)
        started, cpu_started = time.time(), time.process_time()
        extra = row.run(ctx)
        top1 = evaluate_accuracy(model, data.test_images, data.test_labels).accuracy
        totals = _totals(model, sample)
        record = {"stage": row.name, "top1": top1, "params": totals["params"], "macs": totals["macs_sparse"],
                  "macs_dense_shape": totals["macs_dense"], "seconds": round(time.time() - started, 2),
                  "cpu_seconds": round(time.process_time() - cpu_started, 2), **extra}
        results.append(record)
        log(f"[{row.name}] top-1 {100 * top1:.2f}%  params {totals['params']:,}  MACs {totals['macs_sparse']:,}  ({record['seconds']:.0f} s)")
        run.save(row.name, nnx.state(model) if row.saves_model else {}, {"results": results, "extras": extras, "resumed": resumed})
        bar.update(1)
    bar.close()
    dense_model = initial_model(config, weights)
    dense_layers = describe_layers(dense_model, input_shape=(1, *sample.shape[1:]))
    probe = jnp.asarray(normalize(data.test_images[:64]))
    layers = describe_layers(model, probe)
    dense_totals, final_totals = summarize(dense_layers), summarize(layers)
    by_stage = {r["stage"]: r for r in results}
    report = {
        "config": dataclasses.asdict(config),
        "weights": run.settings["weights"],
        "data": {"name": data.name, "train": run.settings["train"], "test": run.settings["test"]},
        "device": jax.devices()[0].device_kind,
        "stages": results,
        "summary": {
            "top1_dense": by_stage["dense"]["top1"],
            "top1_compressed": by_stage["count"]["top1"],
            "params_dense": dense_totals["params"],
            "params_compressed": final_totals["params"],
            "param_reduction": 1.0 - final_totals["params"] / dense_totals["params"],
            "macs_dense": dense_totals["macs_dense"],
            "macs_compressed": final_totals["macs_sparse"],
            "mac_reduction": 1.0 - final_totals["macs_sparse"] / dense_totals["macs_dense"],
        },
        "extras": extras,
        "resumed_after": resumed,
        "layers": layers,
        "dense_layers": dense_layers,
    }
    atomic_write_json(out / "report.json", report)
    _plot(report, out / "report.png")
    return report


def finished_report(out_dir: str | Path, config: CompressConfig, *, weights: str | None, data_name: str,
                    train: int | None, test: int | None, teacher_name: str = "dense") -> dict | None:
    """The report of a finished :func:`compress` run in ``out_dir`` with these settings, or ``None``.

    Lets a rerun of a finished run answer without loading its data. ``train`` and
    ``test`` are the image counts the run must have used (``None``: unknown, so no
    answer: the caller runs :func:`compress`, which resumes and finds the run done).
    The settings are checked against the run folder's record (``settings.json``,
    :func:`runkit.open_run`), as :func:`compress` checks them.

    Raises:
      UsageError: the finished run was started with other settings (naming them).

    Example:
        >>> finished_report("runs/none", CompressConfig(), weights=None, data_name="x", train=1, test=1) is None
        True
    """
    out = Path(out_dir)
    if train is None or test is None or not (out / "report.json").is_file() or not (out / "checkpoints" / "count.npz").is_file():
        return None
    _open(out, config, _settings(config, weights, data_name, train, test, teacher_name))
    try:
        return json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None


def load_compressed(report_dir: str | Path, weights: str | None = None, *, shrunk: bool = True) -> nnx.Module:
    """Rebuild the compressed (shrunk, quantization-configured) model of a finished run from its checkpoints.

    With ``shrunk=False`` the fine-tuned model keeps its original channel counts (dead
    channels are zero, not sliced away), e.g. to remove more channels before :func:`shrink`.
    """
    config, recorded_weights = run_config(report_dir)
    run = RunFolder(Path(report_dir), read_settings(report_dir))
    return _restore("quantize", config, weights if weights is not None else recorded_weights, run,
                    skip=() if shrunk else ("shrink",))


def run_config(report_dir: str | Path) -> tuple[CompressConfig, str | None]:
    """The :class:`CompressConfig` and the weights file a run was started with (from its ``settings.json``).

    Example:
        >>> config, weights = run_config("runs/r56")  # doctest: +SKIP
    """
    settings = read_settings(report_dir)
    config = CompressConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings["config"].items()})
    return config, settings["weights"]
