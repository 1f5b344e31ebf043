"""MoCo v2+ on CIFAR-10 (He et al. 2020; Chen et al. 2020, "Improved baselines with momentum contrastive learning")
with solo-learn's ResNet-18 CIFAR recipe (scripts/pretrain/cifar/mocov2plus.yaml and solo/methods/mocov2plus.py).

ResNet-18 with the CIFAR stem; projector 2048 -> 256 (MoCo v2's MLP head), its EMA copy the key encoder (tau 0.99,
cosine to 0.999); the symmetric InfoNCE at temperature 0.2, each query's positive the key of the other view and its
negatives a queue of 32,768 past keys of that view (random unit vectors at first; every device holds the whole
queue and writes the keys gathered from all devices: methods._moco_queue); SGD lr 0.3 per 256 images (momentum 0.9),
weight decay 1e-4, 10 warm-up epochs then cosine; batch 256, 1000 epochs. Views: solo-learn's CIFAR
`symmetric_weak.yaml` (jitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale p=0.2, crop scale (0.08, 1), no solarize; its
blur p=0.5 left out at 32x32: config_lib.CIFAR_BLUR_PROB).
Anchor: solo-learn 1000 epochs 92.94% online linear (its CIFAR-10 results table).
The projector is solo-learn's and MoCo v2's Linear-ReLU-Linear, without BatchNorm (model.projector_hidden_bn=False;
with it the learning check gained +3.8, without +5.1: docs/learning_check.md, "MoCo v2+").
Differs from MoCo's official code: no shuffled BatchNorm (it shuffles the key encoder's batch across GPUs;
solo-learn syncs BatchNorm instead, as we do).

    python -m ssl_jax.main --config=configs/mocov2plus_cifar.py --workdir=/tmp/mocov2plus
    python -m ssl_jax.main --config=configs/mocov2plus_cifar.py:smoke --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "moco_v2_plus"
    # solo-learn mocov2plus.yaml: proj_hidden_dim 2048, proj_output_dim 256; batch 256, 1000 epochs (the recipe's
    # shared values), its optimizer set below
    config_lib.solo_learn_cifar_recipe(config, base_lr=0.3, weight_decay=1e-4, projector_hidden=(2048,),
                                       projection_dim=256)
    config.model.projector_hidden_bn = False     # solo-learn mocov2plus.py projector: Linear-ReLU-Linear (MoCo v2)
    config.optimizer.name = "sgd"                # solo-learn mocov2plus.yaml optimizer sgd (momentum 0.9: the base)
    config.optimizer.base_lr = 0.3               # solo-learn mocov2plus.yaml lr (per 256 images, linear scaling)
    config.optimizer.weight_decay = 1e-4         # solo-learn mocov2plus.yaml weight_decay
    # solo-learn symmetric_weak.yaml: jitter 0.4/0.4/0.4/0.1 (p=0.8), grayscale 0.2, no solarize; blur left out
    config.augment.view1 = config_lib.view_config(color_strength=0.5, blur_prob=config_lib.CIFAR_BLUR_PROB)
    config.augment.view2 = config_lib.view_config(color_strength=0.5, blur_prob=config_lib.CIFAR_BLUR_PROB)
    config.loss = ml_collections.ConfigDict(dict(
        temperature=0.2,                         # solo-learn mocov2plus.yaml temperature (MoCo v2 paper: 0.2)
        queue_size=32768,                        # solo-learn mocov2plus.yaml queue_size (MoCo paper: 65,536)
    ))
    config.ema.base_decay = 0.99                 # solo-learn mocov2plus.yaml base_tau
    config.ema.final_decay = 0.999               # solo-learn mocov2plus.yaml final_tau
    return config_lib.finalize(config, arg)
