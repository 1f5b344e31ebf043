"""SwAV on ImageNet (Caron et al. 2020) with ResNet-50: the official 800-epoch multi-crop recipe.

Anchor: 75.3% linear top-1 (facebookresearch/swav README: 800 epochs, batch 4096, 2x224 + 6x96); DINO's table 2
(the lecture's table) lists SwAV at 75.3% linear / 65.7% kNN (20-NN).

Sources, value by value in the comments: scripts/swav_800ep_pretrain.sh (--nmb_crops 2 6 --size_crops 224 96
--min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14 --temperature 0.1 --epsilon 0.05 --sinkhorn_iterations 3
--feat_dim 128 --nmb_prototypes 3000 --queue_length 0 --epochs 800 --batch_size 64 on 64 GPUs = 4096 --base_lr 4.8
--final_lr 0.0048 --freeze_prototypes_niters 313 --wd 0.000001 --warmup_epochs 10 --start_warmup 0.3), main_swav.py
(SGD + LARC with trust coefficient 0.001 and no clipping, --hidden_mlp 2048), src/multicropdataset.py (every crop:
flip, SimCLR's colour distortion at strength 1 = jitter 0.8/0.8/0.8/0.2 with p=0.8 and grayscale 0.2, blur p=0.5
with radius in [0.1, 2]). The 800-epoch run at batch 4096 has no queue: the README's queue of 3840 from epoch 15 is
its single-node recipe at batch 256 (the `:in100` recipe keeps solo-learn's).

`:in100` is solo-learn's ImageNet-100 recipe (scripts/pretrain/imagenet-100/swav.yaml): ResNet-18 (ImageNet stem),
batch 256, 400 epochs, LARS lr 0.6 per 256, weight decay 1e-6, eta 0.02, clip_lr, projector 2048 -> 128, 3000
prototypes, temperature 0.1, a queue of 3840 from epoch 50, symmetric views (two 224 crops, no multi-crop): 74.04%
online / 74.28% offline linear top-1 (solo-learn README).

Differs from the paper: the prototypes stay frozen for 2 epochs (methods.METHODS['swav'], solo-learn's
freeze_prototypes_epochs; main_swav.py: 313 iterations, about 1 epoch at batch 4096); LARC adapts and decays every
parameter in main_swav.py, biases and BatchNorm parameters included, where ours leaves them out (optim.decay_mask);
the warm-up starts at 0 (main_swav.py: 0.3) and the cosine ends at 0 (0.0048); the host resizes crops bilinearly;
the linear figure is the fast probe on at most eval.streaming_linear_examples train images (the SGD protocol:
`ssl_jax.evaluate --linear_protocol=sgd_augmented`).

    python -m ssl_jax.main --config=configs/swav_imagenet.py --config.data.path=/data/imagenet --workdir=/tmp/swav_in
    python -m ssl_jax.main --config=configs/swav_imagenet.py:in100 --config.data.path=/data/imagenet100 \
        --workdir=/tmp/swav_in100
    python -m ssl_jax.main --config=configs/swav_imagenet.py:smoke --config.data.path=/tmp/jpegs --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def in100(config):
    """solo-learn's ImageNet-100 SwAV recipe (scripts/pretrain/imagenet-100/swav.yaml)."""
    # swav.yaml: lr 0.6, weight_decay 1e-6, proj_hidden_dim 2048, proj_output_dim 128, symmetric.yaml views
    config_lib.solo_learn_imagenet100_recipe(config, base_lr=0.6, weight_decay=1e-6, projector_hidden=(2048,),
                                             projection_dim=128, views="symmetric")
    config.augment.local_crops.count = 0         # symmetric.yaml num_crops 2: no multi-crop
    config.loss.queue_size = 3840                # swav.yaml queue_size 3840 (15 global batches of 256)
    config.loss.queue_start_epochs = 50.0        # swav.yaml epoch_queue_starts 50
    return config


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "swav"
    config_lib.imagenet_recipe(config, backbone="resnet50")  # swav_800ep_pretrain.sh --arch resnet50
    config.batch_size = 4096                     # swav_800ep_pretrain.sh --batch_size 64 per GPU x 64 GPUs
    config.num_epochs = 800                      # swav_800ep_pretrain.sh --epochs 800

    config.optimizer.name = "lars"               # main_swav.py: SGD wrapped in LARC
    config.optimizer.lr_scaling = "linear"       # our rule; 0.3 x 4096/256 = the script's --base_lr 4.8
    config.optimizer.base_lr = 0.3
    config.optimizer.weight_decay = 1e-6         # swav_800ep_pretrain.sh --wd 0.000001
    config.optimizer.trust_coefficient = 1e-3    # main_swav.py LARC(trust_coefficient=0.001, clip=False)
    config.optimizer.momentum = 0.9              # main_swav.py SGD momentum 0.9
    config.optimizer.clip_lr = False             # LARC clip=False
    config.optimizer.warmup_epochs = 10.0        # swav_800ep_pretrain.sh --warmup_epochs 10, then cosine

    config.model.projector_hidden = (2048,)      # main_swav.py --hidden_mlp 2048 (Linear-BN-ReLU-Linear)
    config.model.projection_dim = 128            # swav_800ep_pretrain.sh --feat_dim 128
    config.model.num_prototypes = 3000           # swav_800ep_pretrain.sh --nmb_prototypes 3000

    # src/multicropdataset.py: the same colour distortion (strength 1) and blur (p=0.5) on every crop
    config_lib.simclr_imagenet_views(config, color_strength=1.0, crop_scale=(0.14, 1.0))  # 2 x 224, (0.14, 1)
    config.augment.local_crops = config_lib.local_crops_config(
        6,                                       # --nmb_crops 2 6
        crop_size=config_lib.IMAGENET_LOCAL_CROP_SIZE,  # --size_crops 224 96
        crop_scale=(0.05, 0.14),                 # --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14
        color_strength=1.0, blur_prob=config_lib.IMAGENET_BLUR_PROB)

    config.loss = ml_collections.ConfigDict(dict(
        temperature=0.1,                         # swav_800ep_pretrain.sh --temperature 0.1
        epsilon=0.05,                            # --epsilon 0.05
        sinkhorn_iterations=3,                   # --sinkhorn_iterations 3
        queue_size=0,                            # --queue_length 0: no queue at batch 4096
        queue_start_epochs=15.0,                 # main_swav.py --epoch_queue_starts default 15 (unused at queue 0)
    ))
    return config_lib.finalize(config, arg, in100=in100)
