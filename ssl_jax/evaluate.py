"""Evaluation of frozen self-supervised features: weighted kNN, the linear probe (`linear_probe.py`), and the
`python -m ssl_jax.evaluate` command for a saved encoder.

All functions take plain arrays (numpy or jax) and return numpy arrays / python floats.
The heavy parts are jitted and batched so that 50,000 x 512 train features against
10,000 test features fit easily in CPU memory and run in seconds.

Recipes:
  * kNN: the weighted k-nearest-neighbour classifier of Wu et al. 2018, "Unsupervised
    Feature Learning via Non-Parametric Instance Discrimination" (InstDisc), as used to
    monitor SSL runs by the MoCo CIFAR-10 demo and solo-learn (``solo/utils/knn.py``):
    L2-normalised features, cosine similarity, top-k neighbours, weights ``exp(sim / T)``,
    class score = sum of neighbour weights per class. Two named settings (`KNN_PRESETS`,
    `config.eval.knn_preset`, resolved by `knn_settings`): 'lightly' k=200, T=0.1 (the MoCo
    CIFAR-10 demo's kNN monitor and lightly's benchmarks; InstDisc itself: k=200, T=0.07) and
    'solo_learn' k=20, T=0.07 (solo-learn's ``solo/utils/knn.py`` defaults). Every result
    carries the k and T it used (``knn_k``, ``knn_temperature``).
  * Linear evaluation, two protocols (`LINEAR_PROTOCOLS`, `config.eval.linear_protocol`): the
    fast probe 'probe_cached' (AdamW on cached, un-augmented, standardised features;
    `ssl_jax.linear_probe.linear_eval`) and the papers' 'sgd_augmented' (SGD with momentum on
    the frozen backbone's features of augmented images, solo-learn's settings;
    `ssl_jax.linear_sgd`). Every result names its protocol (``linear_protocol``).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import augment
from ssl_jax import linear_probe

__all__ = [
    "KNN_PRESETS",
    "LINEAR_PROTOCOLS",
    "knn_settings",
    "linear_protocol",
    "extract_features",
    "knn_classify",
    "knn_accuracy",
    "topk_accuracy",
]


# ----------------------------------------------------------------------------------------
# Named settings
# ----------------------------------------------------------------------------------------

KNN_PRESETS = {
    "lightly": (200, 0.1),     # InstDisc's k with the MoCo CIFAR-10 demo's T; lightly's benchmark knn_k/knn_t
    "solo_learn": (20, 0.07),  # solo-learn solo/utils/knn.py WeightedKNNClassifier(k=20, T=0.07)
}
LINEAR_PROTOCOLS = ("probe_cached", "sgd_augmented")


def knn_settings(eval_config):
    """(k, temperature) of `eval_config` (``config.eval``): the preset ``knn_preset`` ('lightly' by default),
    with ``knn_k`` / ``knn_temperature`` overriding it where they are > 0. The one place kNN settings are read."""
    preset = eval_config.get("knn_preset", "lightly") or "lightly"
    if preset not in KNN_PRESETS:
        raise ValueError(f"config.eval.knn_preset={preset!r} is not known; choose one of "
                         f"{', '.join(repr(p) for p in KNN_PRESETS)} (k/T: "
                         f"{', '.join(f'{p}={k}/{t}' for p, (k, t) in KNN_PRESETS.items())}).")
    k, temperature = KNN_PRESETS[preset]
    if (eval_config.get("knn_k") or 0) > 0:
        k = int(eval_config.get("knn_k"))
    if (eval_config.get("knn_temperature") or 0) > 0:
        temperature = float(eval_config.get("knn_temperature"))
    return k, temperature


def linear_protocol(eval_config):
    """The linear protocol `eval_config` names (``linear_protocol``, 'probe_cached' by default); ValueError if
    unknown."""
    protocol = eval_config.get("linear_protocol", "probe_cached") or "probe_cached"
    if protocol not in LINEAR_PROTOCOLS:
        raise ValueError(f"config.eval.linear_protocol={protocol!r} is not known; choose one of "
                         f"{', '.join(repr(p) for p in LINEAR_PROTOCOLS)}.")
    return protocol


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
# A frozen backbone on a data set, and the command line
# ----------------------------------------------------------------------------------------

def evaluate_backbone(encode_fn: Callable, dataset, eval_config, seed: int = 0, linear: bool = True,
                      backbone=None, mesh=None, log_fn=None, pixel_stats=augment.PIXEL_STATS["cifar10"]) -> dict:
    """kNN (and linear) accuracy of the features ``encode_fn`` gives ``dataset`` (``.train``/``.test`` splits of
    uint8 images and labels, ``.num_classes``), with ``eval_config``'s settings (``config.eval``): the kNN preset
    and overrides (`knn_settings`), the linear protocol (`linear_protocol`) and its settings, and
    ``max_train_examples`` (a random subset of the train split, chosen by ``seed``). The results carry
    ``knn_k``, ``knn_temperature`` and, with ``linear``, ``linear_protocol``.

    The 'sgd_augmented' protocol trains on augmented images, so it needs the backbone itself: ``backbone`` is
    ``(features_fn, variables)`` as `linear_sgd.sgd_linear_eval` takes them, ``mesh`` its devices, ``pixel_stats``
    the (mean, std) its inputs are normalised with (`augment.pixel_stats`; default CIFAR-10's)."""
    import time

    knn_k, knn_temperature = knn_settings(eval_config)
    protocol = linear_protocol(eval_config)
    if linear and protocol == "sgd_augmented" and backbone is None:
        raise ValueError("linear_protocol='sgd_augmented' needs the backbone (features_fn, variables), not only "
                         "its encode function")
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
        k=knn_k, temperature=knn_temperature), "knn_k": knn_k, "knn_temperature": knn_temperature}
    if linear and protocol == "probe_cached":
        results.update(linear_probe.linear_eval(
            train_features, train_labels, test_features, dataset.test.labels, dataset.num_classes,
            epochs=eval_config.linear_epochs, batch_size=eval_config.linear_batch_size, seed=seed))
    elif linear:
        from ssl_jax import linear_sgd

        features_fn, variables = backbone
        results.update(linear_sgd.sgd_linear_eval(
            features_fn, variables, train_images, train_labels, dataset.test.images, dataset.test.labels,
            dataset.num_classes, eval_config.sgd_linear, seed=seed, mesh=mesh, log_fn=log_fn, pixel_stats=pixel_stats))
    if linear:
        results["linear_protocol"] = protocol
    results["eval_seconds"] = time.perf_counter() - start
    return results


