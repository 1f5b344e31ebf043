"""The trainer's streaming data sets: image-folder trees too large to hold in memory (ImageNet, ImageNet-100, any
`train/<class>/*` + `val/<class>/*` tree), read batch by batch with the crops taken on the host
(`image_folder.py`), and the centre crops their evaluation encodes chunk by chunk.

A `StreamedDataset` stands where `data.Dataset` stands for CIFAR: `train.build_experiment` loads one when
`config.data.name` is a folder data set (`data.FOLDER_DATASETS`), `train.host_batches` reads its batches from here, and
`evaluate.evaluate_backbone_streaming` evaluates on it in bounded memory.
"""
from __future__ import annotations

import dataclasses
import io
import logging
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
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
    """A streamed data set, as data.Dataset for one held in memory: its train and test sources (each with
    `len()` and `read(index)`: an `image_folder.ImageFolder` or a `TFDSImages` split)."""

    name: str
    num_classes: int
    train: object  # the labelled train split: the evaluation's (kNN neighbours, the probe)
    test: object
    source: str
    pretrain: object = None  # what pretraining reads, where it is more than `train` (STL-10: train + unlabelled;
                             # unlabelled examples carry label -1, which the online probe skips)

    @property
    def pretrain_split(self):
        return self.train if self.pretrain is None else self.pretrain


def load_streaming_dataset(name, path=None, tfds_data_dir=None):
    """The streamed data set `name`: from the image folder `path` where given, else (ImageNet, STL-10) from
    prepared TFDS data (`load_tfds_dataset`)."""
    if not path and name in TFDS_NAMES:
        return load_tfds_dataset(name, tfds_data_dir)
    return load_folder_dataset(name, path)


def load_folder_dataset(name, path) -> StreamedDataset:
    """The folder data set `name` at `path` (a folder holding `train/` and `val/` (or `validation/`, `test/`),
    each with one sub-folder of images per class; for ImageNet-100 a full ImageNet folder does, its 100 classes
    taken: `imagenet100_classes`). Raises data.DataError, saying what to do, for no path, a
    missing split, train and test folders with different classes, or a class count `name` does not have."""
    if not path:
        raise data.DataError(f"config.data.name={name!r} is read from an image folder: pass "
                             "--config.data.path=DIR, DIR holding train/<class>/* and val/<class>/* "
                             "(docs/input_pipeline.md: how to prepare ImageNet).")
    root = os.path.abspath(os.path.expanduser(str(path)))
    classes = imagenet100_classes() if name == "imagenet100" else None
    train = image_folder.scan_image_folder(_split_dir(root, TRAIN_SPLIT_NAMES), classes)
    test = image_folder.scan_image_folder(_split_dir(root, TEST_SPLIT_NAMES), classes)
    if train.classes != test.classes:
        only = sorted(set(train.classes) ^ set(test.classes))[:5]
        raise data.DataError(f"{root}: the train and test folders have different classes (e.g. {only}); each "
                             "split needs a folder for every class.")
    expected = data.FOLDER_DATASETS[name]
    if expected is not None and len(train.classes) != expected:
        raise data.DataError(f"{root} has {len(train.classes)} classes, but {name} has {expected}; point "
                             f"--config.data.path at the full data set, or use config.data.name='image_folder' "
                             "for a folder of another size.")
    return StreamedDataset(name=name, num_classes=len(train.classes), train=train, test=test,
                         source=f"image folder {root} (streamed)")


