"""Tests for ssl_jax.augment: each op against small NumPy references, plus pipeline properties."""
import colorsys
import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax import augment as A

H = W = 32
IDENTITY = A.ViewConfig(crop_size=H, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                        jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
BYOL_2 = A.ViewConfig(blur_prob=0.1, solarize_prob=0.2)  # BYOL table 6, view 2 (CIFAR-size)

aug_image = jax.jit(A.augment_image, static_argnames="cfg")
aug_batch = jax.jit(A.augment_batch, static_argnames="cfg")
two_views = jax.jit(A.two_views, static_argnames=("cfg1", "cfg2"))


def _images(n=8, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, H, W, 3)).astype(np.uint8)


def _floats(shape=(H, W, 3), seed=0):
    return np.random.RandomState(seed).uniform(0, 1, shape).astype(np.float32)


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def np_gray(x):
    return x @ np.array([0.299, 0.587, 0.114], np.float32)


# ----------------------------------------------------------------------------- config


def test_view_config_from_dict_and_validation():
    import ml_collections

    d = {"crop_size": 24, "crop_scale": [0.2, 1.0], "blur_prob": 0.5}
    cfg = A.view_config_from_dict(d)
    assert cfg == A.ViewConfig(crop_size=24, crop_scale=(0.2, 1.0), blur_prob=0.5)
    hash(cfg)  # usable as a jit static argument
    assert A.view_config_from_dict(ml_collections.ConfigDict(d)) == cfg
    with pytest.raises(ValueError, match="colour_prob.*crop_size"):
        A.view_config_from_dict({"colour_prob": 0.1})
    with pytest.raises(ValueError):
        A.ViewConfig(flip_prob=1.5)


def test_normalize():
    x = _floats((2, 4, 4, 3))
    want = (x - np.array(A.CIFAR_MEAN, np.float32)) / np.array(A.CIFAR_STD, np.float32)
    np.testing.assert_allclose(A.normalize(jnp.asarray(x)), want, rtol=1e-6, atol=1e-6)


def test_normalize_with_a_data_sets_own_statistics():
    x = _floats((2, 4, 4, 3))
    mean, std = A.pixel_stats("cifar100")
    assert mean != A.CIFAR_MEAN and std != A.CIFAR_STD
    want = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
    np.testing.assert_allclose(A.normalize(jnp.asarray(x), (mean, std)), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"config.data.name='svhn' has no pixel statistics.*cifar10, cifar100"):
        A.pixel_stats("svhn")


SHARED_CIFAR10 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                              "cifar10-jpeg.tar.gz")


@pytest.mark.skipif(not os.path.exists(SHARED_CIFAR10), reason="the shared CIFAR-10 copy is not here")
def test_cifar10_statistics_are_those_of_its_training_split():
    """CIFAR-10's constants against the training split itself (the shared JPEG copy: its mean agrees to 2e-4; JPEG
    compression smooths the images, so its std is up to 1.8e-3 below the originals')."""
    from ssl_jax import data

    images = data.load_dataset("cifar10", path=SHARED_CIFAR10).train.images
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = A.pixel_stats("cifar10")
    np.testing.assert_allclose(x.mean(0), mean, atol=1e-3)
    np.testing.assert_allclose(x.std(0), std, atol=3e-3)


# ----------------------------------------------------------------------------- crop


def _crop_noise(n, seed=0):
    return np.random.RandomState(seed).uniform(0, 1, (n, 2, 11)).astype(np.float32)


