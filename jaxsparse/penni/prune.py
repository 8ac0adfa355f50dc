"""Stage 4, *Prune*: pruning rules, a gradual schedule, and an optax wrapper holding the masks.

Rules (each returns boolean keep-masks, ``True`` = kept):

* :func:`penni_mask` — PENNI's rule, per layer: zero ``|c| < s * std(c)``.
* :func:`magnitude_mask` — keep the largest ``1 - sparsity`` fraction of one tensor.
* :func:`global_magnitude_masks` — one magnitude threshold over many tensors.
* :func:`polynomial_sparsity` — the gradual schedule of Zhu & Gupta (2017),
  ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^p``; the same ramp serves for
  PENNI's threshold ``s`` when the rule is applied gradually (``mask_schedule`` of :func:`masked`).
* Channel rules (structured; not in the paper) drop whole output channels of a
  ``(Cin, Cout, d)`` coefficient tensor by their norm (:func:`channel_norms`, the RMS):
  :func:`channel_norm_mask` removes a fixed quota, those of smallest norm (the pipeline's
  ``channel_sparsity``); :func:`channel_mask` removes those below a threshold relative to the
  mean norm (the gate of hardware-aware training, :mod:`jaxsparse.penni.hwaware`).

:func:`masked` wraps any optax optimizer; the masks live in its state (as in jaxpruner).
Gradients of pruned entries are dropped before the inner optimizer (no momentum builds
up) and the update of a pruned entry is ``-param``, so after ``optax.apply_updates`` it
is exactly ``0.0`` however the inner optimizer (weight decay, momentum) behaves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from runkit import UsageError, check_choice


def penni_mask(coefficients: jax.Array, threshold_std: float = 1.0) -> jax.Array:
    """Keep-mask of PENNI's rule: ``|c| >= threshold_std * std(c)`` over the whole layer.

    Example:
        >>> penni_mask(jnp.asarray([0.0, 0.1, -2.0, 3.0]), 1.0).tolist()
        [False, False, True, True]
    """
    c = jnp.asarray(coefficients)
    return jnp.abs(c) >= threshold_std * jnp.std(c)


def channel_norms(coefficients: jax.Array) -> jax.Array:
    """Root-mean-square coefficient of every output channel: ``float32[Cout]`` of ``(Cin, Cout, d)`` coefficients.

    Example:
        >>> channel_norms(jnp.stack([jnp.full((2, 3), 0.5), jnp.full((2, 3), -2.0)], axis=1)).tolist()
        [0.5, 2.0]
    """
    c = jnp.asarray(coefficients)
    if c.ndim != 3:
        raise UsageError(f"coefficients: expected shape (Cin, Cout, d), got {tuple(c.shape)}")
    return jnp.sqrt(jnp.mean(jnp.square(c), axis=(0, 2)))


def channel_norm_mask(coefficients: jax.Array, sparsity: float | jax.Array) -> jax.Array:
    """Keep-mask (shaped like ``coefficients``) removing the ``floor(sparsity * Cout)`` output channels of smallest norm.

    ``coefficients`` is ``(Cin, Cout, d)``; a removed channel loses all its coefficients, so
    :func:`~jaxsparse.penni.shrink.shrink` can slice it away. Channels rank alike by their
    L2 norm and by their RMS (:func:`channel_norms`, a fixed multiple). ``sparsity`` may be traced.

    Example:
        >>> c = jnp.stack([jnp.full((2, 3), 0.1), jnp.full((2, 3), 2.0)], axis=1)  # (2, 2, 3)
        >>> channel_norm_mask(c, 0.5)[0, :, 0].tolist()
        [False, True]
    """
    c = jnp.asarray(coefficients)
    keep = magnitude_mask(channel_norms(c), sparsity)
    return jnp.broadcast_to(keep[None, :, None], c.shape)


def channel_mask(coefficients: jax.Array, channel_threshold: float | jax.Array) -> jax.Array:
    """Per-channel keep-mask ``bool[Cout]``: channel ``o`` is kept iff ``rms(c[:, o, :]) >= g * mean_o rms(c[:, o, :])``.

    The hard rule of the channel gates of hardware-aware training (``g`` learnt per layer).

    Example:
        >>> c = jnp.stack([jnp.full((2, 3), v) for v in (0.01, 1.0, 2.0)], axis=1)  # (Cin=2, Cout=3, d=3)
        >>> channel_mask(c, 0.5).tolist()
        [False, True, True]
    """
    norms = channel_norms(coefficients)
    return norms >= channel_threshold * jnp.mean(norms)


def _ranks(values: jax.Array) -> jax.Array:
    """Rank of every entry of a flat array in ascending order (ties broken by position)."""
    order = jnp.argsort(values, stable=True)
    return jnp.zeros(values.shape, jnp.int32).at[order].set(jnp.arange(values.size, dtype=jnp.int32))


def magnitude_mask(x: jax.Array, sparsity: float | jax.Array) -> jax.Array:
    """Keep-mask pruning exactly ``floor(sparsity * x.size)`` entries of smallest magnitude.

    ``sparsity`` may be traced (it is, under a gradual schedule).

    Example:
        >>> magnitude_mask(jnp.asarray([0.5, -0.1, 0.3, -0.9]), 0.5).tolist()
        [True, False, False, True]
    """
    flat = jnp.ravel(jnp.abs(x))
    num_pruned = jnp.floor(jnp.asarray(sparsity, jnp.float32) * flat.size).astype(jnp.int32)
    return jnp.reshape(_ranks(flat) >= num_pruned, x.shape)


def global_magnitude_masks(tensors: Any, sparsity: float | jax.Array) -> Any:
    """Keep-masks for a pytree of tensors pruned together to ``sparsity`` with one threshold."""
    leaves, treedef = jax.tree.flatten(tensors)
    if not leaves:
        return tensors
    flat = jnp.concatenate([jnp.ravel(jnp.abs(leaf)) for leaf in leaves])
    keep = magnitude_mask(flat, sparsity)
    out, start = [], 0
    for leaf in leaves:
        out.append(jnp.reshape(keep[start : start + leaf.size], leaf.shape))
        start += leaf.size
    return jax.tree.unflatten(treedef, out)


def polynomial_sparsity(final: float, *, begin_step: int, end_step: int, initial: float = 0.0, power: float = 3.0):
    """Gradual schedule ``step -> sparsity``: ``initial`` before ``begin_step``, ``final`` from ``end_step`` on.

    Example:
        >>> schedule = polynomial_sparsity(0.8, begin_step=0, end_step=10)
        >>> [round(float(schedule(s)), 3) for s in (0, 5, 10, 20)]
        [0.0, 0.7, 0.8, 0.8]
    """
    if not 0.0 <= initial <= 1.0 or not 0.0 <= final <= 1.0:
        raise UsageError(f"sparsity: expected initial and final in [0, 1], got initial={initial!r}, final={final!r}")
    if end_step <= begin_step:
        raise UsageError(f"end_step: expected > begin_step ({begin_step}), got {end_step}")

    def schedule(step):
        progress = jnp.clip((jnp.asarray(step, jnp.float32) - begin_step) / (end_step - begin_step), 0.0, 1.0)
        return final + (initial - final) * (1.0 - progress) ** power

    return schedule


class MaskedState(NamedTuple):
    """State of :func:`masked`: keep-masks (one bool array per parameter leaf), the step, the inner state."""

    masks: Any
    count: jax.Array
    inner_state: Any


def full_masks(params: Any) -> Any:
    """All-``True`` keep-masks shaped like ``params``."""
    return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), jnp.bool_), params)


def masked(
    inner: optax.GradientTransformation,
    masks: Any = None,
    *,
    prunable: Any = None,
    sparsity_schedule: Callable[[jax.Array], jax.Array] | None = None,
    update_every: int = 1,
    scope: str = "layer",
    mask_schedule: Callable[[Any, jax.Array], Any] | None = None,
) -> optax.GradientTransformation:
    """Hold pruned parameters at exactly zero while ``inner`` trains the rest.

    Args:
      inner: any optax optimizer.
      masks: initial keep-masks (pytree of bool arrays like the params); all kept if None.
      prunable: pytree of bools like the params, which leaves a ``sparsity_schedule`` prunes
        (default: every leaf).
      sparsity_schedule: ``step -> sparsity`` for gradual magnitude pruning (None: fixed masks).
      update_every: recompute the masks every this many steps (with a schedule).
      scope: ``"layer"`` (each leaf to the target sparsity) or ``"global"`` (one threshold).
      mask_schedule: any rule ``(params, step) -> keep-masks`` recomputed every
        ``update_every`` steps instead of ``sparsity_schedule`` (e.g. PENNI's rule with a
        rising threshold); it sees the parameters with the current masks applied.

    Masks only shrink: an entry pruned once stays pruned, whatever a rule says later.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`MaskedState`.

    Example:
        >>> params = {"w": jnp.asarray([1.0, 0.0, 2.0])}
        >>> tx = masked(optax.sgd(0.1, momentum=0.9), {"w": jnp.asarray([True, False, True])})
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        >>> optax.apply_updates(params, updates)["w"].tolist()
        [0.8999999761581421, 0.0, 1.899999976158081]
    """
    check_choice("scope", scope, ("layer", "global"))
    if sparsity_schedule is not None and mask_schedule is not None:
        raise UsageError("mask_schedule: expected None when sparsity_schedule is given (one rule at a time), got both")

    def init(params):
        start = full_masks(params) if masks is None else jax.tree.map(lambda m: jnp.asarray(m, jnp.bool_), masks)
        return MaskedState(start, jnp.zeros((), jnp.int32), inner.init(params))

    def recompute(current, params, count):
        which = prunable if prunable is not None else jax.tree.map(lambda _: True, params)
        target = sparsity_schedule(count)
        selected = jax.tree.map(lambda p, w: p if w else None, params, which)
        if scope == "global":
            fresh = global_magnitude_masks(jax.tree.leaves(selected), target)
            it = iter(fresh)
            fresh_tree = jax.tree.map(lambda p, w: next(it) if w else None, params, which)
        else:
            fresh_tree = jax.tree.map(lambda p, w: magnitude_mask(p, target) if w else None, params, which)
        # Masks only shrink: a pruned entry is never revived by a later recomputation.
        return jax.tree.map(lambda m, f, w: m & f if w else m, current, fresh_tree, which, is_leaf=lambda x: x is None)

    def update(updates, state, params=None):
        if params is None:
            raise UsageError("params: masked() needs the current parameters (pass params to update)")
        current = state.masks
        if sparsity_schedule is not None or mask_schedule is not None:
            refresh = (state.count % update_every) == 0
            applied = jax.tree.map(lambda p, m: jnp.where(m, p, 0.0), params, current)
            if sparsity_schedule is not None:
                fresh = recompute(current, applied, state.count)
            else:
                fresh = jax.tree.map(lambda m, f: m & jnp.asarray(f, jnp.bool_), current, mask_schedule(applied, state.count))
            current = jax.tree.map(lambda f, m: jnp.where(refresh, f, m), fresh, current)
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, current)
        inner_updates, inner_state = inner.update(grads, state.inner_state, params)
        out = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), inner_updates, params, current)
        return out, MaskedState(current, state.count + 1, inner_state)

    return optax.GradientTransformation(init, update)


def apply_masks(params: Any, masks: Any) -> Any:
    """``params`` with every pruned entry set to exactly zero."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)
