"""ViT backbones (ssl_jax/vit.py): tokens, position embeddings against NumPy, published parameter counts, the
settings that must fail, the exported encoder, and SimCLR, BYOL and VICReg training a ViT."""
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from ssl_jax import checkpoint
from ssl_jax import models
from ssl_jax import sharding
from ssl_jax import train
from ssl_jax import vit

KEY = jax.random.key(0, impl="rbg")  # threefry-based init compiles slowly on CPU (as tests/test_models.py)


def _tiny(pooling="cls", pos_embedding="sincos2d", patch_size=8, depth=2, dtype=jnp.float32):
    return models.make_backbone("vit_tiny", patch_size=patch_size, vit_pooling=pooling, pos_embedding=pos_embedding,
                                vit_depth=depth, dtype=dtype)


def _images(n, height=32, width=32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, height, width, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _init(model, shape):
    return jax.jit(lambda: model.init(KEY, jnp.zeros(shape), train=False))()


@pytest.mark.parametrize("pooling,extra", [("cls", 1), ("mean", 0)])
@pytest.mark.parametrize("height,width", [(32, 32), (32, 16)])
def test_tokens_are_one_per_patch_plus_the_class_token(pooling, extra, height, width):
    """The final LayerNorm sees (H/p)(W/p) patch tokens (+1 class token for 'cls'); features are [B, D]."""
    net = _tiny(pooling)
    variables = _init(net, (2, height, width, 3))
    features, state = net.apply(variables, _images(2, height, width), train=False, capture_intermediates=True,
                                mutable=["intermediates"])
    tokens = state["intermediates"]["encoder_norm"]["__call__"][0]
    assert tokens.shape == (2, (height // 8) * (width // 8) + extra, 192)
    assert features.shape == (2, 192) and features.dtype == jnp.float32
    pooled = tokens[:, 0] if pooling == "cls" else tokens.mean(axis=1)
    np.testing.assert_allclose(features, pooled, rtol=1e-6, atol=1e-6)


def test_sizes_are_deits():
    assert {name: (s.dim, s.depth, s.num_heads, s.mlp_dim) for name, s in vit.VIT_SIZES.items()} == {
        "vit_tiny": (192, 12, 3, 768), "vit_small": (384, 12, 6, 1536), "vit_base": (768, 12, 12, 3072)}


@pytest.mark.parametrize("name,timm_params,dim", [
    ("vit_tiny", 5_717_416, 192), ("vit_small", 22_050_664, 384), ("vit_base", 86_567_656, 768)])
def test_parameter_counts_match_timm_at_224(name, timm_params, dim):
    """timm's vit_{tiny,small,base}_patch16_224 parameter counts, less its 1000-class head (D x 1000 + 1000) and
    the class token's row of its position table (big_vision's table, like ours, covers the patches only)."""
    net = models.make_backbone(name, patch_size=16, pos_embedding="learned")
    variables = jax.eval_shape(lambda: net.init(KEY, jnp.zeros((1, 224, 224, 3)), train=False))
    assert models.count_params(variables["params"]) == timm_params - (dim * 1000 + 1000) - dim
    assert variables["params"]["pos_embedding"].shape == (14, 14, dim)


def test_sincos_2d_is_the_numpy_formula():
    """Channel c of the token at row y, column x: with q = D/4 and w_k = 10000^(-k / (q - 1)), sin(x w_c),
    cos(x w_{c-q}), sin(y w_{c-2q}), cos(y w_{c-3q}) in the four quarters (MoCo v3, big_vision)."""
    grid_h, grid_w, dim = 3, 5, 16
    q = dim // 4
    expected = np.empty((grid_h, grid_w, dim))
    for y in range(grid_h):
        for x in range(grid_w):
            for c in range(dim):
                part, k = divmod(c, q)
                w = 10000.0 ** (-k / (q - 1))
                expected[y, x, c] = [math.sin(x * w), math.cos(x * w), math.sin(y * w), math.cos(y * w)][part]
    np.testing.assert_allclose(vit.sincos_2d(grid_h, grid_w, dim), expected, rtol=1e-6, atol=1e-6)


def _bilinear_numpy(table, out_h, out_w):
    """Half-pixel-centre bilinear resize of [h, w, D], edges clamped (torch's align_corners=False)."""
    def weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi, frac = np.minimum(lo + 1, n_in - 1), src - lo
        matrix = np.zeros((n_out, n_in))
        matrix[np.arange(n_out), lo] += 1 - frac
        matrix[np.arange(n_out), hi] += frac
        return matrix

    return np.einsum("ah,bw,hwd->abd", weights(table.shape[0], out_h), weights(table.shape[1], out_w), table)


@pytest.mark.parametrize("grid", [(2, 2), (6, 6), (4, 2), (3, 5)])
def test_resized_pos_embedding_is_numpy_bilinear(grid):
    table = np.random.default_rng(0).standard_normal((4, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(vit.resize_pos_embedding(jnp.asarray(table), grid), _bilinear_numpy(table, *grid),
                               rtol=1e-5, atol=1e-6)


def test_learned_pos_embedding_keeps_its_grid_and_is_resized_for_smaller_crops():
    """Initialised on 32x32 (a 4x4 grid), the table stays 4x4. On the same grid it is added as it is: the net
    equals a sin-cos net whose constant is that table. On a 16x16 crop (2x2) the net equals one initialised on
    16x16 whose table is the bilinearly resized one (DINO's interpolate_pos_encoding)."""
    learned, sincos = _tiny(pos_embedding="learned"), _tiny(pos_embedding="sincos2d")
    variables = _init(learned, (2, 32, 32, 3))
    table = variables["params"]["pos_embedding"]
    assert table.shape == (4, 4, 192)

    as_sincos = {"params": {k: v for k, v in variables["params"].items() if k != "pos_embedding"}}
    with_sincos_table = {"params": {**as_sincos["params"], "pos_embedding": jnp.asarray(vit.sincos_2d(4, 4, 192))}}
    x = _images(2)
    np.testing.assert_allclose(learned.apply(with_sincos_table, x, train=False),
                               sincos.apply(as_sincos, x, train=False), rtol=1e-5, atol=1e-5)

    crop = _images(2, 16, 16)
    small = {"params": {**variables["params"], "pos_embedding": _bilinear_numpy(np.asarray(table), 2, 2)}}
    np.testing.assert_allclose(learned.apply(variables, crop, train=False), learned.apply(small, crop, train=False),
                               rtol=1e-5, atol=1e-5)


def test_num_views_and_train_change_nothing():
    """No BatchNorm and no dropout: the views stacked in one batch are each computed as on their own."""
    net = _tiny()
    variables = _init(net, (4, 32, 32, 3))
    x = _images(4)
    one = net.apply(variables, x, train=False)
    np.testing.assert_allclose(net.apply(variables, x, train=True, num_views=2), one, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(net.apply(variables, x[:2], train=True), one[:2], rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_float32_params():
    net = _tiny(dtype=jnp.bfloat16)
    variables = jax.eval_shape(lambda: net.init(KEY, jnp.zeros((2, 32, 32, 3)), train=False))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    features = jax.eval_shape(functools.partial(net.apply, train=False), variables, jnp.zeros((2, 32, 32, 3)))
    assert features.dtype == jnp.bfloat16


def test_a_crop_the_patch_size_does_not_divide_fails_with_one_line():
    with pytest.raises(ValueError, match=r"a 30x30 crop does not split into 8x8 patches") as error:
        jax.eval_shape(lambda: _tiny().init(KEY, jnp.zeros((1, 30, 30, 3)), train=False))
    assert "\n" not in str(error.value) and "patch_size" in str(error.value)


@pytest.mark.parametrize("option,value", [("zero_init_residual", True), ("stem", "imagenet"),
                                          ("conv_impl", "im2col")])
def test_resnet_only_options_are_refused_for_a_vit(option, value):
    with pytest.raises(ValueError, match=f"config.model.{option}=.* is a ResNet option") as error:
        models.make_ssl_net({"name": "vit_small", option: value}, jnp.float32, None)
    assert "\n" not in str(error.value)
    for allowed in ("auto", "xla"):
        models.make_ssl_net({"name": "vit_small", "conv_impl": allowed}, jnp.float32, None)


@pytest.mark.parametrize("key,value", [("vit_pooling", "max"), ("pos_embedding", "rope"), ("patch_size", 0)])
def test_unknown_vit_settings_are_refused(key, value):
    with pytest.raises(ValueError, match=f"config.model.{key}="):
        models.make_ssl_net({"name": "vit_tiny", key: value}, jnp.float32, None)


def test_make_ssl_net_reads_the_vit_keys():
    net = models.make_ssl_net({"name": "vit_base", "patch_size": 16, "vit_pooling": "mean",
                               "pos_embedding": "learned", "vit_depth": 3}, jnp.float32, None)
    assert (net.backbone, net.patch_size, net.vit_pooling, net.pos_embedding, net.vit_depth) == (
        "vit_base", 16, "mean", "learned", 3)
    backbone = models.make_backbone("vit_base", patch_size=16, vit_depth=3)
    assert (backbone.dim, backbone.depth, backbone.num_heads, backbone.mlp_dim) == (768, 3, 12, 3072)
    assert models.make_backbone("vit_base").depth == 12


def test_exported_vit_encoder_loads_with_the_same_features(tmp_path):
    """A tiny ViT SSLNet's backbone (learned position embeddings, mean pooling, 2 blocks, 8x8 patches) through
    export_encoder and load_encoder gives the network's own features."""
    model_config = {"name": "vit_tiny", "patch_size": 8, "vit_pooling": "mean", "pos_embedding": "learned",
                    "vit_depth": 2, "projector_hidden": (16,), "projection_dim": 8}
    net = models.make_ssl_net(model_config, jnp.float32, None)
    variables = jax.jit(lambda: net.init(KEY, jnp.zeros((2, 32, 32, 3)), train=False))()
    checkpoint.export_encoder(str(tmp_path), variables["params"], variables["batch_stats"], model_config)
    with open(os.path.join(tmp_path, checkpoint.ENCODER_CONFIG_FILE)) as f:
        assert json.load(f) == {"name": "vit_tiny", "patch_size": 8, "vit_pooling": "mean",
                                "pos_embedding": "learned", "vit_depth": 2}
    encode, loaded = checkpoint.load_encoder(str(tmp_path))
    x = _images(3)
    np.testing.assert_array_equal(encode(loaded, x), net.apply(variables, x, train=False)["features"])


@pytest.mark.parametrize("config_name,pos_embedding,pooling", [
    ("simclr_cifar", "learned", "cls"), ("byol_cifar", "sincos2d", "mean"), ("vicreg_cifar", "sincos2d", "cls")])
def test_methods_train_a_vit(config_name, pos_embedding, pooling):
    """Two steps of the method's own step (both views, the EMA target and the predictor for BYOL) on a 2-block
    ViT-Ti with 8x8 patches: the loss is finite and every parameter of the network moved."""
    config = helpers.tiny_config(config_name, batch_size=16, steps=2, **{
        "model.name": "vit_tiny", "model.vit_depth": 2, "model.patch_size": 8, "model.pos_embedding": pos_embedding,
        "model.vit_pooling": pooling, "optimizer.warmup_epochs": 0.0})
    exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=32))
    initial = exp.dp.put_state(train.initial_state(exp))
    before = sharding.local_copy(exp.dp.get_state(initial))
    state, metrics = train.run_steps(exp, initial, 0, 2)
    after = sharding.local_copy(exp.dp.get_state(state))
    assert np.isfinite(float(metrics["loss"]))
    assert int(after.step) == 2
    flat_before = dict(jax.tree_util.tree_leaves_with_path(before.params))
    for path, leaf in jax.tree_util.tree_leaves_with_path(after.params):
        assert np.isfinite(leaf).all() and not np.array_equal(leaf, flat_before[path]), jax.tree_util.keystr(path)
    assert "cls" in after.params["backbone"] if pooling == "cls" else "cls" not in after.params["backbone"]


def test_resnets_are_the_modules_they_were():
    """make_backbone still builds the same ResNet dataclass for ResNet names (ViT settings are not read)."""
    assert models.make_backbone("resnet50", width=8, stem="imagenet", patch_size=16, vit_depth=2) == models.ResNet(
        (3, 4, 6, 3), "bottleneck", width=8, stem="imagenet")
    assert models.make_backbone("resnet18", conv_impl="im2col", zero_init_residual=True) == models.ResNet(
        (2, 2, 2, 2), "basic", conv_impl="im2col", zero_init_residual=True)
