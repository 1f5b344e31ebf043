"""Fine-tuning evaluation: the whole pretrained backbone plus a new linear classifier trained with labels, beside the
same budget from random initialisation, so that the gain from pretraining is one line
(`python -m ssl_jax.finetune --workdir=RUN`).

The recipe is MAE's end-to-end fine-tuning (He et al. 2022, appendix A.1, table 9; `main_finetune.py` and
`util/lr_decay.py` of facebookresearch/mae), every setting in `config.eval.finetune` (ssl_jax/config_lib.py):

  * AdamW, betas (0.9, 0.999), weight decay 0.05 (not on biases, norms, position embeddings or the class token:
    `optim.decay_mask`, MAE's `no_weight_decay` list and 1-d rule), lr = blr * batch / 256 with blr 5e-4, linear
    warm-up (MAE: 5 of 100 epochs, kept here as that fraction of the run) then cosine decay to 0;
  * label smoothing 0.1 (cross-entropy against (1 - 0.1) one-hot + 0.1 / classes);
  * random-resized crop, scale (0.08, 1), ratio (3/4, 4/3), and horizontal flip, on the device
    (`ssl_jax.augment`): each example's randomness from the step's key and the example's index in the train set;
  * for a ViT, layer-wise learning-rate decay (BEiT, Bao et al. 2022; MAE's `param_groups_lrd`): a parameter of
    layer i is trained at lr * decay^(L + 1 - i), L the number of blocks, the patch embedding, position embeddings
    and class token layer 0, block k layer k, the final norm and the classifier layer L + 1 (scale 1);
  * the classifier's weights start at N(0, 2e-5^2) and its bias at 0 (MAE: `trunc_normal_(head.weight, std=2e-5)`);
  * ResNets: the same AdamW recipe without layer decay (our choice, not a paper's: the layer-wise rule is defined on
    a ViT's sequence of blocks); BatchNorm in training mode with its running statistics updated, the test split
    classified with them (inference mode).

Left out of MAE's recipe: RandAugment (9, 0.5), mixup 0.8, cutmix 1.0, random erasing 0.25 and drop path 0.1 (our
ViT has no stochastic depth), and the exponential moving average of the weights (off in MAE too). One device.
"""
from __future__ import annotations

import functools
import math
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.core

from ssl_jax import augment
from ssl_jax import evaluate
from ssl_jax import optim

FINETUNE_FILE = "finetune.json"  # written in the run's workdir
_BLOCK = re.compile(r"^block(\d+)$")


# ----------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (ViT)
# ----------------------------------------------------------------------------------------

def _names(path):
    return [getattr(k, "key", getattr(k, "name", k)) for k in path]


def vit_depth(params) -> int:
    """The number of transformer blocks (`block1` ... `blockL`) in a classifier's or a backbone's parameters; 0 for
    a network without them (a ResNet)."""
    depth = 0
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        for name in _names(path):
            match = _BLOCK.match(str(name))
            if match:
                depth = max(depth, int(match.group(1)))
    return depth


def vit_layer_id(path, depth: int) -> int:
    """MAE's `get_layer_id_for_vit` for our ViT's names: the patch embedding ('embedding'), position embeddings
    ('pos_embedding') and class token ('cls') are layer 0, 'block<k>' is layer k, everything else (the final
    'encoder_norm', the classifier 'head') layer depth + 1."""
    for name in _names(path):
        name = str(name)
        if name in ("embedding", "pos_embedding", "cls"):
            return 0
        match = _BLOCK.match(name)
        if match:
            return int(match.group(1))
    return depth + 1


def layer_decay_scales(params, layer_decay: float):
    """The learning-rate scale of every parameter, a tree like `params`: decay^(depth + 1 - layer id) for a ViT
    (`vit_layer_id`), 1 everywhere for a network without blocks or with `layer_decay` 1."""
    depth = vit_depth(params)
    if not depth or layer_decay == 1.0:
        return jax.tree.map(lambda _: 1.0, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: float(layer_decay) ** (depth + 1 - vit_layer_id(path, depth)), params)


