"""xmodal_jax: cross-modal (image <-> text) learning in JAX/Flax, one trainer for several published systems."""
from xmodal_jax import host_memory as _host_memory

__version__ = "0.1.0"

# On CPU hosts: make XLA's per-step temporary arena cheap to reuse (huge pages when the process started with
# GLIBC_TUNABLES=glibc.malloc.hugetlb=1, else a kept heap) with a bound on the freed memory kept
# (xmodal_jax/host_memory.py; XMODAL_KEEP_HOST_MEMORY=0 turns it off).
_host_memory.keep_freed_memory()
