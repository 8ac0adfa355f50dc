"""Stage 3, *Retrain* (and the fine-tuning of stage 4): the published SGD recipe through optax.

Recipe (PENNI's public CIFAR code): SGD with Nesterov momentum 0.9, weight decay 1e-4,
batch 128, learning rate 0.01 divided by 10 at 50% and 75% of the epochs; an L1 penalty
``lambda * sum |coefficients|`` pushes coefficients to zero; basis kernels and
coefficients are trained in turn, switching every ``alternate_every`` epochs (joint
training when 0). BatchNorm and the classifier train in every phase.

:func:`fit` checkpoints after every epoch (atomically, in a run folder that records its
settings, :func:`runkit.open_run`) and resumes from it, so an interrupted run repeats at
most the epoch it was in (or the ``checkpoint_every`` steps). Methods that add trainable
parameters and a loss term (hardware-aware training) plug an :class:`Objective` into the
same loop (:func:`fit_objective`). Epoch ``e`` visits the data in
an order fixed by ``(seed, e)`` and draws its augmentation from ``(seed, e, step)``, so a
resumed run computes exactly what an uninterrupted one would.

Knowledge distillation (an option, off by default): with ``distill = a > 0`` and a
``teacher`` model, the loss is :math:`(1 - a)\\,CE(y, s) + a\\,T^2\\,KL(\\sigma(t/T) \\| \\sigma(s/T))`
(Hinton et al., 2015) for student logits ``s`` and teacher logits ``t`` on the same
augmented batch, which lets a compressed model recover from few training images.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from functools import partial
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from runkit import UsageError, check_choice, check_positive, open_run
from runkit.progress import progress_bar
from jaxsparse.data import augment, batches, normalize
from jaxsparse.penni.layers import path_name
from jaxsparse.penni.prune import masked

#: Parameter groups of :func:`param_groups`.
GROUPS = ("basis", "coefficients", "shared")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training phase (retraining or fine-tuning).

    Attributes:
      epochs: passes over the training data.
      batch_size: examples per step (the last incomplete batch of an epoch is dropped).
      learning_rate: initial rate; multiplied by ``lr_decay`` at each fraction in ``milestones``.
      momentum, nesterov, weight_decay: SGD settings.
      l1: weight of ``sum |coefficients|`` in the loss (0: none).
      alternate_every: epochs per phase when training basis and coefficients in turn (0: jointly).
      first_group: ``"coefficients"`` or ``"basis"``, the group trained in the first phase.
      augment_pad: random-crop padding of the augmentation (0: no augmentation).
      distill: weight ``a`` of the distillation term (0: plain cross-entropy; needs a teacher).
      distill_temperature: softmax temperature ``T`` of the distillation term.
      seed: fixes data order and augmentation.
      steps: stop after this many optimizer steps, within the last epoch (None: ``epochs``
        whole epochs); the learning-rate milestones are fractions of it.
      checkpoint_every: also checkpoint every this many steps inside an epoch (0: at epoch ends only).
    """

    epochs: int
    batch_size: int = 128
    learning_rate: float = 0.01
    milestones: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    l1: float = 0.0
    alternate_every: int = 2
    first_group: str = "coefficients"
    augment_pad: int = 4
    distill: float = 0.0
    distill_temperature: float = 4.0
    seed: int = 0
    steps: int | None = None
    checkpoint_every: int = 0

    def __post_init__(self):
        check_positive("epochs", self.epochs, allow_zero=True)
        if self.steps is not None:
            check_positive("steps", self.steps, allow_zero=True)
        check_positive("checkpoint_every", self.checkpoint_every, allow_zero=True)
        if not 0.0 <= self.distill <= 1.0:
            raise UsageError(f"distill: expected a weight in [0, 1], got {self.distill!r}")
        check_positive("distill_temperature", self.distill_temperature)
        check_positive("batch_size", self.batch_size)
        check_positive("learning_rate", self.learning_rate)
        check_positive("l1", self.l1, allow_zero=True)
        check_positive("alternate_every", self.alternate_every, allow_zero=True)
        check_choice("first_group", self.first_group, ("coefficients", "basis"))


