"""SimCLR on CIFAR-10 (Chen et al. 2020, appendix B.9; official README's CIFAR-10 command).

ResNet-18 with the CIFAR stem, global batch 512, LARS (lr 1.0 x batch/256, weight decay 1e-4, 10 warm-up epochs,
cosine decay), NT-Xent at temperature 0.5, 128-d projection, colour strength 0.5, no blur, 1000 epochs, and
BatchNorm over the two views together (the official code's global BN normalises the concatenated 2N batch).

    python -m ssl_jax.main --config=configs/simclr_cifar.py --workdir=/tmp/simclr
    python -m ssl_jax.main --config=configs/simclr_cifar.py:smoke --workdir=/tmp/smoke
"""
from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "simclr"
    config.loss.temperature = 0.5
    # Official SimCLR (run.py/model.py): both views in one 2N batch through the network, BatchNorm statistics over
    # all of it (global BN across cores). Learning check, width 8, 120 steps, seed 0: kNN 35.6% (+10.3 over random
    # init) joint, 34.6% (+9.3) with each view's own statistics (docs/learning_check.md, "SimCLR's BatchNorm").
    config.model.joint_batch_norm = True
    return config_lib.finalize(config, arg)
