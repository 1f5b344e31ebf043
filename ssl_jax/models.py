"""Flax linen ResNets (CIFAR / ImageNet stems), MLP heads and the SSLNet that puts a backbone and heads together.

Modelled on flax ``examples/imagenet/models.py`` and torchvision's ResNet v1.5: He (fan_out)
conv init, no conv bias, projection shortcuts where the shape changes, bottleneck stride on the
3x3 conv. Parameters are always float32; ``dtype`` sets the compute dtype. ``bn_axis_name``
turns every BatchNorm into a cross-replica (synchronised) BatchNorm over that mapped axis.
``num_views`` (a call argument) says the batch holds that many views stacked along axis 0; each
BatchNorm then keeps per-view statistics (see `BatchNorm`), everything else is per example.
`make_backbone` builds a ResNet or a Vision Transformer (`ssl_jax.vit`) by name.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ssl_jax import vit

__all__ = [
    "STAGE_SIZES", "ResNet", "MLPHead", "DINOHead", "SSLNet", "make_backbone", "make_ssl_net", "backbone_settings",
    "check_backbone_options", "parse_dtype", "count_params",
]

STAGE_SIZES = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
_BLOCK_KIND = {"resnet18": "basic", "resnet34": "basic"}  # the rest are bottleneck

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _sum_per_view(a):
    """[V, M, C] -> [V, C]. One view is summed as [M, C]: YNNPACK ran the [1, M, C] form over 20x slower."""
    return a[0].sum(0)[None] if a.shape[0] == 1 else a.sum(1)


def _view_moments(x, num_views, axis_name):
    """Per-view float32 (mean, biased var), each [V, C], of x [V*B, ..., C]; pmean over `axis_name`."""
    flat = x.reshape(num_views, -1, x.shape[-1]).astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, mean_sq = _sum_per_view(flat) / flat.shape[1], _sum_per_view(jnp.square(flat)) / flat.shape[1]
    if axis_name is not None:
        mean, mean_sq = lax.pmean(jnp.stack([mean, mean_sq]), axis_name)
    return mean, jnp.maximum(0.0, mean_sq - jnp.square(mean))


def batch_norm_train(x, scale, bias, num_views, epsilon, axis_name, relu):
    """Train-mode BatchNorm (+ ReLU) of x [V*B, ..., C] with per-view batch statistics; returns
    (y, mean, var), mean and var [V, C] (biased, float32) for the running averages.

    y = act((x - mean_v) * a_v + bias), a_v = scale / sqrt(var_v + eps), with x - mean_v taken first: the
    multiply-add form x * a_v + (bias - mean_v a_v) loses digits to cancellation, enough for 1 and 8 devices to
    disagree. The gradient is written out (`_batch_norm_bwd`: two reductions and one element-wise pass) rather
    than traced through the statistics, which costs XLA's CPU backend many more passes over each activation.
    mean and var carry no gradient. Measurements: docs/benchmarks.md, "BatchNorm with a written-out gradient".
    """
    missing = tuple(sorted(_varying_axes(x) - _varying_axes(scale)))
    if missing:  # inside shard_map(check_vma=True): autodiff psums the parameters' gradient over these axes
        scale, bias = (lax.pcast(p, missing, to="varying") for p in (scale, bias))
    return _batch_norm_train(x, scale, bias, num_views, epsilon, axis_name, relu)


def _varying_axes(x):
    """The mesh axes over which x varies inside shard_map(check_vma=True); empty elsewhere."""
    axis_type = getattr(jax.typeof(x), "manual_axis_type", None)
    return frozenset(getattr(axis_type, "varying", ()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _batch_norm_train(x, scale, bias, num_views, epsilon, axis_name, relu):
    return _batch_norm_fwd(x, scale, bias, num_views, epsilon, axis_name, relu)[0]


def _normalize(x, mean, a, bias, relu):
    """act((x - mean) * a + bias) in a's dtype (float32), x - mean first (see batch_norm_train)."""
    y = (x.astype(a.dtype) - mean) * a + bias
    return jnp.maximum(y, 0.0) if relu else y


