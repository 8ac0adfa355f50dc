"""jaxsparse: PENNI-style CNN compression (shared basis kernels + sparse coefficients) in JAX."""

__version__ = "0.1.0"
