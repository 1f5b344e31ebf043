"""Pure-JAX SimCLR/BYOL image augmentations that run on the accelerator.

Every op works on one image and is batched with `jax.vmap`, so the whole
pipeline lives inside the jitted train step. Each example has its own key,
derived from its *global* index (`example_keys`), so views do not depend on
how the global batch is split over devices. Random ops take their randomness
explicitly as uniform noise `u` in [0, 1); `augment_image` draws all of it with
a single `jax.random.uniform` call per example (one threefry call instead of
one per op compiles ~8x faster on CPU and gives identical statistics).

The pipeline order and default parameters follow SimCLR (Chen et al. 2020,
appendix A; CIFAR-10 strength s = 0.5, no blur, appendix B.9) and BYOL
(Grill et al. 2020, table 6): random resized crop -> horizontal flip ->
colour jitter (random order) -> grayscale -> Gaussian blur -> solarize.

A `ViewConfig` is static (hashable, read as Python numbers at trace time);
pass it as a static argument when jitting.

Multi-crop (SwAV, DINO): `multi_crop` draws several groups of crops per image, each a
`CropGroup` (a count and a ViewConfig, e.g. 2 global 224-pixel crops + 10 local 96-pixel
crops). Crops are numbered across the groups in order and crop c uses the keys of view c,
so the groups ((1, view1), (1, view2)) are exactly `two_views(..., view1, view2)`.
"""
import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)  # per-pixel std over the CIFAR-10 training set
# Each data set's per-channel pixel mean and std over its training split, for values in [0, 1]: what `normalize`
# standardises a network's inputs with, in training and in every evaluation of its encoder (the exported encoder
# records them). CIFAR-10: measured on the shared copy by tests/test_augment.py; CIFAR-100: the values CIFAR-100
# code commonly normalises with (its training split's per-channel mean and std; not measured here, no copy of it
# is at hand); ImageNet: torchvision's, which ImageNet-100 (a subset) and any other image folder use too, as
# solo-learn and torchvision's reference scripts do.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PIXEL_STATS = {
    "cifar10": (CIFAR_MEAN, CIFAR_STD),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": IMAGENET_STATS,
    "imagenet100": IMAGENET_STATS,
    "image_folder": IMAGENET_STATS,
    "stl10": IMAGENET_STATS,  # STL-10 is drawn from ImageNet; its own statistics are not measured here (no copy)
}
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma
_HIGHEST = jax.lax.Precision.HIGHEST
_CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop
# Per-example uniforms: crop [2, attempts + 1] | 5 gates | jitter [8] | blur sigma [1].
_CROP_U = 2 * (_CROP_ATTEMPTS + 1)
_SPLITS = (_CROP_U, _CROP_U + 5, _CROP_U + 13)
_NUM_UNIFORMS = _CROP_U + 14


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Parameters of one augmented view (defaults: SimCLR CIFAR-10, s = 0.5)."""

    crop_size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4  # 0.8 * s with s = 0.5 (SimCLR CIFAR)
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # 0.2 * s
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0  # off for CIFAR (SimCLR appendix B.9)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0

    def __post_init__(self):
        # Normalise sequences to tuples so the config stays hashable (jit static arg).
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must satisfy 0 <= lo <= hi, got {(lo, hi)}")
            object.__setattr__(self, name, (lo, hi))
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must lie in (0, 1], got {self.crop_scale}")
        if self.crop_ratio[0] <= 0:
            raise ValueError(f"crop_ratio must be positive, got {self.crop_ratio}")
        if int(self.crop_size) <= 0:
            raise ValueError(f"crop_size must be a positive number of pixels, got {self.crop_size}")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError("jitter strengths must be >= 0 and hue in [0, 0.5]")


def view_config_from_dict(d) -> ViewConfig:
    """Builds a ViewConfig from a dict or ml_collections.ConfigDict with the same keys."""
    d = d.to_dict() if hasattr(d, "to_dict") else dict(d)
    allowed = [f.name for f in dataclasses.fields(ViewConfig)]
    for key in d:
        if key not in allowed:
            raise ValueError(f"Unknown ViewConfig key {key!r}; allowed keys: {allowed}")
    return ViewConfig(**d)


# ----------------------------------------------------------------------------- helpers


def to_float(image):
    """uint8 [0, 255] -> float32 [0, 1]; float images are assumed to be in [0, 1]."""
    image = jnp.asarray(image)
    if jnp.issubdtype(image.dtype, jnp.integer):
        return image.astype(jnp.float32) / 255.0
    return image.astype(jnp.float32)


def _uniform(u, lo, hi):
    """Maps u in [0, 1) to [lo, hi)."""
    return lo + (hi - lo) * u


def apply_if(flag, prob: float, fn, x):
    """fn(x) where flag else x; compute-then-select. Static prob 0 (1) skips the select."""
    if prob <= 0:
        return x  # exactly the identity
    if prob >= 1:
        return fn(x)
    return jnp.where(flag, fn(x), x)


def to_grayscale(x):
    """ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B) replicated to three channels."""
    gray = jnp.tensordot(x, jnp.asarray(_GRAY_WEIGHTS, x.dtype), axes=1, precision=_HIGHEST)
    return jnp.broadcast_to(gray[..., None], x.shape)


# ----------------------------------------------------------------------------- crop


def sample_crop_box(u, height: int, width: int, scale, ratio):
    """Samples an integer box (y0, x0, h, w) inside the image, like torchvision RandomResizedCrop.

    u: uniforms [2, attempts + 1]. Tries `attempts` (area fraction, log-uniform aspect
    ratio) pairs at once and keeps the first that fits; if none does, falls back to
    torchvision's centre crop of the whole image (aspect ratio clamped to `ratio`).
    """
    attempts = u.shape[1] - 1
    area = height * width * _uniform(u[0, :attempts], *scale)
    aspect = jnp.exp(_uniform(u[1, :attempts], math.log(ratio[0]), math.log(ratio[1])))
    w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first, ok = jnp.argmax(valid), valid.any()
    fh, fw = _fallback_size(height, width, ratio)
    h, w = jnp.where(ok, h[first], fh), jnp.where(ok, w[first], fw)
    y0 = jnp.where(ok, _randint(u[0, attempts], height - h), (height - h) // 2)
    x0 = jnp.where(ok, _randint(u[1, attempts], width - w), (width - w) // 2)
    return y0, x0, h, w


def _randint(u, hi):
    """Uniform integer in [0, hi] from u in [0, 1)."""
    return jnp.minimum(jnp.floor(u * (hi + 1)).astype(jnp.int32), hi)


def _fallback_size(height: int, width: int, ratio):
    """Whole image with its aspect ratio clamped to `ratio` (static; torchvision fallback)."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return min(height, int(round(width / ratio[0]))), width
    if in_ratio > ratio[1]:
        return height, min(width, int(round(height * ratio[1])))
    return height, width