def imagenet100_classes() -> tuple:
    """ImageNet-100's 100 WordNet ids (CMC's list, ssl_jax/imagenet100_classes.txt): load_folder_dataset takes
    them from a full ImageNet folder, or requires them of a 100-class one."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet100_classes.txt")) as f:
        return tuple(w for line in f if not line.startswith("#") for w in line.split())


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
    """This process's share of each global batch of steps [start_step, end_step) of the data set's pretraining
    split (`StreamedDataset.pretrain_split`) as the train step takes them:
    'crops' (one uint8 [B/n, count, size, size, 3] per group), 'label', 'global_index'. Logs the unreadable images
    skipped so far (their crops are black) every time the count grows, and stops the run
    (`check_unreadable_share`) when so many are unreadable that the data itself has gone."""
    reader = image_folder.HostBatches(dataset.pretrain_split, host_crop_groups(groups), batch_size, seed,
                                      start_step=start_step, num_steps=end_step - start_step,
                                      process_index=process_index, process_count=process_count, workers=workers)
    skipped, read = 0, 0
    for batch in reader:
        read += len(batch["valid"])
        if reader.skipped > skipped:
            skipped = reader.skipped
            check_unreadable_share(skipped, read, dataset.pretrain_split.root)
            print(f"{skipped} unreadable image(s) skipped so far (black crops); see the log for which.", flush=True)
        yield {"crops": batch["crops"], "label": batch["label"], "global_index": batch["global_index"]}


# A run stops, rather than train on black crops, once more than this share of the images it read (and at least
# MIN_UNREADABLE_TO_STOP) could not be read: a folder that vanished or a mount that dropped mid-run. A prepared
# ImageNet has none that PIL cannot decode, so one in a hundred is far beyond a few damaged files.
MAX_UNREADABLE_SHARE = 0.01
MIN_UNREADABLE_TO_STOP = 32


def check_unreadable_share(skipped, read, root):
    """Raises data.DataError, saying what to check, when `skipped` of `read` images exceed the share a data set
    can have damaged (MAX_UNREADABLE_SHARE, at least MIN_UNREADABLE_TO_STOP)."""
    if skipped >= MIN_UNREADABLE_TO_STOP and skipped > MAX_UNREADABLE_SHARE * read:
        raise data.DataError(
            f"{skipped} of the {read} images read so far from {root} were unreadable (more than "
            f"{MAX_UNREADABLE_SHARE:.0%}; the log names them): is the folder still there and readable (a dropped "
            "mount, moved files)? The run stops rather than train on black crops; fix the data and run again, and "
            "it resumes from its last checkpoint.")


def center_crop(image_file, size) -> np.ndarray:
    """The evaluation view of one image (a path, the file's bytes, or a decoded uint8 array): uint8
    [size, size, 3], its shorter side resized to size / 0.875 then the central size x size crop (JPEGs decoded at
    a reduced scale where that keeps the resolution)."""
    short = int(round(size / EVAL_RESIZE_RATIO))
    if isinstance(image_file, np.ndarray):
        image = Image.fromarray(np.asarray(image_file, np.uint8).squeeze()).convert("RGB")
    else:
        with Image.open(io.BytesIO(image_file) if isinstance(image_file, bytes) else image_file) as opened:
            scale = short / min(opened.size)
            opened.draft("RGB", (max(1, int(opened.width * scale)), max(1, int(opened.height * scale))))
            image = opened.convert("RGB")  # a new image: the file can close
    scale = short / min(image.size)
    width, height = max(short, round(image.width * scale)), max(short, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def _center_crop_or_black(source, index, size):
    """(`center_crop` of example `index`, its label); an unreadable image logged and given black."""
    label, name = 0, f"example {index} of {source.root}"
    try:
        encoded, label, name = source.read(int(index))
        return center_crop(encoded, size), label
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        _log.warning("evaluation: unreadable image %s (%s); a black image stands in", name, e)
        return np.zeros((size, size, 3), np.uint8), label


def eval_batches(source, size, batch_size, indices=None, workers=8):
    """(uint8 images [b, size, size, 3], labels [b]) of `source`'s examples `indices` (default: all, in order),
    `center_crop`ped, in batches of `batch_size` (the last shorter), decoded by `workers` threads."""
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    starts = list(range(0, len(indices), batch_size))

    def decode(start):
        images, labels = zip(*(_center_crop_or_black(source, i, size) for i in indices[start:start + batch_size]))
        return np.stack(images), np.asarray(labels, np.int32)

    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * max(1, workers))
    return iter(grain.MapDataset.source(starts).map(decode).to_iter_dataset(options))


# ----------------------------------------------------------------------------------------------------------------
# The same data sets from prepared TFDS data (`tfds build imagenet2012`), read by index from array_record files.

# config.data.name -> (TFDS name, pretraining splits, labelled train split, test split, classes). STL-10 (Coates et
# al. 2011): 96 x 96 images, 5,000 labelled train, 8,000 test and 100,000 unlabelled, pretrained on train +
# unlabelled and evaluated on train / test, as its papers and solo-learn do.
TFDS_NAMES = {"imagenet": ("imagenet2012", ("train",), "train", "validation", 1000),
              "stl10": ("stl10", ("train", "unlabelled"), "train", "test", 10)}


class TFDSImages:
    """A TFDS split read by index as a streaming source (`read(index)` -> (image, label, name)): each record's
    JPEG bytes where TFDS can leave them encoded (`tfds.decode.SkipDecoding`, so the host decodes at a reduced
    scale and crops), else the array TFDS decodes. `tfds.data_source` reads array_record files, so any example is
    one seek away, and each process reads only the examples of its share."""

    def __init__(self, tfds_name, split, data_dir=None):
        import tensorflow_datasets as tfds

        self.root = f"TFDS {tfds_name} ({split})"
        try:
            self._records = tfds.data_source(tfds_name, split=split, data_dir=data_dir or None, download=False,
                                             decoders={"image": tfds.decode.SkipDecoding()})
            self._records[0]  # a TFDS that cannot leave images encoded (its mock, some versions) raises here
        except Exception:  # noqa: BLE001 - whatever stops SkipDecoding, TFDS's own decoding is the fallback
            self._records = tfds.data_source(tfds_name, split=split, data_dir=data_dir or None, download=False)

    def __len__(self):
        return len(self._records)

    def read(self, index):
        record = self._records[index]
        image = record["image"]
        return (image if isinstance(image, bytes) else np.asarray(image)), int(record["label"]), \
            f"{self.root}[{index}]"


def load_tfds_dataset(name, data_dir) -> StreamedDataset:
    """The folder data set `name` from prepared TFDS data in `data_dir` (TFDS's default where empty). Raises
    data.DataError, saying how to prepare it, where it is not there."""
    tfds_name, pretrain_splits, train_split, test_split, num_classes = TFDS_NAMES[name]
    try:
        train, test = TFDSImages(tfds_name, train_split, data_dir), TFDSImages(tfds_name, test_split, data_dir)
        pretrain = None if pretrain_splits == (train_split,) else ConcatenatedSources(
            [train if split == train_split else TFDSImages(tfds_name, split, data_dir) for split in pretrain_splits])
    except Exception as e:  # noqa: BLE001 - TFDS raises several kinds for data that is not prepared
        raise data.DataError(
            f"no prepared TFDS {tfds_name} found ({type(e).__name__}: {str(e).splitlines()[0][:200]}); prepare it "
            f"with `tfds build {tfds_name} --file_format=array_record` (ImageNet: put the manual download in "
            "~/tensorflow_datasets/downloads/manual first) and pass --config.data.tfds_data_dir=DIR, or pass "
            "--config.data.path=DIR of an image folder (train/<class>/*, val/<class>/*).") from e
    return StreamedDataset(name=name, num_classes=num_classes, train=train, test=test, pretrain=pretrain,
                           source=f"TFDS {tfds_name} ({data_dir or 'default data dir'}, streamed)")


class ConcatenatedSources:
    """Several sources read as one, in order (STL-10's pretraining set: its train split, then its unlabelled)."""

    def __init__(self, sources):
        self.sources = list(sources)
        self.root = " + ".join(s.root for s in self.sources)
        self._starts = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self):
        return int(self._starts[-1])

    def read(self, index):
        part = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.sources[part].read(index - int(self._starts[part]))


class SourceSubset:
    """The examples `indices` of `source`, read as a source of their own (a seeded subset of a train split for
    the evaluation: `config.eval.max_train_examples`)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, np.asarray(indices)
        self.root = f"{source.root} ({len(self.indices)} of {len(source)} examples)"

    def __len__(self):
        return len(self.indices)

    def read(self, index):
        return self.source.read(int(self.indices[index]))
