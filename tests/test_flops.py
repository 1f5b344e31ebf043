"""flops.py against hand counts: single ops, nested jaxprs, ResNet and ViT forwards and whole train steps."""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import helpers
from ssl_jax import flops
from ssl_jax import models

NUM_CLASSES = 10  # the online linear probe's outputs (CIFAR-10)


def conv_macs(layers):
    """Multiply-adds of convolutions given as (out height, out width, kernel h, kernel w, in ch, out ch)."""
    return sum(oh * ow * kh * kw * cin * cout for oh, ow, kh, kw, cin, cout in layers)


def resnet18_cifar_convs(width=64, size=32):
    """Every convolution of ResNet-18 with the CIFAR stem (3x3, stride 1, no pool), written out per stage."""
    w, s = width, size
    layers = [(s, s, 3, 3, 3, w)] + [(s, s, 3, 3, w, w)] * 4  # stem; stage 1: two blocks of two 3x3 convs
    for stage in (1, 2, 3):  # stages 2-4: a strided 3x3, its 1x1 strided shortcut, then three 3x3 convs
        cin, cout, out = w * 2 ** (stage - 1), w * 2 ** stage, s // 2 ** stage
        layers += [(out, out, 3, 3, cin, cout), (out, out, 1, 1, cin, cout)] + [(out, out, 3, 3, cout, cout)] * 3
    return layers


def resnet50_imagenet_convs():
    """Every convolution of ResNet-50 v1.5 at 224x224: 7x7/2 stem and max-pool to 56x56, bottlenecks with the
    stride on the 3x3 and a 1x1 projection shortcut in each stage's first block."""
    layers, cin, size_in = [(112, 112, 7, 7, 3, 64)], 64, 56
    for blocks, f, size in zip((3, 4, 6, 3), (64, 128, 256, 512), (56, 28, 14, 7)):
        for j in range(blocks):
            reduce_size = size_in if j == 0 else size
            layers += [(reduce_size, reduce_size, 1, 1, cin, f), (size, size, 3, 3, f, f), (size, size, 1, 1, f, 4 * f)]
            if j == 0:
                layers.append((size, size, 1, 1, cin, 4 * f))
            cin = 4 * f
        size_in = size
    return layers


def mlp_macs(dims):
    """Multiply-adds per example of Dense layers dims[0] -> dims[1] -> ..."""
    return sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def step_flops_reference(batch, width, projector, predictor=(), loss_macs=0, ema_target=False):
    """FLOPs (2 per multiply-add) of convolutions and matmuls in one train step on ready views, from layer shapes.

    Each of the 2 * batch view images goes forward through ResNet-18 (CIFAR) and the projector (and predictor);
    the backward pass repeats every layer twice (input gradient and weight gradient) except the stem
    convolution's input gradient, which nothing needs. An EMA target adds a forward of backbone and projector
    only. `loss_macs` is the loss's forward matmul work, its backward twice that. The linear probe on the
    stop-gradient features costs a forward and a weight gradient.
    """
    images = 2 * batch
    convs = resnet18_cifar_convs(width)
    forward, stem = conv_macs(convs), conv_macs(convs[:1])
    conv = images * (3 * forward - stem + (forward if ema_target else 0))
    head = mlp_macs(projector) + mlp_macs(predictor)
    dot = images * (3 * head + (mlp_macs(projector) if ema_target else 0) + 2 * 8 * width * NUM_CLASSES)
    return 2 * conv, 2 * (dot + 3 * loss_macs)