def test_sample_crop_box_inside_image_and_in_range():
    h_img, w_img = 24, 40
    sample = jax.jit(jax.vmap(lambda u: A.sample_crop_box(u, h_img, w_img, (0.08, 1.0), (3 / 4, 4 / 3))))
    y0, x0, h, w = (np.asarray(a) for a in sample(_crop_noise(3000)))
    assert (y0 >= 0).all() and (x0 >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (y0 + h <= h_img).all() and (x0 + w <= w_img).all()
    frac, ratio = h * w / (h_img * w_img), w / h
    assert frac.min() >= 0.05 and frac.max() <= 1.0 and 0.3 < frac.mean() < 0.7
    assert ratio.min() >= 0.6 and ratio.max() <= 1.6  # [3/4, 4/3] up to integer rounding
    assert (y0 == 0).any() and (y0 == h_img - h).any() and (x0 == 0).any() and (x0 == w_img - w).any()
    assert len(set(zip(y0, x0, h, w))) > 1000


def test_sample_crop_box_fallback_is_torchvision_centre_crop():
    # No sample can have aspect 2 and the full area of a square image -> centre crop, ratio clamped.
    sample = jax.jit(A.sample_crop_box, static_argnums=(1, 2, 3, 4))
    box = sample(_crop_noise(1)[0], 24, 24, (1.0, 1.0), (2.0, 2.0))
    assert tuple(int(v) for v in box) == (6, 0, 12, 24)


def np_crop_resize_bilinear(x, box, size):
    """Crop, then bilinear resize (half-pixel centres, edge clamp): valid reference for upsampling."""
    y0, x0, h, w = box
    crop = x[y0:y0 + h, x0:x0 + w]

    def coords(n_in):
        c = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        i0 = np.floor(c).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), (c - i0)[:, None]

    (r0, r1, fy), (c0, c1, fx) = coords(h), coords(w)
    rows = crop[r0] * (1 - fy[..., None]) + crop[r1] * fy[..., None]
    return rows[:, c0] * (1 - fx) + rows[:, c1] * fx


def test_crop_and_resize_matches_bilinear_reference():
    x = _floats()
    resize = jax.jit(A.crop_and_resize, static_argnums=2)
    for box in [(3, 5, 10, 14), (0, 0, 32, 32), (20, 11, 12, 7)]:
        got = resize(jnp.asarray(x), tuple(jnp.int32(v) for v in box), 32)
        np.testing.assert_allclose(got, np_crop_resize_bilinear(x, box, 32), atol=1e-5)


def test_crop_downsampling_stays_in_range_and_keeps_constants():
    x = _floats()
    box = tuple(jnp.int32(v) for v in (2, 1, 29, 30))
    resize = jax.jit(A.crop_and_resize, static_argnums=2)
    out = np.asarray(resize(x, box, 9))
    assert out.shape == (9, 9, 3) and x.min() <= out.min() and out.max() <= x.max()
    const = resize(np.full((H, W, 3), 0.3, np.float32), box, 9)
    np.testing.assert_allclose(const, 0.3, atol=1e-6)


def test_random_crops_stay_in_range():
    x = _images(64).astype(np.float32) / 255
    crop = jax.jit(jax.vmap(lambda u, x: A.random_resized_crop(u, x, 20)))
    out = np.asarray(crop(_crop_noise(64), x))
    chex.assert_shape(out, (64, 20, 20, 3))
    assert (out.min(axis=(1, 2, 3)) >= x.min(axis=(1, 2, 3)) - 1e-6).all()
    assert (out.max(axis=(1, 2, 3)) <= x.max(axis=(1, 2, 3)) + 1e-6).all()


# ------------------------------------------------------------------ flip / grayscale / solarize


def test_flip_grayscale_solarize_match_numpy():
    x = _floats()
    np.testing.assert_array_equal(A.flip_lr(jnp.asarray(x)), np.flip(x, axis=1))
    g = np.asarray(A.to_grayscale(jnp.asarray(x)))
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    np.testing.assert_allclose(g[..., 0], np_gray(x), atol=1e-6)
    np.testing.assert_array_equal(A.solarize(jnp.asarray(x)), np.where(x < 0.5, x, 1 - x))


# ----------------------------------------------------------------------------- colour jitter


def np_hue(x, delta):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*x[idx])
        out[idx] = colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
    return out


def np_contrast(x, f):
    return f * x + (1 - f) * np_gray(x).mean()


