"""Stage 2, *Decomposed layer*: a conv layer stored as shared basis kernels + coefficients.

:class:`DecomposedConv` replaces an ``nnx.Conv`` (same call signature, NHWC) and runs in
one of three mathematically equal forms:

* ``"train"``: rebuild the ``(kh, kw, Cin, Cout)`` kernel from basis and coefficients and
  run one convolution (what training differentiates through);
* ``"basis_first"``: depthwise conv of every input channel with the ``d`` basis kernels
  (``Cin * d`` maps at output resolution), then a 1x1 combination with the coefficients;
* ``"coef_first"``: a 1x1 combination at input resolution into ``Cout * d`` maps, then
  each output channel sums its ``d`` maps convolved with the basis (a grouped conv,
  ``Cout`` groups of ``d``). This is the order in which sparse coefficients meet sparse
  (post-ReLU) activations, the dataflow an accelerator streams.

For inference, :class:`LiveBasisFirstConv` is a fourth, compacted formulation built
from a trained layer: the basis-first order with the depthwise step written as ``kh*kw``
shifted multiply-adds (which XLA fuses into one loop; on CPU, grouped/depthwise
convolutions are slow) and computed only for the live ``(input channel, basis kernel)``
pairs, i.e. those some non-zero coefficient reads; the 1x1 combination is then one
dense matmul over those pairs.

Quantization-aware runs set ``coef_bits`` / ``basis_bits``; the forward pass then sees
fake-quantized tensors (see :mod:`jaxsparse.penni.quantize`).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from runkit import UsageError, check_choice
from jaxsparse.penni.decompose import decompose_kernels, reconstruct_kernel
from jaxsparse.penni.quantize import fake_quant

#: Forms accepted by :class:`DecomposedConv`.
FORMS = ("train", "basis_first", "coef_first")
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


class DecomposedConv(nnx.Module):
    """Conv layer ``kernel[h, w, i, o] = sum_j coefficients[i, o, j] * basis[j, h, w]`` (no bias).

    Args:
      basis: ``(d, kh, kw)``.
      coefficients: ``(Cin, Cout, d)``.
      strides: ``(sh, sw)``.
      padding: explicit ``((top, bottom), (left, right))`` or ``"SAME"``/``"VALID"``.
      form: default form for ``__call__`` (one of :data:`FORMS`).
      coef_bits, basis_bits: fake-quantization bit widths (0: float).
      per_channel: one coefficient scale per output channel instead of one per layer.

    Example:
        >>> layer = DecomposedConv(jnp.ones((2, 3, 3)), jnp.ones((4, 8, 2)), strides=(1, 1), padding=((1, 1), (1, 1)))
        >>> layer(jnp.ones((1, 6, 6, 4))).shape
        (1, 6, 6, 8)
    """

    def __init__(
        self,
        basis: jax.Array,
        coefficients: jax.Array,
        *,
        strides=(1, 1),
        padding=((1, 1), (1, 1)),
        form: str = "train",
        coef_bits: int = 0,
        basis_bits: int = 0,
        per_channel: bool = False,
    ):
        if basis.ndim != 3 or coefficients.ndim != 3 or basis.shape[0] != coefficients.shape[2]:
            raise UsageError(
                f"basis/coefficients: expected shapes (d, kh, kw) and (Cin, Cout, d) with the same d, "
                f"got {tuple(basis.shape)} and {tuple(coefficients.shape)}"
            )
        self.basis = nnx.Param(jnp.asarray(basis, jnp.float32))
        self.coefficients = nnx.Param(jnp.asarray(coefficients, jnp.float32))
        self.strides = tuple(int(s) for s in strides)
        self.padding = padding if isinstance(padding, str) else tuple(tuple(int(p) for p in pair) for pair in padding)
        self.form = check_choice("form", form, FORMS)
        self.coef_bits = int(coef_bits)
        self.basis_bits = int(basis_bits)
        self.per_channel = bool(per_channel)

    @property
    def num_basis(self) -> int:
        return int(self.basis.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.coefficients.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.coefficients.shape[1])

    @property
    def kernel_size(self) -> tuple[int, int]:
        return (int(self.basis.shape[1]), int(self.basis.shape[2]))

    def effective_tensors(self) -> tuple[jax.Array, jax.Array]:
        """``(basis, coefficients)`` as the forward pass sees them (fake-quantized when bits are set)."""
        basis = fake_quant(self.basis[...], self.basis_bits)
        coefficients = fake_quant(self.coefficients[...], self.coef_bits, 1 if self.per_channel else None)
        return basis, coefficients

    def kernel(self) -> jax.Array:
        """The rebuilt ``(kh, kw, Cin, Cout)`` kernel."""
        return reconstruct_kernel(*self.effective_tensors())

    def __call__(self, x: jax.Array, form: str | None = None) -> jax.Array:
        form = check_choice("form", self.form if form is None else form, FORMS)
        basis, coefficients = self.effective_tensors()
        return apply_decomposed(x, basis, coefficients, self.strides, self.padding, form)


def apply_decomposed(x, basis, coefficients, strides, padding, form: str) -> jax.Array:
    """The decomposed convolution as a pure function (see :class:`DecomposedConv` for the forms)."""
    d, kh, kw = basis.shape
    cin, cout, _ = coefficients.shape
    if form == "train":
        kernel = reconstruct_kernel(basis, coefficients).astype(x.dtype)
        return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSIONS)
    taps = jnp.transpose(basis, (1, 2, 0)).astype(x.dtype)  # (kh, kw, d)
    if form == "basis_first":
        depthwise = jnp.tile(taps[:, :, None, :], (1, 1, 1, cin))  # channel i*d + j = basis j on input i
        maps = jax.lax.conv_general_dilated(x, depthwise, strides, padding, dimension_numbers=_DIMENSIONS, feature_group_count=cin)
        mixing = jnp.reshape(jnp.transpose(coefficients, (0, 2, 1)), (cin * d, cout)).astype(x.dtype)
        return jnp.einsum("nhwk,ko->nhwo", maps, mixing)
    if form == "coef_first":
        mixing = jnp.reshape(coefficients, (cin, cout * d)).astype(x.dtype)  # column o*d + j
        maps = jnp.einsum("nhwi,ik->nhwk", x, mixing)
        grouped = jnp.tile(taps[:, :, :, None], (1, 1, 1, cout))  # group o reads maps o*d .. o*d+d-1
        return jax.lax.conv_general_dilated(maps, grouped, strides, padding, dimension_numbers=_DIMENSIONS, feature_group_count=cout)
    raise UsageError(f"form: expected one of {list(FORMS)}, got {form!r}")


class LiveBasisFirstConv(nnx.Module):
    """Inference-only basis-first conv over the live ``(input channel, basis kernel)`` pairs of a layer.

    ``y = sum_k maps_k * mixing[k, :]`` with ``maps_k = x[..., channel_k] (*) basis[basis_k]``
    for the ``K`` pairs ``(channel_k, basis_k)`` whose coefficients are not all zero; the
    depthwise step is written as shifted multiply-adds. Pairs are chosen from the concrete
    coefficients when the module is built (so build it outside ``jit``).

    Args:
      layer: a trained :class:`DecomposedConv` (its effective, possibly fake-quantized,
        tensors are used).

    Example:
        >>> layer = DecomposedConv(jnp.ones((2, 3, 3)), jnp.ones((4, 8, 2)))
        >>> compact = LiveBasisFirstConv(layer)
        >>> bool(jnp.allclose(compact(jnp.ones((1, 6, 6, 4))), layer(jnp.ones((1, 6, 6, 4))), rtol=1e-5))
        True
    """

    def __init__(self, layer: DecomposedConv):
        if isinstance(layer.padding, str):
            raise UsageError(f"layer: expected explicit padding pairs, got {layer.padding!r}")
        basis, coefficients = (np.asarray(t, np.float32) for t in layer.effective_tensors())
        cin, cout, d = coefficients.shape
        live = np.any(coefficients != 0, axis=1)  # (Cin, d)
        channel, which = np.nonzero(live)
        if channel.size == 0:  # nothing reads any map: one all-zero pair keeps shapes valid
            channel, which = np.zeros(1, np.int64), np.zeros(1, np.int64)
        self.channels = tuple(int(c) for c in channel)
        self.taps = nnx.Param(jnp.asarray(basis[which]))  # (K, kh, kw)
        self.mixing = nnx.Param(jnp.asarray(coefficients[channel, :, which]))  # (K, Cout)
        self.strides = tuple(layer.strides)
        self.padding = tuple(tuple(p) for p in layer.padding)
        self.in_features, self.out_features = cin, cout

    @property
    def num_pairs(self) -> int:
        return int(self.mixing.shape[0])

    def __call__(self, x: jax.Array) -> jax.Array:
        (top, bottom), (left, right) = self.padding
        sh, sw = self.strides
        taps = self.taps[...].astype(x.dtype)
        _, kh, kw = taps.shape
        selected = jnp.take(x, jnp.asarray(self.channels, jnp.int32), axis=-1)
        padded = jnp.pad(selected, ((0, 0), (top, bottom), (left, right), (0, 0)))
        out_h = (padded.shape[1] - kh) // sh + 1
        out_w = (padded.shape[2] - kw) // sw + 1
        maps = None
        for a in range(kh):
            for b in range(kw):
                window = padded[:, a : a + sh * (out_h - 1) + 1 : sh, b : b + sw * (out_w - 1) + 1 : sw, :]
                term = window * taps[:, a, b][None, None, None, :]
                maps = term if maps is None else maps + term
        return jnp.einsum("nhwk,ko->nhwo", maps, self.mixing[...].astype(x.dtype))


def stencil_kernel_support(layer: DecomposedConv, *, symmetric_padding: bool = False) -> tuple[bool, str]:
    """Whether a 3x3-stencil kernel (stride 1 or 2, explicit padding) can run ``layer``: ``(True, "")`` or
    ``(False, reason)``; with ``symmetric_padding`` the padding must also be the same on both sides.

    Example:
        >>> stencil_kernel_support(DecomposedConv(jnp.ones((2, 5, 5)), jnp.ones((4, 8, 2))))
        (False, 'kernel (5, 5), the kernel handles 3x3')
    """
    basis = layer.basis[...]
    if tuple(basis.shape[1:]) != (3, 3):
        return False, f"kernel {tuple(basis.shape[1:])}, the kernel handles 3x3"
    if tuple(layer.strides) not in ((1, 1), (2, 2)):
        return False, f"strides {tuple(layer.strides)}, the kernel handles (1, 1) and (2, 2)"
    if isinstance(layer.padding, str):
        return False, f"padding {layer.padding!r}, the kernel needs explicit pairs"
    (top, bottom), (left, right) = layer.padding
    if symmetric_padding and (top != bottom or left != right):
        return False, f"padding {layer.padding}, the kernel needs the same padding on both sides"
    return True, ""


def decomposable(layer) -> bool:
    """True for an ``nnx.Conv`` that PENNI decomposes: spatial kernel (not 1x1), not grouped, no dilation."""
    return (
        isinstance(layer, nnx.Conv)
        and layer.kernel_size is not None
        and max(layer.kernel_size) > 1
        and layer.feature_group_count == 1
        and not layer.use_bias
        and all(v == 1 for v in _as_tuple(layer.kernel_dilation))
        and all(v == 1 for v in _as_tuple(layer.input_dilation))
    )


def _as_tuple(value) -> tuple:
    if value is None:
        return (1,)
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def path_name(path) -> str:
    """The dotted name of a path: pytree keys (``jax.tree_util`` key paths) or the plain
    strings and integers of ``nnx.iter_graph``. A trailing ``.value`` attribute (a
    ``Variable`` flattening to its array) is dropped, so a parameter leaf is named after
    its module and attribute.

    Args:
      path: a sequence of ``DictKey``/``GetAttrKey``/``SequenceKey``/``FlattenedIndexKey``,
        ``str`` or ``int``.

    Returns:
      ``"layer1.0.conv1.coefficients"``-style name (``""`` for the empty path).

    Example:
        >>> from jax.tree_util import DictKey, GetAttrKey, SequenceKey
        >>> path_name((DictKey("layer1"), SequenceKey(0), DictKey("conv1"), DictKey("coefficients"), GetAttrKey("value")))
        'layer1.0.conv1.coefficients'
        >>> path_name(("layer1", 0, "conv1"))
        'layer1.0.conv1'
    """
    keys = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
    if len(keys) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and keys[-1] == "value":
        keys = keys[:-1]
    return ".".join(keys)


def iter_layers(model: nnx.Module, types) -> Iterator[tuple[str, nnx.Module]]:
    """``(dotted path, module)`` of every sub-module of the given type(s), in graph order."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, types):
            yield path_name(path), node


