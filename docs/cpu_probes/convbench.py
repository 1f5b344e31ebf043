"""Times each conv of the CIFAR ResNet-18 (width 16): forward, input gradient, weight gradient (ms, median).

Usage: XLA_FLAGS="..." [MALLOPT=1] python docs/cpu_probes/convbench.py [BATCH]   (docs/benchmarks.md)
"""
import ctypes, os
if os.environ.get("MALLOPT"):
    libc = ctypes.CDLL("libc.so.6"); libc.mallopt(-4, 0); libc.mallopt(-1, 2**31 - 1)
import sys, time, json
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_use_xnnpack=true")
import jax, jax.numpy as jnp, numpy as np
from jax import lax
B = int(sys.argv[1]) if len(sys.argv) > 1 else 256
shapes = [  # H, Cin, Cout, k, stride
 (32, 3, 16, 3, 1), (32, 16, 16, 3, 1), (32, 16, 32, 3, 2), (32, 16, 32, 1, 2),
 (16, 32, 32, 3, 1), (16, 32, 64, 3, 2), (8, 64, 64, 3, 1), (8, 64, 128, 3, 2), (4, 128, 128, 3, 1)]
dn = ("NHWC", "HWIO", "NHWC")
def conv(x, w, s, k):
    p = k // 2
    return lax.conv_general_dilated(x, w, (s, s), [(p, p), (p, p)], dimension_numbers=dn)
def timeit(f, *a, n=5):
    r = f(*a); jax.block_until_ready(r)
    ts = []
    for _ in range(n):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
    return 1000 * np.median(ts)
rng = np.random.default_rng(0)
for H, ci, co, k, s in shapes:
    x = jnp.asarray(rng.normal(size=(B, H, H, ci)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, ci, co)), jnp.float32)
    y, vjp = jax.vjp(lambda x, w: conv(x, w, s, k), x, w)
    g = jnp.ones_like(y)
    fwd = jax.jit(lambda x, w: conv(x, w, s, k))
    bx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w, s, k), x)[1](g)[0])
    bw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w, s, k), w)[1](g)[0])
    print(json.dumps(dict(shape=[H, ci, co, k, s], fwd=round(timeit(fwd, x, w), 1), dx=round(timeit(bx, x, w, g), 1), dw=round(timeit(bw, x, w, g), 1))), flush=True)
