"""Linear evaluation by the papers' protocol ('sgd_augmented'): a linear layer trained with SGD on the frozen
backbone's features of augmented training images, as solo-learn's `main_linear.py` does.

The protocol (solo-learn; no `scripts/linear/cifar*/` yaml exists there, so the settings are those its
`scripts/linear/imagenet-100/*.yaml` and `scripts/linear/imagenet/*.yaml` share, with the code defaults they rely
on; `config.eval.sgd_linear` holds them):

* SGD with momentum 0.9 (`solo/args/linear.py`: `optimizer.kwargs.momentum` default 0.9; torch's SGD, no
  dampening, no Nesterov, which is `optax.sgd(momentum=0.9)`), weight decay 0 (`optimizer.weight_decay: 0`).
* Batch 256 (`optimizer.batch_size: 256`); `solo/args/linear.py` scales the lr by batch * devices / 256, i.e. 1.
* 100 epochs (`max_epochs: 100`).
* lr 0.1 (`optimizer.lr: 0.1` in `imagenet-100/barlow.yaml` and `imagenet/byol.yaml`; the other methods' yamls use
  0.3 to 3.0: set `config.eval.sgd_linear.learning_rate` to match a given method's).
* The "step" schedule (`scheduler.name: step`, `lr_decay_steps: [60, 80]`): `solo/methods/linear.py` builds
  `MultiStepLR(optimizer, lr_decay_steps, gamma=0.1)`, stepped once per epoch (Lightning's default interval), so the
  lr is 0.1 for epochs 0-59, 0.01 for 60-79 and 0.001 for 80-99 (`lr_at_epoch`).
* Augmentation of the training images (solo-learn's CIFAR classification pipeline,
  `solo/data/classification_dataloader.py`): random-resized crop to the image size with scale (0.08, 1) and
  torchvision's aspect ratios (3/4, 4/3), horizontal flip with probability 1/2, then normalisation. Test images are
  only normalised. The crop and flip are `ssl_jax.augment`'s, on the device; each example's randomness comes from
  the step's key and the example's index in the global batch (`augment.example_keys`), so it does not depend on how
  the batch is split over devices.
* The linear layer is initialised like torch's `nn.Linear` (uniform in +-1/sqrt(features)).
* The backbone runs in inference mode (BatchNorm running statistics) and is never updated: its variables are an
  argument of the jitted training function (so a second evaluation of other weights of the same network reuses the
  compilation) and no gradient reaches them.

Data parallel: the training runs under `jax.shard_map` over the mesh axis 'batch' (`ssl_jax.sharding.AXIS`). Every
device holds the train images and the (replicated) linear layer, takes its slice of each global batch, and the
gradients are averaged with `lax.pmean`, so one device and n devices train the same layer (up to float summation
order). A mesh of one device is the single-device case. Single process only (the images are placed from host memory).

It is slow on a CPU: every epoch runs the backbone forward on the whole (augmented) train split, 100 times in all;
`config.eval.linear_protocol='probe_cached'` (the default) is the fast probe on cached features
(`ssl_jax.linear_probe`).

A streamed folder data set (ImageNet: `streaming.py`) has the same protocol in `sgd_linear_eval_streaming`: its
random-resized crops are taken on the host from each JPEG (`image_folder.HostBatches`, the crop of `train_view`
drawn from the seed, the step and the example's index), the flip on the device from the step's key and the
example's position in the global batch, then the same SGD step; the test split's features are the centre crops'
(`streaming.eval_batches`). An image the host could not read is left out of its batch's loss.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import augment
from ssl_jax import sharding

SCHEDULES = ("step", "none")

# Crop and flip only: every other op of the view has probability 0, which `augment.apply_if` skips exactly.
_NO_COLOUR = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


def train_view(image_size: int) -> augment.ViewConfig:
    """The training images' augmentation: random-resized crop (scale 0.08-1, ratio 3/4-4/3) to `image_size`, and a
    horizontal flip with probability 1/2 (solo-learn's CIFAR linear pipeline)."""
    return augment.ViewConfig(crop_size=int(image_size), crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3),
                              flip_prob=0.5, **_NO_COLOUR)


def lr_at_epoch(settings, epoch):
    """The learning rate during `epoch` (0-based): solo-learn's MultiStepLR (`schedule='step'`): the base lr times
    `lr_decay_factor` for each of `lr_decay_epochs` that is <= epoch; `schedule='none'`: constant. Works on Python
    numbers and on traced integers."""
    schedule = settings["schedule"]
    if schedule not in SCHEDULES:
        raise ValueError(f"config.eval.sgd_linear.schedule={schedule!r} is not known; use one of {SCHEDULES}.")
    lr = settings["learning_rate"]
    if schedule == "none":
        return lr
    decays = sum((epoch >= int(m)) * 1 for m in settings["lr_decay_epochs"])
    return lr * settings["lr_decay_factor"] ** decays


