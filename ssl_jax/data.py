"""Host-side CIFAR-10/100 data: a labelled data set loaded into uint8 arrays in memory, from whichever source has it.

Numpy only: which examples each step trains on is `batches.py`, putting them on devices `sharding.py`. Sources,
in order: a user path (the official python archive or an image-folder tree/tarball), prepared TFDS data, a
download of the official archive.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import time
import urllib.request
import zlib

import numpy as np
from PIL import Image

from ssl_jax import errors

CACHE_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".webp")
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int
    image_shape: tuple[int, int, int]
    label_key: bytes  # label field in the official pickled batches
    train_files: tuple[str, ...]  # official batch file names per split
    test_files: tuple[str, ...]


SPECS = {
    "cifar10": _Spec(10, (32, 32, 3), b"labels", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",)),
    "cifar100": _Spec(100, (32, 32, 3), b"fine_labels", ("train",), ("test",)),
}
_BATCH_NAMES = frozenset(n for s in SPECS.values() for n in s.train_files + s.test_files)
# Data sets too large for memory, streamed from an image folder by streaming.py (config.data.name -> the number
# of classes the folder must have; None: whatever it has). Here, not there, so that configs can ask cheaply.
FOLDER_DATASETS = {"imagenet": 1000, "imagenet100": 100, "image_folder": None, "stl10": 10}


def is_folder_dataset(name) -> bool:
    """Whether config.data.name names a folder data set, streamed (streaming.py) instead of held in memory."""
    return name in FOLDER_DATASETS

# Official archives; module-level so tests (and mirrors) can patch them.
DOWNLOADS = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "filename": "cifar-10-python.tar.gz",
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "filename": "cifar-100-python.tar.gz",
    },
}
DOWNLOAD_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Split:
    """One split held in host memory."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded dataset and a human-readable note of where it came from."""

    name: str
    num_classes: int
    train: Split
    test: Split
    source: str

    @property
    def pretrain_split(self):
        """What pretraining reads: the train split (as `streaming.StreamedDataset.pretrain_split`)."""
        return self.train


class DataError(Exception):
    """A data problem the user can fix; the message says what was wrong and what to do."""


# ----------------------------------------------------------------------------------------------------------
# Public entry point.


def load_configured(data_config, name=None, path=None):
    """The data set config.data names (`name` and `path` override its own, as evaluate's and finetune's flags
    do): a folder data set to stream (`FOLDER_DATASETS`, ImageNet-class data: `streaming.load_streaming_dataset`)
    or a small one held in memory (CIFAR: `load_dataset`). Raises DataError with what to do."""
    name, path = name or data_config.name, path or data_config.get("path") or None
    tfds_data_dir = data_config.get("tfds_data_dir") or None
    if is_folder_dataset(name):
        from ssl_jax import streaming  # imports grain (and so JAX): only for streamed data

        return streaming.load_streaming_dataset(name, path, tfds_data_dir)
    return load_dataset(name, path=path, cache_dir=data_config.get("cache_dir") or None,
                        tfds_data_dir=tfds_data_dir, download=data_config.get("download", True))


def load_dataset(name="cifar10", path=None, cache_dir=None, tfds_data_dir=None, download=True) -> Dataset:
    """Loads `name` from `path`, else prepared TFDS data, else (if `download`) the official archive."""
    _spec(name)
    cache_dir = _cache_dir(cache_dir)
    if path is not None:
        return _load_path(name, str(path), cache_dir)
    tried = []
    for label, attempt in (
        ("TFDS", lambda: _load_tfds(name, tfds_data_dir, cache_dir)),
        ("official archive", lambda: _load_download(name, cache_dir, download)),
    ):
        try:
            return attempt()
        except DataError as e:
            tried.append(f"  - {label}: {e}")
    raise DataError(_no_data_message(name, tried))


def _spec(name):
    if name not in SPECS:
        raise DataError(f"unknown dataset name {name!r}; use one of {sorted(SPECS)}")
    return SPECS[name]


def _cache_dir(cache_dir):
    cache_dir = cache_dir or os.environ.get("SSL_JAX_CACHE") or "~/.cache/ssl_jax"
    return os.path.abspath(os.path.expanduser(str(cache_dir)))


