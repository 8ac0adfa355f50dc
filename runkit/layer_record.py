"""The per-layer record: the one description of a conv/linear layer that a compressed model exports
(:func:`jaxsparse.penni.count.describe_layers`, the producer) and the hardware model reads
(:func:`hwmodel.workload.workload_from_layers`, the consumer; :func:`hwmodel.workload.model_layers`
and :mod:`hwmodel.simulator` produce it too). It lives here, in the neutral base, so that neither
side imports the other. A record is a plain JSON-able ``dict`` typed by :class:`LayerRecord`.

Conventions, with ``P = h_out * w_out`` output pixels, ``P_in = h_in * w_in``, ``k = kernel_size``
and ``d = basis`` (a linear layer is a 1x1 conv on a 1x1 map):

* **Densities.** ``coef_density`` is the fraction of non-zero values among *all* the stored
  coefficients ``c_in * d * c_out`` of a decomposed layer (``d > 0``), or among all the weights
  ``c_in * k^2 * c_out`` of a plain layer (``d = 0``), dead output channels included.
  ``coef_density_per_out_channel[o]`` is the same fraction within output channel ``o``.
  ``live_out_fraction`` is the fraction of output channels holding at least one non-zero value
  (:func:`live_out_fraction`): the sparse engines skip the others, so they work on
  ``c_out * live_out_fraction`` channels at density ``coef_density / live_out_fraction``; hence
  ``coef_density <= live_out_fraction``. ``act_density`` is the fraction of non-zero input
  activations (1.0 when not measured); ``act_window_density`` (optional) the measured fraction of
  ``k x k`` input windows with a non-zero value.
* **Bit widths** (1..32, or 0 for a width the layer does not use). A decomposed layer stores
  ``coef_bits`` per coefficient and ``basis_bits`` per basis value and has ``weight_bits = 0``;
  a plain layer stores ``weight_bits`` per weight and has ``coef_bits = basis_bits = 0``.
* **Parameters.** ``params`` counts stored non-zero values: ``d * k^2 + nnz(coefficients)`` for a
  decomposed layer, ``nnz(weights) + bias`` for a plain one (BatchNorm is not counted).
* **MACs.** ``macs_dense = P * c_in * c_out * k^2`` (the layer's current shape).
  ``macs_decomposed`` is the dense count of the decomposed layer in *coefficient-first* order,
  the dataflow the hardware model costs by default (sparse coefficients meet the input
  activations first, then each output channel's ``d`` maps go through the basis):
  ``P_in * c_in * d * c_out + P * c_out * d * k^2``.
  ``macs_sparse`` is PENNI's count of the work that remains when only non-zero coefficients cost
  a multiply-accumulate, in *basis-first* order (the order of the sparse CPU inference, and of
  the paper): ``P * (live_pairs * k^2 + nnz(coefficients))``, ``live_pairs`` being the
  (input channel, basis kernel) maps some non-zero coefficient reads. Activation sparsity is in
  neither count (it is ``act_density``). A plain layer has ``macs_decomposed = macs_dense`` and
  ``macs_sparse = macs_dense * coef_density``.

Example:
    >>> live_out_fraction([0.0, 0.5, 0.25, 0.0])
    0.5
    >>> "live_out_fraction" in REQUIRED_KEYS, "macs_sparse" in REQUIRED_KEYS
    (True, False)
"""

from collections.abc import Sequence
from typing import Literal, NotRequired, TypedDict

import numpy as np


class LayerRecord(TypedDict):
    """One conv/linear layer (see the module notes for units and conventions).

    Keys the hardware model needs are required; the per-channel densities, counts and the
    optional geometry/measurement keys are ``NotRequired`` (producers of this package emit the
    per-channel densities and the counts; the consumer validates them when present).
    """

    name: str  # dotted module path, e.g. "layer1.0.conv1"
    kind: Literal["conv", "linear"]
    h_in: int  # input rows
    w_in: int  # input columns
    h_out: int  # output rows
    w_out: int  # output columns
    c_in: int  # input channels
    c_out: int  # output channels
    kernel_size: int  # k (square kernels; 1 for linear)
    stride: int
    basis: int  # d, basis kernels; 0: not decomposed
    coef_density: float  # non-zero fraction of all coefficients (d > 0) or weights (d = 0)
    live_out_fraction: float  # fraction of output channels with any non-zero value
    act_density: float  # non-zero fraction of the input activations
    coef_bits: int  # per coefficient; 0 for plain layers
    basis_bits: int  # per basis value; 0 for plain layers
    weight_bits: int  # per weight; 0 for decomposed layers
    coef_density_per_out_channel: NotRequired[list[float]]  # length c_out
    params: NotRequired[int]  # stored non-zero values
    macs_dense: NotRequired[int]
    macs_decomposed: NotRequired[int]  # dense, coefficient-first
    macs_sparse: NotRequired[int]  # non-zero coefficients only, basis-first
    padding: NotRequired[int]  # zero padding per side; (k - 1) // 2 when absent
    act_window_density: NotRequired[float]  # measured non-zero fraction of k x k input windows


#: Every key of :class:`LayerRecord`, in order.
RECORD_KEYS: tuple[str, ...] = tuple(LayerRecord.__annotations__)
#: The keys every record must have.
REQUIRED_KEYS: tuple[str, ...] = tuple(k for k in RECORD_KEYS if k in LayerRecord.__required_keys__)
#: The keys :func:`jaxsparse.penni.count.describe_layers` and :func:`hwmodel.workload.model_layers`
#: emit: the required ones, the per-channel densities and the counts.
DESCRIBED_KEYS: tuple[str, ...] = RECORD_KEYS[: RECORD_KEYS.index("macs_sparse") + 1]


def live_out_fraction(per_out_channel: Sequence[float] | np.ndarray) -> float:
    """Fraction of output channels whose density (or non-zero count) is above zero.

    Args:
      per_out_channel: one density (or count) per output channel.

    Returns:
      ``mean(per_out_channel > 0)`` as a float (0.0 for no channels).

    Example:
        >>> live_out_fraction([1.0, 0.0])
        0.5
    """
    values = np.asarray(per_out_channel, np.float64)
    return float(np.mean(values > 0)) if values.size else 0.0
