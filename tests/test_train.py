"""End-to-end training: loss goes down on mock TFDS data and on an image folder, exact resume, the command line."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import helpers
from ssl_jax import augment
from ssl_jax import checkpoint
from ssl_jax import config_files
from ssl_jax import sharding
from ssl_jax import train
from ssl_jax import train_step


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["train/loss"] for line in f]


def _assert_results(results, workdir):
    with open(os.path.join(workdir, "eval.json")) as f:
        written = json.load(f)
    for key in ("knn_top1", "linear_top1", "linear_top5"):
        assert 0.0 <= written[key] <= 1.0
        assert written[key] == pytest.approx(results[key])
    assert written["linear_top5"] >= written["linear_top1"]
    # Every figure says what produced it: the kNN setting (tiny_config: k=5 over the 'lightly' preset's T=0.1) and
    # the linear protocol; the random-init baseline's settings are the same, so they are not repeated.
    assert (written["knn_k"], written["knn_temperature"]) == (5, 0.1)
    assert written["linear_protocol"] == results["linear_protocol"]
    assert "knn_k_random_init" not in written and "linear_protocol_random_init" not in written


def _assert_trained_checkpoint(config, workdir):
    """The final checkpoint is at the last step and its networks moved away from the initial ones.

    Whether training lowers the loss is checked per method in test_sharding (24 steps on one device): in these
    end-to-end runs on 64 images the loss changes less in 24 steps than it varies from batch to batch.
    """
    exp = train.build_experiment(config)
    initial = sharding.local_copy(train.initial_state(exp))
    checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint_every_steps)
    final, final_step = train.restore_or_init(exp, checkpointer)
    checkpointer.close()
    final = sharding.local_copy(exp.dp.get_state(final))
    assert final_step == config.num_train_steps == int(final.step)
    for before, after in zip(jax.tree.leaves(initial.params), jax.tree.leaves(final.params)):
        assert np.isfinite(after).all() and not np.array_equal(before, after)


def test_simclr_trains_on_an_image_folder(tmp_path):
    """Loads a folder the test writes, trains, evaluates, writes eval.json, the plot and the encoder."""
    folder = helpers.write_image_folder(tmp_path, helpers.synthetic_dataset(num_train=64, num_test=20))
    config = helpers.tiny_config(steps=12, **{"data.path": str(folder), "data.cache_dir": str(tmp_path / "cache")})
    workdir = str(tmp_path / "work")
    results = train.train_and_evaluate(config, workdir)
    losses = _losses(workdir)
    assert len(losses) == 6 and np.isfinite(losses).all()
    _assert_results(results, workdir)
    _assert_trained_checkpoint(config, workdir)
    assert os.path.exists(os.path.join(workdir, "loss.png"))
    encode, variables = checkpoint.load_encoder(os.path.join(workdir, "encoder"))
    assert checkpoint.encoder_pixel_stats(os.path.join(workdir, "encoder")) == augment.PIXEL_STATS["cifar10"]
    features = encode(variables, np.zeros((2, 32, 32, 3), np.float32))
    assert features.shape == (2, 8 * config.model.width)


def test_simclr_trains_on_mock_tfds(tmp_path):
    """Also the papers' linear protocol (sgd_augmented, 2 epochs) at the end of training, beside the fast probe of
    the image-folder test above."""
    with tfds.testing.mock_data(num_examples=64):
        config = helpers.tiny_config(steps=12, **{"data.download": False, "data.cache_dir": str(tmp_path / "c"),
                                                  "eval.linear_protocol": "sgd_augmented", "eval.sgd_linear.epochs": 2,
                                                  "eval.sgd_linear.batch_size": 32})
        workdir = str(tmp_path / "work")
        results = train.train_and_evaluate(config, workdir)
        assert np.isfinite(_losses(workdir)).all()
        _assert_results(results, workdir)
        assert results["linear_protocol"] == "sgd_augmented" and "linear_train_top1" not in results
        _assert_trained_checkpoint(config, workdir)


@pytest.mark.parametrize("config_name", ["simclr_cifar", "tico_cifar"])
def test_stop_and_resume_equals_uninterrupted_run(tmp_path, config_name):
    """Step, params, optimizer, EMA target, loss state, RNG and data order all survive the restart."""
    dataset = helpers.synthetic_dataset()
    config = helpers.tiny_config(config_name, steps=6, checkpoint_every_steps=2)
    full = train.train(train.build_experiment(config, dataset), str(tmp_path / "full"))

    interrupted_dir = str(tmp_path / "interrupted")
    first = train.train(train.build_experiment(config, dataset), interrupted_dir, stop_after_steps=3)
    assert int(sharding.local_copy(first.step)) == 3
    resumed = train.train(train.build_experiment(config, dataset), interrupted_dir)

    full, resumed = sharding.local_copy(full), sharding.local_copy(resumed)
    assert int(resumed.step) == 6
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    logged_steps = [json.loads(line)["step"] for line in open(os.path.join(interrupted_dir, "metrics.jsonl"))]
    assert logged_steps == sorted(set(logged_steps))


def test_run_again_resumes_instead_of_starting_over(tmp_path, capsys):
    dataset = helpers.synthetic_dataset()
    config = helpers.tiny_config(steps=2)
    workdir = str(tmp_path / "w")
    train.train(train.build_experiment(config, dataset), workdir)
    state = train.train(train.build_experiment(config, dataset), workdir)
    assert "Resuming from the checkpoint at step 2" in capsys.readouterr().out
    assert int(sharding.local_copy(state.step)) == 2


def test_evaluations_of_two_states_compile_the_encoder_once(monkeypatch):
    """The weights are arguments of the jitted encoder, not constants compiled into it: the periodic evaluation of
    a new state reuses the first compilation (counted as traces: normalize runs once per trace), and still sees
    the new weights."""
    exp = train.build_experiment(helpers.tiny_config(), helpers.synthetic_dataset(num_train=32, num_test=16))
    first = sharding.local_copy(train.initial_state(exp))
    second = dataclasses.replace(first, params=jax.tree.map(lambda x: -2 * x, first.params))
    traces = []
    normalize = train.augment.normalize
    monkeypatch.setattr(train.augment, "normalize", lambda x, stats: traces.append(1) or normalize(x, stats))
    train.encode_images.clear_cache()
    for state in (first, second):
        train.evaluate_state(exp, exp.dp.put_state(state), linear=False)
    assert len(traces) == 1
    images = exp.dataset.test.images[:4]
    features = [np.asarray(train.make_encode_fn(exp.net, s.params, s.batch_stats)(images)) for s in (first, second)]
    assert not np.allclose(features[0], features[1])


def test_ema_schedule_end_points():
    assert float(train_step.ema_decay_schedule(0.99, 0, 100)) == pytest.approx(0.99)
    assert float(train_step.ema_decay_schedule(0.99, 100, 100)) == pytest.approx(1.0)
    assert float(train_step.ema_decay_schedule(0.99, 50, 100)) == pytest.approx(0.995)


def test_ema_schedule_to_a_final_decay_against_numpy():
    """solo-learn's MoCo v2+ recipe: tau from 0.99 to final_tau 0.999 by a cosine (its `cosine_scheduler`
    tau = final - (final - base) * (cos(pi k / K) + 1) / 2); past K it stays at the final value."""
    total = 120
    for step in (0, 30, 60, 90, 120, 150):
        want = 0.999 - (0.999 - 0.99) * (np.cos(np.pi * min(step / total, 1.0)) + 1) / 2
        got = float(train_step.ema_decay_schedule(0.99, step, total, final_decay=0.999))
        assert got == pytest.approx(want, abs=1e-7), step
    assert config_files.load_config("mocov2plus_cifar").ema.final_decay == 0.999
    assert config_files.load_config("byol_cifar").ema.final_decay == 1.0


@pytest.mark.parametrize("base, final", [(0.999, 0.99), (0.99, 1.5), (-0.1, 1.0)])
def test_an_ema_schedule_that_does_not_rise_in_0_1_fails_with_a_clear_message(base, final):
    config = helpers.tiny_config("byol_cifar", **{"ema.base_decay": base, "ema.final_decay": final})
    with pytest.raises(ValueError, match=rf"config.ema.base_decay={base}, config.ema.final_decay={final}"):
        train.build_experiment(config, helpers.synthetic_dataset())


def test_ema_update_against_numpy():
    target = {"w": np.array([1.0, 2.0]), "b": np.array([0.5])}
    online = {"w": np.array([3.0, -2.0]), "b": np.array([1.5])}
    updated = train_step.ema_update(target, online, 0.9)
    np.testing.assert_allclose(updated["w"], 0.9 * target["w"] + 0.1 * online["w"])
    np.testing.assert_allclose(updated["b"], [0.6])


def test_step_on_ready_views_is_the_step_without_its_augmentation():
    """`make_step_fn(ready_views=True)` (what `bench --part=views` times) fed the views the step makes itself gives
    the same new state and metrics: the augmentation is the only part it leaves out. BYOL (EMA target), 2 devices."""
    config = helpers.tiny_config("byol_cifar", batch_size=16, num_devices=2)
    exp = train.build_experiment(config, helpers.synthetic_dataset(num_train=32))
    batch = exp.dp.put_batch(next(train.host_batches(exp, 0, 1)))
    state, metrics = train.make_step_fn(exp)(exp.dp.put_state(train.initial_state(exp)), batch)

    key = train_step.step_key(train.initial_state(exp))
    groups = train.crop_groups(config)
    views = exp.dp.map_batch_fn(lambda b: train_step.augmented_crops(key, b, groups))(batch)
    ready_state, ready_metrics = train.make_step_fn(exp, ready_views=True)(
        exp.dp.put_state(train.initial_state(exp)), {"views": views, "label": batch["label"]})
    for got, want in zip(jax.tree.leaves(sharding.local_copy((ready_state, ready_metrics))),
                         jax.tree.leaves(sharding.local_copy((state, metrics)))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _main(*args, module="ssl_jax.main", **kwargs):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=helpers.REPO, env=env,
                          capture_output=True, text=True, timeout=900, **kwargs)


def test_command_line_end_to_end(tmp_path):
    folder = helpers.write_image_folder(tmp_path, helpers.synthetic_dataset(num_train=64, num_test=20))
    workdir = tmp_path / "w"
    args = ["--config=configs/simclr_cifar.py:smoke", f"--workdir={workdir}", f"--config.data.path={folder}",
            f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.batch_size=16", "--config.num_train_steps=4",
            "--config.model.width=4", "--config.eval.knn_k=5", "--config.eval.linear_epochs=2",
            "--config.xla_cpu_flags=none"]
    result = _main(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 4/4" in result.stdout
    eval_json = json.loads((workdir / "eval.json").read_text())
    assert set(eval_json) >= {"knn_top1", "linear_top1", "linear_top5", "knn_top1_random_init",
                              "linear_top1_random_init", "linear_top5_random_init"}
    assert (eval_json["knn_k"], eval_json["knn_temperature"], eval_json["linear_protocol"]) == (5, 0.1, "probe_cached")
    assert "(random init " in result.stdout and "[kNN k=5 T=0.1; linear probe_cached]" in result.stdout
    again = _main(*args)
    assert again.returncode == 0 and "Resuming from the checkpoint at step 4" in again.stdout

    # The saved encoder, evaluated again from the command line with the run's own settings, gives eval.json's
    # figures (same features, same kNN, same seeded linear probe).
    evaluated = _main(f"--workdir={workdir}", module="ssl_jax.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    frozen = json.loads((workdir / "eval_frozen.json").read_text())
    for key in ("knn_top1", "linear_top1", "linear_top5"):
        assert frozen[key] == pytest.approx(eval_json[key], abs=1e-6), key
    assert f"knn_top1={frozen['knn_top1']:.4f}" in evaluated.stdout
    assert (frozen["knn_k"], frozen["knn_temperature"], frozen["linear_protocol"]) == (5, 0.1, "probe_cached")
    # One flag for both kNN settings (the run's k=5 gives way to the preset), one override on top; the papers'
    # linear protocol, one epoch.
    by_encoder = _main(f"--encoder={workdir / 'encoder'}", f"--data={folder}", "--knn=solo_learn", "--knn_k=3",
                       "--linear_protocol=sgd_augmented", "--sgd_epochs=1", f"--output={tmp_path / 'e.json'}",
                       module="ssl_jax.evaluate")
    assert by_encoder.returncode == 0, by_encoder.stderr[-3000:]
    by_encoder_json = json.loads((tmp_path / "e.json").read_text())
    assert 0.0 <= by_encoder_json["knn_top1"] <= 1.0 and 0.0 <= by_encoder_json["linear_top1"] <= 1.0
    assert (by_encoder_json["knn_k"], by_encoder_json["knn_temperature"]) == (3, 0.07)
    assert by_encoder_json["linear_protocol"] == "sgd_augmented"
    assert "[kNN k=3 T=0.07; linear sgd_augmented]" in by_encoder.stdout
    bad = _main(f"--workdir={workdir}", "--knn=instdisc", module="ssl_jax.evaluate")
    assert bad.returncode != 0 and "lightly" in bad.stderr and "solo_learn" in bad.stderr


def test_evaluate_command_rejects_a_directory_without_an_encoder(tmp_path):
    result = _main(f"--workdir={tmp_path}", module="ssl_jax.evaluate")
    assert result.returncode != 0 and "holds no exported encoder" in result.stderr
    result = _main(f"--encoder={tmp_path}", module="ssl_jax.evaluate")
    assert result.returncode != 0 and "is not an exported encoder" in result.stderr
    result = _main(module="ssl_jax.evaluate")
    assert result.returncode != 0 and "--workdir=DIR" in result.stderr


def test_command_line_on_mock_data_in_process(tmp_path, monkeypatch):
    """The absl entry point itself, under tfds.testing.mock_data (which only patches this process).

    ml_collections reads `--config.x=...` overrides from sys.argv, hence the patched sys.argv."""
    from absl import flags
    from ssl_jax import main

    workdir = tmp_path / "w"
    argv = ["main", "--config=configs/simclr_cifar.py:smoke", f"--workdir={workdir}", "--config.batch_size=16",
            "--config.num_train_steps=2", "--config.model.width=4", "--config.data.download=False",
            f"--config.data.cache_dir={tmp_path}", "--config.eval.knn_k=5", "--config.eval.linear_epochs=2",
            "--config.xla_cpu_flags=none"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(helpers.REPO)
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        with tfds.testing.mock_data(num_examples=32):
            main.main(argv[:1])
    finally:
        flags.FLAGS.unparse_flags()
    assert json.loads((workdir / "eval.json").read_text())["step"] == 2


@pytest.mark.parametrize("override, message", [
    ("--config.model.widht=8", "widht"),
    ("--config.batch_size=abc", "batch_size"),
])
def test_command_line_rejects_bad_overrides_at_once(tmp_path, override, message):
    result = _main("--config=configs/simclr_cifar.py:smoke", f"--workdir={tmp_path}", override)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_command_line_reports_missing_data_clearly(tmp_path):
    result = _main("--config=configs/simclr_cifar.py:smoke", f"--workdir={tmp_path}",
                   f"--config.data.path={tmp_path / 'nothing_here.tar.gz'}", "--config.xla_cpu_flags=none")
    assert result.returncode == 2
    assert "nothing_here.tar.gz" in result.stderr and "Traceback" not in result.stderr


def test_a_data_set_is_normalised_with_its_own_statistics(tmp_path):
    """config.data.name picks the statistics the step, the evaluation and the exported encoder use: the same
    images under CIFAR-100's give another first loss than under CIFAR-10's; a name without statistics fails at
    start."""
    dataset = helpers.synthetic_dataset(num_train=32, num_test=8)
    first_losses = {}
    for name in ("cifar10", "cifar100"):
        exp = train.build_experiment(helpers.tiny_config(steps=1, **{"data.name": name}), dataset)
        assert exp.pixel_stats == augment.PIXEL_STATS[name]
        state = exp.dp.put_state(train.initial_state(exp))
        _, metrics = train.run_loop(exp, state, 0, 1, train.make_step_fn(exp))
        first_losses[name] = float(np.asarray(metrics["loss"]).reshape(-1)[0])
    assert first_losses["cifar10"] != first_losses["cifar100"]
    with pytest.raises(ValueError, match=r"config.data.name='svhn' has no pixel statistics"):
        train.build_experiment(helpers.tiny_config(**{"data.name": "svhn"}), dataset)


def test_indivisible_batch_fails_with_a_clear_message():
    config = helpers.tiny_config(batch_size=12, num_devices=8)
    with pytest.raises(ValueError, match=r"batch_size=12 cannot be split evenly over 8 device"):
        train.build_experiment(config, helpers.synthetic_dataset())


@pytest.mark.parametrize("config_name", ["byol_cifar", "simsiam_cifar", "mocov3_cifar"])
def test_predictor_size_must_match_the_projection(config_name):
    config = helpers.tiny_config(config_name, **{"model.predictor_dim": 8})
    with pytest.raises(ValueError, match=r"predictor_dim=8 differs from config.model.projection_dim=16"):
        train.build_experiment(config, helpers.synthetic_dataset())


def test_the_frozen_epochs_of_a_method_can_be_set():
    """config.optimizer.frozen_epochs replaces the method's own (SwAV's prototypes: 2 epochs); < 0 keeps them."""
    config = helpers.tiny_config("swav_cifar")
    own = train.build_experiment(config, helpers.synthetic_dataset()).method.frozen_at_start
    assert own == ((("projector", "prototypes_v"), 2.0),)
    config.optimizer.frozen_epochs = 0.25
    changed = train.build_experiment(config, helpers.synthetic_dataset()).method.frozen_at_start
    assert changed == ((("projector", "prototypes_v"), 0.25),)
    assert train.with_frozen_epochs(train.methods.get_method("simclr"), 3.0).frozen_at_start == ()
