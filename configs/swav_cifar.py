"""SwAV on CIFAR-10 (Caron et al. 2020) with solo-learn's ResNet-18 CIFAR recipe (scripts/pretrain/cifar/swav.yaml).

ResNet-18 with the CIFAR stem; projector 2048 -> 128 (Linear-BN-ReLU, Linear), the projection L2-normalised and
scored against 3000 unit prototypes; codes by Sinkhorn-Knopp (3 iterations, epsilon 0.05, sums over every
device), the swapped prediction at temperature 0.1; a queue of 3840 past projections per global crop, filled from
the first step and used from epoch 50; the prototypes frozen for the first 2 epochs; LARS lr 0.6 per 256 images
(eta 0.02, trust ratio clipped), weight decay 1e-6, 10 warm-up epochs then cosine; batch 256, 1000 epochs. Views:
solo-learn's CIFAR `symmetric.yaml` (jitter 0.8/0.8/0.8/0.2 with p=0.8, grayscale p=0.2, crop scale (0.08, 1),
its blur p=0.5 left out at 32x32: config_lib.CIFAR_BLUR_PROB), two 32x32 crops and no local crops (solo-learn's
CIFAR run: `num_crops_per_aug 1 1`; `--config.augment.local_crops.count=N` adds SwAV's multi-crop).
Anchors: solo-learn 1000 epochs 89.17% online linear; lightly 200 epochs 84.2% kNN at batch 512.

    python -m ssl_jax.main --config=configs/swav_cifar.py --workdir=/tmp/swav
    python -m ssl_jax.main --config=configs/swav_cifar.py:smoke --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "swav"
    # solo-learn swav.yaml: lr, weight decay, proj_hidden_dim, proj_output_dim
    config_lib.solo_learn_cifar_recipe(config, base_lr=0.6, weight_decay=1e-6, projector_hidden=(2048,),
                                       projection_dim=128)
    config.optimizer.clip_lr = True              # solo-learn swav.yaml clip_lr
    config.model.num_prototypes = 3000           # solo-learn swav.yaml num_prototypes (paper: 3000 at ImageNet)
    # solo-learn symmetric.yaml: SimCLR's jitter at strength 1 (0.8/0.8/0.8/0.2), no solarize; blur left out
    config.augment.view1 = config_lib.view_config(color_strength=1.0, blur_prob=config_lib.CIFAR_BLUR_PROB)
    config.augment.view2 = config_lib.view_config(color_strength=1.0, blur_prob=config_lib.CIFAR_BLUR_PROB)
    # SwAV's multi-crop, off as in solo-learn's CIFAR run; the paper's 6 x 96 px at 224 is 6 x 16 px here
    config.augment.local_crops = config_lib.local_crops_config(0, crop_size=16, crop_scale=(0.05, 0.14),
                                                               color_strength=1.0)
    config.loss = ml_collections.ConfigDict(dict(
        temperature=0.1,                         # solo-learn swav.yaml; paper Sec. 4 / main_swav.py 0.1
        epsilon=0.05,                            # solo-learn default sk_epsilon; main_swav.py epsilon 0.05 (its README:
                                                 # 0.03 when the loss stays near ln 3000; the learning check uses it)
        sinkhorn_iterations=3,                   # solo-learn default sk_iters; paper Sec. 3.1: 3
        queue_size=3840,                         # solo-learn swav.yaml queue_size (main_swav.py queue_length 3840)
        queue_start_epochs=50.0,                 # solo-learn swav.yaml epoch_queue_starts (main_swav.py 15 at 100 ep)
    ))
    return config_lib.finalize(config, arg)
