"""Barlow Twins on CIFAR-10 (Zbontar et al. 2021) with solo-learn's ResNet-18 CIFAR recipe.

Sources: solo-learn `scripts/pretrain/cifar/barlow.yaml`: global batch 256, 1000 epochs, LARS lr 0.3 per 256
images, weight decay 1e-4, eta 0.02, projector 2048-2048 -> 2048 (solo/methods/barlow_twins.py: two hidden
layers), views from its CIFAR `asymmetric.yaml` (jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale 0.2, no blur; solarize
0 on view 1, 0.2 on view 2); lambda 0.0051 from the paper (solo-learn's default lamb). solo-learn also multiplies
the loss by scale_loss 0.1, which losses.barlow_twins_loss has no argument for: not reproduced here. solo-learn's
lr is per 256 images (solo/args/pretrain.py scales it by batch/256), the same linear rule as ours, so
base_lr = the yaml lr. Warm-up 10 epochs then cosine is solo-learn's default and already the base value.

    python -m ssl_jax.main --config=configs/barlow_cifar.py --workdir=/tmp/barlow
    python -m ssl_jax.main --config=configs/barlow_cifar.py:smoke --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "barlow_twins"
    # solo-learn barlow.yaml: lr, weight decay, proj_hidden_dim (two hidden layers), proj_output_dim
    config_lib.solo_learn_cifar_recipe(config, base_lr=0.3, weight_decay=1e-4, projector_hidden=(2048, 2048),
                                       projection_dim=2048)

    config.loss = ml_collections.ConfigDict(dict(
        lambd=0.0051,                            # Barlow Twins paper; solo-learn default lamb
        eps=1e-5,                                # our choice: PyTorch BatchNorm1d's default eps
    ))
    return config_lib.finalize(config, arg)
