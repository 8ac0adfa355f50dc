"""Exact and smoothly relaxed versions of the few non-smooth operations in the cost model.

Every cost function takes a static ``relaxed`` flag. With ``relaxed=False`` the model
evaluates exact integer arithmetic (``ceil``, ``max``), which is what is compared with
SCALE-Sim and the cycle-level simulator. With ``relaxed=True`` each operation is replaced by
a smooth surrogate so that ``jax.grad`` sees useful, finite slopes everywhere (including
densities of exactly 0 and 1):

* ``ceil(x)`` -> ``x + 0.5 * tanh(2 x)`` for ``x >= 0``: equal to 0 at 0, slope 2 at 0 (a
  tile count jumps from 0 to 1 immediately), and ``x + 0.5`` for large ``x`` -- the mean of
  ``ceil`` when the fractional part of ``x`` is uniformly distributed. Within 0.5 of the
  exact value for ``x >= 1``.
* ``max(a, b)`` -> ``softplus``-based smooth maximum with a temperature proportional to
  the operands' magnitude (``tau = 0.05 * (|a| + |b|) / 2``), so it is scale-free:
  ``smax(a, b) = b + tau * softplus((a - b) / tau)``; at most ``tau * log 2`` above the max.
* ``min(a, b) = -smax(-a, -b)``.

Gradients of the exact forms are finite too (``jnp.ceil`` has slope 0, ``jnp.maximum`` a
sub-gradient), just uninformative; no ``sqrt``/``log`` of a quantity that can be 0 is
taken anywhere in the model.

Example:
    >>> import jax.numpy as jnp
    >>> float(ceil(jnp.float32(2.3), relaxed=False))
    3.0
    >>> round(float(ceil(jnp.float32(10.0), relaxed=True)), 3)
    10.5
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SMOOTH_MAX_TEMPERATURE = 0.05


def ceil(x: jax.Array, *, relaxed: bool) -> jax.Array:
    """``ceil(x)`` for ``x >= 0``, or its smooth surrogate ``x + tanh(2x) / 2``."""
    if relaxed:
        return x + 0.5 * jnp.tanh(2.0 * x)
    return jnp.ceil(x)


def maximum(a: jax.Array, b: jax.Array, *, relaxed: bool) -> jax.Array:
    """``max(a, b)`` or a scale-free softplus smooth maximum (see module docstring)."""
    if not relaxed:
        return jnp.maximum(a, b)
    tau = SMOOTH_MAX_TEMPERATURE * 0.5 * (jnp.abs(a) + jnp.abs(b)) + 1e-6
    return b + tau * jax.nn.softplus((a - b) / tau)


def minimum(a: jax.Array, b: jax.Array, *, relaxed: bool) -> jax.Array:
    """``min(a, b)`` or its smooth surrogate ``-smax(-a, -b)``."""
    return -maximum(-a, -b, relaxed=relaxed)
