"""A sweep's definition and its cells: sweep files (`configs/sweeps/*.py`), the cells a sweep expands to (every
combination of its grids' axes), and each cell's `python -m ssl_jax.main` command and config. docs/sweeps.md."""
import ast
import dataclasses
import itertools
import math
import os
import shlex

import ml_collections

from ssl_jax import cli
from ssl_jax import config_files

AXIS_ABBREVIATIONS = {"epochs": "ep", "batch_size": "bs"}

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
    """FILE.py[:arg]'s get_config(arg), as `--config=` and `--sweep=` load it."""
    path, _, arg = path_and_arg.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file; give a sweep file such as configs/sweeps/simclr_vs_byol.py.")
    return config_files.load_config_file(path, arg or None)


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
        unknown = [m for m in grid["method"] if m not in config_files.METHOD_CONFIGS]
        if unknown:
            raise ValueError(f"sweep method {unknown[0]!r} is not one of {', '.join(config_files.METHOD_CONFIGS)}; "
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
    path = config_files.method_config_path(method)
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
    problem = cli.config_problem(config_file(sweep, cell.method), settings)
    if problem:
        raise ValueError(f"cell {cell.name}: {problem}")
    config = load_config_file(config_file(sweep, cell.method))
    for key, value in settings:
        item = f"--config.{key}={value}"
        try:
            config_files.set_value(config, key, _literal(value))
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
