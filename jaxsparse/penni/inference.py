"""Inference-only rewrites of a (compressed) model: an execution plan, BatchNorm folding, channel padding.

All functions edit an NNX model in place and keep its outputs (up to float rounding);
they are meant for a model in ``eval()`` mode that will not be trained again.

* :func:`bake_quantization` stores fake-quantized tensors as the plain float32 values a
  deployed model holds (later rewrites then scale the values actually used).
* :func:`apply_plan` runs each :class:`~jaxsparse.penni.layers.DecomposedConv` in the form
  a plan names: one of its own forms, ``"dense"`` (the kernel rebuilt once, one
  ``nnx.Conv``), ``"live_basis_first"`` (:class:`~jaxsparse.penni.layers.LiveBasisFirstConv`)
  ``"sparse_cpu"`` (:class:`~jaxsparse.penni.sparse_cpu.SparseCoefficientConv`, a CPU
  kernel that skips zero coefficients; 3x3 layers of stride 1 or 2, see
  :func:`~jaxsparse.penni.sparse_cpu.supports`) or ``"sparse_pallas"``
  (:class:`~jaxsparse.penni.sparse_pallas.PallasSparseConv`, a GPU/TPU kernel that skips
  dead (input channel, basis) pairs).
* :func:`fold_batchnorm` folds every inference BatchNorm into the conv before it:
  ``bn(conv(x)) = conv_s(x) + b`` with the conv's output channel ``o`` scaled by
  ``s_o = gamma_o / sqrt(var_o + eps)`` and ``b_o = beta_o - mean_o * s_o``; the BatchNorm
  becomes a :class:`ChannelBias`. It applies to dense models just as well (it is not about
  compression), so a fair speed comparison folds both.
* :func:`fuse_sparse_resnet` turns a shrunk CIFAR ResNet whose convs run the sparse CPU
  kernel (:class:`~jaxsparse.penni.sparse_cpu.SparseCoefficientConv`) into a
  :class:`PlanarResNet`: activations stay channel-planar from kernel to kernel, and the
  folded biases, residual additions and ReLUs run in the kernels' epilogues.
* :func:`pad_channels` pads every channel space of a shrunk CIFAR ResNet with zero
  channels up to a multiple of ``m``: odd channel counts left by shrinking can make a
  convolution slower than the full-width one on some backends.

Example::

    model = load_compressed("runs/r56")
    bake_quantization(model)
    apply_plan(model, "dense")
    fold_batchnorm(model)
    logits = model(images)

    fast = fuse_sparse_resnet(fold_batchnorm(apply_plan(model2, "sparse_cpu")))  # on CPU
    logits = fast(images)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from runkit import UsageError, check_choice, check_positive
from jaxsparse.models import CifarResNet
from jaxsparse.penni.layers import FORMS, DecomposedConv, LiveBasisFirstConv, get_by_path, iter_layers, set_by_path
from jaxsparse.penni.shrink import CompactBasicBlock, channel_graph, channel_shortcut
from jaxsparse.penni.sparse_cpu import SparseCoefficientConv
from jaxsparse.penni.sparse_pallas import PallasSparseConv

#: Forms an execution plan can name for a decomposed layer.
PLAN_FORMS = ("dense", *FORMS[1:], "live_basis_first", "sparse_cpu", "sparse_pallas")


class ChannelBias(nnx.Module):
    """``y = x + bias`` over the last axis: what an inference BatchNorm becomes once folded.

    Example:
        >>> ChannelBias(jnp.arange(3.0))(jnp.zeros((1, 2, 2, 3)))[0, 0, 0]
        Array([0., 1., 2.], dtype=float32)
    """

    def __init__(self, bias: jax.Array):
        self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + jnp.reshape(self.bias[...].astype(x.dtype), (1,) * (x.ndim - 1) + (-1,))


def bake_quantization(model: nnx.Module) -> nnx.Module:
    """Store every :class:`DecomposedConv`'s fake-quantized tensors as plain float32 values (bits set to 0)."""
    for _, layer in iter_layers(model, DecomposedConv):
        basis, coefficients = layer.effective_tensors()
        layer.basis[...], layer.coefficients[...] = basis, coefficients
        layer.coef_bits = layer.basis_bits = 0
    return model


def as_dense_conv(layer: DecomposedConv) -> nnx.Conv:
    """The layer as one ``nnx.Conv`` holding its rebuilt (effective) kernel."""
    return _bias_free_conv(layer.kernel(), layer.strides, layer.padding)


