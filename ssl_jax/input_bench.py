"""Input-rate benchmark: `python -m ssl_jax.input_bench --images=DIR --workers=N --batch=B --batches=K
[--generate=N] [--backend=auto|pil|opencv]`, ours (`image_folder.HostBatches`) against torchvision's ImageFolder +
RandomResizedCrop(224) + DataLoader on the same files, two 224x224 crops per image, in one run; prints one JSON
line. `python -m ssl_jax.bench --part=input --images=DIR` runs the same comparison (`compare`).

`--generate=N` first writes N ImageNet-like JPEGs into DIR (500x375 or `--generate_size`, every fifth turned to
portrait, quality 90, random smooth content with noise so that they compress like photographs, about 80 kB each at
500x375, in 10 class folders). The two pipelines run in turns (ours, torchvision's, ours, ...) `--rounds` times
each, so that a machine shared with other work slows both alike; each round builds a fresh iterator, pulls
`--warmup` batches untimed, then times `--batches` batches; the medians of the rounds are reported. torch is
optional: imported only for its own timing; without it ours is reported alone, with a note. No JAX here.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

from ssl_jax import image_folder

CROP_SIZE = 224
SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults, ours the same
RATIO = (3 / 4, 4 / 3)


# ----------------------------------------------------------------------------------------------------------
# ImageNet-like JPEGs.


def generate_images(folder, count, classes=10, seed=0, size=(500, 375)):
    """Writes `count` ImageNet-like JPEGs of `size` (every fifth one turned to portrait) into folder/class_<k>/
    (k = i mod `classes`); image i depends only on (seed, i), so a rerun writes the same files."""
    for k in range(min(classes, count)):
        os.makedirs(os.path.join(folder, f"class_{k:02d}"), exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        width, height = size[::-1] if i % 5 == 4 else size
        path = os.path.join(folder, f"class_{i % classes:02d}", f"img_{i:06d}.JPEG")
        smooth_image(rng, width, height).save(path, "JPEG", quality=90)


def smooth_image(rng, width, height, noise=8.0) -> Image.Image:
    """Random content at four spatial scales (bicubic-upsampled random colours) plus pixel noise."""
    acc = np.full((height, width, 3), 128.0, np.float32)
    for cells, amplitude in ((4, 120), (16, 60), (64, 40), (250, 25)):
        grid = rng.integers(0, 256, (max(1, cells * height // width), cells, 3), dtype=np.uint8)
        layer = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
        acc += (np.asarray(layer, np.float32) - 128) * (amplitude / 128)
    acc += rng.normal(0, noise, acc.shape).astype(np.float32)
    return Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------
# Timing.


def timed_rate(batch_iter, batch, batches, warmup) -> float:
    """Images per second over `batches` batches of `batch` images, after `warmup` untimed ones."""
    for _ in range(warmup):
        next(batch_iter)
    start = time.perf_counter()
    for _ in range(batches):
        next(batch_iter)
    return batches * batch / (time.perf_counter() - start)


def ours(folder, workers, batch, round_index, backend="auto"):
    """Our iterator over `folder`: two 224 crops per image; each round starts at another step (other crops)."""
    source = image_folder.scan_image_folder(folder)
    groups = (image_folder.HostCropGroup(CROP_SIZE, 2, SCALE, RATIO),)
    steps_per_epoch = len(source) // batch
    return image_folder.HostBatches(source, groups, batch, seed=0, start_step=round_index * steps_per_epoch,
                                    workers=workers, backend=backend)


class TwoCrops:
    """A torchvision transform that returns two independent crops of one image (as SimCLR's two views)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)


def torchvision_loader(folder, workers, batch):
    """torchvision's ImageFolder + RandomResizedCrop(224) (bilinear, antialiased, as ours) + PILToTensor (uint8,
    as ours) + DataLoader(num_workers=workers), shuffled, last batch dropped; an endless iterator of batches."""
    import torch
    from torchvision import datasets
    from torchvision import transforms

    crop = transforms.Compose([transforms.RandomResizedCrop(CROP_SIZE, SCALE, RATIO), transforms.PILToTensor()])
    dataset = datasets.ImageFolder(folder, transform=TwoCrops(crop))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    return _endless(loader)


def _endless(loader):
    while True:
        yield from loader


def torch_version():
    """torch's and torchvision's versions, or None where either is not installed."""
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    return f"torch {torch.__version__}, torchvision {torchvision.__version__}"


def run(args) -> dict:
    """Times ours and (when torch is there) torchvision's in turns; the JSON record."""
    versions = torch_version()
    rates = {"ours": [], "torchvision": []}
    for r in range(args.rounds):
        batches = ours(args.images, args.workers, args.batch, r, args.backend)
        rates["ours"].append(timed_rate(batches, args.batch, args.batches, args.warmup))
        if versions:
            loader = torchvision_loader(args.images, args.workers, args.batch)
            rates["torchvision"].append(timed_rate(loader, args.batch, args.batches, args.warmup))
    return summary(args, rates, versions)


def summary(args, rates, versions) -> dict:
    per_worker = max(args.workers, 1)
    out = {"images": len(image_folder.scan_image_folder(args.images)), "crops_per_image": 2,
           "crop_size": CROP_SIZE, "workers": args.workers, "batch": args.batch, "batches": args.batches,
           "rounds": args.rounds, "cpu_count": os.cpu_count(),
           "backend": image_folder.resolve_backend(args.backend)}
    for name, values in rates.items():
        if values:
            out[f"{name}_images_per_s"] = round(statistics.median(values), 1)
            out[f"{name}_images_per_s_per_worker"] = round(statistics.median(values) / per_worker, 1)
            out[f"{name}_rounds"] = [round(v, 1) for v in values]
    if versions:
        out["ratio"] = round(out["ours_images_per_s"] / out["torchvision_images_per_s"], 2)
        out["torch"] = versions
    else:
        out["note"] = "torch/torchvision not installed: ours alone"
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="Image folder (one sub-folder per class).")
    parser.add_argument("--generate", type=int, default=0, help="First write this many ImageNet-like JPEGs.")
    parser.add_argument("--generate_size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs.")
    parser.add_argument("--generate_only", action="store_true",
                        help="Only write the --generate JPEGs (e.g. a tree for a :smoke run), time nothing.")
    parser.add_argument("--workers", type=int, default=2, help="Our decoding threads; torch's worker processes.")
    parser.add_argument("--batch", type=int, default=64, help="Images per batch.")
    parser.add_argument("--batches", type=int, default=20, help="Timed batches per round.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed batches per round.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds (each: ours then torchvision's).")
    parser.add_argument("--backend", default="auto", choices=image_folder.BACKENDS,
                        help="Our decoding backend (auto: opencv where cv2 imports, else pil).")
    args = parser.parse_args(argv)
    if args.workers < 0 or args.batch < 1 or args.batches < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--workers and --warmup must be >= 0, --batch, --batches and --rounds >= 1")
    return args


def _size(text):
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--generate_size must be WIDTHxHEIGHT, e.g. 500x375; got {text!r}") from None
    return width, height


def compare(args) -> dict:
    """Writes the `--generate` JPEGs if asked, then times ours and torchvision's: the JSON record."""
    if args.generate:
        start = time.perf_counter()
        generate_images(args.images, args.generate, size=_size(args.generate_size))
        print(f"wrote {args.generate} JPEGs into {args.images} in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    return run(args)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.generate_only:
        generate_images(args.images, args.generate, size=_size(args.generate_size))
        print(f"wrote {args.generate} JPEGs into {args.images}")
        return
    print(json.dumps(compare(args)))


if __name__ == "__main__":
    main()
