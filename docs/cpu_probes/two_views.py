"""Backbone forward + backward for two views of 256: two separate passes, or one stacked pass of 512.

The stacked probe shares BatchNorm statistics between the views, so it measures speed only.
Usage: XLA_FLAGS="..." python docs/cpu_probes/two_views.py separate|stacked   (docs/benchmarks.md)
"""
import ctypes, sys, time
ctypes.CDLL("libc.so.6").mallopt(-4, 0); ctypes.CDLL("libc.so.6").mallopt(-1, 2**31 - 1)
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", ".."))
from ssl_jax import models
mode = sys.argv[1]
net = models.make_backbone("resnet18", width=16)
rng = np.random.default_rng(0)
v1, v2 = (jnp.asarray(rng.normal(size=(256, 32, 32, 3)), jnp.float32) for _ in range(2))
var = net.init(jax.random.key(0), v1[:2], train=True)
def loss(params, stats, v1, v2):
    if mode == "separate":
        y1, u = net.apply({"params": params, "batch_stats": stats}, v1, train=True, mutable=["batch_stats"])
        y2, u = net.apply({"params": params, "batch_stats": u["batch_stats"]}, v2, train=True, mutable=["batch_stats"])
    else:
        y, u = net.apply({"params": params, "batch_stats": stats}, jnp.concatenate([v1, v2]), train=True, mutable=["batch_stats"])
        y1, y2 = y[:256], y[256:]
    return jnp.sum(y1 * y2), u
f = jax.jit(jax.grad(loss, has_aux=True))
jax.block_until_ready(f(var["params"], var["batch_stats"], v1, v2)); ts = []
for _ in range(5):
    t = time.perf_counter(); jax.block_until_ready(f(var["params"], var["batch_stats"], v1, v2)); ts.append(time.perf_counter() - t)
print(mode, "two views fwd+bwd ms:", round(1000 * np.median(ts), 1), flush=True)