def _no_data_message(name, tried):
    return "\n".join(
        [f"no {name} data found. Tried:", "  - path: not given", *tried, "To provide the data, either:",
         f"  - pass --config.data.path=PATH, PATH being the official {DOWNLOADS[name]['filename']} (or its "
         "extracted folder), or an image folder / tarball with train/<class>/ and test/<class>/ subfolders;",
         "  - or prepare TFDS on a machine with internet: python -c \"import tensorflow_datasets as tfds; "
         f"tfds.data_source('{name}')\" (or: tfds build {name} --file_format=array_record), copy its data "
         "dir here and pass --config.data.tfds_data_dir=DIR."])


# ----------------------------------------------------------------------------------------------------------
# Validation and assembly.


def _make_split(images, labels, name, split, where) -> Split:
    """Validates one split and returns it as read-only uint8 images / int32 labels."""
    spec = _spec(name)
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) == 0:
        raise DataError(f"the {split} split of {where} is empty; it must hold at least one image")
    if images.dtype != np.uint8 or images.shape[1:] != spec.image_shape:
        raise DataError(f"{split} images from {where} have shape {images.shape[1:]} and dtype {images.dtype}; "
                        f"{name} needs uint8 images of shape {spec.image_shape}")
    if labels.shape != (len(images),):
        raise DataError(f"the {split} split of {where} has {len(images)} images but labels of shape "
                        f"{labels.shape}; each image needs exactly one label")
    bad = np.flatnonzero((labels < 0) | (labels >= spec.num_classes))
    if bad.size:
        raise DataError(f"{split} label {labels[bad[0]]} (position {bad[0]}) in {where} is outside "
                        f"0..{spec.num_classes - 1} for {name}; is {name!r} the right dataset name?")
    images, labels = np.ascontiguousarray(images), labels.astype(np.int32)
    images.flags.writeable = labels.flags.writeable = False
    return Split(images=images, labels=labels)


def _make_dataset(name, splits, source) -> Dataset:
    return Dataset(name=name, num_classes=_spec(name).num_classes, train=splits["train"], test=splits["test"],
                   source=source)


# ----------------------------------------------------------------------------------------------------------
# Cache: one .npz of uint8 arrays per dataset + source fingerprint, written atomically.


def _cached(name, key, cache_dir, read, source) -> Dataset:
    """Returns the cached dataset for `key`, else decodes it with `read()` and caches the result."""
    file = os.path.join(cache_dir, f"{name}-{key}.npz")
    dataset = _read_cache(file, name, source)
    if dataset is not None:
        return dataset
    print(f"Decoding {name} from {source} (once; cached afterwards in {cache_dir}) ...", flush=True)
    start = time.time()
    splits = read()
    print(f"Decoded {name}: {len(splits['train'].labels)} train + {len(splits['test'].labels)} test images "
          f"in {time.time() - start:.1f} s", flush=True)
    _write_cache(file, splits, source)
    return _make_dataset(name, splits, source)


def _read_cache(file, name, source):
    """Loads a cache file (no pickle); None if absent or unreadable (it is then rebuilt)."""
    if not os.path.exists(file):
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            splits = {s: _make_split(z[f"{s}_images"], z[f"{s}_labels"], name, s, file) for s in SPLITS}
    except Exception as e:  # a damaged cache is never fatal: decode again
        print(f"Ignoring unreadable cache file {file} ({type(e).__name__}: {e}); decoding again.", flush=True)
        return None
    print(f"Loaded {name} from cache {file} (source: {source})", flush=True)
    return _make_dataset(name, splits, f"{source} (cached at {file})")