def _conv(x, w, stride=1, groups=1):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)), feature_group_count=groups,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_dot_general_is_two_flops_per_multiply_add():
    a, b = jax.ShapeDtypeStruct((3, 4, 5), jnp.float32), jax.ShapeDtypeStruct((3, 5, 6), jnp.float32)
    count = flops.count_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b)
    assert count == flops.FlopCount(conv=0.0, dot=2 * 3 * 4 * 5 * 6)


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (2, 2)])
def test_conv_forward_and_gradients(stride, groups):
    """Forward: out elements x 3x3 window x input channels per group (padding included); each gradient (input
    and kernel) costs what the forward does, strided or grouped (the input a multiple of the stride, as in a
    ResNet)."""
    x, w = jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32), jax.ShapeDtypeStruct((3, 3, 4 // groups, 6), jnp.float32)
    out = 8 // stride  # 8x8 padded by 1 on each side
    forward = 2 * 2 * out * out * 6 * 9 * (4 // groups)
    conv = functools.partial(_conv, stride=stride, groups=groups)
    assert flops.count_flops(conv, x, w).conv == forward
    grads = jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1))
    assert flops.count_flops(grads, x, w).conv == 3 * forward  # forward + input gradient + kernel gradient
    kernel_grad = jax.grad(lambda w, x: conv(x, w).sum())
    assert flops.count_flops(kernel_grad, w, x).conv == 2 * forward


def test_nested_jaxprs():
    m = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    matmul = 2 * 4 * 4 * 4

    def scanned(x):
        return jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=5)[0]

    def branches(x):
        return jax.lax.cond(x.sum() > 0, lambda: x @ x @ x, lambda: x)

    @jax.custom_vjp
    def custom(x):
        return x @ x

    custom.defvjp(lambda x: (x @ x, x), lambda x, g: (g @ x.T + x.T @ g,))
    assert flops.count_flops(jax.jit(scanned), m).dot == 5 * matmul
    assert flops.count_flops(branches, m).dot == 2 * matmul  # the larger branch
    assert flops.count_flops(custom, m).dot == matmul
    assert flops.count_flops(jax.grad(lambda x: custom(x).sum()), m).dot == 3 * matmul
    assert flops.count_flops(jax.checkpoint(lambda x: x @ x), m).dot == matmul


def test_shard_map_counts_every_device():
    """A batch matmul split over 8 devices counts as the whole matmul."""
    mesh = Mesh(np.array(jax.devices()[:8]), ("b",))
    per_device = jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P("b"), P()), out_specs=P("b"))
    x, w = jax.ShapeDtypeStruct((64, 16), jnp.float32), jax.ShapeDtypeStruct((16, 8), jnp.float32)
    assert flops.count_flops(jax.jit(per_device), x, w).dot == 2 * 64 * 16 * 8


def _backbone_forward_macs(name, stem, size):
    net = models.make_backbone(name, stem=stem)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0), x)
    return flops.count_flops(functools.partial(net.apply, train=False), variables, x).conv / 2


def test_resnet18_cifar_forward_is_the_hand_count():
    macs = _backbone_forward_macs("resnet18", "cifar", 32)
    assert macs == conv_macs(resnet18_cifar_convs()) == pytest.approx(0.5554e9, rel=1e-4)


def test_resnet50_imagenet_forward_is_the_hand_count():
    macs = _backbone_forward_macs("resnet50", "imagenet", 224)
    assert macs == conv_macs(resnet50_imagenet_convs()) == pytest.approx(4.1e9, rel=0.01)