def get_by_path(model, path: str):
    """The sub-module at a dotted path (``"layer1.0.conv1"``)."""
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def set_by_path(model, path: str, value) -> None:
    """Replace the sub-module at a dotted path."""
    parent_path, _, last = path.rpartition(".")
    parent = get_by_path(model, parent_path) if parent_path else model
    if last.isdigit():
        parent[int(last)] = value
    else:
        setattr(parent, last, value)


def _conv_strides(conv: nnx.Conv) -> tuple[int, int]:
    strides = conv.strides if conv.strides is not None else 1
    return tuple(strides) if isinstance(strides, (tuple, list)) else (int(strides), int(strides))


def decompose_model(model: nnx.Module, num_basis: int, *, centered: bool = False) -> dict[str, dict]:
    """Replace, in place, every decomposable ``nnx.Conv`` of ``model`` by a :class:`DecomposedConv`.

    All kernels go through one jitted :func:`~jaxsparse.penni.decompose.decompose_kernels` call.

    Args:
      model: any NNX model; 1x1, grouped, dilated and biased convs are left as they are.
      num_basis: ``d`` basis kernels per layer.
      centered: PCA (True) or SVD (False) directions.

    Returns:
      layer path -> ``{"explained": float, "relative_error": float, "num_basis": d}``.

    Example:
        >>> from jaxsparse.models import build_model
        >>> model = build_model("resnet20", rngs=nnx.Rngs(0))
        >>> stats = decompose_model(model, 5)
        >>> type(model.conv1).__name__, round(stats["conv1"]["explained"], 2) <= 1.0
        ('DecomposedConv', True)
    """
    convs = {path: layer for path, layer in iter_layers(model, nnx.Conv) if decomposable(layer)}
    if not convs:
        return {}
    results = decompose_kernels({p: c.kernel[...] for p, c in convs.items()}, num_basis, centered=centered)
    stats = {}
    for path, conv in convs.items():
        dec = results[path]
        set_by_path(model, path, DecomposedConv(dec.basis, dec.coefficients, strides=_conv_strides(conv), padding=conv.padding))
        stats[path] = {"explained": float(dec.explained), "relative_error": float(dec.relative_error), "num_basis": num_basis}
    return stats


def set_form(model: nnx.Module, form: str | dict[str, str]) -> None:
    """Set the inference form of every :class:`DecomposedConv` (one form, or path -> form)."""
    for path, layer in iter_layers(model, DecomposedConv):
        chosen = form if isinstance(form, str) else form.get(path, layer.form)
        layer.form = check_choice(f"form of {path}", chosen, FORMS)


def set_quantization(model: nnx.Module, coef_bits: int, basis_bits: int, per_channel: bool = False) -> None:
    """Turn fake-quantization on (bits > 0) or off (0) for every :class:`DecomposedConv`."""
    for _, layer in iter_layers(model, DecomposedConv):
        layer.coef_bits, layer.basis_bits, layer.per_channel = int(coef_bits), int(basis_bits), bool(per_channel)
