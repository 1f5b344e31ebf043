"""The trainer's streaming data sets: image-folder trees too large to hold in memory (ImageNet, ImageNet-100, any
`train/<class>/*` + `val/<class>/*` tree), read batch by batch with the crops taken on the host
(`image_folder.py`), and the centre crops their evaluation encodes chunk by chunk.

A `FolderDataset` stands where `data.Dataset` stands for CIFAR: `train.build_experiment` loads one when
`config.data.name` is a folder data set (`data.FOLDER_DATASETS`), `train.host_batches` reads its batches from here, and
`evaluate.evaluate_backbone_streaming` evaluates on it in bounded memory.
"""
from __future__ import annotations

import dataclasses
import os

import grain
import numpy as np
from PIL import Image

from ssl_jax import augment
from ssl_jax import data
from ssl_jax import image_folder

TRAIN_SPLIT_NAMES = ("train",)
TEST_SPLIT_NAMES = ("val", "validation", "test")
# The evaluation transform of ImageNet practice (torchvision's reference scripts, solo-learn, DINO): the shorter
# side resized to crop / 0.875 (256 for a 224 crop), then the central crop.
EVAL_RESIZE_RATIO = 0.875


@dataclasses.dataclass(frozen=True)
class FolderDataset:
    """A folder data set: its train and test `image_folder.ImageFolder`s (`.labels`, `len()`), as data.Dataset."""

    name: str
    num_classes: int
    train: image_folder.ImageFolder
    test: image_folder.ImageFolder
    source: str


def is_streaming(name) -> bool:
    """Whether config.data.name names a folder data set read by streaming (not loaded into memory)."""
    return data.is_folder_dataset(name)


def load_folder_dataset(name, path) -> FolderDataset:
    """The folder data set `name` at `path` (a folder holding `train/` and `val/` (or `validation/`, `test/`),
    each with one sub-folder of images per class). Raises data.DataError, saying what to do, for no path, a
    missing split, train and test folders with different classes, or a class count `name` does not have."""
    if not path:
        raise data.DataError(f"config.data.name={name!r} is read from an image folder: pass "
                             "--config.data.path=DIR, DIR holding train/<class>/* and val/<class>/* "
                             "(docs/input_pipeline.md: how to prepare ImageNet).")
    root = os.path.abspath(os.path.expanduser(str(path)))
    train = image_folder.scan_image_folder(_split_dir(root, TRAIN_SPLIT_NAMES))
    test = image_folder.scan_image_folder(_split_dir(root, TEST_SPLIT_NAMES))
    if train.classes != test.classes:
        only = sorted(set(train.classes) ^ set(test.classes))[:5]
        raise data.DataError(f"{root}: the train and test folders have different classes (e.g. {only}); each "
                             "split needs a folder for every class.")
    expected = data.FOLDER_DATASETS[name]
    if expected is not None and len(train.classes) != expected:
        raise data.DataError(f"{root} has {len(train.classes)} classes, but {name} has {expected}; point "
                             f"--config.data.path at the full data set, or use config.data.name='image_folder' "
                             "for a folder of another size.")
    return FolderDataset(name=name, num_classes=len(train.classes), train=train, test=test,
                         source=f"image folder {root} (streamed)")


def _split_dir(root, names):
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise data.DataError(f"{root} has no {' or '.join(n + '/' for n in names)} folder; a folder data set holds "
                         "train/<class>/* and val/<class>/* (if this is one split's folder, pass its parent).")


def host_crop_groups(groups) -> tuple:
    """The host's crop groups (`image_folder.HostCropGroup`) for the step's `augment.CropGroup`s: each group's
    count, output size, scale and ratio (the device then applies only its flips and colours)."""
    return tuple(image_folder.HostCropGroup(size=g.crop_size, count=g.count, scale=g.view.crop_scale,
                                            ratio=g.view.crop_ratio) for g in augment.crop_groups(groups))


def train_batches(dataset, groups, batch_size, seed, start_step, end_step, process_index=0, process_count=1,
                  workers=8):
    """This process's share of each global batch of steps [start_step, end_step) as the train step takes them:
    'crops' (one uint8 [B/n, count, size, size, 3] per group), 'label', 'global_index'. Logs the unreadable images
    skipped so far (their crops are black) every time the count grows."""
    reader = image_folder.HostBatches(dataset.train, host_crop_groups(groups), batch_size, seed,
                                      start_step=start_step, num_steps=end_step - start_step,
                                      process_index=process_index, process_count=process_count, workers=workers)
    skipped = 0
    for batch in reader:
        if reader.skipped > skipped:
            skipped = reader.skipped
            print(f"{skipped} unreadable image(s) skipped so far (black crops); see the log for which.", flush=True)
        yield {"crops": batch["crops"], "label": batch["label"], "global_index": batch["global_index"]}


def center_crop(path, size) -> np.ndarray:
    """The evaluation view of one image: uint8 [size, size, 3], its shorter side resized to size / 0.875 then the
    central size x size crop (JPEGs decoded at a reduced scale where that keeps the resolution)."""
    short = int(round(size / EVAL_RESIZE_RATIO))
    with Image.open(path) as image:
        scale = short / min(image.size)
        image.draft("RGB", (max(1, int(image.width * scale)), max(1, int(image.height * scale))))
        image = image.convert("RGB")
        scale = short / min(image.size)
        width, height = max(short, round(image.width * scale)), max(short, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        left, top = (width - size) // 2, (height - size) // 2
        return np.asarray(image.crop((left, top, left + size, top + size)))


def eval_batches(folder, size, batch_size, indices=None, workers=8):
    """(uint8 images [b, size, size, 3], labels [b]) of `folder`'s examples `indices` (default: all, in order),
    `center_crop`ped, in batches of `batch_size` (the last shorter), decoded by `workers` threads."""
    indices = np.arange(len(folder)) if indices is None else np.asarray(indices)
    starts = list(range(0, len(indices), batch_size))

    def decode(start):
        chunk = indices[start:start + batch_size]
        return np.stack([center_crop(folder.path(i), size) for i in chunk]), folder.labels[chunk]

    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * max(1, workers))
    return iter(grain.MapDataset.source(starts).map(decode).to_iter_dataset(options))
