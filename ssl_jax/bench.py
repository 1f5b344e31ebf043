"""Benchmark: `python -m ssl_jax.bench --config=CONFIG [--config.x=y ...] [--steps=N] [--part=step]`.

Builds the trainer's own step (same config, network, augmentations on the device, sharding), compiles it outside
the timing, times `--steps` steps with the device synchronised after each, and prints one JSON line.
`--part=views` times the step without its augmentation, on views made beforehand (as reference steps such as
`torch_simclr_step.py` are timed), `--part=augment` the on-device augmentation alone and `--part=input` the host
input pipeline alone (host batch + transfer), so a bottleneck shows where it is. The data are random uint8
images of the configured size, so no data set is needed.

`--part=input --images=DIR [--generate=N] [--workers=N] [--rounds=R]` (no `--config` needed) times the streaming
image-folder pipeline instead: `input_bench`'s side-by-side run of ours (`image_folder.HostBatches`) against
torchvision's ImageFolder + RandomResizedCrop + DataLoader, two 224x224 crops per image, `--steps` timed batches
of `--input_batch` images per round after `--warmup`, rounds interleaved; torchvision is left out, with a note,
where torch is not installed. One JSON line: images/s and images/s per worker of each, and their ratio.
"""
import functools
import json
import statistics
import sys
import time

import numpy as np
from absl import app
from absl import flags

from ssl_jax import cli
from ssl_jax import cpu_tuning

FLAGS = flags.FLAGS
cli.define_config_flag("Config file, as for ssl_jax.main.")
flags.DEFINE_integer("steps", 10, "Timed steps (after the warm-up).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_enum("part", "step", ["step", "views", "augment", "input"],
                  "What to time: the train step, the step on ready views (without the augmentation), the "
                  "augmentation alone, or the host input pipeline alone.")
flags.DEFINE_integer("num_images", 0, "Size of the random data set (0: 4 global batches).")
flags.DEFINE_string("images", None, "With --part=input: an image folder (one sub-folder per class) to time the "
                    "streaming pipeline on, beside torchvision's loader, instead of the in-memory batches.")
flags.DEFINE_integer("generate", 0, "With --images: first write this many ImageNet-like 500x375 JPEGs there.")
flags.DEFINE_integer("workers", 2, "With --images: our decoding threads and torchvision's worker processes.")
flags.DEFINE_integer("input_batch", 64, "With --images: images per batch.")
flags.DEFINE_integer("rounds", 4, "With --images: rounds, each ours then torchvision's; medians reported.")
flags.DEFINE_enum("input_backend", "auto", ["auto", "pil", "opencv"], "With --images: our decoding backend.")

def random_dataset(config, num_images):
    from ssl_jax import data

    rng = np.random.default_rng(0)
    size = config.augment.view1.crop_size
    split = data.Split(rng.integers(0, 256, (num_images, size, size, 3), dtype=np.uint8),
                       rng.integers(0, 10, num_images).astype(np.int32))
    return data.Dataset(name=config.data.name, num_classes=10, train=split, test=split, source="random (bench)")


def time_calls(fn, steps, warmup):
    """Calls `fn()` (which must block until its result is ready) warmup + steps times; returns step seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _timed_loop(exp, state, step_fn, placed, steps, warmup):
    """`train.run_loop` over the placed batches in turn, each step waited for and timed; the step seconds after
    `warmup` steps."""
    import itertools

    import jax
    from ssl_jax import train

    ends = [time.perf_counter()]

    def wait_and_time(step, state, metrics):
        jax.block_until_ready(metrics)
        ends.append(time.perf_counter())

    train.run_loop(exp, state, 0, warmup + steps, step_fn, itertools.cycle(placed), hooks=(wait_and_time,))
    return [b - a for a, b in zip(ends[warmup:], ends[warmup + 1:])]


def xla_flops_of(compiled):
    """FLOPs of one device's program by XLA's cost analysis (None where the backend gives none). It depends on
    the backend: XLA's GPU analysis leaves out the convolutions (issue 15); `gflops_per_step` is `flops.py`'s."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not report costs
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and analysis.get("flops") else None


def flops_fields(model_flops, xla_flops, step_seconds, devices):
    """The record's FLOPs fields: `gflops_per_step`, `tflops_per_sec` and `mfu` from flops.py's count of the
    whole step on all devices (MFU against the devices' dense bf16 peak, None where none is listed, as on CPUs),
    and `xla_gflops_per_step`, XLA's cost analysis of the same step (backend-dependent; None where unavailable)."""
    from ssl_jax import flops

    if not model_flops:
        return {}
    peak = flops.peak_flops(devices[0])
    rate = model_flops / step_seconds
    return dict(gflops_per_step=round(model_flops / 1e9, 4), tflops_per_sec=round(rate / 1e12, 6),
                mfu=round(rate / (peak * len(devices)), 4) if peak else None,
                peak_tflops_per_device=peak / 1e12 if peak else None,
                xla_gflops_per_step=round(xla_flops / 1e9, 4) if xla_flops else None)


def peak_memory(devices):
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
    return max(peaks) if all(p is not None for p in peaks) and peaks else None


