"""Streaming image-folder input for data sets that do not fit in memory (ImageNet's `train/<wnid>/*.JPEG`): each
process decodes only its share of every global batch and takes the random-resized crops of each crop group on the
host, decoding each JPEG at a reduced scale where its crops allow.

Which examples a step trains on is `batches.batch_indices`, the order of the in-memory path: a seeded permutation
per epoch, the last incomplete global batch of each epoch dropped. Process `i` of `n` takes positions
[i * B/n, (i+1) * B/n) of each global batch of B, so the global batch is the processes' parts concatenated in
process order and an epoch covers every kept example once across the processes. grain runs the per-batch work in
worker threads and prefetches; its own sampler is not used (it shards a data set into contiguous ranges, which are
not slices of one global permutation). A batch is a function of (seed, step, process) alone, so an iterator
started at step k yields what the uninterrupted one yields at step k.

Each example's crops of crop group g at a step are drawn from a NumPy generator seeded by (seed, step, the
example's index in the folder, g) (`crop_rng`), so the process and device counts never change a crop. Flips,
colour, blur and solarisation stay on the device (`augment.py`). An unreadable image (corrupt, truncated, gone)
is skipped: logged, its crops left black, its `valid` entry False, and counted (`HostBatches.skipped`).
NumPy, PIL and grain only: no JAX here.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os

import grain
import numpy as np
from PIL import Image

from ssl_jax import batches
from ssl_jax import data
from ssl_jax import errors

IMAGE_SUFFIXES = data.IMAGE_SUFFIXES
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
DRAFT_FACTORS = (8, 4, 2, 1)  # libjpeg's DCT scalings that PIL's draft picks from
CROP_TRIES = 10  # torchvision's RandomResizedCrop.get_params
# What reading a bad image raises: OSError covers unidentifiable, truncated and missing files.
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# The source: a folder of class folders.


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The images of a folder tree `root/<class>/<image>`: classes sorted by name (label = position), files
    sorted within each class, so every example's index is stable across runs and machines."""

    root: str
    classes: tuple[str, ...]
    files: tuple[str, ...]  # "<class>/<file name>", relative to root, in example order
    labels: np.ndarray  # int32 [N], read-only

    def __len__(self):
        return len(self.files)

    def path(self, index) -> str:
        return os.path.join(self.root, self.files[index])


def scan_image_folder(root) -> ImageFolder:
    """The `ImageFolder` at `root` (one sub-folder of images per class; hidden entries, other files and deeper
    folders are ignored). Raises DataError for a missing root, no class folders, or a class folder without
    images."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise data.DataError(f"image folder {root} does not exist or is not a folder; pass the folder that holds "
                             "one sub-folder of images per class (e.g. .../imagenet/train)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise data.DataError(f"image folder {root} has no class sub-folders; it must hold one folder of images "
                             "per class, e.g. train/n01440764/*.JPEG")
    files, labels = [], []
    for label, name in enumerate(classes):
        names = _image_names(os.path.join(root, name))
        files += [f"{name}/{n}" for n in names]
        labels += [label] * len(names)
    labels = np.asarray(labels, np.int32)
    labels.flags.writeable = False
    return ImageFolder(root=root, classes=tuple(classes), files=tuple(files), labels=labels)


def _image_names(folder):
    names = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")
                   and e.name.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise data.DataError(f"class folder {folder} holds no images (suffixes {', '.join(IMAGE_SUFFIXES)}); "
                             "add its images or remove the folder")
    return names


# ----------------------------------------------------------------------------------------------------------
# Crop parameters: torchvision's RandomResizedCrop, from a generator seeded per example.


@dataclasses.dataclass(frozen=True)
class HostCropGroup:
    """`count` random-resized crops of `size` x `size` pixels, each covering a fraction in `scale` of the image's
    area with an aspect ratio (width / height) in `ratio` (torchvision's RandomResizedCrop). The host twin of
    `augment.CropGroup`: e.g. DINO's HostCropGroup(224, 2, (0.14, 1.0)) and HostCropGroup(96, 10, (0.05, 0.14))."""

    size: int
    count: int = 1
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self):
        for field in ("size", "count"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"HostCropGroup {field} must be an integer >= 1, got {value!r}")
        for field in ("scale", "ratio"):
            low, high = (float(v) for v in getattr(self, field))
            if not 0 < low <= high:
                raise ValueError(f"HostCropGroup {field} must be (low, high) with 0 < low <= high, got "
                                 f"{getattr(self, field)!r}")
            object.__setattr__(self, field, (low, high))


