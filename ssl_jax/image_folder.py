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
Two decoding backends (`backend=`): 'pil' (Pillow decodes, its antialiased resize) and 'opencv' (OpenCV's
libjpeg-turbo decode and SIMD resize, about 1.6x faster per image, crops within about 0.6 grey levels of PIL's);
'auto' is 'opencv' where `cv2` imports. NumPy, PIL, grain and optionally OpenCV: no JAX here.
"""
from __future__ import annotations

import dataclasses
import functools
import io
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
BACKENDS = ("auto", "pil", "opencv")
# The opencv backend's Gaussian prefilter before its bilinear resize: sigma = PREFILTER * sqrt((s^2 - 1) / 6) per
# axis downscaled by s (the variance PIL's antialiased bilinear filter adds to the interpolation's own); 1.2 makes
# the crops as sharp as PIL's (std of the Laplacian within 1% on the benchmark's images), so no more aliased.
PREFILTER = 1.2
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

    def read(self, index):
        """(the image file's bytes, its label, its name for messages): what every source gives `host_batch`
        (`streaming.TFDSImages` gives TFDS records the same way)."""
        path = self.path(index)
        with open(path, "rb") as f:
            return f.read(), int(self.labels[index]), path


def scan_image_folder(root, classes=None) -> ImageFolder:
    """The `ImageFolder` at `root` (one sub-folder of images per class; hidden entries, other files and deeper
    folders are ignored); with `classes`, only those class folders (all of which must be there: ImageNet-100's
    from a full ImageNet folder). Raises DataError for a missing root, no class folders, a missing class or a
    class folder without images."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise data.DataError(f"image folder {root} does not exist or is not a folder; pass the folder that holds "
                             "one sub-folder of images per class (e.g. .../imagenet/train)")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    missing = sorted(set(classes or ()) - set(found))
    if missing:
        raise data.DataError(f"image folder {root} lacks {len(missing)} of the {len(classes)} class folders asked "
                             f"for (e.g. {', '.join(missing[:3])}); pass a folder that has them all.")
    classes = sorted(classes) if classes else found
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


def decode_crops(path, seed, step, index, groups, resample="bilinear", draft=True,
                 backend="auto") -> list[np.ndarray]:
    """Example `index`'s crops at `step` from the image file `path`: one uint8 array [count, size, size, 3] per
    group. Raises what PIL raises, or OSError, for an unreadable file (`host_batch` turns that into a skip)."""
    outs = [np.empty((g.count, g.size, g.size, 3), np.uint8) for g in groups]
    with open(path, "rb") as f:
        encoded = f.read()
    _decode_into(outs, encoded, path, (seed, step, index), groups, resample, draft,
                 resolve_backend(backend, resample))
    return outs


def resolve_backend(backend, resample="bilinear") -> str:
    """'pil' or 'opencv' for `backend` ('auto': opencv where it imports and the resample is bilinear). Raises
    ValueError for an unknown backend, or opencv asked for without OpenCV or with resample='bicubic'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "pil" or (backend == "auto" and (resample != "bilinear" or _cv2() is None)):
        return "pil"
    if _cv2() is None:
        raise ValueError("backend='opencv' needs OpenCV >= 4.11: pip install -U opencv-python-headless, or use "
                         "backend='pil'")
    if resample != "bilinear":
        raise ValueError(f"backend='opencv' resizes bilinearly only, got resample={resample!r}; use "
                         "backend='pil' for bicubic crops")
    return "opencv"


@functools.cache
def _cv2():
    """OpenCV's module, with its own threads off (grain's workers are the parallelism), or None without it or where
    it is older than 4.11 (no IMREAD_COLOR_RGB)."""
    try:
        import cv2
    except ImportError:
        return None
    if not hasattr(cv2, "IMREAD_COLOR_RGB"):
        return None
    cv2.setNumThreads(1)
    return cv2


def _decode_into(outs, encoded, path, key, groups, resample, draft, backend):
    """Writes the crops of example key = (seed, step, index) into `outs` (one [count, size, size, 3] per group)
    from `encoded`, the image file's bytes (or a decoded uint8 HWC array, as a TFDS source may give; `path` names
    it in messages), decoding with `backend` ('pil' or 'opencv'; opencv falls back to PIL for images other than
    RGB or grey JPEGs, e.g. CMYK, so that their colours are PIL's)."""
    if isinstance(encoded, np.ndarray):
        return _crops_of_array(outs, encoded, key, groups, resample, backend)
    if backend == "opencv":
        with Image.open(io.BytesIO(encoded)) as image:
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                crops = example_crops(*key, groups, image.width, image.height)
                decoded = _cv2_decode(encoded, path, draft_factor(crops, groups) if draft else 1)
                scale = image.width / decoded.shape[1]  # as PIL's draft: the reduced size is rounded up
                return _cv2_resize_all(outs, decoded, scale, groups, crops)
            return _pil_crops(outs, image, key, groups, resample, draft)
    with Image.open(io.BytesIO(encoded)) as image:
        _pil_crops(outs, image, key, groups, resample, draft)


def _crops_of_array(outs, array, key, groups, resample, backend):
    """The crops of an image given decoded (uint8 [H, W, 3] or [H, W] / [H, W, 1] grey), by the same boxes."""
    array = np.asarray(array, np.uint8)
    array = np.repeat(array.reshape(array.shape[:2] + (1,)), 3, axis=2) if array.ndim == 2 or array.shape[2] == 1 \
        else array
    if backend == "opencv":
        crops = example_crops(*key, groups, array.shape[1], array.shape[0])
        return _cv2_resize_all(outs, np.ascontiguousarray(array), 1.0, groups, crops)
    return _pil_crops(outs, Image.fromarray(array), key, groups, resample, draft=False)


def _pil_crops(outs, image, key, groups, resample, draft):
    """The PIL backend: draws the crops from the header's size, decodes (drafted) and resizes every box."""
    crops = example_crops(*key, groups, image.width, image.height)
    image, scale = _decode(image, draft_factor(crops, groups) if draft else 1)
    for out, group, boxes in zip(outs, groups, crops):
        for c, (top, left, h, w) in enumerate(boxes):
            box = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
            out[c] = np.asarray(image.resize((group.size, group.size), RESAMPLE[resample], box=box))


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


def _cv2_decode(encoded, path, factor) -> np.ndarray:
    """The JPEG bytes `encoded` decoded to RGB by OpenCV (libjpeg-turbo), at 1/`factor` of its size by the same
    DCT scaling as PIL's draft (identical pixels), EXIF orientation ignored as PIL does. Raises OSError where
    OpenCV cannot decode it (corrupt or truncated)."""
    cv2 = _cv2()
    reduced = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
               8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    flags = (reduced & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), flags)
    if image is None:
        raise OSError(f"OpenCV could not decode {path} (corrupt or truncated JPEG)")
    return image


