"""Evaluation of frozen self-supervised features: weighted kNN and offline linear probe.

All functions take plain arrays (numpy or jax) and return numpy arrays / python floats.
The heavy parts are jitted and batched so that 50,000 x 512 train features against
10,000 test features fit easily in CPU memory and run in seconds.

Recipes:
  * kNN: the weighted k-nearest-neighbour classifier of Wu et al. 2018, "Unsupervised
    Feature Learning via Non-Parametric Instance Discrimination" (InstDisc), as used to
    monitor SSL runs by the MoCo CIFAR-10 demo and solo-learn (``solo/utils/knn.py``):
    L2-normalised features, cosine similarity, top-k neighbours, weights ``exp(sim / T)``,
    class score = sum of neighbour weights per class. Defaults k=200, T=0.1 follow the
    MoCo CIFAR-10 demo's kNN monitor (InstDisc itself: k=200, T=0.07).
  * Linear probe: the standard "linear evaluation protocol" (Zhang et al. 2016; Kolesnikov
    et al. 2019; SimCLR, Chen et al. 2020): a single linear layer trained with
    cross-entropy on frozen features, no regularisation by default, cosine learning-rate
    decay. See :func:`linear_eval` for the chosen optimiser.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "extract_features",
    "knn_classify",
    "knn_accuracy",
    "linear_eval",
    "topk_accuracy",
]


# ----------------------------------------------------------------------------------------
# Feature extraction
# ----------------------------------------------------------------------------------------

def extract_features(encode_fn: Callable, images, batch_size: int = 1000) -> np.ndarray:
    """Encodes ``images`` in fixed-size batches and returns float32 features ``[N, C]``.

    ``encode_fn`` maps a batch ``[b, H, W, 3]`` (uint8) to ``[b, C]``. The last batch is
    zero-padded up to ``batch_size`` so a jitted ``encode_fn`` compiles exactly once; the
    padding rows are stripped from the output. Batches are dispatched asynchronously and
    only copied to host at the end.
    """
    images = np.asarray(images)
    n = images.shape[0]
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n == 0:
        raise ValueError("extract_features needs at least one image")
    outputs = []
    for start in range(0, n, batch_size):
        batch = images[start:start + batch_size]
        valid = batch.shape[0]
        if valid < batch_size:
            pad = np.zeros((batch_size - valid,) + batch.shape[1:], dtype=batch.dtype)
            batch = np.concatenate([batch, pad], axis=0)
        outputs.append((encode_fn(batch), valid))
    feats = [np.asarray(out, dtype=np.float32)[:valid] for out, valid in outputs]
    feats = np.concatenate(feats, axis=0)
    return feats.reshape(n, -1)


# ----------------------------------------------------------------------------------------
# Top-k accuracy
# ----------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("k",))
def _topk_correct(logits, labels, k):
    # lax.top_k breaks ties towards the lower index (like torch.topk on CPU).
    _, idx = jax.lax.top_k(logits, k)
    return jnp.any(idx == labels[:, None], axis=-1)


def topk_accuracy(logits, labels, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits; ``k`` is clipped to
    the number of classes (so top-5 with 3 classes is 1.0)."""
    logits = jnp.asarray(logits, dtype=jnp.float32)
    labels = jnp.asarray(labels, dtype=jnp.int32).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    if logits.shape[0] == 0:
        return 0.0
    k = int(max(1, min(k, logits.shape[1])))
    return float(jnp.mean(_topk_correct(logits, labels, k).astype(jnp.float32)))


# ----------------------------------------------------------------------------------------
# Weighted kNN (Wu et al. 2018)
# ----------------------------------------------------------------------------------------

def _l2_normalize(x, eps=1e-12):
    x = jnp.asarray(x, dtype=jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_scores_batch(train_n, train_labels, test_batch, k, num_classes, temperature):
    test_n = _l2_normalize(test_batch)
    sims = jnp.dot(test_n, train_n.T, precision=jax.lax.Precision.HIGHEST)  # [b, N_train]
    top_sims, top_idx = jax.lax.top_k(sims, k)                              # [b, k]
    weights = jnp.exp(top_sims / temperature)
    nn_labels = train_labels[top_idx]                                       # [b, k]
    b = test_batch.shape[0]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], nn_labels.shape)
    return jnp.zeros((b, num_classes), jnp.float32).at[rows, nn_labels].add(weights)