def evaluate_backbone_streaming(encode_fn: Callable, dataset, eval_config, crop_size: int, seed: int = 0,
                                linear: bool = True, mesh=None, workers: int = 8, log_fn=None, backbone=None,
                                pixel_stats=None) -> dict:
    """`evaluate_backbone` for a folder data set (`streaming.StreamedDataset`) too large to hold, in bounded memory:
    every image's centre crop of `crop_size` (`streaming.eval_batches`), the test split's features held
    ([N_test, D]), the train split's streamed past the kNN once (`knn_stream`; ``max_train_examples`` > 0: a
    seeded random subset). With ``linear``, the protocol `linear_protocol` names:
    - 'probe_cached': the fast probe on the features of the first ``streaming_linear_examples`` train images of that
      (random) order (0: all of them, their features held in host memory: 1.28M x 2048 float32 = 10 GB for
      ImageNet), kept as they stream by;
    - 'sgd_augmented': the papers' protocol, `linear_sgd.sgd_linear_eval_streaming`, reading the train split (or
      its subset) again every epoch; it needs ``backbone`` = (features_fn, variables) and the ``pixel_stats``
      its inputs are normalised with, as `evaluate_backbone`."""
    import time

    from ssl_jax import knn_stream
    from ssl_jax import streaming

    protocol = linear_protocol(eval_config)
    if linear and protocol == "sgd_augmented" and (backbone is None or pixel_stats is None):
        raise ValueError("linear_protocol='sgd_augmented' needs the backbone (features_fn, variables) and its "
                         "pixel_stats, not only its encode function")
    knn_k, knn_temperature = knn_settings(eval_config)
    start = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(dataset.train))
    if eval_config.max_train_examples:
        order = order[:eval_config.max_train_examples]
    batch = eval_config.batch_size
    test = [(np.asarray(f), y) for f, y in _encoded(encode_fn, streaming.eval_batches(
        dataset.test, crop_size, batch, workers=workers), batch)]
    test_features, test_labels = np.concatenate([f for f, _ in test]), np.concatenate([y for _, y in test])
    probe = linear and protocol == "probe_cached"
    kept, limit = [], (eval_config.streaming_linear_examples or len(order)) if probe else 0

    def train_chunks():
        held = 0
        for i, (features, labels) in enumerate(_encoded(encode_fn, streaming.eval_batches(
                dataset.train, crop_size, batch, order, workers), batch)):
            if held < limit:
                kept.append((np.asarray(features[:limit - held]), labels[:limit - held]))
                held += len(kept[-1][1])
            if log_fn and i % 50 == 0:
                log_fn(f"kNN: train images {i * batch} / {len(order)}")
            yield features, labels

    scores = knn_stream.knn_classify_streaming(train_chunks(), test_features, dataset.num_classes, knn_k,
                                               knn_temperature, mesh=mesh)
    results = {"knn_top1": topk_accuracy(scores, test_labels, 1), "knn_k": knn_k, "knn_temperature": knn_temperature}
    if probe:
        results.update(linear_probe.linear_eval(
            np.concatenate([f for f, _ in kept]), np.concatenate([y for _, y in kept]), test_features, test_labels,
            dataset.num_classes, epochs=eval_config.linear_epochs, batch_size=eval_config.linear_batch_size,
            seed=seed))
    elif linear:
        from ssl_jax import linear_sgd

        features_fn, variables = backbone
        train = dataset.train if len(order) == len(dataset.train) else streaming.SourceSubset(dataset.train, order)
        results.update(linear_sgd.sgd_linear_eval_streaming(
            features_fn, variables, train, test_features, test_labels, dataset.num_classes, eval_config.sgd_linear,
            crop_size, seed=seed, mesh=mesh, workers=workers, log_fn=log_fn, pixel_stats=pixel_stats))
    if linear:
        results["linear_protocol"] = protocol
    results["eval_seconds"] = time.perf_counter() - start
    return results


