"""SimSiam on CIFAR-10 (Chen & He 2021, CIFAR experiments in the appendix).

Optimizer, length and heads from the paper's CIFAR section (appendix D): SGD, lr 0.03 x batch/256, weight decay
5e-4, momentum 0.9, batch 512, 800 epochs, a 2-layer projection MLP with 2048-d output, predictor hidden 512. The
backbone's residual branches start at zero, as in the official code (simsiam/builder.py: "zero-initialize last
BNs"). Views from solo-learn's CIFAR `symmetric_weak.yaml` (both views: jitter 0.4/0.4/0.4/0.1 p=0.8, grayscale
0.2, blur p=0.5, no solarize, crop (0.08, 1.0)). solo-learn's own CIFAR optimizer (SGD lr 0.5 per 256 images,
weight decay 1e-5, 1000 epochs) and its 3-layer projector (the paper's ImageNet one) are not used: the paper's
CIFAR ones are. Warm-up 10 epochs then cosine is solo-learn's warmup_cosine default (kept from the base; the paper
gives cosine decay).

Both the zero-initialised residual branches and the 2-layer projector were missing before; without the first the
backbone collapsed dimensionally in the learning check (docs/learning_check.md, "SimSiam").

    python -m ssl_jax.main --config=configs/simsiam_cifar.py --workdir=/tmp/simsiam
    python -m ssl_jax.main --config=configs/simsiam_cifar.py:smoke --workdir=/tmp/smoke
"""
import ml_collections

from ssl_jax import config_lib


def get_config(arg=None):
    config = config_lib.base_config()
    config.method = "simsiam"
    config.batch_size = 512                      # SimSiam CIFAR section
    config.num_epochs = 800                      # SimSiam CIFAR section

    # solo-learn symmetric_weak.yaml: jitter 0.4/0.4/0.4/0.1 is colour strength 0.5. Its blur p=0.5 is left out
    # at 32x32, as in every config here (config_lib.CIFAR_BLUR_PROB).
    config.augment.view1 = config_lib.view_config(color_strength=0.5)
    config.augment.view2 = config_lib.view_config(color_strength=0.5)

    config.model.zero_init_residual = True       # official code, simsiam/builder.py: zero-initialise last BNs
    config.model.projector_hidden = (2048,)      # SimSiam CIFAR section: "a 2-layer projection MLP"
    config.model.projection_dim = 2048           # SimSiam CIFAR section: output 2048
    config.model.projector_last_bn = True        # SimSiam Sec. 3: BN on every projector fc, its output included
                                                 # (official code and solo-learn: BatchNorm1d(affine=False))
    config.model.predictor_hidden = (512,)       # SimSiam CIFAR section: predictor hidden 512
    config.model.predictor_dim = 2048            # SimSiam: predictor maps back to the projection size

    config.loss = ml_collections.ConfigDict()    # simsiam_loss takes no coefficients

    config.optimizer.name = "sgd"                # SimSiam CIFAR section
    config.optimizer.base_lr = 0.03              # SimSiam CIFAR section: lr = 0.03 x batch/256
    config.optimizer.weight_decay = 5e-4         # SimSiam CIFAR section
    config.optimizer.momentum = 0.9              # SimSiam CIFAR section
    return config_lib.finalize(config, arg)