def _batch_norm_fwd(x, scale, bias, num_views, epsilon, axis_name, relu):
    mean, var = _view_moments(x, num_views, axis_name)
    inv_std = lax.rsqrt(var + epsilon)
    flat = x.reshape(num_views, -1, x.shape[-1])
    y = _normalize(flat, mean[:, None, :], (inv_std * scale)[:, None, :], bias, relu)
    y = y.astype(x.dtype).reshape(x.shape)
    return (y, mean, var), (x, y if relu else None, mean, inv_std, scale)


def _batch_norm_bwd(num_views, epsilon, axis_name, relu, residuals, cotangents):
    """dL/dx = k1 g + k2 (x - mean) + k3 per view and channel, with g the cotangent behind the ReLU and, over
    the view's elements (all replicas), k1 = scale r, k2 = -scale r^3 E[g (x - mean)], k3 = -k1 E[g]
    (r = 1/sqrt(var + eps)); d scale = r sum g (x - mean), d bias = sum g, over this replica's elements."""
    x, y, mean, inv_std, scale = residuals
    g = cotangents[0].reshape(num_views, -1, x.shape[-1])
    flat = x.reshape(g.shape)
    compute = jnp.promote_types(x.dtype, jnp.float32)
    g = g.astype(compute)
    if relu:
        g = jnp.where(y.reshape(g.shape) > 0, g, 0.0)
    centered = flat.astype(compute) - mean[:, None, :]
    sum_g = _sum_per_view(g)
    sum_gx = _sum_per_view(g * centered)
    mean_g, mean_gx = sum_g / g.shape[1], sum_gx / g.shape[1]
    if axis_name is not None:
        mean_g, mean_gx = lax.pmean(jnp.stack([mean_g, mean_gx]), axis_name)
    k1 = scale * inv_std
    k2 = -k1 * jnp.square(inv_std) * mean_gx
    k3 = -k1 * mean_g
    dx = g * k1[:, None, :] + centered * k2[:, None, :] + k3[:, None, :]
    d_scale = (sum_gx * inv_std).sum(0)
    d_bias = sum_g.sum(0)
    return dx.astype(x.dtype).reshape(x.shape), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


_batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
    """BatchNorm (optionally followed by ReLU) over a batch of `num_views` views stacked along axis 0.

    Each view is normalised with its own statistics and the running averages take the views in order, as V
    separate calls of flax's `nn.BatchNorm` would (r <- m r + (1 - m) s_v for v = 1..V), so running both views
    of a step as one batch keeps per-view BatchNorm (BYOL, VICReg, Barlow Twins) while every convolution runs
    once over 2B images. Same variables and statistics as `nn.BatchNorm` (E[x^2] - E[x]^2 in float32, pmean
    over `axis_name`); training mode runs `batch_norm_train`, whose gradient is written out. With
    `num_views=1` it computes what `nn.BatchNorm` (+ `nn.relu` when `relu`) does, up to float rounding.
    """
    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    use_bias: bool = True
    use_scale: bool = True
    scale_init: Callable = nn.initializers.ones
    axis_name: str | None = None
    relu: bool = False

    @nn.compact
    def __call__(self, x, num_views: int = 1):
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if x.shape[0] % num_views:
            raise ValueError(f"a batch of {x.shape[0]} does not split into num_views={num_views} equal views")
        scale = (self.param("scale", self.scale_init, (features,), jnp.float32) if self.use_scale
                 else jnp.ones((features,), jnp.float32))
        bias = (self.param("bias", nn.initializers.zeros, (features,), jnp.float32) if self.use_bias
                else jnp.zeros((features,), jnp.float32))
        dtype = self.dtype if self.dtype is not None else jnp.result_type(x, jnp.float32)
        x = x.astype(dtype)
        if self.use_running_average:
            a = lax.rsqrt(ra_var.value + self.epsilon) * scale
            return _normalize(x, ra_mean.value, a, bias, self.relu).astype(dtype)
        axis_name = None if self.is_initializing() else self.axis_name
        y, mean, var = batch_norm_train(x, scale, bias, num_views, self.epsilon, axis_name, self.relu)
        if not self.is_initializing():
            mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
            for v in range(num_views):
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean[v]
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var[v]
        return y


