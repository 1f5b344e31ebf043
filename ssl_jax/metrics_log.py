"""Progress lines, a JSON-lines metrics log, TensorBoard summaries and the loss-curve plot (process 0 only)."""
import json
import os
import time

from ssl_jax import run_files


def format_duration(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class MetricLogger:
    """Writes scalars to WORKDIR/metrics.jsonl and TensorBoard, and prints one progress line per call.

    Only the process with `active=True` (process 0) writes anything. The images/s of a progress line count training
    time only: the seconds the loop spent on checkpoints and evaluations (`exclude`) are left out and said beside it.
    """

    def __init__(self, workdir, total_steps, steps_per_epoch, global_batch_size, active=True, print_fn=None):
        self.workdir = workdir
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.global_batch_size = global_batch_size
        self.active = active
        self.print_fn = print_fn or (lambda line: print(line, flush=True))
        self._writer = None
        self._last = None  # (time, step) of the previous progress line
        self._excluded = {}  # seconds spent on other work since then, by what it was ("checkpoint", "eval")

    def _tensorboard(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter  # imported on first use: keeps start-up light
            self._writer = SummaryWriter(os.path.join(self.workdir, run_files.TENSORBOARD_DIR))
        return self._writer

    def start(self, step):
        self._last = (time.perf_counter(), step)
        self._excluded = {}

    def exclude(self, what, seconds):
        """Counts `seconds` of the current window as spent on `what`, not training."""
        self._excluded[what] = self._excluded.get(what, 0.0) + seconds

    def _train_rate(self, step):
        """Images/s of training since the previous progress line, the line's wall-clock seconds since then, and the
        excluded seconds by kind."""
        now = time.perf_counter()
        last_time, last_step = self._last or (now, step)
        excluded = self._excluded
        self.start(step)
        seconds = now - last_time - sum(excluded.values())
        return (step - last_step) * self.global_batch_size / max(seconds, 1e-9), now - last_time, excluded

    def write(self, step, scalars, prefix="train"):
        """Logs `scalars` (python floats) at `step`; for "train", returns the training images/s since the previous
        train call."""
        rate, window, excluded = self._train_rate(step) if prefix == "train" else (None, None, {})
        if not self.active:
            return rate
        record = {"step": int(step), "epoch": step / self.steps_per_epoch,
                  **{f"{prefix}/{k}": float(v) for k, v in scalars.items()}}
        if prefix == "train":
            record["train/images_per_sec"] = rate
            record["train/window_seconds"] = window
            record.update({f"train/{what}_seconds": seconds for what, seconds in excluded.items()})
        with open(os.path.join(self.workdir, run_files.METRICS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        for key, value in record.items():
            if key not in ("step", "epoch"):
                writer.add_scalar(key, value, step)
        writer.flush()
        if prefix == "train":
            self.print_fn(self.progress_line(step, scalars, rate, excluded))
        else:
            self.print_fn(f"[{prefix}] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
        return rate

    def progress_line(self, step, scalars, rate, excluded=None):
        """One line; with `excluded` seconds the rate is marked "train only" and each kind of pause is said."""
        eta = (self.total_steps - step) * self.global_batch_size / rate if rate > 0 else 0.0
        extra = "".join(f" | {k} {scalars[k]:.3f}" for k in ("probe_accuracy",) if k in scalars)
        pauses = "".join(f" | {what} {seconds:.2f} s" for what, seconds in (excluded or {}).items())
        return (f"step {step}/{self.total_steps} | epoch {step / self.steps_per_epoch:.2f} | "
                f"loss {scalars['loss']:.4f}{extra} | {rate:.0f} img/s{' (train only)' if pauses else ''}{pauses} | "
                f"ETA {format_duration(eta)}")

    def close(self):
        if self._writer is not None:
            self._writer.close()


def read_metrics(workdir):
    path = os.path.join(workdir, run_files.METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate(workdir, step):
    """Drops log records after `step`, so a resumed run does not log the steps it redoes twice."""
    path = os.path.join(workdir, run_files.METRICS_FILE)
    records = read_metrics(workdir)
    kept = [r for r in records if r["step"] <= step]
    if len(kept) == len(records):
        return
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(path + ".tmp", path)


def plot_loss(workdir, title=""):
    """Saves WORKDIR/loss.png: the training loss against the step, from the metrics log."""
    records = [r for r in read_metrics(workdir) if "train/loss" in r]
    if not records:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in records], [r["train/loss"] for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    path = os.path.join(workdir, run_files.LOSS_PLOT_FILE)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
