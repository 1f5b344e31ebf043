"""Every method at one budget, side by side, with lightly's and solo-learn's published CIFAR-10 figures.

Each method runs its own config (configs/<method>_cifar.py: ResNet-18, CIFAR stem) at one shared budget: 200 epochs
at batch 512 by default (lightly's CIFAR-10 benchmark budget, kNN k=200 as ours), `:long` 1000 epochs at batch 256
(solo-learn's CIFAR-10 budget, linear). Every method of config_files.METHOD_CONFIGS (MAE on its own config's
ViT-Small; neither lightly nor solo-learn publishes an MAE CIFAR-10 figure). SwAV's queue (solo-learn: 3840,
15 batches of 256) takes whole batches: 4096 (8 batches) at batch 512, as lightly's memory banks at that batch.

    python -m ssl_jax.sweep run --sweep=configs/sweeps/all_methods.py --workdir=/runs/all_methods
    python -m ssl_jax.sweep run --sweep=configs/sweeps/all_methods.py:cpu --workdir=/tmp/am \
        --config.data.path=../shared/data/cifar10-jpeg.tar.gz

Published figures (top-1 %, CIFAR-10, ResNet-18 with the CIFAR stem):
  - lightly (docs/source/getting_started/benchmarks.rst, "CIFAR-10 benchmark results", lightly-ai/lightly
    e8d317f, and 0243660 for DINO, SwaV, NNCLR and Moco; the figures of the others agree at both): kNN top-1
    (k=200, the best over all epochs, not the last), without Gaussian blur, at 200 epochs with batch 128 and 512 and
    at 800 epochs with batch 512. Its "Moco" is MoCo v2 with a memory bank of 4096 (8192 at batch 512), shown
    beside our MoCo v2+; it has no MoCo v3, VICReg, TiCo or VICReg+TiCo figure for CIFAR-10. Its SwaV has no queue.
  - solo-learn (README "Results / CIFAR-10", vturrisi/solo-learn 9187ea3): "Acc@1" after 1000 epochs, batch 256
    (scripts/pretrain/cifar/*.yaml, one GPU), linear top-1; the README does not say whether it is the online or
    the offline linear classifier. No TiCo or VICReg+TiCo figure. Both are other protocols than ours (our kNN:
    the last epoch; our linear: config.eval.linear_protocol, the fast probe on cached features by default).

Expected time on one H200, from SimCLR ResNet-18's measured 1.2 s per epoch at batch 512 (about 42,000 images/s)
and the FLOPs per image `python -m ssl_jax.flops` counts relative to SimCLR's (docs/sweeps.md: 1.02x for VICReg,
VICReg+TiCo, Barlow Twins and SimSiam, 1.34x for BYOL, TiCo and MoCo v3, 1.35x for DINO, 1.00x for SwAV; 11.44
for the ten together): default 200 x 1.2 s x 11.44 = 46 min, `:long` 1000 x 1.2 s x 11.44 = 3.8 h. Lower
bounds: batch 256 fills the GPU less than 512 (not measured), an H100 has less memory bandwidth than an H200, and
each cell adds its evaluation (kNN and a 100-epoch linear probe, twice with the random-init baseline).

`:cpu`: each method's `:smoke` config (ResNet-18 width 8), 20 steps at batch 64 each: run, resume and report in a
few minutes per method on 2 CPU cores; not the published accuracies.
"""
from ssl_jax import config_files
from ssl_jax import sweep_cells

METHODS = list(config_files.METHOD_CONFIGS)
QUEUE_AT_BATCH_512 = {"swav": 4096}  # loss.queue_size where the method's own (3840) is not whole batches of 512

LIGHTLY = "lightly CIFAR-10 benchmark, kNN k=200 (best epoch)"
LIGHTLY_KNN_TOP1 = {  # (epochs, batch): {method: kNN top-1 %}
    (200, 128): {"barlow_twins": 84.2, "byol": 86.9, "simclr": 84.7, "simsiam": 81.9, "dino": 84.0, "swav": 81.2,
                 "nnclr": 83.4, "moco_v2_plus": 83.8},
    (200, 512): {"barlow_twins": 81.9, "byol": 86.8, "simclr": 84.8, "simsiam": 76.4, "dino": 81.3, "swav": 84.2,
                 "nnclr": 81.5, "moco_v2_plus": 84.7},
    (800, 512): {"barlow_twins": 85.9, "byol": 91.0, "simclr": 87.9, "simsiam": 90.4, "dino": 84.8, "swav": 88.4,
                 "nnclr": 89.2, "moco_v2_plus": 89.9},
}
SOLO_LEARN = "solo-learn README, linear Acc@1"
SOLO_LEARN_LINEAR_TOP1 = {  # 1000 epochs, batch 256
    "barlow_twins": 92.10, "byol": 92.58, "moco_v3": 93.10, "simclr": 90.74, "simsiam": 90.51, "vicreg": 92.07,
    "dino": 89.52, "swav": 89.17, "nnclr": 91.88, "moco_v2_plus": 92.94,
}


def published():
    entries = [dict(method=m, epochs=e, batch_size=b, metric="knn_top1", value=v, source=LIGHTLY)
               for (e, b), figures in LIGHTLY_KNN_TOP1.items() for m, v in figures.items() if m in METHODS]
    entries += [dict(method=m, epochs=1000, batch_size=256, metric="linear_top1", value=v, source=SOLO_LEARN)
                for m, v in SOLO_LEARN_LINEAR_TOP1.items() if m in METHODS]
    return entries


def grids_at(epochs, batch_size):
    """Every method at one budget; a queue that is not whole batches of `batch_size` in a grid of its own."""
    resized = {m: q for m, q in QUEUE_AT_BATCH_512.items() if m in METHODS} if batch_size == 512 else {}
    grids = [dict(method=[m for m in METHODS if m not in resized], epochs=[epochs], batch_size=[batch_size])]
    grids += [{"method": [m], "epochs": [epochs], "batch_size": [batch_size], "loss.queue_size": [q]}
              for m, q in resized.items()]
    return grids


def get_config(arg=None):
    sweep = sweep_cells.base_sweep(
        "all_methods" + (f"_{arg}" if arg else ""),
        "Every method's own config at one budget, 200 epochs at batch 512 (lightly's CIFAR-10 budget), beside "
        "lightly's and solo-learn's published CIFAR-10 figures.",
        grids=grids_at(epochs=200,               # lightly's CIFAR-10 benchmark
                       batch_size=512),          # lightly's CIFAR-10 benchmark (its larger batch)
        note="Published figures are other protocols: lightly's kNN is the best epoch's, solo-learn's linear is "
             "SGD on augmented features (ours: the last epoch; the linear protocol is named in each table).",
        published=published())
    if arg == "long":
        sweep.description = sweep.description.replace(
            "200 epochs at batch 512 (lightly's CIFAR-10 budget)", "1000 epochs at batch 256 (solo-learn's budget)")
        sweep.grids = grids_at(epochs=1000, batch_size=256)  # solo-learn cifar/*.yaml
    elif arg == "cpu":
        sweep_cells.shrink_for_cpu(sweep, grids_at(epochs=200, batch_size=64),
                                 steps_per_epoch=0.1,  # 200 nominal epochs = 20 steps
                                 note="20 steps at batch 64.", checkpoint_every_steps=10)
    elif arg not in (None, ""):
        raise sweep_cells.unknown_variant(arg, "all_methods.py", ["long", "cpu"])
    return sweep
