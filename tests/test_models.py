"""Tests for ssl_jax.models: shapes, parameter counts, dtypes, BatchNorm and cross-replica BN."""
import functools

import flax.linen as nn
from flax import traverse_util
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

# 'rbg' keys: threefry-based param init compiles very slowly on CPU (~10x).
KEY = jax.random.key(0, impl="rbg")


def _init_fn(model, shape, dtype=jnp.float32):
    return lambda: model.init(KEY, jnp.zeros(shape, dtype), train=False)


@functools.lru_cache(maxsize=None)
def _init(model, shape):
    """Real, jitted init, cached per (model, shape) (eager flax dispatch is slow on CPU)."""
    return jax.jit(_init_fn(model, shape))()


@functools.lru_cache(maxsize=None)
def _jit_apply(model, train, mutable=False, **kw):
    return jax.jit(functools.partial(model.apply, train=train, mutable=mutable, **kw))


def _apply(model, variables, x, train, mutable=False, **kw):
    """Jitted apply (compiled once per model/mode/shape); (out, updates) when mutable."""
    return _jit_apply(model, train, mutable, **kw)(variables, x)


def _shapes(model, shape, train=False, **kw):
    """(variables, outputs) as ShapeDtypeStructs via eval_shape: no compile, no FLOPs."""
    def f():
        v = _init_fn(model, shape)()
        out = model.apply(v, jnp.zeros(shape), train=train, mutable=["batch_stats"], **kw)[0]
        return v, out
    return jax.eval_shape(f)


def _images(n, hw=32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, hw, hw, 3)).astype(np.float32)


def test_resnet18_cifar_shape():
    v, out = _shapes(make_backbone("resnet18"), (2, 32, 32, 3))
    assert out.shape == (2, 512) and out.dtype == jnp.float32
    assert v["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)


def test_resnet50_small_width_shape():
    v, out = _shapes(make_backbone("resnet50", width=8), (2, 32, 32, 3), train=True)
    assert out.shape == (2, 32 * 8)
    # bottleneck v1.5: stride on the 3x3 conv, projection shortcut in the first block
    block = v["params"]["stage1_block1"]
    assert {"shortcut_conv", "shortcut_bn"} <= set(block)
    assert block["Conv_2"]["kernel"].shape == (1, 1, 8, 32)


def test_imagenet_stem_shape():
    v, out = _shapes(make_backbone("resnet18", width=8, stem="imagenet"), (2, 64, 64, 3))
    assert out.shape == (2, 64)
    assert v["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 8)


def test_resnet18_param_count():
    # torchvision resnet18 (11,689,512) - fc (513,000) - 7x7 stem (9,408) + 3x3 stem (1,728)
    n = count_params(_shapes(make_backbone("resnet18"), (1, 32, 32, 3))[0]["params"])
    assert abs(n - 11_168_832) / 11_168_832 < 0.005
    assert n == 11_168_832


@pytest.mark.parametrize("name,expected", [
    ("resnet34", 21_284_672), ("resnet50", 23_508_032),
    ("resnet101", 42_500_160), ("resnet152", 58_143_808)])
def test_imagenet_param_counts_match_torchvision_without_fc(name, expected):
    v = jax.eval_shape(_init_fn(make_backbone(name, stem="imagenet"), (1, 64, 64, 3)))
    assert count_params(v["params"]) == expected


def test_bf16_params_float32_outputs_float32():
    net = SSLNet(width=4, projector_hidden=(16,), projection_dim=8, predictor_hidden=(16,),
                 predictor_dim=8, dtype=jnp.bfloat16)
    v, out = _shapes(net, (2, 16, 16, 3), train=True)
    assert {a.dtype for a in jax.tree_util.tree_leaves(v)} == {jnp.dtype(jnp.float32)}
    assert set(out) == {"features", "projection", "prediction"}
    assert all(o.dtype == jnp.float32 for o in out.values())
    _, feats = _shapes(make_backbone("resnet18", width=4, dtype=jnp.bfloat16), (2, 16, 16, 3))
    assert feats.dtype == jnp.bfloat16  # compute dtype inside; SSLNet casts to float32


def test_batch_stats_update_only_in_train():
    model = make_backbone("resnet18", width=4)
    v = _init(model, (2, 16, 16, 3))
    x = _images(16, 16) * 3.0 + 1.0
    _, upd = _apply(model, v, x, True, mutable=("batch_stats",))
    diffs = jax.tree_util.tree_leaves(
        jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), v["batch_stats"], upd["batch_stats"]))
    assert len(diffs) == 2 * 20 and all(d > 0 for d in diffs)  # stem + 16 block + 3 shortcut BNs
    out, same = _apply(model, v, x, False, mutable=("batch_stats",))
    jax.tree.map(np.testing.assert_array_equal, v["batch_stats"], same["batch_stats"])
    assert out.shape == (16, 32) and np.isfinite(out).all()