def _cv2_resize_all(outs, image, scale, groups, crops):
    """The opencv backend's resizes: every box of `crops`, divided by `scale`, from the decoded `image`."""
    for out, group, boxes in zip(outs, groups, crops):
        for c, (top, left, h, w) in enumerate(boxes):
            box = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
            out[c] = cv2_resize_box(image, box, group.size)


def cv2_resize_box(image, box, size) -> np.ndarray:
    """The (left, top, right, bottom) `box` of the uint8 HWC `image` resized to `size` x `size`, bilinearly, with
    a Gaussian prefilter along each axis it shrinks (`PREFILTER`), so as antialiased as PIL's bilinear resize.
    An integer box is cut out and resized (torchvision's crop-then-resize); a fractional one (a reduced decode)
    is mapped by an affine warp of the pixels around it."""
    cv2 = _cv2()
    x0, y0, x1, y1 = box
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    if all(float(v).is_integer() for v in box):
        region = _prefilter(image[int(y0):int(y1), int(x0):int(x1)], sx, sy)
        return cv2.resize(region, (size, size), interpolation=cv2.INTER_LINEAR)
    left, top = max(int(x0) - 1, 0), max(int(y0) - 1, 0)
    region = _prefilter(image[top:math.ceil(y1) + 1, left:math.ceil(x1) + 1], sx, sy)
    # Output pixel centre (u + 0.5) maps to box position x0 + (u + 0.5) * sx, i.e. pixel x0 + (u + 0.5) * sx - 0.5.
    matrix = np.array([[sx, 0, x0 - left + 0.5 * sx - 0.5], [0, sy, y0 - top + 0.5 * sy - 0.5]], np.float64)
    return cv2.warpAffine(region, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _prefilter(region, sx, sy):
    """`region` blurred along each axis that shrinks by a factor s > 1 with sigma PREFILTER * sqrt((s^2 - 1) / 6);
    unchanged where neither shrinks."""
    sigmas = [PREFILTER * math.sqrt((s * s - 1) / 6) if s > 1 else 0.0 for s in (sx, sy)]
    if max(sigmas) < 0.05:
        return region
    ksize = tuple(2 * math.ceil(3 * sigma) + 1 if sigma >= 0.05 else 1 for sigma in sigmas)
    return _cv2().GaussianBlur(region, ksize, max(sigmas[0], 1e-3), sigmaY=max(sigmas[1], 1e-3),
                               borderType=_cv2().BORDER_REPLICATE)


# ----------------------------------------------------------------------------------------------------------
# Batches: this process's share of a global batch, and the iterator over steps.


def host_batch(source, groups, step, global_batch_size, seed, process_index=0, process_count=1,
               resample="bilinear", draft=True, backend="auto") -> dict:
    """This process's part of global batch `step`, decoded and cropped: 'crops' (a tuple with one uint8 array
    [B / n, count, size, size, 3] per crop group), 'label' (int32), 'index' (the examples' indices in the
    folder), 'global_index' (their positions in the global batch) and 'valid' (False where the image could not
    be read: its crops are black). `backend`: see `resolve_backend`; the crops' boxes do not depend on it."""
    backend = resolve_backend(backend, resample)
    indices, positions = batches.process_share(len(source), global_batch_size, seed, step, process_index,
                                               process_count)
    crops = tuple(np.zeros((len(indices), g.count, g.size, g.size, 3), np.uint8) for g in groups)
    valid, labels = np.ones(len(indices), bool), np.zeros(len(indices), np.int32)
    for slot, index in enumerate(indices):
        outs = [c[slot] for c in crops]
        labels[slot], valid[slot] = _read_or_skip(source, int(index), outs, (seed, step, int(index)), groups,
                                                  resample, draft, backend)
    return {"crops": crops, "label": labels, "index": indices, "global_index": positions, "valid": valid}


def _read_or_skip(source, index, outs, key, groups, resample, draft, backend):
    """Reads and decodes example `index` of `source` into `outs`: (its label, True); for an unreadable image
    logs it, blacks its crops and returns (its label where known, else 0; False)."""
    label, name = 0, f"example {index} of {source.root}"
    try:
        encoded, label, name = source.read(index)
        _decode_into(outs, encoded, name, key, groups, resample, draft, backend)
        return label, True
    except _UNREADABLE as e:
        _log.warning("skipping unreadable image %s (%s: %s); its crops are black and it is marked invalid",
                     name, type(e).__name__, errors.first_line(e))
        for out in outs:
            out[...] = 0
        return label, False


class HostBatches:
    """This process's host batches from `start_step` on, decoded by `workers` grain threads with `prefetch`
    batches in flight (workers=0: in the calling thread). `step` is the step of the next batch (checkpoint it;
    an iterator made with start_step=step resumes exactly); `skipped` counts the unreadable images in the
    batches yielded so far. Stops after `num_steps` batches (None: never). `backend`: 'auto', 'pil' or 'opencv'
    (`resolve_backend`; `self.backend` is the one used)."""

    def __init__(self, source, groups, global_batch_size, seed, start_step=0, num_steps=None, process_index=0,
                 process_count=1, workers=4, prefetch=None, resample="bilinear", draft=True, backend="auto"):
        check_batch_args(source, groups, global_batch_size, seed, start_step, resample)
        self.backend = resolve_backend(backend, resample)
        batches.process_share(len(source), global_batch_size, seed, start_step, process_index, process_count)
        self.step, self.skipped = int(start_step), 0
        stop = self.step + (num_steps if num_steps is not None else 2 ** 62)

        def make(step):
            return host_batch(source, tuple(groups), step, global_batch_size, seed, process_index,
                              process_count, resample, draft, self.backend)

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
