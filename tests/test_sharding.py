"""Data parallelism: the device count and the mapping (shard_map or pmap) do not change the result."""
import jax
import numpy as np
import pytest

import helpers
from ssl_jax import config_files
from ssl_jax import sharding
from ssl_jax import train

METHOD_CONFIGS = list(config_files.METHOD_CONFIGS.values())

STATE_SLOTS = ("params", "batch_stats", "opt_state", "target_params", "target_batch_stats", "loss_state",
               "probe_params")


def _build(config_name, num_devices, parallel="shard_map", total_steps=24):
    """A tiny experiment (global batch 16, no warm-up) planned for `total_steps`, which set the lr and EMA
    schedules; its initial state on the devices and its step function."""
    config = helpers.tiny_config(config_name, batch_size=16, steps=total_steps, num_devices=num_devices,
                                 parallel=parallel, **{"optimizer.warmup_epochs": 0.0})
    exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=32))
    return exp, exp.dp.put_state(train.initial_state(exp)), train.make_step_fn(exp)


def _run(config_name, num_devices, steps, parallel="shard_map", tracked=None):
    """Runs `steps` steps; returns the host state and metrics after the first step, the tracked number of
    every step (the loss unless `tracked` says otherwise) and the final host state."""
    exp, state, step_fn = _build(config_name, num_devices, parallel)
    values = []
    for step in range(steps):
        state, metrics = train.run_steps(exp, state, step, 1, step_fn)
        values.append((tracked or (lambda m, k: float(m["loss"])))(metrics, step))
        if step == 0:
            after_first = sharding.local_copy((exp.dp.get_state(state), metrics))
    return after_first, values, sharding.local_copy(exp.dp.get_state(state))


def _assert_trees_close(a, b, rtol, atol, leaf_scale_tol=0.0):
    """Every leaf of `a` close to `b`'s: |a - b| <= atol + rtol |b| + leaf_scale_tol max|b| elementwise."""
    paths_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = jax.tree.leaves(b)
    assert len(paths_a) == len(leaves_b)
    for (path, x), y in zip(paths_a, leaves_b):
        helpers.assert_leaf_close(x, y, rtol, atol, leaf_scale_tol, err_msg=jax.tree_util.keystr(path))


def _shared_loss_state(state):
    """The loss state without its per-device parts (a queue has one copy per device, its length split among them:
    the method's own tests compare it in global order, e.g. tests/test_swav.py)."""
    return {k: v for k, v in state.loss_state.items() if not k.startswith("queue")}


def _assert_same_step(run_a, run_b, rtol=1e-4, atol=1e-5, leaf_scale_tol=helpers.LEAF_SCALE_TOL):
    """The same metrics up to float rounding, and the same state (every slot, optimizer state included, the loss
    state's shared parts) up to float rounding and its amplification (helpers.LEAF_SCALE_TOL)."""
    (state_a, metrics_a), (state_b, metrics_b) = run_a, run_b
    assert sorted(metrics_a) == sorted(metrics_b)
    _assert_trees_close(metrics_a, metrics_b, rtol, atol)
    for slot in STATE_SLOTS:
        pick = _shared_loss_state if slot == "loss_state" else (lambda state: getattr(state, slot))
        _assert_trees_close(pick(state_a), pick(state_b), rtol, atol, leaf_scale_tol)
    assert int(state_a.step) == int(state_b.step)


def _tico_tracked(metrics, step, beta=0.9):
    """TiCo's loss rises while its running covariance C fills up from zero, so what must go down for TiCo is the
    covariance contrast mean(z1' C z1) with C's fill corrected: divided by 1 - beta^(k+1)."""
    return float(metrics["covariance"]) / (1 - beta ** (step + 1))


def _moco_tracked(metrics, step):
    """MoCo v2+'s loss rises while its queue fills: the 32,768 random unit keys it starts with score about 0 against
    a query, the real keys that replace them score near the positive (on these toy images of 10 colour-and-stripe
    patterns, q.k about 0.9: measured 6.64 -> 6.83 over 24 steps, with positive similarity 0.90 -> 0.94). What must
    improve is the agreement of each query with its own key: minus the mean positive similarity q.k must go down."""
    del step
    return -float(metrics["positive_similarity"])


TRACKED = {"tico_cifar": _tico_tracked, "mocov2plus_cifar": _moco_tracked}


# After one step the device counts agree to float rounding. After that these width-4 test networks (batch 16, peak
# learning rate from step 0) are chaotic: multiplying every initial parameter of a one-device run by
# (1 + 1e-7 * noise) changed its loss by up to 5.2e-4 (relative) at step 2 and up to 1.4e-2 at step 3 (SimCLR,
# VICReg, Barlow Twins; Barlow the most). Later steps are therefore compared through the loss, each step within a
# few times that envelope: where the rounding lands decides the rest.
LATER_LOSS_RTOL = (1e-4, 2e-3, 5e-2)  # steps 1, 2, 3