def np_saturation(x, f):
    return f * x + (1 - f) * np_gray(x)[..., None]


def test_brightness_contrast_saturation_match_numpy():
    x = _floats((8, 8, 3))
    for f in (0.6, 1.0, 1.4):
        np.testing.assert_allclose(A.adjust_brightness(jnp.asarray(x), f), x * f, atol=1e-6)
        np.testing.assert_allclose(A.adjust_contrast(jnp.asarray(x), f), np_contrast(x, f), atol=1e-6)
        np.testing.assert_allclose(A.adjust_saturation(jnp.asarray(x), f), np_saturation(x, f), atol=1e-6)


def test_hue():
    x = _floats((8, 8, 3))
    hue = jax.jit(A.adjust_hue)
    np.testing.assert_allclose(hue(x, 0.0), x, atol=1e-6)
    for delta in (-0.1, 0.05, 0.37):
        np.testing.assert_allclose(hue(x, delta), np_hue(x, delta), atol=1e-5)
    gray = np.repeat(_floats((8, 8, 1)), 3, -1)
    np.testing.assert_allclose(hue(gray, 0.3), gray, atol=1e-6)


def test_color_jitter_random_order_matches_numpy():
    """NumPy ops applied in the order given by the sort keys u[4:], clipping after each."""
    x = _floats((6, 6, 3))
    b, c, s, h = 0.4, 0.3, 0.2, 0.1
    jitter = jax.jit(lambda u: A.color_jitter(u, jnp.asarray(x), b, c, s, h))
    np_ops = [lambda y, f: y * f, np_contrast, np_saturation, np_hue]
    perms = set()
    for u in np.random.RandomState(0).uniform(0, 1, (6, 8)).astype(np.float32):
        lo, hi = np.array([1 - b, 1 - c, 1 - s, -h]), np.array([1 + b, 1 + c, 1 + s, h])
        params, perm = lo + (hi - lo) * u[:4], np.argsort(u[4:])
        perms.add(tuple(perm))
        want = x
        for i in perm:
            want = np.clip(np_ops[i](want, params[i]), 0, 1)
        np.testing.assert_allclose(jitter(u), want, atol=1e-5)
    assert len(perms) > 1


def test_zero_strength_jitter_is_identity():
    x = jnp.asarray(_floats((6, 6, 3)))
    np.testing.assert_array_equal(A.color_jitter(jnp.full((8,), 0.3), x, 0.0, 0.0, 0.0, 0.0), x)


# ----------------------------------------------------------------------------- blur


def np_blur(x, sigma, k):
    """Direct 2-D convolution with the outer-product Gaussian kernel and reflect padding."""
    r = k // 2
    t = np.arange(-r, r + 1)
    g = np.exp(-t**2 / (2 * sigma**2))
    kern = np.outer(g, g) / np.outer(g, g).sum()
    p = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            out += kern[i, j] * p[i:i + x.shape[0], j:j + x.shape[1]]
    return out


def test_blur():
    assert [A.blur_kernel_size(s) for s in (32, 96, 224)] == [3, 9, 23]
    x = _floats((16, 16, 3))
    blur = jax.jit(A.gaussian_blur, static_argnums=2)
    for sigma, k in ((0.7, 3), (1.5, 5), (2.0, 9)):
        np.testing.assert_allclose(blur(x, sigma, k), np_blur(x, sigma, k), atol=1e-5)
        np.testing.assert_allclose(blur(np.full_like(x, 0.25), sigma, k), 0.25, atol=1e-6)
    assert float(blur(x, 1.5, 5).var()) < 0.5 * x.var()


# ----------------------------------------------------------------------------- pipeline


def test_all_probabilities_zero_with_full_crop_is_identity():
    imgs = _images()
    out = aug_batch(_keys(8, seed=5), imgs, IDENTITY)
    np.testing.assert_array_equal(out, jnp.asarray(imgs, jnp.float32) / 255.0)


