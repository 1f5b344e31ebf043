"""Optimizers: weight decay and LARS masks leave out biases, norms, position embeddings and the class token (by
name); AdamW's betas; learning-rate scaling and schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_lib
from ssl_jax import models
from ssl_jax import optim


def _params():
    return {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
            "dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}


def _opt_config(**overrides):
    config = config_lib.base_config().optimizer
    config.update(overrides)
    return config


def test_decay_mask_excludes_biases_and_batchnorm():
    mask = optim.decay_mask(_params())
    assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False},
                    "dense": {"kernel": True, "bias": False}}


def _net_params(model_config):
    """An SSLNet's parameter shapes (eval_shape: nothing is computed)."""
    net = models.make_ssl_net(model_config, jnp.float32, None)
    return jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False))["params"]


def _paths(params, keep):
    """The '/'-joined paths of the leaves whose mask value is `keep`."""
    mask = optim.decay_mask(params)
    return {"/".join(k.key for k in path) for path, use in jax.tree_util.tree_leaves_with_path(mask) if use == keep}


def test_decay_mask_by_name_is_the_ndim_rule_for_a_resnet():
    """For ResNet-18 with a projector and a predictor the names give today's mask (ndim > 1), leaf for leaf."""
    params = _net_params({"name": "resnet18", "projector_hidden": (512,), "projection_dim": 128,
                          "predictor_hidden": (512,), "predictor_dim": 128})
    by_ndim = jax.tree.map(lambda p: len(p.shape) > 1, params)
    assert jax.tree.structure(optim.decay_mask(params)) == jax.tree.structure(by_ndim)
    assert optim.decay_mask(params) == by_ndim
    assert len(_paths(params, True)) == 20 + 2 + 2  # stem, 16 block and 3 shortcut convs; 2 + 2 head kernels
    assert len(_paths(params, False)) == 2 * 20 + 3 + 3  # their 20 BatchNorms; each head's BatchNorm and last bias


def test_decay_mask_of_a_vit_skips_biases_norms_positions_and_the_class_token():
    params = _net_params({"name": "vit_tiny", "vit_depth": 1, "patch_size": 8, "pos_embedding": "learned",
                          "projector_hidden": (16,), "projection_dim": 8})
    block = "backbone/block1"
    assert _paths(params, True) == {
        "backbone/embedding/kernel", *(f"{block}/attention/{p}/kernel" for p in ("query", "key", "value", "out")),
        f"{block}/mlp/Dense_0/kernel", f"{block}/mlp/Dense_1/kernel",
        "projector/Dense_0/kernel", "projector/Dense_1/kernel"}
    assert _paths(params, False) == {
        "backbone/embedding/bias", "backbone/cls", "backbone/pos_embedding",
        f"{block}/norm1/scale", f"{block}/norm1/bias", f"{block}/norm2/scale", f"{block}/norm2/bias",
        *(f"{block}/attention/{p}/bias" for p in ("query", "key", "value", "out")),
        f"{block}/mlp/Dense_0/bias", f"{block}/mlp/Dense_1/bias",
        "backbone/encoder_norm/scale", "backbone/encoder_norm/bias",
        "projector/BatchNorm_0/scale", "projector/BatchNorm_0/bias", "projector/Dense_1/bias"}
    assert params["backbone"][block.split("/")[1]]["attention"]["query"]["bias"].shape == (3, 64)  # 2-D bias


def test_adamw_takes_the_configs_betas():
    """AdamW with b1 0.9, b2 0.95 (MAE's ViT betas) against a NumPy reference over two steps: a kernel
    decays, a bias does not."""
    config = _opt_config(name="adamw", b1=0.9, b2=0.95, weight_decay=0.05, base_lr=0.1, warmup_epochs=0.0,
                         lr_scaling="none")
    tx, schedule = optim.make_optimizer(config, batch_size=256, steps_per_epoch=10, total_steps=100)
    rng = np.random.default_rng(2)
    params = {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=4), jnp.float32)}
    state = tx.init(params)
    mu = nu = {k: np.zeros(v.shape) for k, v in params.items()}
    for step in range(2):
        grads = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
        updates, state = tx.update(grads, state, params)
        lr = float(schedule(step))
        for name, decay in (("kernel", 0.05), ("bias", 0.0)):
            g, w = np.asarray(grads[name], np.float64), np.asarray(params[name], np.float64)
            mu = {**mu, name: 0.9 * mu[name] + 0.1 * g}
            nu = {**nu, name: 0.95 * nu[name] + 0.05 * g * g}
            m_hat, v_hat = mu[name] / (1 - 0.9 ** (step + 1)), nu[name] / (1 - 0.95 ** (step + 1))
            expected = -lr * (m_hat / (np.sqrt(v_hat) + 1e-8) + decay * w)
            np.testing.assert_allclose(updates[name], expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_weight_decay_reaches_only_masked_parameters(name):
    """With zero gradients, only weight decay moves parameters: kernels move, 1-d parameters stay put."""
    config = _opt_config(name=name, warmup_epochs=0.0, weight_decay=0.1, base_lr=1.0)
    tx, _ = optim.make_optimizer(config, batch_size=256, steps_per_epoch=10, total_steps=100)
    params = _params()
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["conv"]["kernel"]).max()) > 0
    assert float(jnp.abs(updates["dense"]["kernel"]).max()) > 0
    for leaf in (updates["bn"]["scale"], updates["bn"]["bias"], updates["dense"]["bias"]):
        assert float(jnp.abs(leaf).max()) == 0.0