def _write_cache(file, splits, source):
    """Writes the cache via a temp file + os.replace; on failure warns and leaves nothing behind."""
    arrays = {f"{s}_{k}": getattr(splits[s], k) for s in SPLITS for k in ("images", "labels")}
    tmp = None
    try:
        os.makedirs(os.path.dirname(file), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=os.path.dirname(file))
        with os.fdopen(fd, "wb") as f:
            np.savez(f, source=np.array(source), **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except OSError as e:
        print(f"Warning: could not write cache {file} ({e}); continuing without a cache.", flush=True)
        _remove(tmp)


def _remove(path):
    if path and os.path.exists(path):
        os.remove(path)


def _fingerprint(name, path) -> str:
    """Hash of the dataset name and the absolute path, size and mtime of the source (every file of a dir)."""
    h = hashlib.sha256(f"{CACHE_VERSION}\0{name}\0{path}".encode())
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                h.update(f"\0{os.path.relpath(os.path.join(root, f), path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    else:
        st = os.stat(path)
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Source 1: a user path (archive, extracted python folder, image-folder tree or tarball).


def _load_path(name, path, cache_dir) -> Dataset:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise DataError(f"data path {path} does not exist; set --config.data.path to the official "
                        f"{DOWNLOADS[name]['filename']}, its extracted folder, or an image folder/tarball")
    read = functools.partial(_read_dir if os.path.isdir(path) else _read_tar, name, path)
    return _cached(name, _fingerprint(name, path), cache_dir, read, path)


def _read_tar(name, path):
    """Reads an archive in one streaming pass: official pickled batches or train/test/<class>/<image>."""
    batches, images = {}, []
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                kind = _member_kind(member)
                if kind is None:
                    continue
                data = tar.extractfile(member).read()
                if kind == "batch":
                    batches[member.name] = data
                else:
                    images.append(_image_entry(member.name, data, name, f"{path}:{member.name}"))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"cannot read archive {path} ({type(e).__name__}: {e}); it is truncated, corrupt or "
                        "not a tar archive: download or create it again") from None
    if images:
        return _folder_splits(images, name, path)
    return _batch_splits(batches, name, path)


def _member_kind(member):
    """'image' for */{train,test}/<class>/<image>, 'batch' for an official batch file, else None."""
    parts = _parts(member.name) if member.isfile() else []
    if not parts or any(p.startswith(".") for p in parts):
        return None
    if len(parts) >= 3 and parts[-3] in SPLITS and parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return "image"
    return "batch" if parts[-1] in _BATCH_NAMES else None


def _parts(member_path):
    return [p for p in member_path.split("/") if p not in ("", ".")]


def _image_entry(member_path, data, name, where):
    """(tree root, split, class, file name, decoded image) for one image of an image-folder tree."""
    parts = _parts(member_path)
    return "/".join(parts[:-3]), parts[-3], parts[-2], parts[-1], _decode_image(data, name, where)


def _decode_image(data, name, where) -> np.ndarray:
    """Decodes image bytes to RGB uint8 and checks the shape; `where` names the file in errors."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            image = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except Exception as e:  # Pillow raises many types for bad files
        raise DataError(f"cannot decode image {where} ({type(e).__name__}: {e}); replace or remove it") from None
    if image.shape != _spec(name).image_shape:
        raise DataError(f"image {where} has shape {image.shape}, but every {name} image must be "
                        f"{_spec(name).image_shape}; resize or remove it")
    return image


def _read_dir(name, path):
    """Reads an extracted official folder or an image-folder tree, descending single wrapper folders."""
    root = _find_root(path)
    if any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
        return _folder_splits(_walk_images(root, name), name, root)
    batches = {}
    for f in sorted(set(os.listdir(root)) & _BATCH_NAMES):
        with open(os.path.join(root, f), "rb") as fh:
            batches[f] = fh.read()
    return _batch_splits(batches, name, root)


def _find_root(path):
    """The folder holding train/ and test/ folders or official batch files (maybe under one wrapper)."""
    root = path
    for _ in range(3):
        entries = [e for e in os.listdir(root) if not e.startswith(".")]
        if set(entries) & (_BATCH_NAMES | set(SPLITS)):
            return root
        subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
        if len(subdirs) != 1:
            break
        root = os.path.join(root, subdirs[0])
    raise DataError(f"no CIFAR data in folder {path}: expected train/ and test/ class folders, or the official "
                    "batch files (data_batch_1..5 and test_batch, or train and test for CIFAR-100)")


def _walk_images(root, name):
    entries = []
    for split in (s for s in SPLITS if os.path.isdir(os.path.join(root, s))):
        for cls in sorted(os.listdir(os.path.join(root, split))):
            cls_dir = os.path.join(root, split, cls)
            if cls.startswith(".") or not os.path.isdir(cls_dir):
                continue
            for f in sorted(os.listdir(cls_dir)):
                if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES):
                    with open(os.path.join(cls_dir, f), "rb") as fh:
                        data = fh.read()
                    entries.append(("", split, cls, f, _decode_image(data, name, os.path.join(cls_dir, f))))
    return entries


def _folder_splits(entries, name, where):
    """Sorts decoded (root, split, class, file, image) entries into splits; classes sorted by name."""
    roots = sorted({e[0] for e in entries})
    if len(roots) > 1:
        raise DataError(f"{where} holds several image trees ({', '.join(r + '/' for r in roots)}); keep one")
    classes = {s: sorted({e[2] for e in entries if e[1] == s}) for s in SPLITS}
    for split in SPLITS:
        if not classes[split]:
            raise DataError(f"{where} has no images under {split}/<class>/; it needs train/ and test/ folders "
                            "with one subfolder of images per class")
    if classes["train"] != classes["test"]:
        only_train, only_test = sorted(set(classes["train"]) - set(classes["test"])), sorted(
            set(classes["test"]) - set(classes["train"]))
        raise DataError(f"class folders differ between train/ and test/ in {where}: only in train: "
                        f"{only_train}, only in test: {only_test}; both need the same classes")
    names = classes["train"]
    if len(names) != _spec(name).num_classes:
        raise DataError(f"{where} has {len(names)} classes ({', '.join(names[:12])}"
                        f"{', ...' if len(names) > 12 else ''}) but {name} has {_spec(name).num_classes}; "
                        "check the dataset name and the folders")
    index = {c: i for i, c in enumerate(names)}
    splits = {}
    for split in SPLITS:
        items = sorted((e for e in entries if e[1] == split), key=lambda e: (e[2], e[3]))
        images = np.stack([e[4] for e in items])
        splits[split] = _make_split(images, [index[e[2]] for e in items], name, split, where)
    return splits


def _batch_splits(blobs, name, where):
    """Builds splits from official pickled batches, given as {member path: bytes}."""
    spec = _spec(name)
    by_base = {os.path.basename(k): k for k in blobs}
    splits = {}
    for split, files in (("train", spec.train_files), ("test", spec.test_files)):
        missing = [f for f in files if f not in by_base]
        if missing:
            raise DataError(f"{where} lacks {missing} for {name} (found batch files: {sorted(by_base) or 'none'}, "
                            "and no train/<class>/ image folders); is it the right archive for this dataset name?")
        parts = [_unpickle_batch(blobs[by_base[f]], spec, f"{where}:{by_base[f]}") for f in files]
        splits[split] = _make_split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                    name, split, where)
    return splits


def _unpickle_batch(blob, spec, where):
    """(images [N,H,W,C] uint8, labels [N]) from one official batch: b'data' is [N, C*H*W] row-major CHW."""
    try:
        batch = pickle.loads(blob, encoding="bytes")
    except Exception as e:  # truncated or foreign pickles raise many types
        raise DataError(f"cannot unpickle batch {where} ({type(e).__name__}: {e}); the archive is corrupt") from None
    if not isinstance(batch, dict) or b"data" not in batch or spec.label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"batch {where} lacks b'data' or {spec.label_key!r} (has {keys}); is it the right archive?")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[spec.label_key])
    h, w, c = spec.image_shape
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != h * w * c:
        raise DataError(f"batch {where} has b'data' of shape {data.shape} and dtype {data.dtype}; "
                        f"expected uint8 [N, {h * w * c}]")
    if len(labels) != len(data):
        raise DataError(f"batch {where} has {len(data)} images but {len(labels)} labels; the archive is corrupt")
    return data.reshape(-1, c, h, w).transpose(0, 2, 3, 1), labels


# ----------------------------------------------------------------------------------------------------------
# Source 2: prepared TFDS data.


def _load_tfds(name, data_dir, cache_dir) -> Dataset:
    """Reads prepared TFDS data (never prepares or downloads); caches it when its files are known."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise DataError(f"tensorflow_datasets is not importable ({e})") from None
    where = f"data_dir={data_dir or 'TFDS default'}"
    try:
        sources = {s: tfds.data_source(name, split=s, data_dir=data_dir, download=False) for s in SPLITS}
    except Exception as e:  # TFDS raises many types when data is missing; never surface its traceback
        raise DataError(_tfds_unprepared(tfds, name, data_dir) or f"cannot open {name} in {where} "
                        f"({type(e).__name__}: {errors.first_line(e)})") from None
    source = f"TFDS {name} ({where})"
    read = functools.partial(_read_tfds_splits, sources, name, source)
    info_file = _tfds_info_file(tfds, name, data_dir)
    if info_file is None:  # e.g. under tfds.testing.mock_data: nothing on disk to key a cache on
        return _make_dataset(name, read(), source)
    return _cached(name, _fingerprint(name, info_file), cache_dir, read, source)


def _tfds_unprepared(tfds, name, data_dir):
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        return None if builder.is_prepared() else f"{name} is not prepared (nothing at {builder.data_dir})"
    except Exception:  # pylint: disable=broad-except
        return None


def _tfds_info_file(tfds, name, data_dir):
    """dataset_info.json of the prepared builder, or None if not on disk."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        path = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
        return path if builder.is_prepared() and os.path.isfile(path) else None
    except Exception:  # pylint: disable=broad-except
        return None


def _read_tfds_splits(sources, name, where):
    try:
        return {s: _make_split(*_read_records(sources[s]), name, s, where) for s in SPLITS}
    except DataError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        raise DataError(f"cannot read {where} ({type(e).__name__}: {errors.first_line(e)}); prepare it again") from None


def _read_records(source, chunk=2048):
    """All (images, labels) of a TFDS data source, read in chunks of records."""
    images, labels = [], []
    for start in range(0, len(source), chunk):
        keys = list(range(start, min(start + chunk, len(source))))
        try:
            records = source.__getitems__(keys)
        except TypeError:  # some sources (e.g. TFDS mocks) lack batched reads
            records = [source[k] for k in keys]
        images += [np.asarray(r["image"]) for r in records]
        labels += [int(r["label"]) for r in records]
    return (np.stack(images) if images else np.zeros((0, 0, 0, 0), np.uint8)), np.asarray(labels, np.int64)


# ----------------------------------------------------------------------------------------------------------
# Source 3: the official archive, downloaded into the cache dir.


def _load_download(name, cache_dir, download) -> Dataset:
    info = DOWNLOADS[name]
    file = os.path.join(cache_dir, info["filename"])
    if not (os.path.isfile(file) and _md5(file) == info["md5"]):
        if not download:
            raise DataError(f"download=False and no verified {info['filename']} in {cache_dir}")
        _download(info, file)
    return _load_path(name, file, cache_dir)


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(info, file):
    """Downloads to a temp file beside `file`, checks the md5, then renames; nothing is left on failure."""
    tmp = None
    try:
        os.makedirs(os.path.dirname(file), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".download", dir=os.path.dirname(file))
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(info["url"], out)
        if digest != info["md5"]:
            raise DataError(f"{info['url']} gave a file with md5 {digest}, expected {info['md5']}; the download "
                            "is damaged (proxy or partial transfer): retry, or fetch it by hand and pass "
                            "--config.data.path")
        os.replace(tmp, file)
        tmp = None
    except OSError as e:  # includes URLError, timeouts and a read-only cache dir
        raise DataError(f"downloading {info['url']} to {file} failed ({type(e).__name__}: {e})") from None
    finally:
        _remove(tmp)


def _fetch(url, out):
    """Streams `url` into `out` with a progress print; returns the md5 hex digest."""
    h, done, shown = hashlib.md5(), 0, -1
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) if getattr(response, "headers", None) else 0
        print(f"Downloading {url} ({total / 1e6:.0f} MB)" if total else f"Downloading {url}", flush=True)
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)
            h.update(block)
            done += len(block)
            step = done * 10 // total if total else done >> 24
            if step != shown:
                shown = step
                print(f"  {done / 1e6:.0f} MB" + (f" ({100 * done // total}%)" if total else ""), flush=True)
    return h.hexdigest()
