"""Checkpoint format: the state's arrays packed into one buffer per dtype, restored leaf for leaf; the start-up
check of the checkpoint directory; the exported encoder's settings file."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import checkpoint


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {"params": {"conv": {"kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32)},
                       "dense": {"bias": rng.standard_normal(5).astype(jnp.bfloat16)}},
            "batch_stats": {}, "step": np.array(7, np.int32),
            "opt_state": {"mu": rng.standard_normal((4, 2)).astype(np.float32), "count": np.array(3, np.int32)}}


def test_pack_is_one_buffer_per_dtype_in_flatten_order_and_unpack_inverts_it():
    state = _state()
    packed = checkpoint.pack(state)
    leaves = jax.tree.leaves(state)
    assert sorted(packed) == ["packed_bfloat16", "packed_float32", "packed_int32"]
    f32 = [np.ravel(x) for x in leaves if x.dtype == np.float32]
    np.testing.assert_array_equal(packed["packed_float32"], np.concatenate(f32))
    np.testing.assert_array_equal(packed["packed_int32"], [x for x in leaves if x.dtype == np.int32])
    zeros = jax.tree.map(np.zeros_like, state)
    jax.tree.map(np.testing.assert_array_equal, checkpoint.unpack(packed, zeros), state)


def test_a_sharded_template_gets_its_sharding_back(tmp_path):
    mesh = jax.make_mesh((len(jax.devices()),), ("batch",))
    replicated = NamedSharding(mesh, P())
    state = jax.device_put(_state(), replicated)
    checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    checkpointer.save(1, state)
    checkpointer.wait()
    template = jax.device_put(jax.tree.map(np.zeros_like, _state()), replicated)
    restored = checkpointer.restore(template)
    checkpointer.close()
    jax.tree.map(lambda r, s: np.testing.assert_array_equal(np.asarray(r), np.asarray(s)), restored, state)
    assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(restored))


def test_a_checkpoint_written_before_packing_still_restores(tmp_path):
    state = _state()
    checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    checkpointer.manager.save(1, args=ocp.args.StandardSave(state))  # one orbax array per leaf, as before
    checkpointer.close()
    again = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    restored = again.restore(jax.tree.map(np.zeros_like, state))
    again.close()
    jax.tree.map(lambda r, s: np.testing.assert_array_equal(np.asarray(r), s), restored, state)


def test_a_resnet_encoder_config_keeps_its_three_keys_and_such_files_still_load(tmp_path):
    """A ResNet's encoder_config.json is what it was before ViTs (name, width, stem, no other key), so files
    written then load as files written now; the loaded encoder gives the network's features."""
    from ssl_jax import models

    model_config = {"name": "resnet18", "width": 4, "stem": "cifar", "projector_hidden": (8,), "projection_dim": 4,
                    "patch_size": 16, "vit_pooling": "mean"}  # ViT keys a config always holds: not written
    net = models.make_ssl_net(model_config, jnp.float32, None)
    variables = jax.jit(lambda: net.init(jax.random.key(0, impl="rbg"), jnp.zeros((2, 8, 8, 3)), train=False))()
    checkpoint.export_encoder(str(tmp_path), variables["params"], variables["batch_stats"], model_config)
    with open(tmp_path / checkpoint.ENCODER_CONFIG_FILE) as f:
        assert json.load(f) == {"name": "resnet18", "width": 4, "stem": "cifar"}
    encode, loaded = checkpoint.load_encoder(str(tmp_path))
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(encode(loaded, x), net.apply(variables, x, train=False)["features"])