def crop_rng(seed, step, index, group) -> np.random.Generator:
    """The generator of example `index`'s crops of crop group `group` at `step`: a function of these four
    non-negative integers only (not of the process, the device count or the position in the batch)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step), int(index), int(group)]))


def random_resized_crop(rng, width, height, scale, ratio) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of one random-resized crop of a `width` x `height` image, by
    torchvision's `RandomResizedCrop.get_params`: up to 10 tries of an area fraction uniform in `scale` and a
    log-uniform aspect ratio in `ratio` (the top then left offset drawn for the first that fits); else the
    central crop of the whole image clamped to `ratio`."""
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_TRIES):
        area = width * height * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            return top, int(rng.integers(0, width - w + 1)), h, w
    return _central_crop(width, height, ratio)


def _central_crop(width, height, ratio):
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def example_crops(seed, step, index, groups, width, height) -> list[list[tuple[int, int, int, int]]]:
    """Every crop of example `index` at `step`: per group, its `count` (top, left, height, width) boxes."""
    out = []
    for g, group in enumerate(groups):
        rng = crop_rng(seed, step, index, g)
        out.append([random_resized_crop(rng, width, height, group.scale, group.ratio) for _ in range(group.count)])
    return out


def draft_factor(crops, groups) -> int:
    """The largest JPEG DCT reduction (8, 4, 2 or 1) that leaves every crop at least its output size in both
    dimensions, so decoding at that reduced scale keeps all the resolution the final resize keeps."""
    smallest = min(min(h, w) / group.size for group, boxes in zip(groups, crops) for _, _, h, w in boxes)
    return next(f for f in DRAFT_FACTORS if smallest >= f or f == 1)


# ----------------------------------------------------------------------------------------------------------
# Decoding: one image, all its crops.


def decode_crops(path, seed, step, index, groups, resample="bilinear", draft=True) -> list[np.ndarray]:
    """Example `index`'s crops at `step` from the image file `path`: one uint8 array [count, size, size, 3] per
    group. Raises what PIL raises for an unreadable file (`host_batch` turns that into a skip)."""
    outs = [np.empty((g.count, g.size, g.size, 3), np.uint8) for g in groups]
    _decode_into(outs, path, (seed, step, index), groups, RESAMPLE[resample], draft)
    return outs


def _decode_into(outs, path, key, groups, resample, draft):
    """Writes the crops of example key = (seed, step, index) into `outs` (one [count, size, size, 3] per group)."""
    with Image.open(path) as image:
        width, height = image.size
        crops = example_crops(*key, groups, width, height)
        image, scale = _decode(image, draft_factor(crops, groups) if draft else 1)
        for out, group, boxes in zip(outs, groups, crops):
            for c, (top, left, h, w) in enumerate(boxes):
                box = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
                out[c] = np.asarray(image.resize((group.size, group.size), resample, box=box))


