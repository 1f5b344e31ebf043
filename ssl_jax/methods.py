"""The method protocol: what a method declares around its pure loss, and the registry of methods.

A method is one `Method` here: which crops the online network (the student) and the EMA target (the teacher)
see, whether it takes local crops beyond the two global views, which heads the network has, the state it carries
between steps and how each part of that state crosses devices, which parameters stay frozen at the start, and its
loss. The train step (`train_step.make_per_device_step`) is written once against this description; adding a
method is one loss in `losses.py`, one entry here and one config file (docs/architecture.md, "Adding a method",
works DINO through as the example).

Crops. The config gives the crops' settings: crop 0 and crop 1 are the two global views
(`config.augment.view1`, `view2`), crops 2.. the `config.augment.local_crops.count` local crops. The step
computes only the crops somebody sees and runs the network once per crop size.

The loss is called as `loss(student, teacher, state, context, **config.loss)`:
- `student`, `teacher`: tuples with one entry per crop, the network's output dict ('features', 'projection',
  'prediction' where there is a predictor) for the crops that network sees and None for the others (`teacher` is
  None without an EMA target; its outputs are stop-gradient);
- `state`: the method's state (a dict of arrays) as this device holds it;
- `context`: a `StepContext` (axis name, step, steps per epoch, a key of the loss's own, this device's batch).
It returns `(loss, metrics, new_state)`: the scalar to minimise, a dict of diagnostics (its scalars are averaged
over devices and logged) and the state for the next step.

A method may own its forward pass (`forward`, MAE's masked encoder and decoder) and its network (`network`, called
as `models.make_ssl_net(config.model, dtype, bn_axis_name=, conv_impl=, prototype_head=)`). The step then runs,
for the online network only and inside the differentiated function,
`forward(net, params, batch_stats, crops, indices, context, **config.loss)` instead of
`train_step.forward_crops(net, params, batch_stats, crops, indices, ...)`: `crops` every crop (normalised float
NHWC), `indices` the crops the student sees, `context` the step's `StepContext` (its `key` is the loss's: fold in
a constant of the forward's own, and batch['global_index'] for per-example randomness). It returns what
forward_crops returns: (a tuple with one output dict per crop, None for the crops not in `indices`; the new
batch_stats), each dict with 'features' (the online probe's input for the global crops) and whatever the loss
reads. Without `forward` (every other method) the step is as before. Whatever `network` builds must also answer
`net.apply(variables, images, train=False, use_predictor=False)['features']` with the backbone's features (the
evaluation) and keep the backbone's parameters under 'backbone' (the exported encoder).

State crosses devices by the rule the method states for each key (`state_rules`):
- AVERAGED: the step takes `lax.pmean` of the new value, so every device holds the same (DINO's centre, TiCo's
  running covariance; both are computed from global batch statistics already, the mean keeps them bit-identical);
- PER_DEVICE: never reduced; the train state holds one copy per device stacked along a leading device axis
  (sharded over the mesh, `P('batch')`), and the loss sees its own copy (a queue of past outputs: SwAV, MoCo v2,
  NNCLR). Checkpoints hold every device's copy, so a run resumes on the same device count.
"""
import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

from ssl_jax import losses
from ssl_jax import mae
from ssl_jax import models