def _batch_norm(train: bool, dtype: Any, axis_name: str | None, **kw) -> BatchNorm:
    """BatchNorm with the library-wide settings (momentum 0.9, eps 1e-5, float32 params)."""
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                     axis_name=axis_name, **kw)


CONV_IMPLS = ("xla", "im2col", "im2col_strided")


def _conv(dtype: Any, conv_impl: str = "xla") -> Callable:
    """Bias-free conv with He (fan_out) init and float32 params, computed as `conv_impl` says:
    'xla' (lax.conv), 'im2col' (every conv as a matmul) or 'im2col_strided' (strided convs only)."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"config.model.conv_impl={conv_impl!r} is not one of {CONV_IMPLS} (or 'auto').")

    def make(features, kernel_size, strides=(1, 1), **kwargs):
        im2col = conv_impl == "im2col" or (conv_impl == "im2col_strided" and max(strides) > 1)
        return nn.Conv(features, kernel_size, strides, use_bias=False, kernel_init=conv_init, dtype=dtype,
                       param_dtype=jnp.float32, conv_general_dilated=im2col_conv if im2col else None, **kwargs)

    return make


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels as one matmul over the stacked windows.

    The same numbers (up to summation order) and parameters as lax.conv. XLA's CPU backend runs strided convs
    and their gradients several times slower than this form (docs/benchmarks.md); other cases fall back to lax.
    """
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if dilated or feature_group_count != 1 or lhs.ndim != 4:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision,
                                            preferred_element_type=preferred_element_type)
    kh, kw, cin, cout = rhs.shape
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
    x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    (sh, sw), (_, height, width, _) = window_strides, x.shape
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    windows = [x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw, :]
               for i in range(kh) for j in range(kw)]
    patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
    return jnp.matmul(patches, rhs.reshape(kh * kw * cin, cout), precision=precision,
                      preferred_element_type=preferred_element_type)


