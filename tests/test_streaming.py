"""Folder data sets streamed through the trainer (ssl_jax/streaming.py): loading and its errors, the evaluation
crop, training end to end with crops on the host, exact resume, and the bounded-memory evaluation."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import helpers
from ssl_jax import data
from ssl_jax import evaluate
from ssl_jax import sharding
from ssl_jax import streaming
from ssl_jax import train


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return helpers.write_jpeg_tree(tmp_path_factory.mktemp("jpegs"))


def folder_config(tree, steps=6, **overrides):
    """The tiny SimCLR config on the folder: 32-pixel crops taken on the host from the JPEGs."""
    return helpers.tiny_config(steps=steps, **{"data.name": "image_folder", "data.path": str(tree or ""),
                                               "data.workers": 2, **overrides})


def test_loads_the_splits_with_their_classes(tree):
    dataset = streaming.load_folder_dataset("image_folder", str(tree))
    assert dataset.num_classes == 3 and len(dataset.train) == 48 and len(dataset.test) == 18
    assert dataset.train.classes == dataset.test.classes == ("n00000000", "n00000001", "n00000002")
    np.testing.assert_array_equal(np.bincount(dataset.train.labels), [16, 16, 16])


def test_one_loader_serves_both_kinds_of_data_set(tree, tmp_path):
    """data.load_configured streams a folder data set and holds CIFAR in memory; flags' name and path override
    the config's (as evaluate's and finetune's --dataset and --data do)."""
    config = folder_config(tree)
    streamed = data.load_configured(config.data)
    assert isinstance(streamed, streaming.StreamedDataset) and len(streamed.pretrain_split) == 48
    config.data.cache_dir = str(tmp_path / "cache")
    folder = helpers.write_image_folder(tmp_path, helpers.synthetic_dataset(num_train=20, num_test=10))
    held = data.load_configured(config.data, "cifar10", str(folder))
    assert isinstance(held, data.Dataset) and held.pretrain_split is held.train and len(held.train) == 20


@pytest.mark.parametrize("name, path, message", [
    ("image_folder", "", "pass --config.data.path"),
    ("imagenet", None, "has 3 classes, but imagenet has 1000"),
    ("image_folder", "train", "has no train/ folder.*its parent"),
])
def test_errors_say_what_to_do(tree, name, path, message):
    path = str(tree) if path is None else (str(tree / path) if path else path)
    with pytest.raises(data.DataError, match=message):
        streaming.load_folder_dataset(name, path)


def test_a_missing_test_split_is_named(tmp_path):
    root = helpers.write_jpeg_tree(tmp_path, num_classes=2, train_per_class=2, val_per_class=1)
    os.rename(root / "val", root / "holdout")
    with pytest.raises(data.DataError, match="no val/ or validation/ or test/ folder"):
        streaming.load_folder_dataset("image_folder", str(root))


def test_train_and_test_classes_must_agree(tmp_path):
    root = helpers.write_jpeg_tree(tmp_path, num_classes=2, train_per_class=2, val_per_class=1)
    os.rename(root / "val" / "n00000001", root / "val" / "n00000009")
    with pytest.raises(data.DataError, match="different classes"):
        streaming.load_folder_dataset("image_folder", str(root))


