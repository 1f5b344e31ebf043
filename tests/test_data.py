"""Tests for ssl_jax.data on small generated data (no internet, no shared data)."""
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
from PIL import Image

from ssl_jax import batches
from ssl_jax import data

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_JAX_CACHE", str(tmp_path / "default-cache"))


def _rand_images(n, seed, shape=(32, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _make_tree(root, classes=CIFAR10_CLASSES, n_train=3, n_test=2):
    """Writes root/{train,test}/<class>/NNNN.png; returns the expected {split: (images, labels)}."""
    expected = {}
    for s, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        images, labels = [], []
        # Write classes in reverse order so that sorting by name is what fixes the labels.
        for c, cls in reversed(list(enumerate(sorted(classes)))):
            imgs = _rand_images(n, seed=100 * s + c)
            for i, img in enumerate(imgs):
                _write_png(root / split / cls / f"{i:04d}.png", img)
            images.insert(0, imgs)
            labels.insert(0, np.full(n, c))
        expected[split] = (np.concatenate(images), np.concatenate(labels))
    return expected


def _tar(src, tar_path, arcname):
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return tar_path


def _batch(images, labels, label_key):
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # official layout: row-major CHW
    return pickle.dumps({b"batch_label": b"x", label_key: list(labels), b"data": flat})


def _make_python_archive(tmp_path, name, mutate=None):
    """A small fake official archive; returns (tar path, expected {split: (images, labels)})."""
    if name == "cifar10":
        folder, key, files = "cifar-10-batches-py", b"labels", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        num_classes, sizes = 10, [4, 4, 4, 4, 4, 3]
    else:
        folder, key, files, num_classes, sizes = "cifar-100-python", b"fine_labels", ["train", "test"], 100, [12, 5]
    root = tmp_path / "src" / folder
    root.mkdir(parents=True)
    parts = []
    for i, (f, n) in enumerate(zip(files, sizes)):
        images = _rand_images(n, seed=i)
        labels = np.random.default_rng(i + 50).integers(0, num_classes, n)
        parts.append((images, labels))
        blob = _batch(images, labels, key) if mutate is None else mutate(f, images, labels, key)
        (root / f).write_bytes(blob)
    expected = {
        "train": tuple(np.concatenate([p[k] for p in parts[:-1]]) for k in range(2)),
        "test": parts[-1],
    }
    return _tar(root, tmp_path / f"{name}-python.tar.gz", folder), expected


def _assert_matches(ds, expected):
    for split in ("train", "test"):
        got = getattr(ds, split)
        assert got.images.dtype == np.uint8 and got.labels.dtype == np.int32
        np.testing.assert_array_equal(got.images, expected[split][0])
        np.testing.assert_array_equal(got.labels, expected[split][1])


def _listing(path):
    return sorted(os.listdir(path)) if os.path.exists(path) else []


# --------------------------------------------------------------------------------------------------------------
# Sources.


def test_image_folder_dir_and_tarball(tmp_path):
    expected = _make_tree(tmp_path / "src" / "cifar10-png")
    ds = data.load_dataset("cifar10", path=tmp_path / "src", cache_dir=tmp_path / "c1")  # under one wrapper folder
    _assert_matches(ds, expected)
    assert (ds.name, ds.num_classes) == ("cifar10", 10)
    tgz = _tar(tmp_path / "src" / "cifar10-png", tmp_path / "cifar10-png.tar.gz", "cifar10-png")
    _assert_matches(data.load_dataset("cifar10", path=str(tgz), cache_dir=tmp_path / "c2"), expected)


def test_image_folder_cifar100_sorts_classes(tmp_path):
    classes = [f"class_{i:03d}" for i in range(100)][::-1]
    expected = _make_tree(tmp_path / "tree", classes=classes, n_train=1, n_test=1)
    ds = data.load_dataset("cifar100", path=tmp_path / "tree", cache_dir=tmp_path / "c")
    _assert_matches(ds, expected)
    assert ds.num_classes == 100


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_official_python_archive_round_trips(tmp_path, name):
    tgz, expected = _make_python_archive(tmp_path, name)
    _assert_matches(data.load_dataset(name, path=tgz, cache_dir=tmp_path / "c1"), expected)
    extracted = tmp_path / "src"  # the extracted folder works too
    _assert_matches(data.load_dataset(name, path=extracted, cache_dir=tmp_path / "c2"), expected)


def test_wrong_archive_for_name(tmp_path):
    tgz, _ = _make_python_archive(tmp_path, "cifar10")
    with pytest.raises(data.DataError, match="right archive"):
        data.load_dataset("cifar100", path=tgz, cache_dir=tmp_path / "c")


def test_tfds_mock(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_dataset("cifar10", download=False, cache_dir=tmp_path / "c")
    assert ds.train.images.shape == (6, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.test.labels.shape == (6,) and ds.test.labels.dtype == np.int32
    assert ds.train.labels.min() >= 0 and ds.train.labels.max() < 10
    assert "TFDS" in ds.source


def test_unknown_name_and_missing_path(tmp_path):
    with pytest.raises(data.DataError, match="unknown dataset name"):
        data.load_dataset("mnist", path=tmp_path)
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_dataset("cifar10", path=tmp_path / "nope.tar.gz", cache_dir=tmp_path / "c")


# --------------------------------------------------------------------------------------------------------------
# Cache.


def test_cache_written_once_and_reused(tmp_path, monkeypatch):
    tgz, expected = _make_python_archive(tmp_path, "cifar10")
    cache = tmp_path / "cache"
    first = data.load_dataset("cifar10", path=tgz, cache_dir=cache)
    assert len(_listing(cache)) == 1 and _listing(cache)[0].endswith(".npz")

    def no_decode(*args):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data, "_read_tar", no_decode)
    second = data.load_dataset("cifar10", path=tgz, cache_dir=cache)
    _assert_matches(second, expected)
    assert "cached" in second.source and "cached" not in first.source
    assert len(_listing(cache)) == 1


def test_cache_rebuilt_when_source_changes_or_cache_damaged(tmp_path):
    tgz, _ = _make_python_archive(tmp_path, "cifar10")
    cache = tmp_path / "cache"
    data.load_dataset("cifar10", path=tgz, cache_dir=cache)
    (cache / _listing(cache)[0]).write_bytes(b"garbage")
    ds = data.load_dataset("cifar10", path=tgz, cache_dir=cache)
    assert "cached" not in ds.source
    os.utime(tgz, ns=(1, 1))  # new mtime -> new key
    data.load_dataset("cifar10", path=tgz, cache_dir=cache)
    assert len(_listing(cache)) == 2


def test_default_cache_dir_from_env(tmp_path):
    tgz, _ = _make_python_archive(tmp_path, "cifar10")
    data.load_dataset("cifar10", path=tgz)
    assert len(_listing(tmp_path / "default-cache")) == 1


# --------------------------------------------------------------------------------------------------------------
# Validation: clear DataError, nothing left in the cache.


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(os.urandom(5000))
    with pytest.raises(data.DataError, match="cifar-10-python.tar.gz"):
        data.load_dataset("cifar10", path=bad, cache_dir=tmp_path / "c")
    assert _listing(tmp_path / "c") == []


@pytest.mark.parametrize("kind", ["python", "folder"])
def test_truncated_tarball(tmp_path, kind):
    if kind == "python":
        tgz, _ = _make_python_archive(tmp_path, "cifar10")
    else:
        _make_tree(tmp_path / "tree")
        tgz = _tar(tmp_path / "tree", tmp_path / "imgs.tar.gz", "imgs")
    blob = tgz.read_bytes()
    tgz.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match="truncated"):
        data.load_dataset("cifar10", path=tgz, cache_dir=tmp_path / "c")
    assert _listing(tmp_path / "c") == []


def test_wrong_image_shape_names_file(tmp_path):
    _make_tree(tmp_path / "tree")
    _write_png(tmp_path / "tree" / "train" / "cat" / "0001.png", _rand_images(1, 0, (31, 32, 3))[0])
    with pytest.raises(data.DataError, match=r"cat.0001\.png has shape \(31, 32, 3\)"):
        data.load_dataset("cifar10", path=tmp_path / "tree", cache_dir=tmp_path / "c")
    assert _listing(tmp_path / "c") == []


def test_unreadable_image_names_file(tmp_path):
    _make_tree(tmp_path / "tree")
    (tmp_path / "tree" / "test" / "dog" / "0000.png").write_bytes(b"not a png")
    tgz = _tar(tmp_path / "tree", tmp_path / "imgs.tgz", "imgs")
    with pytest.raises(data.DataError, match=r"imgs/test/dog/0000\.png"):
        data.load_dataset("cifar10", path=tgz, cache_dir=tmp_path / "c")


def _fewer_labels(f, images, labels, key):
    return _batch(images, labels[:-1], key) if f == "data_batch_3" else _batch(images, labels, key)


def _label_out_of_range(f, images, labels, key):
    return _batch(images, np.full_like(labels, 10), key) if f == "test_batch" else _batch(images, labels, key)


@pytest.mark.parametrize("mutate, message", [
    (_fewer_labels, "4 images but 3 labels"),
    (_label_out_of_range, "label 10 .* outside 0..9"),
])
def test_bad_labels_in_python_archive(tmp_path, mutate, message):
    tgz, _ = _make_python_archive(tmp_path, "cifar10", mutate=mutate)
    with pytest.raises(data.DataError, match=message):
        data.load_dataset("cifar10", path=tgz, cache_dir=tmp_path / "c")
    assert _listing(tmp_path / "c") == []


@pytest.mark.parametrize("break_tree, message", [
    (lambda t: os.rename(t / "test" / "ship", t / "test" / "boat"), "differ between train/ and test/"),
    (lambda t: [os.remove(p) for p in (t / "test").rglob("*.png")], "no images under test/"),
    (lambda t: os.rename(t / "test", t / "val"), "no images under test/"),
    (lambda t: [os.remove(p) for p in (t / "train" / "frog").iterdir()] + [os.remove(p) for p in
                                                                           (t / "test" / "frog").iterdir()],
     "has 9 classes"),
])
def test_bad_image_folder(tmp_path, break_tree, message):
    tree = tmp_path / "tree"
    _make_tree(tree)
    break_tree(tree)
    with pytest.raises(data.DataError, match=message):
        data.load_dataset("cifar10", path=tree, cache_dir=tmp_path / "c")


def test_empty_split_rejected():
    with pytest.raises(data.DataError, match="empty"):
        data._make_split(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0), "cifar10", "train", "somewhere")


# --------------------------------------------------------------------------------------------------------------
# No data / download.


def test_no_data_message(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load_dataset("cifar10", cache_dir=tmp_path / "c", tfds_data_dir=str(tmp_path / "tfds"), download=False)
    msg = str(err.value)
    assert "--config.data.path" in msg and "--config.data.tfds_data_dir" in msg
    assert "TFDS:" in msg and "download=False" in msg
    assert "Traceback" not in msg


class _FakeResponse(io.BytesIO):
    def __init__(self, blob):
        super().__init__(blob)
        self.headers = {"Content-Length": str(len(blob))}


def _serve(monkeypatch, blob, calls):
    def urlopen(url, timeout=None):
        calls.append((url, timeout))
        return _FakeResponse(blob)

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)


def test_download_verifies_md5_and_reuses_archive(tmp_path, monkeypatch):
    tgz, expected = _make_python_archive(tmp_path, "cifar10")
    blob = tgz.read_bytes()
    monkeypatch.setitem(data.DOWNLOADS["cifar10"], "md5", hashlib.md5(blob).hexdigest())
    calls, cache = [], tmp_path / "cache"
    _serve(monkeypatch, blob, calls)
    ds = data.load_dataset("cifar10", cache_dir=cache, tfds_data_dir=str(tmp_path / "tfds"))
    _assert_matches(ds, expected)
    assert len(calls) == 1 and calls[0][0] == data.DOWNLOADS["cifar10"]["url"] and calls[0][1] <= 30
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == blob
    # Later loads (even with download=False) use the verified archive without the network.
    _assert_matches(data.load_dataset("cifar10", cache_dir=cache, tfds_data_dir=str(tmp_path / "tfds"),
                                      download=False), expected)
    assert len(calls) == 1


def test_download_md5_mismatch(tmp_path, monkeypatch):
    tgz, _ = _make_python_archive(tmp_path, "cifar10")
    monkeypatch.setitem(data.DOWNLOADS["cifar10"], "md5", "0" * 32)
    _serve(monkeypatch, tgz.read_bytes(), [])
    with pytest.raises(data.DataError, match="md5") as err:
        data.load_dataset("cifar10", cache_dir=tmp_path / "c", tfds_data_dir=str(tmp_path / "tfds"))
    assert "--config.data.path" in str(err.value)
    assert _listing(tmp_path / "c") == []


def test_download_network_error(tmp_path, monkeypatch):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    with pytest.raises(data.DataError, match="no route to host") as err:
        data.load_dataset("cifar100", cache_dir=tmp_path / "c", tfds_data_dir=str(tmp_path / "tfds"))
    assert "cifar-100-python.tar.gz" in str(err.value)
    assert _listing(tmp_path / "c") == []


# --------------------------------------------------------------------------------------------------------------
# Batching.


def test_steps_per_epoch_drops_remainder():
    assert batches.steps_per_epoch(10, 3) == 3
    assert batches.steps_per_epoch(9, 3) == 3
    with pytest.raises(data.DataError):
        batches.steps_per_epoch(10, 0)


def test_batch_indices_per_epoch_permutation():
    n, b, spe = 23, 5, 4
    epochs = [np.concatenate([batches.batch_indices(n, b, seed=7, step=e * spe + i) for i in range(spe)])
              for e in range(3)]
    for e in epochs:
        assert e.dtype == np.int64 and e.shape == (spe * b,)
        assert len(np.unique(e)) == spe * b and e.min() >= 0 and e.max() < n
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    np.testing.assert_array_equal(epochs[1][:b], np.random.default_rng([7, 1]).permutation(n)[:b])


def test_batch_indices_deterministic_and_resumable():
    a = [batches.batch_indices(100, 8, seed=3, step=s) for s in range(30)]
    batches._permutation.cache_clear()
    b = [batches.batch_indices(100, 8, seed=3, step=s) for s in reversed(range(30))][::-1]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(batches.batch_indices(100, 8, seed=4, step=0), a[0])


def _split(n=40):
    return data._make_split(_rand_images(n, 0), np.arange(n) % 10, "cifar10", "train", "test data")


def test_host_batch_two_processes_equal_one():
    split = _split()
    for step in (0, 3, 11):
        whole = batches.host_batch(split, step, 8, seed=1)
        parts = [batches.host_batch(split, step, 8, seed=1, process_index=p, process_count=2) for p in range(2)]
        for key in ("image", "label", "global_index"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
        np.testing.assert_array_equal(whole["global_index"], np.arange(8))
        np.testing.assert_array_equal(parts[1]["global_index"], np.arange(4, 8))
        assert whole["image"].dtype == np.uint8 and whole["label"].dtype == np.int32
        assert whole["global_index"].dtype == np.int32 and whole["image"].shape == (8, 32, 32, 3)
        idx = batches.batch_indices(40, 8, 1, step)
        np.testing.assert_array_equal(whole["label"], split.labels[idx])


def test_host_batch_errors():
    split = _split()
    with pytest.raises(data.DataError, match="not divisible"):
        batches.host_batch(split, 0, 9, seed=0, process_count=2)
    with pytest.raises(data.DataError, match="bigger than the split"):
        batches.host_batch(split, 0, 64, seed=0)