class _Block(nn.Module):
    """Residual block: 'basic' (two 3x3) or 'bottleneck' (1x1-3x3-1x1, expansion 4)."""
    filters: int
    strides: int
    kind: str
    dtype: Any
    bn_axis_name: str | None
    zero_init_residual: bool
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool, num_views: int = 1):
        conv, s = _conv(self.dtype, self.conv_impl), (self.strides, self.strides)
        norm = functools.partial(_batch_norm, train, self.dtype, self.bn_axis_name)
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        if self.kind == "basic":
            y = norm(relu=True)(conv(self.filters, (3, 3), s, padding=1)(x), num_views)
            y = norm(scale_init=last_scale)(conv(self.filters, (3, 3), padding=1)(y), num_views)
        else:
            y = norm(relu=True)(conv(self.filters, (1, 1))(x), num_views)
            y = norm(relu=True)(conv(self.filters, (3, 3), s, padding=1)(y), num_views)
            y = norm(scale_init=last_scale)(conv(4 * self.filters, (1, 1))(y), num_views)
        if x.shape != y.shape:
            x = norm(name="shortcut_bn")(conv(y.shape[-1], (1, 1), s, name="shortcut_conv")(x), num_views)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet backbone returning globally average-pooled features [B, C].

    C = 8*width for basic blocks and 32*width for bottleneck blocks.
    """
    stage_sizes: Sequence[int]
    block: str  # 'basic' | 'bottleneck'
    width: int = 64
    stem: str = "cifar"  # 'cifar' (3x3 s1, no pool) | 'imagenet' (7x7 s2 + 3x3 max-pool s2)
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    zero_init_residual: bool = False
    conv_impl: str = "xla"  # see _conv

    @nn.compact
    def __call__(self, x, train: bool, num_views: int = 1) -> jnp.ndarray:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        x = self._stem(jnp.asarray(x, self.dtype), train, num_views)
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = _Block(self.width * 2 ** i, strides, self.block, self.dtype,
                           self.bn_axis_name, self.zero_init_residual, self.conv_impl,
                           name=f"stage{i + 1}_block{j + 1}")(x, train, num_views)
        return jnp.mean(x, axis=(1, 2))

    def _stem(self, x, train: bool, num_views: int):
        """Input stem: CIFAR (3x3 conv) or ImageNet (7x7/2 conv + 3x3/2 max-pool)."""
        conv = _conv(self.dtype, self.conv_impl)
        if self.stem == "cifar":
            x = conv(self.width, (3, 3), padding=1, name="stem_conv")(x)
        elif self.stem == "imagenet":
            x = conv(self.width, (7, 7), (2, 2), padding=3, name="stem_conv")(x)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        x = _batch_norm(train, self.dtype, self.bn_axis_name, relu=True, name="stem_bn")(x, num_views)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


class MLPHead(nn.Module):
    """Projector / predictor: (Linear-BN-ReLU) x len(hidden_dims), then Linear(output_dim).

    Hidden Linears have no bias (BN follows). With ``hidden_bn=False`` the hidden layers are Linear(with
    bias)-ReLU (MoCo v2's MLP head, solo-learn's MoCo v2+ projector). With ``last_bn`` the final Linear is
    bias-free and followed by an affine-free BN (SimCLR v2 / Barlow Twins style).
    """
    hidden_dims: Sequence[int]
    output_dim: int
    last_bn: bool = False
    hidden_bn: bool = True
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool, num_views: int = 1) -> jnp.ndarray:
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        norm = functools.partial(_batch_norm, train, self.dtype, self.bn_axis_name)
        x = jnp.asarray(x, self.dtype)
        for dim in self.hidden_dims:
            if self.hidden_bn:
                x = norm(relu=True)(dense(dim, use_bias=False)(x), num_views)
            else:
                x = nn.relu(dense(dim)(x))
        x = dense(self.output_dim, use_bias=not self.last_bn)(x)
        if self.last_bn:
            x = norm(use_bias=False, use_scale=False)(x, num_views)
        return x


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, Sec. 3.1 and appendix; official dino/vision_transformer.py
    ``DINOHead``, defaults from main_dino.py): an MLP to a bottleneck, L2-normalisation, then a weight-normalised
    bias-free linear layer to ``out_dim`` prototypes. Same call signature as `MLPHead`, so it can replace it.

    * MLP: ``num_layers`` Linear layers (official ``nlayers=3``), ``in -> hidden_dim (2048) -> ... ->
      bottleneck_dim (256)``, GELU after every one but the last; ``num_layers=1`` is a single Linear to the
      bottleneck. The Linears have biases and are initialised as the official ``_init_weights``: weights
      N(0, 0.02) (timm's ``trunc_normal_(std=.02)`` truncates at +-2 absolute, i.e. 100 std: a plain normal),
      biases 0. GELU is the exact (erf) form, torch's ``nn.GELU()`` default (flax's ``nn.gelu`` defaults to
      the tanh approximation).
    * ``use_bn`` (official ``use_bn_in_head``, default False) puts a BatchNorm after each hidden Linear, before
      its GELU; the library's per-view `BatchNorm` (momentum 0.9 = torch's 0.1, eps 1e-5, synchronised over
      ``bn_axis_name``).
    * The bottleneck is L2-normalised (``F.normalize``, eps 1e-12), in float32.
    * Last layer: ``nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))`` with ``weight_g``
      filled with 1 and, with ``norm_last_layer=True`` (the default), not trained. Here the direction is the
      parameter ``last_layer_v`` [bottleneck_dim, out_dim], normalised along its input axis (each prototype
      column to unit norm) at every call, so the effective weight is ``v / ||v||`` and scaling v changes
      nothing. ``norm_last_layer=False`` adds a trained ``last_layer_g`` [out_dim] (initialised to 1) and
      uses ``g * v / ||v||``. v is initialised as torch's default Linear init, U(+-1/sqrt(bottleneck_dim)):
      the official ``_init_weights`` runs before the last layer is made. The official run also freezes the
      last layer for the first epoch (``freeze_last_layer=1``); that belongs to the train step, not here.
    * ``out_dim``: 65536 in the paper; the official default is also 65536.

    Outputs are cosine similarities (times g): each is in [-1, 1] when ``norm_last_layer``. Params are float32;
    the Linears compute in ``dtype``, the normalisations and the last layer in float32.
    """
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool, num_views: int = 1) -> jnp.ndarray:
        if self.num_layers < 1:
            raise ValueError(f"DINOHead: num_layers={self.num_layers}; need at least 1")
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                                  kernel_init=nn.initializers.normal(0.02), bias_init=nn.initializers.zeros)
        norm = functools.partial(_batch_norm, train, self.dtype, self.bn_axis_name)
        x = jnp.asarray(x, self.dtype)
        for i in range(self.num_layers - 1):
            x = dense(self.hidden_dim, name=f"linear{i + 1}")(x)
            if self.use_bn:
                x = norm(name=f"bn{i + 1}")(x, num_views)
            x = nn.gelu(x, approximate=False)
        x = dense(self.bottleneck_dim, name=f"linear{self.num_layers}")(x)
        x = _unit_rows(x.astype(jnp.float32))
        v = self.param("last_layer_v", _TORCH_LINEAR_INIT, (self.bottleneck_dim, self.out_dim), jnp.float32)
        w = unit_columns(v)
        if not self.norm_last_layer:
            w = w * self.param("last_layer_g", nn.initializers.ones, (self.out_dim,), jnp.float32)
        return x @ w


_TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))


def unit_columns(v):
    """Each column of v [d, K] scaled to unit norm: a weight-normalised layer's weight with g = 1 (torch's
    ``weight_norm(Linear)`` with ``weight_g`` fixed at 1), the prototypes of DINO's and SwAV's heads."""
    return v * lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=0, keepdims=True), 1e-24))


class SwAVHead(nn.Module):
    """SwAV's projection head and prototypes (Caron et al. 2020, Sec. 3.1; solo-learn's swav.py): `MLPHead`
    (Linear-BN-ReLU per hidden layer, then Linear to ``projection_dim``), its output L2-normalised (z), and the
    scores z . c_k against ``num_prototypes`` prototypes c_k of unit norm. Returns (z, scores).

    The prototypes are the parameter ``prototypes_v`` [projection_dim, K], normalised at every call (solo-learn:
    ``weight_norm`` with ``weight_g`` fixed at 1; the official main_swav.py instead renormalises the weight in
    place before each step, which gives the same forward pass and the gradient without its projection on the
    unit sphere). Initialised as torch's default Linear. Float32 after the MLP."""
    hidden_dims: Sequence[int]
    projection_dim: int
    num_prototypes: int
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool, num_views: int = 1):
        z = MLPHead(tuple(self.hidden_dims), self.projection_dim, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                    name="mlp")(x, train, num_views)
        z = _unit_rows(z.astype(jnp.float32))
        v = self.param("prototypes_v", _TORCH_LINEAR_INIT, (self.projection_dim, self.num_prototypes), jnp.float32)
        return z, z @ unit_columns(v)


