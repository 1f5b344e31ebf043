"""The sweep command: many training runs over method x epochs x batch size (or any config key), and one report.

    python -m ssl_jax.sweep run    --sweep=configs/sweeps/simclr_vs_byol.py:cpu --workdir=DIR [--config.KEY=VALUE ...]
    python -m ssl_jax.sweep list   --sweep=... --workdir=DIR [--config.KEY=VALUE ...]
    python -m ssl_jax.sweep report --sweep=... --workdir=DIR

A sweep file (`configs/sweeps/*.py`, `get_config(arg)`) names grids of axes; every combination is a cell, trained
and evaluated by `python -m ssl_jax.main` in `DIR/<cell>/` (its own process: the same code path, and a crash or
out-of-memory ends that cell only). `run` skips cells that have `eval.json`, resumes the others from their
checkpoints, keeps going past a failed cell and exits non-zero at the end if any failed; then it writes the report:
`DIR/results.csv`, `DIR/results.md` (ours beside the published figures the sweep gives, and the random-init
baseline) and `DIR/accuracy_vs_<axis>.png`. `--config.KEY=VALUE` arguments go to every cell. The work is done by
`sweep_cells` (what to run), `sweep_runner` (running it) and `sweep_report` (the report); docs/sweeps.md.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ssl_jax import cli
from ssl_jax import preemption
from ssl_jax import sweep_cells
from ssl_jax import sweep_report
from ssl_jax import sweep_runner

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
                sweep_cells.load_config_file(arg.split("=", 1)[1])
            except Exception as e:  # noqa: BLE001 -- the sweep file's own message names the mistake
                return f"{arg}: {str(e).strip().splitlines()[0]}"
    return None


def run_command(command, sweep, extra_args):
    """`list`, `report` or `run` (which ends with a report); returns the exit status: 0, 1 when a cell failed,
    75 (preemption.PREEMPTED_EXIT_STATUS) when the sweep was stopped by a signal: run the same command again."""
    if command == "list":
        cells = sweep_cells.expand(sweep)
        for cell in cells:
            sweep_cells.cell_config(sweep, cell, extra_args)  # a mistake fails here, before any command is printed
        for cell in cells:
            print(sweep_cells.cell_command(sweep, cell, FLAGS.workdir, extra_args, FLAGS.python))
        return 0
    if command == "report":
        sweep_report.report(sweep, FLAGS.workdir)
        return 0
    cells = None if FLAGS.cells is None else {int(v) if v.isdigit() else v for v in FLAGS.cells}
    failures, stopped = sweep_runner.run(sweep, FLAGS.workdir, extra_args, cells,
                                         print_fn=lambda line: print(line, flush=True))
    if cells is None and not stopped:
        sweep_report.report(sweep, FLAGS.workdir)
    if failures:
        print(f"error: {len(failures)} cell(s) did not finish; the same command runs them again (finished cells "
              "are skipped, interrupted ones resume):", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
    return preemption.PREEMPTED_EXIT_STATUS if stopped else 1 if failures else 0


if __name__ == "__main__":
    _define_flags()
    config_args, sys.argv = split_config_args(sys.argv)
    if sweep_argument_problem(sys.argv):
        cli.exit_with_error(sweep_argument_problem(sys.argv))
    cli.run_cli(lambda argv: main(argv, config_args), user_errors=(ValueError,))