def _logits(params, x):
    return jnp.dot(x, params["w"], precision=jax.lax.Precision.HIGHEST) + params["b"]


def _make_tx(momentum, weight_decay):
    # torch.optim.SGD(momentum=m, weight_decay=wd): g += wd * p; v = m * v + g; p -= lr * v. The lr is applied
    # outside (it changes per epoch and is traced).
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum, nesterov=False))


def _init_params(key, dim, num_classes):
    """torch nn.Linear's default initialisation: weight and bias uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(dim)
    kw, kb = jax.random.split(key)
    return {"w": jax.random.uniform(kw, (dim, num_classes), jnp.float32, -bound, bound),
            "b": jax.random.uniform(kb, (num_classes,), jnp.float32, -bound, bound)}


@functools.partial(jax.jit, static_argnums=(0, 3))
def _features(features_fn, variables, images, pixel_stats):
    """Features of uint8 images, un-augmented (the test split, and the feature size)."""
    x = augment.normalize(augment.to_float(images), pixel_stats)
    return jax.lax.stop_gradient(features_fn(variables, x)).astype(jnp.float32)


def _global_batch_size(settings, num_examples, num_devices):
    """config.eval.sgd_linear.batch_size, cut to the largest multiple of the devices a smaller train split holds;
    ValueError, with what to change, where it does not split evenly over the devices or the split is too small."""
    batch_size = int(settings["batch_size"])
    if batch_size <= 0 or batch_size % num_devices:
        raise ValueError(f"config.eval.sgd_linear.batch_size={batch_size} cannot be split evenly over "
                         f"{num_devices} device(s); choose a multiple of {num_devices}.")
    batch_size = min(batch_size, num_examples // num_devices * num_devices)  # a train split smaller than one batch
    if batch_size <= 0:
        raise ValueError(f"{num_examples} train examples are fewer than the {num_devices} devices")
    return batch_size


@functools.partial(jax.jit, static_argnames=("features_fn", "mesh", "steps_per_epoch", "batch_size", "view",
                                                 "pixel_stats"))
def _train_epochs(variables, params, opt_state, images, labels, key, epoch_start, epoch_end, lrs, momentum,
                  weight_decay, *, features_fn, mesh, steps_per_epoch, batch_size, view, pixel_stats):
    """Epochs [epoch_start, epoch_end) of SGD on the linear layer; `lrs[e]` is epoch e's learning rate. Each epoch
    is a permutation of the train split (from fold_in(key, epoch)) cut into `steps_per_epoch` global batches (the
    remainder, under one batch, dropped); device d takes rows [d * b, (d + 1) * b) of each global batch."""
    n = images.shape[0]
    num_devices = mesh.devices.size
    local = batch_size // num_devices
    tx = _make_tx(momentum, weight_decay)

    def per_device(variables, params, opt_state, images, labels, key, epoch_start, epoch_end, lrs):
        perm_key, aug_key = jax.random.split(key)
        device = jax.lax.axis_index(sharding.AXIS)

        def loss_fn(p, feats, y):
            return optax.softmax_cross_entropy_with_integer_labels(_logits(p, feats), y).mean()

        def epoch(e, carry):
            perm = jax.random.permutation(jax.random.fold_in(perm_key, e), n)
            batches = perm[:steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

            def step(i, carry):
                p, s = carry
                global_step = e * steps_per_epoch + i
                positions = device * local + jnp.arange(local)           # indices in the global batch
                idx = batches[i][positions]
                keys = augment.example_keys(jax.random.fold_in(aug_key, global_step), positions, 0)
                x = augment.normalize(augment.augment_batch(keys, images[idx], view), pixel_stats)
                feats = jax.lax.stop_gradient(features_fn(variables, x)).astype(jnp.float32)
                grads = jax.grad(loss_fn)(p, feats, labels[idx])
                grads = jax.lax.pmean(grads, sharding.AXIS)
                updates, s = tx.update(grads, s, p)
                p = jax.tree.map(lambda w, u: w - lrs[e] * u, p, updates)
                return p, s

            return jax.lax.fori_loop(0, steps_per_epoch, step, carry)

        return jax.lax.fori_loop(epoch_start, epoch_end, epoch, (params, opt_state))

    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False)
    return mapped(variables, params, opt_state, images, labels, key, epoch_start, epoch_end, lrs)


@functools.partial(jax.jit, static_argnames=("k",))
def _test_metrics(params, feats, labels, k):
    logits = _logits(params, feats)
    _, idx = jax.lax.top_k(logits, k)
    hit = idx == labels[:, None]
    return jnp.mean(hit[:, 0].astype(jnp.float32)), jnp.mean(jnp.any(hit, axis=-1).astype(jnp.float32))


def _test_features(features_fn, variables, images, pixel_stats, batch_size=500):
    """Un-augmented features of `images` in padded batches of one shape (one compilation)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        valid = len(batch)
        if valid < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - valid,) + batch.shape[1:], batch.dtype)])
        out.append((_features(features_fn, variables, batch, pixel_stats), valid))
    return jnp.concatenate([f[:v] for f, v in out], axis=0)


