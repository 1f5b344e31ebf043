"""MAE on CIFAR-10 with a ViT-Small of 4x4 patches (He et al. 2022; solo-learn's CIFAR recipe).

Source: solo-learn's `scripts/pretrain/cifar/mae.yaml` (vturrisi/solo-learn 9187ea3) for the network, the decoder,
the optimizer and the budget; the official facebookresearch/mae `main_pretrain.py` for the augmentation. Every
value carries its source in a comment below.

Backbone: ViT-Small (DeiT's 384-d, 12 blocks; ssl_jax/vit.py), patch 4: a 32x32 image is 8x8 = 64 patches, of which
the encoder sees 16 (mask ratio 0.75) + the class token. One difference from solo-learn's network, kept: its MAE
ViT-Small has 12 attention heads (solo/backbones/vit/vit_mae.py), ours DeiT's 6 (the library's one ViT-Small, so the
exported encoder is the same network as every other ViT config's). Position embeddings: fixed 2-D sin-cos as MAE's,
in big_vision's form (`vit.sincos_2d`), the decoder's too; the class token takes none (MAE's is zero).

Decoder: 512 wide, 8 blocks, 16 heads, MLP ratio 4 (mae.yaml decoder_embed_dim, decoder_depth, decoder_num_heads;
solo/methods/mae.py mlp_ratio=4.0). Loss: MSE on the masked patches, per-patch normalised pixel targets
(norm_pix_loss: True in mae.yaml and in the paper's default).

Published CIFAR figure (anchor): none. solo-learn's README gives MAE only on ImageNet (ViT-B/16, 100 epochs, 81.60%
fine-tuned); its CIFAR-10 table has no MAE row. MAE's paper reports ImageNet only. The learning check: MAE has a
bar of its own, a kNN gain of 2 points and a masked-patch loss that falls by 10% (measured +3.1 and +3.3, -24% and
-26%: docs/learning_check.md, "MAE"). MAE's frozen features are known to be weak under linear probing at small
budgets (the paper's section 5: MAE is built for fine-tuning); kNN/linear here read the encoder unmasked.

    python -m ssl_jax.main --config=configs/mae_cifar.py --workdir=/tmp/mae
    python -m ssl_jax.main --config=configs/mae_cifar.py:smoke --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def mae_view(crop_scale=(0.2, 1.0)):
    """MAE's own augmentation (official main_pretrain.py: RandomResizedCrop(scale=(0.2, 1.0)) and a horizontal flip,
    nothing else). solo-learn's CIFAR reconstruction.yaml crops (0.08, 1.0); the paper's (0.2, 1) is kept here."""
    view = config_lib.view_config(crop_size=32)
    view.crop_scale = tuple(crop_scale)
    view.flip_prob = 0.5                         # main_pretrain.py RandomHorizontalFlip(); reconstruction.yaml 0.5
    view.jitter_prob = 0.0                       # no colour jitter (main_pretrain.py; reconstruction.yaml prob 0)
    view.grayscale_prob = 0.0                    # none (reconstruction.yaml grayscale prob 0)
    view.blur_prob = 0.0                         # none (reconstruction.yaml gaussian_blur prob 0)
    view.solarize_prob = 0.0                     # none (reconstruction.yaml solarization prob 0)
    return view


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "mae"
    config.batch_size = 256                      # mae.yaml optimizer.batch_size 256, devices [0]: one GPU
    config.num_epochs = 1000                     # mae.yaml max_epochs 1000

    config.model.name = "vit_small"              # mae.yaml backbone vit_small (see the docstring: 6 heads here)
    config.model.patch_size = 4                  # mae.yaml backbone.kwargs patch_size 4, img_size 32
    config.model.vit_pooling = "cls"             # solo-learn vit_mae global_pool='token': the class token's output
    config.model.pos_embedding = "sincos2d"      # MAE: fixed 2-D sin-cos position embeddings
    config.model.decoder_dim = 512               # mae.yaml decoder_embed_dim 512
    config.model.decoder_depth = 8               # mae.yaml decoder_depth 8
    config.model.decoder_num_heads = 16          # mae.yaml decoder_num_heads 16
    config.model.decoder_mlp_ratio = 4           # solo/methods/mae.py MAEDecoder mlp_ratio=4.0
    config.model.projector_hidden = ()           # MAE has no projector (the fields are unused; kept empty)

    config.optimizer.name = "adamw"              # mae.yaml optimizer adamw
    config.optimizer.base_lr = 2e-4              # mae.yaml lr 2.0e-4, which solo/args/pretrain.py scales by
    config.optimizer.lr_scaling = "linear"       # batch x devices / 256 = 1 at 256: our linear rule, the same lr
    config.optimizer.weight_decay = 0.05         # mae.yaml weight_decay 0.05
    config.optimizer.b1, config.optimizer.b2 = 0.9, 0.95  # mae.yaml kwargs betas [0.9, 0.95] (MAE paper's too)
    config.optimizer.warmup_epochs = 10.0        # mae.yaml scheduler warmup_cosine, solo-learn's default
                                                 # warmup_epochs 10 (solo/methods/base.py); then cosine to 0

    config.loss = ml_collections.ConfigDict(dict(
        mask_ratio=0.75,                         # mae.yaml mask_ratio 0.75 (the paper's)
        norm_pix_loss=True,                      # mae.yaml norm_pix_loss True (the paper's default)
    ))

    # One crop: MAE reconstructs one view; view2 is the same settings and is never computed (student_crops (0,)).
    config.augment.view1 = mae_view()
    config.augment.view2 = mae_view()
    config = config_lib.finalize(config, arg)
    if arg == "smoke":                           # a decoder as small as the smoke encoder: seconds per step on a CPU
        config.model.decoder_dim = 64
        config.model.decoder_depth = 1
        config.model.decoder_num_heads = 4
        config.model.projector_hidden = ()
    return config
