"""Real sparsity patterns from the pretrained CIFAR ResNets, in plain numpy.

Used to drive the cycle-level simulator with realistic bitmaps independently of any
training code: a numpy forward pass of the original ResNet (option-A shortcuts, PyTorch
OIHW layout) gives every conv layer's actual post-ReLU input activations for a real test
image, and each 3x3 kernel is decomposed PENNI-style -- SVD of the ``(Cout*Cin, k*k)`` kernel
matrix, ``d`` leading right-singular vectors as the shared basis, coefficients by projection
-- then pruned with the ``|c| < s * std(c)`` rule (per layer, ``s = 1``). No retraining:
the patterns are those of a one-shot pruned model.

Example:
    >>> import numpy as np
    >>> coef, basis = decompose_and_prune(np.random.default_rng(0).normal(size=(8, 4, 3, 3)), basis=5)
    >>> coef.shape, basis.shape
    ((8, 4, 5), (5, 3, 3))
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def decompose_and_prune(kernel: np.ndarray, *, basis: int = 5, threshold: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """SVD basis (``[d, k, k]``) and pruned coefficients (``[Cout, Cin, d]``) of an OIHW kernel."""
    c_out, c_in, k, _ = kernel.shape
    samples = kernel.reshape(c_out * c_in, k * k).astype(np.float64)
    _, _, vt = np.linalg.svd(samples, full_matrices=False)
    d = min(basis, vt.shape[0])
    shared = vt[:d]
    coef = samples @ shared.T
    coef = np.where(np.abs(coef) < threshold * coef.std(), 0.0, coef)
    return coef.reshape(c_out, c_in, d), shared.reshape(d, k, k)


def load_image(path: str | Path) -> np.ndarray:
    """A CIFAR JPEG as a normalised ``float32[3, 32, 32]`` array."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


def _conv(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    c_out, c_in, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    h_out = (x.shape[1] + 2 * padding - k) // stride + 1
    w_out = (x.shape[2] + 2 * padding - k) // stride + 1
    cols = np.empty((c_in, k, k, h_out, w_out), x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = xp[:, i: i + stride * (h_out - 1) + 1: stride, j: j + stride * (w_out - 1) + 1: stride]
    return np.tensordot(w, cols, axes=([1, 2, 3], [0, 1, 2]))


def _bn(x: np.ndarray, p: dict, name: str) -> np.ndarray:
    scale = p[f"{name}.weight"] / np.sqrt(p[f"{name}.running_var"] + 1e-5)
    return x * scale[:, None, None] + (p[f"{name}.bias"] - p[f"{name}.running_mean"] * scale)[:, None, None]


class ConvInput(NamedTuple):
    name: str
    kernel: np.ndarray       # OIHW
    activations: np.ndarray  # the conv's input, [Cin, H, W]
    stride: int


def forward(params: dict, image: np.ndarray) -> tuple[np.ndarray, list[ConvInput]]:
    """Logits and every conv layer's (kernel, input activations, stride) for one image."""
    relu = lambda x: np.maximum(x, 0.0)
    convs = []

    def conv(name, x, stride):
        w = params[f"{name}.weight"]
        convs.append(ConvInput(name, w, x, stride))
        return _conv(x, w, stride, (w.shape[-1] - 1) // 2)

    x = relu(_bn(conv("conv1", image, 1), params, "bn1"))
    n = 1 + max(int(k.split(".")[1]) for k in params if k.startswith("layer1."))
    for stage in (1, 2, 3):
        for block in range(n):
            prefix = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = relu(_bn(conv(f"{prefix}.conv1", x, stride), params, f"{prefix}.bn1"))
            out = _bn(conv(f"{prefix}.conv2", out, 1), params, f"{prefix}.bn2")
            if out.shape != x.shape:  # option A: subsample and zero-pad channels
                short = x[:, ::2, ::2]
                pad = (out.shape[0] - short.shape[0]) // 2
                short = np.pad(short, ((pad, pad), (0, 0), (0, 0)))
            else:
                short = x
            x = relu(out + short)
    logits = params["linear.weight"] @ x.mean(axis=(1, 2)) + params["linear.bias"]
    return logits, convs


def load_params(path: str | Path) -> dict:
    with np.load(path) as data:
        return {k: data[k].astype(np.float32) for k in data.files}
