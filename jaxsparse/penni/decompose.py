"""Stage 1, *Decompose*: conv kernels -> a few basis kernels shared by the layer + coefficients.

A conv kernel in flax layout ``(kh, kw, Cin, Cout)`` holds ``Cin * Cout`` two-dimensional
kernels. Each one, flattened to ``kh * kw`` values, is a sample ``x_{io}``. With the
orthonormal principal directions ``v_1 .. v_{kh kw}`` of those samples (eigenvectors of
their Gram matrix, largest eigenvalue first) the layer keeps ``d`` basis kernels
``B = [v_1 .. v_d]`` and per-kernel coefficients ``c_{io} = B^T x_{io}``; the kernel is
rebuilt as ``x_{io} ~= B c_{io}``. Because the basis is orthonormal and nested in ``d``,
the reconstruction error never grows with ``d`` and is zero at ``d = kh * kw``.

``centered`` chooses how the directions are found:

* ``False`` (default, SVD of the raw kernels): directions of largest energy
  ``sum ||x||^2``; the best rank-``d`` approximation in the Frobenius norm.
* ``True`` (PCA): directions of largest variance of the mean-removed kernels. The
  coefficients are still the projections of the *raw* kernels, so the layer stays
  ``kernel = basis x coefficients`` with no extra mean kernel (a mean kernel would be a
  dense term added to every output channel, defeating coefficient sparsity).

Layers of equal shape are decomposed together: :func:`decompose_kernels` stacks them and
``vmap``s one decomposition over the stack, all inside one ``jit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from runkit import UsageError, check_positive


class Decomposition(NamedTuple):
    """One layer's decomposition.

    Attributes:
      basis: ``(d, kh, kw)`` orthonormal basis kernels (as flattened vectors).
      coefficients: ``(Cin, Cout, d)``; kernel ``[h, w, i, o] = sum_j coefficients[i, o, j] * basis[j, h, w]``.
      explained: fraction of the kernels' energy (``centered=False``) or variance
        (``centered=True``) carried by the ``d`` directions, in ``[0, 1]``.
      relative_error: ``||kernel - rebuilt|| / ||kernel||`` (Frobenius).
    """

    basis: jax.Array
    coefficients: jax.Array
    explained: jax.Array
    relative_error: jax.Array


def kernel_samples(kernel: jax.Array) -> jax.Array:
    """``(kh, kw, Cin, Cout)`` -> ``(Cin * Cout, kh * kw)``: one row per 2-D kernel."""
    kh, kw, cin, cout = kernel.shape
    return jnp.reshape(jnp.transpose(kernel, (2, 3, 0, 1)), (cin * cout, kh * kw))


def reconstruct_kernel(basis: jax.Array, coefficients: jax.Array) -> jax.Array:
    """Rebuild the ``(kh, kw, Cin, Cout)`` kernel from ``basis (d, kh, kw)`` and ``coefficients (Cin, Cout, d)``.

    Example:
        >>> basis = jnp.eye(9).reshape(9, 3, 3)
        >>> reconstruct_kernel(basis, jnp.ones((2, 4, 9))).shape
        (3, 3, 2, 4)
    """
    return jnp.einsum("jhw,ioj->hwio", basis, coefficients, precision=jax.lax.Precision.HIGHEST)


def _decompose_one(kernel: jax.Array, num_basis: int, centered: bool) -> Decomposition:
    kh, kw, cin, cout = kernel.shape
    samples = jnp.asarray(kernel_samples(kernel), jnp.float32)
    centred = samples - jnp.mean(samples, axis=0, keepdims=True) if centered else samples
    gram = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST)
    eigenvalues, eigenvectors = jnp.linalg.eigh(gram)
    # eigh sorts ascending; the basis wants the largest directions first.
    eigenvalues = jnp.maximum(eigenvalues[::-1], 0.0)
    directions = eigenvectors[:, ::-1][:, :num_basis]
    # A deterministic sign: the largest-magnitude entry of each direction is positive.
    pivot = jnp.take_along_axis(directions, jnp.argmax(jnp.abs(directions), axis=0)[None, :], axis=0)
    directions = directions * jnp.where(pivot < 0, -1.0, 1.0)
    coefficients = jnp.matmul(samples, directions, precision=jax.lax.Precision.HIGHEST)
    rebuilt = jnp.matmul(coefficients, directions.T, precision=jax.lax.Precision.HIGHEST)
    error = jnp.sqrt(jnp.sum(jnp.square(samples - rebuilt))) / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(samples))), 1e-30)
    total = jnp.sum(eigenvalues)
    explained = jnp.where(total > 0, jnp.sum(eigenvalues[:num_basis]) / jnp.where(total > 0, total, 1.0), 1.0)
    basis = jnp.reshape(directions.T, (num_basis, kh, kw))
    return Decomposition(basis, jnp.reshape(coefficients, (cin, cout, num_basis)), explained, error)


def _check_num_basis(num_basis: int, kernel_shape) -> None:
    check_positive("num_basis", num_basis)
    if len(kernel_shape) != 4:
        raise UsageError(f"kernel: expected shape (kh, kw, Cin, Cout), got {tuple(kernel_shape)}")
    if num_basis > kernel_shape[0] * kernel_shape[1]:
        raise UsageError(
            f"num_basis: expected at most kh*kw = {kernel_shape[0] * kernel_shape[1]} for a kernel of shape "
            f"{tuple(kernel_shape)}, got {num_basis}"
        )


@partial(jax.jit, static_argnames=("num_basis", "centered"))
def decompose_kernel(kernel: jax.Array, num_basis: int, *, centered: bool = False) -> Decomposition:
    """Decompose one ``(kh, kw, Cin, Cout)`` kernel into ``num_basis`` shared basis kernels.

    Args:
      kernel: conv kernel, flax layout HWIO.
      num_basis: ``d``, 1 .. ``kh * kw``.
      centered: PCA directions of the mean-removed kernels (True) or SVD directions of the raw
        kernels (False); see the module notes.

    Returns:
      A :class:`Decomposition`.

    Example:
        >>> k = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
        >>> dec = decompose_kernel(k, 9)
        >>> bool(jnp.allclose(reconstruct_kernel(dec.basis, dec.coefficients), k, atol=1e-5))
        True
    """
    _check_num_basis(num_basis, kernel.shape)
    return _decompose_one(kernel, num_basis, centered)


@partial(jax.jit, static_argnames=("num_basis", "centered"))
def decompose_kernels(kernels: Mapping[str, jax.Array], num_basis: int, *, centered: bool = False) -> dict[str, Decomposition]:
    """Decompose many kernels in one jitted call, ``vmap``-ed over the layers of each shape.

    Args:
      kernels: layer name -> ``(kh, kw, Cin, Cout)`` kernel.
      num_basis: ``d`` for every layer.
      centered: see :func:`decompose_kernel`.

    Returns:
      layer name -> :class:`Decomposition`.

    Example:
        >>> ks = {"a": jnp.ones((3, 3, 2, 2)), "b": jnp.ones((3, 3, 2, 2)), "c": jnp.ones((3, 3, 4, 2))}
        >>> sorted(decompose_kernels(ks, 2).keys())
        ['a', 'b', 'c']
    """
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, kernel in kernels.items():
        _check_num_basis(num_basis, kernel.shape)
        groups.setdefault(tuple(kernel.shape), []).append(name)
    out: dict[str, Decomposition] = {}
    for names in groups.values():
        stacked = jnp.stack([jnp.asarray(kernels[n], jnp.float32) for n in names])
        result = jax.vmap(lambda k: _decompose_one(k, num_basis, centered))(stacked)
        for index, name in enumerate(names):
            out[name] = jax.tree.map(lambda leaf: leaf[index], result)
    return out
