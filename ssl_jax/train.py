"""The training loop: pretraining with checkpoints and logs, then evaluation on frozen features.

`train_and_evaluate(config, workdir)` is the library entry point behind `python -m ssl_jax.main`. The pure parts
live elsewhere (losses, augmentations, the per-device step); this module does the I/O around them.
"""
import dataclasses
import functools
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import augment
from ssl_jax import batches
from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import data
from ssl_jax import evaluate
from ssl_jax import methods
from ssl_jax import metrics_log
from ssl_jax import models
from ssl_jax import optim
from ssl_jax import preemption
from ssl_jax import run_files
from ssl_jax import sharding
from ssl_jax import streaming
from ssl_jax import train_step



def log(message):
    if jax.process_index() == 0:
        print(message, flush=True)


def compute_dtype(name):
    """'auto' is bfloat16 on GPU/TPU and float32 on CPU (XLA's CPU backend gains nothing from bf16)."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return models.parse_dtype(name)


def conv_impl(name):
    """'auto' is XLA's native conv on every backend; the im2col forms stay opt-in (docs/benchmarks.md, "Strided
    convolutions as a matmul")."""
    return "xla" if name == "auto" else name


@dataclasses.dataclass
class Experiment:
    """Everything built from the config before the first step: pure functions and static settings."""
    config: object
    dataset: data.Dataset
    dp: sharding.DataParallel
    net: object
    method: methods.Method
    tx: optax.GradientTransformation
    schedule: object
    probe: object
    probe_tx: optax.GradientTransformation
    steps_per_epoch: int
    total_steps: int
    pixel_stats: tuple = augment.PIXEL_STATS["cifar10"]  # the data set's (mean, std): augment.normalize's


def check_method_config(config, method):
    """Fails at start on head sizes the method cannot use, instead of a shape error inside the loss."""
    model = config.model
    if method.predictor and not model.predictor_dim:
        raise ValueError(f"config.method={config.method!r} needs a predictor; set config.model.predictor_dim > 0 "
                         "(and config.model.predictor_hidden).")
    if method.check_config:
        method.check_config(config)
    if bool(method.prototypes) != bool(model.num_prototypes):
        raise ValueError(f"config.model.num_prototypes={model.num_prototypes}, but {config.method!r} "
                         + ("scores prototypes: set it > 0 (e.g. 4096)." if method.prototypes else
                            "has no prototype head: set it to 0."))
    if method.predictor and model.predictor_dim != model.projection_dim:
        raise ValueError(f"config.model.predictor_dim={model.predictor_dim} differs from config.model.projection_dim="
                         f"{model.projection_dim}, but {config.method}'s predictor predicts the other view's "
                         f"projection; set both to the same size (e.g. --config.model.predictor_dim="
                         f"{model.projection_dim}).")
    if method.ema_target:
        check_ema_config(config.ema)


def check_ema_config(ema):
    """An EMA decay schedule that rises within [0, 1]: 0 <= base_decay <= final_decay <= 1."""
    if not 0.0 <= ema.base_decay <= ema.final_decay <= 1.0:
        raise ValueError(f"config.ema.base_decay={ema.base_decay}, config.ema.final_decay={ema.final_decay}: the "
                         "target's EMA decay rises by a cosine from base_decay to final_decay, both in [0, 1] and "
                         "base_decay <= final_decay (e.g. 0.99 and 1.0).")


def check_crops(config, method):
    """Fails at start on crops the method cannot use or the backbone cannot embed."""
    groups = crop_groups(config)
    if len(groups) > 2 and not method.local_crops:
        raise ValueError(f"config.augment.local_crops.count={config.augment.local_crops.count}, but "
                         f"{config.method!r} compares the two global views only (no multi-crop); set it to 0.")
    patch = config.model.patch_size
    if config_lib.is_vit(config):
        for name, group in zip(("view1", "view2", "local_crops"), groups):
            if group.crop_size % patch:
                raise ValueError(f"config.augment.{name}.crop_size={group.crop_size} is not a multiple of "
                                 f"config.model.patch_size={patch}; the ViT cuts crops into whole patches: use a "
                                 f"crop size of {max(1, round(group.crop_size / patch)) * patch} or another patch.")


