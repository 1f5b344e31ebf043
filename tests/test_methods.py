"""The method registry, and every method's :smoke config from the command line."""
import inspect
import json
import os
import subprocess
import sys

import pytest

import helpers
from ssl_jax import config_files
from ssl_jax import losses
from ssl_jax import methods

LOSS_OF_METHOD = {"simclr": losses.nt_xent, "byol": losses.byol_loss, "vicreg": losses.vicreg_loss,
                  "tico": losses.tico_loss, "vicreg_tico": losses.vicreg_tico_loss,
                  "barlow_twins": losses.barlow_twins_loss, "simsiam": losses.simsiam_loss,
                  "moco_v3": losses.moco_v3_loss,
                  "dino": methods.METHODS["dino"].loss,  # its loss function: the teacher-temperature schedule's keys too
                  "swav": methods.METHODS["swav"].loss,  # its loss function: the queue's keys too
                  "nnclr": methods.METHODS["nnclr"].loss,  # its loss function: the support set's size too
                  "moco_v2_plus": methods.METHODS["moco_v2_plus"].loss,  # its loss function: the queue's size too
                  "mae": methods.METHODS["mae"].loss}  # its loss function: the forward's mask_ratio too


def test_every_registered_method_has_a_config():
    assert set(methods.METHODS) == set(config_files.METHOD_CONFIGS)


@pytest.mark.parametrize("method", sorted(config_files.METHOD_CONFIGS))
def test_config_matches_the_registry(method):
    """The config names the method, gives a predictor when the method needs one, and its loss keys are exactly
    keyword arguments of the method's loss."""
    for arg in (None, "smoke"):
        config = helpers.load_config(config_files.METHOD_CONFIGS[method], arg)
        entry = methods.get_method(config.method)
        assert config.method == method
        assert (config.model.predictor_dim > 0) == entry.predictor
        assert (config.model.num_prototypes > 0) == bool(entry.prototypes)
        accepted = set(inspect.signature(LOSS_OF_METHOD[method]).parameters)
        assert set(config.loss) <= accepted - {"axis_name"}
        if entry.forward is not None:  # the method's forward is called with config.loss too
            assert set(config.loss) <= set(inspect.signature(entry.forward).parameters)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="config.method='data2vec'"):  # not a method (was 'mae' before MAE)
        methods.get_method("data2vec")


def test_tico_state_starts_at_zero():
    state = methods.get_method("tico").init_state({"projection": 6})
    assert state["cov"].shape == (6, 6) and float(abs(state["cov"]).sum()) == 0.0


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data") / "tiny"
    dataset = helpers.synthetic_dataset(num_train=32, num_test=10)
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        for i, (image, label) in enumerate(zip(split.images, split.labels)):
            folder = root / name / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.png")
    return root


# One method per kind of state and network the command line saves, exports and evaluates: SimCLR (a ResNet, no
# target), DINO (an EMA teacher, local crops, a centre), NNCLR (a per-device queue, a predictor), MAE (a ViT and its
# own forward pass). Every method's :smoke config trains in-process in tests/test_step_regression.py and on 1 and 8
# devices in tests/test_sharding.py; each subprocess here costs about a minute of CI.
CLI_METHODS = ("simclr", "dino", "nnclr", "mae")


@pytest.mark.parametrize("method", CLI_METHODS)
def test_smoke_config_runs_from_the_command_line(method, image_folder, tmp_path):
    """`python -m ssl_jax.main --config=configs/X.py:smoke`, shrunk to 2 steps of a width-4 network."""
    workdir = tmp_path / "w"
    args = [sys.executable, "-m", "ssl_jax.main", f"--config=configs/{config_files.METHOD_CONFIGS[method]}.py:smoke",
            f"--workdir={workdir}", f"--config.data.path={image_folder}", f"--config.data.cache_dir={tmp_path}",
            "--config.batch_size=16", "--config.num_train_steps=2", "--config.model.width=4",
            "--config.eval.knn_k=5", "--config.eval.linear_epochs=2", "--config.xla_cpu_flags=none"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=helpers.xla_flags())
    result = subprocess.run(args, cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "eval.json").read_text())
    assert results["method"] == method and results["step"] == 2
    if method == "mae":  # a ViT (vit_tiny of 2 blocks at :smoke); it has no width
        assert results["network"] == "vit_tiny of 2 blocks, patch 4" and "width" not in results
    else:
        assert results["network"] == "resnet18 of width 4" and results["width"] == 4
    assert 0.0 <= results["knn_top1"] <= 1.0 and 0.0 <= results["linear_top1"] <= results["linear_top5"] <= 1.0
