"""Filling big fresh buffers (im2col windows, padding) with and without glibc mallopt (MALLOPT=1).

Usage: XLA_FLAGS="..." [MALLOPT=1] python docs/cpu_probes/allocator.py   (docs/benchmarks.md)
"""
import ctypes, os
if os.environ.get("MALLOPT"):
    libc = ctypes.CDLL("libc.so.6"); print("mallopt", libc.mallopt(-4, 0), libc.mallopt(-1, 2**31 - 1))
import time, jax, jax.numpy as jnp, numpy as np
def timeit(f, *a, n=7):
    jax.block_until_ready(f(*a)); ts = []
    for _ in range(n):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
    return 1000 * np.median(ts)
B, H, ci, co = 256, 32, 16, 16
x = jnp.asarray(np.random.default_rng(0).normal(size=(B, H, H, ci)), jnp.float32)
g = jnp.asarray(np.random.default_rng(1).normal(size=(B, H, H, co)), jnp.float32)
def wins(x):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i:i + H, j:j + H, :] for i in range(3) for j in range(3)]
P_concat = jax.jit(lambda x: jnp.concatenate(wins(x), -1).reshape(-1, 9 * ci))
P_stack0 = jax.jit(lambda x: jnp.stack(wins(x), 0))
def P_w3(x):  # width shifts only: (N, H+2, W, 3ci)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([xp[:, :, j:j + H, :] for j in range(3)], -1)
P_w3 = jax.jit(P_w3)
print("concat patches", timeit(P_concat, x))
print("stack0 patches", timeit(P_stack0, x))
print("w3 patches", timeit(P_w3, x))
P = P_concat(x); G = g.reshape(-1, co)
print("dot P^T G", timeit(jax.jit(lambda P, G: P.T @ G), P, G))
print("dot G^T P", timeit(jax.jit(lambda P, G: G.T @ P), P, G))
print("pad only", timeit(jax.jit(lambda x: jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))), x))
