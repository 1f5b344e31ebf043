"""The XLA flag that makes the tests compile quickly: one home for conftest.py, helpers.py and the subprocesses.

Tests compile far more than they run (tiny networks, a few steps each). XLA's CPU backend at optimisation level 0
compiles a test network's initialiser about 5x and its step about 1.6x faster and runs these steps as fast (convs
and matmuls are library calls either way); rounding moves within the step tests' tolerances (a smoke config's
step-2 loss by up to 5e-5 relative). No imports: conftest.py reads it before JAX is imported.
"""
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
