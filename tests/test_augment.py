"""Tests for ssl_jax.augment: each op against small NumPy references, plus pipeline properties."""
import colorsys
import dataclasses

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