def _unit_rows(x, eps=1e-12):
    """x / max(||x||, eps) along the last axis (torch's F.normalize)."""
    return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class SSLNet(nn.Module):
    """Backbone + projector (+ optional predictor); all outputs float32.

    Returns {'features': [B, C], 'projection': [B, P]} and, when the net has a predictor
    (``predictor_dim > 0``) and ``use_predictor``, 'prediction': [B, Q] (predictor applied
    to the projection, as in BYOL/SimSiam). With ``num_views=V`` the batch is V views stacked
    along axis 0, each normalised with its own BatchNorm statistics. The backbone is a ResNet or
    a ViT by name (`make_backbone`); the `patch_size`, `vit_*` and `pos_embedding` fields are read
    by ViTs only, `width`, `stem`, `conv_impl` and `zero_init_residual` by ResNets only.
    """
    backbone: str = "resnet18"
    width: int = 64
    stem: str = "cifar"
    projector_hidden: Sequence[int] = (512,)
    projection_dim: int = 128
    projector_last_bn: bool = False
    projector_hidden_bn: bool = True  # BatchNorm after the projector's hidden Linears (MLPHead.hidden_bn)
    predictor_hidden: Sequence[int] = ()
    predictor_dim: int = 0
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    conv_impl: str = "xla"
    zero_init_residual: bool = False
    patch_size: int = 4
    vit_pooling: str = "cls"
    pos_embedding: str = "sincos2d"
    vit_depth: int = 0
    num_prototypes: int = 0  # > 0: a prototype head (`prototype_head`) as the projector, with this many prototypes
    prototype_head: str = "dino"  # with num_prototypes: 'dino' (`DINOHead`) or 'swav' (`SwAVHead`)
    dino_head_bn: bool = False  # BatchNorm after the DINO head's hidden layers (official use_bn_in_head)

    @property
    def has_predictor(self) -> bool:
        return self.predictor_dim > 0

    def _projector(self, name):
        """MLPHead, or with `num_prototypes` > 0 the `prototype_head`: SwAV's (`projector_hidden` its MLP's
        hidden layers, `projection_dim` its z, `num_prototypes` its prototypes) or DINO's (`projector_hidden` its
        hidden layers, all one width, `projection_dim` its bottleneck, `num_prototypes` its weight-normalised last
        layer)."""
        if not self.num_prototypes:
            return MLPHead(tuple(self.projector_hidden), self.projection_dim, last_bn=self.projector_last_bn,
                           hidden_bn=self.projector_hidden_bn, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                           name=name)
        if self.prototype_head not in ("dino", "swav"):
            raise ValueError(f"prototype_head={self.prototype_head!r} is not known; use 'dino' or 'swav'.")
        if self.prototype_head == "swav":
            return SwAVHead(tuple(self.projector_hidden), self.projection_dim, self.num_prototypes, dtype=self.dtype,
                            bn_axis_name=self.bn_axis_name, name=name)
        hidden = tuple(self.projector_hidden)
        if len(set(hidden)) > 1 or self.projector_last_bn:
            raise ValueError(f"config.model.num_prototypes={self.num_prototypes} builds DINO's head, whose hidden "
                             f"layers share one width and end without BatchNorm; got projector_hidden={hidden}, "
                             f"projector_last_bn={self.projector_last_bn}: give equal widths and no last BN.")
        return DINOHead(out_dim=self.num_prototypes, hidden_dim=hidden[0] if hidden else self.projection_dim,
                        bottleneck_dim=self.projection_dim, num_layers=len(hidden) + 1, use_bn=self.dino_head_bn,
                        dtype=self.dtype,
                        bn_axis_name=self.bn_axis_name, name=name)

    @nn.compact
    def __call__(self, x, train: bool, use_predictor: bool = True, num_views: int = 1) -> dict:
        head = functools.partial(MLPHead, dtype=self.dtype, bn_axis_name=self.bn_axis_name)
        feats = make_backbone(
            self.backbone, self.width, self.stem, self.dtype, self.bn_axis_name, conv_impl=self.conv_impl,
            zero_init_residual=self.zero_init_residual, patch_size=self.patch_size, vit_pooling=self.vit_pooling,
            pos_embedding=self.pos_embedding, vit_depth=self.vit_depth, module_name="backbone",
        )(x, train, num_views).astype(jnp.float32)
        proj = self._projector(name="projector")(feats, train, num_views)
        out = {"features": feats, "projection": proj}
        if isinstance(proj, tuple):  # SwAV's head: the unit projection z and its prototype scores
            out.update(embedding=proj[0], projection=proj[1])
        if self.has_predictor and use_predictor:
            out["prediction"] = head(tuple(self.predictor_hidden), self.predictor_dim,
                                     name="predictor")(proj, train, num_views)
        return {k: v.astype(jnp.float32) for k, v in out.items()}


