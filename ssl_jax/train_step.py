"""The train state and the per-device train step shared by every method.

`per_device_step(state, batch) -> (state, metrics)` is pure: it augments the uint8 batch on the device with
per-example keys derived from each example's global position, runs the online network (or the method's own
forward pass, `Method.forward`) and the EMA target where the method keeps one on the crops each sees, applies the
method's loss, averages gradients over the 'batch' axis, updates the optimizer, the EMA target, the loss state
and an online linear probe on stop-gradient features.
`sharding.DataParallel` maps it over devices.
"""
import functools
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from ssl_jax import augment
from ssl_jax import methods
from ssl_jax.sharding import AXIS
from jax.sharding import PartitionSpec as P


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; arrays only, so it checkpoints and shards as one pytree."""
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    target_params: Any           # EMA target network ({} when the method keeps none)
    target_batch_stats: Any
    loss_state: Any              # e.g. TiCo's running covariance ({} when none)
    probe_params: Any            # online linear probe on stop-gradient backbone features
    probe_opt_state: Any
    rng: jax.Array               # base key (raw uint32); each step folds in its step number


def ema_decay_schedule(base_decay, step, total_steps, final_decay=1.0):
    """BYOL's cosine schedule, tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2, from tau_base at step 0 to
    `final_decay` at step K (BYOL, DINO, MoCo v3: 1.0; solo-learn's MoCo v2+ recipe: final_tau 0.999)."""
    progress = jnp.minimum(step / jnp.maximum(total_steps, 1), 1.0)
    return final_decay - (final_decay - base_decay) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema_update(target, online, decay):
    """xi <- tau * xi + (1 - tau) * theta, leaf by leaf."""
    return jax.tree.map(lambda t, o: decay * t + (1.0 - decay) * o, target, online)


def create_train_state(rng, net, probe, method, tx, probe_tx, image_shape, num_devices=1, loss_settings=None):
    """Initialises every slot of the state on the host's default device; the method's state from its
    `loss_settings` (config.loss), its PER_DEVICE parts with `num_devices` copies."""
    init_key, probe_key, state_key = jax.random.split(rng, 3)
    dummy = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
    variables = jax.jit(functools.partial(net.init, train=False))(init_key, dummy)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    outputs = jax.eval_shape(functools.partial(net.apply, train=False), variables, dummy)
    features = outputs["features"]
    probe_params = jax.jit(probe.init)(probe_key, jnp.zeros(features.shape, features.dtype))["params"]
    has_target = method.ema_target
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        target_params=jax.tree.map(jnp.copy, params) if has_target else {},
        target_batch_stats=jax.tree.map(jnp.copy, batch_stats) if has_target else {},
        loss_state=method.init_state({k: v.shape[-1] for k, v in outputs.items()}, num_devices, loss_settings),
        probe_params=probe_params,
        probe_opt_state=probe_tx.init(probe_params),
        rng=jax.random.key_data(state_key),
    )


def state_partition(method):
    """How the train state lies on the mesh, as a `shard_map` spec prefix: replicated (P()), but for the method's
    PER_DEVICE state, sharded along its leading device axis (P(AXIS))."""
    if methods.PER_DEVICE not in method.state_rules.values():
        return P()
    loss_state = {k: P(AXIS) if rule == methods.PER_DEVICE else P() for k, rule in method.state_rules.items()}
    return TrainState(step=P(), params=P(), batch_stats=P(), opt_state=P(), target_params=P(),
                      target_batch_stats=P(), loss_state=loss_state, probe_params=P(), probe_opt_state=P(), rng=P())


