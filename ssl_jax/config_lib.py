"""Shared configuration pieces: every `configs/*.py` file starts from `base_config()`.

Each method's file changes only what its paper changes. Values carry a comment naming their source.
"""
import ml_collections

# SimCLR's CIFAR-10 recipe (Chen et al. 2020, appendix B.9, and the official README's CIFAR-10 command:
# batch 512, 1000 epochs, LARS lr 1.0 with linear scaling, weight decay 1e-4, temperature 0.5,
# ResNet-18, colour-jitter strength 0.5, no blur).
SIMCLR_CIFAR_COLOR_STRENGTH = 0.5

# No Gaussian blur at 32x32, for every method: SimCLR appendix B.9 leaves it out on CIFAR-10, lightly's CIFAR-10
# benchmark runs every method "without gaussian blur" because of the small image size, and solo-learn's CIFAR
# recipes other than SimSiam's blur nothing. Papers that blur (BYOL table 6, SimSiam via solo-learn) do so at 224.
CIFAR_BLUR_PROB = 0.0


def view_config(color_strength=SIMCLR_CIFAR_COLOR_STRENGTH, blur_prob=0.0, solarize_prob=0.0, crop_size=32):
    """One view's augmentation settings (SimCLR appendix A: jitter 0.8s/0.8s/0.8s/0.2s with p=0.8, gray p=0.2)."""
    return ml_collections.ConfigDict(dict(
        crop_size=crop_size,
        crop_scale=(0.08, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip_prob=0.5,
        jitter_prob=0.8,
        brightness=0.8 * color_strength,
        contrast=0.8 * color_strength,
        saturation=0.8 * color_strength,
        hue=0.2 * color_strength,
        grayscale_prob=0.2,
        blur_prob=blur_prob,
        blur_sigma=(0.1, 2.0),
        solarize_prob=solarize_prob,
    ))


def local_crops_config(count, crop_size=16, crop_scale=(0.05, 0.4), **view):
    """`count` local crops of `crop_size` pixels covering `crop_scale` of the image (DINO's multi-crop: 96 px crops
    of (0.05, 0.4) at 224 beside 224 px global crops of (0.4, 1.0); main_dino.py local_crops_scale)."""
    local = view_config(crop_size=crop_size, **view)
    local.crop_scale = tuple(crop_scale)
    local.count = count
    return local


def byol_view_config(blur_prob=0.0, solarize_prob=0.0, crop_scale=(0.08, 1.0), crop_size=32):
    """BYOL's view (table 6: jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale p=0.2), as in solo-learn's CIFAR
    recipes; blur and solarize probabilities are what differ between the two views."""
    view = view_config(color_strength=0.5, blur_prob=blur_prob, solarize_prob=solarize_prob, crop_size=crop_size)
    view.saturation = 0.2
    view.crop_scale = tuple(crop_scale)
    return view


def solo_learn_cifar_recipe(config, *, base_lr, weight_decay, projector_hidden, projection_dim):
    """What solo-learn's ResNet-18 CIFAR recipes (`scripts/pretrain/cifar/<method>.yaml`) share, with the yaml's
    lr, weight decay and projector sizes: global batch 256, 1000 epochs, LARS with eta 0.02, and the views of its
    CIFAR `asymmetric.yaml`: BYOL's (table 6: jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale p=0.2; solarize 0 on
    view 1, 0.2 on view 2) without BYOL's blur (1.0 / 0.1 at 224). solo-learn scales lr by batch/256
    (solo/args/pretrain.py), our linear rule, so base_lr = the yaml lr; its warm-up (10 epochs, then cosine) is
    already the base value."""
    config.batch_size = 256
    config.num_epochs = 1000
    config.optimizer.name = "lars"
    config.optimizer.base_lr = base_lr
    config.optimizer.weight_decay = weight_decay
    config.optimizer.trust_coefficient = 0.02
    config.augment.view1 = byol_view_config(blur_prob=CIFAR_BLUR_PROB, solarize_prob=0.0)
    config.augment.view2 = byol_view_config(blur_prob=CIFAR_BLUR_PROB, solarize_prob=0.2)
    config.model.projector_hidden = tuple(projector_hidden)
    config.model.projection_dim = projection_dim
    return config


def byol_cifar_recipe(config):
    """solo-learn's BYOL CIFAR recipe (`byol.yaml`), shared by BYOL and TiCo: LARS lr 1.0 per 256 images, weight
    decay 1e-5, the trust ratio clipped (`clip_lr`; docs/learning_check.md), projector 4096 -> 256 (BYOL's sizes)
    and the EMA target's tau 0.99 (cosine to 1.0)."""
    solo_learn_cifar_recipe(config, base_lr=1.0, weight_decay=1e-5, projector_hidden=(4096,), projection_dim=256)
    config.optimizer.clip_lr = True
    config.ema.base_decay = 0.99
    return config


def vicreg_cifar_recipe(config):
    """solo-learn's VICReg CIFAR recipe (`vicreg.yaml`), shared by VICReg and the VICReg+TiCo hybrid: LARS lr 0.3
    per 256 images, weight decay 1e-4, projector 2048-2048 -> 2048 (solo/methods/vicreg.py), and its own symmetric
    views: crop scale (0.2, 1), solarize 0.1, no blur. vicreg.yaml sets clip_lr, but clipping took VICReg's
    learning check from 41.0% to 30.2% kNN (docs/learning_check.md): not used."""
    solo_learn_cifar_recipe(config, base_lr=0.3, weight_decay=1e-4, projector_hidden=(2048, 2048), projection_dim=2048)
    config.augment.view1 = byol_view_config(solarize_prob=0.1, crop_scale=(0.2, 1.0))
    config.augment.view2 = byol_view_config(solarize_prob=0.1, crop_scale=(0.2, 1.0))
    return config


def vicreg_loss_weights(**extra):
    """VICReg's loss settings (the paper's lambda, mu, nu = 25, 25, 1; solo-learn's sim/var/cov_loss_weight) and
    its variance hinge's eps (std = sqrt(Var + 1e-4)); `extra` adds the VICReg+TiCo hybrid's keys."""
    return ml_collections.ConfigDict(dict(sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, eps=1e-4, **extra))


def base_config():
    """SimCLR on CIFAR-10 with ResNet-18 (CIFAR stem); the defaults every method config starts from."""
    config = ml_collections.ConfigDict()
    config.method = "simclr"
    config.seed = 0
    config.batch_size = 512          # global batch size, all devices together (SimCLR CIFAR-10 command)
    config.num_epochs = 1000         # SimCLR CIFAR-10 command
    config.num_train_steps = -1      # > 0 overrides num_epochs
    config.parallel = "shard_map"    # 'shard_map' (default) or 'pmap': the same per-device step either way
    config.num_devices = 0           # 0: all devices; n: the first n (for comparisons)

    config.data = ml_collections.ConfigDict(dict(
        name="cifar10",              # 'cifar10', 'cifar100' (in memory) or a folder data set streamed from
                                     # config.data.path: 'imagenet', 'imagenet100', 'image_folder' (streaming.py)
        path="",                     # local copy: official python archive, or an image-folder tree/tarball
        cache_dir="",                # decoded uint8 cache; '' = $SSL_JAX_CACHE or ~/.cache/ssl_jax
        tfds_data_dir="",            # prepared TFDS data; '' = TFDS's default
        download=True,               # fetch the official archive when nothing else is found
        prefetch=2,                  # batches placed on the devices ahead of the step
        workers=8,                   # folder data sets (imagenet, imagenet100, image_folder): decoding threads
    ))

    # Crops 0 and 1 are the two global views; local_crops adds `count` smaller crops for the methods that take
    # them (multi-crop: DINO, SwAV), seen by the student only. Its view settings are SimCLR's at 16 px until a
    # method's config sets its own.
    config.augment = ml_collections.ConfigDict(dict(view1=view_config(), view2=view_config(),
                                                    local_crops=local_crops_config(count=0)))

    config.model = ml_collections.ConfigDict(dict(
        name="resnet18",             # resnet18/34/50/101/152, or vit_tiny/vit_small/vit_base (DeiT's sizes, vit.py)
        width=64,                    # ResNet base channels; 64 is the standard network (a ViT's comes with its name)
        stem="cifar",                # ResNet: 3x3 stride-1 conv, no max-pool (SimCLR appendix B.9)
        projector_hidden=(512,),     # SimCLR v1: 2-layer MLP head, hidden = feature width
        projection_dim=128,          # SimCLR: 128-d projection
        projector_last_bn=False,     # BatchNorm (no affine) on the projector's output (SimSiam, MoCo v3)
        projector_hidden_bn=True,    # BatchNorm after the projector's hidden layers (SimCLR v1; False: MoCo v2's
                                     # Linear-ReLU-Linear head)
        predictor_hidden=(),
        predictor_dim=0,             # 0: no predictor
        dtype="auto",                # 'auto': bfloat16 on GPU/TPU, float32 on CPU; params always float32
        conv_impl="auto",            # 'auto' (= 'xla'), 'xla', 'im2col', 'im2col_strided' (docs/benchmarks.md)
        zero_init_residual=False,    # each residual branch's last BatchNorm scale starts at 0 (Goyal et al. 2017)
        patch_size=4,                # ViT: p x p patches, one token each; 4 at 32x32 (64 tokens), 16 at 224 (196)
        vit_pooling="cls",           # ViT: 'cls' (class token: DeiT, DINO, MoCo v3) or 'mean' (token average:
                                     # big_vision's 'gap')
        pos_embedding="sincos2d",    # ViT: 'sincos2d' (fixed: MoCo v3, big_vision) or 'learned' (DINO; resized
                                     # bilinearly to the patch grid of a crop of another size)
        vit_depth=0,                 # ViT: 0 = the name's 12 blocks; n = n blocks (small test networks)
        num_prototypes=0,            # > 0: DINO's head as the projector (projection_dim its bottleneck)
        dino_head_bn=False,          # BatchNorm in DINO's head (official and solo-learn use_bn_in_head: False)
        joint_batch_norm=False,      # the crops of one size share BatchNorm statistics in the step (official
                                     # SimCLR: the concatenated 2N batch); False: each crop its own (BYOL, VICReg)
    ))

    config.loss = ml_collections.ConfigDict(dict(temperature=0.5))  # SimCLR CIFAR-10: tau = 0.5

    config.optimizer = ml_collections.ConfigDict(dict(
        name="lars",                 # 'lars', 'sgd' or 'adamw'
        base_lr=1.0,                 # lr = base_lr * batch_size / 256 (SimCLR: linear scaling, lr 1.0)
        lr_scaling="linear",         # 'linear' (x batch/256) or 'none'
        weight_decay=1e-4,           # SimCLR CIFAR-10 command
        momentum=0.9,
        trust_coefficient=1e-3,      # LARS eta (You et al. 2017; SimCLR)
        clip_lr=False,               # LARS: clip the trust ratio at plain SGD's step (solo-learn clip_lr; SimCLR: no)
        fixed_predictor_lr=False,    # predictor at the peak lr throughout (SimSiam's official --fix-pred-lr)
        warmup_epochs=10.0,          # SimCLR: 10 warm-up epochs, then cosine decay
        frozen_epochs=-1.0,          # >= 0: the epochs the method's frozen-at-start parameters stay frozen (DINO's
                                     # last layer: 1, SwAV's prototypes: 2; methods.Method.frozen_at_start); < 0: its own
        b1=0.9, b2=0.999,            # AdamW only
    ))

    config.ema = ml_collections.ConfigDict(dict(
        base_decay=0.99,             # BYOL's tau_base for small data
        final_decay=1.0,             # the cosine's end (BYOL, DINO, MoCo v3: 1.0)
    ))

    config.probe = ml_collections.ConfigDict(dict(learning_rate=1e-3))  # online linear probe, Adam

    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 2
    config.if_no_readable_checkpoint = "stop"  # every checkpoint in the workdir damaged: 'stop' with a message, or
                                               # 'start_over' from step 0 (README, "When things go wrong")

    config.eval = ml_collections.ConfigDict(dict(
        every_epochs=0,              # > 0: kNN accuracy every n epochs during training
        knn_preset="lightly",        # Wu et al. 2018 weighted kNN: 'lightly' k=200, T=0.1 (InstDisc / lightly's
                                     # benchmark) or 'solo_learn' k=20, T=0.07 (solo/utils/knn.py); evaluate.knn_settings
        knn_k=0,                     # > 0: overrides the preset's k
        knn_temperature=0.0,         # > 0: overrides the preset's temperature
        linear_protocol="probe_cached",  # 'probe_cached': the fast probe (AdamW on cached, un-augmented, standardised
                                     # features; linear_probe.py); 'sgd_augmented': the papers' protocol (linear_sgd.py)
        linear_epochs=100,           # probe_cached: epochs and batch of the fast probe
        linear_batch_size=256,
        sgd_linear=ml_collections.ConfigDict(dict(  # sgd_augmented: solo-learn's linear protocol (linear_sgd.py)
            epochs=100,              # solo-learn scripts/linear/*/*.yaml max_epochs: 100
            batch_size=256,          # optimizer.batch_size: 256 (lr scaled by batch / 256 in solo/args/linear.py)
            learning_rate=0.1,       # optimizer.lr: 0.1 (imagenet-100/barlow.yaml, imagenet/byol.yaml; 0.1-3.0 by method)
            momentum=0.9,            # solo/args/linear.py: SGD momentum default 0.9
            weight_decay=0.0,        # optimizer.weight_decay: 0
            schedule="step",         # scheduler.name: step -> MultiStepLR per epoch (solo/methods/linear.py); or 'none'
            lr_decay_epochs=(60, 80),  # scheduler.lr_decay_steps: [60, 80]
            lr_decay_factor=0.1,     # MultiStepLR gamma=0.1 (solo/methods/linear.py)
        )),
        max_train_examples=0,        # 0: the whole train split for kNN/linear eval
        streaming_linear_examples=100000,  # streamed data sets: the probe's features are those of at most this
                                     # many train images (100k x 2048 float32 = 0.8 GB; 0: all); kNN sees all
        batch_size=1000,             # feature-extraction batch
        random_init=True,            # also evaluate the network at random initialisation (eval.json *_random_init)
    ))
    # `python -m ssl_jax.finetune`: MAE's end-to-end fine-tuning recipe (He et al. 2022, table 9 and
    # main_finetune.py); ResNets use it without layer decay (our choice). Left out: RandAugment, mixup, cutmix,
    # random erasing, drop path (ssl_jax/finetune.py).
    config.eval.finetune = ml_collections.ConfigDict(dict(
        epochs=100,                  # MAE: 100 epochs (ViT-B)
        batch_size=256,              # MAE: 1024 (ViT-B); the lr follows the batch by the rule below
        base_lr=5e-4,                # MAE blr: lr = blr * batch / 256
        layer_decay=0.65,            # MAE/BEiT layer-wise lr decay, ViT-B's 0.65 (ViT-L/H: 0.75); ResNets: none
        weight_decay=0.05,           # MAE (AdamW; not on biases, norms, position embeddings, class token)
        b1=0.9, b2=0.999,            # MAE: AdamW betas (0.9, 0.999)
        warmup_fraction=0.05,        # MAE: 5 warm-up epochs of 100, kept as that share of a shorter run
        label_smoothing=0.1,         # MAE (timm's smoothing 0.1)
        crop_scale=(0.08, 1.0),      # MAE: timm's RandomResizedCrop scale (0.08, 1), and a flip
        flip_prob=0.5,
        head_init_std=2e-5,          # MAE: trunc_normal_(head.weight, std=2e-5), bias 0
        max_train_examples=0,        # 0: the whole train split; n: a random subset of n (seeded by config.seed)
    ))
    config.xla_cpu_flags = "auto"    # 'auto': the measured XLA CPU options (cpu_tuning.py); '' none
    config.cpu_allocator = "auto"    # 'auto': keep freed memory in-process on the CPU backend (glibc; measured in
                                     # docs/benchmarks.md); 'default': leave malloc alone
    return config


SMOKE_VIT_DEPTH = 2  # blocks of a ViT config's :smoke network


def is_vit(config):
    """Whether the config's backbone is a ViT (config.model.name vit_*; models.make_backbone)."""
    return config.model.name.startswith("vit_")


def backbone_name(config):
    """The backbone in words, as the logs and eval.json give it: 'resnet18 of width 64', 'vit_tiny of 12 blocks,
    patch 4' (a ViT has no ResNet width)."""
    model = config.model
    if is_vit(config):
        return f"{model.name} of {model.vit_depth or 12} blocks, patch {model.patch_size}"
    return f"{model.name} of width {model.width}"


def smoke(config):
    """A tiny variant that trains, checkpoints and evaluates in about a minute on 2 CPU cores: a ResNet-18 of width
    8, or for a ViT config a ViT-Tiny of SMOKE_VIT_DEPTH blocks (its patch, pooling and position embeddings kept)."""
    config.batch_size = 64
    config.num_train_steps = 30
    if is_vit(config):
        config.model.name = "vit_tiny"
        config.model.vit_depth = SMOKE_VIT_DEPTH
    else:
        config.model.name = "resnet18"
        config.model.width = 8
    set_head_sizes(config, hidden=64, output=32)
    config.optimizer.warmup_epochs = 0.0
    config.log_every_steps = 10
    config.checkpoint_every_steps = 20
    config.eval.linear_epochs = 10
    config.eval.max_train_examples = 5000
    config.eval.knn_k = 20
    return config


def set_head_sizes(config, hidden, output):
    """One hidden layer of `hidden` units and `output` outputs for the projector, and for the predictor where the
    method has one (its output matches the projection it predicts)."""
    config.model.projector_hidden = (hidden,)
    config.model.projection_dim = output
    if config.model.predictor_dim:
        config.model.predictor_hidden = (hidden,)
        config.model.predictor_dim = output
    return config


# ----------------------------------------------------------------------------------------------------------------
# ImageNet-class recipes (configs/*_imagenet.py; issue 22): the papers' ImageNet recipes, solo-learn's ImageNet-100
# variant of each (`:in100`) and a smoke variant on any image folder (`:smoke`, `folder_smoke`).

IMAGENET_CROP_SIZE = 224        # every paper's global views: RandomResizedCrop to 224 x 224
IMAGENET_LOCAL_CROP_SIZE = 96   # multi-crop's small crops: SwAV's 6 x 96 (main_swav.py size_crops 224 96), DINO's
                                # 96 (main_dino.py DataAugmentationDINO local_transfo)
IMAGENET_BLUR_PROB = 0.5        # SimCLR appendix A: Gaussian blur with p = 0.5 at 224 (sigma in [0.1, 2.0], kernel
                                # 10% of the side: augment.blur_kernel_size); also SwAV's and MoCo v2's (aug-plus)


def imagenet_recipe(config, backbone="resnet50"):
    """What every ImageNet recipe shares: config.data.name 'imagenet' (1000 classes, streamed from the folder
    config.data.path: streaming.py), `backbone` a ResNet with the ImageNet stem (7x7/2 conv + 3x3/2 max-pool, He
    et al. 2016: the ResNet-50 of every paper here) or a ViT of 16 x 16 patches (ViT-S/16: 196 tokens at 224),
    224-pixel global views (the method's config sets their augmentation), no local crops unless the method adds
    them, and evaluation as the papers' kNN column: DINO's eval_knn.py (20 nearest neighbours, T = 0.07, the
    'solo_learn' preset), over the whole streamed train split, beside the fast probe on a bounded subset
    (config.eval.streaming_linear_examples; the papers' SGD linear protocol, reading the images every epoch, with
    config.eval.linear_protocol='sgd_augmented')."""
    config.data.name = "imagenet"
    config.model.name = backbone
    config.model.width = 64                      # the standard network (ResNet-50 1x)
    if is_vit(config):
        config.model.patch_size = 16             # ViT-S/16 (DINO, MoCo v3): 14 x 14 patches at 224
    else:
        config.model.stem = "imagenet"           # torchvision/He et al. 2016: 7x7/2 conv + 3x3/2 max-pool
    config.augment.view1.crop_size = IMAGENET_CROP_SIZE
    config.augment.view2.crop_size = IMAGENET_CROP_SIZE
    config.augment.local_crops = local_crops_config(count=0, crop_size=IMAGENET_LOCAL_CROP_SIZE)
    config.eval.knn_preset = "solo_learn"        # k=20, T=0.07: DINO eval_knn.py (nb_knn 20, temperature 0.07), the
                                                 # kNN figures of DINO table 2 quoted in each config
    config.eval.linear_protocol = "probe_cached"  # the only protocol on a streamed folder (evaluate.py)
    return config


def byol_imagenet_views(config, crop_scale=(0.08, 1.0), crop_size=IMAGENET_CROP_SIZE):
    """BYOL's two views at 224 (table 6: jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale p=0.2; view 1 blurred
    always and never solarized, view 2 blurred with p=0.1 and solarized with p=0.2), which DINO's global crops,
    Barlow Twins, MoCo v3 and solo-learn's ImageNet-100 `asymmetric.yaml` use too."""
    config.augment.view1 = byol_view_config(blur_prob=1.0, solarize_prob=0.0, crop_scale=crop_scale,
                                            crop_size=crop_size)
    config.augment.view2 = byol_view_config(blur_prob=0.1, solarize_prob=0.2, crop_scale=crop_scale,
                                            crop_size=crop_size)
    return config


def simclr_imagenet_views(config, color_strength=1.0, crop_scale=(0.08, 1.0)):
    """SimCLR's symmetric view at 224 (appendix A: colour strength 1.0 = jitter 0.8/0.8/0.8/0.2 with p=0.8,
    grayscale p=0.2, blur p=0.5); colour strength 0.5 is MoCo v2's aug-plus (jitter 0.4/0.4/0.4/0.1)."""
    for name in ("view1", "view2"):
        view = view_config(color_strength=color_strength, blur_prob=IMAGENET_BLUR_PROB,
                           crop_size=IMAGENET_CROP_SIZE)
        view.crop_scale = tuple(crop_scale)
        config.augment[name] = view
    return config


# solo-learn's ImageNet-100 views (scripts/pretrain/imagenet-100/augmentations/*.yaml): crop scale (0.08, 1), flip
# 0.5, 224 px; asymmetric = BYOL's (blur 1.0 / 0.1, solarize 0 / 0.2); symmetric = SimCLR's (strength 1, blur 0.5);
# symmetric_weak = jitter 0.4/0.4/0.4/0.1 with blur 0.5.
SOLO_LEARN_IN100_VIEWS = {
    "asymmetric": byol_imagenet_views,
    "symmetric": lambda config: simclr_imagenet_views(config, color_strength=1.0),
    "symmetric_weak": lambda config: simclr_imagenet_views(config, color_strength=0.5),
}


def solo_learn_imagenet100_recipe(config, *, base_lr, weight_decay, projector_hidden, projection_dim,
                                  views="asymmetric"):
    """What solo-learn's ImageNet-100 recipes (`scripts/pretrain/imagenet-100/<method>.yaml`) share, with the
    yaml's lr, weight decay, projector sizes and views (`SOLO_LEARN_IN100_VIEWS`): config.data.name 'imagenet100',
    ResNet-18 with the ImageNet stem (solo/methods/base.py changes the stem for CIFAR only), global batch 256
    (optimizer.batch_size 128 on devices [0, 1]), 400 epochs (max_epochs), LARS with eta 0.02, clip_lr and biases
    and norms excluded (exclude_bias_n_norm, as ours always are), warmup_cosine with 10 warm-up epochs (solo-learn's
    default), two 224 crops and no multi-crop. solo-learn scales lr by batch/256 (solo/args/pretrain.py), our
    linear rule, so base_lr = the yaml lr. Its README table gives each method's ImageNet-100 top-1, quoted in
    each config."""
    imagenet_recipe(config, backbone="resnet18")
    config.data.name = "imagenet100"
    config.batch_size = 256
    config.num_epochs = 400
    config.num_train_steps = -1
    config.optimizer.name = "lars"
    config.optimizer.lr_scaling = "linear"
    config.optimizer.base_lr = base_lr
    config.optimizer.weight_decay = weight_decay
    config.optimizer.trust_coefficient = 0.02
    config.optimizer.clip_lr = True
    config.optimizer.warmup_epochs = 10.0
    config.model.projector_hidden = tuple(projector_hidden)
    config.model.projection_dim = projection_dim
    config.model.joint_batch_norm = False        # solo-learn forwards each crop on its own
    SOLO_LEARN_IN100_VIEWS[views](config)
    return config


# The `:smoke` variant of a config on a folder data set (`folder_smoke`): trains on the CPU in about a minute on a
# small generated JPEG tree (tests/helpers.write_jpeg_tree), with the recipe's method, heads' kinds and crops' kinds.
SMOKE_FOLDER_CROP_SIZE = 64      # global crops (a ViT's 16-pixel patches: 4 x 4 tokens)
SMOKE_FOLDER_LOCAL_CROP_SIZE = 32  # local crops (2 x 2 tokens)
SMOKE_FOLDER_LOCAL_CROPS = 2     # at most this many local crops (the multi-crop path runs, cheaply)
SMOKE_FOLDER_PROTOTYPES = 1024   # at most this many prototypes (DINO's 65,536 would dominate a CPU step)
SMOKE_FOLDER_QUEUE_BATCHES = 8   # a queue (MoCo, SwAV) of at most this many global batches


def is_folder_dataset(config):
    """Whether config.data.name is a folder data set streamed from config.data.path (streaming.py)."""
    from ssl_jax import data

    return data.is_folder_dataset(config.data.name)


def folder_smoke(config):
    """The `:smoke` variant of a config on a folder data set (ImageNet, ImageNet-100): data.name 'image_folder' (any
    class count; pass --config.data.path), a ResNet-18 of width 8 (its stem kept) or a ViT-Tiny of
    SMOKE_VIT_DEPTH blocks (its patch kept), 64-pixel global and 32-pixel local crops (at most
    SMOKE_FOLDER_LOCAL_CROPS), batch 32, 20 steps, 2 decoding threads, a small evaluation; prototypes and queues
    capped (SMOKE_FOLDER_PROTOTYPES, SMOKE_FOLDER_QUEUE_BATCHES)."""
    smoke(config)                                # the network, heads and schedule of every :smoke
    config.data.name = "image_folder"
    config.data.workers = 2
    config.batch_size = 32
    config.num_train_steps = 20
    if config.model.num_prototypes:
        config.model.num_prototypes = min(config.model.num_prototypes, SMOKE_FOLDER_PROTOTYPES)
    queue = config.loss.get("queue_size", 0)
    if queue:
        config.loss.queue_size = min(queue // config.batch_size, SMOKE_FOLDER_QUEUE_BATCHES) * config.batch_size
    config.augment.view1.crop_size = SMOKE_FOLDER_CROP_SIZE
    config.augment.view2.crop_size = SMOKE_FOLDER_CROP_SIZE
    config.augment.local_crops.crop_size = SMOKE_FOLDER_LOCAL_CROP_SIZE
    config.augment.local_crops.count = min(config.augment.local_crops.count, SMOKE_FOLDER_LOCAL_CROPS)
    config.log_every_steps = 5
    config.checkpoint_every_steps = 10
    config.eval.knn_k = 10
    config.eval.batch_size = 64
    return config


def finalize(config, arg, in100=None):
    """Applies the `:arg` variant named after the config file, else returns the config: `:smoke` (`smoke`, or
    `folder_smoke` for a config on a folder data set) and, for a config that passes `in100` (its ImageNet-100
    recipe, a function of the config), `:in100`."""
    if arg in (None, ""):
        return config
    if arg == "smoke":
        return folder_smoke(config) if is_folder_dataset(config) else smoke(config)
    if arg == "in100" and in100 is not None:
        return in100(config)
    known = "'smoke'" + (", 'in100'" if in100 is not None else "")
    example = "configs/byol_imagenet.py:in100" if in100 is not None else "configs/simclr_cifar.py:smoke"
    raise ValueError(f"Unknown config variant {arg!r}; known variants: {known} (e.g. --config={example}).")
