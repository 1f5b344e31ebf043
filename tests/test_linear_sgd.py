"""The papers' linear protocol (ssl_jax.linear_sgd): it learns, solo-learn's schedule, a frozen backbone, one
compilation, and the same layer on 1 and 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import linear_sgd
from ssl_jax import sharding

SETTINGS = dict(epochs=6, batch_size=16, learning_rate=0.1, momentum=0.9, weight_decay=0.0, schedule="step",
                lr_decay_epochs=(4, 5), lr_decay_factor=0.1)
TRACES = []


def tiny_encoder(variables, x):
    """A per-pixel linear map, tanh, global average pooling, then a BatchNorm-like fixed affine map (the 'running
    statistics' in variables['batch_stats']): features [b, 8]."""
    TRACES.append(x.shape)
    h = jnp.tanh(jnp.einsum("bhwc,cd->bhwd", x, variables["params"]["w"]))
    h = h.mean(axis=(1, 2))
    stats = variables["batch_stats"]
    return (h - stats["mean"]) / stats["std"]


def _variables(seed):
    rng = np.random.default_rng(seed)
    return {"params": {"w": rng.standard_normal((3, 8)).astype(np.float32)},
            "batch_stats": {"mean": rng.standard_normal(8).astype(np.float32) * 0.1,
                            "std": np.full(8, 0.5, np.float32)}}


def _colour_data(n, seed, num_classes=3, size=8):
    """Images whose class is their dominant colour channel, with noise: crops and flips keep the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = rng.uniform(0, 120, (n, size, size, 3))
    images[np.arange(n), :, :, labels] += 120
    return images.astype(np.uint8), labels


def test_schedule_is_solo_learns_multistep():
    """solo-learn: scheduler 'step', lr_decay_steps [60, 80], MultiStepLR gamma 0.1, stepped per epoch."""
    settings = dict(learning_rate=0.1, schedule="step", lr_decay_epochs=(60, 80), lr_decay_factor=0.1)
    expected = {0: 0.1, 30: 0.1, 59: 0.1, 60: 0.01, 79: 0.01, 80: 0.001, 99: 0.001}
    for epoch, lr in expected.items():
        assert linear_sgd.lr_at_epoch(settings, epoch) == pytest.approx(lr, rel=1e-12), epoch
    assert linear_sgd.lr_at_epoch(dict(settings, schedule="none"), 90) == 0.1
    with pytest.raises(ValueError, match="'cosine'.*step"):
        linear_sgd.lr_at_epoch(dict(settings, schedule="cosine"), 0)


def test_config_defaults_are_solo_learns():
    from ssl_jax import config_lib
    sgd = config_lib.base_config().eval.sgd_linear
    assert (sgd.epochs, sgd.batch_size, sgd.learning_rate, sgd.momentum, sgd.weight_decay, sgd.schedule,
            tuple(sgd.lr_decay_epochs), sgd.lr_decay_factor) == (100, 256, 0.1, 0.9, 0.0, "step", (60, 80), 0.1)
    assert config_lib.base_config().eval.linear_protocol == "probe_cached"


def test_learns_keeps_the_backbone_and_compiles_once():
    x_tr, y_tr = _colour_data(96, 0)
    x_te, y_te = _colour_data(60, 1)
    mesh = sharding.make_mesh(1)
    first, second = _variables(0), _variables(1)
    before = jax.tree.map(np.copy, first)
    TRACES.clear()
    res, params = linear_sgd.sgd_linear_eval(tiny_encoder, first, x_tr, y_tr, x_te, y_te, 3, SETTINGS, mesh=mesh,
                                             return_params=True)
    assert set(res) == {"linear_top1", "linear_top5"}
    assert res["linear_top1"] > 0.8                     # chance: 1/3
    assert res["linear_top5"] == 1.0                     # 3 classes
    assert params["w"].shape == (8, 3)
    jax.tree.map(np.testing.assert_array_equal, first, before)  # the backbone's weights untouched
    traces = len(TRACES)
    assert traces >= 1
    res2 = linear_sgd.sgd_linear_eval(tiny_encoder, second, x_tr, y_tr, x_te, y_te, 3, SETTINGS, mesh=mesh)
    assert len(TRACES) == traces                          # other weights: no new compilation
    assert res2["linear_top1"] > 0.6
    # Random labels: the layer cannot beat chance on the test split by much.
    rng = np.random.default_rng(2)
    chance = linear_sgd.sgd_linear_eval(tiny_encoder, first, x_tr, rng.integers(0, 3, 96), x_te,
                                        rng.integers(0, 3, 60), 3, SETTINGS, mesh=mesh)
    assert chance["linear_top1"] < 0.6


def test_one_and_eight_devices_train_the_same_layer():
    assert jax.device_count() >= 8
    x_tr, y_tr = _colour_data(64, 3)
    x_te, y_te = _colour_data(40, 4)
    settings = dict(SETTINGS, epochs=3)
    out = [linear_sgd.sgd_linear_eval(tiny_encoder, _variables(0), x_tr, y_tr, x_te, y_te, 3, settings,
                                      mesh=sharding.make_mesh(n), seed=5, return_params=True) for n in (1, 8)]
    (res1, p1), (res8, p8) = out
    np.testing.assert_allclose(p1["w"], p8["w"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p1["b"], p8["b"], rtol=1e-4, atol=1e-5)
    assert res1["linear_top1"] == pytest.approx(res8["linear_top1"], abs=1 / 40 + 1e-6)
    with pytest.raises(ValueError, match="batch_size=12 cannot be split evenly over 8"):
        linear_sgd.sgd_linear_eval(tiny_encoder, _variables(0), x_tr, y_tr, x_te, y_te, 3,
                                   dict(settings, batch_size=12), mesh=sharding.make_mesh(8))


class ArraySource:
    """A streamed split held as arrays (`read(index)` -> (image, label, name), as `streaming.TFDSImages` gives
    decoded images); the examples in `unreadable` raise, as a damaged file does."""

    def __init__(self, images, labels, unreadable=()):
        self.images, self.labels, self.unreadable, self.root = images, labels, set(unreadable), "arrays"

    def __len__(self):
        return len(self.labels)

    def read(self, index):
        if index in self.unreadable:
            raise OSError(f"example {index} is damaged")
        return self.images[index], int(self.labels[index]), f"arrays[{index}]"


def _numpy_sgd_on_host_crops(source, variables, settings, crop_size, seed, pixel_stats):
    """The protocol written out in float64 NumPy: the same host crops (image_folder.host_batch), features by the
    flip-invariant tiny encoder, softmax cross-entropy averaged over the readable examples, torch's SGD with
    momentum (v = m v + g + wd p; p -= lr v) and solo-learn's per-epoch step schedule."""
    from ssl_jax import image_folder

    view = linear_sgd.train_view(crop_size)
    group = image_folder.HostCropGroup(size=crop_size, count=1, scale=view.crop_scale, ratio=view.crop_ratio)
    batch, epochs = settings["batch_size"], settings["epochs"]
    steps_per_epoch = len(source) // batch
    init = linear_sgd._init_params(jax.random.split(jax.random.PRNGKey(seed))[0], 8, 3)
    w, b = (np.asarray(init[k], np.float64) for k in ("w", "b"))
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    mean, std = (np.asarray(s, np.float64) for s in pixel_stats)
    params, stats = variables["params"], variables["batch_stats"]
    for step in range(epochs * steps_per_epoch):
        host = image_folder.host_batch(source, (group,), step, batch, seed)
        x = (host["crops"][0][:, 0].astype(np.float64) / 255.0 - mean) / std
        h = np.tanh(np.einsum("bhwc,cd->bhwd", x, np.asarray(params["w"], np.float64))).mean(axis=(1, 2))
        feats = (h - stats["mean"]) / stats["std"]
        logits = feats @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        weights = host["valid"].astype(np.float64) / max(host["valid"].sum(), 1)
        delta = (p - np.eye(3)[host["label"]]) * weights[:, None]
        lr = linear_sgd.lr_at_epoch(settings, step // steps_per_epoch)
        vw = settings["momentum"] * vw + feats.T @ delta + settings["weight_decay"] * w
        vb = settings["momentum"] * vb + delta.sum(0) + settings["weight_decay"] * b
        w, b = w - lr * vw, b - lr * vb
    return w, b


@pytest.mark.parametrize("num_devices", [1, 8])
def test_streamed_protocol_is_the_numpy_sgd_on_the_same_host_crops(num_devices):
    """sgd_linear_eval_streaming: the layer a float64 NumPy SGD reaches on the same host crops (the encoder is
    flip-invariant, so the device's flips do not enter), an unreadable image left out of the loss, on 1 device
    and on 8."""
    from ssl_jax import augment

    images, labels = _colour_data(44, 7, size=12)
    source = ArraySource(images, labels, unreadable={5})
    settings = dict(SETTINGS, epochs=3, batch_size=8, lr_decay_epochs=(2,), weight_decay=1e-3)
    x_te, y_te = _colour_data(30, 8, size=8)
    stats = augment.PIXEL_STATS["imagenet"]
    test_features = tiny_encoder(_variables(0), augment.normalize(augment.to_float(x_te), stats))
    logs = []
    results, params = linear_sgd.sgd_linear_eval_streaming(
        tiny_encoder, _variables(0), source, test_features, y_te, 3, settings, crop_size=8, seed=3,
        mesh=sharding.make_mesh(num_devices), workers=0, log_fn=logs.append, return_params=True, pixel_stats=stats)
    w, b = _numpy_sgd_on_host_crops(source, _variables(0), settings, 8, 3, stats)
    np.testing.assert_allclose(params["w"], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params["b"], b, rtol=1e-4, atol=1e-5)
    assert len(logs) == 3 and "epoch 3/3: lr 0.01" in logs[-1] and "unreadable image read(s) left out" in logs[-1]
    assert results["linear_top1"] > 0.8 and results["linear_top5"] == 1.0  # chance 1/3


def test_streamed_protocol_needs_an_even_batch_and_the_backbone():
    from ssl_jax import config_lib
    from ssl_jax import evaluate

    images, labels = _colour_data(16, 0)
    with pytest.raises(ValueError, match="batch_size=12 cannot be split evenly over 8"):
        linear_sgd.sgd_linear_eval_streaming(tiny_encoder, _variables(0), ArraySource(images, labels),
                                             np.zeros((4, 8)), np.zeros(4), 3, dict(SETTINGS, batch_size=12), 8,
                                             mesh=sharding.make_mesh(8))
    eval_config = config_lib.base_config().eval
    eval_config.linear_protocol = "sgd_augmented"
    with pytest.raises(ValueError, match="needs the backbone"):
        evaluate.evaluate_backbone_streaming(lambda x: x, None, eval_config, 8)
