"""Sweeps: many training runs over method x epochs x batch size (or any config key), and one report of them.

    python -m ssl_jax.sweep run    --sweep=configs/sweeps/simclr_vs_byol.py:cpu --workdir=DIR [--config.KEY=VALUE ...]
    python -m ssl_jax.sweep list   --sweep=... --workdir=DIR [--config.KEY=VALUE ...]
    python -m ssl_jax.sweep report --sweep=... --workdir=DIR

A sweep file (`configs/sweeps/*.py`, `get_config(arg)`) names grids of axes; every combination is a cell, trained
and evaluated by `python -m ssl_jax.main` in `DIR/<cell>/` (its own process: the same code path, and a crash or
out-of-memory ends that cell only). `run` skips cells that have `eval.json`, resumes the others from their
checkpoints, keeps going past a failed cell and exits non-zero at the end if any failed; then it writes the report:
`DIR/results.csv`, `DIR/results.md` (ours beside the published figures the sweep gives, and the random-init
baseline) and `DIR/accuracy_vs_<axis>.png`. `--config.KEY=VALUE` arguments go to every cell. docs/sweeps.md.
"""
import ast
import csv
import dataclasses
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from ssl_jax import learning_check
from ssl_jax import metrics_log
from ssl_jax import runtime

CONFIG_DIR = learning_check.CONFIG_DIR
EVAL_FILE = "eval.json"      # train.EVAL_FILE (not imported: train imports jax)
CONFIG_FILE = "config.json"  # train.CONFIG_FILE
LOG_FILE = "sweep.log"       # each cell's output, appended by every attempt
CIFAR_TRAIN_IMAGES = 50_000  # CIFAR-10 and CIFAR-100 train splits; only for the ETA of cells counted in epochs
AXIS_ABBREVIATIONS = {"epochs": "ep", "batch_size": "bs"}
METRICS = ("knn_top1", "linear_top1", "linear_top5")
PLOT_AXES = ("epochs", "batch_size")
RESULT_COLUMNS = ("cell", "method", "source", "epoch", "steps", "batch_size", *METRICS,
                  *(f"{m}_random_init" for m in METRICS), "published", "status")

