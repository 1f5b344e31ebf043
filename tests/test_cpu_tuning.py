"""Process setup: the XLA CPU options 'auto' adds, that they leave the numbers alone, and the CPU allocator."""
import ctypes.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from ssl_jax import cpu_tuning


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    return monkeypatch


def test_auto_adds_the_measured_flags(clean_env):
    cpu_tuning.configure_xla_cpu("auto")
    assert os.environ["XLA_FLAGS"].split() == list(cpu_tuning.auto_cpu_flags())


def test_flags_the_user_set_win(clean_env):
    clean_env.setenv("XLA_FLAGS", "--xla_cpu_use_xnnpack=false --xla_cpu_experimental_ynn_fusion_type=")
    cpu_tuning.configure_xla_cpu("auto")
    flags = os.environ["XLA_FLAGS"].split()
    assert "--xla_cpu_use_xnnpack=false" in flags and "--xla_cpu_use_xnnpack=true" not in flags
    assert "--xla_cpu_experimental_ynn_fusion_type=" in flags
    assert len([f for f in flags if f.startswith("--xla_cpu_experimental_ynn_fusion_type")]) == 1


@pytest.mark.parametrize("setting", ["none", ""])
def test_none_adds_nothing(clean_env, setting):
    cpu_tuning.configure_xla_cpu(setting)
    assert os.environ.get("XLA_FLAGS", "") == ""


def test_accelerator_only_processes_get_no_cpu_flags(clean_env):
    clean_env.setenv("JAX_PLATFORMS", "cuda")
    cpu_tuning.configure_xla_cpu("auto")
    assert os.environ.get("XLA_FLAGS", "") == ""


@pytest.mark.parametrize("version, with_ynn", [("0.10.2", True), ("0.10.0", True), ("0.9.2", False),
                                               ("0.11.0", False), ("not-a-version", False), (None, True)])
def test_ynn_flags_only_for_the_measured_jaxlib(version, with_ynn, monkeypatch):
    if version is None:  # the installed jaxlib: this test's expectation follows it
        version = cpu_tuning._installed_version("jaxlib")
        first, last = cpu_tuning.YNN_MEASURED_JAXLIB
        with_ynn = first <= tuple(int(p) for p in version.split(".")[:2]) < last
    flags = cpu_tuning.auto_cpu_flags(version)
    assert flags[:len(cpu_tuning.CPU_XLA_FLAGS)] == cpu_tuning.CPU_XLA_FLAGS
    assert (cpu_tuning.YNN_XLA_FLAGS[0] in flags) == with_ynn


def test_cpu_allocator_settings():
    assert cpu_tuning.configure_cpu_allocator("default") is False
    with pytest.raises(ValueError, match="'mmap'.*'auto'"):
        cpu_tuning.configure_cpu_allocator("mmap")
    glibc = sys.platform.startswith("linux") and ctypes.util.find_library("c") is not None
    assert cpu_tuning.configure_cpu_allocator("auto") is glibc  # the test process runs on the CPU backend


_GRADIENTS = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from ssl_jax import losses, models, train_step
dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
net = models.make_ssl_net(dict(name="resnet18", width=24, projector_hidden=(64,), projection_dim=32), dtype=dtype)
rng = np.random.default_rng(0)
views = [jnp.asarray(rng.uniform(size=(32, 32, 32, 3)), dtype) for _ in range(2)]
variables = net.init(jax.random.key(0), views[0][:2], train=True)

def loss_fn(params, stats):
    (out1, out2), _ = train_step.forward_crops(net, params, stats, views, (0, 1))
    return losses.nt_xent(out1["projection"], out2["projection"], temperature=0.2)[0]

loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"], variables["batch_stats"])
leaves = jax.tree_util.tree_leaves_with_path(grads)
np.savez(sys.argv[1], loss=np.asarray(loss), **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
print(json.dumps({"xla_flags": __import__("os").environ.get("XLA_FLAGS", "")}))
"""


def _gradients(tmp_path, name, xla_flags, float64=False):
    out = tmp_path / f"{name}.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags, JAX_ENABLE_X64=str(int(float64)))
    result = subprocess.run([sys.executable, "-c", _GRADIENTS, str(out)], cwd=helpers.REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["xla_flags"] == xla_flags
    return dict(np.load(out))


def _relative_l2(got, want, keys):
    """||got - want|| / ||want|| over the arrays named by `keys` taken together."""
    error = sum(np.sum((got[k] - want[k]) ** 2) for k in keys)
    return float(np.sqrt(error / sum(np.sum(want[k] ** 2) for k in keys)))


def test_auto_flags_leave_the_gradients_alone(tmp_path):
    """The 'auto' flags move work between XLA's own kernels and the YNNPACK/XNNPACK libraries. The loss and the
    gradients of a SimCLR step (the trainer's two-view forward, a width-24 ResNet-18) must be as close to a
    float64 run as XLA's defaults are: float32 reassociation is allowed, a wrong kernel is not.

    Float32 runs differ from float64 mostly where an activation within rounding of zero takes the other side of
    a ReLU: that moves a few entries of a few gradients (measured: up to 0.6% of a gradient's norm, in either
    run, by luck of where it falls). So the comparison is over all gradients together, with a loose bound per
    gradient; a wrong kernel or fusion errs by O(1)."""
    plain = _gradients(tmp_path, "plain", "")
    tuned = _gradients(tmp_path, "tuned", " ".join(cpu_tuning.auto_cpu_flags()))
    exact = _gradients(tmp_path, "float64", "", float64=True)
    assert plain.keys() == tuned.keys() == exact.keys() and len(plain) > 60
    np.testing.assert_allclose(tuned["loss"], exact["loss"], rtol=1e-5)
    np.testing.assert_allclose(plain["loss"], exact["loss"], rtol=1e-5)
    gradients = [key for key in exact if key != "loss"]
    plain_error, tuned_error = (_relative_l2(run, exact, gradients) for run in (plain, tuned))
    assert tuned_error <= max(4 * plain_error, 1e-3), (tuned_error, plain_error)
    for key in gradients:
        assert _relative_l2(tuned, exact, [key]) < 5e-2, (key, _relative_l2(tuned, exact, [key]))
