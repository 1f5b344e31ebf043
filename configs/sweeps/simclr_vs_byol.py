"""Seed study 1: SimCLR against BYOL on CIFAR-10 by training epochs and by batch size, linear evaluation.

The study (a seminar at the University of Zagreb, ResNet encoder, linear top-1 on frozen features) trained
separate runs at 20/40/60/80/100 epochs with batch 64, and at batch 64/128/256 with 100 epochs. Each cell here is
the method's own config (configs/simclr_cifar.py, configs/byol_cifar.py: ResNet-18, CIFAR stem) at the cell's
epochs and batch size, its learning rate scaled linearly with the batch as the configs do.

    python -m ssl_jax.sweep run --sweep=configs/sweeps/simclr_vs_byol.py --workdir=/runs/simclr_vs_byol
    python -m ssl_jax.sweep run --sweep=configs/sweeps/simclr_vs_byol.py:cpu --workdir=/tmp/sw \
        --config.data.path=../shared/data/cifar10-jpeg.tar.gz

Full variant, 14 cells (7 per method), 500 epochs of training per method (20+40+60+80+100 at batch 64, 100 at
128, 100 at 256). Expected time on one H200, from SimCLR ResNet-18's measured 1.2 s per 50,000-image epoch at batch
512 (about 42,000 images/s) and the FLOPs per image `python -m ssl_jax.flops` counts (BYOL 1.34x SimCLR's: the EMA
target's forward and the predictor; docs/sweeps.md): 500 x 1.2 s x (1 + 1.34) = 23 min. A lower bound: batches of
64-256 fill the GPU less than 512 does (not measured), an H100 has less memory bandwidth than an H200, and each
cell adds its evaluation (kNN, a 100-epoch linear probe, and both again for the random-init baseline).

`:cpu`: the same cells shrunk for 2 CPU cores (each method's `:smoke` config: ResNet-18 width 8, small heads,
evaluation on 5,000 train images) with epochs 20 and 100 at batch 64 and batches 64 and 128 at 100 epochs; a
nominal "epoch" is half a step (10 or 50 steps), so the cells exercise run, resume and report, not the study's
accuracies.
"""
from ssl_jax import sweep_cells

# Seed study 1's published linear top-1 (%), ResNet encoder on CIFAR-10.
SEED_SOURCE = "seed study 1 (Univ. of Zagreb seminar)"
SEED_BY_EPOCHS = {  # batch 64
    "simclr": {20: 26.56, 40: 28.34, 60: 29.42, 80: 33.17, 100: 34.93},
    "byol": {20: 27.84, 40: 29.01, 60: 29.63, 80: 31.22, 100: 34.78},
}
SEED_BY_BATCH = {  # 100 epochs
    "simclr": {64: 34.93, 128: 36.74, 256: 39.13},
    "byol": {64: 34.78, 128: 36.52, 256: 38.63},
}


def published():
    """The seed's figures as sweep entries (the 100-epoch batch-64 figure appears in both of its series)."""
    entries = {}
    for method, by_epochs in SEED_BY_EPOCHS.items():
        for epochs, value in by_epochs.items():
            entries[(method, epochs, 64)] = value
    for method, by_batch in SEED_BY_BATCH.items():
        for batch_size, value in by_batch.items():
            entries[(method, 100, batch_size)] = value
    return [dict(method=m, epochs=e, batch_size=b, metric="linear_top1", value=v, source=SEED_SOURCE)
            for (m, e, b), v in entries.items()]


def get_config(arg=None):
    sweep = sweep_cells.base_sweep(
        "simclr_vs_byol",
        "SimCLR vs BYOL on CIFAR-10 (seed study 1): linear top-1 by epochs at batch 64 and by batch size at 100 "
        "epochs; each method's own config, ResNet-18.",
        grids=[dict(method=["simclr", "byol"], epochs=[20, 40, 60, 80, 100], batch_size=[64]),   # seed study 1
               dict(method=["simclr", "byol"], epochs=[100], batch_size=[64, 128, 256])],         # seed study 1
        overrides=["optimizer.warmup_epochs=2.0"],  # our choice: a tenth of the shortest run (the configs' 10
                                                    # epochs would be half of a 20-epoch run); the seed gives none
        published=published())
    if arg == "cpu":
        sweep_cells.shrink_for_cpu(sweep, [dict(method=["simclr", "byol"], epochs=[20, 100], batch_size=[64]),
                                         dict(method=["simclr", "byol"], epochs=[100], batch_size=[64, 128])],
                                 steps_per_epoch=0.5,  # 20 and 100 nominal epochs = 10 and 50 steps
                                 note="a nominal epoch is half a step: the pipeline, not the study's accuracies.")
        sweep.axis_labels.epochs = "nominal epochs (:cpu: half a step each)"
    elif arg not in (None, ""):
        raise sweep_cells.unknown_variant(arg, "simclr_vs_byol.py", ["cpu"])
    return sweep
