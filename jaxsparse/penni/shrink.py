"""Stage 5, *Shrink*: find dead channels and basis kernels, propagate them, slice the model.

The model is seen as a graph of channel *spaces*: the channels that one layer writes
and others read. Every conv/linear layer reads one space and writes one; a residual
shortcut copies one space into another (option A with an offset, after subsampling).
A channel of a space is *live* when

* something produces it: a layer whose non-zero weights connect it to a live input
  channel, or a shortcut from a live channel; and
* something consumes it: a layer whose non-zero weights connect it to a live output
  channel, or a shortcut into a live channel.

Residual spaces therefore keep the union of the channels that meet there. Liveness is
iterated to a fixed point. The graph is derived from the model's own structure
(:class:`~jaxsparse.models.CifarResNet` of any depth, and chains of conv/BN units with a
classifier such as :class:`~jaxsparse.models.VGG16`), not listed by hand.

Two operations use the plan:

* :func:`apply_channel_masks` zeroes, in place, every weight that touches a dead channel
  and the BatchNorm scale/shift of every channel its layer does not produce. A conv
  output that is all zero still leaves BatchNorm's constant shift, which padding makes
  non-removable; masking zeroes it, so this is the (small) functional change that the
  fine-tuning after pruning absorbs. :func:`channel_param_masks` gives the matching
  keep-masks for the optimizer, so fine-tuning keeps them at zero.
* :func:`shrink` slices every layer, BatchNorm, classifier and shortcut to the live
  channels (and the basis to the live basis kernels). The shrunk model computes exactly
  what the masked model computes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsparse.models import CifarResNet
from jaxsparse.penni.layers import DecomposedConv, get_by_path, path_name, set_by_path
from runkit import UsageError


@dataclasses.dataclass(frozen=True)
class Edge:
    """A weighted layer reading space ``src`` and writing space ``dst``; ``bn`` normalises its output."""

    path: str
    src: str
    dst: str
    bn: str | None = None


@dataclasses.dataclass(frozen=True)
class Shortcut:
    """A residual copy ``dst[offset + c] += src[c]`` (after spatial subsampling when ``subsample``), owned by block ``owner``.

    In a shrunk block (:class:`CompactBasicBlock`) the copy is a gather instead: ``source[k]`` is
    the ``src`` channel added to ``dst`` channel ``k`` (``-1``: none) and ``offset`` is unused.
    """

    owner: str
    src: str
    dst: str
    offset: int = 0
    subsample: bool = False
    source: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class ChannelGraph:
    """Spaces (name -> size), which of them are fixed (image input, logits), layers and shortcuts."""

    sizes: dict
    fixed: frozenset
    edges: tuple
    shortcuts: tuple


def _out_size(layer) -> int:
    return int(layer.out_features)


def channel_graph(model: nnx.Module) -> ChannelGraph:
    """The channel graph of a model of the package (see the module notes): the one description
    of its structure (which layer reads and writes which channel space, which BatchNorm follows
    which layer, which shortcut joins which spaces) that shrinking, BatchNorm folding and
    channel padding all read. The model may already be shrunk, or have its layers replaced by
    inference plans or its BatchNorms folded: the structure is the same.

    Returns:
      A :class:`ChannelGraph`; its ``edges`` are in forward order.

    Raises:
      runkit.UsageError: the model's structure is not one this function knows.

    Example:
        >>> graph = channel_graph(build_model("resnet20", rngs=nnx.Rngs(0)))  # doctest: +SKIP
        >>> graph.edges[1]  # doctest: +SKIP
        Edge(path='layer1.0.conv1', src='stem', dst='layer1.0.mid', bn='layer1.0.bn1')
    """
    if isinstance(model, CifarResNet):
        sizes, edges, shortcuts = {"input": int(model.conv1.in_features), "stem": _out_size(model.conv1)}, [], []
        edges.append(Edge("conv1", "input", "stem", "bn1"))
        current = "stem"
        for s, stage in enumerate(model.stages, start=1):
            for b, block in enumerate(stage):
                prefix = f"layer{s}.{b}"
                mid, out = f"{prefix}.mid", f"{prefix}.out"
                sizes[mid] = _out_size(block.conv1)
                sizes[out] = _out_size(block.conv2)
                edges.append(Edge(f"{prefix}.conv1", current, mid, f"{prefix}.bn1"))
                edges.append(Edge(f"{prefix}.conv2", mid, out, f"{prefix}.bn2"))
                if isinstance(block, CompactBasicBlock):
                    shortcuts.append(Shortcut(prefix, current, out, 0, bool(block.subsample), tuple(block.source)))
                else:
                    shortcuts.append(Shortcut(prefix, current, out, int(block.shortcut_pad), bool(block.option_a_shortcut)))
                current = out
        sizes["logits"] = _out_size(model.linear)
        edges.append(Edge("linear", current, "logits"))
        return ChannelGraph(sizes, frozenset({"input", "logits"}), tuple(edges), tuple(shortcuts))
    if hasattr(model, "features") and hasattr(model, "classifier") and all(hasattr(u, "conv") and hasattr(u, "bn") for u in model.features):
        sizes, edges = {"input": int(model.features[0].conv.in_features)}, []
        current = "input"
        for i, unit in enumerate(model.features):
            name = f"features.{i}"
            sizes[name] = _out_size(unit.conv)
            edges.append(Edge(f"{name}.conv", current, name, f"{name}.bn"))
            current = name
        sizes["logits"] = _out_size(model.classifier)
        edges.append(Edge("classifier", current, "logits"))
        return ChannelGraph(sizes, frozenset({"input", "logits"}), tuple(edges), ())
    raise UsageError(
        f"model: expected a CifarResNet or a chain of conv/BN units with a classifier (e.g. VGG16), got {type(model).__name__}"
    )


def free_channel_layers(model: nnx.Module) -> tuple[str, ...]:
    """Paths of the layers whose output channels can be removed alone.

    A layer qualifies when it is the only writer of its output space and no residual
    shortcut joins that space (and it is not the logits): in a ResNet, the first conv of
    every block; in VGG-16, every conv. Removing a channel there needs no other layer's
    channel to die with it, which is what a channel rule (see
    :func:`~jaxsparse.penni.prune.channel_norm_mask`) relies on.

    Example:
        >>> free_channel_layers(build_model("resnet20", rngs=nnx.Rngs(0)))[:2]  # doctest: +SKIP
        ('layer1.0.conv1', 'layer1.1.conv1')
    """
    graph = channel_graph(model)
    joined = {sc.src for sc in graph.shortcuts} | {sc.dst for sc in graph.shortcuts} | set(graph.fixed)
    writers: dict[str, list[str]] = {}
    for e in graph.edges:
        writers.setdefault(e.dst, []).append(e.path)
    return tuple(e.path for e in graph.edges if e.dst not in joined and len(writers[e.dst]) == 1)


def connections(layer, in_size: int) -> np.ndarray:
    """``(Cin, Cout)`` bool: which input channel reaches which output channel through non-zero weights.

    A linear layer reading a flattened ``(H, W, C)`` map is folded onto its ``C`` channels.
    """
    if isinstance(layer, DecomposedConv):
        return np.any(np.asarray(layer.coefficients[...]) != 0, axis=2)
    if isinstance(layer, nnx.Conv):
        return np.any(np.asarray(layer.kernel[...]) != 0, axis=(0, 1))
    if isinstance(layer, nnx.Linear):
        kernel = np.asarray(layer.kernel[...]) != 0
        return np.any(np.reshape(kernel, (-1, in_size, kernel.shape[1])), axis=0)
    raise UsageError(f"layer: expected DecomposedConv, nnx.Conv or nnx.Linear, got {type(layer).__name__}")


@dataclasses.dataclass
class ShrinkPlan:
    """Live channels per space, and per layer which output channels it produces and which basis kernels live.

    Attributes:
      graph: the :class:`ChannelGraph`.
      live: space -> bool array.
      produced: layer path -> bool array over its output space.
      live_basis: decomposed layer path -> bool array over its basis kernels.
      iterations: passes until the fixed point.
    """

    graph: ChannelGraph
    live: dict
    produced: dict
    live_basis: dict
    iterations: int

    def kept(self) -> dict:
        """space -> ``(kept, total)`` channel counts."""
        return {s: (int(v.sum()), int(v.size)) for s, v in self.live.items()}


def plan_shrink(model: nnx.Module, max_iterations: int = 100) -> ShrinkPlan:
    """Compute the live channels of every space at the fixed point (see the module notes).

    Example:
        >>> plan = plan_shrink(model)  # doctest: +SKIP
        >>> plan.kept()["layer1.0.mid"]  # doctest: +SKIP
        (11, 16)
    """
    graph = channel_graph(model)
    if any(sc.source is not None for sc in graph.shortcuts):
        raise UsageError("model: already shrunk (its blocks are CompactBasicBlock); shrink the original model")
    usage = {e.path: connections(get_by_path(model, e.path), graph.sizes[e.src]) for e in graph.edges}
    live = {s: np.ones(n, bool) for s, n in graph.sizes.items()}
    for iteration in range(1, max_iterations + 1):
        produced_space = {s: np.zeros(n, bool) for s, n in graph.sizes.items()}
        consumed_space = {s: np.zeros(n, bool) for s, n in graph.sizes.items()}
        produced = {}
        for e in graph.edges:
            conn = usage[e.path] & live[e.src][:, None] & live[e.dst][None, :]
            produced[e.path] = conn.any(axis=0)
            produced_space[e.dst] |= produced[e.path]
            consumed_space[e.src] |= conn.any(axis=1)
        for sc in graph.shortcuts:
            n = graph.sizes[sc.src]
            produced_space[sc.dst][sc.offset : sc.offset + n] |= live[sc.src]
            consumed_space[sc.src] |= live[sc.dst][sc.offset : sc.offset + n]
        new_live = {s: (live[s] if s in graph.fixed else live[s] & produced_space[s] & consumed_space[s]) for s in live}
        changed = any(not np.array_equal(new_live[s], live[s]) for s in live)
        live = new_live
        if not changed:
            break
    live_basis = {}
    for e in graph.edges:
        layer = get_by_path(model, e.path)
        if isinstance(layer, DecomposedConv):
            coef = np.asarray(layer.coefficients[...]) != 0
            coef = coef & live[e.src][:, None, None] & live[e.dst][None, :, None]
            live_basis[e.path] = coef.any(axis=(0, 1))
    return ShrinkPlan(graph, live, produced, live_basis, iteration)


def _weight_keep(layer, in_live: np.ndarray, out_keep: np.ndarray) -> dict[str, np.ndarray]:
    """Keep-masks of a layer's weights given its live inputs and kept outputs."""
    if isinstance(layer, DecomposedConv):
        return {"coefficients": np.broadcast_to((in_live[:, None] & out_keep[None, :])[:, :, None], layer.coefficients.shape)}
    if isinstance(layer, nnx.Conv):
        return {"kernel": np.broadcast_to((in_live[:, None] & out_keep[None, :])[None, None], layer.kernel.shape)}
    kernel_shape = layer.kernel.shape
    repeat = kernel_shape[0] // in_live.size
    rows = np.tile(in_live, repeat)
    keep = {"kernel": rows[:, None] & out_keep[None, :]}
    if layer.use_bias:
        keep["bias"] = out_keep.copy()
    return keep