def with_frozen_epochs(method, epochs):
    """`method` with its frozen-at-start parameters frozen for `epochs` epochs instead of its own (epochs < 0: as
    it is), from config.optimizer.frozen_epochs."""
    if epochs < 0:
        return method
    frozen = tuple((path, float(epochs)) for path, _ in method.frozen_at_start)
    return dataclasses.replace(method, frozen_at_start=frozen)


def build_experiment(config, dataset=None):
    """Builds data, mesh, network, method and optimizers from the config; fails fast on a bad setting."""
    method = with_frozen_epochs(methods.get_method(config.method), config.optimizer.get("frozen_epochs", -1.0))
    pixel_stats = augment.pixel_stats(config.data.name)
    check_method_config(config, method)
    check_crops(config, method)
    evaluate.knn_settings(config.eval)      # a bad kNN preset or linear protocol fails now, not after training
    evaluate.linear_protocol(config.eval)
    dp = sharding.DataParallel(sharding.make_mesh(config.num_devices), config.parallel,
                               state_specs=train_step.state_partition(method))
    sharding.check_batch_size(config.batch_size, dp.num_devices, jax.process_count())
    if dataset is None:
        dataset = data.load_configured(config.data)
    steps_per_epoch = batches.steps_per_epoch(len(dataset.pretrain_split), config.batch_size)
    total_steps = train_step.steps_for(config.num_epochs, config.num_train_steps, steps_per_epoch)
    make_net = method.network or models.make_ssl_net  # MAE builds its own (methods.Method.network)
    net = make_net(config.model, compute_dtype(config.model.dtype), bn_axis_name=sharding.AXIS,
                   conv_impl=conv_impl(config.model.conv_impl), prototype_head=method.prototypes or "dino")
    tx, schedule = optim.make_optimizer(config.optimizer, config.batch_size, steps_per_epoch, total_steps)
    return Experiment(config=config, dataset=dataset, dp=dp, net=net, method=method, tx=tx, schedule=schedule,
                      probe=train_step.LinearProbe(dataset.num_classes),
                      probe_tx=optax.adam(config.probe.learning_rate),
                      steps_per_epoch=steps_per_epoch, total_steps=total_steps, pixel_stats=pixel_stats)


def initial_state(exp):
    config = exp.config
    crop = config.augment.view1.crop_size
    return train_step.create_train_state(
        jax.random.key(config.seed), exp.net, exp.probe, exp.method, exp.tx, exp.probe_tx,
        (crop, crop, 3), num_devices=exp.dp.num_devices, loss_settings=dict(config.loss))


def crop_groups(config):
    """The crops the step makes: the two global views (config.augment.view1 and view2, crops 0 and 1), then
    config.augment.local_crops.count local crops with their own settings, as `augment.CropGroup`s."""
    groups = [augment.CropGroup(1, augment.view_config_from_dict(config.augment.view1)),
              augment.CropGroup(1, augment.view_config_from_dict(config.augment.view2))]
    local = config.augment.get("local_crops")
    if local is not None and local.count:
        groups.append(augment.crop_group_from_dict(local))
    return tuple(groups)


def make_step_fn(exp, ready_views=False):
    """The mapped train step; with `ready_views` it takes batches of ready crops (see make_per_device_step)."""
    config = exp.config
    per_device_step = train_step.make_per_device_step(
        net=exp.net, probe=exp.probe, method=exp.method, tx=exp.tx, probe_tx=exp.probe_tx, schedule=exp.schedule,
        crop_groups=None if ready_views else crop_groups(config), loss_kwargs=dict(config.loss),
        ema_base_decay=config.ema.base_decay, ema_final_decay=config.ema.final_decay,
        total_steps=exp.total_steps, steps_per_epoch=exp.steps_per_epoch,
        joint_batch_norm=config.model.get("joint_batch_norm", False), pixel_stats=exp.pixel_stats)
    return exp.dp.map_step(per_device_step)


