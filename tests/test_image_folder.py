"""Tests of the streaming image-folder input (`image_folder.py`) and its benchmark: labels, crop parameters, the
same crops under any process count, one pass per epoch over two processes, resume, draft decoding, skipped
files, error messages. Offline, on small JPEGs written here."""
import json
import logging
import math
import os

import numpy as np
import pytest
from PIL import Image

from ssl_jax import data
from ssl_jax import image_folder as imf
from ssl_jax import input_bench

CLASSES = ("n02", "n01", "n03")  # written out of order: labels follow the sorted names
PER_CLASS = 16
GROUPS = (imf.HostCropGroup(24, 2, (0.08, 1.0)), imf.HostCropGroup(12, 3, (0.05, 0.4)))


def _write_jpeg(path, rng, width, height):
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """48 JPEGs of 50x40 .. 120x90 pixels in three class folders, plus entries the scan must ignore."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        os.makedirs(root / name)
        for i in range(PER_CLASS):
            _write_jpeg(root / name / f"img_{PER_CLASS - i:03d}.JPEG", rng, int(rng.integers(50, 121)),
                        int(rng.integers(40, 91)))
    (root / "n01" / "notes.txt").write_text("not an image")
    os.makedirs(root / ".hidden")
    (root / "README").write_text("a file beside the class folders")
    return root


@pytest.fixture(scope="module")
def source(tree):
    return imf.scan_image_folder(tree)


def _batches(source, **kwargs):
    kwargs = {"groups": GROUPS, "global_batch_size": 8, "seed": 3, "workers": 2, **kwargs}
    return list(imf.HostBatches(source, **kwargs))


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        for key in ("label", "index", "global_index", "valid"):
            np.testing.assert_array_equal(a[key], b[key])
        for ca, cb in zip(a["crops"], b["crops"]):
            np.testing.assert_array_equal(ca, cb)


# ----------------------------------------------------------------------------------------------------------
# The source.


def test_classes_sorted_and_labels_follow_folders(source):
    assert source.classes == ("n01", "n02", "n03")
    assert len(source) == 3 * PER_CLASS
    for index in (0, 17, len(source) - 1):
        folder = source.files[index].split("/")[0]
        assert source.labels[index] == source.classes.index(folder)
        assert os.path.isfile(source.path(index))
    assert list(source.files) == sorted(source.files)  # class then file order: stable indices
    assert not source.labels.flags.writeable


def test_batch_labels_and_layout(source):
    batch = imf.host_batch(source, GROUPS, step=0, global_batch_size=8, seed=0)
    assert [c.shape for c in batch["crops"]] == [(8, 2, 24, 24, 3), (8, 3, 12, 12, 3)]
    assert all(c.dtype == np.uint8 for c in batch["crops"])
    np.testing.assert_array_equal(batch["label"], source.labels[batch["index"]])
    np.testing.assert_array_equal(batch["global_index"], np.arange(8))
    assert batch["valid"].all() and batch["crops"][0].std() > 10  # real pixels, not black


# ----------------------------------------------------------------------------------------------------------
# Crop parameters.


def _torchvision_get_params(rng, width, height, scale, ratio):
    """RandomResizedCrop.get_params as written in torchvision (transforms.py), with rng's draws for torch's."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


CASES = [(500, 375, (0.08, 1.0), (3 / 4, 4 / 3)), (96, 96, (0.05, 0.14), (3 / 4, 4 / 3)),
         (1000, 12, (0.5, 1.0), (3 / 4, 4 / 3)), (12, 1000, (0.5, 1.0), (3 / 4, 4 / 3)),
         (100, 50, (1.0, 1.0), (1.0, 1.0)), (57, 43, (0.14, 1.0), (0.5, 2.0))]


