"""MAE's network pieces (He et al. 2022): per-example random masking, patchify, the decoder and the MAE network.

Layout of the official facebookresearch/mae `models_mae.py` and of solo-learn's `solo/methods/mae.py` (its CIFAR
recipe, configs/mae_cifar.py):
- `random_masking`: per image, uniform noise over the L patches, argsort, keep the first int(L (1 - ratio)) (the
  official `random_masking`); the noise of each image comes from the step's key folded with the image's GLOBAL
  index, so the masks do not depend on how the batch is split over devices;
- the encoder is the plain `vit.ViT` (the same parameters, exported and evaluated as any ViT backbone): position
  embeddings are added to every patch token, then only the visible ones (+ the class token) enter the blocks;
- `MAEDecoder`: Dense to the decoder width, a learned mask token put at every masked position and the tokens
  unshuffled to the patch grid's order, fixed 2-D sin-cos position embeddings of its own (`vit.sincos_2d`; the class
  token gets none), `depth` pre-LayerNorm blocks, a LayerNorm and Dense to p*p*3 pixels per patch;
- `MAENet`: encoder + decoder. Called as any network of the library (`models.SSLNet`'s signature) it returns the
  UNMASKED encoder's features, which the frozen-feature evaluation and the online probe at evaluation read;
  `MAENet.reconstruct` is the masked pass the method's forward (methods.METHODS['mae']) runs in training.

The loss (`losses.mae_loss`) is the mean squared error on the masked patches of the per-patch-normalised pixels.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax import vit

__all__ = ["check_mask_ratio", "num_visible", "random_masking", "patchify", "unpatchify", "MAEDecoder", "MAENet",
           "make_mae_net"]


def check_mask_ratio(mask_ratio):
    """One-line ValueError for a mask ratio that does not leave both visible and masked patches."""
    if not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"config.loss.mask_ratio={mask_ratio} is outside (0, 1): MAE masks that fraction of each "
                         "image's patches and must keep some; use e.g. 0.75 (the paper's).")


def num_visible(num_patches, mask_ratio):
    """Patches an image keeps: int(L (1 - ratio)) as the official `random_masking` (48 of 64 masked at 0.75)."""
    check_mask_ratio(mask_ratio)
    return int(num_patches * (1 - mask_ratio))


def random_masking(key, global_index, num_patches, mask_ratio):
    """Each image's mask from `key` folded with its `global_index` [B]: returns (visible [B, K] int32, the kept
    patches' indices in the order the encoder sees them; restore [B, L], the position of each patch in the
    shuffled order (`jnp.take_along_axis(shuffled, restore)` unshuffles); mask [B, L] float32, 1 = masked)."""
    keep = num_visible(num_patches, mask_ratio)
    noise = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (num_patches,)))(global_index)
    shuffle = jnp.argsort(noise, axis=1)  # ascending: the smallest noise is kept
    restore = jnp.argsort(shuffle, axis=1)
    mask = (restore >= keep).astype(jnp.float32)
    return shuffle[:, :keep].astype(jnp.int32), restore.astype(jnp.int32), mask


def patchify(images, patch_size):
    """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C], patches row-major over the grid, pixels (row, column, channel) in
    each: the official `patchify` ('nchpwq->nhwpqc') in NHWC, the ViT's token order."""
    batch, height, width, channels = images.shape
    p = patch_size
    x = images.reshape(batch, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify(patches, patch_size, grid_h, grid_w, channels=3):
    """The inverse of `patchify`: [B, grid_h * grid_w, p*p*C] -> [B, grid_h p, grid_w p, C]."""
    p = patch_size
    x = patches.reshape(patches.shape[0], grid_h, grid_w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(patches.shape[0], grid_h * p, grid_w * p, channels)


_dense = functools.partial(nn.Dense, param_dtype=jnp.float32, kernel_init=nn.initializers.xavier_uniform(),
                           bias_init=nn.initializers.zeros)  # the official _init_weights: Xavier-uniform, zero bias


class MAEDecoder(nn.Module):
    """MAE's decoder: visible tokens [B, (1 +) K, D_enc] (the class token first where `has_cls`), `restore` [B, L]
    and the patch `grid` (h, w), h w = L -> pixel predictions [B, L, patch_pixels] of every patch (the class
    token's dropped)."""
    dim: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_dim: int = 2048
    patch_pixels: int = 48
    has_cls: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, restore, grid):
        x = _dense(self.dim, dtype=self.dtype, name="embed")(jnp.asarray(tokens, self.dtype))
        cls, x = (x[:, :1], x[:, 1:]) if self.has_cls else (None, x)
        batch, num_patches = restore.shape
        # official: trunc_normal(std=.02), i.e. normal(std=.02) at timm's cutoff of 2 (solo-learn's comment)
        mask_token = self.param("mask_token", nn.initializers.normal(stddev=0.02), (1, 1, self.dim), jnp.float32)
        fill = jnp.broadcast_to(mask_token.astype(self.dtype), (batch, num_patches - x.shape[1], self.dim))
        x = jnp.take_along_axis(jnp.concatenate([x, fill], axis=1), restore[..., None], axis=1)  # unshuffle
        x = x + jnp.asarray(vit.sincos_2d(*grid, self.dim)).reshape(1, num_patches, self.dim).astype(self.dtype)
        if cls is not None:  # the class token takes no position embedding (the official's is zero)
            x = jnp.concatenate([cls, x], axis=1)
        for i in range(self.depth):
            x = vit._Block(self.num_heads, self.mlp_dim, self.dtype, name=f"block{i + 1}")(x)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32, name="norm")(x)
        x = _dense(self.patch_pixels, dtype=self.dtype, name="pred")(x)
        return (x[:, 1:] if cls is not None else x).astype(jnp.float32)