def host_batches(exp, start_step, end_step=None):
    """This process's share of each global batch from `start_step` on; the order depends on seed and step only.
    A folder data set's batches bring their crops taken on the host (`streaming.train_batches`)."""
    end_step = exp.total_steps if end_step is None else end_step
    if isinstance(exp.dataset, streaming.StreamedDataset):
        yield from streaming.train_batches(exp.dataset, crop_groups(exp.config), exp.config.batch_size,
                                           exp.config.seed, start_step, end_step, jax.process_index(),
                                           jax.process_count(), exp.config.data.workers)
        return
    for step in range(start_step, end_step):
        yield batches.host_batch(exp.dataset.train, step, exp.config.batch_size, exp.config.seed,
                                 jax.process_index(), jax.process_count())


@functools.partial(jax.jit, static_argnums=(0, 3))
def encode_images(net, variables, images, pixel_stats=augment.PIXEL_STATS["cifar10"]):
    """uint8 images -> `net`'s backbone features in eval mode, the images normalised with the data set's
    `pixel_stats`. The variables are an argument, not constants baked into the program: every evaluation of a
    network of the same shapes reuses one compilation."""
    x = augment.normalize(augment.to_float(images), pixel_stats)
    return net.apply(variables, x, train=False, use_predictor=False)["features"]


def make_encode_fn(net, params, batch_stats, pixel_stats=augment.PIXEL_STATS["cifar10"]):
    """uint8 images -> backbone features of these parameters (`encode_images`, compiled once per network)."""
    return lambda images: encode_images(net, {"params": params, "batch_stats": batch_stats}, images, pixel_stats)


@dataclasses.dataclass(frozen=True)
class BackboneFeatures:
    """`net`'s backbone in inference mode on normalised float images: `features_fn(variables, x)` for the
    'sgd_augmented' linear protocol (linear_sgd.py). Equal for equal networks, so its compilation is reused."""
    net: Any

    def __call__(self, variables, x):
        return self.net.apply(variables, x, train=False, use_predictor=False)["features"]


def evaluate_state(exp, state, linear=True):
    """kNN (and optionally linear) evaluation of the state's backbone on frozen features (the linear protocol
    config.eval.linear_protocol names)."""
    host_state = sharding.local_copy(exp.dp.get_state(state))
    encode = make_encode_fn(exp.net, host_state.params, host_state.batch_stats, exp.pixel_stats)
    variables = {"params": host_state.params, "batch_stats": host_state.batch_stats}
    if isinstance(exp.dataset, streaming.StreamedDataset):
        # Every process evaluates the whole split itself (as for CIFAR), on its own devices.
        return evaluate.evaluate_backbone_streaming(encode, exp.dataset, exp.config.eval,
                                                    exp.config.augment.view1.crop_size, exp.config.seed, linear,
                                                    mesh=sharding.process_local_mesh(exp.dp.mesh),
                                                    workers=exp.config.data.workers, log_fn=log,
                                                    backbone=(BackboneFeatures(exp.net), variables),
                                                    pixel_stats=exp.pixel_stats)
    return evaluate.evaluate_backbone(encode, exp.dataset, exp.config.eval, exp.config.seed, linear=linear,
                                      backbone=(BackboneFeatures(exp.net), variables), mesh=exp.dp.mesh, log_fn=log,
                                      pixel_stats=exp.pixel_stats)


def evaluate_random_init(exp, linear=True):
    """The same evaluation of the network as it was before training (the config's seed): the baseline a
    self-supervised method must beat. Keys get the suffix '_random_init'."""
    results = evaluate_state(exp, exp.dp.put_state(initial_state(exp)), linear=linear)
    return {f"{k}_random_init": v for k, v in results.items() if k != "eval_seconds" and k not in evaluate.SETTING_KEYS}


