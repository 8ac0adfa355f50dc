"""Test helpers shared by the jaxsparse tests."""

import jax.numpy as jnp
from flax import nnx

from jaxsparse.penni.layers import iter_layers


def randomise_batchnorm(model, rng, var_range=(0.5, 2.0)):
    """Set every BatchNorm's statistics and affine terms far from the identity (variance uniform in ``var_range``)."""
    for _, bn in iter_layers(model, nnx.BatchNorm):
        n = bn.num_features
        bn.mean[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
        bn.var[...] = jnp.asarray(rng.uniform(*var_range, size=n), jnp.float32)
        bn.scale[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
        bn.bias[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