def test_center_crop_resizes_the_shorter_side_then_takes_the_middle(tmp_path):
    """A 64 x 128 image whose left half is black and right half white: the shorter side goes to 32 / 0.875 = 37
    pixels, the middle 32 x 32 of the 74 x 37 result straddles the edge at its centre column."""
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 64:] = 255
    Image.fromarray(image).save(tmp_path / "half.png")
    crop = streaming.center_crop(str(tmp_path / "half.png"), 32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    assert (crop[:, :14] == 0).all() and (crop[:, 18:] == 255).all()


def test_trains_evaluates_and_resumes_exactly_on_a_jpeg_folder(tree, tmp_path):
    """Crops on the host, flips and colours on the device; a run stopped at step 3 and resumed ends where the
    uninterrupted run ends (the host batches restart at the step), and the evaluation writes its figures."""
    config = folder_config(tree, checkpoint_every_steps=3)
    results = train.train_and_evaluate(config, str(tmp_path / "full"))
    written = json.load(open(tmp_path / "full" / "eval.json"))
    for key in ("knn_top1", "linear_top1", "knn_top1_random_init"):
        assert 0.0 <= written[key] <= 1.0 and written[key] == pytest.approx(results[key])
    assert written["linear_protocol"] == "probe_cached"
    # The exported encoder, evaluated again from the command line, gives the run's kNN figure.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cli = subprocess.run([sys.executable, "-m", "ssl_jax.evaluate", f"--workdir={tmp_path / 'full'}"], env=env,
                         cwd=helpers.REPO, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    frozen = json.load(open(tmp_path / "full" / "eval_frozen.json"))
    assert frozen["knn_top1"] == pytest.approx(written["knn_top1"], abs=1e-6)
    # The papers' SGD protocol on the streamed split (host crops every epoch): 2 epochs, the batch cut to the split.
    cli = subprocess.run([sys.executable, "-m", "ssl_jax.evaluate", f"--workdir={tmp_path / 'full'}",
                          "--linear_protocol=sgd_augmented", "--sgd_epochs=2", f"--output={tmp_path / 'sgd.json'}"],
                         env=env, cwd=helpers.REPO, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    sgd = json.load(open(tmp_path / "sgd.json"))
    assert sgd["linear_protocol"] == "sgd_augmented" and 0.0 <= sgd["linear_top1"] <= 1.0
    assert sgd["knn_top1"] == pytest.approx(written["knn_top1"], abs=1e-6) and "sgd_linear epoch 2/2" in cli.stdout

    interrupted = str(tmp_path / "interrupted")
    train.train(train.build_experiment(config), interrupted, stop_after_steps=3)
    resumed = sharding.local_copy(train.train(train.build_experiment(config), interrupted))
    exp = train.build_experiment(config)
    full = sharding.local_copy(train.train(exp, str(tmp_path / "full")))  # restores the finished run
    assert int(resumed.step) == 6
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)


def test_a_folder_that_vanishes_mid_run_stops_it_with_what_to_check(tmp_path):
    """A few damaged images are skipped (black crops, counted); a training folder whose images have gone stops
    the run with a DataError at the batch that crosses the limit (streaming.check_unreadable_share)."""
    root = helpers.write_jpeg_tree(tmp_path, num_classes=2, train_per_class=24, val_per_class=2)
    dataset = streaming.load_folder_dataset("image_folder", str(root))
    groups = train.crop_groups(folder_config(root))
    batches = streaming.train_batches(dataset, groups, 16, 0, 0, 6, workers=0)  # no read-ahead
    next(batches)
    for path in (root / "train").rglob("*.JPEG"):
        path.unlink()
    with pytest.raises(data.DataError, match=r"32 of the 48 images read so far .* still there and readable"):
        list(batches)
    assert streaming.check_unreadable_share(31, 31, "x") is None  # under MIN_UNREADABLE_TO_STOP
    assert streaming.check_unreadable_share(40, 4000, "x") is None  # 1% of the reads
    with pytest.raises(data.DataError, match="41 of the 4000 images"):
        streaming.check_unreadable_share(41, 4000, "x")


def test_a_run_on_streamed_data_evaluates_by_the_sgd_protocol_when_its_config_says_so(tree):
    """train.evaluate_state hands the streamed evaluation the backbone and the data set's pixel statistics, so
    config.eval.linear_protocol='sgd_augmented' trains the linear layer on host crops of the folder."""
    config = folder_config(tree, **{"eval.linear_protocol": "sgd_augmented", "eval.sgd_linear.epochs": 1,
                                    "eval.sgd_linear.batch_size": 16})
    exp = train.build_experiment(config)
    results = train.evaluate_state(exp, exp.dp.put_state(train.initial_state(exp)))
    assert results["linear_protocol"] == "sgd_augmented" and 0.0 <= results["linear_top1"] <= 1.0
    assert results["linear_top5"] == 1.0  # 3 classes


def test_streaming_evaluation_equals_the_in_memory_one_on_the_same_crops(tree):
    """kNN and the probe over the streamed folder give what evaluate_backbone gives the same centre crops held
    in memory (an encoder of colour statistics, so the figures mean something)."""
    dataset = streaming.load_folder_dataset("image_folder", str(tree))

    def encode(images):
        x = np.asarray(images, np.float32) / 255.0
        return np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1)

    eval_config = folder_config(tree).eval
    eval_config.batch_size = 10  # several chunks, the last one padded
    eval_config.linear_epochs = 50
    streamed = evaluate.evaluate_backbone_streaming(encode, dataset, eval_config, 32, workers=2)

    def held(folder):
        images, labels = zip(*streaming.eval_batches(folder, 32, 100, workers=1))
        return data.Split(np.concatenate(images), np.concatenate(labels))

    in_memory = data.Dataset("image_folder", 3, held(dataset.train), held(dataset.test), "test")
    want = evaluate.evaluate_backbone(encode, in_memory, eval_config)
    assert streamed["knn_top1"] == pytest.approx(want["knn_top1"]) and streamed["knn_top1"] > 0.9
    # The probe sees the same features in another order (the stream's seeded permutation): the same accuracy.
    assert streamed["linear_top1"] == pytest.approx(want["linear_top1"], abs=1 / 18)
    eval_config.streaming_linear_examples = 0  # all of them: here as many as the default's 100,000 keeps
    everything = evaluate.evaluate_backbone_streaming(encode, dataset, eval_config, 32, workers=2)
    assert everything["linear_top1"] == streamed["linear_top1"]