def test_sslnet_with_and_without_predictor():
    kw = dict(width=4, projector_hidden=(32,), projection_dim=16)
    v, out = _shapes(SSLNet(**kw), (2, 16, 16, 3))
    assert set(v["params"]) == {"backbone", "projector"}
    assert set(out) == {"features", "projection"}
    assert out["features"].shape == (2, 32) and out["projection"].shape == (2, 16)

    byol = SSLNet(**kw, predictor_hidden=(24,), predictor_dim=12)
    v, out = _shapes(byol, (2, 16, 16, 3))
    assert set(v["params"]) == {"backbone", "projector", "predictor"}
    assert set(out) == {"features", "projection", "prediction"}
    assert out["prediction"].shape == (2, 12)
    _, out = _shapes(byol, (2, 16, 16, 3), use_predictor=False)
    assert set(out) == {"features", "projection"}


def test_mlp_head_last_bn():
    head = MLPHead((8, 8), 4, last_bn=True)
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    v = jax.jit(lambda: head.init(KEY, x, train=False))()
    assert set(v["params"]) == {"Dense_0", "BatchNorm_0", "Dense_1", "BatchNorm_1", "Dense_2"}
    assert "bias" not in v["params"]["Dense_2"]  # final BN follows, no affine
    out, _ = _apply(head, v, x, True, mutable=("batch_stats",))
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    assert set(v["params"]["Dense_0"]) == {"kernel"}  # hidden Linear: BN follows, no bias


def test_mlp_head_without_hidden_bn_is_linear_relu_linear():
    """MoCo v2's head (hidden_bn=False): Linear(bias)-ReLU-Linear, no BatchNorm, so one example's output does
    not depend on the rest of the batch; checked against NumPy."""
    head = MLPHead((8,), 4, hidden_bn=False)
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    v = jax.jit(lambda: head.init(KEY, x, train=True))()
    assert set(v["params"]) == {"Dense_0", "Dense_1"} and "batch_stats" not in v
    p = jax.tree.map(np.asarray, v["params"])
    p["Dense_0"]["bias"] = np.linspace(-1, 1, 8).astype(np.float32)  # non-zero, so the bias is exercised
    out = head.apply({"params": p}, x, train=True)
    hidden = np.maximum(x.astype(np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0.0)
    np.testing.assert_allclose(out, hidden @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.apply({"params": p}, x[:2], train=True), out[:2], rtol=1e-6, atol=1e-7)
    net = make_ssl_net({"name": "resnet18", "width": 4, "projector_hidden": (16,), "projection_dim": 8,
                        "projector_hidden_bn": False})
    assert net.projector_hidden_bn is False


def _numpy_view_batch_norm(x, num_views, scale, bias, ra_mean, ra_var, momentum=0.9, eps=1e-5):
    """Per-view BatchNorm in NumPy (float64): each view normalised by its own biased statistics; the running
    averages updated view after view, r <- m r + (1 - m) s_v."""
    views = x.astype(np.float64).reshape((num_views, -1) + x.shape[1:])
    axes = tuple(range(1, views.ndim - 1))
    mean, var = views.mean(axes, keepdims=True), views.var(axes, keepdims=True)
    y = (views - mean) / np.sqrt(var + eps) * scale + bias
    for v in range(num_views):
        ra_mean = momentum * ra_mean + (1 - momentum) * mean[v].ravel()
        ra_var = momentum * ra_var + (1 - momentum) * var[v].ravel()
    return y.reshape(x.shape), ra_mean, ra_var


@pytest.mark.parametrize("num_views", [1, 2, 3])
def test_batch_norm_keeps_per_view_statistics(num_views):
    rng = np.random.default_rng(num_views)
    x = np.concatenate([rng.standard_normal((4, 3, 3, 5)) * (v + 1) + v for v in range(num_views)]).astype(np.float32)
    scale, bias = rng.uniform(0.5, 2, 5), rng.standard_normal(5)
    ra_mean, ra_var = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    variables = {"params": {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)},
                 "batch_stats": {"mean": jnp.asarray(ra_mean, jnp.float32), "var": jnp.asarray(ra_var, jnp.float32)}}
    bn = models.BatchNorm(use_running_average=False)
    out, updates = jax.jit(functools.partial(bn.apply, num_views=num_views, mutable=["batch_stats"]))(variables, x)
    want, want_mean, want_var = _numpy_view_batch_norm(x, num_views, scale, bias, ra_mean, ra_var)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], want_var, rtol=1e-5, atol=1e-5)
    # evaluation uses the running averages for every view alike
    frozen = models.BatchNorm(use_running_average=True).apply(variables, x, num_views=num_views)
    np.testing.assert_allclose(frozen, (x - ra_mean) / np.sqrt(ra_var + 1e-5) * scale + bias, rtol=1e-4, atol=1e-4)