EPOCHS_SOURCES = {
    "runs": "a separate run per epochs value (each with its own learning-rate schedule), as the seed studies did.",
    "one_run": "one run per line to the most epochs, its kNN evaluated during training at the smaller epochs "
               "(metrics.jsonl, config.eval.every_epochs; the learning rate there has not decayed to its end, and "
               "linear figures exist at the last epoch only).",
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the sweep: its directory name, method, nominal axis values and config overrides.

    `evaluated_epochs` is set when the epochs axis is read from this one run (`epochs_from='one_run'`): the epochs
    at which its kNN accuracy is recorded in metrics.jsonl (config.eval.every_epochs)."""
    name: str
    method: str
    values: tuple        # ((axis, nominal value), ...), the method excluded
    overrides: tuple     # ((config key, value), ...)
    evaluated_epochs: tuple = ()

    def value(self, axis):
        return dict(self.values).get(axis)


def base_sweep(name, description, grids, **fields):
    """A sweep file's starting point: each method's own config, the epochs axis in whole epochs, one run per
    epochs value; `fields` set the rest (see docs/sweeps.md for every field)."""
    sweep = ml_collections.ConfigDict(dict(
        name=name,
        description=description,
        note="",                     # printed under the description in results.md
        config_arg="",               # the method configs' variant ('smoke'), '' for their own recipe
        grids=list(grids),           # [dict(method=[...], epochs=[...], batch_size=[...], <config key>=[...])]
        overrides=[],                # "key=value" for every cell, before the cell's axes and the command line
        steps_per_epoch=0.0,         # 0: epochs are config.num_epochs; n > 0: a nominal epoch is n steps
        epochs_from="runs",          # 'runs': a run per epochs value; 'one_run': kNN during one run per line
        axis_labels=dict(epochs="pretraining epochs", batch_size="batch size"),
        published=[],                # dict(method, metric, value, source[, epochs, batch_size])
    ))
    sweep.update(fields)
    return sweep


def shrink_for_cpu(sweep, grids, steps_per_epoch, note, checkpoint_every_steps=20):
    """The `:cpu` variant: the methods' `:smoke` configs (width-8 ResNet-18, small heads, quick evaluation) on
    `grids`, `steps_per_epoch` steps per nominal epoch, a checkpoint mid-cell to resume from."""
    sweep.description += " `:cpu`: shrunk to a few minutes on 2 CPU cores."
    sweep.note = f"{sweep.note} `:cpu` variant: width-8 ResNet-18 (`:smoke` configs), {note}".strip()
    sweep.config_arg = "smoke"
    sweep.grids = grids
    sweep.overrides = [f"checkpoint_every_steps={checkpoint_every_steps}"]
    sweep.steps_per_epoch = steps_per_epoch
    return sweep


def unknown_variant(arg, sweep_file, known):
    return ValueError(f"Unknown sweep variant {arg!r}; known: {', '.join(map(repr, known))} "
                      f"(e.g. --sweep=configs/sweeps/{sweep_file}:{known[-1]}).")


def load_config_file(path_and_arg):
    """FILE.py[:arg]'s get_config(arg), as `--config=` and `--sweep=` load it. (learning_check.load_config joins
    its name to configs/, which leaves an absolute path as it is.)"""
    path, _, arg = path_and_arg.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file; give a sweep file such as configs/sweeps/simclr_vs_byol.py.")
    return learning_check.load_config(os.path.abspath(path)[:-len(".py")], arg or None)


def axis_order(sweep):
    """Every axis of the sweep except the method, in order of first appearance."""
    return list(dict.fromkeys(axis for grid in sweep.grids for axis in grid if axis != "method"))


def axis_overrides(sweep, axis, value):
    """The config settings a nominal axis value stands for (epochs set the training length, whatever the method
    config's variant set: `:smoke` trains a fixed number of steps)."""
    if axis == "epochs" and sweep.steps_per_epoch:
        return (("num_train_steps", max(1, round(value * sweep.steps_per_epoch))),)
    if axis == "epochs":
        return (("num_epochs", value), ("num_train_steps", -1))
    return ((axis, value),)


def cell_name(method, values):
    parts = [method]
    for axis, value in values:
        text = "x".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
        text = "".join(c if c.isalnum() or c in ".+-" else "-" for c in text)
        parts.append(AXIS_ABBREVIATIONS.get(axis, axis.split(".")[-1]) + text)
    return "_".join(parts)


def expand(sweep):
    """The sweep's cells, in order, each combination once (grids may share cells)."""
    if sweep.epochs_from not in EPOCHS_SOURCES:
        raise ValueError(f"epochs_from={sweep.epochs_from!r}: use 'runs' or 'one_run' (e.g. --sweep.epochs_from=runs).")
    axes = axis_order(sweep)
    cells = {}
    for grid in sweep.grids:
        unknown = [m for m in grid["method"] if m not in learning_check.METHOD_CONFIGS]
        if unknown:
            raise ValueError(f"sweep method {unknown[0]!r} is not one of {', '.join(learning_check.METHOD_CONFIGS)}; "
                             "fix the sweep file's grids.")
        grid_axes = [a for a in axes if a in grid]
        for method, *combo in itertools.product(grid["method"], *(grid[a] for a in grid_axes)):
            values = tuple(zip(grid_axes, combo))
            overrides = tuple(kv for axis, value in values for kv in axis_overrides(sweep, axis, value))
            cell = Cell(cell_name(method, values), method, values, overrides)
            cells.setdefault(cell.name, cell)
    cells = list(cells.values())
    return one_run_cells(sweep, cells) if sweep.epochs_from == "one_run" else cells


def one_run_cells(sweep, cells):
    """Cells that differ only in epochs become one run to the most epochs, kNN-evaluated every gcd epochs."""
    if sweep.steps_per_epoch:
        raise ValueError(f"epochs_from='one_run' needs whole epochs, but this sweep trains steps_per_epoch="
                         f"{sweep.steps_per_epoch} steps per nominal epoch (config.eval.every_epochs counts whole "
                         "epochs); use epochs_from='runs' for it.")
    groups = {}
    for cell in cells:
        rest = tuple((a, v) for a, v in cell.values if a != "epochs")
        groups.setdefault((cell.method, rest), []).append(cell)
    merged = []
    for (method, rest), group in groups.items():
        epochs = sorted({c.value("epochs") for c in group if c.value("epochs") is not None})
        if len(epochs) < 2:
            merged.extend(group)
            continue
        every = math.gcd(*epochs)
        values = (("epochs", epochs[-1]),) + rest
        name = cell_name(method, values).replace(f"ep{epochs[-1]}", f"ep{epochs[-1]}-every{every}", 1)
        overrides = tuple(kv for a, v in values for kv in axis_overrides(sweep, a, v))
        overrides += (("eval.every_epochs", every),)
        merged.append(Cell(name, method, values, overrides, tuple(epochs)))
    return merged


def config_file(sweep, method):
    path = os.path.join(CONFIG_DIR, learning_check.METHOD_CONFIGS[method] + ".py")
    return path + (f":{sweep.config_arg}" if sweep.config_arg else "")


def format_value(value):
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def cell_args(sweep, cell, workdir, extra_args=()):
    """`ssl_jax.main`'s arguments for a cell: its method's config file, DIR/<cell>, the sweep's overrides, the
    cell's axis values, then `extra_args` (so the command line wins)."""
    settings = [item.split("=", 1) for item in sweep.overrides] + list(cell.overrides)
    return ([f"--config={config_file(sweep, cell.method)}", f"--workdir={os.path.join(workdir, cell.name)}"]
            + [f"--config.{key}={format_value(value)}" for key, value in settings] + list(extra_args))


def cell_command(sweep, cell, workdir, extra_args=(), python="python"):
    """The shell command that trains and evaluates one cell (what `list` prints and `run` runs)."""
    args = cell_args(sweep, cell, os.path.abspath(workdir), extra_args)
    args[0] = "--config=" + os.path.relpath(args[0].split("=", 1)[1])
    return shlex.join([python, "-m", "ssl_jax.main", *args])


def cell_config(sweep, cell, extra_args=()):
    """The cell's full config as `ssl_jax.main` would build it (for the ETA and for checks before the run)."""
    settings = [item[len("--config."):].partition("=")[::2] for item in cell_args(sweep, cell, "", extra_args)[2:]]
    problem = runtime.config_problem(config_file(sweep, cell.method), settings)
    if problem:
        raise ValueError(f"cell {cell.name}: {problem}")
    config = load_config_file(config_file(sweep, cell.method))
    for key, value in settings:
        item = f"--config.{key}={value}"
        try:
            learning_check.set_value(config, key, _literal(value))
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"cell {cell.name}: {item} does not fit its config "
                             f"({type(e).__name__}: {e}); fix the sweep file or the argument.") from e
    return config


