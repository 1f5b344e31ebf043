"""Tests for the streaming kNN (ssl_jax/knn_stream.py): against a NumPy InstDisc kNN written here, against the
in-memory evaluate.knn_classify, sharded over 8 devices, and its errors."""
import jax
import numpy as np
import pytest

from ssl_jax import evaluate
from ssl_jax import knn_stream


def numpy_knn_scores(train, train_labels, test, num_classes, k, temperature):
    """Wu et al. 2018: cosine similarity, the k nearest vote with exp(sim / T), float64."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = test.astype(np.float64) @ train.astype(np.float64).T
    scores = np.zeros((test.shape[0], num_classes))
    for i, row in enumerate(sims):
        nearest = np.argsort(-row, kind="stable")[:k]
        for j in nearest:
            scores[i, train_labels[j]] += np.exp(row[j] / temperature)
    return scores


def chunks_of(features, labels, size):
    return [(features[s:s + size], labels[s:s + size]) for s in range(0, len(features), size)]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(230, 16)).astype(np.float32)
    labels = rng.integers(0, 7, 230)
    test = rng.normal(size=(37, 16)).astype(np.float32)
    return train, labels, test


def test_matches_numpy_reference(data):
    train, labels, test = data
    got = knn_stream.knn_classify_streaming(chunks_of(train, labels, 64), test, 7, k=20, temperature=0.1)
    want = numpy_knn_scores(train, labels, test, 7, 20, 0.1)
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_matches_in_memory_knn_whatever_the_chunk_size(data):
    train, labels, test = data
    want = evaluate.knn_classify(train, labels, test, 7, k=50, temperature=0.07)
    for size in (1, 50, 230, 1000):
        got = knn_stream.knn_classify_streaming(chunks_of(train, labels, size), test, 7, k=50, temperature=0.07)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        assert (got.argmax(1) == want.argmax(1)).all()


def test_sharded_over_eight_devices_equals_one(data):
    train, labels, test = data  # 37 test examples: not a multiple of 8, so the test side is padded
    mesh = jax.make_mesh((8,), ("batch",))
    sharded = knn_stream.knn_classify_streaming(chunks_of(train, labels, 64), test, 7, k=10, mesh=mesh)
    single = knn_stream.knn_classify_streaming(chunks_of(train, labels, 64), test, 7, k=10)
    assert sharded.shape == (37, 7)
    np.testing.assert_allclose(sharded, single, rtol=1e-6)


def test_fewer_train_examples_than_k_uses_them_all(data):
    train, labels, test = data
    got = knn_stream.knn_classify_streaming(chunks_of(train[:12], labels[:12], 5), test, 7, k=200)
    want = numpy_knn_scores(train[:12], labels[:12], test, 7, 12, 0.1)
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_encoded_chunks_encode_each_batch_once_in_order():
    calls = []

    def encode(images):
        calls.append(images.shape[0])
        return images.reshape(images.shape[0], -1) * 2.0

    batches = [(np.full((3, 2, 2), i, np.float32), np.array([i] * 3)) for i in range(4)]
    out = list(knn_stream.encoded_chunks(encode, batches))
    assert calls == [3, 3, 3, 3]
    assert [int(f[0, 0]) for f, _ in out] == [0, 2, 4, 6]
    assert [int(lab[0]) for _, lab in out] == [0, 1, 2, 3]


def test_errors_name_the_problem(data):
    train, labels, test = data
    with pytest.raises(ValueError, match="no train examples"):
        knn_stream.knn_classify_streaming([], test, 7)
    with pytest.raises(ValueError, match="width 16"):
        knn_stream.knn_classify_streaming([(train[:, :8], labels)], test, 7)
    with pytest.raises(ValueError, match="longer than the first"):
        knn_stream.knn_classify_streaming([(train[:10], labels[:10]), (train[:20], labels[:20])], test, 7)
    with pytest.raises(ValueError, match="k=0"):
        knn_stream.knn_classify_streaming(chunks_of(train, labels, 64), test, 7, k=0)
