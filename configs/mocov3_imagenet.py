"""MoCo v3 on ImageNet (Chen, Xie & He 2021) with ResNet-50: the official 1000-epoch recipe.

Anchor: 74.6% linear top-1 (facebookresearch/moco-v3 CONFIG.md, ResNet-50, 1000-epoch pre-training; 300 epochs:
72.8%, 100 epochs: 68.9%). No kNN figure is published for it.

Sources, value by value in the comments: CONFIG.md's 1000-epoch command (`--lr=.3 --wd=1.5e-6 --epochs=1000
--moco-m=0.996 --moco-m-cos --crop-min=.2`) and main_moco.py's defaults for the rest (batch 4096, LARS with momentum
0.9 and trust coefficient 0.001, lr x batch/256, 10 warm-up epochs then half-cycle cosine, temperature 1.0,
moco-dim 256, mlp-dim 4096); moco/builder.py's heads (projector Linear-BN-ReLU-Linear-BN without affine, predictor
Linear-BN-ReLU-Linear); main_moco.py's two views (BYOL's: jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale 0.2, blur 1.0 on
the first and 0.1 on the second, solarize 0.2 on the second). moco/optimizer.py's LARS leaves every parameter of
one dimension (biases, BatchNorm) out of weight decay and adaptation, as optim.decay_mask does.

`:in100` is solo-learn's ImageNet-100 recipe (scripts/pretrain/imagenet-100/mocov3.yaml): ResNet-18 (ImageNet stem),
batch 256, 400 epochs, LARS lr 0.3 per 256, weight decay 1e-6, eta 0.02, clip_lr, projector 4096 -> 256, predictor
4096 -> 256, temperature 0.2, tau 0.99 -> 1, asymmetric views: 80.36% online and offline linear top-1 (solo-learn
README).

Differs from the paper: the predictor's output layer has a bias (models.MLPHead; the official Linear layers have
none, the projector's here neither); the host resizes crops bilinearly; the linear figure is the fast probe on at
most eval.streaming_linear_examples train images; the official SGD protocol:
`python -m ssl_jax.evaluate --workdir=RUN --linear_protocol=sgd_augmented`.

    python -m ssl_jax.main --config=configs/mocov3_imagenet.py --config.data.path=/data/imagenet \
        --workdir=/tmp/mocov3_in
    python -m ssl_jax.main --config=configs/mocov3_imagenet.py:in100 --config.data.path=/data/imagenet100 \
        --workdir=/tmp/mocov3_in100
    python -m ssl_jax.main --config=configs/mocov3_imagenet.py:smoke --config.data.path=/tmp/jpegs --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def in100(config):
    """solo-learn's ImageNet-100 MoCo v3 recipe (scripts/pretrain/imagenet-100/mocov3.yaml)."""
    # mocov3.yaml: lr 0.3, weight_decay 1e-6, proj_hidden_dim 4096, proj_output_dim 256, asymmetric.yaml views
    config_lib.solo_learn_imagenet100_recipe(config, base_lr=0.3, weight_decay=1e-6, projector_hidden=(4096,),
                                             projection_dim=256, views="asymmetric")
    config.model.predictor_hidden = (4096,)      # mocov3.yaml pred_hidden_dim 4096
    config.model.predictor_dim = 256
    config.loss.temperature = 0.2                # mocov3.yaml temperature 0.2
    config.ema.base_decay = 0.99                 # mocov3.yaml momentum.base_tau 0.99 (final_tau 1.0)
    config.ema.final_decay = 1.0
    return config


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "moco_v3"
    config_lib.imagenet_recipe(config, backbone="resnet50")  # main_moco.py -a resnet50 (default)
    config.batch_size = 4096                     # main_moco.py --batch-size default 4096 (CONFIG.md: 2 nodes)
    config.num_epochs = 1000                     # CONFIG.md 1000-epoch command --epochs=1000

    config.optimizer.name = "lars"               # main_moco.py --optimizer default 'lars'
    config.optimizer.lr_scaling = "linear"       # main_moco.py: args.lr = args.lr * batch_size / 256
    config.optimizer.base_lr = 0.3               # CONFIG.md 1000-epoch command --lr=.3 (4.8 at 4096)
    config.optimizer.weight_decay = 1.5e-6       # CONFIG.md 1000-epoch command --wd=1.5e-6
    config.optimizer.trust_coefficient = 1e-3    # moco/optimizer.py LARS trust_coefficient 0.001
    config.optimizer.momentum = 0.9              # main_moco.py --momentum 0.9
    config.optimizer.clip_lr = False             # plain LARS
    config.optimizer.warmup_epochs = 10.0        # main_moco.py --warmup-epochs 10, then half-cycle cosine

    config.model.projector_hidden = (4096,)      # builder.py MoCo_ResNet: _build_mlp(2, 2048, mlp_dim 4096, dim)
    config.model.projection_dim = 256            # main_moco.py --moco-dim 256
    config.model.projector_last_bn = True        # builder.py _build_mlp(last_bn=True): BatchNorm1d(affine=False)
    config.model.predictor_hidden = (4096,)      # builder.py predictor _build_mlp(2, dim, mlp_dim, dim, False)
    config.model.predictor_dim = 256

    config.loss = ml_collections.ConfigDict(dict(temperature=1.0))  # main_moco.py --moco-t default 1.0
    config.ema.base_decay = 0.996                # CONFIG.md 1000-epoch command --moco-m=0.996
    config.ema.final_decay = 1.0                 # --moco-m-cos: cosine to 1
    config_lib.byol_imagenet_views(config, crop_scale=(0.2, 1.0))  # main_moco.py augmentation1/2; --crop-min=.2
    return config_lib.finalize(config, arg, in100=in100)
