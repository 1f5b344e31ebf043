"""A transpose alone, element-wise work alone, and the two fused, on a [256, 32, 32, 16] activation.

Usage: XLA_FLAGS="..." python docs/cpu_probes/transposes.py   (docs/benchmarks.md)
"""
import ctypes, os
libc = ctypes.CDLL("libc.so.6"); libc.mallopt(-4, 0); libc.mallopt(-1, 2**31 - 1)
import time, jax, jax.numpy as jnp, numpy as np
def timeit(f, *a, n=9):
    jax.block_until_ready(f(*a)); ts = []
    for _ in range(n):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
    return 1000 * np.median(ts)
x = jnp.asarray(np.random.default_rng(0).normal(size=(256, 32, 32, 16)), jnp.float32)
s = jnp.ones(16) * 1.1; b = jnp.ones(16) * 0.1
print("copy x*2          ", timeit(jax.jit(lambda x: x * 2.0), x))
print("T CHWN            ", timeit(jax.jit(lambda x: jnp.transpose(x, (3, 1, 2, 0))), x))
print("T HWNC            ", timeit(jax.jit(lambda x: jnp.transpose(x, (1, 2, 0, 3))), x))
print("bnrelu+T CHWN     ", timeit(jax.jit(lambda x, s, b: jnp.transpose(jax.nn.relu(x * s + b), (3, 1, 2, 0))), x, s, b))
print("bnrelu|barrier|T  ", timeit(jax.jit(lambda x, s, b: jnp.transpose(jax.lax.optimization_barrier(jax.nn.relu(x * s + b)), (3, 1, 2, 0))), x, s, b))
print("T via 2D [N,HWC]->[C,HW,N] reshape", timeit(jax.jit(lambda x: jnp.transpose(x.reshape(256, 1024, 16), (2, 1, 0))), x))
print("T 2-step (N,HW,C)->(HW,C,N)->(C,HW,N)", timeit(jax.jit(lambda x: jnp.transpose(jax.lax.optimization_barrier(jnp.transpose(x.reshape(256, 16384))).reshape(1024, 16, 256), (1, 0, 2))), x))
print("bnrelu alone      ", timeit(jax.jit(lambda x, s, b: jax.nn.relu(x * s + b)), x, s, b))
print("x*s alone         ", timeit(jax.jit(lambda x, s: x * s), x, s))
print("x+1 alone         ", timeit(jax.jit(lambda x: x + 1.0), x))
print("max(x,0) alone    ", timeit(jax.jit(lambda x: jnp.maximum(x, 0.0)), x))
print("x*s (f32 bcast via reshape)", timeit(jax.jit(lambda x, s: (x.reshape(-1, 16) * s[None]).reshape(x.shape)), x, s))
