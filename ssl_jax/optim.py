"""Optimizers: LARS (optax), SGD and AdamW, with SimCLR's learning-rate scaling and warm-up + cosine schedule."""
import math

import jax
import optax


def scaled_learning_rate(base_lr, batch_size, lr_scaling="linear"):
    """SimCLR's linear scaling rule: lr = base_lr * batch_size / 256."""
    if lr_scaling == "linear":
        return base_lr * batch_size / 256
    if lr_scaling == "none":
        return base_lr
    raise ValueError(f"optimizer.lr_scaling={lr_scaling!r} is not known; use 'linear' or 'none'.")


def learning_rate_schedule(peak_lr, warmup_steps, total_steps):
    """Linear warm-up from 0 to `peak_lr`, then cosine decay to 0 at `total_steps`."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)


def decay_mask(params):
    """True for weight matrices and conv kernels; False for biases and BatchNorm scales/offsets.

    LARS papers and SimCLR leave 1-d parameters out of both weight decay and the trust-ratio adaptation.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_config, batch_size, steps_per_epoch, total_steps):
    """Builds the optax transformation and its schedule from `config.optimizer`."""
    peak_lr = scaled_learning_rate(opt_config.base_lr, batch_size, opt_config.lr_scaling)
    warmup_steps = int(math.ceil(opt_config.warmup_epochs * steps_per_epoch))
    schedule = learning_rate_schedule(peak_lr, warmup_steps, total_steps)
    name = opt_config.name
    if name == "lars":
        tx = optax.lars(schedule, weight_decay=opt_config.weight_decay, weight_decay_mask=decay_mask,
                        trust_coefficient=opt_config.trust_coefficient, trust_ratio_mask=decay_mask,
                        momentum=opt_config.momentum)
    elif name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(opt_config.weight_decay, mask=decay_mask),
                         optax.sgd(schedule, momentum=opt_config.momentum))
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                         weight_decay=opt_config.weight_decay, mask=decay_mask)
    else:
        raise ValueError(f"config.optimizer.name={name!r} is not known; use 'lars', 'sgd' or 'adamw'.")
    return tx, schedule
