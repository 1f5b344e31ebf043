"""MoCo v3 on CIFAR-10 (Chen, Xie & He 2021) with solo-learn's ResNet-18 CIFAR recipe.

Sources: solo-learn `scripts/pretrain/cifar/mocov3.yaml`: global batch 256, 1000 epochs, LARS lr 0.3 per 256
images, weight decay 1e-6, eta 0.02, projector 4096 -> 256 and predictor 4096 -> 256 (solo/methods/mocov3.py:
2-layer MLPs for ResNets), temperature 0.2, tau 0.99 -> 1.0, views from its CIFAR `asymmetric.yaml` (jitter
0.4/0.4/0.2/0.1 p=0.8, grayscale 0.2, no blur; solarize 0 on view 1, 0.2 on view 2). The official MoCo v3 code
defaults to temperature 1.0 for ResNet-50 on ImageNet; we keep solo-learn's CIFAR value. solo-learn's lr is per
256 images (solo/args/pretrain.py scales it by batch/256), the same linear rule as ours, so base_lr = the yaml lr.
Warm-up 10 epochs then cosine is solo-learn's default and already the base value.

    python -m ssl_jax.main --config=configs/mocov3_cifar.py --workdir=/tmp/mocov3
    python -m ssl_jax.main --config=configs/mocov3_cifar.py:smoke --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "moco_v3"
    # solo-learn mocov3.yaml: lr, weight decay, proj_hidden_dim (one hidden layer for ResNets), proj_output_dim
    config_lib.solo_learn_cifar_recipe(config, base_lr=0.3, weight_decay=1e-6, projector_hidden=(4096,),
                                       projection_dim=256)
    config.model.projector_last_bn = True        # MoCo v3 official moco/builder.py: projector _build_mlp(last_bn=True),
                                                 # BatchNorm1d(affine=False) on the output; the predictor has none
    config.model.predictor_hidden = (4096,)      # solo-learn mocov3.yaml pred_hidden_dim
    config.model.predictor_dim = 256             # MoCo v3: predictor maps back to the projection size

    config.loss = ml_collections.ConfigDict(dict(temperature=0.2))  # solo-learn mocov3.yaml

    config.ema.base_decay = 0.99                 # solo-learn mocov3.yaml base_tau 0.99 (cosine to 1.0)
    return config_lib.finalize(config, arg)
