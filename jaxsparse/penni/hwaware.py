"""Hardware-aware compression: per-layer pruning thresholds learnt against a hardware cost.

PENNI prunes every decomposed layer with one rule, ``|c| < s * std(c)``, and one ``s`` for
all layers. Here each layer ``l`` gets its own threshold ``s_l`` (``s_l = softplus(r_l)``,
``r_l`` learnt), and training minimises

.. math::

    \\mathcal{L} = \\mathrm{CE}(\\text{model with gated coefficients})
        + \\lambda \\, \\frac{\\mathrm{cost}(\\rho(\\theta, s))}{\\mathrm{cost}(\\rho_0)}

where ``cost`` is *any* differentiable ``cost_fn(coef_density: float32[L]) -> scalar`` over
the layers of :func:`~jaxsparse.penni.count.describe_layers` (for instance the modelled
latency of an accelerator, see ``hwmodel.codesign.costfn``; nothing here knows about
hardware), normalised by its value at the starting densities ``rho_0`` so that ``lambda``
is scale-free. The loss is the one training loop's
(:func:`jaxsparse.penni.train.training_loss`) with :func:`hwaware_objective`: its gate masks the
coefficients, its term is :func:`cost_term`.

Differentiable relaxation. With ``z = (|c| - s * std(c)) / (T * std(c))`` a coefficient is
kept with probability ``p = sigmoid(z)``; the layer's *expected density* (Sparseloop-style
expected counting) is ``rho_l = mean(p)``, which gives the cost a gradient in ``s_l`` and
in the coefficients. The forward pass multiplies each coefficient by a gate: the hard
PENNI mask ``1[z >= 0]`` with the sigmoid's gradient (straight-through, ``gate="ste"``),
or the soft ``p`` itself (``gate="sigmoid"``). Layers that dominate the cost get larger
thresholds, so sparsity is allocated by hardware cost rather than uniformly; at the end
:func:`prune_with_thresholds` applies exactly PENNI's rule with the learnt ``s_l``, and the
model is fine-tuned with the pruned entries held at zero (:func:`keep_masks`).

Channel gates (``channel_gates=True``). A per-coefficient threshold rarely empties a whole
output channel, yet on a design whose engines work per *live output channel* (a dense basis
stage, a matcher that scans every channel's reduction) that is what latency follows once
the coefficients are sparse. Each layer then also learns a channel threshold
``g_l = softplus(q_l)``: channel ``o`` is kept with probability
``sigmoid((n_o - g_l mean(n)) / (T_c mean(n)))``, ``n_o = rms(c[:, o, :])`` (hard forward:
:func:`~jaxsparse.penni.prune.channel_mask`), and the cost is called as ``cost_fn(rho, live)`` with the expected
live fractions ``live_l = mean_o q_o`` (and ``rho_l = mean(p q)``). The cost gradient then
also shrinks the weakest channels of the layers that dominate the cost, group-lasso style.

Example:
    >>> import jax.numpy as jnp
    >>> c = jnp.asarray([0.05, -0.3, 1.2, -2.0])
    >>> gated_coefficients(c, jnp.float32(1.0), 0.1, "ste").tolist() == [0.0, 0.0, 1.2000000476837158, -2.0]
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from runkit import UsageError, check_choice, check_positive
from jaxsparse.penni.count import describe_layers
from jaxsparse.penni.layers import DecomposedConv, iter_layers, path_name
from jaxsparse.penni.prune import channel_mask, channel_norms, penni_mask
from jaxsparse.penni.train import Objective, TrainConfig, fit_objective

#: Gates of the forward pass: straight-through hard mask, or the soft mask.
GATES = ("ste", "sigmoid")


@dataclasses.dataclass(frozen=True)
class HwAwareConfig:
    """Settings of :func:`hwaware_fit`.

    Attributes:
      cost_weight: ``lambda``, weight of the normalised cost (0: plain training).
      steps: optimisation steps.
      batch_size: examples per step.
      learning_rate, momentum, weight_decay: SGD on the model's parameters.
      threshold_learning_rate: Adam on the raw thresholds ``r_l``.
      initial_threshold: starting ``s_l`` for every layer (PENNI's ``s``).
      threshold_steps: thresholds are learnt in the first this many steps and then frozen, so
        the remaining steps fine-tune the model under fixed masks with the same optimizer
        (None: learnt in every step; 0: never, i.e. training at the fixed uniform ``s``).
      temperature: gate width ``T`` in units of ``std(c)``.
      gate: ``"ste"`` or ``"sigmoid"`` (see the module docstring).
      train_weights: also train the model's parameters (False: thresholds only).
      channel_gates: also learn one *channel* threshold ``g_l`` per layer: output channel ``o``
        is kept iff ``rms(c[:, o, :]) >= g_l * mean_o rms(c[:, o, :])``, and ``cost_fn`` is
        called as ``cost_fn(coef_density, live_out_fraction)`` with the expected fraction of
        live output channels (see the module docstring).
      initial_channel_threshold: starting ``g_l`` (small: only channels that are already
        nearly empty start dead).
      channel_temperature: width of the channel gate in units of the mean channel norm.
      augment_pad: random-crop padding (0: no augmentation).
      seed: data order and augmentation.
      checkpoint_every: steps between checkpoints (when a run folder is given).
    """

    cost_weight: float = 1.0
    steps: int = 200
    batch_size: int = 128
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    threshold_learning_rate: float = 0.05
    initial_threshold: float = 1.0
    threshold_steps: int | None = None
    temperature: float = 0.1
    gate: str = "ste"
    train_weights: bool = True
    channel_gates: bool = False
    initial_channel_threshold: float = 0.5
    channel_temperature: float = 0.1
    augment_pad: int = 4
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self):
        check_positive("cost_weight", self.cost_weight, allow_zero=True)
        check_positive("steps", self.steps, allow_zero=True)
        check_positive("batch_size", self.batch_size)
        check_positive("learning_rate", self.learning_rate)
        check_positive("threshold_learning_rate", self.threshold_learning_rate)
        check_positive("initial_threshold", self.initial_threshold)
        check_positive("temperature", self.temperature)
        check_positive("checkpoint_every", self.checkpoint_every)
        check_positive("initial_channel_threshold", self.initial_channel_threshold)
        check_positive("channel_temperature", self.channel_temperature)
        if self.threshold_steps is not None:
            check_positive("threshold_steps", self.threshold_steps, allow_zero=True)
        check_choice("gate", self.gate, GATES)


# ----------------------------------------------------------------------------- relaxation


def threshold_from_raw(raw: jax.Array) -> jax.Array:
    """``s = softplus(r)``: thresholds stay non-negative."""
    return jax.nn.softplus(raw)


def raw_from_threshold(s: float) -> float:
    """Inverse of :func:`threshold_from_raw`."""
    check_positive("threshold", s)
    return float(np.log(np.expm1(s)))


def keep_probability(coefficients: jax.Array, threshold: jax.Array, temperature: float) -> jax.Array:
    """``sigmoid((|c| - s * std(c)) / (T * std(c)))``; the scale ``std(c)`` is not differentiated."""
    scale = jax.lax.stop_gradient(jnp.std(coefficients)) + 1e-12
    return jax.nn.sigmoid((jnp.abs(coefficients) - threshold * scale) / (temperature * scale))


def expected_density(coefficients: jax.Array, threshold: jax.Array, temperature: float) -> jax.Array:
    """Expected fraction of coefficients kept: ``mean(keep_probability)``."""
    return jnp.mean(keep_probability(coefficients, threshold, temperature))


def channel_keep_probability(coefficients: jax.Array, channel_threshold: jax.Array, temperature: float) -> jax.Array:
    """``sigmoid((n_o - g * mean(n)) / (T * mean(n)))`` per output channel; the scale ``mean(n)`` is not differentiated."""
    norms = channel_norms(coefficients)
    scale = jax.lax.stop_gradient(jnp.mean(norms)) + 1e-12
    return jax.nn.sigmoid((norms - channel_threshold * scale) / (temperature * scale))


def expected_live_fraction(coefficients: jax.Array, channel_threshold: jax.Array, temperature: float) -> jax.Array:
    """Expected fraction of live output channels: ``mean_o(channel_keep_probability)``."""
    return jnp.mean(channel_keep_probability(coefficients, channel_threshold, temperature))


def gated_coefficients(
    coefficients: jax.Array,
    threshold: jax.Array,
    temperature: float,
    gate: str = "ste",
    channel_threshold: jax.Array | None = None,
    channel_temperature: float = 0.1,
) -> jax.Array:
    """Coefficients times their gate: the hard mask ``|c| >= s * std(c)`` (straight-through) or the soft one.

    With ``channel_threshold`` the gate is also multiplied by the channel gate of
    :func:`channel_keep_probability` (hard: :func:`~jaxsparse.penni.prune.channel_mask`).
    """
    p = keep_probability(coefficients, threshold, temperature)
    if channel_threshold is not None:
        p = p * channel_keep_probability(coefficients, channel_threshold, channel_temperature)[None, :, None]
    if gate == "sigmoid":
        return coefficients * p
    if gate == "ste":
        hard = penni_mask(coefficients, threshold)
        if channel_threshold is not None:
            hard = hard & channel_mask(coefficients, channel_threshold)[None, :, None]
        # p - stop_gradient(p) is exactly 0 forward, so the forward value is exactly c * hard.
        return coefficients * hard.astype(coefficients.dtype) + coefficients * (p - jax.lax.stop_gradient(p))
    raise UsageError(f"gate: expected one of {list(GATES)}, got {gate!r}")


# ----------------------------------------------------------------------------- model plumbing


def _coefficient_layer(path) -> str | None:
    """Dotted layer path of a ``coefficients`` leaf (``"layer1.0.conv1"``), else None."""
    layer, _, leaf = path_name(path).rpartition(".")
    return layer if leaf == "coefficients" else None


def decomposed_paths(model: nnx.Module) -> list[str]:
    """Paths of the model's :class:`~jaxsparse.penni.layers.DecomposedConv` layers, in graph order."""
    return [path for path, _ in iter_layers(model, DecomposedConv)]


def initial_raw_thresholds(model: nnx.Module, threshold: float) -> dict[str, jax.Array]:
    """One raw threshold per decomposed layer, all giving ``s = threshold``."""
    paths = decomposed_paths(model)
    if not paths:
        raise UsageError("model: expected at least one DecomposedConv layer (decompose the model first)")
    value = raw_from_threshold(threshold)
    return {p: jnp.asarray(value, jnp.float32) for p in paths}


def gate_params(params: Any, raw: dict[str, jax.Array], temperature: float, gate: str,
                channel_raw: dict[str, jax.Array] | None = None, channel_temperature: float = 0.1) -> Any:
    """``params`` (an ``nnx.Param`` state) with every layer's coefficients gated by its threshold(s)."""

    def one(path, leaf):
        layer = _coefficient_layer(path)
        if layer is None or layer not in raw:
            return leaf
        g = threshold_from_raw(channel_raw[layer]) if channel_raw else None
        return gated_coefficients(leaf, threshold_from_raw(raw[layer]), temperature, gate, g, channel_temperature)

    return jax.tree_util.tree_map_with_path(one, params)


def coefficient_leaves(params: Any) -> dict[str, jax.Array]:
    """``layer path -> coefficients`` of an ``nnx.Param`` state."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        layer = _coefficient_layer(path)
        if layer is not None:
            out[layer] = leaf
    return out


class DensityLayout(NamedTuple):
    """Which entry of the description each decomposed layer fills; the constant densities of the rest."""

    names: tuple[str, ...]
    decomposed_index: tuple[int, ...]   # position in ``names`` of each path in ``paths``
    paths: tuple[str, ...]
    constant: np.ndarray                # float32[L]: densities of the other layers (0 where learnt)


def density_layout(records: list[dict], paths: list[str]) -> DensityLayout:
    """Match decomposed layer paths to the records of :func:`describe_layers` (by name)."""
    names = tuple(r["name"] for r in records)
    missing = [p for p in paths if p not in names]
    if missing:
        raise UsageError(f"records: expected an entry for every decomposed layer, missing {missing}")
    index = tuple(names.index(p) for p in paths)
    constant = np.asarray([0.0 if i in index else float(r["coef_density"]) for i, r in enumerate(records)], np.float32)
    return DensityLayout(names, index, tuple(paths), constant)


def layer_densities(params: Any, raw: dict[str, jax.Array], layout: DensityLayout, temperature: float,
                    channel_raw: dict[str, jax.Array] | None = None, channel_temperature: float = 0.1) -> jax.Array:
    """Expected coefficient density of every described layer (``float32[L]``), differentiable.

    With channel thresholds, a coefficient counts with its keep probability times its
    channel's: ``rho_l = mean_{i,o,j}(p_{ioj} q_o)``.
    """
    coefs = coefficient_leaves(params)

    def one(p):
        keep = keep_probability(coefs[p], threshold_from_raw(raw[p]), temperature)
        if channel_raw:
            keep = keep * channel_keep_probability(coefs[p], threshold_from_raw(channel_raw[p]), channel_temperature)[None, :, None]
        return jnp.mean(keep)

    learnt = jnp.stack([one(p) for p in layout.paths])
    index = jnp.asarray(layout.decomposed_index, jnp.int32)
    return jnp.asarray(layout.constant).at[index].set(learnt)


def layer_live_fractions(params: Any, channel_raw: dict[str, jax.Array], layout: DensityLayout, channel_temperature: float) -> jax.Array:
    """Expected fraction of live output channels of every described layer (``float32[L]``; 1 where not learnt)."""
    coefs = coefficient_leaves(params)
    learnt = jnp.stack([expected_live_fraction(coefs[p], threshold_from_raw(channel_raw[p]), channel_temperature) for p in layout.paths])
    index = jnp.asarray(layout.decomposed_index, jnp.int32)
    return jnp.ones(len(layout.names), jnp.float32).at[index].set(learnt)


def relaxed_cost(cost_fn: Callable[..., jax.Array], params: Any, raw: dict[str, jax.Array],
                 channel_raw: dict[str, jax.Array] | None, layout: DensityLayout, config: HwAwareConfig) -> tuple[jax.Array, jax.Array]:
    """``(densities, cost)`` of the relaxation: ``cost_fn(densities)``, or ``cost_fn(densities, live_fractions)`` with channel thresholds."""
    densities = layer_densities(params, raw, layout, config.temperature, channel_raw, config.channel_temperature)
    if not channel_raw:
        return densities, cost_fn(densities)
    return densities, cost_fn(densities, layer_live_fractions(params, channel_raw, layout, config.channel_temperature))


def cost_term(cost_fn: Callable[..., jax.Array], layout: DensityLayout, config: HwAwareConfig, reference: float) -> Callable:
    """``(params, raw, channel_raw) -> (lambda * cost / reference, cost / reference, densities)``: the loss term
    hardware-aware training adds (:func:`relaxed_cost` normalised by its value at the start).

    It is the term of :func:`hwaware_objective`; the training loop adds it to the task loss of
    the gated model (:func:`jaxsparse.penni.train.training_loss`)."""

    def term(params, raw, channel_raw=None):
        densities, cost = relaxed_cost(cost_fn, params, raw, channel_raw, layout, config)
        cost = cost / reference
        return config.cost_weight * cost, cost, densities

    return term


def hwaware_objective(cost_fn: Callable[..., jax.Array], layout: DensityLayout, config: HwAwareConfig, reference: float,
                      raw: tuple[dict, dict]) -> Objective:
    """Hardware-aware training as an :class:`~jaxsparse.penni.train.Objective` of the one training loop.

    Extra parameters: the raw thresholds ``(coefficient raws, channel raws)`` (Adam, learnt in
    the first ``config.threshold_steps`` steps, then frozen); gate: the coefficients masked by
    them (:func:`gate_params`); loss term: :func:`cost_term` (recorded as ``cost``).
    """
    term = cost_term(cost_fn, layout, config, reference)
    tx = optax.adam(config.threshold_learning_rate)
    if config.threshold_steps is not None:
        tx = optax.chain(tx, optax.scale_by_schedule(lambda count: jnp.where(count < config.threshold_steps, 1.0, 0.0)))

    def objective_term(params, extra):
        weighted, cost, _ = term(params, extra[0], extra[1])
        return weighted, {"cost": cost}

    def gate(params, extra):
        return gate_params(params, extra[0], config.temperature, config.gate, extra[1], config.channel_temperature)

    return Objective(extra=raw, tx=_standard_promotion(tx), term=objective_term, gate=gate, train_params=config.train_weights,
                     settings={"hwaware": dataclasses.asdict(config), "layers": list(layout.names)})


def _standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` run under standard dtype promotion: optax's Adam bias correction raises a python float
    to an int32 count, which strict promotion rejects."""

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------- training


class HwAwareResult(NamedTuple):
    """Learnt thresholds ``s_l`` (``path -> float``), their expected densities, and the history.

    ``channel_thresholds`` (``g_l``) and ``live_fractions`` are empty without channel gates.
    """

    thresholds: dict[str, float]
    densities: dict[str, float]
    history: list[dict]
    channel_thresholds: dict[str, float] = {}
    live_fractions: dict[str, float] = {}


def _weights_config(config: HwAwareConfig, examples: int) -> TrainConfig:
    """The :class:`~jaxsparse.penni.train.TrainConfig` of the model's parameters: ``config.steps`` steps of
    SGD (momentum, no Nesterov, constant rate, weight decay), no L1, no alternation."""
    steps_per_epoch = max(1, examples // config.batch_size)
    return TrainConfig(epochs=-(-config.steps // steps_per_epoch), steps=config.steps, batch_size=config.batch_size,
                       learning_rate=config.learning_rate, milestones=(), momentum=config.momentum, nesterov=False,
                       weight_decay=config.weight_decay, l1=0.0, alternate_every=0, augment_pad=config.augment_pad,
                       seed=config.seed, checkpoint_every=config.checkpoint_every)  # fmt: skip


def hwaware_fit(
    model: nnx.Module,
    images: np.ndarray,
    labels: np.ndarray,
    cost_fn: Callable[[jax.Array], jax.Array],
    config: HwAwareConfig,
    *,
    records: list[dict] | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    description: str = "hw-aware",
) -> HwAwareResult:
    """Learn per-layer thresholds (and train the model) against ``task loss + lambda * cost``.

    Trains through :func:`jaxsparse.penni.train.fit_objective` (:func:`hwaware_objective`).
    The model is updated in place with its trained (ungated) parameters; apply the result
    with :func:`prune_with_thresholds`.

    Args:
      model: an NNX model with :class:`~jaxsparse.penni.layers.DecomposedConv` layers.
      images, labels: uint8 NHWC training images and int labels.
      cost_fn: ``coef_density[L] -> scalar``, differentiable, over the layers of ``records``.
      config: :class:`HwAwareConfig`.
      records: the description ``cost_fn`` is defined over (default: ``describe_layers(model)``).
      checkpoint: run folder written every ``config.checkpoint_every`` steps (and at epoch ends)
        and resumed from; one written with other settings is refused, naming them.
      progress: show a progress bar.

    Returns:
      :class:`HwAwareResult`; its history has one row per epoch (``step``, ``loss``, ``ce``,
      ``cost``, ``train_top1``: means over the epoch's steps).

    Example:
        >>> result = hwaware_fit(model, x, y, cost_fn, HwAwareConfig(cost_weight=2.0, steps=100))  # doctest: +SKIP
        >>> prune_with_thresholds(model, result.thresholds)  # doctest: +SKIP
    """
    if len(images) < config.batch_size:
        raise UsageError(f"batch_size: expected at most the number of training images ({len(images)}), got {config.batch_size}")
    records = describe_layers(model, input_shape=(1, *images.shape[1:])) if records is None else records
    # Trainable thresholds: (coefficient raws, channel raws); the second is empty without channel gates.
    raw = (initial_raw_thresholds(model, config.initial_threshold),
           initial_raw_thresholds(model, config.initial_channel_threshold) if config.channel_gates else {})
    layout = density_layout(records, list(raw[0]))
    params = nnx.state(model, nnx.Param)
    reference = float(relaxed_cost(cost_fn, params, raw[0], raw[1], layout, config)[1])
    if not np.isfinite(reference) or reference <= 0:
        raise UsageError(f"cost_fn: expected a finite positive cost at the starting densities, got {reference!r}")
    history, (coef_raw, channel_raw) = fit_objective(
        model, images, labels, _weights_config(config, len(images)), hwaware_objective(cost_fn, layout, config, reference, raw),
        checkpoint=checkpoint, description=description, progress=progress)
    params = nnx.state(model, nnx.Param)
    densities = np.asarray(layer_densities(params, coef_raw, layout, config.temperature, channel_raw, config.channel_temperature))
    live = np.asarray(layer_live_fractions(params, channel_raw, layout, config.channel_temperature)) if channel_raw else None
    return HwAwareResult(
        thresholds={p: float(threshold_from_raw(r)) for p, r in coef_raw.items()},
        densities={layout.names[i]: float(densities[i]) for i in range(len(layout.names))},
        history=[{"step": row["step"], "loss": row["loss"], "ce": row["task_loss"], "cost": row["cost"],
                  "train_top1": row["train_top1"]} for row in history],
        channel_thresholds={p: float(threshold_from_raw(r)) for p, r in channel_raw.items()},
        live_fractions={} if live is None else {layout.names[i]: float(live[i]) for i in range(len(layout.names))},
    )


# ----------------------------------------------------------------------------- applying thresholds


def prune_with_thresholds(model: nnx.Module, thresholds: dict[str, float] | float,
                          channel_thresholds: dict[str, float] | None = None) -> dict[str, float]:
    """Apply PENNI's rule ``|c| < s_l * std(c)`` in place, per layer (one ``s`` for all if a number).

    With ``channel_thresholds`` the channel rule of :func:`~jaxsparse.penni.prune.channel_mask` (on the same,
    unpruned coefficients, as in training) also removes whole output channels.

    Returns:
      ``layer path -> kept fraction`` of coefficients.
    """
    kept = {}
    for path, layer in iter_layers(model, DecomposedConv):
        s = thresholds if isinstance(thresholds, (int, float)) else thresholds.get(path)
        if s is None:
            raise UsageError(f"thresholds: expected an entry for layer {path!r}, got keys {sorted(thresholds)}")
        c = layer.coefficients[...]
        mask = penni_mask(c, float(s))
        if channel_thresholds:
            if path not in channel_thresholds:
                raise UsageError(f"channel_thresholds: expected an entry for layer {path!r}, got keys {sorted(channel_thresholds)}")
            mask = mask & channel_mask(c, float(channel_thresholds[path]))[None, :, None]
        layer.coefficients[...] = jnp.where(mask, c, jnp.zeros_like(c))
        kept[path] = float(jnp.mean(mask))
    return kept


def keep_masks(model: nnx.Module) -> Any:
    """Keep-masks like ``nnx.state(model, nnx.Param)``: non-zero coefficients, everything else kept.

    Pass them to :func:`jaxsparse.penni.train.fit` (``masks=``) to fine-tune with pruned
    coefficients held at exactly zero.
    """
    params = nnx.state(model, nnx.Param)
    return jax.tree_util.tree_map_with_path(
        lambda path, p: (p != 0) if _coefficient_layer(path) is not None else jnp.ones(p.shape, jnp.bool_), params)