def vit_forward_macs(dim, depth, heads, mlp_dim, patch, size, cls=True):
    """Multiply-adds of a ViT forward on one image, layer by layer: the patch embedding (a p x p x 3 -> D linear map
    per patch), then per block the query, key and value projections (3 N D^2), the attention scores q k^T (each
    head N x N x D/h: N^2 D in all), the attention-weighted values (N^2 D), the output projection (N D^2) and the
    MLP (2 N D mlp), with N the tokens: (size/p)^2 patches + the class token."""
    patches = (size // patch) ** 2
    tokens = patches + cls
    embedding = patches * patch * patch * 3 * dim
    del heads  # the heads split D: the scores and values cost the same for any number of heads
    block = 3 * tokens * dim * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * mlp_dim
    return embedding, depth * block


def test_vit_small_224_forward_is_the_hand_count():
    """ViT-S/16 at 224x224: DeiT's "4.6 GFLOPs" (multiply-adds), attention included; the patch embedding is the
    only convolution, everything else a dot_general (flax's attention einsums included)."""
    net = models.make_backbone("vit_small", patch_size=16)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0), x)
    count = flops.count_flops(functools.partial(net.apply, train=False), variables, x)
    embedding, blocks = vit_forward_macs(384, 12, 6, 1536, 16, 224)
    assert count.conv / 2 == embedding == 196 * 768 * 384
    assert count.dot / 2 == blocks  # exact; the scores and weighted values are 7.8% of it
    assert count.total / 2 == pytest.approx(4.6e9, rel=0.01)


@pytest.mark.parametrize("num_devices", [1, 8])
def test_simclr_step_is_the_independent_count(num_devices):
    """SimCLR, ResNet-18 width 64, 512-512-128 head, batch 512: NT-Xent scores 2B anchors against 2B keys."""
    config = helpers.load_config("simclr_cifar", None)
    config.num_devices = num_devices
    batch = config.batch_size
    conv, dot = step_flops_reference(batch, 64, projector=(512, 512, 128), loss_macs=(2 * batch) ** 2 * 128)
    count = flops.train_step_flops(config, ready_views=True)
    assert (count.conv, count.dot) == (conv, dot)
    assert count.total / batch == pytest.approx(6.66e9, rel=0.002)  # under 3 x 2 views x 0.5554 GMAC x 2 + head
    if num_devices == 8:  # the augmentation's matmuls (crop-resize, grayscale) add under 0.1%
        full = flops.train_step_flops(config)
        assert full.conv == count.conv and count.dot < full.dot < count.dot + 1e-3 * count.total


def test_byol_step_counts_the_target_and_the_predictor():
    config = helpers.load_config("byol_cifar", None)
    config.num_devices = 1
    conv, dot = step_flops_reference(config.batch_size, 64, projector=(512, 4096, 256),
                                     predictor=(256, 4096, 256), ema_target=True)
    count = flops.train_step_flops(config, ready_views=True)
    assert (count.conv, count.dot) == (conv, dot)


def test_command_prints_the_step_count():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=helpers.xla_flags(2))
    result = subprocess.run([sys.executable, "-m", "ssl_jax.flops", "--config=configs/simclr_cifar.py",
                             "--config.batch_size=64", "--ready_views"], cwd=helpers.REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    conv, dot = step_flops_reference(64, 64, projector=(512, 512, 128), loss_macs=128 ** 2 * 128)
    assert (record["conv_gflops"], record["dot_gflops"]) == (round(conv / 1e9, 4), round(dot / 1e9, 4))
    assert record["gflops_per_image"] == round((conv + dot) / 64 / 1e9, 4)


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12),
    ("TPU v4 lite", None), ("cpu", None),
])
def test_peak_flops_takes_the_most_specific_name(kind, peak):
    class Device:
        device_kind = kind
    assert flops.peak_flops(Device()) == peak


def test_an_imagenet_recipe_counts_its_resnet50():
    """BYOL's ImageNet recipe (a streamed data set, 1000 classes): per image, the two views' ResNet-50 forwards
    through the online network (x3 with the backward) and the target (x1) are 8 forwards of 4.1 G multiply-adds,
    2 FLOPs each, less the stem's gradient for the images (not needed), plus the heads and the on-device crop's
    resize (a few percent)."""
    config = helpers.load_config("byol_imagenet", None)
    config.num_devices, config.batch_size = 1, 8
    count = flops.train_step_flops(config)
    per_image = (count.conv + count.dot) / config.batch_size
    forward = 2 * _backbone_forward_macs("resnet50", "imagenet", 224)
    assert 7.9 * forward <= per_image <= 8.3 * forward
