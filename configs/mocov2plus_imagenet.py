"""MoCo v2 on ImageNet (Chen, Fan, Girshick & He 2020) with ResNet-50: the official 800-epoch recipe, trained by
our `moco_v2_plus` method (solo-learn's symmetrised MoCo v2+).

Anchor: 71.1% linear top-1 (facebookresearch/moco README, MoCo v2, 800 epochs, mlp + aug+ + cos; 200 epochs:
67.7%); DINO's table 2 (the lecture's table) lists MoCo v2 at 71.1% linear / 61.9% kNN (20-NN).

Sources, value by value in the comments: the official README's MoCo v2 command (`main_moco.py -a resnet50 --lr
0.03 --batch-size 256 --mlp --moco-t 0.2 --aug-plus --cos`, 800 epochs for the 71.1% model) and main_moco.py's
defaults (SGD momentum 0.9, weight decay 1e-4, queue --moco-k 65536, key-encoder momentum --moco-m 0.999, output
--moco-dim 128, a cosine over the epochs without warm-up); moco/builder.py's --mlp head (Linear 2048-ReLU-Linear, no
BatchNorm); aug-plus: crop (0.2, 1), jitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale 0.2, blur p=0.5 sigma [0.1, 2],
flip.

`:in100` is solo-learn's ImageNet-100 MoCo v2+ recipe (scripts/pretrain/imagenet-100/mocov2plus.yaml): ResNet-18
(ImageNet stem), batch 256, 400 epochs, SGD lr 0.3 per 256, weight decay 1e-4, projector 2048 -> 256, queue 65,536,
temperature 0.2, tau 0.99 -> 0.999, symmetric_weak views (blur 0.5): 78.20% online / 79.28% offline linear top-1
(solo-learn README).

Differs from the paper: the loss is solo-learn's symmetrised MoCo v2+ (both views as queries, a queue of keys per
view: losses.moco_v2_loss; the official code contrasts one query view against one key view and one queue); no
shuffled BatchNorm (the official key encoder shuffles its batch across GPUs; BatchNorm is synchronised here, as
solo-learn); weight decay leaves biases and BatchNorm parameters alone (optim.decay_mask; the official SGD decays
every parameter); the host resizes crops bilinearly; the linear figure is the fast probe on at most
eval.streaming_linear_examples train images (the SGD protocol: `ssl_jax.evaluate --linear_protocol=sgd_augmented`).

    python -m ssl_jax.main --config=configs/mocov2plus_imagenet.py --config.data.path=/data/imagenet \
        --workdir=/tmp/mocov2_in
    python -m ssl_jax.main --config=configs/mocov2plus_imagenet.py:in100 --config.data.path=/data/imagenet100 \
        --workdir=/tmp/mocov2plus_in100
    python -m ssl_jax.main --config=configs/mocov2plus_imagenet.py:smoke --config.data.path=/tmp/jpegs \
        --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def in100(config):
    """solo-learn's ImageNet-100 MoCo v2+ recipe (scripts/pretrain/imagenet-100/mocov2plus.yaml)."""
    # mocov2plus.yaml: lr 0.3, weight_decay 1e-4, proj_hidden_dim 2048, proj_output_dim 256, symmetric_weak views
    config_lib.solo_learn_imagenet100_recipe(config, base_lr=0.3, weight_decay=1e-4, projector_hidden=(2048,),
                                             projection_dim=256, views="symmetric_weak")
    config.optimizer.name = "sgd"                # mocov2plus.yaml optimizer sgd (no LARS kwargs)
    config.optimizer.clip_lr = False
    config.loss.temperature = 0.2                # mocov2plus.yaml temperature 0.2
    config.loss.queue_size = 65536               # mocov2plus.yaml queue_size 65536
    config.ema.base_decay = 0.99                 # mocov2plus.yaml momentum.base_tau 0.99
    config.ema.final_decay = 0.999               # mocov2plus.yaml momentum.final_tau 0.999
    return config


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "moco_v2_plus"
    config_lib.imagenet_recipe(config, backbone="resnet50")  # README: main_moco.py -a resnet50
    config.batch_size = 256                      # README: --batch-size 256 (8 GPUs)
    config.num_epochs = 800                      # README models table: the 71.1% model, 800 epochs

    config.optimizer.name = "sgd"                # main_moco.py torch.optim.SGD
    config.optimizer.lr_scaling = "linear"       # README: "linear lr scaling recipe" (0.015 at batch 128)
    config.optimizer.base_lr = 0.03              # README: --lr 0.03 at batch 256
    config.optimizer.weight_decay = 1e-4         # main_moco.py --wd default 1e-4
    config.optimizer.momentum = 0.9              # main_moco.py --momentum default 0.9
    config.optimizer.warmup_epochs = 0.0         # main_moco.py --cos: lr x 0.5 (1 + cos(pi epoch / epochs)), no warm-up

    config.model.projector_hidden = (2048,)      # builder.py --mlp: Linear(2048, 2048), ReLU, Linear(2048, dim)
    config.model.projection_dim = 128            # main_moco.py --moco-dim default 128
    config.model.projector_hidden_bn = False     # builder.py --mlp head: no BatchNorm

    config.loss = ml_collections.ConfigDict(dict(
        temperature=0.2,                         # README MoCo v2: --moco-t 0.2
        queue_size=65536,                        # main_moco.py --moco-k default 65536
    ))
    config.ema.base_decay = 0.999                # main_moco.py --moco-m default 0.999, constant
    config.ema.final_decay = 0.999
    config_lib.simclr_imagenet_views(config, color_strength=0.5, crop_scale=(0.2, 1.0))  # main_moco.py aug-plus
    return config_lib.finalize(config, arg, in100=in100)