def test_an_encoder_records_the_pixel_statistics_it_was_trained_with(tmp_path):
    """export_encoder writes the data set's mean and std beside the backbone's settings; encoder_pixel_stats reads
    them back, and gives CIFAR-10's for an encoder written before they were recorded."""
    from ssl_jax import augment
    from ssl_jax import models

    model_config = {"name": "resnet18", "width": 4, "stem": "cifar", "projector_hidden": (8,), "projection_dim": 4}
    net = models.make_ssl_net(model_config, jnp.float32, None)
    variables = jax.jit(lambda: net.init(jax.random.key(0, impl="rbg"), jnp.zeros((2, 8, 8, 3)), train=False))()
    stats = augment.pixel_stats("cifar100")
    checkpoint.export_encoder(str(tmp_path / "new"), variables["params"], variables["batch_stats"], model_config,
                              pixel_stats=stats)
    assert checkpoint.encoder_pixel_stats(str(tmp_path / "new")) == stats
    with open(tmp_path / "new" / checkpoint.ENCODER_CONFIG_FILE) as f:
        assert json.load(f) == {"name": "resnet18", "width": 4, "stem": "cifar", "pixel_mean": list(stats[0]),
                                "pixel_std": list(stats[1])}
    checkpoint.load_encoder(str(tmp_path / "new"))  # the extra keys do not disturb the backbone's settings
    checkpoint.export_encoder(str(tmp_path / "old"), variables["params"], variables["batch_stats"], model_config)
    assert checkpoint.encoder_pixel_stats(str(tmp_path / "old")) == augment.PIXEL_STATS["cifar10"]


def test_a_checkpoint_of_another_shape_is_refused_naming_the_leaf(tmp_path):
    checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    checkpointer.save(1, _state())
    checkpointer.wait()
    wider = _state()
    wider["opt_state"]["mu"] = np.zeros((4, 3), np.float32)
    with pytest.raises(checkpoint.StateMismatch, match=r"step 1 .* holds another state .*differing leaves: 1: "
                                                       r"\['opt_state'\]\['mu'\]: saved \(4, 2\) float32, this run's "
                                                       r"state \(4, 3\) float32\)\. Resume"):
        checkpointer.restore(wider)
    checkpointer.close()


# Each process signals that it is ready and waits for the other before probing, so the probes overlap.
PROBE_AT_ONCE = """
import os, sys, time
from ssl_jax import checkpoint
directory, me, other = sys.argv[1:]
open(os.path.join(directory, me), "w").close()
while not os.path.exists(os.path.join(directory, other)):
    time.sleep(0.01)
for _ in range(20000):
    checkpoint.check_writable(os.path.join(directory, "checkpoints"))
"""


def test_processes_checking_one_directory_at_once_do_not_trip_each_other(tmp_path):
    """Every process of a multi-host run checks the checkpoint directory as it starts. With one probe file
    for all, one process removed it under the other, which failed with FileNotFoundError (CI, two processes)."""
    names = ["ready0", "ready1"]
    processes = [subprocess.Popen([sys.executable, "-c", PROBE_AT_ONCE, str(tmp_path), me, other],
                                  stderr=subprocess.PIPE, text=True) for me, other in (names, names[::-1])]
    for process in processes:
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors[-2000:]
    assert os.listdir(tmp_path / "checkpoints") == []


def _saved(tmp_path, state, config_json=None, step=1):
    """A Checkpointer on `tmp_path` that has written `state` at `step` (left open for the test to restore)."""
    checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1, config_json=config_json)
    checkpointer.save(step, state)
    checkpointer.wait()
    return checkpointer


def test_leaves_of_other_shapes_but_the_same_sizes_are_refused_naming_them(tmp_path):
    """{head: 2x3, tail: 3x2} into {head: 3x2, tail: 2x3}: the same 12 float32 values, so the size check passed
    and head's six values came back reshaped."""
    values = np.arange(12, dtype=np.float32)
    checkpointer = _saved(tmp_path, {"head": values[:6].reshape(2, 3), "tail": values[6:].reshape(3, 2)})
    template = {"head": np.zeros((3, 2), np.float32), "tail": np.zeros((2, 3), np.float32)}
    with pytest.raises(checkpoint.StateMismatch) as refused:
        checkpointer.restore(template)
    checkpointer.close()
    message = str(refused.value)
    assert "\n" not in message
    assert "['head']: saved (2, 3) float32, this run's state (3, 2) float32" in message
    assert "['tail']: saved (3, 2) float32, this run's state (2, 3) float32" in message
    assert "another --workdir" in message and "the config (and code) that wrote it" in message


