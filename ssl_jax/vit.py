"""Flax linen Vision Transformers (ViT-Ti/S/B) as self-supervised backbones beside the ResNets: images -> [B, D].

The layout of google-research big_vision's `big_vision/models/vit.py` (Beyer et al. 2022) and of DINO's
`vision_transformer.py`: a patch embedding (a p x p convolution of stride p), position embeddings added to the
patch tokens, an optional class token, pre-LayerNorm blocks (multi-head self-attention, then a GELU MLP, each with
a residual connection), a final LayerNorm, and the class token or the average token as the pooled features.
Initialisation as big_vision's: Xavier-uniform attention and MLP kernels, MLP biases N(0, 1e-6), a zero class
token, learned position embeddings N(0, 1/D); the patch embedding keeps flax's LeCun-normal default.

No BatchNorm and no dropout or stochastic depth: `num_views` (views stacked along axis 0) and `train` change
nothing, every token is normalised on its own. Both are accepted so that `models.SSLNet` calls every backbone
alike. Parameters are float32; `dtype` is the compute dtype (softmax and LayerNorm statistics in float32).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ViTSize", "VIT_SIZES", "POOLINGS", "POS_EMBEDDINGS", "ViT", "sincos_2d", "resize_pos_embedding",
           "check_settings"]


@dataclasses.dataclass(frozen=True)
class ViTSize:
    """A ViT's width: token dimension, blocks, attention heads and MLP hidden units."""
    dim: int
    depth: int
    num_heads: int
    mlp_dim: int


# DeiT (Touvron et al. 2021, table 1: Ti 192/3 heads, S 384/6, B 768/12, 12 blocks, MLP ratio 4), the same as
# big_vision's `decode_variant` ("Ti", "S", "B": width, depth, mlp_dim, num_heads).
VIT_SIZES = {
    "vit_tiny": ViTSize(dim=192, depth=12, num_heads=3, mlp_dim=768),
    "vit_small": ViTSize(dim=384, depth=12, num_heads=6, mlp_dim=1536),
    "vit_base": ViTSize(dim=768, depth=12, num_heads=12, mlp_dim=3072),
}
POOLINGS = ("cls", "mean")  # the class token (DeiT, DINO, MoCo v3) or the average token (big_vision's 'gap')
POS_EMBEDDINGS = ("sincos2d", "learned")  # fixed 2-D sin-cos (MoCo v3, big_vision) or trained (ViT, DINO)


def check_settings(patch_size, pooling, pos_embedding):
    """ValueError (one line, naming the config key) for a ViT setting that is not known."""
    if int(patch_size) < 1:
        raise ValueError(f"config.model.patch_size={patch_size} must be a positive number of pixels.")
    if pooling not in POOLINGS:
        raise ValueError(f"config.model.vit_pooling={pooling!r} is not one of {POOLINGS}.")
    if pos_embedding not in POS_EMBEDDINGS:
        raise ValueError(f"config.model.pos_embedding={pos_embedding!r} is not one of {POS_EMBEDDINGS}.")


def sincos_2d(grid_h, grid_w, dim, temperature=10_000.0):
    """Fixed 2-D sin-cos position embeddings [grid_h, grid_w, dim] (MoCo v3; big_vision's `posemb_sincos_2d`).

    A quarter of the channels each holds sin(x w_k), cos(x w_k), sin(y w_k), cos(y w_k) for the token's column x
    and row y, with w_k = temperature^(-k / (dim/4 - 1)), k = 0 .. dim/4 - 1. Built with NumPy: it is a constant.
    """
    if dim % 4 or dim < 8:
        raise ValueError(f"sin-cos position embeddings need a token dimension divisible by 4 (and >= 8), not {dim}.")
    quarter = dim // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / (quarter - 1))
    y, x = np.mgrid[:grid_h, :grid_w]
    x, y = x[..., None] * omega, y[..., None] * omega
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=-1).astype(np.float32)


def resize_pos_embedding(table, grid):
    """A [h, w, D] table of position embeddings resized bilinearly to `grid` (h', w'), as DINO's
    `interpolate_pos_encoding` adapts the table to a crop of another size (half-pixel centres, no antialiasing);
    the table itself where the grid is the same."""
    grid = tuple(grid)
    if tuple(table.shape[:2]) == grid:
        return table
    return jax.image.resize(table, grid + table.shape[2:], method="bilinear", antialias=False)