def _bn_keep(produced: np.ndarray) -> dict[str, np.ndarray]:
    return {"scale": produced, "bias": produced}


def channel_param_masks(model: nnx.Module, plan: ShrinkPlan | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Keep-masks (layer path -> attribute -> bool array) of the weights the plan keeps.

    Covers conv/linear weights touching dead channels and the BatchNorm scale/shift of
    channels a layer does not produce.
    """
    plan = plan_shrink(model) if plan is None else plan
    out = {}
    for e in plan.graph.edges:
        layer = get_by_path(model, e.path)
        out_keep = plan.live[e.dst] & (plan.produced[e.path] if e.dst not in plan.graph.fixed else True)
        out[e.path] = _weight_keep(layer, plan.live[e.src], out_keep)
        if e.bn is not None:
            out[e.bn] = _bn_keep(plan.live[e.dst] & plan.produced[e.path])
    return out


def apply_channel_masks(model: nnx.Module, plan: ShrinkPlan | None = None) -> ShrinkPlan:
    """Zero, in place, every weight and BatchNorm scale/shift the plan removes. Returns the plan."""
    plan = plan_shrink(model) if plan is None else plan
    for path, attrs in channel_param_masks(model, plan).items():
        module = get_by_path(model, path)
        for name, keep in attrs.items():
            variable = getattr(module, name)
            variable[...] = jnp.where(jnp.asarray(keep), variable[...], jnp.zeros_like(variable[...]))
    return plan


def param_module_path(path) -> tuple[str, str]:
    """``(module path, attribute)`` of a leaf of an ``nnx.Param`` state, from its pytree key path.

    Example:
        >>> param_module_path((jax.tree_util.DictKey("layer1"), jax.tree_util.SequenceKey(0), jax.tree_util.DictKey("conv1"),
        ...                    jax.tree_util.DictKey("coefficients")))
        ('layer1.0.conv1', 'coefficients')
    """
    module, _, attr = path_name(path).rpartition(".")
    return module, attr


def param_masks_like(model: nnx.Module, plan: ShrinkPlan | None = None) -> nnx.State:
    """The keep-masks of :func:`channel_param_masks` as a state shaped like ``nnx.state(model, nnx.Param)``."""
    per_module = channel_param_masks(model, plan)
    params = nnx.state(model, nnx.Param)

    def mask(path, leaf):
        module_path, attr = param_module_path(path)
        keep = per_module.get(module_path, {}).get(attr)
        return jnp.ones(jnp.shape(leaf), jnp.bool_) if keep is None else jnp.asarray(keep)

    return jax.tree_util.tree_map_with_path(mask, params)


def channel_shortcut(x: jax.Array, source: tuple[int, ...], subsample: bool, *, planar: bool = False) -> jax.Array:
    """A shrunk block's shortcut: ``x`` (every second row and column when ``subsample``) with its
    channel ``source[k]`` at output channel ``k`` (``-1``: a zero channel).

    Args:
      x: ``(N, H, W, C)``, or ``(N, C, H, W)`` when ``planar``.
      source: per output channel, the input channel it takes, or ``-1``.
      subsample: take every second row and column (a downsampling block).
      planar: channels on axis 1 instead of the last axis.
    """
    axis = 1 if planar else 3
    if subsample:
        x = x[:, :, ::2, ::2] if planar else x[:, ::2, ::2, :]
    channels = x.shape[axis]
    if tuple(source) == tuple(range(channels)):
        return x
    zero_shape = list(x.shape)
    zero_shape[axis] = 1
    padded = jnp.concatenate([x, jnp.zeros(zero_shape, x.dtype)], axis=axis)
    return jnp.take(padded, np.asarray([s if s >= 0 else channels for s in source], np.int32), axis=axis)


class CompactBasicBlock(nnx.Module):
    """A shrunk residual block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + gather(x))``.

    The shortcut takes ``x`` (subsampled by 2 when ``subsample``) and places its channel
    ``source[k]`` at output channel ``k`` (``-1``: a zero channel), which covers both the
    identity and the option-A shortcut after slicing.
    """

    def __init__(self, conv1, bn1, conv2, bn2, *, subsample: bool, source: tuple[int, ...]):
        self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        self.subsample = bool(subsample)
        self.source = tuple(int(s) for s in source)

    def shortcut(self, x: jax.Array) -> jax.Array:
        return channel_shortcut(x, self.source, self.subsample)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nnx.relu(out + self.shortcut(x))


def _slice_layer(layer, in_idx: np.ndarray, out_idx: np.ndarray, basis_idx: np.ndarray | None, in_size: int):
    if isinstance(layer, DecomposedConv):
        coef = np.asarray(layer.coefficients[...])[in_idx][:, out_idx][:, :, basis_idx]
        basis = np.asarray(layer.basis[...])[basis_idx]
        return DecomposedConv(
            jnp.asarray(basis), jnp.asarray(coef), strides=layer.strides, padding=layer.padding, form=layer.form,
            coef_bits=layer.coef_bits, basis_bits=layer.basis_bits, per_channel=layer.per_channel,
        )
    if isinstance(layer, nnx.Conv):
        kernel = np.asarray(layer.kernel[...])[:, :, in_idx][..., out_idx]
        new = nnx.Conv(
            len(in_idx), len(out_idx), kernel_size=layer.kernel_size, strides=layer.strides, padding=layer.padding,
            use_bias=False, rngs=nnx.Rngs(0),
        )
        new.kernel[...] = jnp.asarray(kernel)
        return new
    kernel = np.asarray(layer.kernel[...])
    repeat = kernel.shape[0] // in_size
    rows = (np.arange(repeat)[:, None] * in_size + in_idx[None, :]).ravel()
    new = nnx.Linear(len(rows), len(out_idx), use_bias=layer.use_bias, rngs=nnx.Rngs(0))
    new.kernel[...] = jnp.asarray(kernel[rows][:, out_idx])
    if layer.use_bias:
        new.bias[...] = jnp.asarray(np.asarray(layer.bias[...])[out_idx])
    return new


def _slice_bn(bn: nnx.BatchNorm, idx: np.ndarray) -> nnx.BatchNorm:
    new = nnx.BatchNorm(len(idx), epsilon=bn.epsilon, momentum=bn.momentum, use_running_average=bn.use_running_average, rngs=nnx.Rngs(0))
    for name in ("scale", "bias", "mean", "var"):
        getattr(new, name)[...] = jnp.asarray(np.asarray(getattr(bn, name)[...])[idx])
    return new


def shrink(model: nnx.Module, plan: ShrinkPlan | None = None) -> tuple[nnx.Module, ShrinkPlan]:
    """Slice ``model`` (in place) to its live channels and basis kernels.

    The weights the plan removes are first zeroed (:func:`apply_channel_masks`), so the
    result equals the masked model. Residual blocks become :class:`CompactBasicBlock`.

    Returns:
      ``(model, plan)``.

    Example:
        >>> model, plan = shrink(model)  # doctest: +SKIP
    """
    plan = apply_channel_masks(model, plan)
    graph = plan.graph
    index = {s: np.flatnonzero(v) for s, v in plan.live.items()}
    for e in graph.edges:
        layer = get_by_path(model, e.path)
        basis_idx = np.flatnonzero(plan.live_basis[e.path]) if e.path in plan.live_basis else None
        if basis_idx is not None and basis_idx.size == 0:
            basis_idx = np.zeros(1, np.int64)  # keep one (all-zero) basis kernel so shapes stay valid
        set_by_path(model, e.path, _slice_layer(layer, index[e.src], index[e.dst], basis_idx, graph.sizes[e.src]))
        if e.bn is not None:
            set_by_path(model, e.bn, _slice_bn(get_by_path(model, e.bn), index[e.dst]))
    for sc in graph.shortcuts:
        block = get_by_path(model, sc.owner)
        position = {int(c): k for k, c in enumerate(index[sc.src])}
        source = tuple(position.get(int(c) - sc.offset, -1) for c in index[sc.dst])
        set_by_path(
            model,
            sc.owner,
            CompactBasicBlock(block.conv1, block.bn1, block.conv2, block.bn2, subsample=sc.subsample, source=source),
        )
    return model, plan
