"""The method protocol (methods.Method, train_step.make_per_device_step): which crops each network sees,
multi-crop in the step, state that crosses devices by its stated rule (averaged, or one copy per device),
joint BatchNorm, the loss's own key and the errors for crops a method or a backbone cannot use."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import losses
from ssl_jax import methods
from ssl_jax import models
from ssl_jax import sharding
from ssl_jax import train
from ssl_jax import train_step

QUEUE_LENGTH = 12


def _queue_loss(student, teacher, state, context, temperature=0.5):
    """A toy method: SimCLR's loss; a per-device queue of the global indices this device has seen (newest first),
    the average of the batch's mean index over devices, and the loss's key's first word."""
    loss, aux = losses.nt_xent(student[0]["projection"], student[1]["projection"], temperature,
                               axis_name=context.axis_name)
    index = context.batch["global_index"]
    queue = jnp.concatenate([index.astype(jnp.float32), state["queue"]])[:QUEUE_LENGTH]
    key_word = jax.random.key_data(context.key).reshape(-1)[0].astype(jnp.float32)
    return loss, aux, {"queue": queue, "mean_index": index.mean(), "key_word": key_word}


TOY = methods.Method(
    _queue_loss,
    initial_state=lambda output_dims, num_devices, settings: {"queue": jnp.full((QUEUE_LENGTH,), -1.0), "mean_index": jnp.zeros(()),
                                      "key_word": jnp.zeros(())},
    state_rules={"queue": methods.PER_DEVICE, "mean_index": methods.AVERAGED, "key_word": methods.AVERAGED})


def _toy_experiment(monkeypatch, num_devices, parallel, batch_size=8):
    monkeypatch.setitem(methods.METHODS, "toy_queue", TOY)
    config = helpers.tiny_config("simclr_cifar", batch_size=batch_size, num_devices=num_devices,
                                 parallel=parallel, method="toy_queue")
    return train.build_experiment(config, helpers.synthetic_dataset(num_train=32))


@pytest.mark.parametrize("parallel", ["shard_map", "pmap"])
def test_per_device_state_keeps_each_devices_own_copy_and_averaged_state_is_averaged(monkeypatch, parallel):
    exp = _toy_experiment(monkeypatch, num_devices=4, parallel=parallel)
    initial = train.initial_state(exp)
    assert initial.loss_state["queue"].shape == (4, QUEUE_LENGTH)  # one copy per device
    state, _ = train.run_steps(exp, exp.dp.put_state(initial), 0, 2)
    host = sharding.local_copy(exp.dp.get_state(state))
    per_device = 8 // 4
    for device in range(4):  # device d holds global positions 2d, 2d + 1 of every batch; newest step first
        mine = [2.0 * device, 2.0 * device + 1]
        np.testing.assert_array_equal(host.loss_state["queue"][device], mine * 2 + [-1.0] * (QUEUE_LENGTH - 4))
    assert per_device == 2
    assert float(host.loss_state["mean_index"]) == pytest.approx(3.5)  # the global batch's mean position
    # Placed again, the state is what it was: the round trip a checkpoint makes.
    again = sharding.local_copy(exp.dp.get_state(exp.dp.put_state(host)))
    for got, want in zip(jax.tree.leaves(again), jax.tree.leaves(host)):
        np.testing.assert_array_equal(got, want)


def test_per_device_state_survives_a_checkpoint(monkeypatch, tmp_path):
    exp = _toy_experiment(monkeypatch, num_devices=2, parallel="shard_map")
    state, _ = train.run_steps(exp, exp.dp.put_state(train.initial_state(exp)), 0, 1)
    checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1, keep=1)
    checkpointer.save(1, exp.dp.get_state(state), force=True)
    checkpointer.close()
    restored = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1, keep=1).restore(
        train.initial_state(exp), 1)
    np.testing.assert_array_equal(restored.loss_state["queue"],
                                  sharding.local_copy(exp.dp.get_state(state)).loss_state["queue"])


