"""Nothing lost: one-line config errors, preemption saves, non-finite stops, corrupt or unwritable checkpoints."""
import functools
import os
import re
import signal
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

import helpers
from ssl_jax import learning_check
from ssl_jax import metrics_log
from ssl_jax import runtime
from ssl_jax import train

SMOKE = os.path.join(helpers.CONFIG_DIR, "simclr_cifar.py") + ":smoke"


def run_module(module, *args, timeout=120):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=helpers.REPO, env=env)


@pytest.mark.parametrize("module", ["ssl_jax.main", "ssl_jax.bench"])
def test_a_typo_in_a_config_key_is_one_line_naming_it(module, tmp_path):
    result = run_module(module, f"--config={SMOKE}", f"--workdir={tmp_path}", "--config.modle.width=3")
    assert result.returncode == runtime.USAGE_ERROR_STATUS
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
    message = runtime.describe_flag_error(argv, parse_error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("config_arg, expected", [
    (SMOKE + "x", ["Unknown config variant 'smokex'", "'smoke'"]),
    (os.path.join(helpers.CONFIG_DIR, "nope.py"), ["no such file", "simclr_cifar.py", "byol_cifar.py"]),
])
def test_a_wrong_config_file_or_variant_names_the_choices(config_arg, expected):
    message = runtime.config_problem(config_arg, [])
    for part in expected:
        assert part in message, message


def test_the_learning_check_names_a_bad_set_override():
    from ssl_jax import learning_check

    assert learning_check.overrides_problem("simclr", ["loss.temperature=0.2"]) is None
    assert "config.loss has no key 'tempreature' (did you mean 'temperature'?)" in \
        learning_check.overrides_problem("simclr", ["loss.tempreature=0.2"])
    assert "could not convert string to float: 'abc'" in learning_check.overrides_problem(
        "simclr", ["loss.temperature=abc"])


# ---- Training runs: one image folder and one good run shared by the tests below ----

CLI_OVERRIDES = dict(batch_size=16, num_train_steps=8, checkpoint_every_steps=2, log_every_steps=1,
                     xla_cpu_flags="none", **{"model.width": 4, "eval.knn_k": 5, "eval.linear_epochs": 1,
                                              "eval.random_init": False})


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    dataset = helpers.synthetic_dataset(num_train=64, num_test=20)
    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        for i, (image, label) in enumerate(zip(split.images, split.labels)):
            folder = root / "images" / split_name / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root / "images"


def cli_config(image_folder, **changes):
    """The smoke config with CLI_OVERRIDES (and `changes`), reading `image_folder`: what `cli_args` gives main."""
    config = helpers.load_config("simclr_cifar")
    for key, value in {**CLI_OVERRIDES, "data.path": str(image_folder),
                       "data.cache_dir": str(image_folder.parent / "cache"), **changes}.items():
        learning_check.set_value(config, key, value)
    return config


def cli_args(image_folder, workdir):
    config = cli_config(image_folder)
    keys = (*CLI_OVERRIDES, "data.path", "data.cache_dir")
    return [f"--config={SMOKE}", f"--workdir={workdir}"] + [
        f"--config.{key}={functools.reduce(lambda node, k: node[k], key.split('.'), config)}" for key in keys]


@pytest.fixture(scope="module")
def good_run(image_folder, tmp_path_factory):
    """8 uninterrupted steps (checkpoints at 6 and 8 kept): the reference trajectory and a workdir to damage."""
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
            if line.startswith("step 3/"):
                process.send_signal(signal.SIGTERM)
                break
        stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == runtime.PREEMPTED_EXIT_STATUS, stderr[-3000:]
    saved = int(re.search(r"Stopped by SIGTERM at step (\d+): the checkpoint at step \1 is saved", stdout).group(1))
    assert 3 <= saved < 8 and (tmp_path / "w" / "checkpoints" / str(saved)).is_dir()
    assert not (tmp_path / "w" / "eval.json").exists()

    again = subprocess.run(command, capture_output=True, text=True, cwd=helpers.REPO, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from the checkpoint at step {saved}." in again.stdout
    assert losses(tmp_path / "w") == losses(good_run)  # every step's loss, before and after the stop