def test_imagenet_from_tfds_mock_data_trains_resumes_and_evaluates(tmp_path):
    """config.data.name 'imagenet' without a folder reads prepared TFDS imagenet2012 (here TFDS's own mock data,
    whose images come decoded: the host crops the arrays), end to end through the ImageNet recipe's :smoke, with a
    resume in the middle equal to the uninterrupted run."""
    import tensorflow_datasets as tfds

    from ssl_jax import config_files

    config = config_files.load_config("byol_imagenet", "smoke")
    config.data.name = "imagenet"  # :smoke reads any folder; here the recipe's own data set, from TFDS
    config.update_from_flattened_dict({"num_train_steps": 4, "batch_size": 16, "checkpoint_every_steps": 2,
                                       "eval.knn_k": 5, "eval.linear_epochs": 2, "xla_cpu_flags": ""})
    with tfds.testing.mock_data(num_examples=48):
        dataset = streaming.load_streaming_dataset("imagenet", None, None)
        assert (len(dataset.train), dataset.num_classes) == (48, 1000) and dataset.source.startswith("TFDS")
        results = train.train_and_evaluate(config, str(tmp_path / "full"))
        assert 0.0 <= results["knn_top1"] <= 1.0 and results["step"] == 4
        train.train(train.build_experiment(config), str(tmp_path / "cut"), stop_after_steps=2)
        resumed = sharding.local_copy(train.train(train.build_experiment(config), str(tmp_path / "cut")))
        full = sharding.local_copy(train.train(train.build_experiment(config), str(tmp_path / "full")))
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)


def test_imagenet_without_a_folder_or_tfds_data_says_how_to_prepare_it(tmp_path):
    with pytest.raises(data.DataError, match="tfds build imagenet2012"):
        streaming.load_streaming_dataset("imagenet", None, str(tmp_path))


def test_stl10_pretrains_on_train_and_unlabelled_and_evaluates_on_the_labelled_split(tmp_path):
    """STL-10 from TFDS (mock data): pretraining reads train + unlabelled (ConcatenatedSources), the evaluation
    the labelled train split and test."""
    import tensorflow_datasets as tfds

    config = folder_config(None, steps=2, **{"data.name": "stl10", "data.path": ""})
    with tfds.testing.mock_data(num_examples=24):
        dataset = streaming.load_streaming_dataset("stl10", None, None)
        assert (len(dataset.pretrain_split), len(dataset.train), len(dataset.test)) == (48, 24, 24)
        assert dataset.pretrain_split.read(30)[0].shape == dataset.pretrain.sources[1].read(6)[0].shape
        exp = train.build_experiment(config)
        assert exp.steps_per_epoch == 48 // config.batch_size
        results = train.train_and_evaluate(config, str(tmp_path / "w"))
    assert 0.0 <= results["knn_top1"] <= 1.0


def test_the_online_probe_skips_unlabelled_examples():
    """Label -1 (STL-10's unlabelled images) adds nothing to the probe's loss or accuracy: they are those of the
    labelled rows alone, against a NumPy cross-entropy."""
    from ssl_jax import train_step

    probe = train_step.LinearProbe(3)
    features = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    params = probe.init(jax.random.key(0), features)["params"]
    labels = np.array([0, -1, 2, -1, 1, 2])
    loss, accuracy = train_step._probe_loss(probe, params, features, labels)
    logits = np.asarray(probe.apply({"params": params}, features), np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    rows = labels >= 0
    np.testing.assert_allclose(loss, -logp[rows, labels[rows]].mean(), rtol=1e-5)
    np.testing.assert_allclose(accuracy, (logits[rows].argmax(1) == labels[rows]).mean())


def test_imagenet100_takes_cmcs_classes_from_a_full_imagenet_folder(tmp_path):
    """The 100 classes of CMC's list (100 distinct WordNet ids), picked out of a folder that has more, in sorted
    order; a folder that lacks some of them is refused with their names."""
    classes = streaming.imagenet100_classes()
    assert len(classes) == len(set(classes)) == 100 and all(c.startswith("n") and len(c) == 9 for c in classes)
    for split in ("train", "val"):
        for wnid in classes + ("n99999999",):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), (int(wnid[-2:]), 0, 0)).save(folder / "a.JPEG")
    dataset = streaming.load_folder_dataset("imagenet100", str(tmp_path))
    assert dataset.train.classes == tuple(sorted(classes)) and len(dataset.test) == 100
    os.rename(tmp_path / "val" / classes[5], tmp_path / "val" / "elsewhere")
    with pytest.raises(data.DataError, match=f"lacks 1 of the 100 class folders.*{classes[5]}"):
        streaming.load_folder_dataset("imagenet100", str(tmp_path))