def _encoded(encode_fn, image_batches, batch_size):
    """(features, labels) of each (images, labels) batch, every batch padded to `batch_size` for the encoder (one
    compilation) and the padding's features dropped."""
    from ssl_jax import knn_stream

    def padded(batches):
        for images, labels in batches:
            pad = batch_size - len(images)
            yield (np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]) if pad else images,
                   (labels, len(images)))

    for features, (labels, valid) in knn_stream.encoded_chunks(encode_fn, padded(image_batches)):
        yield features[:valid], labels


SETTING_KEYS = ("knn_k", "knn_temperature", "linear_protocol")  # the settings a result carries beside its figures


def format_results(results: dict) -> str:
    """One line: every accuracy in ``results``, the random-initialisation baseline beside its figure, then the kNN
    setting and the linear protocol that produced them."""
    parts = []
    for key in ("knn_top1", "linear_top1", "linear_top5"):
        if key in results:
            base = results.get(f"{key}_random_init")
            parts.append(f"{key}={results[key]:.4f}" + (f" (random init {base:.4f})" if base is not None else ""))
    if "knn_k" in results:
        parts.append(f"[kNN k={results['knn_k']} T={results['knn_temperature']:g}")
        parts[-1] += f"; linear {results['linear_protocol']}]" if "linear_protocol" in results else "]"
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
    of a saved encoder; prints the results and writes them to DIR/eval_frozen.json (or --output). `--knn=lightly`
    or `--knn=solo_learn` picks the kNN setting, `--linear_protocol=probe_cached|sgd_augmented` the linear one."""
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
    from ssl_jax import streaming

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
    for key, value in config_lib.base_config().eval.items():  # a run written before a setting existed: its default
        if key not in eval_config:
            eval_config[key] = value
    if FLAGS.knn is not None:  # a preset names both k and T: the run's overrides give way to it
        eval_config.knn_preset, eval_config.knn_k, eval_config.knn_temperature = FLAGS.knn, 0, 0.0
    for key in ("knn_k", "knn_temperature", "linear_protocol", "linear_epochs", "max_train_examples"):
        if FLAGS[key].value is not None:
            eval_config[key] = FLAGS[key].value
    if FLAGS.sgd_epochs is not None:
        eval_config.sgd_linear.epochs = FLAGS.sgd_epochs
    try:
        knn_settings(eval_config)
        linear_protocol(eval_config)
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:
        dataset = data.load_configured(config.data, FLAGS.dataset, FLAGS.data)
    except data.DataError as e:
        sys.exit(f"error: {e}")
    apply, variables = checkpoint.load_encoder(encoder_dir)
    pixel_stats = checkpoint.encoder_pixel_stats(encoder_dir)  # what its training normalised with

    @jax.jit
    def encode_images(variables, images):  # the weights an argument, not constants compiled into the program
        return apply(variables, augment.normalize(augment.to_float(images), pixel_stats))

    encode = functools.partial(encode_images, variables)
    from ssl_jax import sharding

    if isinstance(dataset, streaming.StreamedDataset):  # streamed: kNN over the whole split, the probe on a subset
        results = evaluate_backbone_streaming(encode, dataset, eval_config, config.augment.view1.crop_size,
                                              config.seed, workers=config.data.get("workers", 8), log_fn=print,
                                              backbone=(apply, variables), pixel_stats=pixel_stats)
    else:
        mesh = (sharding.make_mesh(config.get("num_devices", 0)) if linear_protocol(eval_config) == "sgd_augmented"
                else None)
        results = evaluate_backbone(encode, dataset, eval_config, seed=config.seed, backbone=(apply, variables),
                                    mesh=mesh, log_fn=print, pixel_stats=pixel_stats)
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
    flags.DEFINE_string("dataset", None, "cifar10, cifar100 or a folder data set (imagenet, imagenet100, image_folder; "
                        "--data its folder); default: the run's config.data.name.")
    flags.DEFINE_enum("knn", None, list(KNN_PRESETS), "kNN setting by name: 'lightly' (k=200, T=0.1) or "
                      "'solo_learn' (k=20, T=0.07); default: the run's config.eval.knn_preset and overrides.")
    flags.DEFINE_integer("knn_k", None, "kNN neighbours (overrides the preset); default: the run's.")
    flags.DEFINE_float("knn_temperature", None, "kNN temperature (overrides the preset); default: the run's.")
    flags.DEFINE_enum("linear_protocol", None, list(LINEAR_PROTOCOLS),
                      "'probe_cached' (the fast probe: AdamW on cached un-augmented features) or 'sgd_augmented' "
                      "(the papers': SGD on augmented images' features, solo-learn's settings); default: the run's.")
    flags.DEFINE_integer("linear_epochs", None, "Fast-probe (probe_cached) epochs; default: the run's "
                         "config.eval.linear_epochs.")
    flags.DEFINE_integer("sgd_epochs", None, "sgd_augmented epochs; default: the run's config.eval.sgd_linear.epochs.")
    flags.DEFINE_integer("max_train_examples", None, "Train subset for kNN/linear (0: all); default: the run's.")
    flags.DEFINE_string("output", None, "Where to write the results; default DIR/eval_frozen.json.")


if __name__ == "__main__":
    import os as _os

    from ssl_jax import cli

    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _define_flags()
    cli.run_cli(main)
