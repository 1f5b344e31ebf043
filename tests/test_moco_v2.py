"""Tests for MoCo v2+: losses.moco_v2_loss against a float64 NumPy reference written from the paper (He et al.
2020, Eq. 1; symmetrised as solo-learn's mocov2plus.py), on one device and on 8; the method's queue (each device
holds it whole and fills it with the keys gathered from all devices) on 1 and 8 devices; its errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ssl_jax import losses
from ssl_jax import methods

B, D, K = 16, 8, 48  # batch, projection size, queue length
T = 0.2


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_infonce(q, k, queue, temperature):
    """Eq. 1: L_q = -log exp(q.k+ / t) / (exp(q.k+ / t) + sum_{k-} exp(q.k- / t)), averaged over the queries."""
    q, k = unit(q), unit(k)
    pos = np.sum(q * k, axis=1) / temperature
    neg = q @ np.asarray(queue, np.float64).T / temperature
    top = np.maximum(pos, neg.max(axis=1))
    log_denominator = top + np.log(np.exp(pos - top) + np.exp(neg - top[:, None]).sum(axis=1))
    return np.mean(log_denominator - pos)


def np_moco_v2(q1, q2, k1, k2, queue, temperature=T):
    return 0.5 * np_infonce(q1, k2, queue[1], temperature) + 0.5 * np_infonce(q2, k1, queue[0], temperature)


def inputs(seed):
    rng = np.random.default_rng(seed)
    q1, q2, k1, k2 = (rng.normal(size=(B, D)).astype(np.float32) for _ in range(4))
    queue = unit(rng.normal(size=(2, K, D))).astype(np.float32)
    return q1, q2, k1, k2, queue


def test_moco_v2_loss_matches_the_reference():
    args = inputs(0)
    loss, aux = jax.jit(functools.partial(losses.moco_v2_loss, temperature=T))(*args)
    np.testing.assert_allclose(loss, np_moco_v2(*args), rtol=1e-5)
    np.testing.assert_allclose(aux["newest"], np.stack([unit(args[2]), unit(args[3])]), rtol=1e-6)
    assert 0.0 <= float(aux["accuracy"]) <= 1.0


def test_each_view_meets_the_queue_of_the_other_views_keys():
    """q1's negatives are queue[1] (past keys of view 2, as its positive k2), q2's are queue[0]."""
    q1, q2, k1, k2, queue = inputs(1)
    _, aux = losses.moco_v2_loss(q1, q2, k1, k2, queue, T)
    np.testing.assert_allclose(aux["loss_12"], np_infonce(q1, k2, queue[1], T), rtol=1e-5)
    np.testing.assert_allclose(aux["loss_21"], np_infonce(q2, k1, queue[0], T), rtol=1e-5)


def test_moco_v2_gradient_reaches_the_queries_only():
    q1, q2, k1, k2, queue = inputs(2)
    grads = jax.grad(lambda *a: losses.moco_v2_loss(*a, temperature=T)[0], argnums=(0, 1, 2, 3, 4))(
        q1, q2, k1, k2, queue)
    assert float(jnp.abs(grads[0]).sum()) > 0 and float(jnp.abs(grads[1]).sum()) > 0
    for g in grads[2:]:
        np.testing.assert_array_equal(g, 0.0)


def test_moco_v2_on_eight_devices_equals_one_device():
    """Each device holds 2 queries and keys and the whole queue: the per-device losses average to the one-device
    loss, and every device gets the global batch's keys to write."""
    ndev = 8
    q1, q2, k1, k2, queue = inputs(3)

    def per_device(q1, q2, k1, k2, queue):
        loss, aux = losses.moco_v2_loss(q1, q2, k1, k2, queue, T, axis_name="batch")
        return loss[None], aux["newest"][None]

    f = jax.shard_map(per_device, mesh=Mesh(np.array(jax.devices()[:ndev]), ("batch",)),
                      in_specs=(P("batch"), P("batch"), P("batch"), P("batch"), P()),
                      out_specs=(P("batch"), P("batch")))
    per_device_loss, newest = jax.jit(f)(q1, q2, k1, k2, queue)
    np.testing.assert_allclose(np.mean(per_device_loss), np_moco_v2(q1, q2, k1, k2, queue), rtol=1e-5)
    for device in range(ndev):
        np.testing.assert_allclose(newest[device], np.stack([unit(k1), unit(k2)]), rtol=1e-6)


