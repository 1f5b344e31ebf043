"""Running a sweep's cells, each as its own `python -m ssl_jax.main` process: finished cells skipped, interrupted ones
resumed, a scheduler's SIGTERM passed on, output logged per cell, and the sweep's ETA fitted as it goes."""
import os
import shlex
import signal
import subprocess
import sys
import time

from ssl_jax import metrics_log
from ssl_jax import run_files
from ssl_jax import sweep_cells

LOG_FILE = "sweep.log"       # each cell's output, appended by every attempt
CIFAR_TRAIN_IMAGES = 50_000  # CIFAR-10 and CIFAR-100 train splits; only for the ETA of cells counted in epochs


def training_images(config):
    """Images a run trains on: steps x batch (epochs counted as CIFAR's 50,000 images; for the ETA only)."""
    if config.num_train_steps > 0:
        return config.num_train_steps * config.batch_size
    return config.num_epochs * CIFAR_TRAIN_IMAGES


def finished(celldir):
    return os.path.exists(os.path.join(celldir, run_files.EVAL_FILE))


class SweepClock:
    """The sweep's ETA from the cells run so far: seconds = overhead + images x time per image, fitted by least
    squares (with one cell size seen so far: that cell's time for every cell)."""

    def __init__(self):
        self.done = []  # (training images, seconds) per cell run

    def add(self, images, seconds):
        self.done.append((images, seconds))

    def fit(self):
        images, seconds = zip(*self.done)
        mean_images, mean_seconds = sum(images) / len(images), sum(seconds) / len(seconds)
        spread = sum((x - mean_images) ** 2 for x in images)
        if not spread:
            return mean_seconds, 0.0
        per_image = max(0.0, sum((x - mean_images) * (y - mean_seconds) for x, y in self.done) / spread)
        return max(0.0, mean_seconds - per_image * mean_images), per_image

    def eta(self, remaining_images):
        """`remaining_images`: the training images of each cell still to run."""
        if not self.done:
            return "unknown until a cell has run"
        overhead, per_image = self.fit()
        return metrics_log.format_duration(sum(overhead + per_image * n for n in remaining_images))


def run_cell(command, celldir, prefix, print_fn=print):
    """Runs one cell's shell command, its output appended to DIR/<cell>/sweep.log and echoed with `prefix`.

    A SIGTERM to the sweep (a scheduler's preemption) is passed on to the cell, which saves and exits 75; after a
    SIGTERM or Ctrl-C the sweep stops once the cell has. Returns (exit status, the last line of output, whether
    the sweep was told to stop)."""
    os.makedirs(celldir, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    last_line, terminated = "no output", []
    with open(os.path.join(celldir, LOG_FILE), "a") as log, subprocess.Popen(
            shlex.split(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        log.write(f"$ {command}\n")

        def stop(signum, frame):
            terminated.append(signum)
            if signum == signal.SIGTERM:  # Ctrl-C's SIGINT reaches the cell from the terminal by itself
                proc.send_signal(signum)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                print_fn(f"{prefix}{line.rstrip()}")
                last_line = line.strip() or last_line
            status = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return status, last_line, bool(terminated)


def run(sweep, workdir, extra_args=(), cells=None, print_fn=print):
    """Runs every cell (or those in `cells`, by index or name) that has no eval.json yet.

    Returns (descriptions of the cells that failed, whether the sweep was stopped before its end)."""
    workdir = os.path.abspath(workdir)
    all_cells = sweep_cells.expand(sweep)
    todo = [(i, c) for i, c in enumerate(all_cells) if cells is None or i in cells or c.name in cells]
    images = {c.name: training_images(sweep_cells.cell_config(sweep, c, extra_args)) for _, c in todo}
    clock, failures = SweepClock(), []
    for i, cell in todo:
        celldir = os.path.join(workdir, cell.name)
        tag = f"[{i + 1}/{len(all_cells)}] {cell.name}"
        if finished(celldir):
            print_fn(f"{tag}: finished before (eval.json), skipped")
            continue
        remaining = [images[c.name] for j, c in todo if j >= i and not finished(os.path.join(workdir, c.name))]
        state = "resuming" if os.path.isdir(os.path.join(celldir, run_files.CHECKPOINT_DIR)) else "starting"
        print_fn(f"{tag}: {state}; sweep ETA {clock.eta(remaining)}")
        start = time.perf_counter()
        command = sweep_cells.cell_command(sweep, cell, workdir, extra_args, python=sys.executable)
        status, last_line, terminated = run_cell(command, celldir, f"  {tag} | ", print_fn)
        seconds = time.perf_counter() - start
        if status == 0 and finished(celldir):
            clock.add(images[cell.name], seconds)
            print_fn(f"{tag}: done in {metrics_log.format_duration(seconds)}")
            continue
        failures.append(f"{cell.name} (exit status {status}): {last_line}")
        print_fn(f"{tag}: {'STOPPED' if terminated else 'FAILED'} with exit status {status}; its output is in "
                 f"{os.path.join(celldir, LOG_FILE)}")
        if terminated or status < 0 or status == 0:  # a signal (or a run that saved and stopped): the sweep stops
            return failures, True
    return failures, False