def make_backbone(name: str, width: int = 64, stem: str = "cifar", dtype: Any = jnp.float32,
                  bn_axis_name: str | None = None, *, conv_impl: str = "xla", zero_init_residual: bool = False,
                  patch_size: int = 4, vit_pooling: str = "cls", pos_embedding: str = "sincos2d",
                  vit_depth: int = 0, module_name: str | None = None) -> nn.Module:
    """ResNet ('resnet18' ... 'resnet152') or ViT ('vit_tiny', 'vit_small', 'vit_base') by name.

    ResNets read width, stem, bn_axis_name, conv_impl and zero_init_residual; ViTs read patch_size, vit_pooling,
    pos_embedding and vit_depth (0: the name's 12 blocks, n: n blocks). A ViT given a ResNet-only option fails
    (`check_backbone_options`). `module_name` names the module inside a parent (SSLNet's 'backbone').
    """
    check_backbone_options(name, stem, conv_impl, zero_init_residual)
    if name in vit.VIT_SIZES:
        size = vit.VIT_SIZES[name]
        return vit.ViT(size.dim, int(vit_depth) or size.depth, size.num_heads, size.mlp_dim, int(patch_size),
                       vit_pooling, pos_embedding, dtype=dtype, name=module_name)
    return ResNet(*_arch(name), width=width, stem=stem, dtype=dtype, bn_axis_name=bn_axis_name,
                  conv_impl=conv_impl, zero_init_residual=zero_init_residual, name=module_name)


def check_backbone_options(name: str, stem: str = "cifar", conv_impl: str = "xla",
                           zero_init_residual: bool = False) -> None:
    """One-line ValueError for an unknown backbone name, or a ViT given an option that only ResNets have."""
    if name not in vit.VIT_SIZES:
        _arch(name)
        return
    if zero_init_residual:
        raise ValueError(f"config.model.zero_init_residual=True is a ResNet option; {name} has no BatchNorm "
                         "residual branches to zero: set it to False.")
    if stem != "cifar":
        raise ValueError(f"config.model.stem={stem!r} is a ResNet option; {name} embeds patches instead "
                         "(config.model.patch_size): leave the stem at 'cifar'.")
    if conv_impl not in ("auto", "xla"):
        raise ValueError(f"config.model.conv_impl={conv_impl!r} is a ResNet option; {name} runs its patch "
                         "embedding with XLA's conv: set it to 'auto' or 'xla'.")


def _arch(name: str) -> tuple[tuple[int, ...], str]:
    """(stage_sizes, block kind) for a ResNet name; ValueError naming every known backbone if unknown."""
    if name not in STAGE_SIZES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(STAGE_SIZES) + sorted(vit.VIT_SIZES)}")
    return STAGE_SIZES[name], _BLOCK_KIND.get(name, "bottleneck")


_RESNET_SETTINGS = ("name", "width", "stem")
_VIT_SETTINGS = ("name", "patch_size", "vit_pooling", "pos_embedding", "vit_depth")
_SETTING_FIELDS = {"name": "backbone"}  # config key -> SSLNet field, where they differ


