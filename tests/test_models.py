"""Tests for ssl_jax.models: shapes, parameter counts, dtypes, BatchNorm and cross-replica BN."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_jax import models
from ssl_jax.models import (MLPHead, ResNet, SSLNet, count_params, make_backbone, make_ssl_net,
                            parse_dtype)

KEY = jax.random.PRNGKey(0)


def _init(model, shape, dtype=jnp.float32):
    """Jitted init (eager flax dispatch is slow on CPU)."""
    return jax.jit(lambda: model.init(KEY, jnp.zeros(shape, dtype), train=False))()


def _apply(model, variables, x, train, **kw):
    """Jitted apply; returns (out, updates) when mutable is given."""
    return jax.jit(functools.partial(model.apply, train=train, **kw))(variables, x)


def _abstract_params(model, hw):
    """Param shapes via eval_shape (no real init, no FLOPs)."""
    v = jax.eval_shape(lambda: _init(model, (1, hw, hw, 3)))
    return v["params"]


def _images(n, hw=32, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, hw, hw, 3))


def test_resnet18_cifar_shape():
    model = make_backbone("resnet18")
    v = _init(model, (2, 32, 32, 3))
    out = _apply(model, v, _images(2), False)
    assert out.shape == (2, 512) and out.dtype == jnp.float32


def test_resnet50_small_width_shape():
    model = make_backbone("resnet50", width=8)
    v = _init(model, (2, 32, 32, 3))
    out = _apply(model, v, _images(2), False)
    assert out.shape == (2, 32 * 8)


def test_imagenet_stem_shape():
    model = make_backbone("resnet18", width=8, stem="imagenet")
    v = _init(model, (2, 64, 64, 3))
    out, _ = _apply(model, v, _images(2, 64), True, mutable=["batch_stats"])
    assert out.shape == (2, 64)
    # stem conv is 7x7 stride 2
    assert v["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 8)


def test_resnet18_param_count():
    # torchvision resnet18 (11,689,512) - fc (513,000) - 7x7 stem (9,408) + 3x3 stem (1,728)
    n = count_params(_abstract_params(make_backbone("resnet18"), 32))
    assert abs(n - 11_168_832) / 11_168_832 < 0.005
    assert n == 11_168_832


@pytest.mark.parametrize("name,expected", [
    ("resnet34", 21_284_672), ("resnet50", 23_508_032),
    ("resnet101", 42_500_160), ("resnet152", 58_143_808)])
def test_imagenet_param_counts_match_torchvision_without_fc(name, expected):
    n = count_params(_abstract_params(make_backbone(name, stem="imagenet"), 64))
    assert n == expected


def test_bf16_params_float32_outputs_float32():
    net = SSLNet(width=4, projector_hidden=(16,), projection_dim=8, predictor_hidden=(16,),
                 predictor_dim=8, dtype=jnp.bfloat16)
    v = _init(net, (2, 16, 16, 3))
    dtypes = {a.dtype for a in jax.tree_util.tree_leaves(v)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    out, _ = _apply(net, v, _images(2, 16), True, mutable=["batch_stats"])
    assert all(o.dtype == jnp.float32 for o in out.values())
    feats = _apply(make_backbone("resnet18", width=4, dtype=jnp.bfloat16),
                   {k: v[k]["backbone"] for k in v}, _images(2, 16), False)
    assert feats.dtype == jnp.bfloat16


def test_batch_stats_update_only_in_train():
    model = make_backbone("resnet18", width=4)
    v = _init(model, (4, 16, 16, 3))
    x = _images(4, 16) * 3.0 + 1.0
    _, upd = _apply(model, v, x, True, mutable=["batch_stats"])
    diffs = jax.tree_util.tree_leaves(
        jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), v["batch_stats"], upd["batch_stats"]))
    assert all(d > 0 for d in diffs)
    _, same = _apply(model, v, x, False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, v["batch_stats"], same["batch_stats"])
    # eval output of one example does not depend on the rest of the batch
    full = _apply(model, v, x, False)
    np.testing.assert_allclose(_apply(model, v, x[:1], False), full[:1], rtol=1e-5,
                               atol=1e-5)


def test_sslnet_with_and_without_predictor():
    kw = dict(width=4, projector_hidden=(32,), projection_dim=16)
    plain = SSLNet(**kw)
    v = _init(plain, (2, 16, 16, 3))
    assert set(v["params"]) == {"backbone", "projector"}
    out = _apply(plain, v, _images(2, 16), False)
    assert set(out) == {"features", "projection"}
    assert out["features"].shape == (2, 32) and out["projection"].shape == (2, 16)

    byol = SSLNet(**kw, predictor_hidden=(24,), predictor_dim=12)
    v = _init(byol, (2, 16, 16, 3))
    assert set(v["params"]) == {"backbone", "projector", "predictor"}
    out = _apply(byol, v, _images(2, 16), False)
    assert set(out) == {"features", "projection", "prediction"}
    assert out["prediction"].shape == (2, 12)
    out = _apply(byol, v, _images(2, 16), False, use_predictor=False)
    assert set(out) == {"features", "projection"}


def test_mlp_head_last_bn():
    head = MLPHead((8, 8), 4, last_bn=True)
    v = head.init(KEY, jnp.zeros((3, 5)), train=False)
    assert set(v["params"]) == {"Dense_0", "BatchNorm_0", "Dense_1", "BatchNorm_1", "Dense_2"}
    assert "bias" not in v["params"]["Dense_2"]  # final BN follows, no affine
    out, _ = head.apply(v, jax.random.normal(KEY, (6, 5)), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)


def test_make_ssl_net_from_config():
    cfg = ml_collections.ConfigDict(dict(name="resnet50", width=8, stem="imagenet",
                                         projector_hidden=[64, 64], projection_dim=32))
    net = make_ssl_net(cfg, jnp.bfloat16, "batch")
    assert (net.backbone, net.width, net.stem) == ("resnet50", 8, "imagenet")
    assert net.projector_hidden == (64, 64) and net.projection_dim == 32
    assert net.predictor_dim == 0 and net.predictor_hidden == ()
    assert net.dtype == jnp.bfloat16 and net.bn_axis_name == "batch"
    defaults = make_ssl_net({"name": "resnet18"}, jnp.float32, None)
    assert defaults == SSLNet(backbone="resnet18")


def test_cross_replica_bn_matches_single_device():
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("batch",))
    single = make_backbone("resnet18", width=4)
    synced = make_backbone("resnet18", width=4, bn_axis_name="batch")
    x = _images(16, 16) * 2.0 + 0.5
    v = _init(single, (16, 16, 16, 3))

    def step(variables, xs):
        return synced.apply(variables, xs, train=True, mutable=["batch_stats"])

    sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch")),
                                    out_specs=(P("batch"), P())))
    x = jax.device_put(x, NamedSharding(mesh, P("batch")))
    out_s, upd_s = sharded(v, x)
    out_1, upd_1 = _apply(single, v, np.asarray(x), True, mutable=["batch_stats"])
    np.testing.assert_allclose(out_s, out_1, rtol=1e-4, atol=1e-4)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
                 upd_s["batch_stats"], upd_1["batch_stats"])
    # without the axis name, per-device statistics differ from the global ones
    local = jax.jit(jax.shard_map(
        lambda vv, xs: single.apply(vv, xs, train=True, mutable=["batch_stats"])[0],
        mesh=mesh, in_specs=(P(), P("batch")), out_specs=P("batch")))
    assert not np.allclose(local(v, x), out_1, rtol=1e-4, atol=1e-4)


def test_make_backbone_unknown_name():
    with pytest.raises(ValueError, match="resnet18"):
        make_backbone("resnet19")
    with pytest.raises(ValueError):
        _init(make_ssl_net({"name": "vit"}, jnp.float32, None), (1, 8, 8, 3))


def test_resnet_bad_block_or_stem():
    with pytest.raises(ValueError):
        _init(ResNet((1,), "weird", width=4), (1, 8, 8, 3))
    with pytest.raises(ValueError):
        _init(ResNet((1,), "basic", width=4, stem="weird"), (1, 8, 8, 3))


@pytest.mark.parametrize("name,expected", [
    ("float32", jnp.float32), ("fp32", jnp.float32), ("bfloat16", jnp.bfloat16),
    ("bf16", jnp.bfloat16), ("float16", jnp.float16)])
def test_parse_dtype(name, expected):
    assert parse_dtype(name) == jnp.dtype(expected)


def test_parse_dtype_unknown():
    with pytest.raises(ValueError):
        parse_dtype("int8")


def test_count_params_and_stage_sizes():
    assert count_params({"a": jnp.zeros((3, 4)), "b": [jnp.zeros(5)]}) == 17
    assert models.STAGE_SIZES["resnet50"] == (3, 4, 6, 3)