def forward_crops(net, params, batch_stats, crops, indices, use_predictor=True, joint_batch_norm=False):
    """The crops `indices` of `crops` through the network in train mode, once per crop size: the crops of one size
    go as one stacked batch, each crop with its own BatchNorm statistics (as BYOL, VICReg and Barlow Twins do;
    `joint_batch_norm`: one set over the stacked crops, as the official SimCLR normalises its 2N batch), the
    running averages updated crop after crop. Returns (a tuple with each crop's output dict, None for crops not
    in `indices`; the new batch_stats).

    One call per size computes what one call per crop would, but runs every convolution once over the crops, so
    each weight gradient is one convolution and the network compiles once per size (why that is faster, and the
    alternatives measured: docs/benchmarks.md, "Both views in one batch, per-view BatchNorm").
    """
    outputs = [None] * len(crops)
    for size in dict.fromkeys(crops[i].shape[1:3] for i in indices):
        group = [i for i in indices if crops[i].shape[1:3] == size]
        stacked = jnp.concatenate([crops[i] for i in group])
        out, updates = net.apply({"params": params, "batch_stats": batch_stats}, stacked, train=True,
                                 use_predictor=use_predictor,
                                 num_views=1 if joint_batch_norm else len(group), mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
        per_crop = {key: jnp.split(value, len(group)) for key, value in out.items()}
        for j, i in enumerate(group):
            outputs[i] = {key: parts[j] for key, parts in per_crop.items()}
    return tuple(outputs), batch_stats


def _probe_loss(probe, probe_params, features, labels):
    """The online probe's cross-entropy and accuracy over this device's labelled examples (label >= 0; STL-10's
    unlabelled images carry -1 and teach it nothing)."""
    logits = probe.apply({"params": probe_params}, features)
    labelled = labels >= 0
    count = jnp.maximum(jnp.sum(labelled), 1)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.sum(jnp.where(labelled, loss, 0.0)) / count, jnp.sum(labelled & (logits.argmax(-1) == labels)) / count


def _frozen_now(method, step, steps_per_epoch):
    """((parameter path, whether it is frozen at `step`), ...) for the method's `frozen_at_start`."""
    return tuple((path, step < epochs * steps_per_epoch) for path, epochs in method.frozen_at_start)


def _zero_leaves(tree, frozen):
    """`tree` with the subtree at each frozen path set to zero where its flag is true (a traced bool)."""
    for path, is_frozen in frozen:
        tree = _replace_at(tree, path, lambda leaf: jnp.where(is_frozen, jnp.zeros_like(leaf), leaf))
    return tree


def _replace_at(tree, path, fn):
    """A copy of the nested dict `tree` with `tree[path[0]]...[path[-1]]` replaced by `fn` of itself."""
    if not path:
        return fn(tree)
    return {**tree, path[0]: _replace_at(tree[path[0]], path[1:], fn)}


def _scalar_metrics(aux):
    return {k: v for k, v in aux.items() if jnp.ndim(v) == 0}


def step_key(state):
    """The step's random key: the state's base key folded with the step number."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


LOSS_KEY_ID = 1 << 20  # the loss's key: the step key folded with an id no crop uses (crops are 0, 1, 2, ...)


def augmented_crops(key, batch, groups, pixel_stats=augment.PIXEL_STATS["cifar10"]):
    """Every crop of the uint8 batch['image'], normalised with the data set's `pixel_stats` (mean, std), as one
    tuple (crop 0, crop 1, then the local crops), each example's randomness from `key`, the crop's number and its
    global batch['global_index'] (so the crops do not depend on how the batch is split over devices:
    `augment.multi_crop`). A batch read from a streaming source brings its crops taken on the host ('crops', one
    uint8 array [B, count, size, size, 3] per group: `image_folder.host_batch`); only the flips and colours are
    applied here."""
    if "crops" in batch:
        per_group = augment.multi_crop_of_host_crops(key, batch["crops"], batch["global_index"], groups)
    else:
        per_group = augment.multi_crop(key, batch["image"], batch["global_index"], groups)
    return tuple(augment.normalize(crops[i], pixel_stats) for crops in per_group for i in range(crops.shape[0]))


def _local_state(method, state):
    """The method's state as this device holds it: a PER_DEVICE part without its (length-1) device axis."""
    return {k: v[0] if method.state_rules[k] == methods.PER_DEVICE else v for k, v in state.items()}


def _carried_state(method, new_state, axis_name):
    """The loss's new state as the train state carries it: AVERAGED parts averaged over devices, PER_DEVICE parts
    as they are, with their device axis back."""
    return {k: lax.pmean(v, axis_name) if method.state_rules[k] == methods.AVERAGED else v[None]
            for k, v in new_state.items()}


def _probe_inputs(student, batch):
    """The online probe's inputs: stop-gradient backbone features of the global crops the student saw, with their
    labels."""
    seen = [out["features"] for out in student[:len(methods.GLOBAL_CROPS)] if out is not None]
    return lax.stop_gradient(jnp.concatenate(seen)), jnp.concatenate([batch["label"]] * len(seen))


def make_per_device_step(*, net, probe, method, tx, probe_tx, schedule, crop_groups, loss_kwargs,
                         ema_base_decay, total_steps, steps_per_epoch, joint_batch_norm=False, axis_name=AXIS,
                         ema_final_decay=1.0, pixel_stats=augment.PIXEL_STATS["cifar10"]):
    """Builds `per_device_step(state, batch)`; `batch` holds uint8 'image', int 'label' and 'global_index' (each
    example's position in the global batch). `crop_groups`: `augment.CropGroup`s, the two global views first.

    With `crop_groups=None` the batch brings its crops ready ('views', normalised float arrays) instead of
    'image' and 'global_index': the step without its augmentation, as `ssl_jax.bench --part=views` times it to
    compare with a reference step timed on ready views."""

    def per_device_step(state, batch):
        key = step_key(state)
        crops = tuple(batch["views"]) if crop_groups is None else augmented_crops(key, batch, crop_groups, pixel_stats)
        student_crops, teacher_crops = method.crops_seen(len(crops))

        teacher, target_batch_stats = None, state.target_batch_stats
        if method.ema_target:
            teacher, target_batch_stats = forward_crops(net, state.target_params, state.target_batch_stats, crops,
                                                        teacher_crops, False, joint_batch_norm)
            teacher = lax.stop_gradient(teacher)

        context = methods.StepContext(axis_name=axis_name, step=state.step, steps_per_epoch=steps_per_epoch,
                                      key=jax.random.fold_in(key, LOSS_KEY_ID), batch=batch, params=state.params)
        method_state = _local_state(method, state.loss_state)

        def loss_fn(params):
            if method.forward is None:
                student, batch_stats = forward_crops(net, params, state.batch_stats, crops, student_crops, True,
                                                     joint_batch_norm)
            else:  # the method's own forward pass (methods.py, "A method may own its forward pass")
                student, batch_stats = method.forward(net, params, state.batch_stats, crops, student_crops, context,
                                                      **loss_kwargs)
            loss, aux, new_state = method.loss(student, teacher, method_state, context, **loss_kwargs)
            return loss, (aux, new_state, batch_stats, _probe_inputs(student, batch))

        (loss, (aux, new_state, batch_stats, (features, labels))), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        grads = lax.pmean(grads, axis_name)
        frozen = _frozen_now(method, state.step, steps_per_epoch)
        updates, opt_state = tx.update(_zero_leaves(grads, frozen), state.opt_state, state.params)
        updates = _zero_leaves(updates, frozen)
        params = optax.apply_updates(state.params, updates)

        decay = ema_decay_schedule(ema_base_decay, state.step, total_steps, ema_final_decay)
        target_params = ema_update(state.target_params, params, decay) if method.ema_target else {}

        (probe_loss, probe_acc), probe_grads = jax.value_and_grad(_probe_loss, argnums=1, has_aux=True)(
            probe, state.probe_params, features, labels)
        probe_grads = lax.pmean(probe_grads, axis_name)
        probe_updates, probe_opt_state = probe_tx.update(probe_grads, state.probe_opt_state, state.probe_params)

        metrics = dict(_scalar_metrics(aux), loss=loss, probe_loss=probe_loss, probe_accuracy=probe_acc)
        metrics = lax.pmean(metrics, axis_name)
        metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        if method.ema_target:
            metrics["ema_decay"] = jnp.asarray(decay, jnp.float32)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
            target_params=target_params, target_batch_stats=target_batch_stats,
            loss_state=_carried_state(method, new_state, axis_name),
            probe_params=optax.apply_updates(state.probe_params, probe_updates), probe_opt_state=probe_opt_state)
        return new_state, metrics

    return per_device_step


class LinearProbe(nn.Module):
    """The online probe: one Dense layer on frozen features."""
    num_classes: int

    @nn.compact
    def __call__(self, features):
        return nn.Dense(self.num_classes, dtype=jnp.float32)(features)


def steps_for(num_epochs, num_train_steps, steps_per_epoch):
    """Total steps: num_train_steps when > 0, else num_epochs full epochs."""
    if num_train_steps and num_train_steps > 0:
        return int(num_train_steps)
    return int(math.ceil(num_epochs * steps_per_epoch))