def test_the_losss_key_is_its_own_and_the_same_on_every_device(monkeypatch):
    exp = _toy_experiment(monkeypatch, num_devices=4, parallel="shard_map")
    initial = train.initial_state(exp)
    want = np.asarray(jax.random.key_data(jax.random.fold_in(train_step.step_key(initial), train_step.LOSS_KEY_ID)))
    state, _ = train.run_steps(exp, exp.dp.put_state(initial), 0, 1)
    got = sharding.local_copy(exp.dp.get_state(state)).loss_state["key_word"]
    # Averaged over devices it is still the first word: every device had the same key.
    assert float(got) == np.float32(want.reshape(-1)[0])


def test_a_state_key_without_a_rule_is_refused():
    method = methods.Method(_queue_loss, initial_state=TOY.initial_state, state_rules={"queue": methods.PER_DEVICE})
    with pytest.raises(ValueError, match=r"\['key_word', 'mean_index'\] has no cross-device rule"):
        method.init_state(16)
    with pytest.raises(ValueError, match="not known"):
        methods.Method(_queue_loss, state_rules={"queue": "summed"})


def _recording_forward(monkeypatch):
    calls = []
    forward = train_step.forward_crops

    def record(net, params, batch_stats, crops, indices, *args):
        calls.append((tuple(indices), tuple(crops[i].shape[1] for i in indices)))
        return forward(net, params, batch_stats, crops, indices, *args)

    monkeypatch.setattr(train_step, "forward_crops", record)
    return calls


def test_tico_runs_only_the_crops_its_loss_uses(monkeypatch):
    """TiCo's loss reads the online network's view 1 and the target's view 2: nothing else is computed."""
    calls = _recording_forward(monkeypatch)
    config = helpers.tiny_config("tico_cifar", batch_size=8, num_devices=2)
    exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=16))
    train.run_steps(exp, exp.dp.put_state(train.initial_state(exp)), 0, 1)
    assert sorted(calls) == [((0,), (32,)), ((1,), (32,))]  # traced once each: the student's and the teacher's


def _dino_local_config(num_devices=2, count=2, size=16):
    config = helpers.tiny_config("dino_cifar", batch_size=8, num_devices=num_devices)
    config.model.num_prototypes = 32
    config.augment.local_crops = config_lib.local_crops_config(count=count, crop_size=size)
    return config


def test_dino_with_local_crops_student_sees_every_crop_teacher_the_global_ones(monkeypatch):
    calls = _recording_forward(monkeypatch)
    seen = {}
    dino = methods.METHODS["dino"]

    def loss(student, teacher, state, context, **kwargs):
        seen["student"] = [None if s is None else s["projection"].shape for s in student]
        seen["teacher"] = [None if t is None else t["projection"].shape for t in teacher]
        return dino.loss(student, teacher, state, context, **kwargs)

    monkeypatch.setitem(methods.METHODS, "dino", methods.dataclasses.replace(dino, loss=loss))
    exp = train.build_experiment(_dino_local_config(), helpers.synthetic_dataset(num_train=16))
    _, metrics = train.run_steps(exp, exp.dp.put_state(train.initial_state(exp)), 0, 1)
    assert np.isfinite(float(metrics["loss"]))
    assert seen["student"] == [(4, 32)] * 4  # 4 examples per device, 4 crops
    assert seen["teacher"] == [(4, 32), (4, 32), None, None]
    # The teacher's forward pass takes the global pair, the student's every crop (in one call per crop size:
    # test_forward_crops_runs_the_network_once_per_crop_size).
    assert sorted(calls) == [((0, 1), (32, 32)), ((0, 1, 2, 3), (32, 32, 16, 16))]


def test_multi_crop_steps_do_not_depend_on_the_device_count():
    losses_by_devices = {}
    for n in (1, 4):
        exp = train.build_experiment(_dino_local_config(num_devices=n), helpers.synthetic_dataset(num_train=16))
        _, metrics = train.run_steps(exp, exp.dp.put_state(train.initial_state(exp)), 0, 1)
        losses_by_devices[n] = float(metrics["loss"])
    assert losses_by_devices[1] == pytest.approx(losses_by_devices[4], rel=1e-5)


