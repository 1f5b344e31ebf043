"""DINO on ImageNet (Caron et al. 2021) with ViT-S/16: the recipe of the released 800-epoch ViT-S/16.

Anchor: 77.0% linear / 74.5% kNN (20-NN) top-1 (DINO table 2 and the official README's pretrained ViT-S/16; the
lecture's table); DINO on ResNet-50 reaches 75.3% / 67.5% (same table; not this config).

Sources, value by value in the comments: the paper's implementation details ("Implementation and evaluation
protocols": AdamW, batch 1024 on 16 GPUs for ViT-S/16, lr 0.0005 x batch/256 after 10 linear warm-up epochs then
cosine, weight decay cosine 0.04 -> 0.4, student temperature 0.1, teacher temperature 0.04 -> 0.07 linearly over the
first 30 epochs, centre momentum 0.9, teacher momentum 0.996 -> 1 by a cosine, BYOL's augmentations with
multi-crop); main_dino.py (DINOHead: hidden 2048, 3 layers, bottleneck 256, out_dim 65536, no BatchNorm; the class
token as the feature; learned position embeddings interpolated for the local crops; DataAugmentationDINO: global
crop 1 blurred always, global crop 2 blurred with p=0.1 and solarized with p=0.2, local crops blurred with p=0.5,
BYOL's jitter on all; the last layer frozen for the first epoch); the released model's args.txt for the run length
and crops (800 epochs, 10 local crops, global scale (0.25, 1), local scale (0.05, 0.25);
dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/args.txt, not readable from here: the crop values as lightly's
DINO benchmark quotes that file). main_dino.py's own defaults, for a shorter run: 100 epochs, 8 local crops, global
(0.4, 1), local (0.05, 0.4) (README: 74.0% linear / 69.3% kNN).

`:in100` is solo-learn's ImageNet-100 ViT recipe (scripts/pretrain/imagenet-100/dino_vit.yaml): ViT-Tiny/16, batch
256, 400 epochs, AdamW lr 0.005 per 256, weight decay 1e-4, head 2048-2048 -> 256 -> 65,536 prototypes, tau 0.9995,
two 224 crops of its asymmetric views (no multi-crop), teacher temperature 0.07 from the start (solo-learn's default
warm-up of 0 epochs): 63.04% online linear top-1 (solo-learn README).

Differs from the paper (settings our framework lacks): the weight decay is constant at 0.04 (official cosine to 0.4;
optimizer.weight_decay has no schedule); no stochastic depth (main_dino.py drop_path_rate 0.1); no gradient clipping
(main_dino.py clip_grad 3.0 by default); the last layer is weight-normalised with its norm fixed (DINOHead
norm_last_layer=True, no config key; the README's boosted ViT-S run and solo-learn's dino_vit.yaml train it
unnormalised, --norm_last_layer false); the cosine ends at 0 (main_dino.py min_lr 1e-6) and solo-learn's warm-up
starts at 0 (its warmup_start_lr 1e-5); the host resizes crops bilinearly (main_dino.py: bicubic); the linear figure
is the fast probe on at most eval.streaming_linear_examples train images (the SGD protocol: `ssl_jax.evaluate
--linear_protocol=sgd_augmented`).

    python -m ssl_jax.main --config=configs/dino_imagenet.py --config.data.path=/data/imagenet --workdir=/tmp/dino_in
    python -m ssl_jax.main --config=configs/dino_imagenet.py:in100 --config.data.path=/data/imagenet100 \
        --workdir=/tmp/dino_in100
    python -m ssl_jax.main --config=configs/dino_imagenet.py:smoke --config.data.path=/tmp/jpegs --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def dino_view(blur_prob, solarize_prob=0.0, crop_scale=(0.25, 1.0), crop_size=config_lib.IMAGENET_CROP_SIZE):
    """main_dino.py DataAugmentationDINO: flip, BYOL's jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale p=0.2, then
    Gaussian blur (and solarize on the second global crop)."""
    return config_lib.byol_view_config(blur_prob=blur_prob, solarize_prob=solarize_prob, crop_scale=crop_scale,
                                       crop_size=crop_size)


def in100(config):
    """solo-learn's ImageNet-100 DINO ViT recipe (scripts/pretrain/imagenet-100/dino_vit.yaml)."""
    # dino_vit.yaml proj_hidden_dim 2048, proj_output_dim 256; asymmetric.yaml views (two 224 crops)
    config_lib.solo_learn_imagenet100_recipe(config, base_lr=0.005, weight_decay=1e-4,
                                             projector_hidden=(2048, 2048), projection_dim=256, views="asymmetric")
    config.model.name = "vit_tiny"               # dino_vit.yaml backbone vit_tiny (solo-learn: patch 16)
    config.model.stem = "cifar"                  # a ViT has no stem (models.check_backbone_options)
    config.model.patch_size = 16
    config.model.num_prototypes = 65536          # dino_vit.yaml num_prototypes 65536
    config.optimizer.name = "adamw"              # dino_vit.yaml optimizer adamw (no LARS kwargs)
    config.optimizer.clip_lr = False
    config.optimizer.b1, config.optimizer.b2 = 0.9, 0.999  # torch AdamW defaults
    config.augment.local_crops.count = 0         # asymmetric.yaml: one crop of each view, no multi-crop
    config.loss.warmup_teacher_temperature_epochs = 0.0  # solo/methods/dino.py default 0
    config.ema.base_decay = 0.9995               # dino_vit.yaml momentum.base_tau 0.9995 (final_tau 1.0)
    config.ema.final_decay = 1.0
    return config


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "dino"
    config_lib.imagenet_recipe(config, backbone="vit_small")  # main_dino.py --arch vit_small (DeiT-S: 384-d, 6 heads)
    config.model.patch_size = 16                 # main_dino.py --patch_size 16
    config.model.vit_pooling = "cls"             # DINO: the class token's output is the feature
    config.model.pos_embedding = "learned"       # DINO: learned, interpolated for the local crops' grid
    config.batch_size = 1024                     # DINO implementation details: 1024 on 16 GPUs (ViT-S/16)
    config.num_epochs = 800                      # released ViT-S/16 args.txt: 800 epochs (main_dino.py default 100)

    config.model.projector_hidden = (2048, 2048)  # main_dino.py DINOHead hidden_dim 2048, nlayers 3
    config.model.projection_dim = 256            # DINOHead bottleneck_dim 256
    config.model.num_prototypes = 65536          # main_dino.py --out_dim 65536
    config.model.dino_head_bn = False            # main_dino.py --use_bn_in_head False

    config.optimizer.name = "adamw"              # main_dino.py --optimizer adamw
    config.optimizer.lr_scaling = "linear"       # DINO: lr = 0.0005 x batch/256
    config.optimizer.base_lr = 5e-4              # main_dino.py --lr 0.0005
    config.optimizer.weight_decay = 0.04         # main_dino.py --weight_decay 0.04 (cosine to 0.4: not here)
    config.optimizer.warmup_epochs = 10.0        # main_dino.py --warmup_epochs 10
    config.optimizer.b1, config.optimizer.b2 = 0.9, 0.999  # torch AdamW defaults, which main_dino.py keeps

    config.loss = ml_collections.ConfigDict(dict(
        student_temperature=0.1,                 # DINO implementation details: tau_s 0.1
        teacher_temperature=0.07,                # DINO: tau_t 0.04 -> 0.07 (README's boosted run too)
        warmup_teacher_temperature=0.04,         # main_dino.py --warmup_teacher_temp 0.04
        warmup_teacher_temperature_epochs=30.0,  # DINO implementation details: first 30 epochs
        center_momentum=0.9,                     # DINO: centre momentum m = 0.9
    ))
    config.ema.base_decay = 0.996                # main_dino.py --momentum_teacher 0.996 (cosine to 1)
    config.ema.final_decay = 1.0

    # Global crops of 224 at (0.25, 1) and 10 local crops of 96 at (0.05, 0.25): the released run's args.txt (as
    # quoted by lightly); main_dino.py's defaults are (0.4, 1), 8 x (0.05, 0.4).
    config.augment.view1 = dino_view(blur_prob=1.0)                      # global_transfo1: GaussianBlur(1.0)
    config.augment.view2 = dino_view(blur_prob=0.1, solarize_prob=0.2)   # global_transfo2: blur 0.1, solarize 0.2
    local = dino_view(blur_prob=0.5, crop_scale=(0.05, 0.25),            # local_transfo: GaussianBlur(p=0.5)
                      crop_size=config_lib.IMAGENET_LOCAL_CROP_SIZE)     # RandomResizedCrop(96)
    local.count = 10                             # args.txt local_crops_number 10 (main_dino.py default 8)
    config.augment.local_crops = local
    return config_lib.finalize(config, arg, in100=in100)