def bench_step(exp, steps, warmup, ready_views=False):
    """Compiles and times the full train step (with `ready_views`, the step without its augmentation, on views
    made beforehand); returns the step-specific fields."""
    import jax
    from ssl_jax import batches, flops, train

    state = exp.dp.put_state(train.initial_state(exp))
    step_fn = train.make_step_fn(exp, ready_views=ready_views)
    placed = [exp.dp.put_batch(batches.host_batch(exp.dataset.train, i, exp.config.batch_size, 0)) for i in range(2)]
    if ready_views:
        make_views = _mapped_augmentation(exp)
        placed = [{"views": make_views(b), "label": b["label"]} for b in placed]
        jax.block_until_ready(placed)
    model_flops = flops.count_flops(step_fn, state, placed[0]).total
    start = time.perf_counter()
    compiled = step_fn.lower(state, placed[0]).compile() if hasattr(step_fn, "lower") else None
    if compiled is None:  # pmap: compile by running once
        state, _ = step_fn(state, placed[0])
        jax.block_until_ready(state)
        compiled = step_fn
    compile_s = time.perf_counter() - start
    times = _timed_loop(exp, state, compiled, placed, steps, warmup)
    xla_flops = xla_flops_of(compiled) if exp.dp.mode == "shard_map" else None
    return dict(compile_s=compile_s, times=times, flops=model_flops,
                xla_flops=xla_flops * exp.dp.num_devices if xla_flops else None)


def _mapped_augmentation(exp):
    """The step's augmentation (every crop, normalised) as its own mapped, jitted function of a placed batch."""
    import jax
    from ssl_jax import train, train_step

    groups, key = train.crop_groups(exp.config), jax.random.key(0)
    return exp.dp.map_batch_fn(lambda batch: train_step.augmented_crops(key, batch, groups, exp.pixel_stats))


def bench_augment(exp, steps, warmup):
    import jax
    from ssl_jax import batches, flops

    fn = _mapped_augmentation(exp)
    batch = exp.dp.put_batch(batches.host_batch(exp.dataset.train, 0, exp.config.batch_size, 0))
    model_flops = flops.count_flops(fn, batch).total
    start = time.perf_counter()
    jax.block_until_ready(fn(batch))
    compile_s = time.perf_counter() - start
    times = time_calls(lambda: jax.block_until_ready(fn(batch)), steps, warmup)
    return dict(compile_s=compile_s, times=times, flops=model_flops, xla_flops=None)


def bench_input(exp, steps, warmup):
    import jax
    from ssl_jax import batches

    counter = iter(range(10**9))

    def one_batch():
        host = batches.host_batch(exp.dataset.train, next(counter), exp.config.batch_size, 0)
        jax.block_until_ready(exp.dp.put_batch(host))

    return dict(compile_s=0.0, times=time_calls(one_batch, steps, warmup), flops=None, xla_flops=None)


def run(config, steps=10, warmup=2, part="step", num_images=0):
    """Runs one benchmark and returns its JSON-ready record."""
    import jax
    from ssl_jax import train

    dataset = random_dataset(config, num_images or 4 * config.batch_size)
    exp = train.build_experiment(config, dataset)
    parts = {"step": bench_step, "views": functools.partial(bench_step, ready_views=True),
             "augment": bench_augment, "input": bench_input}
    result = parts[part](exp, steps, warmup)
    median = statistics.median(result["times"])
    devices = list(exp.dp.mesh.devices.flat)
    record = dict(
        part=part, method=config.method, model=config.model.name, width=config.model.width,
        batch_size=config.batch_size, devices=len(devices), device_kind=devices[0].device_kind,
        backend=jax.default_backend(), dtype=np.dtype(train.compute_dtype(config.model.dtype)).name,
        parallel=exp.dp.mode, compile_s=round(result["compile_s"], 3), step_time_ms=round(1000 * median, 3),
        step_time_ms_min=round(1000 * min(result["times"]), 3), steps=steps,
        images_per_sec=round(config.batch_size / median, 1),
        views_per_sec=round(2 * config.batch_size / median, 1))
    record.update(flops_fields(result["flops"], result["xla_flops"], median, devices))
    record["peak_memory_bytes"] = peak_memory(devices)
    record["xla_flags"] = " ".join(f for f in __import__("os").environ.get("XLA_FLAGS", "").split()
                                   if f.startswith("--xla_cpu")) or None
    return record


def bench_image_folder(steps, warmup):
    """`input_bench`'s comparison on the folder `--images` (generated first with `--generate`): its record, with
    part='input' and mode='image_folder'. Imports neither JAX nor the config."""
    from ssl_jax import data
    from ssl_jax import input_bench

    args = input_bench.parse_args([f"--images={FLAGS.images}", f"--generate={FLAGS.generate}",
                                   f"--workers={FLAGS.workers}", f"--batch={FLAGS.input_batch}",
                                   f"--batches={steps}", f"--warmup={warmup}", f"--rounds={FLAGS.rounds}",
                                   f"--backend={FLAGS.input_backend}"])
    try:
        return {"part": "input", "mode": "image_folder", **input_bench.compare(args)}
    except data.DataError as e:
        cli.exit_with_error(e)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.images is not None:
        if FLAGS.part != "input":
            raise app.UsageError(f"--images times the input pipeline: use it with --part=input, not {FLAGS.part}")
        print(json.dumps(bench_image_folder(FLAGS.steps, FLAGS.warmup)), flush=True)
        return
    if FLAGS.config is None:
        raise app.UsageError("--config is required (e.g. --config=configs/simclr_cifar.py), except with "
                             "--part=input --images=DIR")
    config = FLAGS.config
    cpu_tuning.configure_xla_cpu(config.xla_cpu_flags)
    try:
        allocator_tuned = cpu_tuning.configure_cpu_allocator(config.cpu_allocator)
        record = run(config, FLAGS.steps, FLAGS.warmup, FLAGS.part, FLAGS.num_images)
        record["cpu_allocator"] = "tuned" if allocator_tuned else "default"
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    cli.run_cli(main)