def scale_updates(scales) -> optax.GradientTransformation:
    """Multiplies each parameter's update by its scale (a tree of Python floats like the parameters): after AdamW,
    a per-layer learning rate, weight decay included, as PyTorch's parameter groups with `lr_scale`."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(ft_config, params, total_steps: int):
    """AdamW on a warm-up + cosine schedule with the layer-wise scales of `params`; returns (tx, schedule, peak lr).
    """
    batch_size = int(ft_config.batch_size)
    peak_lr = optim.scaled_learning_rate(ft_config.base_lr, batch_size, "linear")
    warmup_steps = int(math.ceil(ft_config.warmup_fraction * total_steps))
    schedule = optim.learning_rate_schedule(peak_lr, warmup_steps, total_steps)
    tx = optax.chain(
        optax.adamw(schedule, b1=ft_config.b1, b2=ft_config.b2, weight_decay=ft_config.weight_decay,
                    mask=optim.decay_mask),
        scale_updates(layer_decay_scales(params, ft_config.layer_decay)))
    return tx, schedule, peak_lr


# ----------------------------------------------------------------------------------------
# Loss, augmentation, the classifier
# ----------------------------------------------------------------------------------------

def smoothed_cross_entropy(logits, labels, smoothing: float):
    """Mean cross-entropy against smoothed targets (1 - smoothing) one-hot + smoothing / classes (Szegedy et al.
    2016; PyTorch's `label_smoothing`, timm's `LabelSmoothingCrossEntropy`)."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def crop_flip_view(ft_config, image_size: int) -> augment.ViewConfig:
    """The fine-tuning augmentation as an `augment.ViewConfig`: random-resized crop and flip, nothing else."""
    return augment.ViewConfig(crop_size=image_size, crop_scale=tuple(ft_config.crop_scale),
                              crop_ratio=(3 / 4, 4 / 3), flip_prob=ft_config.flip_prob, jitter_prob=0.0,
                              grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


def init_head(key, feature_dim: int, num_classes: int, std: float):
    """The new linear classifier: kernel N(0, std^2) [feature_dim, num_classes], bias 0."""
    return {"kernel": std * jax.random.normal(key, (feature_dim, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}


def classifier_logits(backbone, params, batch_stats, images, train: bool):
    """(logits, new batch statistics) of the backbone + linear head on normalised float images. With `train`,
    BatchNorm normalises with the batch's statistics and updates its running averages; without, it uses them."""
    variables = {"params": params["backbone"]}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if train:
        features, mutated = backbone.apply(variables, images, train=True, mutable=["batch_stats"])
        batch_stats = mutated.get("batch_stats", batch_stats)
    else:
        features = backbone.apply(variables, images, train=False)
    features = features.astype(jnp.float32)
    logits = jnp.dot(features, params["head"]["kernel"], precision=jax.lax.Precision.HIGHEST)
    return logits + params["head"]["bias"], batch_stats


def make_train_step(backbone, tx, view: augment.ViewConfig, label_smoothing: float,
                    pixel_stats=augment.PIXEL_STATS["cifar10"]):
    """The jitted step: (state, uint8 images, labels, example indices, step key) -> (state, loss). State is a dict
    of params, batch_stats and opt_state; example i's crop and flip come from fold_in(step key, index i); the
    images are normalised with `pixel_stats` (mean, std), the encoder's own (`checkpoint.encoder_pixel_stats`)."""

    @jax.jit
    def step(state, images, labels, indices, step_key):
        step.traces += 1
        views = augment.augment_batch(augment.example_keys(step_key, indices, 0), images, view)
        views = augment.normalize(views, pixel_stats)

        def loss_fn(params):
            logits, stats = classifier_logits(backbone, params, state["batch_stats"], views, train=True)
            return smoothed_cross_entropy(logits, labels, label_smoothing), stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "batch_stats": stats, "opt_state": opt_state}, loss

    step.traces = 0  # how many times jit traced it (tests: the two runs share one compilation)
    return step


def make_predict_fn(backbone, pixel_stats=augment.PIXEL_STATS["cifar10"]):
    """(params, batch_stats, uint8 images) -> logits in inference mode, jitted with the weights as arguments."""

    @jax.jit
    def predict(params, batch_stats, images):
        x = augment.normalize(augment.to_float(images), pixel_stats)
        return classifier_logits(backbone, params, batch_stats, x, train=False)[0]

    return predict


# ----------------------------------------------------------------------------------------
# Training and the pair of runs
# ----------------------------------------------------------------------------------------

def random_init_variables(backbone, image_shape, seed: int):
    """The backbone's variables at random initialisation ({'params', 'batch_stats'}; the ViT has no statistics)."""
    # One program of the initialisers alone (lazy_init traces the forward pass as shapes): op by op, or with the
    # forward pass compiled as well, a ResNet's initialisation takes many times longer on a CPU.
    shape = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = flax.core.unfreeze(jax.jit(lambda key: backbone.lazy_init(key, shape, train=False))(
        jax.random.PRNGKey(seed)))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def train_subset(split, limit: int, seed: int):
    """(images, labels) of the train split, or a random subset of `limit` examples chosen by `seed` (as
    `evaluate.evaluate_backbone` chooses its subset)."""
    images, labels = np.asarray(split.images), np.asarray(split.labels).astype(np.int32)
    if limit and limit < len(labels):
        idx = np.random.default_rng(seed).permutation(len(labels))[:limit]
        images, labels = images[idx], labels[idx]
    return images, labels


def schedule_steps(num_examples: int, batch_size: int, epochs: int):
    """(batch size, steps per epoch, total steps): the batch clipped to the train set, the remainder dropped."""
    batch = int(max(1, min(batch_size, num_examples)))
    per_epoch = num_examples // batch
    return batch, per_epoch, per_epoch * int(epochs)


def fine_tune(step_fn, variables, head, opt_init, images, labels, *, epochs: int, batch_size: int, seed: int,
              log_fn: Callable[[str], None] | None = None, label: str = ""):
    """Trains `variables` (the backbone's params and batch_stats) with the classifier `head` for `epochs` over
    (images, labels): each epoch a permutation from (seed, epoch); step s uses fold_in(PRNGKey(seed), s). Returns
    (params, batch_stats, {'steps', 'loss_first_epoch', 'loss_last_epoch', 'seconds'})."""
    as_arrays = functools.partial(jax.tree.map, lambda x: jnp.asarray(x, jnp.float32))  # one compilation for both
    params = as_arrays(flax.core.unfreeze({"backbone": variables["params"], "head": head}))
    state = {"params": params, "batch_stats": as_arrays(flax.core.unfreeze(variables.get("batch_stats", {}))),
             "opt_state": opt_init(params)}
    n = len(labels)
    batch, per_epoch, _ = schedule_steps(n, batch_size, epochs)
    key = jax.random.PRNGKey(seed)
    step, epoch_losses, start = 0, [], time.perf_counter()
    for epoch in range(int(epochs)):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        losses = []
        for s in range(per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            state, loss = step_fn(state, images[idx], labels[idx], idx.astype(np.int32),
                                  jax.random.fold_in(key, step))
            losses.append(loss)
            step += 1
        epoch_losses.append(float(np.mean(jax.device_get(losses))))
        if log_fn:
            log_fn(f"{label}epoch {epoch + 1}/{epochs}: train loss {epoch_losses[-1]:.4f}")
    info = {"steps": step, "loss_first_epoch": epoch_losses[0] if epoch_losses else float("nan"),
            "loss_last_epoch": epoch_losses[-1] if epoch_losses else float("nan"),
            "seconds": time.perf_counter() - start}
    return state["params"], state["batch_stats"], info


def accuracy_on(predict_fn, params, batch_stats, split, batch_size: int) -> dict:
    """Top-1 and top-5 accuracy on `split` of the fine-tuned network in inference mode."""
    logits = evaluate.extract_features(functools.partial(predict_fn, params, batch_stats), split.images, batch_size)
    return {"top1": evaluate.topk_accuracy(logits, split.labels, 1),
            "top5": evaluate.topk_accuracy(logits, split.labels, 5)}


def finetune_and_baseline(backbone, pretrained: dict, dataset, ft_config, seed: int = 0, eval_batch_size: int = 1000,
                          log_fn: Callable[[str], None] | None = None,
                          pixel_stats=augment.PIXEL_STATS["cifar10"]) -> dict:
    """Fine-tunes `pretrained` (the exported encoder's variables) and the same backbone at random initialisation
    with the same budget (steps, batches, augmentation, head initialisation and optimizer), then classifies the
    test split with each, the images normalised with `pixel_stats` (the encoder's). Returns the figures and
    settings that finetune.json holds."""
    images, labels = train_subset(dataset.train, int(ft_config.max_train_examples), seed)
    epochs = int(ft_config.epochs)
    batch, _, total = schedule_steps(len(labels), int(ft_config.batch_size), epochs)
    if total < 1:
        raise ValueError(f"fine-tuning for {epochs} epochs of {len(labels)} examples is no step at all.")
    image_shape = tuple(images.shape[1:])
    baseline = random_init_variables(backbone, image_shape, seed)
    pretrained = {"params": pretrained["params"], "batch_stats": pretrained.get("batch_stats", {}) or {}}
    feature_dim = jax.eval_shape(lambda: backbone.apply(baseline, jnp.zeros((1, *image_shape)), train=False)).shape[-1]
    head = init_head(jax.random.PRNGKey(seed + 1), feature_dim, dataset.num_classes, ft_config.head_init_std)
    ft_config = ft_config.copy_and_resolve_references() if hasattr(ft_config, "copy_and_resolve_references") \
        else ft_config
    ft_config.batch_size = batch  # the lr rule sees the batch actually used
    tx, _, peak_lr = make_optimizer(ft_config, {"backbone": pretrained["params"], "head": head}, total)
    step_fn = make_train_step(backbone, tx, crop_flip_view(ft_config, image_shape[0]), ft_config.label_smoothing,
                              pixel_stats)
    predict_fn = make_predict_fn(backbone, pixel_stats)
    results = {}
    for name, variables in (("pretrained", pretrained), ("random_init", baseline)):
        params, stats, info = fine_tune(step_fn, variables, head, tx.init, images, labels, epochs=epochs,
                                        batch_size=batch, seed=seed, log_fn=log_fn, label=f"[{name}] ")
        results[name] = {**accuracy_on(predict_fn, params, stats, dataset.test, eval_batch_size), **info}
    depth = vit_depth(pretrained["params"])
    return {
        "finetune_top1": results["pretrained"]["top1"],
        "finetune_top1_random_init": results["random_init"]["top1"],
        "finetune_gain_points": 100.0 * (results["pretrained"]["top1"] - results["random_init"]["top1"]),
        "finetune_top5": results["pretrained"]["top5"],
        "finetune_top5_random_init": results["random_init"]["top5"],
        "pretrained": results["pretrained"],
        "random_init": results["random_init"],
        "epochs": epochs,
        "train_examples": int(len(labels)),
        "test_examples": int(len(dataset.test.labels)),
        "steps": total,
        "batch_size": batch,
        "peak_learning_rate": peak_lr,
        "layer_decay": float(ft_config.layer_decay) if depth else None,
        "vit_blocks": depth or None,
        "settings": _plain(ft_config),
    }


def _plain(config) -> Any:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def format_line(results: dict) -> str:
    """`finetune top-1 pretrained X% | random init Y% | gain +Z points (N epochs, M train examples)`."""
    return (f"finetune top-1 pretrained {100 * results['finetune_top1']:.2f}% | random init "
            f"{100 * results['finetune_top1_random_init']:.2f}% | gain {results['finetune_gain_points']:+.2f} points "
            f"({results['epochs']} epoch{'s' * (results['epochs'] != 1)}, {results['train_examples']} train examples)")


# ----------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------

def load_backbone(encoder_dir):
    """(backbone module, variables) of an exported encoder: the module `checkpoint.load_encoder` applies, rebuilt from
    the encoder's settings so that it can also run in training mode."""
    import json
    import os

    from ssl_jax import checkpoint
    from ssl_jax import models

    with open(os.path.join(encoder_dir, checkpoint.ENCODER_CONFIG_FILE)) as f:
        settings = models.backbone_settings(json.load(f))
    _, variables = checkpoint.load_encoder(encoder_dir)
    return models.make_backbone(dtype=jnp.float32, **settings), variables


def finetune_config(run_config):
    """The run's `config.eval.finetune`, completed with today's defaults (a run written before it has none)."""
    from ssl_jax import config_lib

    config = config_lib.base_config().eval.finetune
    saved = run_config.get("eval", {}).get("finetune") if run_config is not None else None
    if saved:
        for key, value in dict(saved).items():
            if key in config:
                config[key] = tuple(value) if isinstance(value, list) else value
    return config


def main(argv):
    """`python -m ssl_jax.finetune --workdir=RUN`: fine-tunes the run's encoder and the same backbone from random
    initialisation, prints one line and writes RUN/finetune.json (or --output)."""
    import json
    import os
    import sys

    from absl import flags
    from absl import logging

    from ssl_jax import checkpoint
    from ssl_jax import config_lib
    from ssl_jax import cpu_tuning
    from ssl_jax import data

    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    try:
        encoder_dir, config = evaluate._load_run(FLAGS.workdir, None)
    except ValueError as e:
        sys.exit(f"error: {e}")
    config = config or config_lib.base_config()
    cpu_tuning.configure_xla_cpu(config.get("xla_cpu_flags", "auto"))
    ft_config = finetune_config(config)
    for key in ("epochs", "max_train_examples", "batch_size"):
        if FLAGS[key].value is not None:
            ft_config[key] = FLAGS[key].value
    data_config = config.data
    if data.is_folder_dataset(FLAGS.dataset or data_config.name):
        sys.exit(f"error: fine-tuning reads its data set into memory, and {FLAGS.dataset or data_config.name} is "
                 "streamed (too large); fine-tune on cifar10 or cifar100 (--dataset=cifar10 --data=PATH), or "
                 "evaluate the encoder with python -m ssl_jax.evaluate, which streams.")
    try:
        dataset = data.load_configured(data_config, FLAGS.dataset, FLAGS.data)
    except data.DataError as e:
        sys.exit(f"error: {e}")
    backbone, variables = load_backbone(encoder_dir)
    log = (lambda message: print(message, flush=True)) if FLAGS.log_epochs else None
    results = finetune_and_baseline(backbone, variables, dataset, ft_config, seed=int(config.get("seed", 0)),
                                    eval_batch_size=int(config.eval.get("batch_size", 1000)), log_fn=log,
                                    pixel_stats=checkpoint.encoder_pixel_stats(encoder_dir))
    results.update(encoder=os.path.abspath(encoder_dir), data=dataset.source, model=config.model.name)
    output = FLAGS.output or os.path.join(FLAGS.workdir, FINETUNE_FILE)
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
    print(f"{format_line(results)} -> {output}")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("workdir", None, "A finished run's workdir (its encoder/ and config.json).", required=True)
    flags.DEFINE_string("data", None, "A local data copy; default: the run's config.data.path, else TFDS/download.")
    flags.DEFINE_string("dataset", None, "cifar10 or cifar100; default: the run's config.data.name.")
    flags.DEFINE_integer("epochs", None, "Fine-tuning epochs; default config.eval.finetune.epochs (100, MAE).")
    flags.DEFINE_integer("max_train_examples", None, "A random train subset of this size (0: all); default the "
                         "config's eval.finetune.max_train_examples.")
    flags.DEFINE_integer("batch_size", None, "Batch size (the lr follows blr * batch / 256); default the config's.")
    flags.DEFINE_bool("log_epochs", True, "Print each epoch's train loss.")
    flags.DEFINE_string("output", None, "Where to write the results; default WORKDIR/finetune.json.")


if __name__ == "__main__":
    import os as _os

    from ssl_jax import cli

    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _define_flags()
    cli.run_cli(main, user_errors=(ValueError,))
