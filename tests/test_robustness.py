"""Nothing lost: one-line config errors, preemption saves, non-finite stops, corrupt or unwritable checkpoints."""
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

import helpers
from ssl_jax import runtime

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
