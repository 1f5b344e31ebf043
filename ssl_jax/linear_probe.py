"""The linear probe: a linear classifier trained with cross-entropy on frozen, cached features (the standard "linear
evaluation protocol": Zhang et al. 2016; Kolesnikov et al. 2019; SimCLR, Chen et al. 2020), no regularisation by
default, cosine learning-rate decay. See `linear_eval` for the chosen optimiser.

Plain arrays in (numpy or jax), numpy arrays / Python floats out; the epochs run as a jitted loop over features
held in memory.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _logits(params, x):
    # W is stored [C, D]: on XLA:CPU the skinny fwd/bwd matmuls are ~2x faster this way.
    return jax.lax.dot_general(x, params["w"], (((1,), (1,)), ((), ())),
                               precision=jax.lax.Precision.HIGHEST) + params["b"]


def _make_tx(learning_rate, weight_decay, total_steps):
    """AdamW with cosine decay to 0 over ``total_steps`` (all may be traced, so epochs and
    hyper-parameters do not trigger recompilation); weight decay on the kernel only."""
    def schedule(count):
        frac = jnp.minimum(count, total_steps) / jnp.maximum(total_steps, 1)
        return learning_rate * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return optax.adamw(schedule, weight_decay=weight_decay,
                       mask=lambda p: {"w": True, "b": False})


@functools.partial(jax.jit, static_argnames=("num_classes", "standardize"))
def _setup(x_tr, x_te, key, num_classes, standardize):
    """Standardises features with train statistics and initialises params/optimiser."""
    if standardize:
        mean = jnp.mean(x_tr, axis=0)
        std = jnp.std(x_tr, axis=0) + 1e-6
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    params = {
        "w": 0.01 * jax.random.normal(key, (num_classes, x_tr.shape[1]), jnp.float32),
        "b": jnp.zeros((num_classes,), jnp.float32),
    }
    opt_state = _make_tx(0.0, 0.0, 1).init(params)
    return x_tr, x_te, params, opt_state


@functools.partial(jax.jit, static_argnames=("steps_per_epoch", "batch_size"))
def _train_epochs(params, opt_state, x, y, key, epoch_start, epoch_end, learning_rate,
                  weight_decay, total_steps, *, steps_per_epoch, batch_size):
    """Runs epochs ``[epoch_start, epoch_end)``: each epoch a fresh permutation (from
    ``fold_in(key, epoch)``) split into ``steps_per_epoch`` batches (remainder dropped),
    each batch gathered from ``x`` inside the step."""
    n = x.shape[0]
    tx = _make_tx(learning_rate, weight_decay, total_steps)

    def loss_fn(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(_logits(p, xb), yb).mean()

    def epoch(e, carry):
        perm = jax.random.permutation(jax.random.fold_in(key, e), n)
        batches = perm[:steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

        def step(i, carry):
            p, s = carry
            idx = batches[i]
            grads = jax.grad(loss_fn)(p, x[idx], y[idx])
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        return jax.lax.fori_loop(0, steps_per_epoch, step, carry)

    return jax.lax.fori_loop(epoch_start, epoch_end, epoch, (params, opt_state))


def _chunked_logits(params, x, chunk=8192):
    """Logits in chunks (bounded memory for many classes); ``x`` is a traced array."""
    n = x.shape[0]
    if n <= chunk:
        return _logits(params, x)
    pad = (-n) % chunk
    xp = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])
    return jax.lax.map(lambda xb: _logits(params, xb), xp).reshape(-1, params["b"].shape[0])[:n]


def _metrics(params, x, y, k):
    """(loss, top-1, top-k) of the probe on (x, y)."""
    logits = _chunked_logits(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    _, idx = jax.lax.top_k(logits, k)
    hit = idx == y[:, None]
    return loss, jnp.mean(hit[:, 0].astype(jnp.float32)), jnp.mean(
        jnp.any(hit, axis=-1).astype(jnp.float32))


_train_metrics = jax.jit(lambda params, x, y: _metrics(params, x, y, 1)[:2])


@functools.partial(jax.jit, static_argnames=("k",))
def _final_metrics(params, x_tr, y_tr, x_te, y_te, k):
    """(test top-1, test top-k, train top-1) in one compiled call."""
    _, test_top1, test_topk = _metrics(params, x_te, y_te, k)
    _, train_top1, _ = _metrics(params, x_tr, y_tr, k)
    return test_top1, test_topk, train_top1


def linear_eval(train_features, train_labels, test_features, test_labels, num_classes: int,
                *, epochs: int = 100, batch_size: int = 256, learning_rate: float = 1e-3,
                weight_decay: float = 0.0, seed: int = 0, standardize: bool = True,
                log_fn: Optional[Callable[[str], None]] = None,
                log_every: int = 10) -> dict:
    """Offline linear evaluation on frozen features.

    A linear classifier ``x @ W.T + b`` trained with softmax cross-entropy on the train
    split, evaluated on the test split. Features are standardised with the train split's
    per-dimension mean/std when ``standardize`` (the equivalent of the affine-free
    BatchNorm MAE (He et al. 2022) puts before its linear-probe head; it makes one
    learning rate work for features of any scale).

    Optimiser: AdamW (Loshchilov & Hutter 2019) with ``learning_rate`` 1e-3 (Adam's
    default, Kingma & Ba 2015, well conditioned on standardised inputs, so it needs no
    per-method lr sweep, unlike the SGD lr 0.1-30 of the SimCLR/MoCo probes) and cosine
    decay to 0 over all steps (as in MoCo v3's ``main_lincls.py``); ``weight_decay`` 0 by
    default, following SimCLR and MoCo (He et al. 2020), which use no regularisation in
    the probe (when > 0 it applies to ``W`` only). Batch 256 and 100 epochs as in MoCo's
    linear protocol. Each epoch reshuffles the train set (PRNG key from ``seed``, which
    also initialises ``W``) and drops the remainder batch (``batch_size`` is clipped to
    the train size); the epoch loop is a jitted ``fori_loop`` (compiled once per data
    shape; ``epochs``/lr/wd are traced, so changing them does not recompile), called per
    chunk of ``log_every`` epochs when ``log_fn(message)`` is given, to report progress.

    Returns ``{'linear_top1', 'linear_top5', 'linear_train_top1'}`` as fractions in
    [0, 1]; top-5 uses ``min(5, num_classes)``.
    """
    x_tr = np.asarray(train_features, dtype=np.float32)
    x_te = np.asarray(test_features, dtype=np.float32)
    y_tr = np.asarray(train_labels).reshape(-1).astype(np.int32)
    y_te = np.asarray(test_labels).reshape(-1).astype(np.int32)
    x_tr = x_tr.reshape(x_tr.shape[0], -1)
    x_te = x_te.reshape(x_te.shape[0], -1)
    n = x_tr.shape[0]
    if n == 0 or x_te.shape[0] == 0:
        raise ValueError("linear_eval needs non-empty train and test splits")
    batch_size = int(max(1, min(batch_size, n)))
    steps_per_epoch = n // batch_size
    total_steps = max(1, epochs * steps_per_epoch)

    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
    x_tr, x_te, params, opt_state = _setup(x_tr, x_te, init_key, num_classes=num_classes,
                                           standardize=bool(standardize))
    y_tr, y_te = jnp.asarray(y_tr), jnp.asarray(y_te)
    hparams = (np.float32(learning_rate), np.float32(weight_decay), np.int32(total_steps))

    chunk = max(1, int(log_every)) if log_fn is not None else max(1, epochs)
    for start in range(0, epochs, chunk):
        end = min(epochs, start + chunk)
        params, opt_state = _train_epochs(
            params, opt_state, x_tr, y_tr, shuffle_key, np.int32(start), np.int32(end),
            *hparams, steps_per_epoch=steps_per_epoch, batch_size=batch_size)
        if log_fn is not None:
            loss, top1 = _train_metrics(params, x_tr, y_tr)
            log_fn(f"linear_eval epoch {end}/{epochs}: train loss {float(loss):.4f}, "
                   f"train top1 {float(top1):.4f}")

    test_top1, test_top5, train_top1 = _final_metrics(params, x_tr, y_tr, x_te, y_te,
                                                      k=int(min(5, num_classes)))
    return {
        "linear_top1": float(test_top1),
        "linear_top5": float(test_top5),
        "linear_train_top1": float(train_top1),
    }
