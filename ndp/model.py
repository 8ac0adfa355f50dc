"""The dense part of DLRM-style models in flax NNX: bottom MLP, feature interaction, top MLP.

Embedding tables are not part of these modules: they live in the sharded slab of
:mod:`ndp.embedding` and reach the model as pooled embeddings ``(B, T, D)``.

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ndp.configs import DLRMConfig
    >>> cfg = DLRMConfig(num_dense=3, table_sizes=(10, 20), embedding_dim=4, bottom_mlp=(8, 4), top_mlp=(8, 1))
    >>> head = DLRMHead(cfg, rngs=nnx.Rngs(0))
    >>> head(jnp.ones((5, 3)), jnp.ones((5, 2, 4))).shape
    (5,)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ndp.configs import DLRMConfig


class MLP(nnx.Module):
    """Linear layers with ReLU between them (and after the last one when ``relu_last``)."""

    def __init__(self, in_features: int, widths: Sequence[int], *, rngs: nnx.Rngs, relu_last: bool = True):
        sizes = [in_features, *widths]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.relu_last = relu_last

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1 or self.relu_last:
                x = jax.nn.relu(x)
        return x


def interact(kind: str, bottom: jax.Array | None, pooled: jax.Array) -> jax.Array:
    """DLRM feature interaction.

    ``features = [bottom, pooled_1, ..., pooled_T]`` (``bottom`` omitted when ``None``);
    ``"dot"``: ``[bottom, <f_i, f_j> for i < j]``; ``"cat"``: all features concatenated;
    ``"dot_cat"``: the concatenation followed by the dot products; ``"dcn"``: the concatenation,
    which :class:`DLRMHead` passes through its :class:`LowRankCrossNet`.
    """
    batch = pooled.shape[0]
    features = pooled if bottom is None else jnp.concatenate([bottom[:, None, :], pooled], axis=1)
    count = features.shape[1]
    flat = features.reshape(batch, -1)
    if kind in ("cat", "dcn"):
        return flat
    rows, cols = np.triu_indices(count, k=1)
    dots = jnp.einsum("bfd,bgd->bfg", features, features)[:, rows, cols]
    if kind == "dot":
        return dots if bottom is None else jnp.concatenate([bottom, dots], axis=1)
    return jnp.concatenate([flat, dots], axis=1)


class LowRankCrossNet(nnx.Module):
    """DCNv2's cross network with low-rank weights (Wang et al., 2021).

    .. math:: x_{l+1} = x_0 \\odot (U_l (V_l x_l) + b_l) + x_l, \\quad V_l \\in \\mathbb{R}^{r \\times n},
              U_l \\in \\mathbb{R}^{n \\times r}

    Args:
      width: ``n``, the width of ``x_0`` (kept by every layer).
      layers: number of cross layers (0: the identity).
      rank: ``r``.

    Example:
        >>> net = LowRankCrossNet(6, 2, 3, rngs=nnx.Rngs(0))
        >>> net(jnp.ones((4, 6))).shape
        (4, 6)
    """

    def __init__(self, width: int, layers: int, rank: int, *, rngs: nnx.Rngs):
        self.down = nnx.List([nnx.Linear(width, rank, use_bias=False, rngs=rngs) for _ in range(layers)])
        self.up = nnx.List([nnx.Linear(rank, width, rngs=rngs) for _ in range(layers)])

    def __call__(self, x0: jax.Array) -> jax.Array:
        x = x0
        for down, up in zip(self.down, self.up):
            x = x0 * up(down(x)) + x
        return x


class DLRMHead(nnx.Module):
    """Bottom MLP on dense features, interaction with pooled embeddings, top MLP to one output.

    ``__call__(dense (B, F), pooled (B, T, D)) -> (B,)``: a click logit, or a rating
    when ``output_offset`` (e.g. the mean training rating) is given.
    """

    def __init__(self, config: DLRMConfig, *, rngs: nnx.Rngs, output_offset: float = 0.0):
        self.config = config
        self.bottom = MLP(config.num_dense, config.bottom_mlp, rngs=rngs) if config.bottom_mlp else None
        self.cross = (LowRankCrossNet(config.interaction_width, config.cross_layers, config.cross_rank, rngs=rngs)
                      if config.interaction == "dcn" else None)  # fmt: skip
        self.top = MLP(config.interaction_width, config.top_mlp, rngs=rngs, relu_last=False)
        self.offset = nnx.Param(jnp.asarray(output_offset, jnp.float32))

    def __call__(self, dense: jax.Array, pooled: jax.Array) -> jax.Array:
        bottom = self.bottom(dense) if self.bottom is not None else None
        features = interact("cat" if self.cross is not None else self.config.interaction, bottom, pooled)
        out = self.top(self.cross(features) if self.cross is not None else features)
        return out[:, 0] + self.offset[...]


class MFHead(nnx.Module):
    """Biased matrix factorisation over two pooled embeddings (user, item) of width ``D``.

    The last column of each embedding is its bias:
    :math:`\\hat r = \\mu + \\langle p_u, q_i \\rangle + b_u + b_i` with
    ``p_u = e_u[:-1]``, ``b_u = e_u[-1]`` (and likewise for the item).
    """

    def __init__(self, *, global_mean: float = 0.0):
        self.mu = nnx.Param(jnp.asarray(global_mean, jnp.float32))

    def __call__(self, dense: jax.Array, pooled: jax.Array) -> jax.Array:
        del dense
        user, item = pooled[:, 0], pooled[:, 1]
        return self.mu[...] + jnp.sum(user[:, :-1] * item[:, :-1], axis=1) + user[:, -1] + item[:, -1]