def test_two_modules_with_their_names_swapped_are_refused(tmp_path):
    """The same leaves, sizes and dtypes, but 'conv' and 'dense' swapped: pack's order puts conv's values into
    dense (and the reverse) without a word from a size check."""
    rng = np.random.default_rng(0)
    state = {"params": {"conv": {"kernel": rng.standard_normal((3, 3)).astype(np.float32)},
                        "dense": {"kernel": rng.standard_normal(9).astype(np.float32)}}}
    swapped = {"params": {"conv": {"kernel": np.zeros(9, np.float32)},
                          "dense": {"kernel": np.zeros((3, 3), np.float32)}}}
    checkpointer = _saved(tmp_path, state)
    with pytest.raises(checkpoint.StateMismatch, match=r"differing leaves: 2: \['params'\]\['conv'\]\['kernel'\]: "
                                                       r"saved \(3, 3\) float32, this run's state \(9,\) float32"):
        checkpointer.restore(swapped)
    restored = checkpointer.restore(jax.tree.map(np.zeros_like, state))  # its own state still restores
    checkpointer.close()
    jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_a_workdir_resumed_under_another_config_is_refused_naming_the_config_and_nothing_is_set_aside(tmp_path):
    """Two configs whose states have the same size per dtype (a projector 8 -> 4 against 4 -> 8): the second
    run's restore names the config that wrote the checkpoint, and the checkpoints are not taken for damaged ones."""
    written_by = json.dumps({"method": "byol", "model": {"name": "resnet18", "width": 8}, "batch_size": 64})
    first = {"params": {"projector": {"kernel": np.ones((8, 4), np.float32)}}, "step": np.array(2, np.int32)}
    second = {"params": {"projector": {"kernel": np.zeros((4, 8), np.float32)}}, "step": np.array(0, np.int32)}
    assert checkpoint._packed_sizes(first) == checkpoint._packed_sizes(second)
    _saved(tmp_path, first, config_json=written_by, step=2).close()
    resumed = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1, config_json="{}")
    with pytest.raises(checkpoint.StateMismatch, match=r"written by the config method=byol model=resnet18 width=8 "
                                                       r"batch_size=64\. Resume it with"):
        resumed.restore_latest_readable(second)
    assert resumed.all_steps() == [2]
    resumed.close()


def test_a_packed_checkpoint_written_before_the_leaves_were_recorded_restores_by_its_sizes(tmp_path):
    """Such checkpoints (no step metadata) fall back to the check they allow: equal sizes restore, others are
    refused with both sizes."""
    state = _state()
    checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    checkpointer.manager.save(1, args=ocp.args.StandardSave(checkpoint.pack(state)))  # as written before
    checkpointer.manager.wait_until_finished()
    assert checkpointer.manager.metadata(1).custom_metadata in (None, {})
    restored = checkpointer.restore(jax.tree.map(np.zeros_like, state))
    jax.tree.map(lambda r, s: np.testing.assert_array_equal(np.asarray(r), s), restored, state)
    wider = _state()
    wider["opt_state"]["mu"] = np.zeros((4, 3), np.float32)
    with pytest.raises(checkpoint.StateMismatch, match=r"'packed_float32': 80.* has .*84.*another --workdir"):
        checkpointer.restore(wider)
    checkpointer.close()


def test_describe_lists_the_named_arrays_and_the_config_of_a_workdir(tmp_path):
    state = _state()
    _saved(tmp_path / "checkpoints", state, config_json='{"method": "simclr"}', step=3).close()
    step, specs, config_json = checkpoint.describe(str(tmp_path))
    assert (step, config_json) == (3, '{"method": "simclr"}')
    assert specs == [
        ("['opt_state']['count']", (), "int32"), ("['opt_state']['mu']", (4, 2), "float32"),
        ("['params']['conv']['kernel']", (3, 3, 2, 4), "float32"), ("['params']['dense']['bias']", (5,), "bfloat16"),
        ("['step']", (), "int32")]
    listing = subprocess.run([sys.executable, "-m", "ssl_jax.checkpoint", str(tmp_path)], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    assert listing[0] == "step 3; written by config: method=simclr model=None width=None batch_size=None"
    assert listing[3] == "['params']['conv']['kernel'] (3, 3, 2, 4) float32"
