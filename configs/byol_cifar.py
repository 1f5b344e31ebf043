"""BYOL on CIFAR-10 (Grill et al. 2020) with solo-learn's ResNet-18 CIFAR recipe and BYOL's asymmetric views.

Sources: solo-learn `scripts/pretrain/cifar/byol.yaml` (global batch 256, 1000 epochs, LARS lr 1.0, weight decay
1e-5, eta 0.02, projector 4096 -> 256, predictor 4096 -> 256, tau 0.99 -> 1.0) and BYOL table 6 for the two views
(view 1: blur p=1.0, no solarize; view 2: blur p=0.1, solarize p=0.2; both: jitter 0.4/0.4/0.2/0.1 with p=0.8,
grayscale p=0.2). At 32x32 we follow solo-learn's CIFAR `asymmetric.yaml`, which has the same jitter and
solarize but no blur (config_lib.CIFAR_BLUR_PROB). solo-learn's lr is per 256 images (solo/args/pretrain.py multiplies it by
batch_size x devices x nodes / 256), the same linear rule as ours, so base_lr = the yaml lr. Warm-up (10 epochs,
then cosine) is solo-learn's warmup_cosine default and already the base value.

    python -m ssl_jax.main --config=configs/byol_cifar.py --workdir=/tmp/byol
    python -m ssl_jax.main --config=configs/byol_cifar.py:smoke --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "byol"
    config_lib.byol_cifar_recipe(config)         # solo-learn byol.yaml; BYOL's views without blur

    config.model.predictor_hidden = (4096,)      # solo-learn byol.yaml pred_hidden_dim
    config.model.predictor_dim = 256             # BYOL: predictor maps back to the projection size

    config.loss = ml_collections.ConfigDict()    # byol_loss takes no coefficients
    return config_lib.finalize(config, arg)
