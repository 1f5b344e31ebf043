"""Tuning the XLA CPU backend: the XLA CPU options that measurably help (chosen by jaxlib version) and the glibc
allocator setting; both must be applied before JAX starts its backend. Measurements: docs/benchmarks.md."""
import ctypes
import importlib.metadata
import os

# XNNPACK: the fastest single XLA CPU option for this step (docs/benchmarks.md, "CPU: the development machine").
CPU_XLA_FLAGS = ("--xla_cpu_use_xnnpack=true",)

# jaxlib 0.10's YNNPACK library fusions: its convolutions off (its weight gradients are slower than XLA's own), its
# element-wise fusions on (they keep element-wise work out of the transposes that feed the weight-gradient
# convolutions). docs/benchmarks.md, "XLA CPU: YNNPACK fusions and the allocator". Only for the jaxlib versions
# measured: XLA aborts on a flag it does not know.
YNN_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise",)
YNN_MEASURED_JAXLIB = ((0, 10), (0, 11))  # [first, last) major.minor

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def configure_xla_cpu(setting="auto"):
    """Adds the XLA CPU options that measurably help to XLA_FLAGS, unless the user set them already.

    `setting`: 'auto' (the measured defaults), '' or 'none' (nothing), or a space-separated list of flags.
    Only takes effect before JAX initialises its backend; flags already in XLA_FLAGS win.
    """
    if setting in ("", "none", None):
        return
    wanted = auto_cpu_flags() if setting == "auto" else tuple(setting.split())
    current = os.environ.get("XLA_FLAGS", "")
    present = {flag.split("=")[0] for flag in current.split()}
    extra = [flag for flag in wanted if flag.split("=")[0] not in present]
    if extra and not _only_accelerators():
        os.environ["XLA_FLAGS"] = " ".join([current] + extra).strip()


def auto_cpu_flags(jaxlib_version=None):
    """The flags `configure_xla_cpu('auto')` adds: CPU_XLA_FLAGS, plus YNN_XLA_FLAGS on the measured jaxlibs."""
    version = jaxlib_version or _installed_version("jaxlib")
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except (AttributeError, ValueError):
        return CPU_XLA_FLAGS
    first, last = YNN_MEASURED_JAXLIB
    return CPU_XLA_FLAGS + (YNN_XLA_FLAGS if first <= major_minor < last else ())


def configure_cpu_allocator(setting="auto"):
    """On a CPU backend with glibc, keeps freed memory in the process: no mmap for big blocks, no trimming.

    XLA's CPU step allocates and frees hundreds of MB of temporaries; glibc serves blocks over 32 MB with
    mmap and returns them on free, so every step page-faults them in again (docs/benchmarks.md, "XLA CPU:
    YNNPACK fusions and the allocator"). `setting`: 'auto' (do it on the CPU backend) or 'default' (leave malloc alone).
    The process keeps its peak memory until it exits. Returns whether the setting was applied.
    """
    if setting not in ("auto", "default"):
        raise ValueError(f"config.cpu_allocator={setting!r}: use 'auto' (tune glibc malloc for the XLA CPU "
                         "backend) or 'default' (leave it alone).")
    if setting == "default":
        return False
    import jax

    if jax.default_backend() != "cpu":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _installed_version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _only_accelerators():
    platforms = os.environ.get("JAX_PLATFORMS", "")
    return bool(platforms) and "cpu" not in platforms.split(",")
