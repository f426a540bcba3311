"""xmodal_jax: cross-modal (image <-> text) learning in JAX/Flax, one trainer for several published systems."""
from xmodal_jax import host_memory as _host_memory

__version__ = "0.1.0"

# On CPU hosts: keep freed heap memory, so XLA's per-step temporary arena is reused instead of being mapped and
# zeroed anew at every step (xmodal_jax/host_memory.py; XMODAL_KEEP_HOST_MEMORY=0 turns it off).
_host_memory.keep_freed_memory()
