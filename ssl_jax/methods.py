"""The method registry: what each method needs around its pure loss.

A method is one entry here: its loss adapter (which network outputs go into which loss), whether the network has
a predictor or DINO's prototype head, whether an EMA target network is kept, what loss state it carries between
steps and which parameters stay frozen at the start. The train step is written once against this description;
adding a method is one loss in `losses.py`, one entry here and one config file.

A loss adapter is called as `adapter(online, target, loss_state, context, **config.loss)` where `online` and
`target` are pairs (view 1, view 2) of the network's output dicts ('features', 'projection', optionally
'prediction'); `target` is None for methods without an EMA target; `context` is the step's `StepContext`. It
returns `(loss, aux)`; for every key of the loss state, `aux[key]` is the new value carried to the next step,
averaged over devices (it is computed from gathered or averaged batch statistics, so every device holds the same).
"""
import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from ssl_jax import losses


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a loss adapter may read besides the network outputs: the mesh axis to reduce over, the step number
    (a traced int) and the steps per epoch (for schedules counted in epochs)."""
    axis_name: Any
    step: Any
    steps_per_epoch: int


def _no_loss_state(output_dim):
    return {}


@dataclasses.dataclass(frozen=True)
class Method:
    loss: Callable
    predictor: bool = False
    prototypes: bool = False           # the projector is DINO's head (config.model.num_prototypes > 0)
    ema_target: bool = False
    initial_loss_state: Callable = _no_loss_state   # output_dim -> {name: array}
    frozen_at_start: tuple = ()        # ((parameter path, epochs), ...): not updated during those first epochs

    def init_loss_state(self, output_dim):
        """The loss state before the first step, for network outputs ('projection') of `output_dim` values."""
        return self.initial_loss_state(output_dim)


def _simclr(online, target, loss_state, context, temperature=0.5):
    return losses.nt_xent(online[0]["projection"], online[1]["projection"], temperature, axis_name=context.axis_name)


def _byol(online, target, loss_state, context):
    return losses.byol_loss(online[0]["prediction"], online[1]["prediction"],
                            target[0]["projection"], target[1]["projection"], axis_name=context.axis_name)


def _vicreg(online, target, loss_state, context, **coeffs):
    return losses.vicreg_loss(online[0]["projection"], online[1]["projection"], axis_name=context.axis_name, **coeffs)


def _tico(online, target, loss_state, context, **coeffs):
    """TiCo: view 1 through the online network, view 2 through the EMA target (Zhu et al. 2022)."""
    return losses.tico_loss(online[0]["projection"], target[1]["projection"], loss_state["cov"],
                            axis_name=context.axis_name, **coeffs)


def _vicreg_tico(online, target, loss_state, context, **coeffs):
    return losses.vicreg_tico_loss(online[0]["projection"], online[1]["projection"], loss_state["cov"],
                                   axis_name=context.axis_name, **coeffs)


def _barlow(online, target, loss_state, context, **coeffs):
    return losses.barlow_twins_loss(online[0]["projection"], online[1]["projection"], axis_name=context.axis_name,
                                    **coeffs)


def _simsiam(online, target, loss_state, context):
    return losses.simsiam_loss(online[0]["prediction"], online[1]["prediction"],
                               online[0]["projection"], online[1]["projection"], axis_name=context.axis_name)


def _moco_v3(online, target, loss_state, context, temperature=0.2):
    return losses.moco_v3_loss(online[0]["prediction"], online[1]["prediction"],
                               target[0]["projection"], target[1]["projection"], temperature,
                               axis_name=context.axis_name)


def _dino(online, target, loss_state, context, student_temperature=0.1, teacher_temperature=0.07,
          warmup_teacher_temperature=0.04, warmup_teacher_temperature_epochs=50.0, center_momentum=0.9):
    """DINO (Caron et al. 2021): the student's prototype scores of both views against the EMA teacher's, the
    teacher's sharpened by a temperature warmed up per step over the first epochs and centred by the running
    centre in the loss state."""
    temperature = losses.dino_teacher_temperature(
        context.step, warmup_teacher_temperature_epochs * context.steps_per_epoch, warmup_teacher_temperature,
        teacher_temperature)
    loss, aux = losses.dino_loss(jnp.stack([out["projection"] for out in online]),
                                 jnp.stack([out["projection"] for out in target]), loss_state["center"],
                                 student_temperature, temperature, center_momentum, axis_name=context.axis_name)
    return loss, dict(aux, teacher_temperature=temperature)


def _running_covariance(output_dim):
    """TiCo's running covariance of the projections, starting at zero."""
    return {"cov": losses.tico_initial_cov(output_dim)}


def _dino_center(output_dim):
    """DINO's centre of the teacher's outputs, starting at zero."""
    return {"center": losses.dino_initial_center(output_dim)}


METHODS = {
    "simclr": Method(_simclr),
    "byol": Method(_byol, predictor=True, ema_target=True),
    "vicreg": Method(_vicreg),
    "tico": Method(_tico, ema_target=True, initial_loss_state=_running_covariance),
    "vicreg_tico": Method(_vicreg_tico, initial_loss_state=_running_covariance),
    "barlow_twins": Method(_barlow),
    "simsiam": Method(_simsiam, predictor=True),
    "moco_v3": Method(_moco_v3, predictor=True, ema_target=True),
    "dino": Method(_dino, prototypes=True, ema_target=True, initial_loss_state=_dino_center,
                   frozen_at_start=((("projector", "last_layer_v"), 1.0),)),  # official freeze_last_layer=1
}


def get_method(name):
    if name not in METHODS:
        raise ValueError(f"config.method={name!r} is not known; choose one of {sorted(METHODS)}.")
    return METHODS[name]