def _resize_weights(start, length, in_size: int, out_size: int):
    """[out, in] linear-interpolation matrix from the span [start, start+length) to out_size.

    Triangle kernel widened by the downscale factor (antialiasing, as PIL/torchvision), restricted
    to the span and renormalised, so the box edge is clamped like crop-then-resize.
    """
    start, length = start.astype(jnp.float32), length.astype(jnp.float32)
    step = length / out_size  # input pixels per output pixel
    centres = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * step
    support = jnp.maximum(step, 1.0)
    pos = jnp.arange(in_size, dtype=jnp.float32) + 0.5
    w = jnp.maximum(0.0, 1.0 - jnp.abs(pos[None, :] - centres[:, None]) / support)
    inside = (pos >= start) & (pos < start + length)
    w = jnp.where(inside[None, :], w, 0.0)
    return w / w.sum(axis=1, keepdims=True)


def crop_and_resize(x, box, size: int):
    """Bilinearly resamples box (y0, x0, h, w) of float image x to [size, size, C]."""
    y0, x0, h, w = box
    wy = _resize_weights(y0, h, x.shape[0], size)
    wx = _resize_weights(x0, w, x.shape[1], size)
    return jnp.einsum("oh,hwc,pw->opc", wy, x, wx, precision=_HIGHEST)