def _numpy_batch_norm_grads(x, g, num_views, scale, bias, relu, eps=1e-5):
    """Gradients of sum(g * BN(x)) by backpropagating through the textbook graph, op by op, in float64:
    mean -> centred -> var -> inv_std -> x_hat -> scale, bias -> (ReLU)."""
    views = x.astype(np.float64).reshape(num_views, -1, x.shape[-1])
    g = g.astype(np.float64).reshape(views.shape)
    m = views.shape[1]
    mean = views.mean(1, keepdims=True)
    centred = views - mean
    var = (centred ** 2).mean(1, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = centred * inv_std
    z = x_hat * scale + bias
    dz = g * (z > 0) if relu else g
    d_scale, d_bias = (dz * x_hat).sum((0, 1)), dz.sum((0, 1))
    dx_hat = dz * scale
    d_inv_std = (dx_hat * centred).sum(1, keepdims=True)
    d_var = d_inv_std * -0.5 * (var + eps) ** -1.5
    d_centred = dx_hat * inv_std + d_var * 2.0 * centred / m
    dx = d_centred - d_centred.mean(1, keepdims=True)
    return dx.reshape(x.shape), d_scale, d_bias


@pytest.mark.parametrize("num_views,relu", [(1, False), (1, True), (2, False), (2, True), (3, True)])
def test_batch_norm_gradient_matches_numpy_backprop(num_views, relu):
    """`batch_norm_train` writes its gradient out; it must be the gradient of the formula, through the batch
    statistics, for every view, with and without the fused ReLU."""
    rng = np.random.default_rng(10 * num_views + relu)
    x = np.concatenate([rng.standard_normal((6, 3, 3, 4)) * (v + 1) + v for v in range(num_views)])
    x = x.astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    scale, bias = rng.uniform(0.5, 2, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)

    def loss(x, scale, bias):
        y, _, _ = models.batch_norm_train(x, scale, bias, num_views, 1e-5, None, relu)
        return jnp.sum(y * g)

    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, scale, bias)
    want = _numpy_batch_norm_grads(x, g, num_views, scale, bias, relu)
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=1e-4, atol=1e-4 * np.abs(want_i).max())


def test_cross_replica_batch_norm_gradient_matches_one_device():
    """With the axis name, the gradient through the statistics of all replicas: 8 devices, each with its part of
    both views, give the one-device gradient of the whole batch."""
    mesh = jax.make_mesh((8,), ("batch",))
    rng = np.random.default_rng(7)
    views = [rng.standard_normal((16, 2, 2, 3)).astype(np.float32) * s + s for s in (1, 3)]
    g = [rng.standard_normal(v.shape).astype(np.float32) for v in views]
    scale, bias = np.float32([0.5, 1.0, 2.0]), np.float32([0.1, -0.2, 0.3])

    def grads(x1, x2, g1, g2, axis_name):
        def loss(x1, x2, scale, bias):
            y, _, _ = models.batch_norm_train(jnp.concatenate([x1, x2]), scale, bias, 2, 1e-5, axis_name, True)
            return jnp.sum(y * jnp.concatenate([g1, g2]))
        return jax.grad(loss, argnums=(0, 1, 2, 3))(x1, x2, scale, bias)

    split = P("batch")  # check_vma=True: the replicated scale's and bias' gradients come back psum'd
    sharded = jax.jit(jax.shard_map(functools.partial(grads, axis_name="batch"), mesh=mesh, in_specs=(split,) * 4,
                                    out_specs=(split, split, P(), P())))
    got = sharded(*(jax.device_put(a, NamedSharding(mesh, split)) for a in (*views, *g)))
    want = jax.jit(functools.partial(grads, axis_name=None))(*views, *g)
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=1e-4, atol=1e-5)