def _bias_free_conv(kernel: jax.Array, strides, padding) -> nnx.Conv:
    """A bias-free ``nnx.Conv`` holding ``kernel`` (``(kh, kw, Cin, Cout)``)."""
    kh, kw, cin, cout = kernel.shape
    return nnx.Conv(cin, cout, kernel_size=(kh, kw), strides=strides, padding=padding, use_bias=False,
                    kernel_init=_given(kernel), rngs=nnx.Rngs(0))


def _given(value: jax.Array):
    """An initializer that returns ``value`` (skips a random draw that would be overwritten anyway)."""
    return lambda key, shape, dtype=jnp.float32: jnp.asarray(value, dtype)


def plan_module(layer: DecomposedConv, form: str) -> nnx.Module:
    """The module that runs ``layer`` in ``form`` (one of :data:`PLAN_FORMS`).

    Raises:
      ValueError: for a form that cannot run this layer (``"sparse_cpu"`` off the CPU backend,
        without numba, or for a layer :func:`~jaxsparse.penni.sparse_cpu.supports` rejects;
        ``"sparse_pallas"`` on the CPU backend, where Pallas only interprets, or for a layer
        :func:`~jaxsparse.penni.sparse_pallas.supports` rejects), with the reason.
    """
    check_choice("form", form, PLAN_FORMS)
    if form == "dense":
        return as_dense_conv(layer)
    if form == "sparse_cpu":
        return SparseCoefficientConv(layer)
    if form == "sparse_pallas":
        if jax.default_backend() == "cpu":
            raise UsageError("form: 'sparse_pallas' is compiled for GPU and TPU backends; on the CPU backend Pallas only "
                             "interprets it (PallasSparseConv(layer, interpret=True) runs it there, for tests)")
        return PallasSparseConv(layer)
    if form == "live_basis_first":
        return LiveBasisFirstConv(layer)
    return DecomposedConv(*layer.effective_tensors(), strides=layer.strides, padding=layer.padding, form=form)


def apply_plan(model: nnx.Module, plan: str | dict[str, str]) -> nnx.Module:
    """Run every :class:`DecomposedConv` in the form ``plan`` names (one form, or layer path -> form).

    Layers a dict plan does not name are left as they are.
    """
    for path, layer in list(iter_layers(model, DecomposedConv)):
        form = plan if isinstance(plan, str) else plan.get(path)
        if form is not None:
            set_by_path(model, path, plan_module(layer, form))
    return model


def _scale_outputs(layer: nnx.Module, scale: np.ndarray) -> None:
    if isinstance(layer, DecomposedConv):  # baked by fold_batchnorm: the stored tensors are the ones used
        layer.coefficients[...] = layer.coefficients[...] * jnp.asarray(scale)[None, :, None]
    elif isinstance(layer, LiveBasisFirstConv):
        layer.mixing[...] = layer.mixing[...] * jnp.asarray(scale)[None, :]
    elif isinstance(layer, (SparseCoefficientConv, PallasSparseConv)):
        layer.scale_outputs(scale)
    elif isinstance(layer, nnx.Conv):
        kernel = layer.kernel[...]
        layer.kernel[...] = kernel * jnp.reshape(jnp.asarray(scale), (1,) * (kernel.ndim - 1) + (-1,))
    else:
        raise UsageError(f"layer: expected a conv layer before a BatchNorm, got {type(layer).__name__}")


def fold_batchnorm(model: nnx.Module) -> nnx.Module:
    """Fold every inference BatchNorm into the conv that feeds it (see the module notes).

    Quantized :class:`DecomposedConv` layers are baked first (:func:`bake_quantization`),
    since scaling fake-quantized coefficients would move them off their grid.

    Returns:
      the model, whose outputs equal the eval-mode outputs of the original.
    """
    bake_quantization(model)
    for edge in channel_graph(model).edges:
        if edge.bn is None or not isinstance(get_by_path(model, edge.bn), nnx.BatchNorm):
            continue  # no BatchNorm, or already folded
        conv_path, bn_path = edge.path, edge.bn
        bn, conv = get_by_path(model, bn_path), get_by_path(model, conv_path)
        if getattr(conv, "use_bias", False):
            raise UsageError(f"model: conv {conv_path!r} has a bias; only bias-free convs before BatchNorm are folded")
        mean, var = (np.asarray(bn.mean[...], np.float64), np.asarray(bn.var[...], np.float64))
        gamma = np.asarray(bn.scale[...], np.float64) if bn.scale is not None else np.ones_like(mean)
        beta = np.asarray(bn.bias[...], np.float64) if bn.bias is not None else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + bn.epsilon)
        _scale_outputs(conv, scale.astype(np.float32))
        set_by_path(model, bn_path, ChannelBias((beta - mean * scale).astype(np.float32)))
    return model


