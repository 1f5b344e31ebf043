"""MAE (ssl_jax/mae.py, losses.mae_loss, methods.METHODS['mae']): the loss against a float64 NumPy reference on the
masked patches only, the masks (count, per example, the same on 1 and 8 devices), the encoder's visible tokens,
patchify, the mask-ratio error, a :smoke run and the exported encoder evaluating the whole image."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import helpers
from ssl_jax import checkpoint
from ssl_jax import losses
from ssl_jax import mae
from ssl_jax import methods
from ssl_jax import sharding
from ssl_jax import train

KEY = jax.random.key(0, impl="rbg")  # threefry-based init compiles slowly on CPU (as tests/test_vit.py)


def _reference_loss(pred, images, mask, patch_size, norm_pix):
    """The official models_mae.py forward_loss in float64 NumPy, from NCHW images (its patchify 'nchpwq->nhwpqc')."""
    imgs = np.asarray(images, np.float64).transpose(0, 3, 1, 2)
    n, c, height, width = imgs.shape
    p = patch_size
    x = imgs.reshape(n, c, height // p, p, width // p, p)
    target = np.einsum("nchpwq->nhwpqc", x).reshape(n, (height // p) * (width // p), p * p * c)
    if norm_pix:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, keepdims=True, ddof=1)  # torch's Tensor.var: unbiased
        target = (target - mean) / (var + 1e-6) ** 0.5
    loss = ((np.asarray(pred, np.float64) - target) ** 2).mean(-1)
    mask = np.asarray(mask, np.float64)
    return (loss * mask).sum() / mask.sum()


def _case(seed=0, batch=4, size=16, p=4, ratio=0.75):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    num_patches = (size // p) ** 2
    pred = rng.standard_normal((batch, num_patches, p * p * 3)).astype(np.float32)
    _, _, mask = mae.random_masking(jax.random.key(seed), jnp.arange(batch), num_patches, ratio)
    return images, pred, np.asarray(mask)


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_the_float64_reference(norm_pix, seed):
    images, pred, mask = _case(seed)
    loss, aux = jax.jit(losses.mae_loss, static_argnums=3)(pred, mae.patchify(images, 4), mask, norm_pix)
    np.testing.assert_allclose(loss, _reference_loss(pred, images, mask, 4, norm_pix), rtol=2e-6)
    assert float(aux["mask_fraction"]) == 0.75


def test_norm_pix_changes_the_target():
    images, pred, mask = _case(2)
    target = mae.patchify(images * 5.0 + 3.0, 4)
    with_norm = losses.mae_loss(pred, target, mask, True)[0]
    np.testing.assert_allclose(with_norm, losses.mae_loss(pred, mae.patchify(images, 4), mask, True)[0], rtol=1e-4)
    assert not np.isclose(with_norm, losses.mae_loss(pred, target, mask, False)[0], rtol=1e-2)


def test_only_the_masked_patches_count():
    images, pred, mask = _case(3)
    target = mae.patchify(images, 4)
    changed = np.where(mask[..., None] > 0, pred, pred + 100.0)  # every visible patch's prediction far off
    np.testing.assert_array_equal(losses.mae_loss(changed, target, mask)[0], losses.mae_loss(pred, target, mask)[0])
    grad = jax.grad(lambda q: losses.mae_loss(q, target, mask)[0])(pred)
    assert np.all(np.asarray(grad)[mask == 0] == 0) and np.all(np.abs(np.asarray(grad)[mask == 1]).sum(-1) > 0)


def test_patchify_round_trip_and_the_official_order():
    images = np.random.default_rng(4).standard_normal((2, 16, 8, 3)).astype(np.float32)
    patches = mae.patchify(images, 4)
    assert patches.shape == (2, 8, 48)
    np.testing.assert_array_equal(mae.unpatchify(patches, 4, 4, 2), images)
    # patch (1, 0) (the third, row-major over a 4 x 2 grid), pixel (row 2, column 3, channel 1)
    assert patches[1, 2, (2 * 4 + 3) * 3 + 1] == images[1, 4 + 2, 3, 1]


def test_masks_count_and_differ_per_example():
    visible, restore, mask = mae.random_masking(jax.random.key(5), jnp.arange(16), 64, 0.75)
    mask = np.asarray(mask)
    assert visible.shape == (16, 16) and restore.shape == (16, 64)
    np.testing.assert_array_equal(mask.sum(1), int(64 * 0.75))  # 48 masked, 16 = int(64 * 0.25) kept
    assert len({row.tobytes() for row in mask}) == 16  # a different mask for every example
    for v, m in zip(np.asarray(visible), mask):  # the visible indices are the unmasked patches, each once
        assert sorted(v) == list(np.flatnonzero(m == 0))
    # restore unshuffles: the kept ones first in the shuffled order
    assert np.all(np.asarray(restore)[np.arange(16)[:, None], np.asarray(visible)] < 16)
    again = mae.random_masking(jax.random.key(5), jnp.arange(16) + 16, 64, 0.75)[2]
    assert not np.array_equal(np.asarray(again), mask)  # other global indices, other masks


def test_masks_do_not_depend_on_the_device_count():
    """The same global batch on 1 device and split over 8 (shard_map): the same mask for every example."""
    key, index = jax.random.key(6), jnp.arange(32) + 100
    one = mae.random_masking(key, index, 64, 0.75)
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    f = jax.shard_map(lambda i: mae.random_masking(key, i, 64, 0.75), mesh=mesh, in_specs=P("batch"),
                      out_specs=(P("batch"), P("batch"), P("batch")))
    eight = jax.jit(f)(index)
    for a, b in zip(one, eight):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5, 1.5])
def test_a_mask_ratio_outside_0_1_is_refused(ratio):
    with pytest.raises(ValueError, match=rf"config.loss.mask_ratio={ratio} is outside \(0, 1\).*use e.g. 0.75"):
        mae.num_visible(64, ratio)
    config = helpers.tiny_config("mae_cifar", **{"loss.mask_ratio": ratio})
    with pytest.raises(ValueError, match=r"mask_ratio=.* is outside \(0, 1\)"):
        train.build_experiment(config, helpers.synthetic_dataset(num_train=16))


def test_mae_needs_a_vit():
    config = helpers.tiny_config("mae_cifar", **{"model.name": "resnet18"})
    with pytest.raises(ValueError, match="MAE masks a ViT's patches"):
        train.build_experiment(config, helpers.synthetic_dataset(num_train=16))


def _net():
    return mae.make_mae_net(dict(name="vit_tiny", vit_depth=1, patch_size=4, decoder_dim=32, decoder_depth=1,
                                 decoder_num_heads=4))


def test_the_encoder_sees_only_the_visible_patches():
    net = _net()
    images = np.random.default_rng(7).standard_normal((3, 32, 32, 3)).astype(np.float32)
    variables = jax.jit(lambda: net.init(KEY, jnp.zeros((2, 32, 32, 3)), train=False))()
    visible, restore, _ = mae.random_masking(jax.random.key(8), jnp.arange(3), 64, 0.75)
    out, inter = net.apply(variables, images, visible, restore, method=mae.MAENet.reconstruct,
                           capture_intermediates=True, mutable=["intermediates"])
    tokens = inter["intermediates"]["backbone"]["encoder_norm"]["__call__"][0]
    assert tokens.shape == (3, 16 + 1, 192)  # 16 visible patches + the class token
    assert out["prediction"].shape == (3, 64, 48) and out["features"].shape == (3, 192)
    np.testing.assert_allclose(out["features"], tokens[:, 0], rtol=1e-6)
    # Unmasked, the same encoder sees all 64 patches: the network's features are the plain ViT's.
    features, inter = net.apply(variables, images, train=False, capture_intermediates=True,
                                mutable=["intermediates"])
    assert inter["intermediates"]["backbone"]["encoder_norm"]["__call__"][0].shape == (3, 65, 192)
    plain = net.backbone.apply({"params": variables["params"]["backbone"]}, images, train=False)
    np.testing.assert_array_equal(features["features"], plain)
    # The masked encoder is the plain one on the visible tokens: keeping every patch gives the plain features.
    every = jnp.broadcast_to(jnp.arange(64), (3, 64))
    all_kept = net.apply(variables, images, every, every, method=mae.MAENet.reconstruct)["features"]
    np.testing.assert_allclose(all_kept, plain, rtol=1e-5, atol=1e-5)


def test_smoke_config_trains_and_the_exported_encoder_evaluates_unmasked(tmp_path):
    """A few steps of the :smoke config (shrunk): finite, falling loss; the exported encoder is the plain ViT of
    the trained parameters, and what it computes is the network's unmasked features (what evaluation reads)."""
    config = helpers.tiny_config("mae_cifar", batch_size=16, steps=6, **{"optimizer.warmup_epochs": 0.0})
    config.optimizer.base_lr = 2e-3
    exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=32))
    state, step_fn = exp.dp.put_state(train.initial_state(exp)), train.make_step_fn(exp)
    values = []
    for step in range(6):
        state, metrics = train.run_steps(exp, state, step, 1, step_fn)
        values.append(float(metrics["loss"]))
    assert np.isfinite(values).all() and values[-1] < values[0], values
    assert float(metrics["mask_fraction"]) == 0.75
    host = sharding.local_copy(exp.dp.get_state(state))
    assert set(host.params) == {"backbone", "decoder"} and not host.batch_stats
    checkpoint.export_encoder(str(tmp_path / "encoder"), host.params, host.batch_stats, config.model)
    encode, variables = checkpoint.load_encoder(str(tmp_path / "encoder"))
    images = np.random.default_rng(9).standard_normal((4, 32, 32, 3)).astype(np.float32)
    want = exp.net.apply({"params": host.params}, images, train=False)["features"]
    np.testing.assert_allclose(encode(variables, images), want, rtol=1e-5, atol=1e-6)
    encoded = train.make_encode_fn(exp.net, host.params, host.batch_stats)(
        helpers.synthetic_dataset(num_train=4).train.images)
    assert encoded.shape == (4, 192) and np.isfinite(np.asarray(encoded)).all()


def test_the_method_declares_one_crop_its_forward_and_its_network():
    entry = methods.get_method("mae")
    assert entry.crops_seen(2) == ((0,), ())
    assert entry.forward is not None and entry.network is mae.make_mae_net
    assert all(m.forward is None and m.network is None for name, m in methods.METHODS.items() if name != "mae")