def test_batch_norm_with_one_view_is_flax_batch_norm():
    x = jnp.asarray(_images(6, 4) * 3.0 + 1.0)
    for dtype, tol in ((jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)):
        ours = models.BatchNorm(use_running_average=False, dtype=dtype)
        flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype)
        v = flax_bn.init(KEY, x)
        assert jax.tree.map(jnp.shape, ours.init(KEY, x)) == jax.tree.map(jnp.shape, v)
        got, want = ours.apply(v, x, mutable=["batch_stats"]), flax_bn.apply(v, x, mutable=["batch_stats"])
        assert got[0].dtype == want[0].dtype == dtype
        close = functools.partial(np.testing.assert_allclose, rtol=tol, atol=tol)
        jax.tree.map(lambda g, w: close(np.float32(g), np.float32(w)), got, want)


def test_batch_norm_rejects_a_batch_that_does_not_split_into_views():
    bn = models.BatchNorm(use_running_average=False)
    with pytest.raises(ValueError, match="batch of 5 does not split into num_views=2"):
        bn.init(KEY, jnp.zeros((5, 3)), num_views=2)


def test_stacked_views_equal_one_call_per_view():
    """The trainer's one pass over [view1; view2] with num_views=2 is the network applied to each view in turn:
    the same outputs and the same running averages (view 1's update, then view 2's)."""
    net = SSLNet(width=4, projector_hidden=(16,), projection_dim=8, predictor_hidden=(8,), predictor_dim=4)
    v = _init(net, (2, 16, 16, 3))
    view1, view2 = _images(8, 16, seed=2), _images(8, 16, seed=3) * 2.0 + 0.5

    @jax.jit
    def one_call_per_view(variables):
        stats, outs = variables["batch_stats"], []
        for view in (view1, view2):
            out, upd = net.apply({"params": variables["params"], "batch_stats": stats}, view, train=True,
                                 mutable=["batch_stats"])
            stats = upd["batch_stats"]
            outs.append(out)
        return outs, stats

    stacked, stacked_stats = _apply(net, v, np.concatenate([view1, view2]), True, mutable=("batch_stats",),
                                    num_views=2)
    (out1, out2), stats = one_call_per_view(v)
    for key in out1:
        np.testing.assert_allclose(stacked[key][:8], out1[key], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stacked[key][8:], out2[key], rtol=1e-4, atol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                 stacked_stats["batch_stats"], stats)


def test_cross_replica_batch_norm_keeps_views_apart():
    """On 8 devices each holds [its part of view 1; its part of view 2]; with the axis name the statistics are
    each view's over all devices, as on one device holding [view 1; view 2]."""
    mesh = jax.make_mesh((8,), ("batch",))
    single, synced = MLPHead((16,), 8), MLPHead((16,), 8, bn_axis_name="batch")
    view1, view2 = (np.random.default_rng(s).standard_normal((16, 12)).astype(np.float32) * s for s in (1, 3))
    v = jax.jit(lambda: single.init(KEY, view1, train=False))()

    def step(variables, x1, x2):
        out, upd = synced.apply(variables, jnp.concatenate([x1, x2]), train=True, num_views=2,
                                mutable=["batch_stats"])
        return out[:x1.shape[0]], out[x1.shape[0]:], upd["batch_stats"]

    sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch"), P("batch")),
                                    out_specs=(P("batch"), P("batch"), P())))
    split = NamedSharding(mesh, P("batch"))
    out1, out2, stats = sharded(v, jax.device_put(view1, split), jax.device_put(view2, split))
    want, want_stats = _apply(single, v, np.concatenate([view1, view2]), True, mutable=("batch_stats",),
                              num_views=2)
    np.testing.assert_allclose(np.concatenate([out1, out2]), want, rtol=1e-4, atol=1e-4)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), stats,
                 want_stats["batch_stats"])


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


def test_zero_init_residual_zeroes_each_block_last_bn_scale_and_nothing_else():
    """`model.zero_init_residual`: every residual branch starts as zero, so each block starts as its shortcut."""
    def bn_scales(zero_init_residual):
        net = make_ssl_net({"name": "resnet18", "width": 4, "zero_init_residual": zero_init_residual},
                           jnp.float32, None)
        flat = traverse_util.flatten_dict(_init(net, (2, 8, 8, 3))["params"]["backbone"], sep="/")
        return {k: np.asarray(v) for k, v in flat.items() if k.endswith("scale")}

    plain, zeroed = bn_scales(False), bn_scales(True)
    assert plain.keys() == zeroed.keys()
    last_bn = {k for k in zeroed if k.split("/")[0].startswith("stage") and k.split("/")[1] == "BatchNorm_1"}
    assert len(last_bn) == 8  # ResNet-18: 8 basic blocks, the second BatchNorm of each ends its branch
    for name, scale in zeroed.items():
        np.testing.assert_array_equal(scale, 0.0 if name in last_bn else 1.0, err_msg=name)
    for scale in plain.values():
        np.testing.assert_array_equal(scale, 1.0)


