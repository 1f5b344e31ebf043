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
    config.batch_size = 256                      # solo-learn barlow.yaml
    config.num_epochs = 1000                     # solo-learn barlow.yaml

    config.augment.view1 = config_lib.byol_view_config(solarize_prob=0.0)  # solo-learn CIFAR asymmetric.yaml, view 1 (no blur)
    config.augment.view2 = config_lib.byol_view_config(solarize_prob=0.2)  # solo-learn CIFAR asymmetric.yaml, view 2

    config.model.projector_hidden = (2048, 2048)  # solo-learn barlow.yaml proj_hidden_dim, 3-layer projector
    config.model.projection_dim = 2048           # solo-learn barlow.yaml proj_output_dim

    config.loss = ml_collections.ConfigDict(dict(
        lambd=0.0051,                            # Barlow Twins paper; solo-learn default lamb
        eps=1e-5,                                # our choice: PyTorch BatchNorm1d's default eps
    ))

    config.optimizer.name = "lars"               # solo-learn barlow.yaml
    config.optimizer.base_lr = 0.3               # solo-learn barlow.yaml lr 0.3 per 256 images
    config.optimizer.weight_decay = 1e-4         # solo-learn barlow.yaml
    config.optimizer.trust_coefficient = 0.02    # solo-learn barlow.yaml eta
    return config_lib.finalize(config, arg)
