"""The ImageNet recipes (configs/*_imagenet.py, config_files.IMAGENET_CONFIGS): each loads with its `:in100` and
`:smoke` variants; each `:smoke` trains on a generated JPEG tree (two end to end through train_and_evaluate, one
ResNet and the DINO ViT; the others two steps), and the CIFAR configs' variants are as before."""
import json
import os

import numpy as np
import pytest

import helpers
from ssl_jax import config_files
from ssl_jax import config_lib
from ssl_jax import train

IMAGENET = sorted(config_files.IMAGENET_CONFIGS.values())
END_TO_END = ("byol_imagenet", "dino_imagenet")  # one ResNet, the ViT: train, checkpoint, export, evaluate


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return helpers.write_jpeg_tree(tmp_path_factory.mktemp("jpegs"))


def smoke_config(name, tree):
    config = helpers.load_config(name, "smoke")
    config.data.path = str(tree)
    config.xla_cpu_flags = ""
    return config


@pytest.mark.parametrize("name", IMAGENET)
def test_the_recipe_and_its_variants_load(name):
    full, in100, smoke = (helpers.load_config(name, arg) for arg in (None, "in100", "smoke"))
    assert (full.data.name, in100.data.name, smoke.data.name) == ("imagenet", "imagenet100", "image_folder")
    assert full.augment.view1.crop_size == full.augment.view2.crop_size == config_lib.IMAGENET_CROP_SIZE
    assert in100.batch_size == 256 and in100.num_epochs == 400  # solo-learn's ImageNet-100 frame
    if config_lib.is_vit(full):
        assert (full.model.name, full.model.patch_size, in100.model.name) == ("vit_small", 16, "vit_tiny")
        assert smoke.model.vit_depth == config_lib.SMOKE_VIT_DEPTH
    else:
        assert (full.model.name, full.model.stem) == ("resnet50", "imagenet")
        assert (in100.model.name, in100.model.stem) == ("resnet18", "imagenet")
        assert (smoke.model.name, smoke.model.width) == ("resnet18", 8)
    assert (smoke.batch_size, smoke.num_train_steps, smoke.data.workers) == (32, 20, 2)
    assert smoke.augment.view1.crop_size == config_lib.SMOKE_FOLDER_CROP_SIZE
    assert full.eval.knn_preset == "solo_learn"  # DINO's 20-NN, T=0.07: the kNN figures the docstrings quote
    with pytest.raises(ValueError, match="known variants: 'smoke', 'in100'"):
        helpers.load_config(name, "in1k")


@pytest.mark.parametrize("name", sorted(set(config_files.METHOD_CONFIGS.values())))
def test_cifar_configs_keep_their_smoke_variant_and_have_no_in100(name):
    config = helpers.load_config(name, "smoke")
    assert config.data.name == "cifar10" and config.batch_size == 64 and config.num_train_steps == 30
    with pytest.raises(ValueError, match=r"known variants: 'smoke' \("):
        helpers.load_config(name, "in100")


@pytest.mark.parametrize("name", END_TO_END)
def test_smoke_trains_and_evaluates_on_a_jpeg_folder(name, tree, tmp_path):
    config = smoke_config(name, tree)
    results = train.train_and_evaluate(config, str(tmp_path))
    with open(os.path.join(tmp_path, "eval.json")) as f:
        written = json.load(f)
    for key in ("knn_top1", "linear_top1", "knn_top1_random_init"):
        assert 0.0 <= written[key] <= 1.0 and written[key] == pytest.approx(results[key])
    assert written["step"] == config.num_train_steps and written["method"] == config.method
    assert os.path.isdir(os.path.join(tmp_path, "encoder"))


@pytest.mark.parametrize("name", [n for n in IMAGENET if n not in END_TO_END])
def test_smoke_takes_two_steps_on_a_jpeg_folder(name, tree):
    exp = train.build_experiment(smoke_config(name, tree))
    state, metrics = train.run_steps(exp, exp.dp.put_state(train.initial_state(exp)), 0, 2)
    assert np.isfinite(float(metrics["loss"]))
