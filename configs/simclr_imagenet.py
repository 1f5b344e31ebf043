"""SimCLR on ImageNet (Chen et al. 2020) with ResNet-50: the paper's 1000-epoch recipe.

Anchor: 69.3% linear top-1 (SimCLR table 6, ResNet-50 1x, 1000 epochs; the official README's released
checkpoint: 69.1%). No kNN figure is published for it.

Sources, value by value in the comments: the paper's section 2.2 (LARS at every batch size, global BatchNorm over
the devices) and its default setting (section 2.3: lr 4.8 = 0.3 x batch/256, weight decay 1e-6, batch 4096, 10
warm-up epochs then cosine decay without restarts), appendix A's augmentation (crop (0.08, 1) + flip, colour
strength 1.0, blur with p=0.5 and sigma in [0.1, 2.0]), its 2-layer projection head with a 128-d output, and the
official README's ImageNet command (google-research/simclr: --train_batch_size=4096 --temperature=0.1; learning rate
0.3 with linear scaling). LARS leaves BatchNorm parameters and biases out of weight decay and adaptation
(lars_optimizer.py exclude_from_weight_decay / exclude_from_layer_adaptation), as optim.decay_mask does.

`:in100` is solo-learn's ImageNet-100 recipe (scripts/pretrain/imagenet-100/simclr.yaml): ResNet-18 (ImageNet stem),
batch 256, 400 epochs, LARS lr 0.3 per 256, weight decay 1e-4, eta 0.02, clip_lr, projector 4096 -> 512,
temperature 0.2, symmetric views (SimCLR's, blur 0.5): 77.64% online linear top-1 (solo-learn README).

Differs from the paper: the host resizes crops bilinearly (image_folder.py); the linear figure here is the fast
probe on at most eval.streaming_linear_examples train images; the paper's SGD protocol:
`python -m ssl_jax.evaluate --workdir=RUN --linear_protocol=sgd_augmented`.

    python -m ssl_jax.main --config=configs/simclr_imagenet.py --config.data.path=/data/imagenet \
        --workdir=/tmp/simclr_in
    python -m ssl_jax.main --config=configs/simclr_imagenet.py:in100 --config.data.path=/data/imagenet100 \
        --workdir=/tmp/simclr_in100
    python -m ssl_jax.main --config=configs/simclr_imagenet.py:smoke --config.data.path=/tmp/jpegs --workdir=/tmp/smoke
"""
from ssl_jax import config_lib


def in100(config):
    """solo-learn's ImageNet-100 SimCLR recipe (scripts/pretrain/imagenet-100/simclr.yaml)."""
    # simclr.yaml: lr 0.3, weight_decay 1e-4, proj_hidden_dim 4096, proj_output_dim 512, symmetric.yaml views
    config_lib.solo_learn_imagenet100_recipe(config, base_lr=0.3, weight_decay=1e-4, projector_hidden=(4096,),
                                             projection_dim=512, views="symmetric")
    config.loss.temperature = 0.2                # simclr.yaml temperature 0.2
    return config


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "simclr"
    config_lib.imagenet_recipe(config, backbone="resnet50")  # SimCLR: ResNet-50 (1x), ImageNet stem
    config.batch_size = 4096                     # SimCLR section 2.3 default setting; README ImageNet command
    config.num_epochs = 1000                     # SimCLR table 6 (69.3%): 1000 epochs

    config.optimizer.name = "lars"               # SimCLR section 2.2: LARS for every batch size
    config.optimizer.lr_scaling = "linear"       # SimCLR: lr = 0.3 x batch/256 (4.8 at 4096)
    config.optimizer.base_lr = 0.3
    config.optimizer.weight_decay = 1e-6         # SimCLR section 2.3 default setting: 1e-6
    config.optimizer.trust_coefficient = 1e-3    # official lars_optimizer.py eeta 0.001
    config.optimizer.clip_lr = False             # plain LARS
    config.optimizer.warmup_epochs = 10.0        # SimCLR section 2.3 default setting: 10, then cosine

    config.model.projector_hidden = (2048,)      # SimCLR v1: 2-layer MLP head, hidden = feature width (2048)
    config.model.projection_dim = 128            # SimCLR: 128-d projection
    config.model.projector_hidden_bn = True      # official model_util.py: BatchNorm in the head's hidden layer
    config.model.joint_batch_norm = True         # SimCLR section 2.2 "Global BN": statistics over the 2N batch of
                                                 # all devices (official run.py concatenates both views)
    config.loss.temperature = 0.1                # README ImageNet command --temperature=0.1 (batch 4096)
    config_lib.simclr_imagenet_views(config, color_strength=1.0)  # appendix A: strength 1.0, blur p=0.5
    return config_lib.finalize(config, arg, in100=in100)