def knn_classify(train_features, train_labels, test_features, num_classes: int,
                 k: int = 200, temperature: float = 0.1, batch_size: int = 500) -> np.ndarray:
    """Weighted kNN class scores ``[N_test, num_classes]`` (Wu et al. 2018, InstDisc).

    Features are L2-normalised, similarity is cosine, the ``k`` most similar train
    samples (``k`` clipped to the train size) vote with weight ``exp(sim / temperature)``
    and a class's score is the sum of its voters' weights. Test samples are processed in
    chunks of ``batch_size`` (the last one padded, so one compilation).
    """
    train_labels = np.asarray(train_labels).reshape(-1).astype(np.int32)
    test_features = np.asarray(test_features, dtype=np.float32)
    n_train = train_labels.shape[0]
    if n_train == 0:
        raise ValueError("knn_classify needs at least one train sample")
    k = int(max(1, min(k, n_train)))
    n_test = test_features.shape[0]
    if n_test == 0:
        return np.zeros((0, num_classes), np.float32)
    batch_size = int(max(1, min(batch_size, n_test)))
    train_n = _l2_normalize(train_features)
    labels_d = jnp.asarray(train_labels)
    temperature = jnp.float32(temperature)
    outputs = []
    for start in range(0, n_test, batch_size):
        batch = test_features[start:start + batch_size]
        valid = batch.shape[0]
        if valid < batch_size:
            batch = np.concatenate(
                [batch, np.zeros((batch_size - valid,) + batch.shape[1:], np.float32)], 0)
        outputs.append((_knn_scores_batch(train_n, labels_d, batch, k, num_classes,
                                          temperature), valid))
    return np.concatenate([np.asarray(s)[:v] for s, v in outputs], axis=0)


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                 k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_classify` (InstDisc weighted kNN)."""
    scores = knn_classify(train_features, train_labels, test_features, num_classes,
                          k=k, temperature=temperature)
    return topk_accuracy(scores, test_labels, 1)


# ----------------------------------------------------------------------------------------
# Offline linear probe
# ----------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------
# A frozen backbone on a data set, and the command line
# ----------------------------------------------------------------------------------------

def evaluate_backbone(encode_fn: Callable, dataset, eval_config, seed: int = 0, linear: bool = True) -> dict:
    """kNN (and linear) accuracy of the features ``encode_fn`` gives ``dataset`` (``.train``/``.test`` splits of
    uint8 images and labels, ``.num_classes``), with ``eval_config``'s settings (``config.eval``): k, T, linear
    epochs and batch, and ``max_train_examples`` (a random subset of the train split, chosen by ``seed``)."""
    import time

    train_images, train_labels = dataset.train.images, dataset.train.labels
    limit = eval_config.max_train_examples
    if limit and limit < len(train_labels):
        idx = np.random.default_rng(seed).permutation(len(train_labels))[:limit]
        train_images, train_labels = train_images[idx], train_labels[idx]
    start = time.perf_counter()
    train_features = extract_features(encode_fn, train_images, eval_config.batch_size)
    test_features = extract_features(encode_fn, dataset.test.images, eval_config.batch_size)
    results = {"knn_top1": knn_accuracy(
        train_features, train_labels, test_features, dataset.test.labels, dataset.num_classes,
        k=eval_config.knn_k, temperature=eval_config.knn_temperature)}
    if linear:
        results.update(linear_eval(
            train_features, train_labels, test_features, dataset.test.labels, dataset.num_classes,
            epochs=eval_config.linear_epochs, batch_size=eval_config.linear_batch_size, seed=seed))
    results["eval_seconds"] = time.perf_counter() - start
    return results


def format_results(results: dict) -> str:
    """One line: every accuracy in ``results``, the random-initialisation baseline beside its figure."""
    parts = []
    for key in ("knn_top1", "linear_top1", "linear_top5"):
        if key in results:
            base = results.get(f"{key}_random_init")
            parts.append(f"{key}={results[key]:.4f}" + (f" (random init {base:.4f})" if base is not None else ""))
    return " ".join(parts)


def _load_run(workdir, encoder_dir):
    """(encoder directory, the run's config or None) for `--workdir` or `--encoder`; ValueError if neither is
    there."""
    import json
    import os

    import ml_collections

    from ssl_jax import checkpoint
    from ssl_jax import run_files

    if workdir:
        encoder_dir = encoder_dir or os.path.join(workdir, run_files.ENCODER_DIR)
        config_path = os.path.join(workdir, run_files.CONFIG_FILE)
        if not os.path.exists(os.path.join(encoder_dir, checkpoint.ENCODER_CONFIG_FILE)):
            raise ValueError(f"--workdir={workdir} holds no exported encoder ({encoder_dir}/"
                             f"{checkpoint.ENCODER_CONFIG_FILE} is missing): is it the workdir of a finished "
                             "`python -m ssl_jax.main` run?")
        config = None
        if os.path.exists(config_path):
            with open(config_path) as f:
                config = ml_collections.ConfigDict(json.load(f))
        return encoder_dir, config
    if not os.path.exists(os.path.join(encoder_dir, checkpoint.ENCODER_CONFIG_FILE)):
        raise ValueError(f"--encoder={encoder_dir} is not an exported encoder (no {checkpoint.ENCODER_CONFIG_FILE} "
                         "in it); pass WORKDIR/encoder of a finished run, or --workdir=WORKDIR.")
    return encoder_dir, None


def main(argv):
    """`python -m ssl_jax.evaluate --workdir=DIR` (or `--encoder=DIR --data=PATH`): kNN and linear evaluation
    of a saved encoder; prints the results and writes them to DIR/eval_frozen.json (or --output)."""
    import json
    import os
    import sys

    from absl import flags
    from absl import logging

    from ssl_jax import augment
    from ssl_jax import checkpoint
    from ssl_jax import config_lib
    from ssl_jax import cpu_tuning
    from ssl_jax import data
    from ssl_jax import run_files

    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    if not (FLAGS.workdir or FLAGS.encoder):
        sys.exit("error: pass --workdir=DIR (a finished run) or --encoder=DIR (an exported encoder).")
    try:
        encoder_dir, config = _load_run(FLAGS.workdir, FLAGS.encoder)
    except ValueError as e:
        sys.exit(f"error: {e}")
    config = config or config_lib.base_config()
    cpu_tuning.configure_xla_cpu(config.xla_cpu_flags)  # before JAX starts its backend
    eval_config = config.eval
    for key in ("knn_k", "linear_epochs", "max_train_examples"):
        if FLAGS[key].value is not None:
            eval_config[key] = FLAGS[key].value
    data_config = config.data
    try:
        dataset = data.load_dataset(FLAGS.dataset or data_config.name, path=FLAGS.data or data_config.path or None,
                                    cache_dir=data_config.cache_dir or None,
                                    tfds_data_dir=data_config.tfds_data_dir or None, download=data_config.download)
    except data.DataError as e:
        sys.exit(f"error: {e}")
    apply, variables = checkpoint.load_encoder(encoder_dir)

    @jax.jit
    def encode(images):
        return apply(variables, augment.normalize(images.astype(jnp.float32) / 255.0))

    results = evaluate_backbone(encode, dataset, eval_config, seed=config.seed)
    results.update(encoder=os.path.abspath(encoder_dir), data=dataset.source)
    output = FLAGS.output or os.path.join(FLAGS.workdir or encoder_dir, run_files.FROZEN_EVAL_FILE)
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
    print(f"{format_results(results)} -> {output}")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("workdir", None, "A finished run's workdir (its encoder/ and config.json).")
    flags.DEFINE_string("encoder", None, "An exported encoder directory (WORKDIR/encoder).")
    flags.DEFINE_string("data", None, "A local data copy; default: the run's config.data.path, else TFDS/download.")
    flags.DEFINE_string("dataset", None, "cifar10 or cifar100; default: the run's config.data.name.")
    flags.DEFINE_integer("knn_k", None, "kNN neighbours; default: the run's config.eval.knn_k.")
    flags.DEFINE_integer("linear_epochs", None, "Linear-probe epochs; default: the run's config.eval.linear_epochs.")
    flags.DEFINE_integer("max_train_examples", None, "Train subset for kNN/linear (0: all); default: the run's.")
    flags.DEFINE_string("output", None, "Where to write the results; default DIR/eval_frozen.json.")


if __name__ == "__main__":
    import os as _os

    from ssl_jax import cli

    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _define_flags()
    cli.run_cli(main)