def test_pipeline_with_probability_one_composes_the_ops():
    cfg = dataclasses.replace(IDENTITY, flip_prob=1.0, grayscale_prob=1.0, blur_prob=1.0,
                              blur_sigma=(1.0, 1.0), solarize_prob=1.0)
    imgs = _images()
    out = np.asarray(aug_batch(_keys(8), imgs, cfg))
    for o, img in zip(out, imgs):
        gray = np.repeat(np_gray(np.flip(img, 1) / np.float32(255))[..., None], 3, -1)
        blurred = np_blur(gray, 1.0, 3)
        np.testing.assert_allclose(o, np.where(blurred < 0.5, blurred, 1 - blurred), atol=1e-5)


def test_random_gates_fire_at_their_rates():
    """flip p=0.5, grayscale p=0.2: each view is one of the four outcomes, at about those rates."""
    cfg = dataclasses.replace(IDENTITY, crop_size=4, flip_prob=0.5, grayscale_prob=0.2)
    imgs = _images(256)[:, :4, :4]
    out = np.asarray(aug_batch(_keys(256), imgs, cfg))
    x = imgs / np.float32(255)
    gray = lambda y: np.repeat(np_gray(y)[..., None], 3, -1)
    match = lambda a, b: np.isclose(a, b, atol=1e-5).all(axis=(1, 2, 3))
    flipped = match(out, np.flip(x, 2)) | match(out, gray(np.flip(x, 2)))
    grayed = match(out, gray(x)) | match(out, gray(np.flip(x, 2)))
    assert (flipped | grayed | match(out, x)).all()
    assert 0.4 < flipped.mean() < 0.6 and 0.12 < grayed.mean() < 0.28


def test_two_views_output_split_and_sharding_invariance():
    imgs = _images()
    step_key = jax.random.key(3)
    idx = jnp.arange(8)
    v1, v2 = (np.asarray(v) for v in two_views(step_key, imgs, idx, A.ViewConfig(), BYOL_2))
    for v in (v1, v2):
        chex.assert_shape(v, (8, 32, 32, 3))
        chex.assert_type(v, np.float32)
        assert v.min() >= 0.0 and v.max() <= 1.0
    assert all(not np.allclose(a, b, atol=1e-3) for a, b in zip(v1, v2))  # views differ
    again = two_views(step_key, imgs, idx, A.ViewConfig(), BYOL_2)
    np.testing.assert_array_equal(again[0], v1)  # same key -> same view
    halves = [two_views(step_key, imgs[s], idx[s], A.ViewConfig(), BYOL_2)
              for s in (slice(0, 4), slice(4, 8))]
    np.testing.assert_allclose(np.concatenate([h[0] for h in halves]), v1, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([h[1] for h in halves]), v2, atol=1e-6)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    s1, s2 = two_views(step_key, jax.device_put(imgs, sharding), jax.device_put(idx, sharding),
                       A.ViewConfig(), BYOL_2)
    np.testing.assert_allclose(s1, v1, atol=1e-6)
    np.testing.assert_allclose(s2, v2, atol=1e-6)
    # augment_batch (raw uint32 keys) and per-example augment_image (typed keys) give the same views.
    keys = A.example_keys(step_key, idx, 1)
    np.testing.assert_allclose(aug_batch(jax.random.key_data(keys), imgs, BYOL_2), v2, atol=1e-6)
    for i in (0, 5):
        np.testing.assert_allclose(aug_image(keys[i], imgs[i], BYOL_2), v2[i], atol=1e-5)


def test_example_keys_depend_only_on_global_index():
    step_key = jax.random.key(7)
    full = jax.random.key_data(A.example_keys(step_key, jnp.arange(8), 0))
    part = jax.random.key_data(A.example_keys(step_key, jnp.array([5, 2]), 0))
    np.testing.assert_array_equal(part, full[np.array([5, 2])])
    assert len({tuple(k) for k in np.asarray(full)}) == 8
    other_view = jax.random.key_data(A.example_keys(step_key, jnp.arange(8), 1))
    assert not (other_view == full).all(axis=-1).any()


