"""Process-level setup done once before JAX starts its backend: XLA CPU options and multi-host initialisation."""
import os

# Measured on a 2-core x86 CPU with jaxlib 0.10.2, SimCLR ResNet-18 width 16, batch 256 (docs/benchmarks.md):
# XNNPACK 81.6 img/s, no flag 76.4, oneDNN 63.1, oneDNN + fast math 81.5.
CPU_XLA_FLAGS = ("--xla_cpu_use_xnnpack=true",)


def configure_xla_cpu(setting="auto"):
    """Adds the XLA CPU options that measurably help to XLA_FLAGS, unless the user set them already.

    `setting`: 'auto' (the measured defaults), '' or 'none' (nothing), or a space-separated list of flags.
    Only takes effect before JAX initialises its backend; flags already in XLA_FLAGS win.
    """
    if setting in ("", "none", None):
        return
    wanted = CPU_XLA_FLAGS if setting == "auto" else tuple(setting.split())
    current = os.environ.get("XLA_FLAGS", "")
    present = {flag.split("=")[0] for flag in current.split()}
    extra = [flag for flag in wanted if flag.split("=")[0] not in present]
    if extra and not _only_accelerators():
        os.environ["XLA_FLAGS"] = " ".join([current] + extra).strip()


def define_config_flag(help_text):
    """Defines `--config` (an ml_collections config file, locked) unless this process has it already:
    `ssl_jax.main` and `ssl_jax.bench` both take it, and one process (a test run) may import both."""
    from absl import flags
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


def _only_accelerators():
    platforms = os.environ.get("JAX_PLATFORMS", "")
    return bool(platforms) and "cpu" not in platforms.split(",")


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
    """`jax.distributed.initialize`, from explicit flags or, when none are given, from the environment
    (Cloud TPU pods, SLURM, Open MPI auto-detection)."""
    import jax

    kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)
    print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
          f"{jax.device_count()} devices", flush=True)