class MAENet(nn.Module):
    """The ViT encoder (parameters 'backbone', exactly `vit.ViT`'s: `checkpoint.export_encoder` exports it as any
    ViT backbone) and MAE's decoder ('decoder').

    `__call__(x, train, use_predictor, num_views)` -> {'features': [B, D]} of the whole image (no masking): what
    evaluation and the library's other callers see. `reconstruct(x, visible, restore)` -> {'features': the pooled
    features of the visible patches (the online probe's, as solo-learn's), 'prediction': [B, L, p*p*3]}."""
    backbone: Any
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @property
    def patch_size(self):
        return self.backbone.patch_size

    def setup(self):  # the backbone, a field, is this module's child 'backbone'
        p = self.patch_size
        self.decoder = MAEDecoder(self.decoder_dim, self.decoder_depth, self.decoder_num_heads,
                                  self.decoder_mlp_ratio * self.decoder_dim, p * p * 3,
                                  has_cls=self.backbone.pooling == "cls", dtype=self.dtype)

    def __call__(self, x, train: bool = False, use_predictor: bool = True, num_views: int = 1):
        del use_predictor
        features = self.backbone(x, train, num_views)
        if self.is_initializing():  # make the decoder's parameters too: the masked pass on the first patches
            num_patches = (x.shape[1] // self.patch_size) * (x.shape[2] // self.patch_size)
            keep = max(1, num_patches // 4)
            index = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (x.shape[0], num_patches))
            self.reconstruct(x, index[:, :keep], index)
        return {"features": features.astype(jnp.float32)}

    def reconstruct(self, x, visible, restore):
        tokens = self.backbone(x, True, visible=visible, all_tokens=True)
        pooled = tokens[:, 0] if self.backbone.pooling == "cls" else jnp.mean(tokens, axis=1)
        grid = (x.shape[1] // self.patch_size, x.shape[2] // self.patch_size)
        return {"features": pooled.astype(jnp.float32), "prediction": self.decoder(tokens, restore, grid)}


def make_mae_net(model_cfg, dtype=jnp.float32, bn_axis_name=None, conv_impl=None, prototype_head=None):
    """MAENet from config.model: the ViT backbone `models.make_ssl_net` would build (name, patch_size, vit_pooling,
    pos_embedding, vit_depth) and the decoder's decoder_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio.
    The other arguments are `make_ssl_net`'s, ignored (a ViT has no BatchNorm; MAE no heads)."""
    from ssl_jax import models  # models imports vit; kept local so this module stays importable alone

    del bn_axis_name, prototype_head
    get = model_cfg.get
    name = get("name", "vit_small")
    if name not in vit.VIT_SIZES:
        raise ValueError(f"config.model.name={name!r}: MAE masks a ViT's patches; use one of "
                         f"{sorted(vit.VIT_SIZES)}.")
    dtype = models.parse_dtype(dtype) if isinstance(dtype, str) else dtype
    settings = models.backbone_settings(model_cfg)
    backbone = models.make_backbone(settings.pop("name"), dtype=dtype, conv_impl=conv_impl or "xla", **settings)
    vit.check_settings(backbone.patch_size, backbone.pooling, backbone.pos_embedding)
    return MAENet(backbone, decoder_dim=int(get("decoder_dim", 512)), decoder_depth=int(get("decoder_depth", 8)),
                  decoder_num_heads=int(get("decoder_num_heads", 16)),
                  decoder_mlp_ratio=int(get("decoder_mlp_ratio", 4)), dtype=dtype)