# ----------------------------------------------------------------------------- multi-crop

multi_crop = jax.jit(A.multi_crop, static_argnames="groups")
LOCAL_16 = A.ViewConfig(crop_size=16, crop_scale=(0.05, 0.4))
MULTI = (A.CropGroup(2, A.ViewConfig()), A.CropGroup(4, LOCAL_16))  # 2 x 32 global + 4 x 16 local


def test_crop_group_from_dict_and_validation():
    import ml_collections

    from ssl_jax import config_lib

    view = config_lib.view_config(crop_size=16)
    group = A.crop_group_from_dict(dict(view.to_dict(), count=6))
    assert group == A.CropGroup(6, A.view_config_from_dict(view)) and group.crop_size == 16
    hash(group)
    assert A.crop_group_from_dict(ml_collections.ConfigDict(dict(view.to_dict(), count=6))) == group
    v1, v2 = A.ViewConfig(), BYOL_2
    assert A.crop_groups([v1, v2]) == (A.CropGroup(1, v1), A.CropGroup(1, v2))  # per-crop views
    assert A.crop_groups([(2, v1), {"count": 3, "crop_size": 16}]) == (A.CropGroup(2, v1),
                                                                        A.CropGroup(3, A.ViewConfig(crop_size=16)))
    assert A.num_crops(MULTI) == 6
    with pytest.raises(ValueError, match="count must be an integer >= 1.*got 0"):
        A.CropGroup(0, v1)
    with pytest.raises(ValueError, match="count must be an integer >= 1"):
        A.crop_group_from_dict({"count": 1.5})
    with pytest.raises(ValueError, match="no 'count' key"):
        A.crop_group_from_dict(view)
    with pytest.raises(ValueError, match="Unknown ViewConfig key 'size'"):
        A.crop_group_from_dict({"count": 2, "size": 96})
    with pytest.raises(ValueError, match="crop_size must be a positive"):
        A.crop_group_from_dict({"count": 2, "crop_size": 0})
    with pytest.raises(ValueError, match="crop_size must be a positive integer.*16.5"):
        A.CropGroup(2, A.ViewConfig(crop_size=16.5))
    with pytest.raises(ValueError, match="at least one crop group"):
        A.crop_groups([])
    with pytest.raises(TypeError, match="crop group must be"):
        A.crop_groups(["global"])


def test_multi_crop_with_two_single_groups_is_two_views_bit_for_bit():
    imgs, idx, step_key = _images(), jnp.arange(8), jax.random.key(3)
    v1, v2 = two_views(step_key, imgs, idx, A.ViewConfig(), BYOL_2)
    for groups in ((A.CropGroup(1, A.ViewConfig()), A.CropGroup(1, BYOL_2)),
                   A.crop_groups([A.ViewConfig(), BYOL_2])):
        c1, c2 = multi_crop(step_key, imgs, idx, groups=groups)
        chex.assert_shape([c1, c2], (1, 8, 32, 32, 3))
        np.testing.assert_array_equal(c1[0], v1)
        np.testing.assert_array_equal(c2[0], v2)


def test_multi_crop_shapes_dtype_numbering_and_distinct_crops():
    imgs, idx, step_key = _images(), jnp.arange(8), jax.random.key(3)
    glob, local = (np.asarray(v) for v in multi_crop(step_key, imgs, idx, groups=MULTI))
    chex.assert_shape(glob, (2, 8, 32, 32, 3))
    chex.assert_shape(local, (4, 8, 16, 16, 3))
    for crops in (glob, local):
        chex.assert_type(crops, np.float32)
        assert crops.min() >= 0.0 and crops.max() <= 1.0
        for a in range(len(crops)):  # every pair of crops of one example differs
            for b in range(a):
                assert all(not np.allclose(x, y, atol=1e-3) for x, y in zip(crops[a], crops[b]))
    # Crops are numbered across groups: global crops are views 0, 1; local crop j is view 2 + j.
    np.testing.assert_allclose(glob[1], aug_batch(A.example_keys(step_key, idx, 1), imgs, A.ViewConfig()),
                               atol=2e-6)
    np.testing.assert_allclose(local[3], aug_batch(A.example_keys(step_key, idx, 5), imgs, LOCAL_16), atol=2e-6)