class TrainingDiverged(Exception):
    """The loss or the train state stopped being finite; nothing non-finite was saved."""


class Preempted(Exception):
    """SIGTERM/SIGINT (or a multi-host preemption notice): the state was saved at `step`; run again to resume."""

    def __init__(self, message, step):
        super().__init__(message)
        self.step = step


NO_READABLE_CHECKPOINT_CHOICES = ("stop", "start_over")


def nonfinite_parts(state):
    """The names of the state's fields (params, opt_state, ...) holding a NaN or inf, checked on the host so that
    nothing compiles at the first save (docs/benchmarks.md, "Checkpoints and evaluation in the loop")."""
    host = sharding.local_copy(flax.serialization.to_state_dict(state), copy=False)
    return sorted(k for k, v in host.items() if not all(
        np.isfinite(x).all() for x in jax.tree.leaves(v) if np.issubdtype(np.asarray(x).dtype, np.inexact)))


def _unusable_reason(state):
    parts = nonfinite_parts(state)
    return f"non-finite values in {', '.join(parts)}" if parts else None


def restore_or_init(exp, checkpointer):
    """The newest readable, finite checkpoint in the workdir (newer damaged ones are skipped, said and set aside as
    STEP.unreadable), else a fresh state; on the devices. With only damaged checkpoints it stops, unless
    config.if_no_readable_checkpoint is 'start_over'."""
    choice = exp.config.if_no_readable_checkpoint
    if choice not in NO_READABLE_CHECKPOINT_CHOICES:
        raise ValueError(f"config.if_no_readable_checkpoint={choice!r}; use one of {NO_READABLE_CHECKPOINT_CHOICES}.")
    state = initial_state(exp)
    restored, latest, skipped = checkpointer.restore_latest_readable(state, check=_unusable_reason)
    for step, reason in skipped:
        log(f"Skipping the checkpoint at step {step} ({reason}); kept as "
            f"{os.path.join(checkpointer.directory, str(step))}{checkpoint.UNREADABLE_SUFFIX}.")
    if skipped and restored is None and choice != "start_over":
        raise checkpoint.CheckpointError(
            f"no readable checkpoint in {checkpointer.directory} (steps {', '.join(str(s) for s, _ in skipped)}: "
            f"{skipped[0][1]}); nothing was changed. To start over from step 0 instead, run again with "
            "--config.if_no_readable_checkpoint=start_over.")
    checkpointer.set_aside([step for step, _ in skipped])
    if restored is not None:
        log(f"Resuming from the checkpoint at step {latest}.")
        state = restored
    elif skipped:
        log("No readable checkpoint: starting over from step 0 (config.if_no_readable_checkpoint='start_over').")
    return exp.dp.put_state(state), int(latest or 0)


def _fetch(pending):
    """Averages the metrics of the steps since the last log line (fetched once, not every step)."""
    host = jax.device_get(pending)
    return {k: float(np.mean([m[k] for m in host])) for k in host[-1]}


def _diverged(exp, checkpointer, step, what):
    """Waits for the saves in flight (each is checked finite before it is written) and builds the error naming the
    last good checkpoint."""
    try:
        checkpointer.close()
    except checkpoint.StateRefused:
        pass  # not written; the error below names the newest checkpoint that was
    good = checkpointer.latest_step()
    kept = (f"the last good checkpoint, step {good}, is kept in {checkpointer.directory}" if good is not None
            else "no checkpoint had been saved")
    return TrainingDiverged(
        f"training diverged: {what} at step {step}; stopped without saving ({kept}). Change the config (e.g. a "
        f"lower --config.optimizer.base_lr, now {exp.config.optimizer.base_lr}) and run again"
        + (" to resume from it." if good is not None else "."))


def _check_metrics(exp, checkpointer, step, scalars):
    bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
    if bad:
        raise _diverged(exp, checkpointer, step, "non-finite metrics (" +
                        ", ".join(f"{k}={v}" for k, v in bad.items()) + ")")


