"""xmodal_jax: cross-modal (image <-> text) learning in JAX/Flax, one trainer for several published systems."""
__version__ = "0.1.0"