def test_cross_replica_bn_matches_single_device():
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("batch",))
    single = make_backbone("resnet18", width=4)
    synced = make_backbone("resnet18", width=4, bn_axis_name="batch")
    x = _images(16, 16) * 2.0 + 0.5
    v = _init(single, (2, 16, 16, 3))

    def step(variables, xs):
        return synced.apply(variables, xs, train=True, mutable=["batch_stats"])

    sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch")),
                                    out_specs=(P("batch"), P())))
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("batch")))
    out_s, upd_s = sharded(v, x_sharded)
    out_1, upd_1 = _apply(single, v, x, True, mutable=("batch_stats",))
    np.testing.assert_allclose(out_s, out_1, rtol=1e-4, atol=1e-4)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
                 upd_s["batch_stats"], upd_1["batch_stats"])
    # without the axis name, per-device statistics differ from the global ones
    local = jax.jit(jax.shard_map(
        lambda vv, xs: single.apply(vv, xs, train=True, mutable=["batch_stats"])[0],
        mesh=mesh, in_specs=(P(), P("batch")), out_specs=P("batch")))
    assert not np.allclose(local(v, x_sharded), out_1, rtol=1e-4, atol=1e-4)


def test_make_backbone_unknown_name():
    with pytest.raises(ValueError, match="resnet18"):
        make_backbone("resnet19")
    with pytest.raises(ValueError):
        jax.eval_shape(_init_fn(make_ssl_net({"name": "vit"}, jnp.float32, None), (1, 8, 8, 3)))


def test_resnet_bad_block_or_stem():
    with pytest.raises(ValueError):
        jax.eval_shape(_init_fn(ResNet((1,), "weird", width=4), (1, 8, 8, 3)))
    with pytest.raises(ValueError):
        jax.eval_shape(_init_fn(ResNet((1,), "basic", width=4, stem="weird"), (1, 8, 8, 3)))


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


def _numpy_conv(x, w, stride, pad):
    """Direct NHWC/HWIO convolution in float64 NumPy: an independent reference."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, _, cout = w.shape
    out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, cout))
    for i in range(kh):
        for j in range(kw):
            window = x[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride, :]
            out += window @ np.asarray(w[i, j], np.float64)
    return out


@pytest.mark.parametrize("kernel, stride, pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (7, 2, 3)])
def test_im2col_conv_matches_numpy_and_lax_with_gradients(kernel, stride, pad):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, 9, 10, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 6)), jnp.float32)
    args = ((stride, stride), [(pad, pad)] * 2)
    dn = ("NHWC", "HWIO", "NHWC")
    ours = models.im2col_conv(x, w, *args, dimension_numbers=dn)
    np.testing.assert_allclose(ours, _numpy_conv(x, w, stride, pad), rtol=1e-5, atol=1e-4)
    cotangent = jnp.asarray(rng.normal(size=ours.shape), jnp.float32)
    grad = lambda conv: jax.grad(lambda x, w: jnp.sum(conv(x, w, *args, dimension_numbers=dn) * cotangent),  # noqa: E731
                                 argnums=(0, 1))(x, w)
    for g_ours, g_lax in zip(grad(models.im2col_conv), grad(jax.lax.conv_general_dilated)):
        np.testing.assert_allclose(g_ours, g_lax, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("conv_impl", ["im2col", "im2col_strided"])
def test_conv_impls_give_the_same_network(conv_impl):
    """Same parameters (so checkpoints move between them) and the same outputs as lax.conv."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 3)), jnp.float32)
    reference = make_backbone("resnet18", width=4)
    variables = _init(reference, (4, 16, 16, 3))
    other = make_backbone("resnet18", width=4, conv_impl=conv_impl)
    assert jax.tree.structure(_init(other, (4, 16, 16, 3))) == jax.tree.structure(variables)
    np.testing.assert_allclose(other.apply(variables, x, train=False), reference.apply(variables, x, train=False),
                               rtol=1e-4, atol=1e-5)


def test_unknown_conv_impl_is_rejected():
    with pytest.raises(ValueError, match="conv_impl='winograd'"):
        _init(make_backbone("resnet18", width=4, conv_impl="winograd"), (1, 8, 8, 3))
