"""VICReg on CIFAR-10 (Bardes, Ponce & LeCun 2022) with solo-learn's ResNet-18 CIFAR recipe.

Sources: solo-learn `scripts/pretrain/cifar/vicreg.yaml`: global batch 256, 1000 epochs, LARS lr 0.3 per 256
images, weight decay 1e-4, eta 0.02, projector 2048-2048 -> 2048 (solo/methods/vicreg.py: two hidden layers),
loss weights 25/25/1 (the paper's lambda/mu/nu), and its own symmetric views: crop scale (0.2, 1.0), jitter
0.4/0.4/0.2/0.1 with p=0.8, grayscale p=0.2, no blur, solarize p=0.1. eps 1e-4 in the variance hinge is the
paper's. solo-learn's lr is per 256 images (solo/args/pretrain.py scales it by batch/256), the same linear rule as
ours, so base_lr = the yaml lr. Warm-up 10 epochs then cosine is solo-learn's default and already the base value.

    python -m ssl_jax.main --config=configs/vicreg_cifar.py --workdir=/tmp/vicreg
    python -m ssl_jax.main --config=configs/vicreg_cifar.py:smoke --workdir=/tmp/smoke
"""
from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.vicreg_cifar_recipe(config_lib.base_config())  # solo-learn vicreg.yaml
    config.method = "vicreg"
    config.loss = config_lib.vicreg_loss_weights()  # VICReg paper 25/25/1, eps 1e-4 (solo-learn's weights)
    return config_lib.finalize(config, arg)
