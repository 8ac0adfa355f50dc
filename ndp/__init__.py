"""ndp: near-data (computational storage) training of recommendation models in JAX."""