def test_joint_batch_norm_normalises_the_stacked_crops_together():
    net = models.make_ssl_net(dict(name="resnet18", width=4, projector_hidden=(16,), projection_dim=8))
    rng = np.random.default_rng(0)
    crops = tuple(jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32) for _ in range(2))
    variables = net.init(jax.random.key(0), crops[0], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    (joint_0, joint_1), _ = train_step.forward_crops(net, params, stats, crops, (0, 1), joint_batch_norm=True)
    out, _ = net.apply(variables, jnp.concatenate(crops), train=True, num_views=1, mutable=["batch_stats"])
    np.testing.assert_allclose(np.concatenate([joint_0["projection"], joint_1["projection"]]), out["projection"],
                               rtol=1e-5, atol=1e-6)
    (alone_0, _), _ = train_step.forward_crops(net, params, stats, crops, (0, 1))
    single, _ = net.apply(variables, crops[0], train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(alone_0["projection"], single["projection"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(alone_0["projection"], joint_0["projection"], atol=1e-3)


def test_forward_crops_runs_the_network_once_per_crop_size():
    net = models.make_ssl_net(dict(name="vit_tiny", vit_depth=1, projector_hidden=(16,), projection_dim=8))
    rng = np.random.default_rng(0)
    crops = tuple(jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32) for size in (32, 16, 32))
    variables = net.init(jax.random.key(0), crops[0], train=False)
    outputs, _ = train_step.forward_crops(net, variables["params"], {}, crops, (0, 1, 2))
    pair, _ = net.apply(variables, jnp.concatenate([crops[0], crops[2]]), train=True, num_views=2,
                        mutable=["batch_stats"])
    small, _ = net.apply(variables, crops[1], train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(outputs[0]["projection"], pair["projection"][:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[2]["projection"], pair["projection"][2:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[1]["projection"], small["projection"], rtol=1e-5, atol=1e-6)
    assert outputs[1]["features"].shape == (2, 192)


def test_local_crops_for_a_method_without_multi_crop_is_a_clear_error():
    config = helpers.tiny_config("simclr_cifar")
    config.augment.local_crops = config_lib.local_crops_config(count=4)
    with pytest.raises(ValueError, match=r"local_crops.count=4, but 'simclr' compares the two global views"):
        train.build_experiment(config, helpers.synthetic_dataset(num_train=16))


def test_a_crop_the_vit_patch_does_not_divide_is_a_clear_error():
    config = _dino_local_config(size=14)
    config.model.name, config.model.patch_size = "vit_tiny", 4
    with pytest.raises(ValueError, match=r"local_crops.crop_size=14 is not a multiple of config.model.patch_size=4.*"
                                         r"crop size of 16"):
        train.build_experiment(config, helpers.synthetic_dataset(num_train=16))


def _forward_like_the_step(net, params, batch_stats, crops, indices, context, temperature=0.5):
    """A method's own forward that does what the step's default does: `forward_crops` of the student's crops."""
    assert context.key is not None and context.batch["global_index"].shape == (crops[0].shape[0],)
    return train_step.forward_crops(net, params, batch_stats, crops, indices)


def test_a_methods_own_forward_replaces_the_steps(monkeypatch):
    """Method.forward (MAE's hook) is called for the student with the step's context and config.loss; one that
    runs forward_crops gives SimCLR's step exactly; the teacher-less SimCLR never calls forward_crops itself."""
    def first_losses(method_name):
        config = helpers.tiny_config("simclr_cifar", batch_size=8, num_devices=2, method=method_name)
        exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=16))
        state, metrics = train.run_steps(exp, exp.dp.put_state(train.initial_state(exp)), 0, 2)
        return float(metrics["loss"]), sharding.local_copy(exp.dp.get_state(state)).params

    want_loss, want_params = first_losses("simclr")
    calls = []

    def forward(*args, **kwargs):
        calls.append(sorted(kwargs))
        return _forward_like_the_step(*args, **kwargs)

    monkeypatch.setitem(methods.METHODS, "own_forward",
                        methods.dataclasses.replace(methods.METHODS["simclr"], forward=forward))
    got_loss, got_params = first_losses("own_forward")
    assert calls and calls[0] == ["temperature"]
    assert got_loss == want_loss
    for got, want in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
        np.testing.assert_array_equal(got, want)