AVERAGED = "averaged"
PER_DEVICE = "per_device"
STATE_RULES = (AVERAGED, PER_DEVICE)
GLOBAL_CROPS = (0, 1)


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a loss may read besides the network outputs and its state: the mesh axis to reduce over, the step
    number (a traced int), the steps per epoch (for schedules counted in epochs), a random key of the loss's own
    (the step's key folded with a constant: per-example randomness should fold in batch['global_index'] as the
    augmentation does), this device's slice of the batch (uint8 'image', 'label', 'global_index') and the online
    network's parameters as the step found them (not differentiated: SwAV scores its queue against the
    prototypes with them)."""
    axis_name: Any
    step: Any
    steps_per_epoch: int
    key: Any = None
    batch: Any = None
    params: Any = None


def _no_state(output_dims, num_devices, settings):
    return {}


@dataclasses.dataclass(frozen=True)
class Method:
    """A method's declaration; see the module docstring for the loss's signature."""
    loss: Callable
    student_crops: Optional[tuple] = None  # crop indices the online network sees; None: every crop
    teacher_crops: tuple = GLOBAL_CROPS    # crop indices the EMA target sees (with ema_target)
    local_crops: bool = False              # takes config.augment.local_crops (multi-crop) besides the two views
    predictor: bool = False
    prototypes: Optional[str] = None       # the projector is a prototype head: 'dino' or 'swav' (models.SSLNet)
    ema_target: bool = False
    initial_state: Callable = _no_state    # (output_dims, num_devices, settings) -> one device's {name: array}
    stacked_initial_state: bool = False    # initial_state gives PER_DEVICE parts already stacked, [devices, ...]:
                                           # each device starts with contents of its own (NNCLR's support set)
    state_rules: Mapping[str, str] = dataclasses.field(default_factory=dict)  # {name: AVERAGED | PER_DEVICE}
    frozen_at_start: tuple = ()            # ((parameter path, epochs), ...): not updated during those first epochs
    check_config: Optional[Callable] = None  # config -> None; raises ValueError on settings the method cannot use
    forward: Optional[Callable] = None     # the student's forward pass in place of train_step.forward_crops (below)
    network: Optional[Callable] = None     # builds the network in place of models.make_ssl_net (same arguments)

    def __post_init__(self):
        bad = {k: v for k, v in self.state_rules.items() if v not in STATE_RULES}
        if bad:
            raise ValueError(f"state rules {bad} are not known; use one of {STATE_RULES}.")

    def crops_seen(self, num_crops):
        """(student crop indices, teacher crop indices) for `num_crops` crops (teacher: () without a target)."""
        student = tuple(range(num_crops)) if self.student_crops is None else tuple(self.student_crops)
        return student, tuple(self.teacher_crops) if self.ema_target else ()

    def init_state(self, output_dims, num_devices=1, settings=None):
        """The state before the first step: `initial_state(output_dims, num_devices, settings)` for the network's
        outputs of `output_dims` values ({'projection': 128, ...}; an int is the projection's) and the loss's
        `settings` (config.loss), each PER_DEVICE part stacked `num_devices` times along a new leading axis.
        Fails on a key without a stated rule."""
        if not isinstance(output_dims, dict):
            output_dims = {"projection": output_dims}
        state = self.initial_state(output_dims, num_devices, dict(settings or {}))
        missing = sorted(set(state) - set(self.state_rules))
        if missing:
            raise ValueError(f"the method's state {missing} has no cross-device rule; state one of {STATE_RULES} "
                             "for each key in Method.state_rules.")
        if self.stacked_initial_state:
            bad = {k: v.shape for k, v in state.items()
                   if self.state_rules[k] == PER_DEVICE and v.shape[:1] != (num_devices,)}
            if bad:
                raise ValueError(f"stacked initial state {bad} has no leading axis of {num_devices} devices.")
            return state
        return {k: jnp.stack([v] * num_devices) if self.state_rules[k] == PER_DEVICE else v
                for k, v in state.items()}


def _simclr(student, teacher, state, context, temperature=0.5):
    loss, aux = losses.nt_xent(student[0]["projection"], student[1]["projection"], temperature,
                               axis_name=context.axis_name)
    return loss, aux, state


def _byol(student, teacher, state, context):
    loss, aux = losses.byol_loss(student[0]["prediction"], student[1]["prediction"],
                                 teacher[0]["projection"], teacher[1]["projection"], axis_name=context.axis_name)
    return loss, aux, state


def _vicreg(student, teacher, state, context, **coeffs):
    loss, aux = losses.vicreg_loss(student[0]["projection"], student[1]["projection"], axis_name=context.axis_name,
                                   **coeffs)
    return loss, aux, state


def _tico(student, teacher, state, context, **coeffs):
    """TiCo (Zhu et al. 2022): view 1 through the online network, view 2 through the EMA target; nothing else is
    computed (the method declares student crop 0 and teacher crop 1)."""
    loss, aux = losses.tico_loss(student[0]["projection"], teacher[1]["projection"], state["cov"],
                                 axis_name=context.axis_name, **coeffs)
    cov = aux.pop("cov")
    return loss, aux, {"cov": cov}


def _vicreg_tico(student, teacher, state, context, **coeffs):
    loss, aux = losses.vicreg_tico_loss(student[0]["projection"], student[1]["projection"], state["cov"],
                                        axis_name=context.axis_name, **coeffs)
    cov = aux.pop("cov")
    return loss, aux, {"cov": cov}


def _barlow(student, teacher, state, context, **coeffs):
    loss, aux = losses.barlow_twins_loss(student[0]["projection"], student[1]["projection"],
                                         axis_name=context.axis_name, **coeffs)
    return loss, aux, state


def _simsiam(student, teacher, state, context):
    loss, aux = losses.simsiam_loss(student[0]["prediction"], student[1]["prediction"],
                                    student[0]["projection"], student[1]["projection"], axis_name=context.axis_name)
    return loss, aux, state


def _moco_v3(student, teacher, state, context, temperature=0.2):
    loss, aux = losses.moco_v3_loss(student[0]["prediction"], student[1]["prediction"],
                                    teacher[0]["projection"], teacher[1]["projection"], temperature,
                                    axis_name=context.axis_name)
    return loss, aux, state


def _dino(student, teacher, state, context, student_temperature=0.1, teacher_temperature=0.07,
          warmup_teacher_temperature=0.04, warmup_teacher_temperature_epochs=50.0, center_momentum=0.9):
    """DINO (Caron et al. 2021): the student's prototype scores of every crop (the two global crops, then the
    local ones) against the EMA teacher's of the two global crops, the teacher's sharpened by a temperature warmed
    up per step over the first epochs and centred by the running centre in the state."""
    temperature = losses.dino_teacher_temperature(
        context.step, warmup_teacher_temperature_epochs * context.steps_per_epoch, warmup_teacher_temperature,
        teacher_temperature)
    loss, aux = losses.dino_loss(jnp.stack([out["projection"] for out in student]),
                                 jnp.stack([out["projection"] for out in teacher if out is not None]),
                                 state["center"], student_temperature, temperature, center_momentum,
                                 axis_name=context.axis_name)
    center = aux.pop("center")
    return loss, dict(aux, teacher_temperature=temperature), {"center": center}


def _swav(student, teacher, state, context, temperature=0.1, epsilon=0.05, sinkhorn_iterations=3, queue_size=0,
          queue_start_epochs=0.0):
    """SwAV (Caron et al. 2020): the codes of the two global crops (Sinkhorn over the global batch, and from
    `queue_start_epochs` on over the queue's past projections too, scored against today's prototypes) predicted
    from every other crop. The queue takes this device's unit projections of the two global crops, newest first,
    and drops the oldest (solo-learn's swav.py: filled from the first step, used from its start epoch)."""
    scores = jnp.stack([out["projection"] for out in student])
    if not state["queue"].shape[1]:  # queue_size 0: no queue
        loss, aux = losses.swav_loss(scores, None, True, temperature, epsilon, sinkhorn_iterations,
                                     axis_name=context.axis_name)
        return loss, aux, state
    queue = state["queue"]
    queue_scores = queue @ models.unit_columns(context.params["projector"]["prototypes_v"])
    use_queue = context.step >= queue_start_epochs * context.steps_per_epoch
    loss, aux = losses.swav_loss(scores, queue_scores, use_queue, temperature, epsilon, sinkhorn_iterations,
                                 axis_name=context.axis_name)
    newest = lax.stop_gradient(jnp.stack([student[i]["embedding"] for i in GLOBAL_CROPS]))
    queue = jnp.concatenate([newest, queue[:, :queue.shape[1] - newest.shape[1]]], axis=1)
    return loss, dict(aux, queue_in_use=use_queue.astype(jnp.float32)), {"queue": queue}


def _swav_queue(output_dims, num_devices, settings):
    """SwAV's queue: each device's past unit projections of the two global crops, [2, queue_size / devices, d],
    zeros at first (of length 0 with queue_size 0: no queue). Kept per device and never averaged: Sinkhorn's sums
    run over every device, so the devices' queues together are the one queue of a single device holding the
    global batch (the same examples: the last queue_size / batch steps'), and the trajectory does not depend on
    the device count."""
    size = int(settings.get("queue_size", 0))
    return {"queue": jnp.zeros((2, size // num_devices, output_dims["embedding"]), jnp.float32)}


def _check_queue_of_batches(config, method_name, allow_empty=False):
    """A queue (config.loss.queue_size) that holds whole global batches: each step replaces the oldest batch, on
    every device its own share of it. Longer than the data set is fine (solo-learn's CIFAR NNCLR keeps 65,536)."""
    size, batch = config.loss.get("queue_size", 0), config.batch_size
    fit = max(1, round(size / batch)) * batch
    if size < 0 or size % batch:
        raise ValueError(f"config.loss.queue_size={size} is not a multiple of the global batch {batch}: "
                         f"{method_name}'s queue takes whole batches; use {fit}"
                         f"{' (or 0 for no queue)' if allow_empty else ''}.")
    if not size and not allow_empty:
        raise ValueError(f"config.loss.queue_size=0: {method_name} needs a queue; use a multiple of the global "
                         f"batch {batch} (e.g. {batch * 16}).")


def _check_swav(config):
    """A queue that holds whole global batches (each step replaces the oldest one), or none."""
    _check_queue_of_batches(config, "SwAV", allow_empty=True)


def _nnclr(student, teacher, state, context, temperature=0.2, queue_size=0):
    """NNCLR (Dwibedi et al. 2021): each view's projection replaced by its nearest neighbour in the support set,
    contrasted with the other view's prediction (`losses.nnclr_loss`); then this device's unit projections of
    view 1 take the support set's oldest batch slot (solo-learn's nnclr.py: a FIFO queue, written at a pointer
    that moves one batch a step, after the neighbours are found). The pointer is the step number: slot
    (step mod L / n) * n of this device's L rows, n its examples."""
    del queue_size  # the state's shape carries it
    loss, aux = losses.nnclr_loss(student[0]["prediction"], student[1]["prediction"], student[0]["projection"],
                                  student[1]["projection"], state["queue"], temperature, axis_name=context.axis_name)
    newest = aux.pop("newest")
    queue = state["queue"]
    slot = (context.step % (queue.shape[0] // newest.shape[0])) * newest.shape[0]
    return loss, aux, {"queue": lax.dynamic_update_slice_in_dim(queue, newest.astype(queue.dtype), slot, axis=0)}


NNCLR_SUPPORT_SEED = 0  # the support set's random start comes from this key, whatever config.seed


def _nnclr_support_set(output_dims, num_devices, settings):
    """NNCLR's support set: queue_size unit projections, [devices, queue_size / devices, d], starting as random
    unit vectors (solo-learn: ``F.normalize(torch.randn(queue_size, d))``) drawn once from NNCLR_SUPPORT_SEED and
    dealt out row by row (row r to device r mod devices). Kept per device and never averaged: each device writes
    its own examples, the nearest-neighbour search runs over every device's rows (`losses.nnclr_nearest_neighbours`),
    so the devices' rows together are, as a set, the support set of one device holding the global batch. Dealing
    the random rows out this way keeps that true while they are replaced: step t overwrites global rows
    [t B, (t + 1) B) mod L on one device, and on each of D devices the rows of that range it holds."""
    size, dim = int(settings.get("queue_size", 0)), output_dims["projection"]
    rows = jax.random.normal(jax.random.key(NNCLR_SUPPORT_SEED), (size, dim), jnp.float32)
    rows = rows / jnp.linalg.norm(rows, axis=1, keepdims=True)
    return {"queue": rows.reshape(size // num_devices, num_devices, dim).transpose(1, 0, 2)}


def _running_covariance(output_dims, num_devices, settings):
    """TiCo's running covariance of the projections, starting at zero."""
    return {"cov": losses.tico_initial_cov(output_dims["projection"])}


def _dino_center(output_dims, num_devices, settings):
    """DINO's centre of the teacher's outputs, starting at zero."""
    return {"center": losses.dino_initial_center(output_dims["projection"])}


def _moco_v2_plus(student, teacher, state, context, temperature=0.2, queue_size=0):
    """MoCo v2+ (solo-learn's mocov2plus.py): the online projections of both views against the EMA target's keys
    of the other view, the negatives a queue of past keys per view (`losses.moco_v2_loss`); then the keys of the
    global batch, gathered from every device, take the queue's oldest batch slot, at a pointer that is the step
    number: slot (step mod K / B) * B."""
    del queue_size  # the state's shape carries it
    loss, aux = losses.moco_v2_loss(student[0]["projection"], student[1]["projection"], teacher[0]["projection"],
                                    teacher[1]["projection"], state["queue"], temperature, axis_name=context.axis_name)
    newest = aux.pop("newest")
    queue = state["queue"]
    slot = (context.step % (queue.shape[1] // newest.shape[1])) * newest.shape[1]
    return loss, aux, {"queue": lax.dynamic_update_slice_in_dim(queue, newest.astype(queue.dtype), slot, axis=1)}


MOCO_QUEUE_SEED = 0  # the queue's random start comes from this key, whatever config.seed


def _moco_queue(output_dims, num_devices, settings):
    """MoCo's queue of negatives, one per view: [2, queue_size, d] random unit vectors at first (solo-learn:
    ``normalize(torch.randn(2, d, queue_size), dim=1)``). Every device holds the whole queue and writes the keys
    gathered from all devices into it, so the copies stay identical (kept per device, never averaged) and the
    trajectory is that of one device holding the global batch. The cost: each device stores all K keys (32,768 x
    256 x 2 views in float32 = 64 MiB), and the checkpoint one copy per device."""
    size, dim = int(settings.get("queue_size", 0)), output_dims["projection"]
    rows = jax.random.normal(jax.random.key(MOCO_QUEUE_SEED), (2, size, dim), jnp.float32)
    return {"queue": rows / jnp.linalg.norm(rows, axis=-1, keepdims=True)}


def _mae_forward(net, params, batch_stats, crops, indices, context, mask_ratio=0.75, norm_pix_loss=True):
    """MAE's masked pass (ssl_jax/mae.py) of each crop the student sees: a mask per example from the loss key
    folded with the crop's number and the example's global index, the encoder on the visible patches, the decoder
    on all; each output adds the mask and the crop's patches (the loss's target)."""
    del norm_pix_loss
    index = context.batch.get("global_index") if context.batch is not None else None
    outputs = [None] * len(crops)
    for i in indices:
        crop, p = crops[i], net.patch_size
        if index is None:  # ready crops without a global index (ssl_jax.bench --part=views): local positions
            index = jnp.arange(crop.shape[0])
        num_patches = (crop.shape[1] // p) * (crop.shape[2] // p)
        visible, restore, mask = mae.random_masking(jax.random.fold_in(context.key, i), index, num_patches,
                                                    mask_ratio)
        out = net.apply({"params": params}, crop, visible, restore, method=mae.MAENet.reconstruct)
        outputs[i] = dict(out, mask=mask, target=mae.patchify(crop, p))
    return tuple(outputs), batch_stats


def _mae(student, teacher, state, context, mask_ratio=0.75, norm_pix_loss=True):
    """MAE (He et al. 2022): the mean squared error of the decoder's pixels on the masked patches (per-patch
    normalised targets with `norm_pix_loss`), averaged over the crops the student saw (MAE: one)."""
    del mask_ratio  # the forward's
    seen = [out for out in student if out is not None]
    results = [losses.mae_loss(out["prediction"], out["target"], out["mask"], norm_pix_loss) for out in seen]
    loss = sum(r[0] for r in results) / len(results)
    aux = {k: sum(r[1][k] for r in results) / len(results) for k in results[0][1]}
    return loss, aux, state


def _check_mae(config):
    """A ViT backbone and a mask ratio in (0, 1)."""
    mae.check_mask_ratio(config.loss.get("mask_ratio", 0.75))
    if not config.model.name.startswith("vit_"):
        raise ValueError(f"config.model.name={config.model.name!r}: MAE masks a ViT's patches; use a ViT "
                         "(e.g. vit_small).")


METHODS = {
    "simclr": Method(_simclr),
    "byol": Method(_byol, predictor=True, ema_target=True),
    "vicreg": Method(_vicreg),
    "tico": Method(_tico, student_crops=(0,), teacher_crops=(1,), ema_target=True,
                   initial_state=_running_covariance, state_rules={"cov": AVERAGED}),
    "vicreg_tico": Method(_vicreg_tico, initial_state=_running_covariance, state_rules={"cov": AVERAGED}),
    "barlow_twins": Method(_barlow),
    "simsiam": Method(_simsiam, predictor=True),
    "moco_v3": Method(_moco_v3, predictor=True, ema_target=True),
    "dino": Method(_dino, local_crops=True, prototypes="dino", ema_target=True, initial_state=_dino_center,
                   state_rules={"center": AVERAGED},
                   frozen_at_start=((("projector", "last_layer_v"), 1.0),)),  # official freeze_last_layer=1
    "swav": Method(_swav, local_crops=True, prototypes="swav", initial_state=_swav_queue,
                   state_rules={"queue": PER_DEVICE}, check_config=_check_swav,
                   frozen_at_start=((("projector", "prototypes_v"), 2.0),)),  # solo-learn freeze_prototypes_epochs
    "nnclr": Method(_nnclr, predictor=True, initial_state=_nnclr_support_set, stacked_initial_state=True,
                    state_rules={"queue": PER_DEVICE},
                    check_config=lambda config: _check_queue_of_batches(config, "NNCLR")),
    "moco_v2_plus": Method(_moco_v2_plus, ema_target=True, initial_state=_moco_queue,
                           state_rules={"queue": PER_DEVICE},
                           check_config=lambda config: _check_queue_of_batches(config, "MoCo v2+")),
    "mae": Method(_mae, student_crops=(0,), forward=_mae_forward, network=mae.make_mae_net, check_config=_check_mae),
}


def get_method(name):
    if name not in METHODS:
        raise ValueError(f"config.method={name!r} is not known; choose one of {sorted(METHODS)}.")
    return METHODS[name]