@functools.partial(jax.jit, static_argnames=("features_fn", "mesh", "view", "pixel_stats"), donate_argnums=(1, 2))
def _streamed_step(variables, params, opt_state, crops, positions, labels, valid, key, lr, momentum, weight_decay, *,
                   features_fn, mesh, view, pixel_stats):
    """One SGD step of the linear layer on a global batch of host crops ([B, size, size, 3] uint8, sharded over
    the mesh): each crop flipped by its key (the step's `key` and its position in the global batch), normalised,
    encoded; the loss the mean cross-entropy over the batch's readable examples (`valid`)."""
    tx = _make_tx(momentum, weight_decay)

    def per_device(variables, params, opt_state, crops, positions, labels, valid, key, lr):
        keys = augment.example_keys(key, positions, 0)
        x = augment.normalize(augment.augment_batch(keys, crops, view, cropped=True), pixel_stats)
        feats = jax.lax.stop_gradient(features_fn(variables, x)).astype(jnp.float32)
        weights = valid.astype(jnp.float32)
        count = jnp.maximum(jax.lax.psum(weights.sum(), sharding.AXIS), 1.0)

        def loss_fn(p):
            losses = optax.softmax_cross_entropy_with_integer_labels(_logits(p, feats), labels)
            return jnp.sum(weights * losses) / count

        grads = jax.lax.psum(jax.grad(loss_fn)(params), sharding.AXIS)
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(lambda w, u: w - lr * u, params, updates), opt_state

    batch = P(sharding.AXIS)
    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(), batch, batch, batch, batch, P(), P()),
                           out_specs=P(), check_vma=False)
    return mapped(variables, params, opt_state, crops, positions, labels, valid, key, lr)


def sgd_linear_eval_streaming(features_fn: Callable, variables, train_source, test_features, test_labels,
                              num_classes: int, settings, crop_size: int, *, seed: int = 0, mesh=None,
                              workers: int = 8, log_fn: Optional[Callable[[str], None]] = None,
                              log_every: int = 1, return_params: bool = False,
                              pixel_stats=augment.PIXEL_STATS["imagenet"]):
    """`sgd_linear_eval` on a streamed train split (`train_source`: `len()` and `read(index)`, as
    `image_folder.ImageFolder`): each epoch a permutation of it (`batches.process_share`, from `seed`) in full
    global batches, every image's random-resized crop to `crop_size` taken on the host (`train_view`'s scale and
    ratio), flipped on the device; the layer scored on `test_features` [N, D] (the test split's centre crops,
    encoded) against `test_labels`. Returns ``{'linear_top1', 'linear_top5'}`` (with `return_params`, and the
    layer). The whole split is read by this process, on `mesh`'s devices (default: this process's)."""
    from ssl_jax import batches
    from ssl_jax import image_folder

    mesh = mesh if mesh is not None else sharding.process_local_mesh(sharding.make_mesh(0))
    batch_size, epochs = _global_batch_size(settings, len(train_source), mesh.devices.size), int(settings["epochs"])
    steps_per_epoch = batches.steps_per_epoch(len(train_source), batch_size)
    view = train_view(crop_size)
    host_crop = image_folder.HostCropGroup(size=int(crop_size), count=1, scale=view.crop_scale,
                                           ratio=view.crop_ratio)
    test_features = np.asarray(test_features, np.float32)
    test_labels = jnp.asarray(np.asarray(test_labels).reshape(-1).astype(np.int32))
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    params = _init_params(init_key, test_features.shape[1], num_classes)
    tx = _make_tx(float(settings["momentum"]), float(settings["weight_decay"]))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(sharding.AXIS))
    params, opt_state = jax.device_put((params, tx.init(params)), replicated)
    momentum, weight_decay = np.float32(settings["momentum"]), np.float32(settings["weight_decay"])
    reader = image_folder.HostBatches(train_source, (host_crop,), batch_size, seed,
                                      num_steps=epochs * steps_per_epoch, workers=workers)
    for step, batch in enumerate(reader):
        epoch = step // steps_per_epoch
        host = (batch["crops"][0][:, 0], batch["global_index"], batch["label"], batch["valid"])
        params, opt_state = _streamed_step(
            variables, params, opt_state, *jax.device_put(host, sharded), jax.random.fold_in(train_key, step),
            np.float32(lr_at_epoch(settings, epoch)), momentum, weight_decay,
            features_fn=features_fn, mesh=mesh, view=view, pixel_stats=pixel_stats)
        if log_fn is not None and (step + 1) % steps_per_epoch == 0 and (epoch + 1) % max(1, log_every) == 0:
            top1, _ = _test_metrics(params, test_features, test_labels, k=1)
            log_fn(f"sgd_linear epoch {epoch + 1}/{epochs}: lr {lr_at_epoch(settings, epoch):.4g}, "
                   f"test top1 {float(top1):.4f}" + (f", {reader.skipped} unreadable image read(s) left out so far"
                                                     if reader.skipped else ""))
    top1, top5 = _test_metrics(params, test_features, test_labels, k=int(min(5, num_classes)))
    results = {"linear_top1": float(top1), "linear_top5": float(top5)}
    if return_params:
        return results, jax.tree.map(np.asarray, sharding.local_copy(params))
    return results