def _save_if_finite(exp, checkpointer, step, state, force):
    """Starts saving the state at `step`; the writer thread refuses it if it holds a NaN or inf (see `_poll_saves`).
    Returns the seconds the loop spent here."""
    start = time.perf_counter()
    if step != checkpointer.saving_step:
        checkpointer.save(step, exp.dp.get_state(state), force=force, check=_unusable_reason)
    return time.perf_counter() - start


def _refused(exp, checkpointer, refused):
    return _diverged(exp, checkpointer, refused.step, f"{refused.reason} of the state")


def _poll_saves(exp, checkpointer):
    """Stops with `TrainingDiverged` once the writer has refused a non-finite state (nothing was written)."""
    try:
        checkpointer.poll()
    except checkpoint.StateRefused as refused:
        raise _refused(exp, checkpointer, refused) from None


def _finish_saves(exp, checkpointer):
    """Waits for the save in flight and closes the checkpointer; a refused state stops as in `_poll_saves`."""
    try:
        checkpointer.close()
    except checkpoint.StateRefused as refused:
        raise _refused(exp, checkpointer, refused) from None


def _stop_preempted(exp, checkpointer, logger, step, signal_name):
    _finish_saves(exp, checkpointer)
    logger.close()
    message = (f"Stopped by {signal_name} at step {step}: the checkpoint at step {step} is saved in "
               f"{checkpointer.directory}; run the same command again to resume from it.")
    log(message)
    return Preempted(message, step)


def run_loop(exp, state, start_step, end_step, step_fn=None, device_batches=None, hooks=()):
    """The training loop, the one that `train`, the learning check, the benchmark and the tests run: steps
    `start_step + 1 .. end_step` from `state`; after each, every hook is called as `hook(step, state, metrics)`
    (metrics as one copy, still on the device: a hook fetches what it needs, when it needs it) and may stop the
    loop by raising. Returns (state, the last step's metrics).

    Batches are this process's share of each global batch, placed on the devices ahead of the step
    (config.data.prefetch), unless `device_batches` gives placed batches (the benchmark reuses two)."""
    step_fn = step_fn or make_step_fn(exp)
    if device_batches is None:
        device_batches = sharding.prefetch(host_batches(exp, start_step, end_step), exp.dp.put_batch,
                                           exp.config.data.prefetch)
    metrics = None
    for step in range(start_step + 1, end_step + 1):
        state, metrics = step_fn(state, next(device_batches))
        metrics = exp.dp.get_metrics(metrics)
        for hook in hooks:
            hook(step, state, metrics)
    return state, metrics


def _training_hook(exp, workdir, checkpointer, logger, notice, last_step):
    """`train`'s work after each step: the progress line and metrics log, checkpoints, stopping on a signal or a
    non-finite loss or state, and the periodic kNN evaluation."""
    config = exp.config
    eval_every = config.eval.every_epochs * exp.steps_per_epoch
    pending = []

    def log_pending(step):
        scalars = _fetch(pending)
        _check_metrics(exp, checkpointer, step, scalars)
        logger.write(step, scalars)
        pending.clear()

    def hook(step, state, metrics):
        jax.tree.map(lambda x: x.copy_to_host_async(), metrics)
        pending.append(metrics)
        if step % config.log_every_steps == 0 or step == last_step:
            log_pending(step)  # waits for the steps dispatched so far: a signal meanwhile stops at this step
        preempted = notice.reached(step)
        if preempted and pending:
            log_pending(step)
        if step % config.checkpoint_every_steps == 0 or step == last_step or preempted:
            logger.exclude("checkpoint", _save_if_finite(exp, checkpointer, step, state,
                                                         force=step == last_step or preempted))
        if preempted:
            raise _stop_preempted(exp, checkpointer, logger, step, notice.signal_name)
        _poll_saves(exp, checkpointer)
        if eval_every and step % eval_every == 0 and step < exp.total_steps:
            jax.block_until_ready(state)  # the steps in flight count as training, not evaluation
            results = evaluate_state(exp, state, linear=False)
            logger.exclude("eval", results["eval_seconds"])
            logger.write(step, results, prefix="eval")

    return hook


