"""Times train-mode BatchNorm (+ ReLU), forward and backward, on one stage-1 activation of the CIFAR ResNet-18 at
width 16 (2 x 256 x 32 x 32 x 16): autodiff through the formula (what the model did before) against
`models.batch_norm_train` (the written-out gradient). ms, median of 9.

Usage: XLA_FLAGS="..." python docs/cpu_probes/batchnorm.py     (docs/benchmarks.md)
"""
import ctypes, os, sys, time
libc = ctypes.CDLL("libc.so.6"); libc.mallopt(-4, 0); libc.mallopt(-1, 2**31 - 1)
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_use_xnnpack=true "
                      "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise")
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from ssl_jax import models


def timeit(f, *a, n=9):
    jax.block_until_ready(f(*a))
    ts = []
    for _ in range(n):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
    return round(1000 * np.median(ts), 1)


def autodiff_bn(x, scale, bias, views, relu, eps=1e-5):
    """The previous BatchNorm: E[x^2] - E[x]^2 per view, (x - mean) * rsqrt(var + eps) * scale + bias."""
    v = x.reshape(views, -1, x.shape[-1])
    mean = v.mean(1); var = jnp.maximum(0., jnp.square(v).mean(1) - mean ** 2)
    y = (v - mean[:, None]) * (lax.rsqrt(var + eps) * scale)[:, None] + bias
    return (jax.nn.relu(y) if relu else y).reshape(x.shape)


rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(512, 32, 32, 16)) * 2 + 0.5, jnp.float32)
g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
scale, bias = jnp.asarray(rng.uniform(0.5, 2, 16), jnp.float32), jnp.asarray(rng.normal(size=16), jnp.float32)
for views in (1, 2):
    for relu in (False, True):
        row = {}
        for name, f in (("autodiff", lambda x, s, b: autodiff_bn(x, s, b, views, relu)),
                        ("written_out", lambda x, s, b: models.batch_norm_train(x, s, b, views, 1e-5, None, relu)[0])):
            row[name] = dict(fwd=timeit(jax.jit(f), x, scale, bias),
                             fwd_bwd=timeit(jax.jit(lambda x, s, b, g: jax.vjp(f, x, s, b)[1](g)), x, scale, bias, g))
        print(dict(views=views, relu=relu, **row), flush=True)
