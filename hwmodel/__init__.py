"""hwmodel: an ESCALATE-style sparse CNN accelerator as pure, differentiable JAX."""