def test_the_queue_starts_random_unit_and_the_same_on_every_device():
    method = methods.get_method("moco_v2_plus")
    one = np.asarray(method.init_state({"projection": D}, 1, {"queue_size": K})["queue"])
    eight = np.asarray(method.init_state({"projection": D}, 8, {"queue_size": K})["queue"])
    assert one.shape == (1, 2, K, D) and eight.shape == (8, 2, K, D)
    np.testing.assert_allclose(np.linalg.norm(one, axis=-1), 1.0, rtol=1e-5)
    for device in range(8):
        np.testing.assert_array_equal(eight[device], one[0])
    assert not np.allclose(one[0, 0], one[0, 1])


def test_the_method_writes_the_gathered_keys_at_the_steps_slot():
    """A queue of 3 batches: step 4 writes slot 4 mod 3 = 1, rows [B, 2B) of each view's queue, and leaves the
    rest."""
    q1, q2, k1, k2, _ = inputs(4)
    queue = unit(np.random.default_rng(5).normal(size=(2, 3 * B, D))).astype(np.float32)
    student = ({"projection": q1}, {"projection": q2})
    teacher = ({"projection": k1}, {"projection": k2})
    context = methods.StepContext(axis_name=None, step=jnp.asarray(4), steps_per_epoch=10)
    loss, aux, new_state = methods.get_method("moco_v2_plus").loss(student, teacher, {"queue": queue}, context,
                                                                   temperature=T, queue_size=3 * B)
    new = np.asarray(new_state["queue"])
    np.testing.assert_allclose(new[:, B:2 * B], np.stack([unit(k1), unit(k2)]), rtol=1e-6)
    np.testing.assert_array_equal(np.delete(new, np.s_[B:2 * B], axis=1), np.delete(queue, np.s_[B:2 * B], axis=1))
    np.testing.assert_allclose(loss, np_moco_v2(q1, q2, k1, k2, queue), rtol=1e-5)
    assert "newest" not in aux


def _moco_run(num_devices, steps, queue_size=32, batch_size=16):
    import helpers
    from ssl_jax import sharding
    from ssl_jax import train

    config = helpers.tiny_config("mocov2plus_cifar", batch_size=batch_size, steps=steps, num_devices=num_devices,
                                 **{"loss.queue_size": queue_size, "optimizer.warmup_epochs": 0.0})
    exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=64))
    state = exp.dp.put_state(train.initial_state(exp))
    states, values = [sharding.local_copy(exp.dp.get_state(state))], []
    for step in range(steps):
        state, metrics = train.run_steps(exp, state, step, 1)
        states.append(sharding.local_copy(exp.dp.get_state(state)))
        values.append(float(metrics["loss"]))
    return exp, states, values


def test_the_queue_holds_the_last_batches_keys_on_every_device_and_follows_the_device_count():
    """A queue of 2 global batches after 3 steps: slot 0 holds step 3's keys, slot 1 step 2's, the same on each of
    8 devices as on 1; the losses agree."""
    _, states1, losses1 = _moco_run(1, 3)
    _, states8, losses8 = _moco_run(8, 3)
    q1, q8 = states1[-1].loss_state["queue"], states8[-1].loss_state["queue"]
    assert q1.shape == (1, 2, 32, 16) and q8.shape == (8, 2, 32, 16)
    np.testing.assert_allclose(np.linalg.norm(q1, axis=-1), 1.0, rtol=1e-5)
    for device in range(8):
        np.testing.assert_array_equal(q8[device], q8[0])  # identical copies: every device wrote the same keys
    np.testing.assert_allclose(q8[0], q1[0], rtol=2e-3, atol=2e-4)
    after2 = states1[-2].loss_state["queue"][0]
    np.testing.assert_array_equal(q1[0][:, 16:], after2[:, 16:])  # step 2's keys stay in slot 1
    assert not np.allclose(q1[0][:, :16], after2[:, :16])          # step 3 overwrote slot 0
    np.testing.assert_allclose(losses8, losses1, rtol=(1e-4, 2e-3, 5e-2)[len(losses1) - 1])
    np.testing.assert_allclose(losses8[0], losses1[0], rtol=1e-5)


@pytest.mark.parametrize("size, message", [
    (44, r"config.loss.queue_size=44 is not a multiple of the global batch 16: MoCo v2\+'s queue takes whole "
         r"batches; use 48\.$"),
    (0, r"queue_size=0: MoCo v2\+ needs a queue"),
])
def test_a_bad_queue_size_gets_a_one_line_error(size, message):
    import helpers
    from ssl_jax import train

    config = helpers.tiny_config("mocov2plus_cifar", batch_size=16, **{"loss.queue_size": size})
    with pytest.raises(ValueError, match=message):
        train.build_experiment(config, helpers.synthetic_dataset())
