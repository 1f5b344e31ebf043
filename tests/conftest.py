"""Test setup: 8 fake CPU devices and quick compilation, set before JAX initialises, so tests run anywhere fast."""
import os

# Tests compile far more than they run (tiny networks, a few steps each). XLA's CPU backend at optimisation level 0
# compiles a test network's initialiser about 5x and its step about 1.6x faster and runs these steps as fast (convs
# and matmuls are library calls either way); rounding moves within the step tests' tolerances (a smoke config's
# step-2 loss by up to 5e-5 relative). helpers.FAST_COMPILE_FLAGS is the same setting for subprocesses.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8", FAST_COMPILE_FLAGS]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
