"""Tests for SwAV's pieces: losses.sinkhorn and losses.swav_loss against float64 NumPy references written from
the paper's Algorithm 1 (Caron et al. 2020), on one device and on 8 with per-device queues."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ssl_jax import losses

C, B, K, L = 4, 16, 12, 32  # 2 global + 2 local crops, batch, prototypes, queue length
KW = dict(temperature=0.1, epsilon=0.05, iterations=3)


# ----------------------------------------------------------------------------
# Float64 NumPy references, from the paper's Algorithm 1 (its `sinkhorn` and the swapped loss), extended to
# multi-crop and a queue as Sec. 3.1-3.2 and the official main_swav.py.
# ----------------------------------------------------------------------------

def np_sinkhorn(scores, eps=0.05, niters=3):
    """Algorithm 1's sinkhorn, line by line."""
    q = np.exp(np.asarray(scores, np.float64) / eps).T
    q /= q.sum()
    k, b = q.shape
    r, c = np.ones(k) / k, np.ones(b) / b
    for _ in range(niters):
        u = q.sum(axis=1)
        q *= (r / u)[:, None]
        q *= (c / q.sum(axis=0))[None, :]
    return (q / q.sum(axis=0, keepdims=True)).T


def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_swav(scores, queue_scores=None, temperature=0.1, epsilon=0.05, iterations=3):
    """Codes of the two global crops (with the queue's scores before the batch), each predicting every other crop."""
    scores = np.asarray(scores, np.float64)
    num_crops, batch = scores.shape[:2]
    total = 0.0
    for i in range(2):
        s = scores[i] if queue_scores is None else np.concatenate([queue_scores[i], scores[i]])
        q = np_sinkhorn(s, epsilon, iterations)[-batch:]
        sub = 0.0
        for v in range(num_crops):
            if v != i:
                sub -= np.mean(np.sum(q * np_log_softmax(scores[v] / temperature), axis=1))
        total += sub / (num_crops - 1)
    return total / 2


