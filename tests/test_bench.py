"""The benchmark command runs on CPU and prints one well-formed JSON line with positive numbers."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import helpers
from test_flops import step_flops_reference

TINY = ["--config.batch_size=16", "--config.model.width=4", "--config.model.projector_hidden=(32,)",
        "--config.model.projection_dim=16", "--config.xla_cpu_flags=none"]


def _bench(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=helpers.xla_flags(2))
    result = subprocess.run([sys.executable, "-m", "ssl_jax.bench", *args], cwd=helpers.REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_step_benchmark_prints_one_json_line():
    record = _bench("--config=configs/simclr_cifar.py", "--steps=2", "--warmup=1", *TINY)
    assert record["method"] == "simclr" and record["model"] == "resnet18" and record["width"] == 4
    assert record["batch_size"] == 16 and record["devices"] == 2 and record["dtype"] == "float32"
    for key in ("compile_s", "step_time_ms", "images_per_sec", "tflops_per_sec", "gflops_per_step"):
        assert record[key] > 0, key
    assert record["images_per_sec"] == pytest.approx(16 / (record["step_time_ms"] / 1000), rel=0.01)
    model = sum(step_flops_reference(16, 4, projector=(32, 32, 16), loss_macs=32 ** 2 * 16))
    assert model < 1e9 * record["gflops_per_step"] < 1.05 * model  # + the augmentation's resize matmuls
    assert record["tflops_per_sec"] == pytest.approx(
        record["gflops_per_step"] / record["step_time_ms"], rel=0.01)
    assert record["mfu"] is None and record["peak_tflops_per_device"] is None  # no known peak for a CPU
    assert record["xla_gflops_per_step"] > 0  # XLA's CPU cost analysis, kept beside the count
    assert "peak_memory_bytes" in record
    assert record["cpu_allocator"] in ("tuned", "default")


@pytest.mark.parametrize("part", ["views", "augment", "input"])
def test_other_parts(part):
    record = _bench("--config=configs/byol_cifar.py", f"--part={part}", "--steps=2", "--warmup=1", *TINY,
                    "--config.model.predictor_hidden=(32,)", "--config.model.predictor_dim=16")
    assert record["part"] == part and record["images_per_sec"] > 0 and record["step_time_ms"] > 0
    if part == "views":  # the step on ready views: the network, target and heads alone, as counted by hand
        model = sum(step_flops_reference(16, 4, projector=(32, 32, 16), predictor=(16, 32, 16), ema_target=True))
        assert record["gflops_per_step"] == pytest.approx(model / 1e9, rel=1e-3)


def test_input_on_an_image_folder_without_torch(tmp_path):
    """`--part=input --images` runs input_bench's comparison, no config needed; without torch, ours alone."""
    pytest.importorskip("grain")
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here: this test checks the run without it")
    record = _bench("--part=input", f"--images={tmp_path}", "--generate=12", "--workers=1", "--input_batch=4",
                    "--steps=2", "--warmup=1", "--rounds=2")
    assert record["part"] == "input" and record["mode"] == "image_folder" and record["images"] == 12
    assert record["ours_images_per_s"] > 0 and len(record["ours_rounds"]) == 2
    assert "torchvision_images_per_s" not in record and "torch" in record["note"]


def test_images_needs_part_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ssl_jax.bench", f"--images={tmp_path}"], cwd=helpers.REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "use it with --part=input" in result.stderr


def test_bad_batch_fails_cleanly():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=helpers.xla_flags(4))
    result = subprocess.run([sys.executable, "-m", "ssl_jax.bench", "--config=configs/simclr_cifar.py",
                             "--config.batch_size=10", "--config.xla_cpu_flags=none"], cwd=helpers.REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "cannot be split evenly over 4 device" in result.stderr
