"""Differentiable hardware cost of per-layer coefficient densities: the ``cost_fn`` of co-design.

Hardware-aware compression (:mod:`jaxsparse.penni.hwaware`) knows nothing of hardware: it asks
for a function ``cost_fn(coef_density: float32[L][, live_out_fraction: float32[L]]) -> scalar``
over the layers of the model's description (:func:`jaxsparse.penni.count.describe_layers`,
in that order). This module builds such a function from the description and a design
point: shapes, activation densities and bit widths are taken from the description and held
fixed; the coefficient densities (and, when given, the fractions of live output channels)
are the traced arguments.

Two conventions of the description are adapted here:

* Bit widths are those the model will be *deployed* with (:data:`DEPLOY_BITS`: 4-bit
  coefficients, 8-bit basis, 8-bit plain weights, the PENNI/ESCALATE setting), because a
  float model under training reports 32 bits (and ``weight_bits = 0`` for decomposed
  layers, which :func:`~hwmodel.workload.workload_from_layers` rejects).
* Without ``live_out_fraction`` all output channels count as live: a channel dies only when
  every one of its coefficients is pruned, which a mean density cannot tell. With it (the
  expected live fractions of a channel-gated relaxation) the cost charges what the design
  charges: on the ESCALATE-style design the butterfly scan and the dense basis engine work
  on every *live* output channel whatever its density, so below a density of about 0.3 the
  latency follows the live channels, not the non-zero coefficients. Final models are
  costed exactly from their own description (dead channels included).

Example:
    >>> import jax.numpy as jnp
    >>> from hwmodel.hardware import load_hardware
    >>> from hwmodel.workload import model_layers
    >>> hw, options = load_hardware(None)
    >>> layers = model_layers("resnet20")
    >>> cost_fn = make_cost_fn(layers, hw, options, metric="latency")
    >>> bool(cost_fn(jnp.full((20,), 0.2, jnp.float32)) < cost_fn(jnp.full((20,), 0.8, jnp.float32)))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hwmodel.codesign.search import network_metric
from hwmodel.cost import evaluate
from hwmodel.hardware import Hardware, Options
from hwmodel.workload import Workload, workload_from_layers
from runkit import check_choice

#: Bit widths of the deployed model (quantized coefficients, basis and plain weights).
DEPLOY_BITS = {"coef_bits": 4, "basis_bits": 8, "weight_bits": 8}


def deployment_layers(layers: list[dict[str, Any]], bits: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Copies of the per-layer dicts with the deployed bit widths (``bits`` overrides :data:`DEPLOY_BITS`)."""
    chosen = dict(DEPLOY_BITS, **(bits or {}))
    out = []
    for layer in layers:
        row = dict(layer)
        decomposed = int(layer.get("basis", 0)) > 0
        # workload_from_layers wants a valid coef_bits on every layer; plain layers use weight_bits.
        row["coef_bits"] = chosen["coef_bits"] if decomposed else chosen["weight_bits"]
        row["basis_bits"] = chosen["basis_bits"] if decomposed else 0
        row["weight_bits"] = chosen["weight_bits"]
        out.append(row)
    return out


def density_workload(base: Workload, coef_density: jax.Array, live_out_fraction: jax.Array | None = None) -> Workload:
    """``base`` with traced coefficient densities (``float32[L]``) and live output-channel fractions (default: all live).

    ``coef_density`` is the density over *all* coefficients of the layer (as in the
    description); the cost model divides it by the live fraction for the live channels.
    """
    density = jnp.asarray(coef_density, jnp.float32)
    if density.shape != base.coef_density.shape:
        raise ValueError(f"coef_density: expected shape {tuple(base.coef_density.shape)} (one per layer), got {tuple(density.shape)}")
    if live_out_fraction is None:
        live = jnp.ones_like(density)
    else:
        live = jnp.asarray(live_out_fraction, jnp.float32)
        if live.shape != density.shape:
            raise ValueError(f"live_out_fraction: expected shape {tuple(density.shape)} (one per layer), got {tuple(live.shape)}")
        # a density can never exceed the live fraction (dead channels hold no coefficients)
        live = jnp.maximum(live, density)
    return base._replace(coef_density=density, live_out_fraction=live)


def make_cost_fn(
    layers: list[dict[str, Any]],
    hw: Hardware,
    options: Options = Options(),
    *,
    metric: str = "latency",
    relaxed: bool = True,
    bits: dict[str, int] | None = None,
) -> Callable[[jax.Array], jax.Array]:
    """``(coef_density[L][, live_out_fraction[L]]) -> latency (s) | energy (J) | EDP`` of the network on design ``hw``.

    Args:
      layers: the model's per-layer description (dicts with the keys of
        :data:`runkit.layer_record.REQUIRED_KEYS`).
      hw, options: the design point.
      metric: ``"latency"``, ``"energy"`` or ``"edp"``.
      relaxed: smooth surrogates for ``ceil``/``max`` (informative gradients).
      bits: deployed bit widths overriding :data:`DEPLOY_BITS`.
    """
    check_choice("metric", metric, ("latency", "energy", "edp"))
    base = workload_from_layers(deployment_layers(layers, bits))

    def cost_fn(coef_density: jax.Array, live_out_fraction: jax.Array | None = None) -> jax.Array:
        return network_metric(density_workload(base, coef_density, live_out_fraction), hw, options, metric, relaxed=relaxed)

    return cost_fn


def layer_latency_share(layers: list[dict[str, Any]], hw: Hardware, options: Options = Options(), *, bits=None) -> jax.Array:
    """Fraction of the network's exact cycles spent in each layer (``float32[L]``, sums to 1)."""
    cycles = evaluate("escalate", workload_from_layers(deployment_layers(layers, bits)), hw, options).cycles
    return cycles / jnp.sum(cycles)