@pytest.mark.parametrize("width,height,scale,ratio", CASES)
def test_crop_params_match_torchvision_algorithm(width, height, scale, ratio):
    for index in range(200):
        want = _torchvision_get_params(imf.crop_rng(1, 2, index, 0), width, height, scale, ratio)
        got = imf.random_resized_crop(imf.crop_rng(1, 2, index, 0), width, height, scale, ratio)
        assert got == want


def test_fallback_is_the_central_crop_clamped_to_ratio():
    # Scale 1 at aspect 1 never fits a 100x50 image: all 10 tries fail, then the central 50x50 square.
    assert imf.random_resized_crop(imf.crop_rng(0, 0, 0, 0), 100, 50, (1.0, 1.0), (1.0, 1.0)) == (0, 25, 50, 50)


def test_crop_area_aspect_and_bounds():
    width, height, scale, ratio = 500, 375, (0.08, 1.0), (3 / 4, 4 / 3)
    for index in range(300):
        top, left, h, w = imf.random_resized_crop(imf.crop_rng(0, 5, index, 1), width, height, scale, ratio)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        # Rounding w and h moves the area by at most (w + h) / 2 + 1/4 pixels and the aspect by as much.
        slack = (w + h) / 2 + 1
        assert scale[0] * width * height - slack <= w * h <= scale[1] * width * height + slack
        assert ratio[0] - 1 / min(w, h) <= w / h <= ratio[1] + 2 / min(w, h)


def test_crops_depend_on_seed_step_index_and_group():
    crops = {key: imf.random_resized_crop(imf.crop_rng(*key), 500, 375, (0.08, 1.0), (0.75, 4 / 3))
             for key in [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]}
    assert len(set(crops.values())) == len(crops)


# ----------------------------------------------------------------------------------------------------------
# Sharding and resume.


def test_same_crops_whether_one_process_or_process_one_of_two(source):
    whole = imf.host_batch(source, GROUPS, step=7, global_batch_size=8, seed=3)
    part = imf.host_batch(source, GROUPS, step=7, global_batch_size=8, seed=3, process_index=1, process_count=2)
    np.testing.assert_array_equal(part["index"], whole["index"][4:])
    np.testing.assert_array_equal(part["global_index"], np.arange(4, 8))
    for p, w in zip(part["crops"], whole["crops"]):
        np.testing.assert_array_equal(p, w[4:])


def test_two_processes_cover_each_example_once_per_epoch(source):
    steps = len(source) // 8  # 48 examples, batches of 8: no remainder
    parts = [_batches(source, num_steps=steps, process_index=p, process_count=2) for p in range(2)]
    whole = _batches(source, num_steps=steps)
    seen = np.concatenate([b["index"] for part in parts for b in part])
    assert sorted(seen.tolist()) == list(range(len(source)))
    for step in range(steps):  # the global batch: the processes' parts in process order
        np.testing.assert_array_equal(np.concatenate([parts[0][step]["index"], parts[1][step]["index"]]),
                                      whole[step]["index"])
        for g in range(len(GROUPS)):
            np.testing.assert_array_equal(
                np.concatenate([parts[0][step]["crops"][g], parts[1][step]["crops"][g]]), whole[step]["crops"][g])


def test_incomplete_last_batch_is_dropped(source):
    steps = len(source) // 10  # batches of 10: 4 per epoch, 8 examples left out
    seen = np.concatenate([b["index"] for b in _batches(source, global_batch_size=10, num_steps=steps)])
    assert len(seen) == len(set(seen.tolist())) == 40
    second = _batches(source, global_batch_size=10, start_step=steps, num_steps=1)[0]["index"]
    assert not np.array_equal(np.sort(second), np.sort(seen[:10]))  # a new epoch, a new order


def test_resume_at_step_k_equals_the_uninterrupted_stream(source):
    uninterrupted = imf.HostBatches(source, GROUPS, 8, seed=3, num_steps=9, workers=2)
    full = list(uninterrupted)
    assert uninterrupted.step == 9
    resumed = imf.HostBatches(source, GROUPS, 8, seed=3, start_step=5, num_steps=4, workers=0)
    _assert_same_batches(list(resumed), full[5:])  # crosses the epoch boundary at step 6