class _MLP(nn.Module):
    """Dense(mlp_dim) - GELU - Dense(D), big_vision's MlpBlock initialisation."""
    mlp_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                                  kernel_init=nn.initializers.xavier_uniform(),
                                  bias_init=nn.initializers.normal(stddev=1e-6))
        y = nn.gelu(dense(self.mlp_dim)(x), approximate=False)  # exact GELU, as ViT, DeiT and DINO
        return dense(x.shape[-1])(y)


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""
    num_heads: int
    mlp_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32)
        attention = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.initializers.xavier_uniform(), deterministic=True, force_fp32_for_softmax=True,
            name="attention")
        x = x + attention(norm(name="norm1")(x))
        return x + _MLP(self.mlp_dim, self.dtype, name="mlp")(norm(name="norm2")(x))


class ViT(nn.Module):
    """Vision Transformer returning pooled features [B, dim] of NHWC images whose sides `patch_size` divides.

    Tokens: one per p x p patch, (H/p)(W/p) of them, plus the class token when `pooling` is 'cls'. A 'learned'
    position-embedding table has the patch grid of the images it was initialised with; images of another size
    (a smaller local crop) get it resized bilinearly to their grid (`resize_pos_embedding`).
    """
    dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_dim: int = 1536
    patch_size: int = 16
    pooling: str = "cls"
    pos_embedding: str = "sincos2d"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, num_views: int = 1, visible=None, all_tokens: bool = False) -> jnp.ndarray:
        """Pooled features [B, dim]. MAE's encoder (ssl_jax/mae.py) passes `visible` [B, K], the indices of the
        patches each image keeps (row-major over the patch grid): the tokens are gathered after their position
        embeddings are added, so only K patch tokens (+ the class token) enter the blocks; `all_tokens` returns
        every token after the final LayerNorm, [B, (1 +) K, dim], instead of the pooled features."""
        del train, num_views  # see the module docstring
        check_settings(self.patch_size, self.pooling, self.pos_embedding)
        x = self._embed(jnp.asarray(x, self.dtype))
        batch, grid_h, grid_w, dim = x.shape
        x = (x + self._positions(grid_h, grid_w).astype(self.dtype)).reshape(batch, grid_h * grid_w, dim)
        if visible is not None:  # MAE: the visible patches only, each with its own position embedding
            x = jnp.take_along_axis(x, visible[..., None], axis=1)
        if self.pooling == "cls":  # added after the position embeddings, as big_vision (the token has none)
            cls = self.param("cls", nn.initializers.zeros, (1, 1, dim), jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, dim)), x], axis=1)
        for i in range(self.depth):
            x = _Block(self.num_heads, self.mlp_dim, self.dtype, name=f"block{i + 1}")(x)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32, name="encoder_norm")(x)
        if all_tokens:
            return x
        return x[:, 0] if self.pooling == "cls" else jnp.mean(x, axis=1)

    def _embed(self, x):
        """[B, H, W, C] -> patch tokens [B, H/p, W/p, dim]; a one-line ValueError where p does not divide H or W."""
        height, width, p = x.shape[1], x.shape[2], self.patch_size
        if height % p or width % p:
            raise ValueError(f"a {height}x{width} crop does not split into {p}x{p} patches: use crop sizes "
                             f"(config.augment.view1/view2.crop_size) that are multiples of {p}, or a "
                             f"config.model.patch_size that divides {height} and {width}.")
        return nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                       param_dtype=jnp.float32, name="embedding")(x)

    def _positions(self, grid_h, grid_w):
        """Position embeddings [grid_h, grid_w, dim]: the sin-cos constant, or the learned table on this grid."""
        if self.pos_embedding == "sincos2d":
            return jnp.asarray(sincos_2d(grid_h, grid_w, self.dim))
        # The table keeps the grid it was initialised on; flax checks a parameter's shape against its initializer's.
        init_grid = (self.get_variable("params", "pos_embedding").shape[:2]
                     if self.has_variable("params", "pos_embedding") else (grid_h, grid_w))
        table = self.param("pos_embedding", nn.initializers.normal(stddev=self.dim ** -0.5),
                           (*init_grid, self.dim), jnp.float32)
        return resize_pos_embedding(table, (grid_h, grid_w))