def _literal(text):
    """A Python literal as config_flags reads it (`(2048,2048)`, `0.5`), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def training_images(config):
    """Images a run trains on: steps x batch (epochs counted as CIFAR's 50,000 images; for the ETA only)."""
    if config.num_train_steps > 0:
        return config.num_train_steps * config.batch_size
    return config.num_epochs * CIFAR_TRAIN_IMAGES


def finished(celldir):
    return os.path.exists(os.path.join(celldir, EVAL_FILE))


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
    all_cells = expand(sweep)
    todo = [(i, c) for i, c in enumerate(all_cells) if cells is None or i in cells or c.name in cells]
    images = {c.name: training_images(cell_config(sweep, c, extra_args)) for _, c in todo}
    clock, failures = SweepClock(), []
    for i, cell in todo:
        celldir = os.path.join(workdir, cell.name)
        tag = f"[{i + 1}/{len(all_cells)}] {cell.name}"
        if finished(celldir):
            print_fn(f"{tag}: finished before (eval.json), skipped")
            continue
        remaining = [images[c.name] for j, c in todo if j >= i and not finished(os.path.join(workdir, c.name))]
        state = "resuming" if os.path.isdir(os.path.join(celldir, "checkpoints")) else "starting"
        print_fn(f"{tag}: {state}; sweep ETA {clock.eta(remaining)}")
        start = time.perf_counter()
        command = cell_command(sweep, cell, workdir, extra_args, python=sys.executable)
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


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------

def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def varying_axes(cells):
    """The axes that take more than one value over the cells: published figures are matched on these."""
    return [a for a in dict.fromkeys(a for c in cells for a, _ in c.values) if len({c.value(a) for c in cells}) > 1]


def matching_published(sweep, cells, method, values):
    """Published figures for `method` whose epochs / batch size agree with `values` on the axes that vary."""
    varying = varying_axes(cells)
    return [p for p in sweep.published if p["method"] == method
            and all(p.get(a) is None or a not in varying or p[a] == values.get(a) for a in PLOT_AXES)]


def describe_published(p):
    budget = ", ".join(text for key, text in (("epochs", f"{p.get('epochs')} ep"),
                                               ("batch_size", f"batch {p.get('batch_size')}")) if p.get(key))
    return f"{p['value']:.2f} {p['metric'].split('_')[0]} ({budget + '; ' if budget else ''}{p['source']})"


def cell_rows(sweep, cells, cell, workdir):
    """The report's rows for one cell: one, or with `evaluated_epochs` one per evaluated epoch (kNN from
    metrics.jsonl, the last row from eval.json)."""
    celldir = os.path.join(workdir, cell.name)
    results = _read_json(os.path.join(celldir, EVAL_FILE))
    config = _read_json(os.path.join(celldir, CONFIG_FILE)) or {}
    records = metrics_log.read_metrics(celldir)
    trained = [r for r in records if "train/loss" in r]
    base = dict(cell=cell.name, method=cell.method, **dict(cell.values))
    base.update(batch_size=config.get("batch_size", cell.value("batch_size")),
                status="finished" if results else ("interrupted" if trained else "not run"))
    if results:
        base.update({k: results.get(k) for k in RESULT_COLUMNS if k.endswith("_random_init")})
    final = dict(base, source="run", steps=results.get("step") if results else None,
                 epoch=trained[-1]["epoch"] if trained else None, **{m: (results or {}).get(m) for m in METRICS})
    rows = []
    for epoch in cell.evaluated_epochs[:-1]:
        knn = [r["eval/knn_top1"] for r in records if "eval/knn_top1" in r and abs(r["epoch"] - epoch) < 1e-6]
        row = dict(base, epochs=epoch, epoch=epoch, steps=None, source="one run, kNN during training",
                   **dict.fromkeys(METRICS))
        row["knn_top1"] = knn[-1] if knn else None
        rows.append(row)
    if cell.evaluated_epochs:
        final["source"] = "one run, final evaluation"
    rows.append(final)
    for row in rows:
        values = {a: row.get(a) for a in PLOT_AXES}
        row["published"] = "; ".join(map(describe_published, matching_published(sweep, cells, cell.method, values)))
    return rows


def gather(sweep, workdir):
    """Every cell's results as rows (dicts), in the sweep's order."""
    cells = expand(sweep)
    return [row for cell in cells for row in cell_rows(sweep, cells, cell, workdir)]


def _percent(value):
    return "" if value is None else f"{100 * value:.1f}"


def _trained(row):
    if row.get("epoch") is None:
        return ""
    steps = f"{row['steps']} steps = " if row.get("steps") else ""
    return f"{steps}{row['epoch']:.3g} ep"


def markdown_report(sweep, rows, axes, plots):
    """results.md: the sweep, where its epochs axis comes from, the table of cells and the published figures."""
    lines = [f"# Sweep `{sweep.name}`", "", sweep.description, ""]
    if sweep.note:
        lines += [sweep.note, ""]
    lines += [f"Epochs axis: {EPOCHS_SOURCES[sweep.epochs_from]}", ""]
    header = ["method", *axes, "trained", "kNN top-1 %", "linear top-1 / top-5 %", "random init kNN / linear %",
              "published", "status"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        random_init = (f"{_percent(r.get('knn_top1_random_init'))} / {_percent(r.get('linear_top1_random_init'))}"
                       if r.get("knn_top1_random_init") is not None else "")
        linear = (f"{_percent(r['linear_top1'])} / {_percent(r['linear_top5'])}"
                  if r.get("linear_top1") is not None else "")
        status = r["source"] if r["status"] == "finished" and r["source"] != "run" else r["status"]
        cells = [r["method"], *(str(r.get(a, "")) for a in axes), _trained(r), _percent(r.get("knn_top1")),
                 linear, random_init, r["published"], status]
        lines.append("| " + " | ".join(cells) + " |")
    if sweep.published:
        lines += ["", "Published figures (percent; epochs, batch size, kNN or linear top-1, source):", ""]
        lines += [f"- {p['method']}: {describe_published(p)}" for p in sweep.published]
    lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    return "\n".join(lines) + "\n"


def write_csv(path, rows, axes):
    columns = list(RESULT_COLUMNS[:2]) + list(axes) + [c for c in RESULT_COLUMNS[2:] if c not in axes]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _line_groups(rows, x_axis, axes):
    """Rows with a value on `x_axis`, grouped into lines by method and the other axes' values."""
    others = [a for a in axes if a != x_axis]
    groups = {}
    for r in rows:
        if r.get(x_axis) is not None:
            groups.setdefault((r["method"],) + tuple(r.get(a) for a in others), []).append(r)
    return others, groups


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _published_points(sweep, method, metric, x_axis, other_values):
    """(x, %) of the published figures for one plotted line; `other_values`: the line's other axes."""
    return sorted((p[x_axis], p["value"]) for p in sweep.published
                  if p["method"] == method and p["metric"] == metric and p.get(x_axis) is not None
                  and all(p.get(a) in (None, v) for a, v in other_values))


def _finish_panel(panel, sweep, rows, x_axis, metric):
    """Labels, the mean random-init accuracy (dotted), a log2 axis for batch sizes, the legend."""
    import matplotlib.ticker

    baseline = [100 * r[f"{metric}_random_init"] for r in rows if r.get(f"{metric}_random_init") is not None]
    if baseline:
        panel.axhline(sum(baseline) / len(baseline), color="grey", ls=":", label="random init (mean)")
    panel.set_xlabel(sweep.axis_labels.get(x_axis, x_axis))
    panel.set_ylabel(f"{metric.replace('_top1', '').replace('knn', 'kNN')} top-1 (%)")
    if x_axis == "batch_size":
        panel.set_xscale("log", base=2)
        panel.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    panel.grid(alpha=0.3)
    panel.legend(fontsize=7)


def plot_axis(sweep, rows, axes, x_axis, path):
    """accuracy_vs_<axis>.png: kNN and linear top-1 against the axis, one line per method (and per value of the
    other axes), the published figures dashed in the same colour."""
    others, groups = _line_groups(rows, x_axis, axes)
    groups = {k: v for k, v in groups.items() if len({r[x_axis] for r in v}) > 1}
    if not groups:
        return None
    plt = _pyplot()
    fig, panels = plt.subplots(1, 2, figsize=(11, 4.2))
    for (method, *other_values), group in groups.items():
        other_values = list(zip(others, other_values))
        label = method + "".join(f", {a} {v}" for a, v in other_values if len({r.get(a) for r in rows}) > 1)
        for panel, metric in zip(panels, ("knn_top1", "linear_top1")):
            points = sorted((r[x_axis], 100 * r[metric]) for r in group if r.get(metric) is not None)
            if not points:
                continue
            line, = panel.plot(*zip(*points), "o-", label=label)
            published = _published_points(sweep, method, metric, x_axis, other_values)
            if published:
                panel.plot(*zip(*published), "x--", color=line.get_color(), label=f"{label} (published)")
    for panel, metric in zip(panels, ("knn_top1", "linear_top1")):
        _finish_panel(panel, sweep, rows, x_axis, metric)
    fig.suptitle(f"{sweep.name}: accuracy vs {x_axis}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_methods(sweep, rows, path):
    """accuracy_by_method.png (when no epochs or batch axis varies): kNN and linear top-1 per cell as bars, each
    with its random-init accuracy (black line) and the method's published figures (red crosses)."""
    rows = [r for r in rows if r.get("knn_top1") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 4))
    for offset, metric, label in ((-0.2, "knn_top1", "kNN"), (0.2, "linear_top1", "linear")):
        x = [i + offset for i in range(len(rows))]
        ax.bar(x, [100 * (r.get(metric) or 0) for r in rows], 0.4, label=f"{label} top-1")
        ax.plot(x, [100 * (r.get(f"{metric}_random_init") or 0) for r in rows], "k_", ms=16,
                label=f"{label}, random init")
        published = [(xi, p["value"]) for xi, r in zip(x, rows) for p in sweep.published
                     if p["method"] == r["method"] and p["metric"] == metric]
        if published:
            ax.plot(*zip(*published), "rx", label=f"{label}, published (results.md)")
    ax.set_xticks(range(len(rows)), [r["cell"] for r in rows], rotation=20, fontsize=7)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(sweep.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(sweep, workdir, print_fn=print):
    """Writes DIR/results.csv, DIR/results.md and the plots from every cell's files; returns the markdown."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    rows = gather(sweep, workdir)
    axes = axis_order(sweep)
    write_csv(os.path.join(workdir, "results.csv"), rows, axes)
    plots = [plot_axis(sweep, rows, axes, a, os.path.join(workdir, f"accuracy_vs_{a}.png"))
             for a in PLOT_AXES if a in axes]
    plots = [p for p in plots if p] or [plot_methods(sweep, rows, os.path.join(workdir, "accuracy_by_method.png"))]
    plots = [p for p in plots if p]
    text = markdown_report(sweep, rows, axes, plots)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    missing = [r["cell"] for r in rows if r["status"] != "finished"]
    if missing:
        print_fn(f"{len(missing)} of {len(rows)} rows have no eval.json yet: {', '.join(missing)}")
    print_fn(text)
    print_fn(f"Report: {os.path.join(workdir, 'results.md')}, results.csv, "
             f"{', '.join(os.path.basename(p) for p in plots) or 'no plot (no results yet)'}")
    return text


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS
COMMANDS = ("run", "list", "report")


def _define_flags():
    config_flags.DEFINE_config_file("sweep", None, "Sweep file, e.g. configs/sweeps/simclr_vs_byol.py or ...py:cpu; "
                                    "its fields can be set as --sweep.FIELD=VALUE.", lock_config=True)
    flags.DEFINE_string("workdir", None, "The sweep's directory: DIR/<cell>/ per cell, DIR/results.* for all.")
    flags.DEFINE_list("cells", None, "run: only these cells, by 0-based index in `list` order or by name "
                      "(a SLURM array task runs one); no report is written then.")
    flags.DEFINE_string("python", "python", "list: the interpreter the printed commands call.")
    flags.mark_flags_as_required(["sweep", "workdir"])


def split_config_args(argv):
    """(`--config.KEY=VALUE` arguments, the rest): the first go to every cell's `ssl_jax.main`."""
    extra = [a for a in argv[1:] if a.startswith("--config.")]
    bad = [a for a in extra if "=" not in a]
    if bad:
        raise app.UsageError(f"{bad[0]}: write cell settings as --config.KEY=VALUE (with '=').")
    return extra, [argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")]


def main(argv, extra_args=()):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"Give one command: {' | '.join(COMMANDS)} (got {argv[1:]}).")
    sys.exit(run_command(argv[1], FLAGS.sweep, extra_args))


def sweep_argument_problem(argv):
    """One line on a `--sweep=FILE[:arg]` that does not load (no such file, an unknown variant), or None: checked
    before absl parses it, which would bury get_config's message in a traceback."""
    for arg in argv[1:]:
        if arg.startswith("--sweep="):
            try:
                load_config_file(arg.split("=", 1)[1])
            except Exception as e:  # noqa: BLE001 -- the sweep file's own message names the mistake
                return f"{arg}: {str(e).strip().splitlines()[0]}"
    return None


def run_command(command, sweep, extra_args):
    """`list`, `report` or `run` (which ends with a report); returns the exit status: 0, 1 when a cell failed,
    75 (runtime.PREEMPTED_EXIT_STATUS) when the sweep was stopped by a signal: run the same command again."""
    if command == "list":
        cells = expand(sweep)
        for cell in cells:
            cell_config(sweep, cell, extra_args)  # a mistake fails here, before any command is printed
        for cell in cells:
            print(cell_command(sweep, cell, FLAGS.workdir, extra_args, FLAGS.python))
        return 0
    if command == "report":
        report(sweep, FLAGS.workdir)
        return 0
    cells = None if FLAGS.cells is None else {int(v) if v.isdigit() else v for v in FLAGS.cells}
    failures, stopped = run(sweep, FLAGS.workdir, extra_args, cells, print_fn=lambda line: print(line, flush=True))
    if cells is None and not stopped:
        report(sweep, FLAGS.workdir)
    if failures:
        print(f"error: {len(failures)} cell(s) did not finish; the same command runs them again (finished cells "
              "are skipped, interrupted ones resume):", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
    return runtime.PREEMPTED_EXIT_STATUS if stopped else 1 if failures else 0


if __name__ == "__main__":
    _define_flags()
    config_args, sys.argv = split_config_args(sys.argv)
    if sweep_argument_problem(sys.argv):
        runtime.exit_with_error(sweep_argument_problem(sys.argv))
    runtime.run_cli(lambda argv: main(argv, config_args), user_errors=(ValueError,))
