"""Optimizers: LARS (optax), SGD and AdamW, with SimCLR's learning-rate scaling and warm-up + cosine schedule."""
import math

import jax
import jax.numpy as jnp
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


# Parameter names (the last key of a path) that weight decay and LARS's trust ratio leave alone: biases, the scales
# and offsets of every norm (flax names BatchNorm's and LayerNorm's 'scale' and 'bias'), the ViT's position
# embeddings and class token (ssl_jax/vit.py), and MAE's mask token (ssl_jax/mae.py; treated as the class token is:
# the official MAE and solo-learn decay both tokens, DeiT's no_weight_decay list leaves them out).
NO_DECAY_NAMES = frozenset({"bias", "scale", "pos_embedding", "cls", "mask_token"})


def decay_mask(params):
    """True for weight matrices and conv kernels; False for one-dimensional parameters and, by name, for those in
    NO_DECAY_NAMES.

    LARS papers and SimCLR leave biases and BatchNorm parameters out of both weight decay and the trust-ratio
    adaptation, as DeiT, DINO and MoCo v3 do for a ViT's norms, biases, position embeddings and class token. By
    name as well as by ndim (DINO's rule: biases and every 1-d parameter): a ViT's attention biases ([heads,
    head_dim]), class token and position embeddings have more than one dimension. For a ResNet the names add
    nothing to the ndim rule (tests/test_optim.py).
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, p: len(p.shape) > 1 and _leaf_name(path) not in NO_DECAY_NAMES, params)


def _leaf_name(path):
    """The last key of a pytree path ('kernel' for ('backbone', 'stem_conv', 'kernel'))."""
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", last))


def scale_by_clipped_trust_ratio(trust_coefficient, learning_rate, mask, eps=0.0):
    """LARS's trust ratio (at `learning_rate`, a schedule or a constant) clipped so that no layer's step exceeds
    plain SGD's (LARC's clip mode, as solo-learn's LARS with `clip_lr: True`, which every solo-learn CIFAR recipe
    sets).

    With ``r = eta ||p|| / ||u||`` (u the update so far, weight decay included) the update becomes
    ``min(r / lr_t, 1) u``; the learning rate applied after it makes the step ``min(r, lr_t) u``. Unclipped LARS
    takes steps of ``lr_t eta ||p||`` per layer however small the gradient; the clip bounds them by SGD's (why
    BYOL and TiCo need it: docs/learning_check.md). Parameters outside `mask` (biases, norms) pass through,
    as in LARS.
    """

    schedule = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params):
        lr = schedule(state.count)

        def scale(update, param, use):
            if not use:
                return update
            param_norm, update_norm = jnp.linalg.norm(param), jnp.linalg.norm(update)
            ratio = trust_coefficient * param_norm / (update_norm + eps)
            ratio = jnp.where((param_norm > 0) & (update_norm > 0), ratio, 1.0)
            clipped = jnp.where(lr > 0, jnp.minimum(ratio / jnp.maximum(lr, 1e-30), 1.0), 1.0)
            return update * clipped.astype(update.dtype)

        updates = jax.tree.map(scale, updates, params, mask(params))
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def lars(schedule, weight_decay, trust_coefficient, momentum, clip_lr=False):
    """optax.lars (You et al. 2017) with biases, norm parameters (and a ViT's position embeddings and class
    token: `decay_mask`) left out of weight decay and of the trust ratio; with `clip_lr` the trust ratio is
    clipped (`scale_by_clipped_trust_ratio`)."""
    if not clip_lr:
        return optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                          trust_coefficient=trust_coefficient, trust_ratio_mask=decay_mask, momentum=momentum)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        scale_by_clipped_trust_ratio(trust_coefficient, schedule, decay_mask),
        optax.scale_by_learning_rate(schedule),
        optax.trace(decay=momentum),
    )


def _transformation(opt_config, learning_rate):
    """The optimizer named by `opt_config.name` at `learning_rate` (a schedule or a constant)."""
    name = opt_config.name
    if name == "lars":
        return lars(learning_rate, opt_config.weight_decay, opt_config.trust_coefficient, opt_config.momentum,
                    clip_lr=opt_config.clip_lr)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(opt_config.weight_decay, mask=decay_mask),
                           optax.sgd(learning_rate, momentum=opt_config.momentum))
    if name == "adamw":
        return optax.adamw(learning_rate, b1=opt_config.b1, b2=opt_config.b2,
                           weight_decay=opt_config.weight_decay, mask=decay_mask)
    raise ValueError(f"config.optimizer.name={name!r} is not known; use 'lars', 'sgd' or 'adamw'.")


def predictor_labels(params):
    """'fixed' for the predictor's parameters, 'scheduled' for every other top-level module's."""
    def label(module):
        return "fixed" if module == "predictor" else "scheduled"

    return {module: jax.tree.map(lambda _, name=label(module): name, subtree) for module, subtree in params.items()}


def make_optimizer(opt_config, batch_size, steps_per_epoch, total_steps):
    """Builds the optax transformation and its schedule from `config.optimizer`. With `fixed_predictor_lr` the
    predictor trains at the peak learning rate throughout, the rest on the schedule (SimSiam's --fix-pred-lr)."""
    peak_lr = scaled_learning_rate(opt_config.base_lr, batch_size, opt_config.lr_scaling)
    warmup_steps = int(math.ceil(opt_config.warmup_epochs * steps_per_epoch))
    schedule = learning_rate_schedule(peak_lr, warmup_steps, total_steps)
    tx = _transformation(opt_config, schedule)
    if opt_config.get("fixed_predictor_lr", False):
        tx = optax.multi_transform({"scheduled": tx, "fixed": _transformation(opt_config, peak_lr)},
                                   predictor_labels)
    return tx, schedule
