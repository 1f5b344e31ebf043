"""Test setup: 8 fake CPU devices and quick compilation, set before JAX initialises, so tests run anywhere fast."""
import os

from fast_compile import FAST_COMPILE_FLAGS

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8", FAST_COMPILE_FLAGS]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
