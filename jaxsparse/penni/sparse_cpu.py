"""A sparse-coefficient CPU kernel for decomposed 3x3 convolutions, called from XLA.

XLA:CPU has no convolution that skips zero coefficients: every formulation of a
:class:`~jaxsparse.penni.layers.DecomposedConv` that XLA can express runs as dense
convolutions or matmuls. This module compiles one (with numba) and registers it as an
XLA FFI custom call, so it runs inside a jitted model with no copies.

For an input ``x`` (NHWC) it computes, per tile of output rows of a few images,

.. math::

   u_{c,j} = x_c \\star b_j \\quad \\text{for the live pairs } (c, j), \\qquad
   y_o = \\sum_{(c,j):\\, C_{c,o,j} \\neq 0} C_{c,o,j}\\, u_{c,j},

the basis-first order of PENNI: a 3x3 stencil per live ``(input channel, basis kernel)``
pair, then a sparse (CSR) combination that visits only the non-zero coefficients. The
sparsity pattern is the same at every pixel, so both loops run along pixels and
vectorise: the tile is held channel-planar with one padded row pitch (``W + 2``), which
turns every tap of the stencil into one contiguous shifted load. Work is split over
images and row tiles across the CPU cores (numba's thread-safe OpenMP layer).

Limits: 3x3 kernels, stride 1 or 2, the same explicit padding on both sides, float32, CPU
backend, inference only (no gradient). :func:`supports` says whether a layer qualifies.
Activations may be NHWC or channel-planar (NCHW) on either side (:meth:`SparseCoefficientConv.set_layouts`).

Example::

    layer = DecomposedConv(basis, coefficients)          # pruned, quantization baked
    fast = SparseCoefficientConv(layer)                  # packs the non-zeros once
    y = jax.jit(lambda x: fast(x))(x)                    # == layer(x) up to rounding
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from runkit import UsageError, check_choice, check_shape, numba_ffi
from jaxsparse.penni.layers import stencil_kernel_support

if not numba_ffi.NUMBA_MISSING:
    from numba import njit, prange

#: Name under which the custom call is registered with XLA.
TARGET = "jaxsparse_penni_sparse_conv3x3"


class PackedCoefficients(NamedTuple):
    """A layer's non-zero coefficients in the kernel's layout (all numpy, built once).

    Attributes:
      pair_channel, pair_basis: ``(P,)`` the live ``(input channel, basis kernel)`` pairs,
        those some non-zero coefficient reads, sorted by channel then basis.
      channel_start: ``(G + 1,)`` pairs ``channel_start[g]:channel_start[g+1]`` share one channel.
      row_start: ``(Cout + 1,)`` CSR row pointers: output ``o`` reads non-zeros
        ``row_start[o]:row_start[o+1]``.
      pair_index, values: ``(nnz,)`` the pair each non-zero multiplies and its value.
    """

    pair_channel: np.ndarray
    pair_basis: np.ndarray
    channel_start: np.ndarray
    row_start: np.ndarray
    pair_index: np.ndarray
    values: np.ndarray


def pack_coefficients(coefficients: np.ndarray) -> PackedCoefficients:
    """Pack ``(Cin, Cout, d)`` coefficients into live pairs + CSR over outputs.

    Example:
        >>> c = np.zeros((2, 3, 2), np.float32); c[1, 0, 1] = 5.0; c[1, 2, 1] = 7.0
        >>> p = pack_coefficients(c)
        >>> p.pair_channel.tolist(), p.pair_basis.tolist(), p.row_start.tolist(), p.values.tolist()
        ([1], [1], [0, 1, 1, 2], [5.0, 7.0])
    """
    coefficients = np.asarray(coefficients, np.float32)
    if coefficients.ndim != 3:
        raise UsageError(f"coefficients: expected shape (Cin, Cout, d), got {coefficients.shape}")
    cin, cout, d = coefficients.shape
    channel, basis = np.nonzero(np.any(coefficients != 0, axis=1))
    pair_of = np.full((cin, d), -1, np.int64)
    pair_of[channel, basis] = np.arange(channel.size)
    channel_start = np.searchsorted(channel, np.unique(channel)).tolist() + [channel.size]
    out, c, j = np.nonzero(np.transpose(coefficients, (1, 0, 2)))  # sorted by output: CSR order
    row_start = np.concatenate([[0], np.cumsum(np.bincount(out, minlength=cout))])
    return PackedCoefficients(
        channel.astype(np.int32), basis.astype(np.int32), np.asarray(channel_start, np.int32),
        row_start.astype(np.int32), pair_of[c, j].astype(np.int32), coefficients[c, out, j].astype(np.float32),
    )


def supports(layer) -> tuple[bool, str]:
    """``(True, "")`` when the kernel can run ``layer`` (a DecomposedConv), else ``(False, reason)``."""
    ok, reason = available()
    if not ok:
        return False, reason
    return stencil_kernel_support(layer, symmetric_padding=True)


def available() -> tuple[bool, str]:
    """``(True, "")`` when numba is importable and the default JAX backend is CPU."""
    return numba_ffi.available()


def _register() -> None:
    """Compile the kernel and its FFI handler, and register the custom call (once per process)."""
    numba_ffi.register(TARGET, _handler, "SparseCoefficientConv")


if not numba_ffi.NUMBA_MISSING:
    _unsigned = np.uint64  # unsigned indices: numba skips negative-index wrap-around, so the loops vectorise

    @njit(parallel=True, fastmath=True, cache=True)
    def _conv(x, basis, pair_channel, pair_basis, channel_start, row_start, pair_index, values, bias, source, residual,
              config, out):
        top, left, tile_rows, images = config[0], config[1], config[2], config[3]
        relu, residual_stride = config[4] != 0, config[5]  # residual_stride 0: no residual
        stride, planar_in, planar_out = config[6], config[7] != 0, config[8] != 0
        if planar_in:
            n_images, _, height, width = x.shape
        else:
            n_images, height, width, _ = x.shape
        if planar_out:
            _, cout, out_h, out_w = out.shape
        else:
            _, out_h, out_w, cout = out.shape
        pairs = pair_channel.shape[0]
        pitch_in = width + 2 * left  # one padded input row (symmetric padding: checked by the caller)
        # Lane q = r * pitch + b * image_offset + w holds output (r, w) of image b of the item; other lanes are
        # junk. At stride 1 the window holds the item's images side by side, each row of one image followed by
        # `left` zero columns that pad both neighbours (pitch = images * (width + left) + left), and tap (dy, dx)
        # is window[q + dy*pitch + dx]. At stride 2 each image has its own window, split into four planes by row
        # and column parity (pitch_in is even, pitch = pitch_in / 2): tap (dy, dx) is plane (dy % 2, dx % 2) at
        # q + (dy // 2) * pitch + dx // 2. Either way every tap is one contiguous shifted load.
        if stride == 1:
            pitch = images * (width + left) + left
            image_offset = width + left
        else:
            pitch = pitch_in // 2
            image_offset = tile_rows * pitch
        plane_rows = tile_rows + 2 if stride == 1 else tile_rows + 1
        plane = plane_rows * pitch + 4
        lanes = tile_rows * pitch  # of one stencil pass: the whole item at stride 1, one image at stride 2
        item_lanes = lanes if stride == 1 else images * lanes
        row_tiles = (out_h + tile_rows - 1) // tile_rows
        image_groups = (n_images + images - 1) // images
        lanes_u, pitch_u, one, two = _unsigned(lanes), _unsigned(pitch), _unsigned(1), _unsigned(2)
        p01, p10, p11 = _unsigned(plane), _unsigned(2 * plane), _unsigned(3 * plane)
        width_u = _unsigned(width)
        for job in prange(image_groups * row_tiles):
            first = (job // row_tiles) * images
            count = min(images, n_images - first)
            h0 = (job % row_tiles) * tile_rows
            rows = min(tile_rows, out_h - h0)
            maps = np.empty((pairs, item_lanes), np.float32)
            window = np.zeros(stride * stride * plane, np.float32)
            acc = np.empty((cout, item_lanes), np.float32)
            for b in range(1 if stride == 1 else count):  # stencil passes: one for all images at stride 1
                n = first + b
                for g in range(channel_start.shape[0] - 1):
                    p0, p1 = channel_start[g], channel_start[g + 1]
                    c = pair_channel[p0]
                    for rr in range((tile_rows - 1) * stride + 3):
                        h = h0 * stride - top + rr
                        # Padding rows and columns are never written: they keep the zeros the window
                        # started the item with, so only the image pixels are copied for each channel.
                        if stride == 1:
                            if 0 <= h < height:
                                for bb in range(count):
                                    at = _unsigned(rr * pitch + bb * image_offset + left)
                                    if planar_in:
                                        source_row = x[first + bb, c, h]
                                        for w in range(width_u):
                                            window[at + w] = source_row[w]
                                    else:
                                        for w in range(width):
                                            window[at + w] = x[first + bb, h, w, c]
                        else:
                            start = (rr % 2) * 2 * plane + (rr // 2) * pitch
                            if 0 <= h < height:
                                for w in range(width):
                                    col = left + w
                                    value = x[n, c, h, w] if planar_in else x[n, h, w, c]
                                    window[start + (col % 2) * plane + col // 2] = value
                    p = p0
                    while stride == 1 and p + 1 < p1:  # two bases per pass share the nine tap loads
                        j, i = pair_basis[p], pair_basis[p + 1]
                        k0, k1, k2 = basis[j, 0, 0], basis[j, 0, 1], basis[j, 0, 2]
                        k3, k4, k5 = basis[j, 1, 0], basis[j, 1, 1], basis[j, 1, 2]
                        k6, k7, k8 = basis[j, 2, 0], basis[j, 2, 1], basis[j, 2, 2]
                        l0, l1, l2 = basis[i, 0, 0], basis[i, 0, 1], basis[i, 0, 2]
                        l3, l4, l5 = basis[i, 1, 0], basis[i, 1, 1], basis[i, 1, 2]
                        l6, l7, l8 = basis[i, 2, 0], basis[i, 2, 1], basis[i, 2, 2]
                        m = maps[p, b * lanes:(b + 1) * lanes]
                        mm = maps[p + 1, b * lanes:(b + 1) * lanes]
                        for q in range(lanes_u):
                            t0, t1, t2 = window[q], window[q + one], window[q + two]
                            t3, t4, t5 = window[q + pitch_u], window[q + pitch_u + one], window[q + pitch_u + two]
                            t6, t7 = window[q + two * pitch_u], window[q + two * pitch_u + one]
                            t8 = window[q + two * pitch_u + two]
                            m[q] = k0 * t0 + k1 * t1 + k2 * t2 + k3 * t3 + k4 * t4 + k5 * t5 + k6 * t6 + k7 * t7 + k8 * t8
                            mm[q] = l0 * t0 + l1 * t1 + l2 * t2 + l3 * t3 + l4 * t4 + l5 * t5 + l6 * t6 + l7 * t7 + l8 * t8
                        p += 2
                    while p < p1:
                        j = pair_basis[p]
                        k0, k1, k2 = basis[j, 0, 0], basis[j, 0, 1], basis[j, 0, 2]
                        k3, k4, k5 = basis[j, 1, 0], basis[j, 1, 1], basis[j, 1, 2]
                        k6, k7, k8 = basis[j, 2, 0], basis[j, 2, 1], basis[j, 2, 2]
                        m = maps[p, b * lanes:(b + 1) * lanes]
                        if stride == 1:
                            for q in range(lanes_u):
                                m[q] = (k0 * window[q] + k1 * window[q + one] + k2 * window[q + two]
                                        + k3 * window[q + pitch_u] + k4 * window[q + pitch_u + one]
                                        + k5 * window[q + pitch_u + two] + k6 * window[q + two * pitch_u]
                                        + k7 * window[q + two * pitch_u + one] + k8 * window[q + two * pitch_u + two])
                        else:
                            for q in range(lanes_u):
                                m[q] = (k0 * window[q] + k1 * window[p01 + q] + k2 * window[q + one]
                                        + k3 * window[p10 + q] + k4 * window[p11 + q] + k5 * window[p10 + q + one]
                                        + k6 * window[q + pitch_u] + k7 * window[p01 + q + pitch_u]
                                        + k8 * window[q + pitch_u + one])
                        p += 1
            used = _unsigned(lanes if stride == 1 else count * lanes)
            for o in range(cout):
                a = acc[o]
                start_value = bias[o]
                for q in range(used):
                    a[q] = start_value
                k, k_end = row_start[o], row_start[o + 1]
                while k + 7 < k_end:  # eight non-zeros per pass: an eighth of the loads and stores of acc
                    v0, v1, v2, v3 = values[k], values[k + 1], values[k + 2], values[k + 3]
                    v4, v5, v6, v7 = values[k + 4], values[k + 5], values[k + 6], values[k + 7]
                    m0, m1 = maps[pair_index[k]], maps[pair_index[k + 1]]
                    m2, m3 = maps[pair_index[k + 2]], maps[pair_index[k + 3]]
                    m4, m5 = maps[pair_index[k + 4]], maps[pair_index[k + 5]]
                    m6, m7 = maps[pair_index[k + 6]], maps[pair_index[k + 7]]
                    for q in range(used):
                        a[q] += ((v0 * m0[q] + v1 * m1[q] + v2 * m2[q] + v3 * m3[q])
                                 + (v4 * m4[q] + v5 * m5[q] + v6 * m6[q] + v7 * m7[q]))
                    k += 8
                while k + 3 < k_end:
                    v0, v1, v2, v3 = values[k], values[k + 1], values[k + 2], values[k + 3]
                    m0, m1 = maps[pair_index[k]], maps[pair_index[k + 1]]
                    m2, m3 = maps[pair_index[k + 2]], maps[pair_index[k + 3]]
                    for q in range(used):
                        a[q] += v0 * m0[q] + v1 * m1[q] + v2 * m2[q] + v3 * m3[q]
                    k += 4
                while k < k_end:
                    v0, m0 = values[k], maps[pair_index[k]]
                    for q in range(used):
                        a[q] += v0 * m0[q]
                    k += 1
            out_w_u = _unsigned(out_w)
            for o in range(cout):
                a = acc[o]
                src = source[o] if residual_stride > 0 else -1
                for b in range(count):
                    n = first + b
                    for r in range(rows):
                        base = _unsigned(b * image_offset + r * pitch)
                        hr = (h0 + r) * residual_stride
                        if planar_out:
                            # one pass per row with the residual and the ReLU fused in: rows are short (8-32
                            # pixels), so separate passes cost more in loop overhead than in arithmetic
                            row = out[n, o, h0 + r]
                            if src < 0:
                                if relu:
                                    for w in range(out_w_u):
                                        row[w] = max(a[base + w], 0.0)
                                else:
                                    for w in range(out_w_u):
                                        row[w] = a[base + w]
                            elif planar_in and residual_stride == 1:
                                residual_row = residual[n, src, hr]
                                if relu:
                                    for w in range(out_w_u):
                                        row[w] = max(a[base + w] + residual_row[w], 0.0)
                                else:
                                    for w in range(out_w_u):
                                        row[w] = a[base + w] + residual_row[w]
                            else:
                                for w in range(out_w):
                                    value = a[base + w] + (residual[n, src, hr, w * residual_stride] if planar_in
                                                           else residual[n, hr, w * residual_stride, src])
                                    row[w] = max(value, 0.0) if relu else value
                        else:
                            for w in range(out_w):
                                value = a[base + w]
                                if src >= 0:
                                    if planar_in:
                                        value += residual[n, src, hr, w * residual_stride]
                                    else:
                                        value += residual[n, hr, w * residual_stride, src]
                                if relu and value < 0.0:
                                    value = 0.0
                                out[n, h0 + r, w, o] = value

    def _handler(frame):
        args, rets = numba_ffi.call_frame(frame)
        if args != 0:
            vector, f32, i32 = numba_ffi.vector, np.float32, np.int32
            _conv(numba_ffi.array4(args, 0, f32), numba_ffi.array3(args, 1, f32), vector(args, 2, i32),
                  vector(args, 3, i32), vector(args, 4, i32), vector(args, 5, i32), vector(args, 6, i32),
                  vector(args, 7, f32), vector(args, 8, f32), vector(args, 9, i32), numba_ffi.array4(args, 10, f32),
                  vector(args, 11, i32), numba_ffi.array4(rets, 0, f32))
        return numba_ffi.as_pointer(0)


class KernelTable(nnx.Variable):
    """Constant arrays of an inference kernel (packed indices and values): state, not trained."""


class SparseCoefficientConv(nnx.Module):
    """Inference-only 3x3 decomposed conv (stride 1 or 2) run by the sparse CPU kernel (see the module notes).

    The kernel also applies an epilogue while it writes each output, so no separate pass
    over the activations is needed: a per-channel ``bias`` (a folded BatchNorm), a residual
    input added channel by channel, and a ReLU::

        y[n, h, w, o] = act(conv(x)[n, h, w, o] + bias[o] + residual[n, s*h, s*w, source[o]])

    with ``source[o] = -1`` adding nothing (see :meth:`set_epilogue` and :meth:`__call__`).

    Args:
      layer: a trained :class:`~jaxsparse.penni.layers.DecomposedConv` (its effective,
        possibly fake-quantized, tensors are packed).
      tile_rows: output rows per work item (default: all rows of an image).
      images: images per work item (default: enough for about 512 output lanes, at least 2:
        2 images at 32x32 and 16x16, 6 at 8x8). Measured on 2 cores for the CIFAR ResNet
        shapes, whole images per item were fastest or close to it: long rows of pixels
        vectorise, and the maps of an item stay in L2.

    Example:
        >>> layer = DecomposedConv(jnp.ones((2, 3, 3)), jnp.ones((4, 8, 2)))  # doctest: +SKIP
        >>> SparseCoefficientConv(layer)(jnp.ones((1, 6, 6, 4))).shape        # doctest: +SKIP
        (1, 6, 6, 8)
    """

    def __init__(self, layer, *, tile_rows: int | None = None, images: int | None = None):
        ok, reason = supports(layer)
        if not ok:
            raise UsageError(f"layer: the sparse CPU kernel cannot run it: {reason}")
        for name, value in (("tile_rows", tile_rows), ("images", images)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"{name}: expected a positive int or None, got {value!r}")
        basis, coefficients = (np.asarray(t, np.float32) for t in layer.effective_tensors())
        self.in_features, self.out_features = int(coefficients.shape[0]), int(coefficients.shape[1])
        self.strides = tuple(int(v) for v in layer.strides)
        self.padding = tuple(tuple(int(p) for p in pair) for pair in layer.padding)
        self.layout_in, self.layout_out = "NHWC", "NHWC"  # or "NCHW" (channel-planar), see set_layouts
        self.basis = KernelTable(jnp.asarray(basis))
        packed = pack_coefficients(coefficients)
        self.pair_channel, self.pair_basis, self.channel_start, self.row_start, self.pair_index = (
            KernelTable(jnp.asarray(a)) for a in packed[:5])
        self.values = KernelTable(jnp.asarray(packed.values))
        self.bias = KernelTable(jnp.zeros(self.out_features, jnp.float32))
        self.relu = False
        self.tile_rows, self.images = tile_rows, images

    @property
    def nnz(self) -> int:
        """Number of non-zero coefficients the kernel visits per output pixel."""
        return int(self.values.shape[0])

    def scale_outputs(self, scale: np.ndarray) -> None:
        """Multiply output channel ``o`` by ``scale[o]`` (BatchNorm folding; the bias is scaled too)."""
        scale = np.asarray(scale, np.float32)
        check_shape("scale", scale.shape, (self.out_features,))
        counts = np.diff(np.asarray(self.row_start[...]))
        self.values[...] = self.values[...] * jnp.asarray(np.repeat(scale, counts))
        self.bias[...] = self.bias[...] * jnp.asarray(scale)

    def set_layouts(self, layout_in: str = "NHWC", layout_out: str = "NHWC") -> None:
        """Read ``x`` (and the residual) and write ``y`` as ``"NHWC"`` or channel-planar ``"NCHW"``.

        A chain of kernels that keeps activations channel-planar saves the transposition
        between the two layouts (every kernel works channel-planar inside).
        """
        layouts = ("NHWC", "NCHW")
        self.layout_in, self.layout_out = check_choice("layout_in", layout_in, layouts), check_choice("layout_out", layout_out, layouts)

    def set_epilogue(self, bias: jax.Array | None = None, relu: bool = False) -> None:
        """Add ``bias`` (shape ``(Cout,)``) to every output and apply a ReLU when ``relu`` (in the kernel)."""
        if bias is not None:
            bias = jnp.asarray(bias, jnp.float32)
            check_shape("bias", bias.shape, (self.out_features,))
            self.bias[...] = bias
        self.relu = bool(relu)

    def __call__(self, x: jax.Array, residual: jax.Array | None = None, *,
                 residual_source: tuple[int, ...] | None = None, residual_stride: int = 1) -> jax.Array:
        """The conv of ``x`` with the epilogue; ``residual`` is added before the ReLU.

        Args:
          x: float32 input, ``(N, H, W, Cin)`` (``(N, Cin, H, W)`` when ``layout_in`` is NCHW).
          residual: optional tensor in the input's layout, ``C`` channels, added to the output:
            output channel ``o`` gets the residual's channel ``residual_source[o]`` at every
            ``residual_stride``-th row and column.
          residual_source: per output channel, the residual channel it adds (``-1``: none);
            default: channel ``o`` (needs ``C == Cout``).
          residual_stride: spatial subsampling of the residual (1, or 2 for a downsampling block).

        Returns:
          ``(N, Ho, Wo, Cout)`` (``(N, Cout, Ho, Wo)`` when ``layout_out`` is NCHW).
        """
        planar_in, planar_out = self.layout_in == "NCHW", self.layout_out == "NCHW"
        channels = (x.shape[1] if planar_in else x.shape[-1]) if x.ndim == 4 else None
        if x.ndim != 4 or channels != self.in_features or x.dtype != jnp.float32:
            raise UsageError(f"x: expected float32 {self.layout_in} with {self.in_features} channels, got {x.dtype} {x.shape}")
        _register()
        (top, _), (left, _) = self.padding
        stride = self.strides[0]
        n, h, w = (x.shape[0], *x.shape[2:]) if planar_in else x.shape[:3]
        out_h, out_w = (h + 2 * top - 3) // stride + 1, (w + 2 * left - 3) // stride + 1
        if out_h < 1 or out_w < 1:
            raise UsageError(f"x: spatial size {(h, w)} is too small for a 3x3 kernel with padding {self.padding}")
        if stride == 2 and (w + 2 * left) % 2:
            raise UsageError(f"x: a stride-2 kernel needs an even padded width, got width {w} with padding {left} on each side")
        if residual is None:
            residual, source, residual_stride = jnp.zeros((1, 1, 1, 1), jnp.float32), np.full(self.out_features, -1), 0
        else:
            if residual_source is None:
                residual_source = tuple(range(self.out_features))
            source, residual_stride = np.asarray(residual_source, np.int64), int(residual_stride)
            rn, rh, rw, rc = ((residual.shape[0], *residual.shape[2:], residual.shape[1]) if planar_in
                              else tuple(residual.shape)) if residual.ndim == 4 else (0, 0, 0, 0)
            if (residual.dtype != jnp.float32 or residual_stride not in (1, 2) or rn != n
                    or rh < (out_h - 1) * residual_stride + 1 or rw < (out_w - 1) * residual_stride + 1):
                raise UsageError(f"residual: expected float32 {self.layout_in} with {n} images covering {(out_h, out_w)} "
                                 f"outputs at stride 1 or 2, got {residual.dtype} {residual.shape} at stride {residual_stride}")
            if source.shape != (self.out_features,) or source.max(initial=-1) >= rc or source.min(initial=0) < -1:
                raise UsageError(f"residual_source: expected {self.out_features} channel indices in [-1, {rc}), "
                                 f"got {tuple(source.tolist())}")
        tile_rows = min(self.tile_rows or out_h, out_h)
        lanes = tile_rows * (w + 2 * left) // stride
        images = min(self.images or max(2, 512 // lanes), n)
        config = jnp.asarray([top, left, tile_rows, images, int(self.relu), residual_stride, stride,
                              int(planar_in), int(planar_out)], jnp.int32)
        shape = (n, self.out_features, out_h, out_w) if planar_out else (n, out_h, out_w, self.out_features)
        call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(shape, jnp.float32))
        return call(x, self.basis[...], self.pair_channel[...], self.pair_basis[...], self.channel_start[...],
                    self.row_start[...], self.pair_index[...], self.values[...], self.bias[...],
                    jnp.asarray(source, jnp.int32), residual, config)
