"""Shared test fixtures: a tiny config for any method and a small learnable synthetic data set."""
import os

import numpy as np
from fast_compile import FAST_COMPILE_FLAGS

from ssl_jax import config_files
from ssl_jax import config_lib
from ssl_jax import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = config_files.CONFIG_DIR


def xla_flags(num_devices=1):
    """XLA_FLAGS for a test's subprocess: `num_devices` fake CPU devices, compiled as quickly as in the tests."""
    devices = f"--xla_force_host_platform_device_count={num_devices} " if num_devices > 1 else ""
    return devices + FAST_COMPILE_FLAGS


def load_config(name, arg="smoke"):
    """configs/<name>.py's get_config(arg); the :smoke variant unless `arg` says otherwise."""
    return config_files.load_config(name, arg)


def tiny_config(name="simclr_cifar", batch_size=16, steps=4, **overrides):
    """The method's smoke config shrunk further: width-4 ResNet-18, few steps, quick evaluation. `overrides`
    ('loss.queue_size' and the like, given as **{...}) must name existing settings: a misspelt key fails."""
    config = load_config(name)
    config.batch_size = batch_size
    config.num_train_steps = steps
    config.model.width = 4
    config_lib.set_head_sizes(config, hidden=32, output=16)
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval.linear_epochs = 2
    config.eval.knn_k = 5
    config.eval.max_train_examples = 0
    config.eval.batch_size = 64
    config.xla_cpu_flags = ""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"tiny_config({name!r}): config.{key} is not a setting of this config; "
                           f"config.{'.'.join(parents) or '<top>'} has {sorted(node)}.")
        node[leaf] = value
    return config


# A parameter leaf trained on another device or process count may differ by this fraction of the leaf's largest
# entry. A gradient's sums run in another order there; in the first stages' BatchNorm gradients of the width-4 test
# networks they cancel heavily: on an AMD EPYC host SimCLR's and MoCo v2+'s first step on 1 and 8 devices differed by
# up to 1.1% of a leaf's largest entry (tests/test_sharding.py) and two processes against one by 2.5% after two steps
# (tests/test_multiprocess.py), where other hosts stayed within rtol 1e-4. What those tests are for fails by the
# whole leaf: gradients or BatchNorm statistics not averaged over devices are off by up to 8x.
LEAF_SCALE_TOL = 5e-2


def assert_leaf_close(actual, desired, rtol, atol, leaf_scale_tol=0.0, err_msg=""):
    """|actual - desired| <= atol + rtol |desired| + leaf_scale_tol max|desired|, elementwise."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    leaf_atol = atol + leaf_scale_tol * (np.max(np.abs(desired)) if desired.size else 0.0)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=leaf_atol, err_msg=err_msg)


def synthetic_split(num_examples, num_classes=10, seed=0, size=32):
    """Images whose class sets a colour and a stripe orientation: learnable, yet cheap to make."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_examples) % num_classes
    colours = np.random.default_rng(123).uniform(40, 215, size=(num_classes, 3))
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((num_examples, size, size, 3), np.float32)
    for i, label in enumerate(labels):
        stripes = np.sin((xx * np.cos(label) + yy * np.sin(label)) * 0.8) * 40
        images[i] = colours[label] + stripes[..., None] + rng.normal(0, 12, (size, size, 3))
    return data.Split(np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int32))


def write_image_folder(root, dataset, name="cifar_small"):
    """Writes the data set as PNGs in root/name/{train,test}/class_NN/, the layout data.load_dataset reads."""
    from PIL import Image

    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        for i, (image, label) in enumerate(zip(split.images, split.labels)):
            folder = root / name / split_name / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root / name


def synthetic_dataset(num_train=64, num_test=32, num_classes=10):
    return data.Dataset(name="cifar10", num_classes=num_classes, train=synthetic_split(num_train, num_classes, 0),
                        test=synthetic_split(num_test, num_classes, 1), source="synthetic (tests)")


def write_jpeg_tree(root, num_classes=3, train_per_class=16, val_per_class=6, seed=0):
    """An ImageNet-like folder root/{train,val}/nNNNNNNN/*.JPEG of JPEGs of varying sizes (40-90 x 36-70 pixels),
    each class a colour of its own with noise, so features can tell the classes apart. Returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, (num_classes, 3))
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(num_classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = int(rng.integers(36, 71)), int(rng.integers(40, 91))
                image = np.clip(colours[c] + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{split}_{c}_{i}.JPEG", quality=90)
    return root
