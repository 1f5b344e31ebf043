"""Nothing lost: one-line config errors, preemption saves, non-finite stops, corrupt or unwritable checkpoints."""
import functools
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

import helpers
from ssl_jax import checkpoint
from ssl_jax import cli
from ssl_jax import config_files
from ssl_jax import learning_check
from ssl_jax import metrics_log
from ssl_jax import preemption
from ssl_jax import train

SMOKE = os.path.join(helpers.CONFIG_DIR, "simclr_cifar.py") + ":smoke"


def run_module(module, *args, timeout=120):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=helpers.REPO, env=env)


@pytest.mark.parametrize("module", ["ssl_jax.main", "ssl_jax.bench"])
def test_a_typo_in_a_config_key_is_one_line_naming_it(module, tmp_path):
    result = run_module(module, f"--config={SMOKE}", f"--workdir={tmp_path}", "--config.modle.width=3")
    assert result.returncode == cli.USAGE_ERROR_STATUS
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--config.modle.width=3" in lines[0] and "'modle'" in lines[0] and "did you mean 'model'" in lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--config.model.width=abc"], ["--config.model.width=abc", "int", "default 8"]),
    (["--config.seed.x=1"], ["config.seed", "not a group of keys"]),
    (["--config.optimizer.nmae=sgd"], ["config.optimizer has no key 'nmae'", "did you mean 'name'", "base_lr"]),
    (["--stpes=3"], ["stpes"]),
])
def test_flag_mistakes_are_described_in_one_line(args, expected):
    argv = ["ssl_jax.main", f"--config={SMOKE}", "--workdir=/tmp/unused", *args]
    fresh = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fresh, lock_config=True)
    flags.DEFINE_string("workdir", None, "", flag_values=fresh)
    with pytest.raises(Exception) as parse_error:
        fresh(argv)
    message = cli.describe_flag_error(argv, parse_error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("config_arg, expected", [
    (SMOKE + "x", ["Unknown config variant 'smokex'", "'smoke'"]),
    (os.path.join(helpers.CONFIG_DIR, "nope.py"), ["no such file", "simclr_cifar.py", "byol_cifar.py"]),
])
def test_a_wrong_config_file_or_variant_names_the_choices(config_arg, expected):
    message = cli.config_problem(config_arg, [])
    for part in expected:
        assert part in message, message


def test_the_learning_check_names_a_bad_set_override():
    assert learning_check.overrides_problem("simclr", ["loss.temperature=0.2"]) is None
    assert "config.loss has no key 'tempreature' (did you mean 'temperature'?)" in \
        learning_check.overrides_problem("simclr", ["loss.tempreature=0.2"])
    assert "could not convert string to float: 'abc'" in learning_check.overrides_problem(
        "simclr", ["loss.temperature=abc"])


# ---- Training runs: one image folder and one good run shared by the tests below ----

CLI_OVERRIDES = dict(batch_size=16, num_train_steps=24, checkpoint_every_steps=2, log_every_steps=1,
                     xla_cpu_flags="none", **{"model.width": 4, "eval.knn_k": 5, "eval.linear_epochs": 1,
                                              "eval.random_init": False})


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return helpers.write_image_folder(tmp_path_factory.mktemp("data"), helpers.synthetic_dataset(64, 20))


def cli_config(image_folder, **changes):
    """The smoke config with CLI_OVERRIDES (and `changes`), reading `image_folder`: what `cli_args` gives main."""
    config = helpers.load_config("simclr_cifar")
    for key, value in {**CLI_OVERRIDES, "data.path": str(image_folder),
                       "data.cache_dir": str(image_folder.parent / "cache"), **changes}.items():
        config_files.set_value(config, key, value)
    return config


def cli_args(image_folder, workdir):
    config = cli_config(image_folder)
    keys = (*CLI_OVERRIDES, "data.path", "data.cache_dir")
    return [f"--config={SMOKE}", f"--workdir={workdir}"] + [
        f"--config.{key}={functools.reduce(lambda node, k: node[k], key.split('.'), config)}" for key in keys]


@pytest.fixture(scope="module")
def good_run(image_folder, tmp_path_factory):
    """24 uninterrupted steps (checkpoints at 22 and 24 kept): the reference trajectory and a workdir to damage.
    Long enough that the SIGTERM below lands while the run still trains, even on a busy machine."""
    workdir = tmp_path_factory.mktemp("good")
    config = cli_config(image_folder)
    train.train(train.build_experiment(config), str(workdir))
    return workdir


def losses(workdir):
    return {m["step"]: m["train/loss"] for m in metrics_log.read_metrics(str(workdir)) if "train/loss" in m}


def test_sigterm_saves_the_step_in_flight_and_the_same_command_resumes_exactly(image_folder, good_run, tmp_path):
    args = cli_args(image_folder, tmp_path / "w")
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "ssl_jax.main", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=helpers.REPO,
                          env=env) as process:
        for line in process.stdout:
            if line.startswith("step 2/"):
                process.send_signal(signal.SIGTERM)
                break
        stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == preemption.PREEMPTED_EXIT_STATUS, stderr[-3000:]
    saved = int(re.search(r"Stopped by SIGTERM at step (\d+): the checkpoint at step \1 is saved", stdout).group(1))
    assert 2 <= saved < 24 and (tmp_path / "w" / "checkpoints" / str(saved)).is_dir()
    assert not (tmp_path / "w" / "eval.json").exists()

    again = subprocess.run(command, capture_output=True, text=True, cwd=helpers.REPO, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from the checkpoint at step {saved}." in again.stdout
    assert losses(tmp_path / "w") == losses(good_run)  # every step's loss, before and after the stop


def copy_run(run, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(run, workdir)
    return workdir


def saved_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def restored_step(exp, workdir):
    """The step `train` would resume from in `workdir` (restore_or_init also checks that the state is finite)."""
    checkpointer = checkpoint.Checkpointer(str(workdir / "checkpoints"), exp.config.checkpoint_every_steps)
    try:
        return train.restore_or_init(exp, checkpointer)[1]
    finally:
        checkpointer.close()


def damage(step_dir):
    """Truncates every file of a completed checkpoint to half its size, as a failing disk or a bad copy would."""
    for path in step_dir.rglob("*"):
        if path.is_file() and path.stat().st_size:
            os.truncate(path, path.stat().st_size // 2)


def test_a_diverging_run_stops_before_saving_and_keeps_the_good_checkpoint(image_folder, good_run, tmp_path):
    workdir = copy_run(good_run, tmp_path)
    assert saved_steps(workdir) == [22, 24]
    config = cli_config(image_folder, num_train_steps=32, **{"optimizer.base_lr": 1e25})
    with pytest.raises(train.TrainingDiverged, match=r"not finite|non-finite") as diverged:
        train.train(train.build_experiment(config), str(workdir))
    assert re.search(r"at step (25|26); stopped without saving \(the last good checkpoint, step 24, is kept",
                     str(diverged.value)), diverged.value
    assert saved_steps(workdir) == [22, 24]
    assert restored_step(train.build_experiment(config), workdir) == 24


def test_a_damaged_newest_checkpoint_is_skipped_said_and_set_aside(image_folder, good_run, tmp_path, capsys):
    workdir = copy_run(good_run, tmp_path)
    checkpoints = workdir / "checkpoints"
    damage(checkpoints / "24")
    exp = train.build_experiment(cli_config(image_folder))
    assert restored_step(exp, workdir) == 22
    assert "Skipping the checkpoint at step 24 (" in capsys.readouterr().out
    assert (checkpoints / "24.unreadable").is_dir() and saved_steps(workdir) == [22]

    damage(checkpoints / "22")
    with pytest.raises(checkpoint.CheckpointError, match=r"no readable checkpoint .*nothing was changed.* "
                                                         r"--config.if_no_readable_checkpoint=start_over"):
        restored_step(exp, workdir)
    assert saved_steps(workdir) == [22]
    exp.config.if_no_readable_checkpoint = "start_over"
    assert restored_step(exp, workdir) == 0
    assert saved_steps(workdir) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (needs the right to mount, as root in CI's container), unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(disk, leave_bytes):
    """Writes a file on `disk` until less than `leave_bytes` are free."""
    with open(disk / "filler", "wb") as f:
        while (free := shutil.disk_usage(disk).free) >= leave_bytes:
            f.write(b"\0" * min(1 << 20, max(4096, free - leave_bytes + 4096)))
            f.flush()
    return disk / "filler"


def test_a_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(small_disk):
    state = {"params": np.random.default_rng(0).standard_normal(1 << 18).astype(np.float32)}  # 1 MB
    directory = str(small_disk / "checkpoints")
    checkpointer = checkpoint.Checkpointer(directory, save_every_steps=2)
    checkpointer.save(2, state)
    checkpointer.wait()
    filler = fill(small_disk, leave_bytes=64 << 10)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"saving the checkpoint at step 4 to .* failed .*the checkpoint at step 2 is intact"):
        checkpointer.save(4, state)
        checkpointer.close()
    filler.unlink()
    again = checkpoint.Checkpointer(directory, save_every_steps=2)
    assert again.all_steps() == [2]
    np.testing.assert_array_equal(again.restore(state)["params"], state["params"])
    again.close()


def test_an_unwritable_workdir_fails_at_start(image_folder, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    workdir = small_disk / "w"
    with pytest.raises(checkpoint.CheckpointError, match=f"cannot write to {workdir} .*pass a --workdir"):
        train.train_and_evaluate(cli_config(image_folder), str(workdir))