def backbone_settings(model_cfg: Mapping[str, Any]) -> dict:
    """The config keys (with SSLNet's defaults for missing ones) that rebuild the backbone with `make_backbone`:
    name, width and stem for a ResNet; name, patch_size, vit_pooling, pos_embedding and vit_depth for a ViT.
    Initialisation-only and compute-only options (zero_init_residual, conv_impl, dtype) are left out."""
    d = SSLNet.__dataclass_fields__
    keys = _VIT_SETTINGS if model_cfg.get("name", d["backbone"].default) in vit.VIT_SIZES else _RESNET_SETTINGS
    return {k: model_cfg.get(k, d[_SETTING_FIELDS.get(k, k)].default) for k in keys}


def make_ssl_net(model_cfg: Mapping[str, Any], dtype: Any = jnp.float32,
                 bn_axis_name: str | None = None, conv_impl: str | None = None,
                 prototype_head: str = "dino") -> SSLNet:
    """SSLNet from a ConfigDict / mapping (name, width, stem, projector_hidden, projection_dim,
    projector_last_bn, predictor_hidden, predictor_dim, num_prototypes, and for ViTs patch_size, vit_pooling,
    pos_embedding, vit_depth); missing keys take SSLNet's defaults. `prototype_head` ('dino' or 'swav': the
    method's, `methods.Method.prototypes`) is the head built when num_prototypes > 0. Fails here, with one line, on a
    backbone name, ViT setting or ViT-incompatible ResNet option that cannot work."""
    d = SSLNet.__dataclass_fields__
    get = lambda k, field: model_cfg.get(k, d[field].default)  # noqa: E731
    net = SSLNet(
        backbone=get("name", "backbone"),
        width=int(get("width", "width")),
        stem=get("stem", "stem"),
        projector_hidden=tuple(int(h) for h in get("projector_hidden", "projector_hidden")),
        projection_dim=int(get("projection_dim", "projection_dim")),
        projector_last_bn=bool(get("projector_last_bn", "projector_last_bn")),
        projector_hidden_bn=bool(get("projector_hidden_bn", "projector_hidden_bn")),
        predictor_hidden=tuple(int(h) for h in get("predictor_hidden", "predictor_hidden")),
        predictor_dim=int(get("predictor_dim", "predictor_dim")),
        dtype=parse_dtype(dtype) if isinstance(dtype, str) else dtype,
        bn_axis_name=bn_axis_name,
        conv_impl=conv_impl or get("conv_impl", "conv_impl"),
        zero_init_residual=bool(get("zero_init_residual", "zero_init_residual")),
        patch_size=int(get("patch_size", "patch_size")),
        vit_pooling=get("vit_pooling", "vit_pooling"),
        pos_embedding=get("pos_embedding", "pos_embedding"),
        vit_depth=int(get("vit_depth", "vit_depth")),
        num_prototypes=int(get("num_prototypes", "num_prototypes")),
        dino_head_bn=bool(get("dino_head_bn", "dino_head_bn")),
        prototype_head=prototype_head,
    )
    check_backbone_options(net.backbone, net.stem, net.conv_impl, net.zero_init_residual)
    if net.backbone in vit.VIT_SIZES:
        vit.check_settings(net.patch_size, net.vit_pooling, net.pos_embedding)
    return net


_DTYPES = {
    "float32": jnp.float32, "fp32": jnp.float32, "f32": jnp.float32,
    "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
    "float16": jnp.float16, "fp16": jnp.float16, "f16": jnp.float16,
}


def parse_dtype(name: str) -> jnp.dtype:
    """'float32'|'fp32'|'bfloat16'|'bf16'|'float16'|'fp16' -> jnp.dtype; else ValueError."""
    key = str(name).lower()
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {sorted(_DTYPES)}")
    return jnp.dtype(_DTYPES[key])


def count_params(params) -> int:
    """Total number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
