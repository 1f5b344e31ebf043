"""BYOL on ImageNet (Grill et al. 2020) with ResNet-50: the paper's 1000-epoch recipe.

Anchor: 74.3% linear top-1 (BYOL table 1, ResNet-50 1x, 1000 epochs); DINO's table 2 (the lecture's table) lists
BYOL at 74.4% linear / 64.8% kNN (20-NN), and the official README's released checkpoint "should evaluate to ~74.4%".

Sources, value by value in the comments: the official code (deepmind-research/byol/configs/byol.py, 1000-epoch
presets: LARS base lr 0.2 x batch/256, weight decay 1.5e-6, eta 1e-3, momentum 0.9, 10 warm-up epochs then cosine,
tau 0.996 -> 1, projector and predictor 4096 -> 256; utils/augmentations.py: table 6's views), batch 4096 (paper
section 3.3 and the README: 512 TPU cores, total batch 4096). Biases and BatchNorm parameters are left out of weight
decay and of LARS's trust ratio, as BYOL (section 3.3) and our optimizer (optim.decay_mask) both do.

`:in100` is solo-learn's ImageNet-100 recipe (scripts/pretrain/imagenet-100/byol.yaml): ResNet-18 (ImageNet stem),
batch 256, 400 epochs, LARS lr 0.5 per 256, weight decay 1e-6, eta 0.02, clip_lr, projector 4096 -> 256, predictor
8192 -> 256, tau 0.99 -> 1, its asymmetric views: 80.16% online / 80.32% offline linear top-1 (solo-learn README).

Differs from the paper: the host resizes crops bilinearly (image_folder.py); the linear figure here is the fast
probe on at most eval.streaming_linear_examples train images (config_lib.imagenet_recipe; the paper's SGD
protocol on all of them: `ssl_jax.evaluate --linear_protocol=sgd_augmented`); no Goyal et al. zero-initialised
residual BatchNorm (the README: the paper's results were obtained without it, as here).

    python -m ssl_jax.main --config=configs/byol_imagenet.py --config.data.path=/data/imagenet --workdir=/tmp/byol_in
    python -m ssl_jax.main --config=configs/byol_imagenet.py:in100 --config.data.path=/data/imagenet100 \
        --workdir=/tmp/byol_in100
    python -m ssl_jax.main --config=configs/byol_imagenet.py:smoke --config.data.path=/tmp/jpegs --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def in100(config):
    """solo-learn's ImageNet-100 BYOL recipe (scripts/pretrain/imagenet-100/byol.yaml)."""
    # byol.yaml: lr 0.5, weight_decay 1e-6, proj_hidden_dim 4096, proj_output_dim 256, asymmetric.yaml views
    config_lib.solo_learn_imagenet100_recipe(config, base_lr=0.5, weight_decay=1e-6, projector_hidden=(4096,),
                                             projection_dim=256, views="asymmetric")
    config.model.predictor_hidden = (8192,)      # byol.yaml pred_hidden_dim 8192
    config.model.predictor_dim = 256
    config.ema.base_decay = 0.99                 # byol.yaml momentum.base_tau 0.99 (final_tau 1.0)
    config.ema.final_decay = 1.0
    return config


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "byol"
    config_lib.imagenet_recipe(config, backbone="resnet50")  # ResNet-50 1x, ImageNet stem (BYOL section 3.3)
    config.batch_size = 4096                     # BYOL section 3.3 / README: total batch 4096 on 512 TPU cores
    config.num_epochs = 1000                     # BYOL table 1: 1000 epochs (configs/byol.py presets 40..1000)

    config.optimizer.name = "lars"               # BYOL: LARS (configs/byol.py optimizer_config)
    config.optimizer.lr_scaling = "linear"       # byol_experiment.py: lr = base x batch_size / 256
    config.optimizer.base_lr = 0.2               # configs/byol.py _LR_PRESETS[1000] = 0.2 (3.2 at 4096)
    config.optimizer.weight_decay = 1.5e-6       # configs/byol.py _WD_PRESETS[1000] = 1.5e-6
    config.optimizer.trust_coefficient = 1e-3    # configs/byol.py optimizer_config eta 1e-3
    config.optimizer.momentum = 0.9              # configs/byol.py optimizer_config momentum .9
    config.optimizer.clip_lr = False             # plain LARS (BYOL), not solo-learn's clipped one
    config.optimizer.warmup_epochs = 10.0        # configs/byol.py warmup_steps = 10 epochs, then cosine to 0

    config.model.projector_hidden = (4096,)      # configs/byol.py projector_hidden_size 4096
    config.model.projection_dim = 256            # configs/byol.py projector_output_size 256
    config.model.predictor_hidden = (4096,)      # configs/byol.py predictor_hidden_size 4096
    config.model.predictor_dim = 256             # BYOL: the predictor maps back to the projection size

    config.ema.base_decay = 0.996                # configs/byol.py _EMA_PRESETS[1000] = 0.996 (cosine to 1)
    config.ema.final_decay = 1.0
    config_lib.byol_imagenet_views(config)       # BYOL table 6 / utils/augmentations.py, crop scale (0.08, 1)

    config.loss = ml_collections.ConfigDict()    # byol_loss takes no coefficients
    return config_lib.finalize(config, arg, in100=in100)