def test_multi_crop_does_not_depend_on_the_device_split():
    """Each example's crops depend only on the step key and its global index: the whole batch, its halves and
    quarters (with their global indices), and shard_map over the 8 devices give the same crops. Up to float
    rounding (XLA fuses differently per shape); the random boxes and gates are identical."""
    imgs, idx, step_key = _images(), jnp.arange(8), jax.random.key(11)
    full = multi_crop(step_key, imgs, idx, groups=MULTI)
    for parts in (2, 4):
        n = 8 // parts
        split = [multi_crop(step_key, imgs[i * n:(i + 1) * n], idx[i * n:(i + 1) * n], groups=MULTI)
                 for i in range(parts)]
        for g, crops in enumerate(full):
            np.testing.assert_allclose(np.concatenate([s[g] for s in split], axis=1), crops, atol=2e-6)
    # A shuffled, non-contiguous share: examples 6 and 1 alone.
    some = multi_crop(step_key, imgs[np.array([6, 1])], idx[np.array([6, 1])], groups=MULTI)
    for g, crops in enumerate(full):
        np.testing.assert_allclose(some[g], np.asarray(crops)[:, [6, 1]], atol=2e-6)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    per_device = lambda k, x, i: A.multi_crop(jax.random.wrap_key_data(k), x, i, MULTI)
    sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("batch"), P("batch")),
                                    out_specs=(P(None, "batch"),) * len(MULTI)))
    assert len(jax.devices()) == 8
    for got, crops in zip(sharded(jax.random.key_data(step_key), imgs, idx), full):
        np.testing.assert_allclose(got, crops, atol=2e-6)


def test_crop_boxes_follow_each_groups_scale_range():
    """On an image whose red channel is 8 x column and green 8 x row, an upsampled crop's extreme values are its
    box's first and last column/row exactly, so the boxes can be read back from the crops: each group's area
    fractions lie in its own crop_scale range, and the boxes are sample_crop_box's for the crop's key."""
    y, x = np.mgrid[:H, :W]
    gradient = np.stack([8 * x, 8 * y, np.full_like(x, 128)], -1).astype(np.uint8)
    n = 16
    imgs, idx, step_key = np.repeat(gradient[None], n, 0), jnp.arange(100, 100 + n), jax.random.key(5)
    plain = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
    glob = A.ViewConfig(crop_size=32, crop_scale=(0.5, 1.0), **plain)  # sides <= 32: never downsampled
    local = A.ViewConfig(crop_size=24, crop_scale=(0.05, 0.3), **plain)  # area <= 307 -> sides <= 20 < 24
    groups = (A.CropGroup(2, glob), A.CropGroup(6, local))
    first_view = 0
    for group, crops in zip(groups, multi_crop(step_key, imgs, idx, groups=groups)):
        level = np.rint(np.asarray(crops) * 255 / 8).astype(int)  # [count, n, S, S, 3] -> pixel coordinates
        x0, y0 = level[..., 0].min(axis=(2, 3)), level[..., 1].min(axis=(2, 3))
        w, h = level[..., 0].max(axis=(2, 3)) - x0 + 1, level[..., 1].max(axis=(2, 3)) - y0 + 1
        frac = h * w / (H * W)
        lo, hi = group.view.crop_scale
        assert lo - 0.02 <= frac.min() and frac.max() <= hi + 0.02  # integer rounding of the sides
        assert frac.min() < lo + 0.3 * (hi - lo) and frac.max() > hi - 0.3 * (hi - lo)  # the whole range is used
        for c in range(group.count):
            keys = A.example_keys(step_key, idx, first_view + c)
            u = jax.vmap(lambda k: jax.random.uniform(k, (A._NUM_UNIFORMS,))[:A._CROP_U].reshape(2, -1))(keys)
            want = jax.vmap(lambda u: A.sample_crop_box(u, H, W, group.view.crop_scale, group.view.crop_ratio))(u)
            np.testing.assert_array_equal(np.stack([y0[c], x0[c], h[c], w[c]]), np.stack(want))
        first_view += group.count


