"""PENNI compression (Li et al., ICML 2020) as pure JAX transforms over NNX models and pytrees.

Stages, each usable alone:

1. :mod:`~jaxsparse.penni.decompose` — kernels -> shared basis + coefficients (SVD/PCA, vmapped over layers);
2. :mod:`~jaxsparse.penni.layers` — :class:`DecomposedConv` with training, basis-first and coefficient-first forms;
3. :mod:`~jaxsparse.penni.train` — the SGD recipe, L1 on coefficients, basis/coefficient alternation;
4. :mod:`~jaxsparse.penni.prune` — PENNI's rule, magnitude and gradual pruning, :func:`masked` optax wrapper;
5. :mod:`~jaxsparse.penni.shrink` — dead channels and basis kernels found, propagated and sliced away;
6. :mod:`~jaxsparse.penni.quantize` — hybrid symmetric quantization, fake-quant with straight-through gradients;
7. :mod:`~jaxsparse.penni.count` — :func:`describe_layers`, the per-layer description other packages consume.

:func:`~jaxsparse.penni.pipeline.compress` chains them with checkpoints (``python -m jaxsparse compress``).

Inference: :mod:`~jaxsparse.penni.inference` (execution plans, BatchNorm folding, channel padding,
:class:`~jaxsparse.penni.inference.PlanarResNet`), :mod:`~jaxsparse.penni.sparse_cpu`, a CPU kernel
(an XLA custom call) that visits only the non-zero coefficients, and :mod:`~jaxsparse.penni.sparse_pallas`,
one Pallas kernel for GPU and TPU that skips dead (input channel, basis) pairs.
"""

from jaxsparse.penni.count import describe_layers, summarize
from jaxsparse.penni.decompose import Decomposition, decompose_kernel, decompose_kernels, reconstruct_kernel
from jaxsparse.penni.layers import FORMS, DecomposedConv, LiveBasisFirstConv, apply_decomposed, decompose_model, set_form, set_quantization
from jaxsparse.penni.prune import (
    MaskedState,
    apply_masks,
    channel_mask,
    channel_norm_mask,
    channel_norms,
    global_magnitude_masks,
    magnitude_mask,
    masked,
    penni_mask,
    polynomial_sparsity,
)
from jaxsparse.penni.quantize import QuantizedTensor, dequantize, fake_quant, quantize
from jaxsparse.penni.shrink import (
    CompactBasicBlock,
    ShrinkPlan,
    apply_channel_masks,
    channel_graph,
    free_channel_layers,
    plan_shrink,
    shrink,
)
from jaxsparse.penni.train import Objective, TrainConfig, alternating, fit, fit_objective, param_groups, sgd_recipe

__all__ = [
    "FORMS",
    "CompactBasicBlock",
    "DecomposedConv",
    "LiveBasisFirstConv",
    "Decomposition",
    "MaskedState",
    "Objective",
    "QuantizedTensor",
    "ShrinkPlan",
    "TrainConfig",
    "alternating",
    "apply_channel_masks",
    "apply_decomposed",
    "apply_masks",
    "channel_graph",
    "channel_mask",
    "channel_norm_mask",
    "channel_norms",
    "decompose_kernel",
    "decompose_kernels",
    "decompose_model",
    "dequantize",
    "describe_layers",
    "fake_quant",
    "fit",
    "fit_objective",
    "free_channel_layers",
    "global_magnitude_masks",
    "magnitude_mask",
    "masked",
    "param_groups",
    "penni_mask",
    "plan_shrink",
    "polynomial_sparsity",
    "quantize",
    "reconstruct_kernel",
    "set_form",
    "set_quantization",
    "sgd_recipe",
    "shrink",
    "summarize",
]