def param_groups(params: Any) -> Any:
    """Label every parameter leaf ``"basis"``, ``"coefficients"`` or ``"shared"`` (everything else)."""

    def label(path, _):
        names = path_name(path).split(".")
        for group in ("basis", "coefficients"):
            if group in names:
                return group
        return "shared"

    return jax.tree_util.tree_map_with_path(label, params)


def sgd_recipe(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Weight decay + SGD (Nesterov) with the step learning-rate schedule of ``config``."""
    total = config.epochs * steps_per_epoch if config.steps is None else config.steps
    boundaries = sorted({int(round(m * total)) for m in config.milestones if 0 < int(round(m * total)) < total})

    def schedule(count):
        # optax.piecewise_constant_schedule's arithmetic mixes int and float (fails under strict promotion)
        rate = jnp.asarray(config.learning_rate, jnp.float32)
        for boundary in boundaries:
            rate = jnp.where(count >= boundary, rate * config.lr_decay, rate)
        return rate

    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov and config.momentum > 0),
    )


class AlternatingState(NamedTuple):
    """State of :func:`alternating`: step counter and the inner optimizer's state."""

    count: jax.Array
    inner_state: Any


def alternating(
    inner: optax.GradientTransformation, groups: Any, period_steps: int, first_group: str = "coefficients"
) -> optax.GradientTransformation:
    """Train the ``"basis"`` and ``"coefficients"`` groups in turn, ``period_steps`` steps each.

    ``"shared"`` leaves (BatchNorm, classifier, undecomposed layers) train in every phase.
    The resting group gets neither gradient nor update (so no weight decay or momentum moves it).

    Args:
      inner: the optimizer of the trained group.
      groups: pytree of labels from :func:`param_groups`.
      period_steps: steps per phase.
      first_group: group trained in steps ``0 .. period_steps - 1``.
    """
    check_positive("period_steps", period_steps)
    check_choice("first_group", first_group, ("coefficients", "basis"))
    second_group = "basis" if first_group == "coefficients" else "coefficients"

    def init(params):
        return AlternatingState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        phase = (state.count // period_steps) % 2
        resting = jnp.where(phase == 0, GROUPS.index(second_group), GROUPS.index(first_group))

        def gate(tree):
            return jax.tree.map(lambda u, g: jnp.where(resting == GROUPS.index(g), jnp.zeros_like(u), u), tree, groups)

        inner_updates, inner_state = inner.update(gate(updates), state.inner_state, params)
        return gate(inner_updates), AlternatingState(state.count + 1, inner_state)

    return optax.GradientTransformation(init, update)


def coefficient_l1(params: Any) -> jax.Array:
    """``sum |coefficients|`` over every decomposed layer."""
    groups = param_groups(params)
    terms = [jnp.sum(jnp.abs(p)) for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(groups)) if g == "coefficients"]
    return sum(terms, jnp.zeros((), jnp.float32))


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """Mean over the batch of :math:`T^2\\,KL(\\sigma(t/T) \\| \\sigma(s/T))`.

    The :math:`T^2` factor keeps the gradient's scale independent of ``T``. Zero when the
    student's logits equal the teacher's (up to a per-example constant).

    Example:
        >>> s = jnp.asarray([[2.0, 0.0, -1.0]])
        >>> float(distillation_loss(s, s + 3.0, 4.0))
        0.0
    """
    teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
    log_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    return temperature**2 * jnp.mean(optax.kl_divergence(log_student, teacher))


def _prepare(images: jax.Array, key: jax.Array, pad: int) -> jax.Array:
    return normalize(augment(key, images, pad) if pad > 0 else images)


def make_optimizer(
    config: TrainConfig, params: Any, steps_per_epoch: int, masks: Any = None, mask_schedule=None
) -> optax.GradientTransformation:
    """The optimizer of one phase: recipe SGD, alternating groups if configured, masks if given.

    ``mask_schedule`` (``(params, step) -> keep-masks``) prunes gradually while training
    (see :func:`~jaxsparse.penni.prune.masked`); ``masks`` are then the starting masks.
    """
    tx = sgd_recipe(config, steps_per_epoch)
    groups = param_groups(params)
    if config.alternate_every > 0 and {"basis", "coefficients"} <= set(jax.tree.leaves(groups)):
        tx = alternating(tx, groups, config.alternate_every * steps_per_epoch, config.first_group)
    if masks is not None or mask_schedule is not None:
        tx = masked(tx, masks, mask_schedule=mask_schedule)
    return tx


class Objective(NamedTuple):
    """What a training method adds to :func:`fit`'s task loss: extra trainable parameters and a loss term.

    The loss :func:`fit` minimises becomes ``task(gate(params, extra)) + term(params, extra)``,
    where ``task`` is the cross-entropy (or distillation) loss of the model run with the
    parameters ``gate`` returns. Hardware-aware training
    (:func:`~jaxsparse.penni.hwaware.hwaware_fit`) is one: its ``extra`` are per-layer
    thresholds, ``gate`` masks the coefficients with them, ``term`` is the weighted hardware cost.

    Attributes:
      extra: starting pytree of the extra parameters.
      tx: their optimizer.
      term: ``(params, extra) -> (scalar, {name: scalar})``: the added loss and metrics to record.
      gate: ``(params, extra) -> params`` the forward pass runs with (None: ``params`` as they are).
      settings: JSON-able settings of the method, recorded in (and checked against) the run folder.
      train_params: also train the model's parameters (False: only ``extra``; BatchNorm
        statistics still follow the data).

    Example:
        >>> objective = Objective(extra={"t": jnp.zeros(())}, tx=optax.adam(0.1),
        ...                       term=lambda params, extra: (jnp.square(extra["t"] - 1.0), {}))
        >>> history, extra = fit_objective(model, x, y, TrainConfig(epochs=1), objective)  # doctest: +SKIP
    """

    extra: Any
    tx: optax.GradientTransformation
    term: Callable[[Any, Any], tuple[jax.Array, dict]]
    gate: Callable[[Any, Any], Any] | None = None
    settings: dict = {}
    train_params: bool = True


def run_settings(config: TrainConfig, examples: int, *, masks: bool, mask_schedule: bool,
                 objective: Objective | None = None) -> dict:
    """What :func:`fit` records in its run folder, and a resumed run must match."""
    settings = {"config": dataclasses.asdict(config), "examples": int(examples), "masks": masks, "mask_schedule": mask_schedule}
    if objective is not None:
        settings["objective"] = dict(objective.settings)
    return settings


def fit(model: nnx.Module, images: np.ndarray, labels: np.ndarray, config: TrainConfig, **options) -> list[dict]:
    """Train ``model`` in place on uint8 NHWC ``images`` with the recipe of ``config``.

    Args:
      model: NNX model (its ``Param`` leaves train; ``BatchStat`` leaves follow the data).
      images, labels: training set, uint8 ``(N, H, W, 3)`` and int ``(N,)``.
      config: the phase's :class:`TrainConfig`.
      options: keyword arguments of :func:`fit_objective` (the training loop), without an objective:
      masks: keep-masks like the model's ``nnx.Param`` state; pruned entries stay exactly zero.
      mask_schedule: ``(params, step) -> keep-masks``, recomputed every step and combined
        with the current masks (which only shrink): gradual pruning while training.
      teacher: model whose (eval-mode) logits the student matches when ``config.distill > 0``.
      checkpoint: run folder (:func:`runkit.open_run`) written after every epoch (and every
        ``config.checkpoint_every`` steps) and resumed from; one written for another config,
        data size or masking is refused with an error naming what differs.
      description: progress bar label.
      progress: show progress bars.

    Returns:
      Per-epoch history ``[{"epoch", "step", "loss", "train_top1"}]`` (including resumed epochs).

    Example:
        >>> history = fit(model, x_train, y_train, TrainConfig(epochs=2, l1=1e-4))  # doctest: +SKIP
    """
    return fit_objective(model, images, labels, config, None, **options)[0]


def training_loss(graphdef: nnx.GraphDef, rest: Any, config: TrainConfig, objective: Objective | None) -> Callable:
    """The loss one step of :func:`fit_objective` differentiates (with respect to ``params`` and ``extra``).

    .. math::
        L = (1 - \\alpha)\\,CE(f(g(p, e); x), y) + \\alpha\\,KD + l_1 \\sum |c| + term(p, e)

    where ``g``/``term`` are the objective's gate and loss term (identity and 0 without one),
    ``alpha = config.distill`` and the L1 sum runs over the coefficients (:func:`coefficient_l1`).

    Args:
      graphdef, rest: the model's graph and its non-``Param``/``BatchStat`` state
        (``nnx.split(model, nnx.Param, nnx.BatchStat, ...)``).
      config: the phase's :class:`TrainConfig` (``distill``, ``distill_temperature``, ``l1``).
      objective: the method's :class:`Objective` (None: plain training).

    Returns:
      ``loss(params, extra, stats, x, y, teacher_logits=None) -> (total, (new_stats, metrics))`` on a
      normalised batch ``x``; ``metrics`` holds ``train_top1`` and, with an objective,
      ``task_loss`` and the term's metrics.

    Example:
        >>> graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)  # doctest: +SKIP
        >>> loss = training_loss(graphdef, rest, TrainConfig(epochs=1), None)  # doctest: +SKIP
        >>> total, (stats, metrics) = loss(params, (), stats, x, y)  # doctest: +SKIP
    """

    def loss_fn(p, e, stats, x, y, teacher_logits=None):
        seen = objective.gate(p, e) if objective is not None and objective.gate is not None else p
        logits, new_stats = _forward(graphdef, seen, stats, rest, x)
        labels_1hot = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
        loss = jnp.mean(optax.softmax_cross_entropy(logits, labels_1hot))
        if config.distill > 0:
            kd = distillation_loss(logits, teacher_logits, config.distill_temperature)
            loss = (1.0 - config.distill) * loss + config.distill * kd
        metrics = {}
        total = loss + (config.l1 * coefficient_l1(p) if config.l1 > 0 else jnp.zeros((), jnp.float32))
        if objective is not None:
            term, extra_metrics = objective.term(p, e)
            total = total + term
            metrics = {"task_loss": loss, **extra_metrics}
        metrics["train_top1"] = jnp.mean(jnp.argmax(logits, -1) == y)
        return total, (new_stats, metrics)

    return loss_fn


def fit_objective(
    model: nnx.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    objective: Objective | None,
    *,
    masks: Any = None,
    mask_schedule=None,
    teacher: nnx.Module | None = None,
    checkpoint: str | os.PathLike | None = None,
    description: str = "train",
    progress: bool = True,
) -> tuple[list[dict], Any]:
    """:func:`fit` with an :class:`Objective` (its extra parameters and loss term); returns ``(history, extra)``.

    The one training loop of the package: every method trains through it. Step ``i`` of
    epoch ``e`` reads the batch fixed by ``(seed, e)`` and draws its augmentation from
    ``(seed, e, i)``, so a run resumed from its run folder (at an epoch end or at any
    ``checkpoint_every`` step) computes exactly what an uninterrupted one would. With an
    objective, history rows also hold ``task_loss`` and the means of its metrics.

    Args:
      objective: the extra parameters and loss term (None: plain training, ``extra`` is ``()``).
      (the others as in :func:`fit`.)

    Returns:
      ``(history, extra)``: the per-epoch history and the trained extra parameters.
    """
    steps_per_epoch = len(images) // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"batch_size: expected at most the number of training images ({len(images)}), got {config.batch_size}")
    total_steps = config.epochs * steps_per_epoch if config.steps is None else config.steps
    if total_steps > config.epochs * steps_per_epoch:
        raise UsageError(f"steps: expected at most epochs x steps per epoch ({config.epochs} x {steps_per_epoch}), got {config.steps}")
    if config.distill > 0 and teacher is None:
        raise UsageError(f"teacher: expected a model to distil from (config.distill = {config.distill}), got None")
    teacher_graphdef, teacher_state = None, None
    if config.distill > 0:
        teacher.eval()
        teacher_graphdef, teacher_state = nnx.split(teacher)
    model.train()
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    if objective is None or objective.train_params:
        tx = make_optimizer(config, params, steps_per_epoch, masks, mask_schedule)
    else:
        tx = optax.set_to_zero()
    extra_tx = objective.tx if objective is not None else optax.identity()
    extra = objective.extra if objective is not None else ()
    opt_state, extra_state = tx.init(params), extra_tx.init(extra)
    start, history, partial_sums = 0, [], {}
    run = None
    if checkpoint is not None:
        run = open_run(checkpoint, run_settings(config, len(images), masks=masks is not None,
                                                mask_schedule=mask_schedule is not None, objective=objective),
                       option="checkpoint", hint="delete it or pass another path")  # fmt: skip
        if run.has("train"):
            (params, stats, opt_state, extra, extra_state), meta = run.load(
                "train", like=(params, stats, opt_state, extra, extra_state))
            start, history, partial_sums = int(meta["step"]), list(meta["history"]), dict(meta["partial"])

    loss_fn = training_loss(graphdef, rest, config, objective)

    @partial(jax.jit, donate_argnums=(0, 1, 2, 3, 4))
    def step(params, stats, opt_state, extra, extra_state, x, y, key, teacher_state):
        x = _prepare(x, key, config.augment_pad)
        teacher_logits = nnx.merge(teacher_graphdef, teacher_state)(x) if config.distill > 0 else None
        (loss, (new_stats, metrics)), (g_params, g_extra) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            params, extra, stats, x, y, teacher_logits)
        updates, opt_state = tx.update(g_params, opt_state, params)
        extra_updates, extra_state = extra_tx.update(g_extra, extra_state, extra)
        params, extra = optax.apply_updates(params, updates), optax.apply_updates(extra, extra_updates)
        return params, new_stats, opt_state, extra, extra_state, {"loss": loss, **metrics}

    def settled(pending: list[dict]) -> dict[str, list[float]]:
        """The epoch's per-step metrics so far (fetched from the device) as lists of floats."""
        sums = {k: list(v) for k, v in partial_sums.items()}
        for row in jax.device_get(pending):
            for name, value in row.items():
                sums.setdefault(name, []).append(float(value))
        return sums

    base_key = jax.random.key(config.seed)
    epochs = -(-total_steps // steps_per_epoch)
    for epoch in range(start // steps_per_epoch, epochs if start < total_steps else 0):
        first = start - epoch * steps_per_epoch if start > epoch * steps_per_epoch else 0
        last = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        pending: list[dict] = []
        # The bar counts the epoch's steps: it starts at those a resumed run skips, and only steps run advance it.
        bar = progress_bar(total=last, initial=first, desc=f"{description} {epoch + 1}/{epochs}", disable=not progress,
                           leave=False, file=sys.stderr)  # fmt: skip
        epoch_batches = batches(images, labels, config.batch_size, seed=config.seed, drop_last=True, epochs=1, start_epoch=epoch)
        for index, (x, y) in enumerate(itertools.islice(epoch_batches, last)):
            if index < first:
                continue
            key = jax.random.fold_in(jax.random.fold_in(base_key, epoch), index)
            params, stats, opt_state, extra, extra_state, metrics = step(
                params, stats, opt_state, extra, extra_state, jnp.asarray(x), jnp.asarray(y, jnp.int32), key, teacher_state)
            pending.append(metrics)
            bar.update(1)
            if index % 10 == 0:
                bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
            done = epoch * steps_per_epoch + index + 1
            if run is not None and config.checkpoint_every and done % config.checkpoint_every == 0 and index + 1 < last:
                run.save("train", (params, stats, opt_state, extra, extra_state),
                         {"step": done, "history": history, "partial": settled(pending)})
        bar.close()
        sums = settled(pending)
        partial_sums = {}
        done = epoch * steps_per_epoch + last
        history.append({"epoch": epoch + 1, "step": done,
                        **{name: float(np.mean(np.asarray(values, np.float32))) for name, values in sums.items()}})
        if run is not None:
            run.save("train", (params, stats, opt_state, extra, extra_state), {"step": done, "history": history, "partial": {}})
    nnx.update(model, params, stats)
    model.eval()
    return history, extra


def _forward(graphdef, params, stats, rest, x):
    # Fresh Variable objects at the current trace level, so BatchNorm may update its statistics here.
    params, stats, rest = jax.tree.map(lambda leaf: leaf, (params, stats, rest))
    model = nnx.merge(graphdef, params, stats, rest)
    logits = model(x)
    return logits, nnx.state(model, nnx.BatchStat)
