"""VICReg-TiCo on CIFAR-10: VICReg (Bardes et al. 2022) with its covariance term replaced by TiCo's covariance
contrast (Zhu et al. 2022), see losses.vicreg_tico_loss.

No published recipe exists for this hybrid; it is our choice to run VICReg's CIFAR recipe unchanged
(solo-learn `scripts/pretrain/cifar/vicreg.yaml`: global batch 256, 1000 epochs, LARS lr 0.3 per 256 images,
weight decay 1e-4, eta 0.02, projector 2048-2048 -> 2048, weights 25/25/1, its symmetric views: crop (0.2, 1.0),
jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale 0.2, no blur, solarize 0.1) with TiCo's running-covariance decay beta 0.9.
Both branches go through the online network (no EMA target). The covariance term is the seed study's
`covcomponent = mean(sum((z1 @ C) * z1, dim=1))` on the raw projections, divided by D as VICReg's c(Z) is, at
VICReg's weight 1 (losses.vicreg_tico_loss). In the learning check (ResNet-18 width 8, 120 steps) it gained +5.5
kNN points over random initialisation with VICReg-like terms throughout; TiCo's normalised contrast gained at most
+5.8 (weight 25) with a swinging loss and less at the weights that match c(Z)'s gradient (400: +0.8), and the
study's sum undivided went to NaN (docs/learning_check.md).

    python -m ssl_jax.main --config=configs/vicreg_tico_cifar.py --workdir=/tmp/vicreg_tico
    python -m ssl_jax.main --config=configs/vicreg_tico_cifar.py:smoke --workdir=/tmp/smoke
"""
from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.vicreg_cifar_recipe(config_lib.base_config())  # solo-learn vicreg.yaml
    config.method = "vicreg_tico"
    config.loss = config_lib.vicreg_loss_weights(  # VICReg's 25/25/1 (cov_coeff weighs the term that replaces c(Z))
        beta=0.9,                                # TiCo paper: running-covariance decay
        projections="raw",                       # seed study: covcomponent on raw z1 (over D, as VICReg's c(Z));
                                                 # 'normalized': TiCo's own contrast, see docs/learning_check.md
    )
    return config_lib.finalize(config, arg)