# ----------------------------------------------------------------------------------------------------------
# Decoding.


def _smooth_jpeg(path, width=640, height=480):
    image = input_bench.smooth_image(np.random.default_rng(1), width, height)
    image.save(path, "JPEG", quality=90)


def test_draft_decoding_is_close_to_full_decoding(tmp_path):
    path = tmp_path / "big.JPEG"
    _smooth_jpeg(path)
    groups = (imf.HostCropGroup(64, 2, (0.5, 1.0)), imf.HostCropGroup(32, 2, (0.2, 0.5)))
    assert imf.draft_factor(imf.example_crops(0, 0, 0, groups, 640, 480), groups) >= 2  # draft really used
    drafted = imf.decode_crops(path, 0, 0, 0, groups, draft=True)
    full = imf.decode_crops(path, 0, 0, 0, groups, draft=False)
    for d, f in zip(drafted, full):
        assert d.shape == f.shape
        assert np.abs(d.astype(np.float32) - f).mean() < 4.0
        assert np.abs(d.astype(np.float32) - f).mean() > 0.0  # really another decoding


def test_draft_factor_keeps_every_crop_at_least_its_output_size():
    groups = (imf.HostCropGroup(224, 1), imf.HostCropGroup(96, 1))
    assert imf.draft_factor([[(0, 0, 900, 1000)], [(0, 0, 400, 500)]], groups) == 4
    assert imf.draft_factor([[(0, 0, 900, 1000)], [(0, 0, 190, 500)]], groups) == 1
    assert imf.draft_factor([[(0, 0, 100, 100)], [(0, 0, 400, 500)]], groups) == 1


def _backend(name):
    if name == "opencv":
        pytest.importorskip("cv2")
    return name


@pytest.mark.parametrize("backend", ["pil", "opencv"])
def test_grayscale_jpeg_gives_rgb_crops(tmp_path, backend):
    path = tmp_path / "gray.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80), dtype=np.uint8)).save(path)
    (crops,) = imf.decode_crops(path, 0, 0, 0, (imf.HostCropGroup(16, 2),), backend=_backend(backend))
    assert crops.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(crops[..., 0], crops[..., 2])


