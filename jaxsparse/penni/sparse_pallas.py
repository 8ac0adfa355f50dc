"""A Pallas kernel for decomposed 3x3 convolutions that skips dead (input channel, basis) pairs: one source for GPU and TPU.

For an input ``x`` (NHWC) and a :class:`~jaxsparse.penni.layers.DecomposedConv` with
basis ``b`` and coefficients ``C`` it computes, per image,

.. math::

   u_k = x_{c_k} \\star b_{j_k} \\quad \\text{for the live pairs } k = (c_k, j_k), \\qquad
   y = \\mathrm{act}\\big(U C_{\\mathrm{live}} + \\beta + r\\big),

the basis-first order of PENNI over the pairs some non-zero coefficient reads (the
others' stencils are never computed), then the combination as one matrix product on
the matrix unit, then the epilogue (a folded BatchNorm bias ``beta``, a residual ``r``
and a ReLU) before the single write of ``y``; the maps ``U`` live only on chip.

Layout: outside the kernel the live pairs' channels are gathered and padded, and each
image is split into ``s x s`` stride phases (``s`` the stride), each flattened with one
row pitch ``Wq``, so that every tap of the stencil is one contiguous, unit-stride slice
of a phase at a static offset: ``(a // s) * Wq + b // s`` of phase ``(a % s, b % s)``. The
kernel computes ``Ho * Wq`` flat positions (the last ``Wq - Wo`` of each row are discarded)
in tiles, one program per (image, tile); each tile's input window (its positions plus the
halo of ``2 Wq / s + 2 / s`` the taps reach past them) is cut out once outside the kernel as
a block of its own, so a program holds only its window on chip and every tap is a slice at
a static offset. Pairs, output channels and taps are padded to powers of two (pairs and
channels to at least 16).

Off the CPU it runs compiled (GPU through Triton, TPU through Mosaic); on the CPU only
in interpret mode, which is how it is tested.

Example::

    layer = DecomposedConv(basis, coefficients)           # pruned, quantization baked
    fast = PallasSparseConv(layer)                         # interpret=True on a CPU backend
    y = jax.jit(lambda x: fast(x))(x)                      # == layer(x) up to rounding
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import pallas as pl

from runkit import UsageError, check_shape
from jaxsparse.penni.layers import stencil_kernel_support
from jaxsparse.penni.sparse_cpu import KernelTable

#: Smallest padded size of the pair and output-channel axes (GPU matrix products need 16).
MIN_LANES = 16
#: Smallest tile of flat output positions.
MIN_TILE = 16


def _round8(n: int) -> int:
    return -(-int(n) // 8) * 8


def _pow2(n: int, least: int = 1) -> int:
    return max(least, 1 << max(int(n) - 1, 0).bit_length())


def supports(layer) -> tuple[bool, str]:
    """``(True, "")`` when the kernel can run ``layer`` (a DecomposedConv), else ``(False, reason)``."""
    return stencil_kernel_support(layer)


def _compiler_params(platform: str):
    """GPU: the Triton lowering (Pallas' Mosaic GPU path wants warpgroup-sized copies that this kernel's
    small blocks do not have); other platforms: their defaults."""
    if platform != "gpu":
        return None
    from jax.experimental.pallas import triton as pallas_triton

    return pallas_triton.CompilerParams(num_warps=4, num_stages=1)


def _kernel(x_ref, taps_ref, mix_ref, bias_ref, *rest, stride: int, pitch: int, tile: int, relu: bool):
    """One tile of ``tile`` flat output positions of one image: the stencil of every live pair, the
    product with the coefficients, the epilogue. The block is the tile's input window (every phase,
    with the halo the taps reach past the tile), so every tap is a slice at a static offset."""
    (res_ref, o_ref) = rest if len(rest) == 2 else (None, rest[0])
    maps = None
    for a in range(3):
        for b in range(3):
            phase = (a % stride) * stride + (b % stride)
            offset = (a // stride) * pitch + (b // stride)
            window = x_ref[0, 0, phase, pl.ds(offset, tile), :]  # (tile, pairs)
            term = window * taps_ref[a * 3 + b, :][None, :]
            maps = term if maps is None else maps + term
    y = jnp.dot(maps, mix_ref[...], preferred_element_type=jnp.float32) + bias_ref[0, :][None, :]
    if res_ref is not None:
        y = y + res_ref[0]
    if relu:
        y = jnp.maximum(y, 0.0)
    o_ref[0] = y.astype(o_ref.dtype)


class PallasSparseConv(nnx.Module):
    """Inference-only 3x3 decomposed conv (stride 1 or 2) as a Pallas kernel over the live pairs (module notes).

    Same epilogue as :class:`~jaxsparse.penni.sparse_cpu.SparseCoefficientConv`::

        y[n, h, w, o] = act(conv(x)[n, h, w, o] + bias[o] + residual[n, s*h, s*w, source[o]])

    Args:
      layer: a trained :class:`~jaxsparse.penni.layers.DecomposedConv` (its effective,
        possibly fake-quantized, tensors are used); build it outside ``jit``.
      interpret: run the kernel in Pallas' interpret mode (default: on a CPU backend,
        where it cannot be compiled).
      tile: flat output positions per program at most (a power of two; smaller for small
        images, and halved until the tile's input window fits ``window_bytes``).
      window_bytes: on-chip bytes a program's input window (every stride phase, halo
        included, times the padded pairs) may take; the output tile and the coefficients
        come on top (a GPU's shared memory is about 228 KB per block).
      platform: ``"gpu"`` or ``"tpu"``, the platform the kernel is lowered for, which picks
        the Pallas lowering (GPU: Triton); default: the default backend's (set it to lower
        for another platform, e.g. ``jax.jit(...).trace(x).lower(lowering_platforms=("cuda",))``).

    Example:
        >>> from jaxsparse.penni.layers import DecomposedConv
        >>> layer = DecomposedConv(jnp.ones((2, 3, 3)), jnp.ones((4, 8, 2)))
        >>> fast = PallasSparseConv(layer)
        >>> bool(jnp.allclose(fast(jnp.ones((1, 6, 6, 4))), layer(jnp.ones((1, 6, 6, 4))), rtol=1e-5))
        True
    """

    def __init__(self, layer, *, interpret: bool | None = None, tile: int = 256, window_bytes: int = 96 * 1024,
                 platform: str | None = None):
        ok, reason = supports(layer)
        if not ok:
            raise UsageError(f"layer: the Pallas kernel cannot run it: {reason}")
        if not isinstance(tile, int) or tile < 1 or tile & (tile - 1):
            raise UsageError(f"tile: expected a power of two, got {tile!r}")
        basis, coefficients = (np.asarray(t, np.float32) for t in layer.effective_tensors())
        cin, cout, _ = coefficients.shape
        channel, which = np.nonzero(np.any(coefficients != 0, axis=1))  # the live pairs
        if channel.size == 0:  # nothing reads any map: one all-zero pair keeps shapes valid
            channel, which = np.zeros(1, np.int64), np.zeros(1, np.int64)
        pairs, lanes = _pow2(channel.size, MIN_LANES), _pow2(cout, MIN_LANES)
        taps = np.zeros((16, pairs), np.float32)  # 9 taps, rows padded to a power of two
        taps[:9, : channel.size] = basis[which].reshape(-1, 9).T
        mixing = np.zeros((pairs, lanes), np.float32)
        mixing[: channel.size, :cout] = coefficients[channel, :, which]
        self.channels = tuple(int(c) for c in channel)
        self.taps, self.mixing = KernelTable(jnp.asarray(taps)), KernelTable(jnp.asarray(mixing))
        self.bias = KernelTable(jnp.zeros((1, lanes), jnp.float32))
        self.relu = False
        self.strides = tuple(int(v) for v in layer.strides)
        self.padding = tuple(tuple(int(p) for p in pair) for pair in layer.padding)
        self.in_features, self.out_features = int(cin), int(cout)
        self.interpret = jax.default_backend() == "cpu" if interpret is None else bool(interpret)
        self.tile, self.window_bytes = tile, int(window_bytes)
        if platform not in (None, "cpu", "gpu", "tpu"):
            raise UsageError(f"platform: expected one of ['cpu', 'gpu', 'tpu'] or None, got {platform!r}")
        self.platform = platform

    @property
    def num_pairs(self) -> int:
        """Live (input channel, basis kernel) pairs whose stencils the kernel computes."""
        return len(self.channels)

    def scale_outputs(self, scale: np.ndarray) -> None:
        """Multiply output channel ``o`` by ``scale[o]`` (BatchNorm folding; the bias is scaled too)."""
        scale = np.asarray(scale, np.float32)
        check_shape("scale", scale.shape, (self.out_features,))
        padded = np.ones(self.mixing.shape[1], np.float32)
        padded[: self.out_features] = scale
        self.mixing[...] = self.mixing[...] * jnp.asarray(padded)[None, :]
        self.bias[...] = self.bias[...] * jnp.asarray(padded)[None, :]

    def set_epilogue(self, bias: jax.Array | None = None, relu: bool = False) -> None:
        """Add ``bias`` (shape ``(Cout,)``) to every output and apply a ReLU when ``relu`` (in the kernel)."""
        if bias is not None:
            bias = jnp.asarray(bias, jnp.float32)
            check_shape("bias", bias.shape, (self.out_features,))
            self.bias[...] = jnp.zeros_like(self.bias[...]).at[0, : self.out_features].set(bias)
        self.relu = bool(relu)

    def __call__(self, x: jax.Array, residual: jax.Array | None = None, *,
                 residual_source: tuple[int, ...] | None = None, residual_stride: int = 1) -> jax.Array:
        """The conv of NHWC ``x`` with the epilogue; ``residual`` (NHWC) is added before the ReLU.

        Args:
          x: float32 ``(N, H, W, Cin)``.
          residual: optional ``(N, H', W', C)``: output channel ``o`` gets its channel
            ``residual_source[o]`` (``-1``: none; default ``o``) at every
            ``residual_stride``-th row and column.

        Returns:
          ``(N, Ho, Wo, Cout)``.
        """
        if x.ndim != 4 or x.shape[-1] != self.in_features or x.dtype != jnp.float32:
            raise UsageError(f"x: expected float32 NHWC with {self.in_features} channels, got {x.dtype} {x.shape}")
        n, h, w, _ = x.shape
        (top, bottom), (left, right) = self.padding
        s = self.strides[0]
        out_h, out_w = (h + top + bottom - 3) // s + 1, (w + left + right - 3) // s + 1
        if out_h < 1 or out_w < 1:
            raise UsageError(f"x: spatial size {(h, w)} is too small for a 3x3 kernel with padding {self.padding}")
        pairs, lanes = self.mixing.shape
        # Stride phases of the padded input, each flattened with row pitch ``wq``.
        hq, wq = -(-(h + top + bottom) // s), -(-(w + left + right) // s)
        selected = jnp.take(x, jnp.asarray(self.channels, jnp.int32), axis=-1)
        selected = jnp.pad(selected, ((0, 0), (top, hq * s - h - top), (left, wq * s - w - left),
                                      (0, pairs - len(self.channels))))  # fmt: skip
        phases = selected.reshape(n, hq, s, wq, s, pairs).transpose(0, 2, 4, 1, 3, 5).reshape(n, s * s, hq * wq, pairs)
        halo = (2 // s) * wq + 2 // s  # the furthest tap's offset past a tile's first position
        tile = min(self.tile, _pow2(out_h * wq))
        while tile > MIN_TILE and s * s * _round8(tile + halo) * pairs * 4 > self.window_bytes:
            tile //= 2  # a tile's input window (all phases, halo included) must fit on chip
        window = _round8(tile + halo)
        tiles = -(-out_h * wq // tile)
        length = tiles * tile  # output positions computed, a whole number of tiles
        phases = jnp.pad(phases, ((0, 0), (0, 0), (0, max(0, (tiles - 1) * tile + window - hq * wq)), (0, 0)))
        # Each tile's window, halo included, as a block of its own (overlapping windows copied once).
        rows = (np.arange(tiles)[:, None] * tile + np.arange(window)[None, :]).reshape(-1)
        phases = jnp.take(phases, jnp.asarray(rows, jnp.int32), axis=2).reshape(n, s * s, tiles, window, pairs)
        phases = phases.transpose(0, 2, 1, 3, 4)  # (N, tiles, phases, window, pairs)
        operands = [phases, self.taps[...], self.mixing[...], self.bias[...]]
        specs = [self._spec((1, 1, s * s, window, pairs), lambda i, t: (i, t, 0, 0, 0)), self._spec((16, pairs)),
                 self._spec((pairs, lanes)), self._spec((1, lanes))]  # fmt: skip
        tiled = lambda i, t: (i, t, 0)  # noqa: E731
        if residual is not None:
            operands.append(self._residual(residual, residual_source, int(residual_stride), n, out_h, out_w, wq, length))
            specs.append(self._spec((1, tile, lanes), tiled))
        kernel = functools.partial(_kernel, stride=s, pitch=wq, tile=tile, relu=self.relu)
        out = pl.pallas_call(
            kernel,
            out_shape=jax.ShapeDtypeStruct((n, length, lanes), jnp.float32),
            grid=(n, tiles),
            in_specs=specs,
            out_specs=self._spec((1, tile, lanes), tiled),
            interpret=self.interpret,
            compiler_params=None if self.interpret else _compiler_params(self.platform or jax.default_backend()),
        )(*operands)
        return out[:, : out_h * wq].reshape(n, out_h, wq, lanes)[:, :, :out_w, : self.out_features]

    @staticmethod
    def _spec(shape, index=None):
        """A block of ``shape`` at ``index(image, tile)`` (default: the whole, shared array)."""
        return pl.BlockSpec(shape, index if index is not None else (lambda i, t: (0,) * len(shape)))

    def _residual(self, residual, source, stride, n, out_h, out_w, pitch, length):
        """The residual as the kernel adds it: ``(N, length, lanes)`` on the output's flat grid."""
        if source is None:
            source = tuple(range(self.out_features))
        source = np.asarray(source, np.int64)
        rc = residual.shape[-1] if residual.ndim == 4 else 0
        if (residual.ndim != 4 or residual.dtype != jnp.float32 or stride not in (1, 2) or residual.shape[0] != n
                or residual.shape[1] < (out_h - 1) * stride + 1 or residual.shape[2] < (out_w - 1) * stride + 1):
            raise UsageError(f"residual: expected float32 NHWC with {n} images covering {(out_h, out_w)} outputs at "
                             f"stride 1 or 2, got {residual.dtype} {residual.shape} at stride {stride}")
        if source.shape != (self.out_features,) or source.max(initial=-1) >= rc or source.min(initial=0) < -1:
            raise UsageError(f"residual_source: expected {self.out_features} channel indices in [-1, {rc}), "
                             f"got {tuple(source.tolist())}")
        lanes = self.mixing.shape[1]
        sub = residual[:, : (out_h - 1) * stride + 1 : stride, : (out_w - 1) * stride + 1 : stride, :]
        picked = jnp.where(jnp.asarray(source >= 0)[None, None, None, :],
                           jnp.take(sub, jnp.asarray(np.maximum(source, 0), jnp.int32), axis=-1), 0.0)
        picked = jnp.pad(picked, ((0, 0), (0, 0), (0, pitch - out_w), (0, lanes - self.out_features)))
        return jnp.pad(picked.reshape(n, out_h * pitch, lanes), ((0, 0), (0, length - out_h * pitch), (0, 0)))
