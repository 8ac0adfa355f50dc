"""Exact and smoothly relaxed versions of the few non-smooth operations in the cost model.

Every cost function takes a static ``relaxed`` flag. With ``relaxed=False`` the model
evaluates exact integer arithmetic (``ceil``, ``max``), which is what is compared with
SCALE-Sim and the cycle-level simulator. With ``relaxed=True`` each operation is replaced by
a smooth surrogate so that ``jax.grad`` sees useful, finite slopes everywhere (including
densities of exactly 0 and 1):

* ``ceil(x)`` -> straight-through: the value stays exactly ``ceil(x)`` and the slope is
  that of ``x`` (``x + stop_gradient(ceil(x) - x)``). Tile and fold counts of real layers are
  often exact multiples, where any smooth curve through the staircase is biased by up to a
  whole tile (up to 2x for a product of two counts); the straight-through form keeps the
  forward values exact and still tells the optimiser that a larger ``x`` costs more.
* ``max(a, b)`` -> a smooth maximum with a width proportional to the operands' magnitude
  (``tau = 0.05 * (|a| + |b|) / 2 + 1e-6``), so it is scale-free:
  ``smax(a, b) = (a + b + sqrt((a - b)^2 + tau^2)) / 2`` -- the hyperbolic form of the
  ``softplus`` smooth maximum, at most ``tau / 2`` above the max, with one ``sqrt``
  (never of 0) instead of an ``exp`` and a ``log``, which keeps the gradient cheap.
* ``min(a, b) = -smax(-a, -b)``.

Gradients of the exact forms are finite too (``jnp.ceil`` has slope 0, ``jnp.maximum`` a
sub-gradient), just uninformative; no ``sqrt``/``log`` of a quantity that can be 0 is
taken anywhere in the model.

Example:
    >>> import jax.numpy as jnp
    >>> float(ceil(jnp.float32(2.3), relaxed=False))
    3.0
    >>> float(ceil(jnp.float32(2.3), relaxed=True)), float(jax.grad(lambda x: ceil(x, relaxed=True))(2.3))
    (3.0, 1.0)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SMOOTH_MAX_TEMPERATURE = 0.05


def ceil(x: jax.Array, *, relaxed: bool) -> jax.Array:
    """``ceil(x)``, or the same value with the slope of ``x`` (straight-through)."""
    if relaxed:
        return x + jax.lax.stop_gradient(jnp.ceil(x) - x)
    return jnp.ceil(x)


def maximum(a: jax.Array, b: jax.Array, *, relaxed: bool) -> jax.Array:
    """``max(a, b)`` or a scale-free smooth maximum (see module docstring)."""
    if not relaxed:
        return jnp.maximum(a, b)
    tau = SMOOTH_MAX_TEMPERATURE * 0.5 * (jnp.abs(a) + jnp.abs(b)) + 1e-6
    return 0.5 * (a + b + jnp.sqrt(jnp.square(a - b) + jnp.square(tau)))


def minimum(a: jax.Array, b: jax.Array, *, relaxed: bool) -> jax.Array:
    """``min(a, b)`` or its smooth surrogate ``-smax(-a, -b)``."""
    return -maximum(-a, -b, relaxed=relaxed)