def random_resized_crop(u, x, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random area/aspect crop resized to size x size (SimCLR appendix A); u [2, attempts + 1]."""
    box = sample_crop_box(u, x.shape[0], x.shape[1], scale, ratio)
    return crop_and_resize(x, box, size)


def flip_lr(x):
    """Horizontal flip."""
    return x[:, ::-1]


# ----------------------------------------------------------------------------- colour


def adjust_brightness(x, factor):
    """Multiplies intensities by `factor`."""
    return x * factor


def adjust_contrast(x, factor):
    """Blends with the mean grayscale intensity of the image (torchvision semantics)."""
    mean = to_grayscale(x)[..., 0].mean()
    return factor * x + (1 - factor) * mean


def adjust_saturation(x, factor):
    """Blends with the per-pixel grayscale image."""
    return factor * x + (1 - factor) * to_grayscale(x)


def rgb_to_hsv(rgb):
    """RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
    d = jnp.where(delta > 0, delta, 1.0)
    h = jnp.where(r == v, (g - b) / d, jnp.where(g == v, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = jnp.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return jnp.stack([h, s, v], -1)


def hsv_to_rgb(hsv):
    """HSV -> RGB via f(n) = v - v s clip(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6."""
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = (jnp.asarray([5.0, 3.0, 1.0]) + 6.0 * h) % 6.0
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hue(x, delta):
    """Rotates hue by `delta` (fraction of a turn) in HSV space; gray pixels stay gray."""
    hsv = rgb_to_hsv(x)
    hsv = hsv.at[..., 0].set((hsv[..., 0] + delta) % 1.0)
    return hsv_to_rgb(hsv)


def color_jitter(u, x, brightness: float, contrast: float, saturation: float, hue: float):
    """Brightness, contrast, saturation and hue jitter in a random order, clipped after each.

    Factors are uniform in [max(0, 1 - s), 1 + s] (hue delta in [-hue, hue]), as torchvision
    ColorJitter used by SimCLR appendix A / BYOL table 6. Zero strength is the identity.
    u: uniforms [8] (4 factors, then 4 sort keys giving the random order).
    """
    strengths = (brightness, contrast, saturation, hue)
    lo = jnp.asarray([max(0.0, 1 - s) for s in strengths[:3]] + [-hue])
    hi = jnp.asarray([1 + s for s in strengths[:3]] + [hue])
    params, perm = _uniform(u[:4], lo, hi), jnp.argsort(u[4:])
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    branches = [_clipped(op) if s > 0 else _identity for op, s in zip(ops, strengths)]
    body = lambda i, y: jax.lax.switch(perm[i], branches, y, params[perm[i]])
    return jax.lax.fori_loop(0, 4, body, x)


def _clipped(op):
    return lambda y, p: jnp.clip(op(y, p), 0.0, 1.0)


def _identity(y, p):
    del p
    return y


# ----------------------------------------------------------------------------- blur / solarize


def blur_kernel_size(side: int) -> int:
    """Odd kernel size ~10% of the image side (SimCLR: 23 for 224, BYOL table 6)."""
    return 2 * ((side // 10) // 2) + 1


def gaussian_blur(x, sigma, kernel_size: int):
    """Separable Gaussian blur with reflect padding."""
    r = kernel_size // 2
    t = jnp.arange(-r, r + 1, dtype=jnp.float32)
    sigma = jnp.maximum(sigma, 1e-3)  # sigma -> 0 is the identity, not NaN
    w = jnp.exp(-(t**2) / (2.0 * sigma**2))
    w = w / w.sum()
    return _blur_axis0(_blur_axis0(x, w).swapaxes(0, 1), w).swapaxes(0, 1)


def _blur_axis0(x, w):
    r = w.shape[0] // 2
    p = jnp.pad(x, ((r, r), (0, 0), (0, 0)), mode="reflect")
    return sum(w[i] * p[i : i + x.shape[0]] for i in range(w.shape[0]))


def random_gaussian_blur(u, x, sigma_range):
    """Gaussian blur, sigma = uniform u mapped to sigma_range, kernel ~10% of the side."""
    sigma = _uniform(u, *sigma_range)
    return gaussian_blur(x, sigma, blur_kernel_size(x.shape[0]))


def solarize(x, threshold: float = 0.5):
    """Inverts intensities at or above threshold (BYOL table 6)."""
    return jnp.where(x < threshold, x, 1.0 - x)


# ----------------------------------------------------------------------------- pipeline


def augment_image(key, image, cfg: ViewConfig, cropped: bool = False) -> jnp.ndarray:
    """One view of one image: uint8 [H, W, 3] -> float32 [crop_size, crop_size, 3] in [0, 1].

    Order as SimCLR appendix A / BYOL table 6. All randomness is one uniform draw from `key`,
    laid out independently of cfg, so switching an op off leaves the others' randomness as is.
    `cropped`: the image is this view's random-resized crop already, taken on the host where the JPEG was
    decoded (`image_folder.py`); only the flip and the colour operations are applied here, with the same draws.
    """
    u = jax.random.uniform(key, (_NUM_UNIFORMS,))
    u_crop, u_gate, u_jitter, u_blur = jnp.split(u, _SPLITS)
    probs = (cfg.flip_prob, cfg.jitter_prob, cfg.grayscale_prob, cfg.blur_prob, cfg.solarize_prob)
    gate = u_gate < jnp.asarray(probs)
    jitter = functools.partial(color_jitter, u_jitter, brightness=cfg.brightness,
                               contrast=cfg.contrast, saturation=cfg.saturation, hue=cfg.hue)
    blur = functools.partial(random_gaussian_blur, u_blur[0], sigma_range=cfg.blur_sigma)
    x = to_float(image)
    if cropped:
        if x.shape[:2] != (cfg.crop_size, cfg.crop_size):
            raise ValueError(f"a host crop of {x.shape[0]}x{x.shape[1]} for a view of crop_size {cfg.crop_size}: "
                             "the host's crop groups must have the views' sizes (train.host_crop_groups).")
    else:
        x = random_resized_crop(u_crop.reshape(2, -1), x, cfg.crop_size, cfg.crop_scale, cfg.crop_ratio)
    for flag, prob, fn in zip(gate, probs, (flip_lr, jitter, to_grayscale, blur, solarize)):
        x = apply_if(flag, prob, fn, x)
    return jnp.clip(x, 0.0, 1.0)


def augment_batch(keys, images, cfg: ViewConfig, cropped: bool = False) -> jnp.ndarray:
    """vmap of augment_image: keys [B] (typed or raw [B, 2]), images [B, H, W, 3] -> [B, S, S, 3].

    cfg is static (pass it as a static argument under jit).
    """
    return jax.vmap(functools.partial(augment_image, cfg=cfg, cropped=cropped))(keys, images)


def example_keys(step_key, global_indices, view: int):
    """Per-example keys fold_in(fold_in(step_key, view), idx) from GLOBAL batch indices.

    Keys depend only on (step, view, global index), so views are identical however the
    global batch is sharded or split over devices/hosts.
    """
    view_key = jax.random.fold_in(step_key, view)
    return jax.vmap(lambda i: jax.random.fold_in(view_key, i))(jnp.asarray(global_indices))


def two_views(step_key, images, global_indices, cfg1: ViewConfig, cfg2: ViewConfig):
    """Two independently augmented views (view ids 0 and 1) of a batch, for the train step."""
    v1 = augment_batch(example_keys(step_key, global_indices, 0), images, cfg1)
    v2 = augment_batch(example_keys(step_key, global_indices, 1), images, cfg2)
    return v1, v2


def pixel_stats(dataset_name):
    """(mean, std) per channel of the data set `dataset_name` (PIXEL_STATS); ValueError for one without them."""
    if dataset_name not in PIXEL_STATS:
        raise ValueError(f"config.data.name={dataset_name!r} has no pixel statistics to normalise its images with; "
                         f"known: {', '.join(PIXEL_STATS)} (add its per-channel mean and std to "
                         "ssl_jax.augment.PIXEL_STATS).")
    return PIXEL_STATS[dataset_name]


def normalize(images, stats=PIXEL_STATS["cifar10"]):
    """Standardises float [0, 1] images per channel with `stats` = (mean, std) (a data set's: `pixel_stats`;
    CIFAR-10's by default)."""
    mean, std = stats
    return (images - jnp.asarray(mean, images.dtype)) / jnp.asarray(std, images.dtype)


# ----------------------------------------------------------------------------- multi-crop


@dataclasses.dataclass(frozen=True)
class CropGroup:
    """`count` crops of one kind: each is a view with `view`'s settings (crop_size, crop_scale, colour ops).

    E.g. DINO at ImageNet scale: CropGroup(2, ViewConfig(crop_size=224, crop_scale=(0.4, 1.0), ...)) and
    CropGroup(10, ViewConfig(crop_size=96, crop_scale=(0.05, 0.4), ...)). Hashable: a tuple of groups is a
    valid static argument under jit.
    """

    count: int
    view: ViewConfig = ViewConfig()

    def __post_init__(self):
        if isinstance(self.count, bool) or not isinstance(self.count, numbers.Integral) or self.count < 1:
            raise ValueError(f"CropGroup count must be an integer >= 1 (crops per image), got {self.count!r}")
        object.__setattr__(self, "count", int(self.count))
        if not isinstance(self.view, ViewConfig):
            raise TypeError(f"CropGroup view must be an augment.ViewConfig, got {type(self.view).__name__}")
        size = self.view.crop_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size <= 0:
            raise ValueError(f"CropGroup crop_size must be a positive integer (pixels), got {size!r}")

    @property
    def crop_size(self) -> int:
        return int(self.view.crop_size)


def crop_group_from_dict(d) -> CropGroup:
    """CropGroup from a dict or ConfigDict: a view dict (the keys of `config_lib.view_config`) plus `count`."""
    d = d.to_dict() if hasattr(d, "to_dict") else dict(d)
    if "count" not in d:
        raise ValueError(f"Crop group {sorted(d)} has no 'count' key (how many crops of this kind per image)")
    count = d.pop("count")
    return CropGroup(count, view_config_from_dict(d))


def crop_groups(groups) -> tuple:
    """Validated tuple of CropGroups (hashable: usable as a static jit argument).

    Each entry may be a CropGroup, a ViewConfig (one crop: a list of per-crop ViewConfigs is a list of
    count-1 groups), a (count, ViewConfig) pair, or a dict/ConfigDict for `crop_group_from_dict`.
    """
    if isinstance(groups, (CropGroup, ViewConfig)) or hasattr(groups, "keys"):
        groups = (groups,)
    out = []
    for g in groups:
        if isinstance(g, CropGroup):
            out.append(g)
        elif isinstance(g, ViewConfig):
            out.append(CropGroup(1, g))
        elif hasattr(g, "keys"):
            out.append(crop_group_from_dict(g))
        elif isinstance(g, (tuple, list)) and len(g) == 2:
            out.append(CropGroup(*g))
        else:
            raise TypeError(f"A crop group must be a CropGroup, ViewConfig, (count, ViewConfig) or dict, got {g!r}")
    if not out:
        raise ValueError("multi-crop needs at least one crop group, got an empty list")
    return tuple(out)


def num_crops(groups) -> int:
    """Total number of crops per image over all groups."""
    return sum(g.count for g in crop_groups(groups))


def group_keys(step_key, global_indices, first_view: int, count: int):
    """Keys [count, B] of views first_view .. first_view + count - 1: row j is example_keys(..., first_view + j)."""
    views = jnp.arange(first_view, first_view + count, dtype=jnp.uint32)
    return jax.vmap(lambda v: example_keys(step_key, global_indices, v))(views)


def multi_crop(step_key, images, global_indices, groups):
    """Multi-crop views of a batch: one float32 array [count, B, size, size, 3] in [0, 1] per group (not normalised).

    images: uint8 (or float in [0, 1]) [B, H, W, 3]; global_indices [B]: each example's index in the global batch.
    Crops are numbered across the groups in order (0, 1, 2, ...) and crop c of example i is
    augment_image(example_keys(step_key, global_indices, c)[i], images[i], its group's view), so each crop
    depends only on the step key, the crop number and the example's global index, never on how the batch is
    split over devices. Vectorised over examples and over the crops of a group; groups is static under jit
    (pass a tuple, e.g. `crop_groups(...)`).
    """
    groups = crop_groups(groups)
    global_indices = jnp.asarray(global_indices)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"multi_crop wants images [B, H, W, 3], got shape {tuple(images.shape)}")
    if global_indices.shape != images.shape[:1]:
        raise ValueError(f"multi_crop needs one global index per image: {tuple(global_indices.shape)} indices "
                         f"for {images.shape[0]} images")
    out, first = [], 0
    for g in groups:
        keys = group_keys(step_key, global_indices, first, g.count)
        if g.count == 1:  # no crop axis to map: the very computation of augment_batch (two_views bit for bit)
            out.append(augment_batch(keys[0], images, g.view)[None])
        else:
            out.append(jax.vmap(augment_batch, in_axes=(0, None, None))(keys, images, g.view))
        first += g.count
    return tuple(out)


def multi_crop_of_host_crops(step_key, host_crops, global_indices, groups):
    """`multi_crop` for crops taken on the host (`image_folder.host_batch`): host_crops has one uint8 array
    [B, count, size, size, 3] per group, each crop the random-resized crop of its group's view already; the flip
    and colour operations of crop c use the key `multi_crop` gives crop c, so a crop's randomness is again the
    step key's, the crop number's and the example's global index's alone. Returns what multi_crop returns."""
    groups = crop_groups(groups)
    if len(host_crops) != len(groups):
        raise ValueError(f"{len(host_crops)} groups of host crops for {len(groups)} crop groups")
    out, first = [], 0
    for g, crops in zip(groups, host_crops):
        if crops.shape[1] != g.count:
            raise ValueError(f"host crops {tuple(crops.shape)} for a group of {g.count} crops per image")
        keys = group_keys(step_key, jnp.asarray(global_indices), first, g.count)
        per_crop = functools.partial(augment_batch, cfg=g.view, cropped=True)
        out.append(jax.vmap(per_crop, in_axes=(0, 1))(keys, crops))
        first += g.count
    return tuple(out)
