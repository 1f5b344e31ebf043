"""The method registry: what each method needs around its pure loss.

A method is one entry here: its loss adapter (which network outputs go into which loss), whether the network has
a predictor, whether an EMA target network is kept, and what loss state it carries between steps. The train step
is written once against this description; adding a method is one loss in `losses.py`, one entry here and one
config file.

A loss adapter is called as `adapter(online, target, loss_state, axis_name, **config.loss)` where `online` and
`target` are pairs (view 1, view 2) of the network's output dicts ('features', 'projection', optionally
'prediction'); `target` is None for methods without an EMA target. It returns `(loss, aux)`; for every key in
`loss_state_keys`, `aux[key]` is the new value carried to the next step.
"""
import dataclasses
from typing import Callable

from ssl_jax import losses


@dataclasses.dataclass(frozen=True)
class Method:
    loss: Callable
    predictor: bool = False
    ema_target: bool = False
    loss_state_keys: tuple = ()

    def init_loss_state(self, projection_dim):
        """Initial loss state: each key is a running covariance of the projections (TiCo's), starting at zero."""
        return {key: losses.tico_initial_cov(projection_dim) for key in self.loss_state_keys}


def _simclr(online, target, loss_state, axis_name, temperature=0.5):
    return losses.nt_xent(online[0]["projection"], online[1]["projection"], temperature, axis_name=axis_name)


def _byol(online, target, loss_state, axis_name):
    return losses.byol_loss(online[0]["prediction"], online[1]["prediction"],
                            target[0]["projection"], target[1]["projection"], axis_name=axis_name)


def _vicreg(online, target, loss_state, axis_name, **coeffs):
    return losses.vicreg_loss(online[0]["projection"], online[1]["projection"], axis_name=axis_name, **coeffs)


def _tico(online, target, loss_state, axis_name, **coeffs):
    """TiCo: view 1 through the online network, view 2 through the EMA target (Zhu et al. 2022)."""
    return losses.tico_loss(online[0]["projection"], target[1]["projection"], loss_state["cov"],
                            axis_name=axis_name, **coeffs)


def _vicreg_tico(online, target, loss_state, axis_name, **coeffs):
    return losses.vicreg_tico_loss(online[0]["projection"], online[1]["projection"], loss_state["cov"],
                                   axis_name=axis_name, **coeffs)


def _barlow(online, target, loss_state, axis_name, **coeffs):
    return losses.barlow_twins_loss(online[0]["projection"], online[1]["projection"], axis_name=axis_name, **coeffs)


def _simsiam(online, target, loss_state, axis_name):
    return losses.simsiam_loss(online[0]["prediction"], online[1]["prediction"],
                               online[0]["projection"], online[1]["projection"], axis_name=axis_name)


def _moco_v3(online, target, loss_state, axis_name, temperature=0.2):
    return losses.moco_v3_loss(online[0]["prediction"], online[1]["prediction"],
                               target[0]["projection"], target[1]["projection"], temperature, axis_name=axis_name)


METHODS = {
    "simclr": Method(_simclr),
    "byol": Method(_byol, predictor=True, ema_target=True),
    "vicreg": Method(_vicreg),
    "tico": Method(_tico, ema_target=True, loss_state_keys=("cov",)),
    "vicreg_tico": Method(_vicreg_tico, loss_state_keys=("cov",)),
    "barlow_twins": Method(_barlow),
    "simsiam": Method(_simsiam, predictor=True),
    "moco_v3": Method(_moco_v3, predictor=True, ema_target=True),
}


def get_method(name):
    if name not in METHODS:
        raise ValueError(f"config.method={name!r} is not known; choose one of {sorted(METHODS)}.")
    return METHODS[name]
