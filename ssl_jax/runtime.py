"""Process-level setup: XLA CPU options (before JAX starts its backend), the CPU allocator, multi-host init."""
import ctypes
import importlib.metadata
import os

# Measured on a 2-core x86 CPU with jaxlib 0.10.2, SimCLR ResNet-18 width 16, batch 256 (docs/benchmarks.md):
# XNNPACK 81.6 img/s, no flag 76.4, oneDNN 63.1, oneDNN + fast math 81.5.
CPU_XLA_FLAGS = ("--xla_cpu_use_xnnpack=true",)

# jaxlib 0.10's YNNPACK library fusions (docs/benchmarks.md, "XLA CPU: YNNPACK fusions and the allocator"):
# its convolutions are 2-3x slower than XLA's own for the weight gradients of this network, so they are
# switched off; its element-wise fusions keep XLA from fusing element-wise work into the transposes that feed
# the weight-gradient convolutions (a fused transpose ran at 48 ms against 8 ms for a plain one).
# Together: 57 -> 99 images/s. Only for the jaxlib versions measured: XLA aborts on a flag it does not know.
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
    mmap and returns them on free, so every step page-faults them in again (a 150 MB buffer took 153 ms to
    fill instead of 64). `setting`: 'auto' (do it on the CPU backend) or 'default' (leave malloc alone).
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


USAGE_ERROR_STATUS = 2  # a mistake on the command line or in the config (as absl's own usage errors)


def run_cli(main, user_errors=()):
    """`absl.app.run(main)` for every ssl_jax command: a mistake on the command line ends the process with ONE line
    on stderr and status 2, instead of a traceback.

    Covered while the flags are parsed: an unknown config key (`--config.modle.width=3`: names the key, the
    keys that exist there and the closest one), a value of the wrong type (names the key, its type and default),
    an unknown `:variant` or a missing config file (names the choices), and absl's own flag errors. Exceptions
    of the types in `user_errors` that `main` raises (e.g. `ValueError` for a setting the library rejects) are
    printed the same way, as `error: <message>`. Use it as `runtime.run_cli(main, user_errors=(ValueError,))`
    in place of `app.run(main)`.
    """
    from absl import app

    def main_with_one_line_errors(argv):
        try:
            return main(argv)
        except user_errors as e:
            exit_with_error(e)

    app.run(main_with_one_line_errors, flags_parser=_parse_flags_one_line)


def exit_with_error(message, status=USAGE_ERROR_STATUS):
    """Prints `error: <message>` (an exception's text) to stderr and exits with `status`."""
    import sys

    print(f"error: {str(message).strip()}", file=sys.stderr, flush=True)
    sys.exit(status)


def _parse_flags_one_line(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 -- anything raised while parsing the flags is a command-line mistake
        exit_with_error(describe_flag_error(argv, e))


def describe_flag_error(argv, error):
    """One line saying which argument in `argv` was wrong and what would be right, for an `error` raised while
    absl parsed them: the config file and each `--config.key=value` are checked again to find the culprit."""
    config_arg, overrides = _config_arguments(argv)
    problem = config_problem(config_arg, overrides, error) if config_arg is not None else None
    return problem or _first_line(error).removeprefix("flag ")


def config_problem(config_arg, overrides, error=None):
    """What is wrong with `--config=config_arg` and its `(key, value)` overrides, in one line, or None."""
    path, has_variant, variant = config_arg.partition(":")
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        known = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []
        return (f"--config={config_arg}: no such file {path!r}"
                + (f"; the config files in {folder}/ are: {', '.join(known)}" if known else ""))
    try:
        config = _load_config_file(path, (variant,) if has_variant else ())
    except Exception as e:  # noqa: BLE001 -- the config file's own message names the mistake
        return f"--config={config_arg}: {_first_line(e)}"
    for key, value in overrides:
        problem = override_problem(config, key, value, error)
        if problem:
            return problem
    return None


def override_problem(config, dotted_key, value, error=None, argument=None):
    """One line on why `config.<dotted_key> = value` is wrong (no such key: the keys there and the closest one;
    a value the key's type rejects, as the parse `error` says: that type and the default), or None.
    `argument` is how the line names the setting (default `--config.<dotted_key>=<value>`)."""
    import difflib

    import ml_collections

    argument = argument or f"--config.{dotted_key}={value}"
    node, path = config, "config"
    for part in dotted_key.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            return f"{argument}: {path} is a value of type {type(node).__name__} ({node!r}), not a group of keys."
        if part not in node:
            close = difflib.get_close_matches(part, list(node.keys()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{argument}: {path} has no key {part!r}{hint}; its keys are {', '.join(sorted(node.keys()))}."
        node, path = node[part], f"{path}.{part}"
    if error is None or path not in str(error):
        return None
    reason = _first_line(error).split(": ", 1)[-1]
    return f"{argument}: {reason}; {path} is of type {type(node).__name__} (default {node!r})."


def _config_arguments(argv, name="config"):
    """`--config`'s value and the `(key, value)` of each `--config.key=value` (or `--config.key value`) in argv."""
    config_arg, overrides = None, []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        flag, has_value, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or not (flag == name or flag.startswith(name + ".")):
            continue
        if not has_value:
            value = args[i + 1] if i + 1 < len(args) else ""
        if flag == name:
            config_arg = value
        else:
            overrides.append((flag[len(name) + 1:], value))
    return config_arg, overrides


def _load_config_file(path, args):
    """The file's `get_config(*args)`, loaded as ml_collections' config flag does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ssl_jax_cli_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def _first_line(error):
    """An exception's (or a message's) first non-empty line; KeyError's repr quotes are dropped."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): stopped early with everything saved; run the same command again


class PreemptionNotice:
    """Whether training should save and stop now: SIGTERM or SIGINT reached this process (one process), or, on
    several processes, JAX's preemption sync point says every process has reached the same agreed step.

    Use as a context manager around the loop and ask `reached(step)` after every step (cheap: a flag, or JAX's
    local view of its background protocol). On several processes JAX's preemption service owns SIGTERM (it
    propagates the notice to every process and picks the step), so no handler is installed there and SIGINT
    keeps its default. A second SIGINT while a save is under way interrupts at once.
    """

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        import signal
        import threading

        import jax

        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return self  # JAX's service owns SIGTERM; Python only lets the main thread install handlers
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        import signal

        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def reached(self, step):
        """True at the step to save at: at once after a signal here; on several processes, the agreed step."""
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() > 1:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signal_name = self.signal_name or "a preemption notice"
                    return True
            except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
                pass
            return False
        return self.signal_name is not None
