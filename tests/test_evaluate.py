"""Tests for ssl_jax.evaluate against independent NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from ssl_jax import config_lib
from ssl_jax import evaluate as ev
from ssl_jax import linear_probe


# ----------------------------------------------------------------------------- references

def _np_knn_scores(train, train_labels, test, num_classes, k, temperature):
    """Brute-force weighted kNN (Wu et al. 2018): one test sample at a time."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    k = min(k, len(train))
    out = np.zeros((len(test), num_classes), np.float64)
    for i, q in enumerate(test):
        q = q / np.linalg.norm(q)
        sims = train.astype(np.float64) @ q.astype(np.float64)
        order = np.argsort(-sims, kind="stable")[:k]
        for j in order:
            out[i, train_labels[j]] += np.exp(sims[j] / temperature)
    return out


def _np_topk_accuracy(logits, labels, k):
    k = min(k, logits.shape[1])
    hits = 0
    for row, label in zip(logits, labels):
        top = np.argsort(-row, kind="stable")[:k]
        hits += int(label in top)
    return hits / len(labels)


def _blobs(rng, n, num_classes, dim, sep=6.0, centers=None):
    if centers is None:
        centers = rng.standard_normal((num_classes, dim)) * sep
    labels = rng.integers(0, num_classes, n)
    x = centers[labels] + rng.standard_normal((n, dim))
    return x.astype(np.float32), labels, centers


# ------------------------------------------------------------------------------------ kNN

