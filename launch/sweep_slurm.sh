#!/bin/bash
# A sweep on a SLURM cluster: one job array with one cell per array task (`python -m ssl_jax.sweep run --cells=I`,
# the same WORKDIR/<cell>/ layout, skipping and resuming as a local `run` does), then a report job once every
# task has ended (WORKDIR/results.csv, results.md, plots).
#
# Usage, from the repository root with the environment that has ssl_jax installed activated (SLURM passes it on):
#
#   launch/sweep_slurm.sh SWEEP WORKDIR [--config.KEY=VALUE ...]
#
#   launch/sweep_slurm.sh configs/sweeps/simclr_vs_byol.py /shared/sweeps/simclr_vs_byol \
#       --config.data.path=/shared/data/cifar-10-python.tar.gz
#   SBATCH_ARGS="--partition=gpu --time=4:00:00" MAX_PARALLEL=4 \
#       launch/sweep_slurm.sh configs/sweeps/all_methods.py /shared/sweeps/all_methods
#
# It loads the data once (launch/prefetch_data.py, with the first cell's settings) so the tasks do not all decode
# it at once, counts the cells (`python -m ssl_jax.sweep list`), and submits this file twice: as the array
# (0..cells-1, one GPU each; MAX_PARALLEL tasks at once if set) and as the report job (afterany: it runs even when
# a cell failed, and its table says which did). WORKDIR must be on a filesystem every node can write.
# Resuming: run the same command again: finished cells are skipped (their tasks end at once), interrupted ones
# resume from their checkpoints. A preempted task (SIGTERM) saves and exits 75; `SBATCH_ARGS=--requeue` lets SLURM
# restart it by itself. Environment: PYTHON (default python), SBATCH_ARGS, MAX_PARALLEL.
#
#SBATCH --job-name=ssl_jax_sweep
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

die() { echo "sweep_slurm.sh: error: $*" >&2; exit 2; }
[[ $# -ge 2 ]] || die "usage: launch/sweep_slurm.sh SWEEP WORKDIR [--config.KEY=VALUE ...]"
SWEEP="$1" WORKDIR="$2"
shift 2
cd "${SLURM_SUBMIT_DIR:-.}"
[[ -f launch/prefetch_data.py ]] || die "run it from the repository root (now in $(pwd))"
PY="${PYTHON:-python}"

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then      # one array task: one cell
  exec "$PY" -m ssl_jax.sweep run --sweep="$SWEEP" --workdir="$WORKDIR" --cells="$SLURM_ARRAY_TASK_ID" "$@"
fi
if [[ -n "${SSL_JAX_SWEEP_REPORT:-}" ]]; then     # the report job
  exec "$PY" -m ssl_jax.sweep report --sweep="$SWEEP" --workdir="$WORKDIR"
fi

# Submission (on the login node).
commands="$("$PY" -m ssl_jax.sweep list --sweep="$SWEEP" --workdir="$WORKDIR" "$@")"
cells=$(printf '%s\n' "$commands" | wc -l)
first="$(printf '%s\n' "$commands" | head -n 1)"
eval "\"\$PY\" launch/prefetch_data.py ${first#* -m ssl_jax.main }"  # `list` quotes its commands for the shell
mkdir -p "$WORKDIR"
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
array=$(sbatch --parsable ${SBATCH_ARGS:-} --array="0-$((cells - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}" \
  "$0" "$SWEEP" "$WORKDIR" "$@")
# shellcheck disable=SC2086
report=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterany:${array%%;*}" --gres=gpu:0 --time=0:30:00 \
  --job-name=ssl_jax_sweep_report --output="slurm-%x-%j.out" --export=ALL,SSL_JAX_SWEEP_REPORT=1 \
  "$0" "$SWEEP" "$WORKDIR" "$@")
echo "submitted: job array $array ($cells cells of $SWEEP, one per task) and report job $report -> $WORKDIR/results.md"