def unit_scores(seed, shape, dim=8):
    """Cosine scores of random unit vectors against K random unit prototypes, as SwAV's head gives them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=shape[:-1] + (dim,))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    protos = rng.normal(size=(dim, shape[-1]))
    protos /= np.linalg.norm(protos, axis=0, keepdims=True)
    return (z @ protos).astype(np.float32)


def test_sinkhorn_matches_the_papers_algorithm():
    scores = unit_scores(0, (B, K))
    got = jax.jit(losses.sinkhorn)(scores)
    np.testing.assert_allclose(got, np_sinkhorn(scores), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(np.sum(got, axis=1), 1.0, rtol=1e-5)  # each example's code is a distribution


def test_sinkhorn_converges_to_equal_use_of_the_prototypes():
    scores = unit_scores(1, (B, K))
    q = losses.sinkhorn(scores, iterations=200)
    np.testing.assert_allclose(np.sum(q, axis=0), B / K, rtol=1e-4)  # each prototype gets B/K examples
    sharp = losses.sinkhorn(scores, epsilon=0.01, iterations=3)
    soft = losses.sinkhorn(scores, epsilon=1.0, iterations=3)
    assert np.max(sharp, axis=1).mean() > np.max(soft, axis=1).mean()  # a smaller epsilon, harder codes


def test_sinkhorn_on_eight_devices_equals_one_device():
    ndev = 8
    scores = unit_scores(2, (B, K))
    mesh = Mesh(np.array(jax.devices()[:ndev]), ("batch",))
    f = jax.shard_map(functools.partial(losses.sinkhorn, axis_name="batch"), mesh=mesh, in_specs=P("batch"),
                      out_specs=P("batch"))
    np.testing.assert_allclose(jax.jit(f)(scores), np_sinkhorn(scores), rtol=2e-5, atol=1e-7)


def test_sinkhorn_does_not_overflow_on_large_scores():
    scores = 5.0 * unit_scores(3, (B, K))  # exp(5 / 0.05) = exp(100) overflows float32 without the shift
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(np.exp(scores / 0.05)))
    np.testing.assert_allclose(losses.sinkhorn(scores), np_sinkhorn(scores), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("with_queue", [False, True])
def test_swav_loss_matches_the_reference(with_queue):
    scores = unit_scores(4, (C, B, K))
    queue = unit_scores(5, (2, L, K)) if with_queue else None
    loss, aux = jax.jit(functools.partial(losses.swav_loss, **KW))(scores, queue)
    np.testing.assert_allclose(loss, np_swav(scores, queue), rtol=1e-5)
    assert 1.0 / K < float(aux["code_max"]) <= 1.0
    assert 0.0 < float(aux["prediction_entropy"]) <= np.log(K) + 1e-5


def test_a_queue_not_in_use_changes_nothing():
    scores = unit_scores(6, (C, B, K))
    queue = unit_scores(7, (2, L, K))
    off, _ = losses.swav_loss(scores, queue, use_queue=jnp.asarray(False), **KW)
    on, _ = losses.swav_loss(scores, queue, use_queue=jnp.asarray(True), **KW)
    np.testing.assert_allclose(off, np_swav(scores), rtol=1e-5)
    np.testing.assert_allclose(on, np_swav(scores, queue), rtol=1e-5)
    assert abs(float(on) - float(off)) > 1e-4


def test_swav_gradient_flows_through_the_predictions_only():
    """The codes are stop-gradient: for two crops, dL/ds_v = (softmax(s_v / T) - q_other) / (2 T B)."""
    scores = unit_scores(8, (2, B, K))
    grad = jax.grad(lambda s: losses.swav_loss(s, **KW)[0])(scores)
    s64 = scores.astype(np.float64)
    for v, other in ((0, 1), (1, 0)):
        p = np.exp(np_log_softmax(s64[v] / KW["temperature"]))
        expected = (p - np_sinkhorn(s64[other])) / (2 * KW["temperature"] * B)
        np.testing.assert_allclose(grad[v], expected, rtol=1e-4, atol=1e-6)


def test_swav_loss_on_eight_devices_with_their_own_queues_equals_one_device_with_all():
    """Each device holds its share of the queue (its own past examples); Sinkhorn's sums over all devices make the
    codes those of one device holding the whole queue and the whole batch."""
    ndev = 8
    scores = unit_scores(9, (C, B, K))
    queue = unit_scores(10, (2, L, K))

    def per_device(s, q):
        loss, _ = losses.swav_loss(s, q, use_queue=jnp.asarray(True), axis_name="batch", **KW)
        return loss[None]

    f = jax.shard_map(per_device, mesh=Mesh(np.array(jax.devices()[:ndev]), ("batch",)),
                      in_specs=(P(None, "batch"), P(None, "batch")), out_specs=P("batch"))
    per_device_loss = jax.jit(f)(scores, queue)
    np.testing.assert_allclose(np.mean(per_device_loss), np_swav(scores, queue), rtol=1e-5)


def test_swav_loss_refuses_a_single_crop():
    with pytest.raises(ValueError, match="C >= 2"):
        losses.swav_loss(unit_scores(11, (1, B, K)))


# ----------------------------------------------------------------------------
# The method in the train step: its queue, its frozen prototypes, its errors.
# ----------------------------------------------------------------------------

def _swav_run(num_devices, steps, queue_size=32, batch_size=16, **overrides):
    """A tiny SwAV run (width-4 ResNet-18, 24 prototypes, the queue in use from the first step); returns the
    experiment, the host state after each step (the initial one first) and the losses."""
    import helpers
    from ssl_jax import sharding
    from ssl_jax import train

    config = helpers.tiny_config("swav_cifar", batch_size=batch_size, steps=steps, num_devices=num_devices, **{
        "model.num_prototypes": 24, "loss.queue_size": queue_size, "loss.queue_start_epochs": 0.0,
        "optimizer.warmup_epochs": 0.0, **overrides})
    exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=64))
    state = exp.dp.put_state(train.initial_state(exp))
    states, values = [sharding.local_copy(exp.dp.get_state(state))], []
    for step in range(steps):
        state, metrics = train.run_steps(exp, state, step, 1)
        states.append(sharding.local_copy(exp.dp.get_state(state)))
        values.append(float(metrics["loss"]))
    return exp, states, values


def _queue_in_global_order(queue, batch_size):
    """[devices, 2, L / devices, d] per-device queues -> [2, L, d] as one device would hold them: newest step first,
    each step's examples in global order (device 0's, then device 1's, ...)."""
    devices, crops, local_length, dim = queue.shape
    local_batch = batch_size // devices
    steps = local_length // local_batch
    by_step = queue.reshape(devices, crops, steps, local_batch, dim)
    return np.transpose(by_step, (1, 2, 0, 3, 4)).reshape(crops, steps * batch_size, dim)