# Where the loss is not asked to fall on these 24 toy steps (finiteness and device-count agreement still are):
# TiCo at its CIFAR rho of 2 learns on real data (the learning check in .ci/run), but on 16 random images a batch
# its invariance does not improve in 24 steps and its contrast, now weakly weighted, drifts up (0.20 -> 0.26
# fill-corrected); at rho 8 that contrast fell here while the method failed on real data, so the toy trend says
# little either way. (VICReg+TiCo was exempt too until its contrast took VICReg's 1/D; its loss falls here now.)
# DINO's loss is a cross-entropy to a moving target (the EMA teacher, re-centred and sharpened every step): on these
# toy steps it rises (8.65 -> 9.32 over 24 steps, log K = 8.32), while on real data it falls and the backbone
# gains 5.4 kNN points in 120 steps (the learning check, docs/learning_check.md).
NO_FALLING_LOSS_ON_TOY = ("tico_cifar", "dino_cifar")


def _assert_losses_follow(values, reference):
    for step, (value, want) in enumerate(zip(values, reference)):
        np.testing.assert_allclose(value, want, rtol=LATER_LOSS_RTOL[step], err_msg=f"step {step + 1}")


@pytest.mark.parametrize("config_name", METHOD_CONFIGS)
def test_every_method_trains_and_eight_devices_follow_one(config_name):
    """Each method: the loss (or what TRACKED names) goes down over 24 steps on one device, the loss state is
    threaded through the steps, and 8 devices reproduce the first step (every state slot and metric) and the losses of the next two."""
    tracked = TRACKED.get(config_name)
    one_first, one_values, one_final = _run(config_name, 1, 24, tracked=tracked)
    assert np.isfinite(one_values).all(), one_values
    if config_name not in NO_FALLING_LOSS_ON_TOY:
        assert np.mean(one_values[-6:]) < np.mean(one_values[:6]), one_values
    for key, value in one_final.loss_state.items():
        assert np.abs(value).sum() > 0, f"loss state {key} was not updated"
        if value.ndim == 2:  # a covariance
            np.testing.assert_allclose(value, value.T, atol=1e-6)
    eight_first, eight_values, _ = _run(config_name, 8, 3, tracked=tracked)
    _assert_same_step(one_first, eight_first)
    _assert_losses_follow(eight_values, one_values[:3])


@pytest.mark.parametrize("config_name", ["simclr_cifar", "tico_cifar"])
def test_two_devices_follow_the_one_device_trajectory(config_name):
    one_first, one_values, _ = _run(config_name, 1, 3)
    two_first, two_values, _ = _run(config_name, 2, 3)
    _assert_same_step(one_first, two_first)
    _assert_losses_follow(two_values, one_values)


@pytest.mark.parametrize("config_name", ["simclr_cifar", "byol_cifar"])
def test_pmap_and_shard_map_agree(config_name):
    """The same per-device function under both mappings: the same numbers, step after step."""
    shard_map_first, shard_map_values, shard_map_final = _run(config_name, 4, 2, "shard_map")
    pmap_first, pmap_values, pmap_final = _run(config_name, 4, 2, "pmap")
    _assert_same_step(shard_map_first, pmap_first, rtol=1e-5, atol=1e-6, leaf_scale_tol=0.0)
    for slot in STATE_SLOTS:
        _assert_trees_close(getattr(shard_map_final, slot), getattr(pmap_final, slot), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pmap_values, shard_map_values, rtol=1e-6)


def test_unknown_parallel_mode_is_rejected():
    with pytest.raises(ValueError, match="config.parallel='xmap'"):
        sharding.DataParallel(sharding.make_mesh(1), "xmap")


def test_too_many_devices_is_rejected():
    with pytest.raises(ValueError, match="config.num_devices=64"):
        sharding.make_mesh(64)


def test_put_batch_splits_the_global_batch_in_order():
    dp = sharding.DataParallel(sharding.make_mesh(8))
    batch = {"x": np.arange(16 * 3).reshape(16, 3)}
    placed = dp.put_batch(batch)["x"]
    assert placed.shape == (16, 3)
    for shard in placed.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), batch["x"][shard.index])
    assert len({shard.device for shard in placed.addressable_shards}) == 8


def test_prefetch_keeps_order_and_all_items():
    placed = []
    out = list(sharding.prefetch(iter(range(7)), lambda x: placed.append(x) or x * 10, size=2))
    assert out == [x * 10 for x in range(7)]