@pytest.mark.parametrize("backend", ["pil", "opencv"])
def test_unreadable_images_are_skipped_black_and_counted(tmp_path, caplog, backend):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        for i in range(6):
            _write_jpeg(tmp_path / name / f"{i}.jpg", rng, 60, 50)
    (tmp_path / "a" / "2.jpg").write_bytes(b"not a jpeg at all")
    whole = (tmp_path / "b" / "4.jpg").read_bytes()
    (tmp_path / "b" / "4.jpg").write_bytes(whole[:len(whole) // 2])  # truncated
    source = imf.scan_image_folder(tmp_path)
    bad = {source.files.index("a/2.jpg"), source.files.index("b/4.jpg")}
    with caplog.at_level(logging.WARNING, logger="ssl_jax.image_folder"):
        batches = imf.HostBatches(source, GROUPS, 4, seed=0, num_steps=6, workers=2, backend=_backend(backend))
        out = list(batches)  # two epochs
    assert batches.backend == backend and batches.skipped == 4
    for batch in out:
        for slot, index in enumerate(batch["index"]):
            assert batch["valid"][slot] == (index not in bad)
            if index in bad:
                assert not any(c[slot].any() for c in batch["crops"])
    assert sum("skipping unreadable image" in r.getMessage() for r in caplog.records) == 4
    assert "a/2.jpg" in caplog.text


# ----------------------------------------------------------------------------------------------------------
# The OpenCV backend: the same boxes, crops close to PIL's.


def _boxes_drawn(monkeypatch):
    """Records every list of boxes `example_crops` hands to a decoder."""
    drawn, draw = [], imf.example_crops
    monkeypatch.setattr(imf, "example_crops", lambda *args: drawn.append(draw(*args)) or drawn[-1])
    return drawn


def test_opencv_backend_draws_the_same_boxes_as_pil(source, monkeypatch):
    pytest.importorskip("cv2")
    drawn = _boxes_drawn(monkeypatch)
    pil = imf.host_batch(source, GROUPS, step=2, global_batch_size=8, seed=5, backend="pil")
    boxes_pil = list(drawn)
    drawn.clear()
    cv = imf.host_batch(source, GROUPS, step=2, global_batch_size=8, seed=5, backend="opencv")
    assert drawn == boxes_pil and len(drawn) == 8
    np.testing.assert_array_equal(cv["index"], pil["index"])


def test_opencv_crops_are_close_to_pils(tmp_path):
    """Two 224 crops of ImageNet-like 500x375 JPEGs, as in the benchmark: on average within 1 grey level of PIL's
    antialiased bilinear resize (0.54 measured over 100 such images), every crop within 2, and as sharp."""
    pytest.importorskip("cv2")
    groups, diffs, sharpness = (imf.HostCropGroup(224, 2),), [], []
    for i in range(12):
        path = tmp_path / f"{i}.jpg"
        input_bench.smooth_image(np.random.default_rng(i), *((375, 500) if i % 5 == 4 else (500, 375))).save(
            path, "JPEG", quality=90)
        (pil,), (cv,) = (imf.decode_crops(path, 0, 0, i, groups, backend=b) for b in ("pil", "opencv"))
        diffs += [np.abs(p.astype(np.float32) - c).mean() for p, c in zip(pil, cv)]
        sharpness.append(_laplacian_std(cv) / _laplacian_std(pil))
    assert np.mean(diffs) < 1.0 and max(diffs) < 2.0
    assert 0.9 < np.mean(sharpness) < 1.1  # antialiased as PIL is: neither blurrier nor more aliased


def _laplacian_std(crops):
    image = crops.astype(np.float32).mean(-1)
    return (4 * image[..., 1:-1, 1:-1] - image[..., :-2, 1:-1] - image[..., 2:, 1:-1] - image[..., 1:-1, :-2]
            - image[..., 1:-1, 2:]).std()


def test_opencv_reduced_decode_is_pils_draft_and_close_to_full(tmp_path):
    pytest.importorskip("cv2")
    path = tmp_path / "big.JPEG"
    _smooth_jpeg(path)
    for factor in (2, 4, 8):  # the same libjpeg DCT scaling: the same pixels
        with Image.open(path) as image:
            image.draft("RGB", (image.width // factor, image.height // factor))
            np.testing.assert_array_equal(imf._cv2_decode(path.read_bytes(), path, factor), np.asarray(image))
    groups = (imf.HostCropGroup(64, 2, (0.5, 1.0)), imf.HostCropGroup(32, 2, (0.2, 0.5)))
    drafted = imf.decode_crops(path, 0, 0, 0, groups, draft=True, backend="opencv")
    full = imf.decode_crops(path, 0, 0, 0, groups, draft=False, backend="opencv")
    pil = imf.decode_crops(path, 0, 0, 0, groups, draft=True, backend="pil")
    for d, f, p in zip(drafted, full, pil):
        assert 0.0 < np.abs(d.astype(np.float32) - f).mean() < 4.0  # as the PIL test's tolerance
        assert np.abs(d.astype(np.float32) - p).mean() < 2.0


def test_opencv_fractional_box_matches_pil_box_resize():
    """The warp used for boxes at fractional positions (reduced decodes) puts pixels where PIL's box does."""
    pytest.importorskip("cv2")
    image = np.asarray(input_bench.smooth_image(np.random.default_rng(3), 120, 90))
    for box, size in (((10.5, 7.25, 60.5, 57.25), 80), ((3.5, 2.5, 103.5, 82.5), 40)):  # up, then down
        want = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=box))
        assert np.abs(imf.cv2_resize_box(image, box, size).astype(np.float32) - want).mean() < 1.5


def test_cmyk_jpeg_falls_back_to_pil_colours(tmp_path):
    pytest.importorskip("cv2")
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 4), dtype=np.uint8), "CMYK").save(path)
    groups = (imf.HostCropGroup(16, 2),)
    np.testing.assert_array_equal(imf.decode_crops(path, 0, 0, 0, groups, backend="opencv")[0],
                                  imf.decode_crops(path, 0, 0, 0, groups, backend="pil")[0])


