"""Test set-up: 8 fake CPU devices, so sharded code is tested without accelerators.

XLA_FLAGS must be set before JAX is imported anywhere, which is why this lives in conftest.py.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep TensorFlow (imported by clu/tfds) quiet and off any accelerator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