def test_multi_crop_jits_with_static_groups_and_checks_its_inputs():
    traces = []

    def crops(step_key, images, global_indices, groups):
        traces.append(groups)
        return A.multi_crop(step_key, images, global_indices, groups)

    jitted = jax.jit(crops, static_argnames="groups")
    imgs, idx, step_key = _images(4), jnp.arange(4), jax.random.key(0)
    small = (A.CropGroup(1, A.ViewConfig(crop_size=8)), A.CropGroup(2, A.ViewConfig(crop_size=4)))
    first = jitted(step_key, imgs, idx, groups=small)
    equal = (A.CropGroup(1, A.ViewConfig(crop_size=8)), A.CropGroup(2, A.ViewConfig(crop_size=4)))
    again = jitted(jax.random.key(1), imgs, idx, groups=equal)  # equal static groups: no retrace
    assert len(traces) == 1 and [a.shape for a in again] == [(1, 4, 8, 8, 3), (2, 4, 4, 4, 3)]
    assert not np.allclose(first[1], again[1])  # the step key is a traced argument
    with pytest.raises(ValueError, match="one global index per image"):
        jitted(step_key, imgs, jnp.arange(3), groups=small)
    with pytest.raises(ValueError, match="at least one crop group"):
        jitted(step_key, imgs, idx, groups=())


def test_host_crops_get_the_flips_and_colours_multi_crop_gives_a_full_image_crop():
    """A crop taken on the host goes through the same flip and colour draws as multi_crop's own crop: with a view
    whose crop is the whole (square) image, multi_crop of the images equals multi_crop_of_host_crops of the same
    images given as each crop, for every crop number, both groups."""
    full = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    local = dataclasses.replace(LOCAL_16, **full)
    groups = (A.CropGroup(2, dataclasses.replace(BYOL_2, **full)), A.CropGroup(3, local))
    imgs, idx, step_key = _images(), jnp.arange(8) + 40, jax.random.key(7)
    small = np.asarray(jax.image.resize(jnp.asarray(imgs), (8, 16, 16, 3), "nearest"))
    want_global = multi_crop(step_key, imgs, idx, groups=groups[:1])[0]
    got = multi_crop_of_host(step_key, (imgs[:, None].repeat(2, 1), small[:, None].repeat(3, 1)), idx, groups=groups)
    np.testing.assert_allclose(got[0], want_global, atol=1e-6)
    # The local group's crops are numbered 2, 3, 4 as in multi_crop: the full-image crop of the small images.
    want = jax.vmap(lambda c: aug_batch(A.example_keys(step_key, idx, c), small, local))(jnp.arange(2, 5))
    np.testing.assert_allclose(got[1], want, atol=1e-6)
    numbered_from_0 = jax.vmap(lambda c: aug_batch(A.example_keys(step_key, idx, c), small, local))(jnp.arange(3))
    assert not np.allclose(got[1], numbered_from_0, atol=1e-3)


def test_host_crops_of_the_wrong_size_or_count_are_refused():
    imgs, idx = _images(), jnp.arange(8)
    with pytest.raises(ValueError, match="crop_size 32"):
        A.multi_crop_of_host_crops(jax.random.key(0), (imgs[:, None, :16, :16],), idx, (A.CropGroup(1),))
    with pytest.raises(ValueError, match="group of 2 crops"):
        A.multi_crop_of_host_crops(jax.random.key(0), (imgs[:, None],), idx, (A.CropGroup(2),))


multi_crop_of_host = jax.jit(A.multi_crop_of_host_crops, static_argnames="groups")