def test_backend_choice(monkeypatch):
    assert imf.resolve_backend("pil") == "pil"
    assert imf.resolve_backend("auto", "bicubic") == "pil"
    with pytest.raises(ValueError, match="backend must be one of auto, pil, opencv"):
        imf.resolve_backend("turbo")
    if imf._cv2() is not None:
        assert imf.resolve_backend("auto") == "opencv"
        with pytest.raises(ValueError, match="bilinearly only"):
            imf.resolve_backend("opencv", "bicubic")
    monkeypatch.setattr(imf, "_cv2", lambda: None)
    assert imf.resolve_backend("auto") == "pil"
    with pytest.raises(ValueError, match="pip install -U opencv-python-headless"):
        imf.resolve_backend("opencv")


# ----------------------------------------------------------------------------------------------------------
# Errors: one line that says what was wrong and what to do.


def test_missing_root(tmp_path):
    with pytest.raises(data.DataError, match=r"image folder .*nowhere does not exist"):
        imf.scan_image_folder(tmp_path / "nowhere")


def test_root_without_class_folders(tmp_path):
    (tmp_path / "loose.jpg").write_bytes(b"")
    with pytest.raises(data.DataError, match="has no class sub-folders"):
        imf.scan_image_folder(tmp_path)


def test_class_folder_without_images_is_named(tmp_path):
    os.makedirs(tmp_path / "good")
    _write_jpeg(tmp_path / "good" / "0.jpg", np.random.default_rng(0), 50, 40)
    os.makedirs(tmp_path / "empty_class")
    (tmp_path / "empty_class" / "labels.csv").write_text("x")
    with pytest.raises(data.DataError, match=r"class folder .*empty_class holds no images"):
        imf.scan_image_folder(tmp_path)


def test_fewer_examples_than_one_global_batch(source):
    with pytest.raises(data.DataError, match=r"holds 48 images, fewer than one global batch of 64"):
        imf.HostBatches(source, GROUPS, 64, seed=0)


def test_batch_not_divisible_by_processes(source):
    with pytest.raises(data.DataError, match="not divisible by the 3 processes"):
        imf.HostBatches(source, GROUPS, 8, seed=0, process_count=3)


def test_bad_crop_group_and_resample(source):
    with pytest.raises(ValueError, match="scale must be"):
        imf.HostCropGroup(224, 2, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="count must be an integer >= 1"):
        imf.HostCropGroup(224, 0)
    with pytest.raises(ValueError, match="resample must be one of"):
        imf.HostBatches(source, GROUPS, 8, seed=0, resample="lanczos")


# ----------------------------------------------------------------------------------------------------------
# The benchmark (without torch in this environment: ours alone).


def test_input_bench_generates_and_times(tmp_path, capsys):
    input_bench.main([f"--images={tmp_path}", "--generate=12", "--workers=1", "--batch=4", "--batches=2",
                      "--warmup=1", "--rounds=1"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["images"] == 12 and record["ours_images_per_s"] > 0
    assert ("torchvision_images_per_s" in record) == ("note" not in record)
    with Image.open(next(iter(sorted((tmp_path / "class_00").iterdir())))) as image:
        assert image.size == (500, 375) and image.format == "JPEG"