def _require_shrunk_resnet(model) -> None:
    if not isinstance(model, CifarResNet) or not all(isinstance(b, CompactBasicBlock) for s in model.stages for b in s):
        raise UsageError(f"model: expected a shrunk CifarResNet (CompactBasicBlock blocks), got {type(model).__name__}")


def _to_planar(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 3, 1, 2))


def _to_nhwc(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 2, 3, 1))


class PlanarResidualBlock(nnx.Module):
    """A folded :class:`~jaxsparse.penni.shrink.CompactBasicBlock` on channel-planar (NCHW) activations.

    When its second conv is a :class:`~jaxsparse.penni.sparse_cpu.SparseCoefficientConv`,
    ``relu(conv2'(h) + shortcut(x))`` (prime: BatchNorm folded) is one kernel call: its
    epilogue adds the bias, the shortcut (a channel map of ``x``, subsampled by 2 in a
    downsampling block) and applies the ReLU. The first conv, when it is a kernel too (stride
    1 or 2), carries its bias and ReLU the same way. Any other layer runs in XLA between
    transpositions to NHWC and back.
    """

    def __init__(self, block: CompactBasicBlock):
        if not isinstance(block.bn1, ChannelBias) or not isinstance(block.bn2, ChannelBias):
            raise UsageError("block: expected folded BatchNorms (fold_batchnorm first), got "
                             f"{type(block.bn1).__name__} and {type(block.bn2).__name__}")
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.subsample, self.source = block.subsample, block.source
        self.fused1 = isinstance(self.conv1, SparseCoefficientConv)
        self.fused2 = isinstance(self.conv2, SparseCoefficientConv)
        if self.fused1:
            self.conv1.set_layouts("NCHW", "NCHW")
            self.conv1.set_epilogue(self.bn1.bias[...], relu=True)
        if self.fused2:
            self.conv2.set_layouts("NCHW", "NCHW")
            self.conv2.set_epilogue(self.bn2.bias[...], relu=True)

    def shortcut(self, x: jax.Array) -> jax.Array:
        """The block's shortcut of planar ``x``, planar."""
        return channel_shortcut(x, self.source, self.subsample, planar=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.fused1:
            h = self.conv1(x)
        else:
            h = _to_planar(nnx.relu(self.bn1(self.conv1(_to_nhwc(x)))))
        if self.fused2:
            return self.conv2(h, x, residual_source=self.source, residual_stride=2 if self.subsample else 1)
        return nnx.relu(_to_planar(self.bn2(self.conv2(_to_nhwc(h)))) + self.shortcut(x))


class PlanarResNet(nnx.Module):
    """A shrunk, folded CIFAR ResNet whose sparse CPU kernels hand channel-planar activations to each other.

    Built by :func:`fuse_sparse_resnet`. Input: NHWC images, like the model it came from;
    every activation after the stem is NCHW, so consecutive kernels skip the NHWC
    transposition, and every bias, residual addition and ReLU after a kernel happens in that
    kernel's epilogue.
    """

    def __init__(self, model: CifarResNet):
        if not isinstance(model.bn1, ChannelBias):
            raise UsageError(f"model: expected a folded stem BatchNorm (fold_batchnorm first), got {type(model.bn1).__name__}")
        self.conv1, self.bn1, self.linear = model.conv1, model.bn1, model.linear
        self.fused_stem = isinstance(self.conv1, SparseCoefficientConv)
        if self.fused_stem:
            self.conv1.set_layouts("NHWC", "NCHW")
            self.conv1.set_epilogue(self.bn1.bias[...], relu=True)
        self.blocks = nnx.List([PlanarResidualBlock(block) for stage in model.stages for block in stage])

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.conv1(x) if self.fused_stem else _to_planar(nnx.relu(self.bn1(self.conv1(x))))
        for block in self.blocks:
            out = block(out)
        return self.linear(jnp.mean(out, axis=(2, 3)))


def fuse_sparse_resnet(model: CifarResNet) -> PlanarResNet:
    """The shrunk CIFAR ResNet as a :class:`PlanarResNet`: sparse kernels chained channel-planar, epilogues fused.

    Call it after :func:`apply_plan` (some or all layers ``"sparse_cpu"``) and
    :func:`fold_batchnorm`. The logits equal the model's (up to float rounding). The layers
    are shared with ``model``, which should not be called afterwards (its kernels now
    expect planar activations and apply their own biases).

    Example:
        >>> fast = fuse_sparse_resnet(fold_batchnorm(apply_plan(shrunk_model, "sparse_cpu")))  # doctest: +SKIP
    """
    _require_shrunk_resnet(model)
    return PlanarResNet(model)


def _pad_axis(value: jax.Array, axis: int, size: int, fill: float = 0.0) -> jax.Array:
    value = np.asarray(value)
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, size - value.shape[axis])
    return jnp.asarray(np.pad(value, widths, constant_values=fill))


