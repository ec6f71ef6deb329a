"""wam_jax: world-action models in JAX/Flax."""

__version__ = "0.1.0"
