"""xmodal_jax: cross-modal (image <-> text) learning in JAX/Flax, one trainer for several published systems.

Importing the package does nothing else: the host-memory policy of CPU hosts (xmodal_jax/host_memory.py) is applied
at start-up of the `xmodal` command (main.run) and by `train.trainer.train_and_evaluate`.
"""

__version__ = "0.1.0"