def _padded_layer(layer: nnx.Module, cin: int, cout: int) -> nnx.Module:
    if isinstance(layer, DecomposedConv):
        coefficients = _pad_axis(_pad_axis(layer.coefficients[...], 0, cin), 1, cout)
        return DecomposedConv(layer.basis[...], coefficients, strides=layer.strides, padding=layer.padding, form=layer.form,
                              coef_bits=layer.coef_bits, basis_bits=layer.basis_bits, per_channel=layer.per_channel)
    if isinstance(layer, nnx.Conv) and not layer.use_bias:
        return _bias_free_conv(_pad_axis(_pad_axis(layer.kernel[...], 2, cin), 3, cout), layer.strides, layer.padding)
    raise UsageError(f"layer: expected a DecomposedConv or a bias-free nnx.Conv, got {type(layer).__name__}")


def _padded_norm(norm: nnx.Module, size: int) -> nnx.Module:
    if isinstance(norm, ChannelBias):
        return ChannelBias(_pad_axis(norm.bias[...], 0, size))
    new = nnx.BatchNorm(size, epsilon=norm.epsilon, momentum=norm.momentum, use_running_average=True, rngs=nnx.Rngs(0))
    for name, fill in (("scale", 0.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
        getattr(new, name)[...] = _pad_axis(getattr(norm, name)[...], 0, size, fill)
    return new


def pad_channels(model: CifarResNet, multiple: int) -> CifarResNet:
    """Pad every channel space of a shrunk CIFAR ResNet with zero channels up to a multiple of ``multiple``.

    Padded channels get zero weights, zero BatchNorm scale and shift (or zero folded bias)
    and no shortcut source, so they stay exactly zero and the logits are unchanged. Call it
    before :func:`apply_plan` (it pads :class:`DecomposedConv` coefficients or dense kernels).

    Args:
      model: a :class:`~jaxsparse.models.CifarResNet` after :func:`~jaxsparse.penni.shrink.shrink`.
      multiple: channel counts are rounded up to a multiple of this (1: unchanged).

    Example:
        >>> pad_channels(shrunk_model, 8)  # doctest: +SKIP
    """
    check_positive("multiple", multiple)
    _require_shrunk_resnet(model)

    def up(n: int) -> int:
        return -(-n // multiple) * multiple

    graph = channel_graph(model)
    padded = {space: size if space in graph.fixed else up(size) for space, size in graph.sizes.items()}
    *units, classifier = graph.edges
    for edge in units:  # every conv with its norm, in forward order
        conv = get_by_path(model, edge.path)
        set_by_path(model, edge.path, _padded_layer(conv, padded[edge.src], padded[edge.dst]))
        set_by_path(model, edge.bn, _padded_norm(get_by_path(model, edge.bn), padded[edge.dst]))
    for sc in graph.shortcuts:
        # A padded output channel may read any padded (all-zero) input channel; reading the one at
        # the same index keeps an identity shortcut an identity (no gather).
        block, original, current = get_by_path(model, sc.owner), graph.sizes[sc.src], padded[sc.src]
        block.source = sc.source + tuple(k if original <= k < current else -1 for k in range(len(sc.source), padded[sc.dst]))
    linear = get_by_path(model, classifier.path)
    set_by_path(model, classifier.path, nnx.Linear(padded[classifier.src], linear.out_features, use_bias=linear.use_bias,
                                                   kernel_init=_given(_pad_axis(linear.kernel[...], 0, padded[classifier.src])),
                                                   bias_init=_given(linear.bias[...]) if linear.use_bias else nnx.initializers.zeros_init(),
                                                   rngs=nnx.Rngs(0)))
    return model