def test_lars_trust_ratio_scales_kernels_not_biases():
    """LARS against a NumPy reference: kernel update = lr * eta * ||w|| / ||g + wd w|| * (g + wd w); a bias
    (masked out of both adaptation and decay) gets lr * g."""
    config = _opt_config(name="lars", warmup_epochs=0.0, weight_decay=0.01, base_lr=0.5, momentum=0.0,
                         trust_coefficient=0.001)
    tx, schedule = optim.make_optimizer(config, batch_size=256, steps_per_epoch=10, total_steps=100)
    rng = np.random.default_rng(0)
    params = {"k": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    grads = {"k": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    updates, _ = tx.update(grads, tx.init(params), params)
    lr = float(schedule(0))
    w, g = np.asarray(params["k"], np.float64), np.asarray(grads["k"], np.float64)
    g_wd = g + 0.01 * w
    expected_k = -lr * 0.001 * np.linalg.norm(w) / np.linalg.norm(g_wd) * g_wd
    np.testing.assert_allclose(updates["k"], expected_k, rtol=1e-4)
    np.testing.assert_allclose(updates["b"], -lr * np.asarray(grads["b"]), rtol=1e-5)


def test_learning_rate_scaling_and_schedule():
    assert optim.scaled_learning_rate(1.0, 512) == 2.0
    assert optim.scaled_learning_rate(0.3, 512, "none") == 0.3
    schedule = optim.learning_rate_schedule(2.0, warmup_steps=10, total_steps=110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(1.0)
    assert float(schedule(10)) == pytest.approx(2.0)
    assert float(schedule(60)) == pytest.approx(1.0, rel=1e-3)  # half-way through the cosine
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-6)


def test_unknown_optimizer_and_scaling_are_rejected():
    with pytest.raises(ValueError, match="config.optimizer.name='adam'"):
        optim.make_optimizer(_opt_config(name="adam"), 256, 10, 100)
    with pytest.raises(ValueError, match="lr_scaling='sqrt'"):
        optim.scaled_learning_rate(1.0, 256, "sqrt")


@pytest.mark.parametrize("trust_coefficient", [0.001, 10.0])
def test_clipped_lars_steps_no_further_than_sgd(trust_coefficient):
    """LARS with clip_lr against a NumPy reference of LARC's clip (solo-learn's lars.py): the kernel's update is
    lr * min(eta ||w|| / ||g + wd w|| / lr, 1) * (g + wd w), so it never exceeds plain SGD's; a bias gets lr * g.
    eta 0.001 leaves the ratio under the clip, eta 10 hits it."""
    config = _opt_config(name="lars", warmup_epochs=0.0, weight_decay=0.01, base_lr=0.5, momentum=0.9,
                         trust_coefficient=trust_coefficient, clip_lr=True)
    tx, schedule = optim.make_optimizer(config, batch_size=256, steps_per_epoch=10, total_steps=100)
    rng = np.random.default_rng(1)
    params = {"k": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    grads = {"k": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    state = tx.init(params)
    w, g = np.asarray(params["k"], np.float64), np.asarray(grads["k"], np.float64)
    velocity, bias_velocity = np.zeros_like(w), np.zeros(4)
    for step in range(2):  # the second step checks the momentum and the schedule's count
        updates, state = tx.update(grads, state, params)
        lr = float(schedule(step))
        g_wd = g + 0.01 * w
        ratio = trust_coefficient * np.linalg.norm(w) / np.linalg.norm(g_wd)
        velocity = 0.9 * velocity + lr * min(ratio / lr, 1.0) * g_wd
        bias_velocity = 0.9 * bias_velocity + lr * np.asarray(grads["b"], np.float64)
        np.testing.assert_allclose(updates["k"], -velocity, rtol=1e-4)
        np.testing.assert_allclose(updates["b"], -bias_velocity, rtol=1e-4)


@pytest.mark.parametrize("name,extra", [("sgd", {}), ("lars", {"trust_coefficient": 10.0, "clip_lr": True})])
def test_fixed_predictor_lr_keeps_the_predictor_at_the_peak_rate(name, extra):
    """SimSiam's --fix-pred-lr: steps of -lr x gradient, the predictor's at the peak lr while the rest follow the
    warm-up and cosine schedule; for clipped LARS with eta 10 every trust ratio (10 ||p|| / ||g|| >= 10) is over
    the clip, so its steps are SGD's too."""
    config = _opt_config(name=name, momentum=0.0, weight_decay=0.0, base_lr=0.5, warmup_epochs=1.0,
                         fixed_predictor_lr=True, **extra)
    tx, schedule = optim.make_optimizer(config, batch_size=256, steps_per_epoch=10, total_steps=100)
    params = {"backbone": {"kernel": jnp.ones((2, 3))}, "projector": {"bias": jnp.ones(3)},
              "predictor": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}}
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    for step in range(30):
        updates, state = tx.update(grads, state, params)
        scheduled = float(schedule(step))
        np.testing.assert_allclose(updates["backbone"]["kernel"], -scheduled, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(updates["projector"]["bias"], -scheduled, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(updates["predictor"]["kernel"], -0.5, rtol=1e-6)
        np.testing.assert_allclose(updates["predictor"]["bias"], -0.5, rtol=1e-6)
    assert float(schedule(0)) == 0.0 and float(schedule(29)) < 0.5