def train(exp, workdir, stop_after_steps=None):
    """Pretrains from the latest checkpoint (or from scratch) to `total_steps`; returns the final state.

    `stop_after_steps` ends this run early at that step (as a preempted job would), after a checkpoint.
    SIGTERM/SIGINT finish the step in flight, save it and raise `Preempted`; a non-finite loss (checked at each
    log line) or state (checked by the checkpoint writer before each save) raises `TrainingDiverged` without saving.
    Time spent on checkpoints and evaluations is left out of the progress line's images/s and said beside it.
    """
    config = exp.config
    checkpointer = checkpoint.Checkpointer(os.path.join(workdir, run_files.CHECKPOINT_DIR),
                                           config.checkpoint_every_steps, config.keep_checkpoints,
                                           config_json=config.to_json())
    state, start_step = restore_or_init(exp, checkpointer)
    if jax.process_index() == 0:
        metrics_log.truncate(workdir, start_step)
    logger = metrics_log.MetricLogger(workdir, exp.total_steps, exp.steps_per_epoch, config.batch_size,
                                      active=jax.process_index() == 0)
    log(f"Training {config.method} ({config_lib.backbone_name(config)}) for {exp.total_steps} steps "
        f"({exp.steps_per_epoch} per epoch) on {exp.dp.num_devices} {jax.default_backend()} device(s), "
        f"global batch {config.batch_size}, mode {exp.dp.mode}; workdir {workdir}")
    last_step = min(exp.total_steps, stop_after_steps or exp.total_steps)
    logger.start(start_step)
    with preemption.PreemptionNotice() as notice:
        hook = _training_hook(exp, workdir, checkpointer, logger, notice, last_step)
        state, _ = run_loop(exp, state, start_step, last_step, hooks=(hook,))
    _finish_saves(exp, checkpointer)
    logger.close()
    return state


def run_steps(exp, state, start_step, num_steps, step_fn=None):
    """`run_loop` for `num_steps` steps from `start_step` without hooks (no checkpoints or logs); returns
    (state, last metrics)."""
    return run_loop(exp, state, start_step, start_step + num_steps, step_fn)


def write_results(workdir, results):
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, run_files.EVAL_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)


def train_and_evaluate(config, workdir, dataset=None):
    """Pretrains, exports the encoder, evaluates it and writes WORKDIR/eval.json; returns the results."""
    workdir = os.path.abspath(workdir)
    checkpoint.check_writable(workdir)
    exp = build_experiment(config, dataset)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, run_files.CONFIG_FILE), "w") as f:
            f.write(config.to_json(indent=2))
    log(f"Data: {exp.dataset.source}; {len(exp.dataset.train)} train / "
        f"{len(exp.dataset.test)} test images, {exp.dataset.num_classes} classes.")
    state = train(exp, workdir)
    host_state = sharding.local_copy(exp.dp.get_state(state))
    checkpoint.export_encoder(os.path.join(workdir, run_files.ENCODER_DIR), host_state.params, host_state.batch_stats,
                              config.model, pixel_stats=exp.pixel_stats)
    log("Evaluating the frozen backbone (kNN and linear)...")
    results = evaluate_state(exp, state)
    if config.eval.random_init:
        log("Evaluating the same network at random initialisation (the baseline)...")
        results.update(evaluate_random_init(exp))
    results.update(step=int(host_state.step), method=config.method, model=config.model.name,
                   network=config_lib.backbone_name(config), batch_size=config.batch_size)
    if not config_lib.is_vit(config):
        results.update(width=config.model.width)
    write_results(workdir, results)
    if jax.process_index() == 0:
        metrics_log.plot_loss(workdir, title=f"{config.method} {config.model.name}")
    log(f"Results: {evaluate.format_results(results)} -> {os.path.join(workdir, run_files.EVAL_FILE)}")
    return results