@pytest.mark.parametrize("temperature,batch_size", [(0.1, 500), (0.5, 3)])
def test_knn_scores_match_numpy(temperature, batch_size):
    rng = np.random.default_rng(0)
    train = rng.standard_normal((50, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    test = rng.standard_normal((7, 8)).astype(np.float32)
    got = ev.knn_classify(train, labels, test, 4, k=5, temperature=temperature,
                          batch_size=batch_size)
    want = _np_knn_scores(train, labels, test, 4, 5, temperature)
    assert got.shape == (7, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_knn_k_clipped_to_train_size():
    rng = np.random.default_rng(1)
    train = rng.standard_normal((12, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 12)
    test = rng.standard_normal((5, 6)).astype(np.float32)
    big = ev.knn_classify(train, labels, test, 3, k=1000, temperature=0.2)
    exact = ev.knn_classify(train, labels, test, 3, k=12, temperature=0.2)
    np.testing.assert_allclose(big, exact, rtol=1e-6)
    np.testing.assert_allclose(big, _np_knn_scores(train, labels, test, 3, 12, 0.2), rtol=1e-4)
    acc = ev.knn_accuracy(train, labels, test, labels[:5], 3, k=1000)
    assert 0.0 <= acc <= 1.0


def test_knn_accuracy_separated_clusters_and_random_labels():
    rng = np.random.default_rng(2)
    x_tr, y_tr, centers = _blobs(rng, 600, 5, 16, sep=10.0)
    x_te, y_te, _ = _blobs(rng, 200, 5, 16, centers=centers)
    assert ev.knn_accuracy(x_tr, y_tr, x_te, y_te, 5, k=20) == 1.0
    # Random labels on random features: chance level (1/10; 1000 test -> std ~0.01).
    f_tr = rng.standard_normal((2000, 32)).astype(np.float32)
    f_te = rng.standard_normal((1000, 32)).astype(np.float32)
    acc = ev.knn_accuracy(f_tr, rng.integers(0, 10, 2000), f_te, rng.integers(0, 10, 1000), 10)
    assert isinstance(acc, float)
    assert abs(acc - 0.1) < 0.05


# ------------------------------------------------------------------------------ top-k acc

def test_topk_accuracy_matches_numpy():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((200, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 200)
    for k in (1, 2, 5, 10):
        got = ev.topk_accuracy(logits, labels, k)
        assert isinstance(got, float)
        assert got == pytest.approx(_np_topk_accuracy(logits, labels, k), abs=1e-6)
    assert ev.topk_accuracy(logits, labels, 20) == 1.0            # k clipped to C
    assert ev.topk_accuracy(jnp.asarray(logits), jnp.asarray(labels), 1) == pytest.approx(
        np.mean(np.argmax(logits, 1) == labels), abs=1e-6)


# ------------------------------------------------------------------------------- linear

def test_linear_eval_separable_blobs():
    rng = np.random.default_rng(4)
    x_tr, y_tr, centers = _blobs(rng, 1000, 5, 16, sep=3.0)
    x_te, y_te, _ = _blobs(rng, 500, 5, 16, centers=centers)
    logs = []
    res = linear_probe.linear_eval(x_tr, y_tr, x_te, y_te, 5, epochs=20, log_fn=logs.append)
    assert set(res) == {"linear_top1", "linear_top5", "linear_train_top1"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in res.values())
    assert res["linear_top1"] > 0.95 and res["linear_train_top1"] > 0.95
    assert res["linear_top5"] >= res["linear_top1"]
    assert res["linear_top5"] == 1.0                                # 5 classes: top-5 trivial
    assert len(logs) == 2 and all(isinstance(m, str) for m in logs)  # every 10 epochs


def test_linear_eval_random_labels_is_chance_and_deterministic():
    rng = np.random.default_rng(5)
    x_tr = rng.standard_normal((1000, 32)).astype(np.float32) * 7.0 + 3.0
    x_te = rng.standard_normal((1000, 32)).astype(np.float32) * 7.0 + 3.0
    y_tr, y_te = rng.integers(0, 10, 1000), rng.integers(0, 10, 1000)
    kw = dict(epochs=10, batch_size=128, seed=3)
    res = linear_probe.linear_eval(x_tr, y_tr, x_te, y_te, 10, **kw)
    assert abs(res["linear_top1"] - 0.1) < 0.05
    assert abs(res["linear_top5"] - 0.5) < 0.08
    assert res["linear_top5"] >= res["linear_top1"]
    assert res["linear_train_top1"] > res["linear_top1"]           # fits noise, not test
    assert linear_probe.linear_eval(x_tr, y_tr, x_te, y_te, 10, **kw) == res  # same seed, same result


def test_linear_eval_few_classes_small_train_no_standardize():
    rng = np.random.default_rng(6)
    x_tr, y_tr, centers = _blobs(rng, 40, 3, 4, sep=5.0)
    x_te, y_te, _ = _blobs(rng, 200, 3, 4, centers=centers)
    assert ev.knn_accuracy(x_tr, y_tr, x_te, y_te, 3, k=5) > 0.95  # data is separable
    # batch_size > train size is clipped (one step per epoch), not zero steps.
    res = linear_probe.linear_eval(x_tr, y_tr, x_te, y_te, 3, epochs=50, batch_size=256,
                         learning_rate=1e-2, weight_decay=1e-4, standardize=False)
    assert res["linear_top5"] == 1.0                                # min(5, C) = 3
    assert res["linear_top1"] > 0.9 and res["linear_train_top1"] > 0.9


# ---------------------------------------------------------------------- feature extraction

def test_extract_features_strips_padding_and_compiles_once():
    traces = []

    @jax.jit
    def encode_fn(images):
        traces.append(images.shape)
        x = images.astype(jnp.float32) / 255.0
        return jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)

    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (23, 5, 5, 3), dtype=np.uint8)
    feats = ev.extract_features(encode_fn, images, batch_size=5)
    assert feats.shape == (23, 6) and feats.dtype == np.float32
    assert traces == [(5, 5, 5, 3)]                                 # one compilation
    direct = np.asarray(encode_fn(images))
    np.testing.assert_allclose(feats, direct, rtol=1e-6, atol=1e-7)
    # Exact multiple and batch larger than N.
    np.testing.assert_allclose(ev.extract_features(encode_fn, images[:20], 5), direct[:20],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ev.extract_features(encode_fn, images, 64), direct,
                               rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------- named settings

def _eval_config(**kw):
    config = config_lib.base_config().eval
    for key, value in kw.items():
        config[key] = value
    return config


def test_knn_presets_resolve_to_their_settings():
    assert ev.knn_settings(_eval_config()) == (200, 0.1)                         # the default: 'lightly'
    assert ev.knn_settings(_eval_config(knn_preset="lightly")) == (200, 0.1)
    assert ev.knn_settings(_eval_config(knn_preset="solo_learn")) == (20, 0.07)
    # A config written before presets existed (explicit k and T, no preset) keeps its numbers.
    old = ml_collections.ConfigDict(dict(knn_k=200, knn_temperature=0.1))
    assert ev.knn_settings(old) == (200, 0.1)


def test_knn_overrides_take_precedence_over_the_preset():
    assert ev.knn_settings(_eval_config(knn_preset="solo_learn", knn_k=50)) == (50, 0.07)
    assert ev.knn_settings(_eval_config(knn_preset="solo_learn", knn_temperature=0.2)) == (20, 0.2)
    assert ev.knn_settings(_eval_config(knn_preset="lightly", knn_k=7, knn_temperature=0.5)) == (7, 0.5)
    assert ev.knn_settings(_eval_config(knn_preset="solo_learn", knn_k=0, knn_temperature=0.0)) == (20, 0.07)
    # The :smoke variant's k=20 is an override of the default preset: T stays 0.1 as before.
    assert ev.knn_settings(config_lib.smoke(config_lib.base_config()).eval) == (20, 0.1)


def test_bad_knn_preset_or_linear_protocol_is_a_clear_error():
    with pytest.raises(ValueError, match=r"knn_preset='instdisc'.*'lightly'.*'solo_learn'"):
        ev.knn_settings(_eval_config(knn_preset="instdisc"))
    with pytest.raises(ValueError, match=r"linear_protocol='sgd'.*'probe_cached'.*'sgd_augmented'"):
        ev.linear_protocol(_eval_config(linear_protocol="sgd"))
    assert ev.linear_protocol(_eval_config()) == "probe_cached"


def test_evaluate_backbone_reports_its_settings():
    """The results carry the k and T the kNN used and the linear protocol, and the kNN figure is the one those
    settings give."""
    import types

    rng = np.random.default_rng(8)
    def split(n):
        labels = rng.integers(0, 3, n)
        images = rng.integers(0, 120, (n, 4, 4, 3))
        images[np.arange(n), :, :, labels] += 120
        return types.SimpleNamespace(images=images.astype(np.uint8), labels=labels)
    dataset = types.SimpleNamespace(train=split(60), test=split(30), num_classes=3)
    encode = lambda images: np.asarray(images, np.float32).mean(axis=(1, 2))
    config = _eval_config(knn_preset="solo_learn", knn_k=4, linear_epochs=2, batch_size=16)
    res = ev.evaluate_backbone(encode, dataset, config)
    assert (res["knn_k"], res["knn_temperature"], res["linear_protocol"]) == (4, 0.07, "probe_cached")
    feats = lambda s: encode(s.images)
    assert res["knn_top1"] == ev.knn_accuracy(feats(dataset.train), dataset.train.labels, feats(dataset.test),
                                              dataset.test.labels, 3, k=4, temperature=0.07)
    assert "linear_protocol" not in ev.evaluate_backbone(encode, dataset, config, linear=False)
    assert ev.format_results(res).endswith("[kNN k=4 T=0.07; linear probe_cached]")
    with pytest.raises(ValueError, match="sgd_augmented.*needs the backbone"):
        ev.evaluate_backbone(encode, dataset, _eval_config(linear_protocol="sgd_augmented"))
