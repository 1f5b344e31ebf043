"""Weighted kNN over train features that arrive in chunks: kNN evaluation at ImageNet scale in bounded memory.

`evaluate.knn_classify` holds every train feature at once; for ImageNet that is 1.28M x 2048 float32, 10 GB. Here
the train features stream past once, chunk by chunk as the encoder makes them (`encoded_chunks`), and each test
example keeps only its k best similarities so far and their labels: the memory is the test features plus two
[N_test, k] arrays, whatever the train set's size (ImageNet's 50,000 validation images at 2048-d and k = 200:
400 MB + 80 MB). The test side (features and running top-k) is sharded over the devices along the example axis and
each train chunk replicated, so every device scores its share of the test set against the chunk.

The classifier is InstDisc's (Wu et al. 2018), as `evaluate.knn_classify`: cosine similarity of L2-normalised
features, the k most similar train examples vote with weight exp(sim / T), a class's score is the sum of its
voters' weights. The scores equal knn_classify's up to the order of tied similarities.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

EMPTY = -jnp.inf  # the similarity of a top-k slot no train example has filled yet


def _l2_normalize(x, eps=1e-12):
    x = jnp.asarray(x, jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


@jax.jit
def merge_chunk(top_sims, top_labels, test_n, chunk, chunk_labels, chunk_valid):
    """The running top-k [N, k] (similarities, labels) merged with one train chunk [c, D] (labels [c]; rows where
    `chunk_valid` is false are padding and never chosen); `test_n` [N, D] unit rows. Ties keep the earlier entry
    (`lax.top_k` prefers the lower index: the running top-k before the chunk, the chunk's rows in order)."""
    sims = jnp.dot(test_n, _l2_normalize(chunk).T, precision=jax.lax.Precision.HIGHEST)
    sims = jnp.where(chunk_valid[None, :], sims, EMPTY)
    labels = jnp.broadcast_to(chunk_labels[None, :], sims.shape)
    all_sims = jnp.concatenate([top_sims, sims], axis=1)
    all_labels = jnp.concatenate([top_labels, labels], axis=1)
    new_sims, where = jax.lax.top_k(all_sims, top_sims.shape[1])
    return new_sims, jnp.take_along_axis(all_labels, where, axis=1)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def class_scores(top_sims, top_labels, num_classes, temperature):
    """[N, num_classes]: each class's sum of exp(sim / T) over the example's top-k neighbours of that class (empty
    slots, when the train set has fewer than k examples, weigh nothing)."""
    weights = jnp.where(jnp.isfinite(top_sims), jnp.exp(top_sims / temperature), 0.0)
    return jnp.sum(jax.nn.one_hot(top_labels, num_classes, dtype=jnp.float32) * weights[..., None], axis=1)


def _test_sharding(mesh):
    return None if mesh is None else NamedSharding(mesh, P(mesh.axis_names[0]))


def _padded_rows(x, multiple):
    pad = (-x.shape[0]) % multiple
    return np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x


def knn_classify_streaming(train_chunks: Iterable, test_features, num_classes: int, k: int = 200,
                           temperature: float = 0.1, mesh=None) -> np.ndarray:
    """Weighted kNN class scores [N_test, num_classes] of `test_features` against train features given as an
    iterable of (features [c, D], labels [c]) chunks, seen once each. Every chunk is padded to the first one's
    length (one compilation). `mesh`: a `jax.sharding.Mesh` whose first axis shards the test examples (None: one
    device). Raises ValueError on no train chunk, a chunk whose width differs from the test features', or k < 1."""
    if k < 1:
        raise ValueError(f"k={k}: the kNN classifier needs at least one neighbour; use k >= 1 (e.g. 200).")
    test = np.asarray(test_features, np.float32)
    n_test, dim = test.shape
    devices = 1 if mesh is None else mesh.devices.size
    sharding = _test_sharding(mesh)
    put = (lambda x: jnp.asarray(x)) if sharding is None else (lambda x: jax.device_put(x, sharding))
    test_n = _l2_normalize(put(_padded_rows(test, devices)))
    top_sims = put(np.full((test_n.shape[0], k), -np.inf, np.float32))
    top_labels = put(np.zeros((test_n.shape[0], k), np.int32))
    chunk_len, seen = None, 0
    for features, labels in train_chunks:
        features, labels = np.asarray(features, np.float32), np.asarray(labels, np.int32).reshape(-1)
        if features.ndim != 2 or features.shape[1] != dim or features.shape[0] != labels.shape[0]:
            raise ValueError(f"a train chunk of features {features.shape} and labels {labels.shape} does not "
                             f"match the test features' width {dim}; chunks must be [c, {dim}] with c labels.")
        chunk_len = chunk_len or features.shape[0]
        if features.shape[0] > chunk_len:
            raise ValueError(f"a train chunk of {features.shape[0]} rows is longer than the first ({chunk_len}); "
                             "give chunks of one length (the last may be shorter).")
        valid = np.arange(chunk_len) < features.shape[0]
        top_sims, top_labels = merge_chunk(top_sims, top_labels, test_n, _padded_rows(features, chunk_len),
                                           _padded_rows(labels, chunk_len), valid)
        seen += features.shape[0]
    if not seen:
        raise ValueError("knn_classify_streaming got no train examples; the train chunks were empty.")
    return np.asarray(class_scores(top_sims, top_labels, num_classes, jnp.float32(temperature)))[:n_test]


def encoded_chunks(encode_fn: Callable, batches: Iterable) -> Iterator:
    """(features, labels) per (images, labels) batch of `batches`: the train side of `knn_classify_streaming`
    from a stream of images (a data set too large to hold), each batch encoded once. The next batch is dispatched
    before the previous one's features are fetched, so encoding overlaps the transfer."""
    pending = None
    for images, labels in batches:
        features = encode_fn(images)
        if pending is not None:
            yield np.asarray(pending[0]), pending[1]
        pending = (features, labels)
    if pending is not None:
        yield np.asarray(pending[0]), pending[1]
