"""NNCLR on CIFAR-10 (Dwibedi et al. 2021) with solo-learn's ResNet-18 CIFAR recipe (scripts/pretrain/cifar/nnclr.yaml
and solo/methods/nnclr.py).

ResNet-18 with the CIFAR stem; projector 2048-2048 -> 256 with BatchNorm on its output (solo-learn's NNCLR
projector: three Linear layers, BN after each), predictor 4096 -> 256; each view's unit projection replaced by its
nearest neighbour in a support set of 65,536 past projections of view 1 (random unit vectors at first, a FIFO queue
of whole batches, each device holding its share: methods._nnclr_support_set), InfoNCE at temperature 0.2 against
the other view's predictions over the global batch, symmetrised; LARS lr 0.4 per 256 images (eta 0.02, trust ratio
clipped), weight decay 1e-5, 10 warm-up epochs then cosine; batch 256, 1000 epochs; views of solo-learn's CIFAR
`asymmetric.yaml` (config_lib.solo_learn_cifar_recipe). A support set longer than the data set (65,536 > 50,000)
is solo-learn's choice and legitimate: its oldest rows are the same images seen in an earlier epoch.
Anchor: solo-learn 1000 epochs 91.88% online linear (its CIFAR-10 results table).
Differs from solo-learn: the projector's last BatchNorm has no affine scale and shift here (models.MLPHead; torch's
BatchNorm1d has them), which the L2 normalisation after it largely undoes.

    python -m ssl_jax.main --config=configs/nnclr_cifar.py --workdir=/tmp/nnclr
    python -m ssl_jax.main --config=configs/nnclr_cifar.py:smoke --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "nnclr"
    # solo-learn nnclr.yaml: lr 0.4, weight_decay 1e-5, proj_hidden_dim 2048 (two hidden layers: nnclr.py's
    # projector), proj_output_dim 256; batch 256, 1000 epochs, LARS eta 0.02, asymmetric.yaml views
    config_lib.solo_learn_cifar_recipe(config, base_lr=0.4, weight_decay=1e-5, projector_hidden=(2048, 2048),
                                       projection_dim=256)
    config.optimizer.clip_lr = True              # solo-learn nnclr.yaml clip_lr
    config.model.projector_last_bn = True        # solo-learn nnclr.py: BatchNorm1d(proj_output_dim) last
    config.model.predictor_hidden = (4096,)      # solo-learn nnclr.yaml pred_hidden_dim
    config.model.predictor_dim = 256             # solo-learn nnclr.py: the predictor maps back to proj_output_dim
    config.loss = ml_collections.ConfigDict(dict(
        temperature=0.2,                         # solo-learn nnclr.yaml temperature (paper: 0.1 at ImageNet)
        queue_size=65536,                        # solo-learn nnclr.yaml queue_size (paper: 98,304 at ImageNet)
    ))
    return config_lib.finalize(config, arg)