def test_the_queue_holds_the_last_steps_projections_newest_first_and_follows_the_device_count():
    """After 3 steps a queue of 2 global batches holds the unit projections of steps 3 and 2, newest first (older
    slots drop out), on 1 device and, each device keeping its own examples, on 8; the losses agree."""
    exp1, states1, losses1 = _swav_run(1, 3)
    exp8, states8, losses8 = _swav_run(8, 3)
    q1, q8 = states1[-1].loss_state["queue"], states8[-1].loss_state["queue"]
    assert q1.shape == (1, 2, 32, 16) and q8.shape == (8, 2, 4, 16)
    np.testing.assert_allclose(np.linalg.norm(q1, axis=-1), 1.0, rtol=1e-5)  # every slot filled, unit rows
    # Rounding differs between 1 and 8 devices and grows over the steps: up to 3.7e-3 on one host (AMD EPYC), 2e-4 on
    # another; a row in the wrong place differs by the rows' own size (about 0.25 for unit rows of 16).
    np.testing.assert_allclose(_queue_in_global_order(q8, 16), q1[0], rtol=0, atol=1e-2)
    # Newest first: step 3's first 16 rows differ from step 2's, which sit behind them.
    q_step2 = states1[-2].loss_state["queue"][0]
    np.testing.assert_array_equal(q1[0][:, 16:], q_step2[:, :16])
    np.testing.assert_allclose(losses8, losses1, rtol=(1e-4, 2e-3, 5e-2)[len(losses1) - 1])
    np.testing.assert_allclose(losses8[0], losses1[0], rtol=1e-5)


def test_the_queue_is_not_used_before_its_start_epoch():
    """With the start at epoch 1 (4 steps of 16 from 64 images) the queue fills but the codes ignore it."""
    exp, states, losses_ = _swav_run(1, 2, **{"loss.queue_start_epochs": 1.0})
    exp0, states0, losses0 = _swav_run(1, 2, queue_size=0)
    np.testing.assert_allclose(losses_, losses0, rtol=1e-5)
    assert np.abs(states[-1].loss_state["queue"]).sum() > 0
    assert states0[-1].loss_state["queue"].shape == (1, 2, 0, 16)


def test_swav_freezes_its_prototypes_for_two_epochs():
    exp, states, _ = _swav_run(1, 10)
    assert exp.steps_per_epoch == 4
    prototypes = [s.params["projector"]["prototypes_v"] for s in states]
    for step in range(1, 9):  # steps 0-7: the first two epochs
        np.testing.assert_array_equal(prototypes[step], prototypes[0])
    assert not np.array_equal(prototypes[10], prototypes[8])
    mlp = [s.params["projector"]["mlp"] for s in states]
    assert not np.array_equal(jax.tree.leaves(mlp[1])[0], jax.tree.leaves(mlp[0])[0])


@pytest.mark.parametrize("overrides, message", [
    ({"loss.queue_size": 44}, r"queue_size=44 is not a multiple of the global batch 16.*use 48"),
    ({"model.num_prototypes": 0}, "scores prototypes: set it > 0"),
])
def test_bad_swav_settings_get_one_line_errors(overrides, message):
    import helpers
    from ssl_jax import train

    config = helpers.tiny_config("swav_cifar", batch_size=16, **overrides)
    with pytest.raises(ValueError, match=message):
        train.build_experiment(config, helpers.synthetic_dataset())