def sgd_linear_eval(features_fn: Callable, variables, train_images, train_labels, test_images, test_labels,
                    num_classes: int, settings, *, seed: int = 0, mesh=None,
                    log_fn: Optional[Callable[[str], None]] = None, log_every: int = 10,
                    return_params: bool = False, pixel_stats=augment.PIXEL_STATS["cifar10"]):
    """Trains a linear layer on the frozen backbone by solo-learn's protocol (module docstring) and returns
    ``{'linear_top1', 'linear_top5'}`` on the test split (fractions; top-5 uses min(5, num_classes)).

    ``features_fn(variables, x)``: the backbone in inference mode, normalised float images ``[b, H, W, 3]`` ->
    features ``[b, D]``; it must be hashable and the same object (or an equal one) across calls for the
    compilation to be reused (a module-level function, or a frozen dataclass around the network). ``variables``:
    its weights (an argument of the compiled function). Images are uint8 ``[N, H, W, 3]``. ``settings``:
    ``config.eval.sgd_linear`` (epochs, batch_size, learning_rate, momentum, weight_decay, schedule,
    lr_decay_epochs, lr_decay_factor). ``mesh``: a one-axis mesh over 'batch' (`sharding.make_mesh`); default all
    devices. The batch must split evenly over the mesh's devices. With ``return_params`` returns (results, the
    trained layer {'w': [D, C], 'b': [C]} as numpy). ``pixel_stats``: the (mean, std) the images are normalised
    with (the data set's, as in training: `augment.pixel_stats`).
    """
    mesh = mesh if mesh is not None else sharding.make_mesh(0)
    num_devices = mesh.devices.size
    train_images = np.asarray(train_images)
    train_labels = np.asarray(train_labels).reshape(-1).astype(np.int32)
    test_labels = np.asarray(test_labels).reshape(-1).astype(np.int32)
    n = len(train_labels)
    epochs = int(settings["epochs"])
    if n == 0 or len(test_labels) == 0:
        raise ValueError("sgd_linear_eval needs non-empty train and test splits")
    batch_size = _global_batch_size(settings, n, num_devices)
    steps_per_epoch = n // batch_size
    lrs = np.asarray([lr_at_epoch(settings, e) for e in range(max(epochs, 1))], np.float32)
    view = train_view(train_images.shape[1])

    replicated = NamedSharding(mesh, P())
    images_d = jax.device_put(train_images, replicated)
    labels_d = jax.device_put(train_labels, replicated)
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    test_feats = _test_features(features_fn, variables, np.asarray(test_images), pixel_stats)
    params = _init_params(init_key, test_feats.shape[1], num_classes)
    tx = _make_tx(float(settings["momentum"]), float(settings["weight_decay"]))
    params, opt_state = jax.device_put((params, tx.init(params)), replicated)
    hparams = (jax.device_put(lrs, replicated), np.float32(settings["momentum"]), np.float32(settings["weight_decay"]))
    chunk = max(1, int(log_every)) if log_fn is not None else max(1, epochs)
    for start in range(0, epochs, chunk):
        end = min(epochs, start + chunk)
        params, opt_state = _train_epochs(
            variables, params, opt_state, images_d, labels_d, train_key, np.int32(start), np.int32(end), *hparams,
            features_fn=features_fn, mesh=mesh, steps_per_epoch=steps_per_epoch, batch_size=batch_size, view=view,
            pixel_stats=pixel_stats)
        if log_fn is not None:
            top1, _ = _test_metrics(params, test_feats, jnp.asarray(test_labels), k=1)
            log_fn(f"sgd_linear epoch {end}/{epochs}: lr {lrs[end - 1]:.4g}, test top1 {float(top1):.4f}")
    top1, top5 = _test_metrics(params, test_feats, jnp.asarray(test_labels), k=int(min(5, num_classes)))
    results = {"linear_top1": float(top1), "linear_top5": float(top5)}
    if return_params:
        return results, jax.tree.map(np.asarray, sharding.local_copy(params))
    return results