def _decode(image, factor):
    """`image` decoded to RGB, at 1/`factor` of its size where it is a JPEG (libjpeg's DCT scaling through PIL's
    draft), and the scale it was decoded at: pixel x of the result is pixel x * scale of the original."""
    width, scale = image.width, 1.0
    if factor > 1:
        drafted = image.draft("RGB", (image.width // factor, image.height // factor))
        if drafted is not None:  # a JPEG; drafted[1] = (0, 0, width / scale, height / scale)
            scale = width / drafted[1][2]
    image.load()
    return (image if image.mode == "RGB" else image.convert("RGB")), scale


# ----------------------------------------------------------------------------------------------------------
# Batches: this process's share of a global batch, and the iterator over steps.


def host_batch(source, groups, step, global_batch_size, seed, process_index=0, process_count=1,
               resample="bilinear", draft=True) -> dict:
    """This process's part of global batch `step`, decoded and cropped: 'crops' (a tuple with one uint8 array
    [B / n, count, size, size, 3] per crop group), 'label' (int32), 'index' (the examples' indices in the
    folder), 'global_index' (their positions in the global batch) and 'valid' (False where the image could not
    be read: its crops are black)."""
    indices, positions = batches.process_share(len(source), global_batch_size, seed, step, process_index,
                                               process_count)
    crops = tuple(np.zeros((len(indices), g.count, g.size, g.size, 3), np.uint8) for g in groups)
    valid = np.ones(len(indices), bool)
    for slot, index in enumerate(indices):
        outs = [c[slot] for c in crops]
        valid[slot] = _read_or_skip(outs, source.path(index), (seed, step, int(index)), groups, resample, draft)
    return {"crops": crops, "label": source.labels[indices], "index": indices, "global_index": positions,
            "valid": valid}


def _read_or_skip(outs, path, key, groups, resample, draft) -> bool:
    """Decodes one example into `outs`; for an unreadable image logs it, blacks its crops and returns False."""
    try:
        _decode_into(outs, path, key, groups, RESAMPLE[resample], draft)
        return True
    except _UNREADABLE as e:
        _log.warning("skipping unreadable image %s (%s: %s); its crops are black and it is marked invalid",
                     path, type(e).__name__, errors.first_line(e))
        for out in outs:
            out[...] = 0
        return False


class HostBatches:
    """This process's host batches from `start_step` on, decoded by `workers` grain threads with `prefetch`
    batches in flight (workers=0: in the calling thread). `step` is the step of the next batch (checkpoint it;
    an iterator made with start_step=step resumes exactly); `skipped` counts the unreadable images in the
    batches yielded so far. Stops after `num_steps` batches (None: never)."""

    def __init__(self, source, groups, global_batch_size, seed, start_step=0, num_steps=None, process_index=0,
                 process_count=1, workers=4, prefetch=None, resample="bilinear", draft=True):
        check_batch_args(source, groups, global_batch_size, seed, start_step, resample)
        batches.process_share(len(source), global_batch_size, seed, start_step, process_index, process_count)
        self.step, self.skipped = int(start_step), 0
        stop = self.step + (num_steps if num_steps is not None else 2 ** 62)

        def make(step):
            return host_batch(source, tuple(groups), step, global_batch_size, seed, process_index,
                              process_count, resample, draft)

        options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=prefetch or 2 * workers)
        self._batches = iter(grain.MapDataset.range(self.step, stop).map(make).to_iter_dataset(options))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._batches)
        self.step += 1
        self.skipped += int(np.count_nonzero(~batch["valid"]))
        return batch


def check_batch_args(source, groups, global_batch_size, seed, start_step, resample):
    """Raises DataError / ValueError, with what to change, for arguments `HostBatches` cannot use."""
    if global_batch_size <= 0 or len(source) < global_batch_size:
        raise data.DataError(f"image folder {source.root} holds {len(source)} images, fewer than one global batch "
                             f"of {global_batch_size}; use a smaller batch size or more images")
    if seed < 0 or start_step < 0:
        raise ValueError(f"seed and start_step must be >= 0, got seed={seed}, start_step={start_step}")
    if not groups or not all(isinstance(g, HostCropGroup) for g in groups):
        raise ValueError(f"groups must be a non-empty sequence of HostCropGroup, got {groups!r}")
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {resample!r}")
