#!/usr/bin/env bash
# Pretraining on one machine with several NVIDIA GPUs.
#
# Usage (from the repository root, with ssl_jax installed: pip install -e ".[gpu]"):
#
#   launch/multi_gpu.sh [OPTIONS] CONFIG WORKDIR [--config.KEY=VALUE ...] [-- OTHER ssl_jax.main FLAGS]
#
#   launch/multi_gpu.sh configs/simclr_cifar.py /data/runs/simclr
#   launch/multi_gpu.sh configs/simclr_cifar.py:smoke /tmp/smoke --config.batch_size=128
#   CUDA_VISIBLE_DEVICES=2,3 launch/multi_gpu.sh configs/byol_cifar.py /data/runs/byol
#   launch/multi_gpu.sh --processes configs/simclr_cifar.py /data/runs/simclr
#   launch/multi_gpu.sh --processes --dry_run configs/simclr_cifar.py /data/runs/simclr
#   launch/multi_gpu.sh --processes configs/byol_imagenet.py:in100 /data/runs/byol_in100 \
#       --config.data.path=/data/imagenet --config.data.workers=14     # ImageNet-100 from an ImageNet folder
#
# Modes:
#   default      one process drives every visible GPU (simplest, and what JAX does best on one machine):
#                python -m ssl_jax.main --config=CONFIG --workdir=WORKDIR
#   --processes  one process per GPU on localhost, each pinned with CUDA_VISIBLE_DEVICES=<its GPU> and joined
#                with jax.distributed (--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i).
#                Waits for all; if one fails, stops the others and exits with its status. Output of process 0
#                goes to the terminal; every process also appends to WORKDIR/logs/process_<i>.log.
#
# Options:
#   --processes     one process per GPU (see above)
#   --gpus N        use the first N visible GPUs (default: all; see CUDA_VISIBLE_DEVICES)
#   --port P        coordinator port for --processes (default: a free port)
#   --python PY     interpreter (default: $PYTHON, else python, else python3)
#   --dry_run       print the commands, run nothing
#   -h, --help      this text
#
# Expects: an NVIDIA driver (nvidia-smi) and JAX with CUDA (pip install -U "jax[cuda12]"); CONFIG is a path
# relative to the current directory (configs/*.py, optionally with :smoke); the global batch size
# (config.batch_size) must be divisible by the number of GPUs, else the run stops at start with a message.
# ImageNet (configs/*_imagenet.py): --config.data.path=DIR with DIR/{train,val}/<wnid>/*.JPEG, or TFDS data; about
# 15-21 host cores per H200 (--config.data.workers); launch/README.md, "ImageNet-class data (streamed)".
# Resuming: run the same command again with the same WORKDIR.
#
# Environment:
#   CUDA_VISIBLE_DEVICES  restricts the GPUs used (e.g. 0,1); --gpus N then takes the first N of them.
#   JAX_PLATFORMS=cpu     testing without GPUs: skips the GPU checks; --gpus N is then the number of processes
#                         (each gets the CPU devices XLA gives it, 1 unless
#                         XLA_FLAGS=--xla_force_host_platform_device_count=K).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "multi_gpu.sh: error: $*" >&2; exit 2; }

PROCESSES=0 NUM_GPUS="" PORT="" DRY_RUN=0 PY="${PYTHON:-}"
CONFIG="" WORKDIR="" POSITIONAL=() EXTRA=()
while (($#)); do
  case "$1" in
    --processes) PROCESSES=1 ;;
    --gpus) [[ $# -ge 2 ]] || die "--gpus needs a number"; NUM_GPUS="$2"; shift ;;
    --gpus=*) NUM_GPUS="${1#*=}" ;;
    --port) [[ $# -ge 2 ]] || die "--port needs a number"; PORT="$2"; shift ;;
    --port=*) PORT="${1#*=}" ;;
    --python) [[ $# -ge 2 ]] || die "--python needs a path"; PY="$2"; shift ;;
    --python=*) PY="${1#*=}" ;;
    --dry_run|--dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --config.*) EXTRA+=("$1") ;;
    --) shift; EXTRA+=("$@"); break ;;
    -*) die "unknown option $1 (config overrides look like --config.batch_size=256; put other ssl_jax.main flags after --)" ;;
    *) POSITIONAL+=("$1") ;;
  esac
  shift
done
[[ -z "$NUM_GPUS" || "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer, got '$NUM_GPUS'"
[[ -z "$PORT" || "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$PORT'"
[[ -z "$CONFIG" && ${#POSITIONAL[@]} -gt 0 ]] && { CONFIG="${POSITIONAL[0]}"; POSITIONAL=("${POSITIONAL[@]:1}"); }
[[ -z "$WORKDIR" && ${#POSITIONAL[@]} -gt 0 ]] && { WORKDIR="${POSITIONAL[0]}"; POSITIONAL=("${POSITIONAL[@]:1}"); }
[[ ${#POSITIONAL[@]} -eq 0 ]] || die "unexpected arguments: ${POSITIONAL[*]} (usage: multi_gpu.sh [OPTIONS] CONFIG WORKDIR [--config.KEY=VALUE ...]; -h for help)"
[[ -n "$CONFIG" ]] || die "missing CONFIG, e.g. configs/simclr_cifar.py (usage: multi_gpu.sh [OPTIONS] CONFIG WORKDIR; -h for help)"
[[ -n "$WORKDIR" ]] || die "missing WORKDIR, the directory for checkpoints, logs and results (usage: multi_gpu.sh [OPTIONS] CONFIG WORKDIR)"
[[ -f "${CONFIG%%:*}" ]] || die "config file ${CONFIG%%:*} not found (paths are relative to $(pwd)); see configs/*.py"
if [[ -z "$PY" ]]; then
  if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || die "python interpreter '$PY' not found (set --python or PYTHON)"

# ---- Which GPUs ------------------------------------------------------------------------------------------
CPU_TEST=0
[[ "${JAX_PLATFORMS:-}" == "cpu" ]] && CPU_TEST=1
GPU_IDS=()
if ((CPU_TEST)); then
  n="${NUM_GPUS:-1}"
  for ((i = 0; i < n; i++)); do GPU_IDS+=("$i"); done
  echo "JAX_PLATFORMS=cpu: testing on CPU with $n process(es)/slot(s); no GPU checks."
else
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    [[ -n "$CUDA_VISIBLE_DEVICES" ]] || die "CUDA_VISIBLE_DEVICES is set but empty: no GPU is visible"
    IFS=',' read -r -a GPU_IDS <<< "$CUDA_VISIBLE_DEVICES"
  elif ((DRY_RUN)) && ! command -v nvidia-smi >/dev/null 2>&1; then
    n="${NUM_GPUS:-2}"
    echo "(dry run without nvidia-smi: assuming $n GPUs)"
    for ((i = 0; i < n; i++)); do GPU_IDS+=("$i"); done
  else
    command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: no NVIDIA driver on this machine"
    count="$(nvidia-smi -L | grep -c '^GPU ' || true)"
    ((count > 0)) || die "nvidia-smi -L lists no GPU"
    for ((i = 0; i < count; i++)); do GPU_IDS+=("$i"); done
  fi
  if [[ -n "$NUM_GPUS" ]]; then
    ((NUM_GPUS <= ${#GPU_IDS[@]})) || die "--gpus $NUM_GPUS but only ${#GPU_IDS[@]} GPU(s) visible (${GPU_IDS[*]})"
    GPU_IDS=("${GPU_IDS[@]:0:NUM_GPUS}")
  fi
fi
N=${#GPU_IDS[@]}
VISIBLE="$(IFS=,; echo "${GPU_IDS[*]}")"

show() { printf '%q ' "$@"; echo; }

# Fails early, with the fix, when the installed JAX has no CUDA support (it would otherwise train on the CPU).
check_jax_gpu() {
  ((CPU_TEST || DRY_RUN)) && return 0
  local out
  out="$(CUDA_VISIBLE_DEVICES="$VISIBLE" "$PY" -c \
    'import jax; print(jax.default_backend(), jax.local_device_count())' 2>/dev/null | tail -n 1)" ||
    die "'$PY -c \"import jax\"' failed; install ssl_jax first: pip install -e \".[gpu]\""
  local backend="${out%% *}" count="${out##* }"
  [[ "$backend" == "gpu" ]] || die "JAX sees no GPU (backend '$backend'); install CUDA JAX: $PY -m pip install -U \"jax[cuda12]\""
  [[ "$count" == "$N" ]] || echo "warning: JAX sees $count GPU(s), expected $N" >&2
}

# ---- Single process: all visible GPUs ----------------------------------------------------------------------
if ((!PROCESSES)); then
  cmd=("$PY" -m ssl_jax.main --config="$CONFIG" --workdir="$WORKDIR" ${EXTRA[@]+"${EXTRA[@]}"})
  echo "One process on $N device(s) [CUDA_VISIBLE_DEVICES=$VISIBLE]; config.batch_size must be divisible by $N."
  if ((DRY_RUN)); then
    show env CUDA_VISIBLE_DEVICES="$VISIBLE" "${cmd[@]}"
    exit 0
  fi
  check_jax_gpu
  export CUDA_VISIBLE_DEVICES="$VISIBLE"
  exec "${cmd[@]}"
fi

# ---- One process per GPU -----------------------------------------------------------------------------------
if [[ -z "$PORT" ]]; then
  PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
LOG_DIR="$WORKDIR/logs"
prefetch=("$PY" "$SCRIPT_DIR/prefetch_data.py" --config="$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"})
proc_cmd() {  # sets CMD to process $1's command line
  CMD=(env CUDA_VISIBLE_DEVICES="${GPU_IDS[$1]}" "$PY" -m ssl_jax.main --config="$CONFIG" --workdir="$WORKDIR"
       --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$1" ${EXTRA[@]+"${EXTRA[@]}"})
}
echo "$N processes, one per device [$VISIBLE], coordinator 127.0.0.1:$PORT; config.batch_size must be divisible by $N."
if ((DRY_RUN)); then
  show "${prefetch[@]}"
  for ((i = 0; i < N; i++)); do proc_cmd "$i"; echo "$(show "${CMD[@]}")>> $(printf %q "$LOG_DIR/process_$i.log") 2>&1 &"; done
  exit 0
fi
check_jax_gpu
echo "Loading the data once before starting the processes..."
"${prefetch[@]}" || die "the data could not be loaded (see above)"
mkdir -p "$LOG_DIR"

PIDS=()
stop_all() {  # TERM the processes this script started (by pid); KILL those left after 10 s (a process in
  local pid    # jax.distributed may treat TERM as a preemption notice and keep waiting for its peers)
  for pid in "${PIDS[@]}"; do [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 10); do
    local alive=0
    for pid in "${PIDS[@]}"; do [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 1
  done
  for pid in "${PIDS[@]}"; do [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'echo "interrupted: stopping the processes" >&2; stop_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  log="$LOG_DIR/process_$i.log"
  proc_cmd "$i"
  echo "=== $(date '+%F %T') $(show "${CMD[@]}")" >> "$log"
  echo "process $i: $(show "${CMD[@]}")"
  if ((i == 0)); then
    "${CMD[@]}" > >(tee -a "$log") 2>&1 &
  else
    "${CMD[@]}" >> "$log" 2>&1 &
  fi
  PIDS[i]=$!
done

STATUS=0 RUNNING=$N
while ((RUNNING > 0)); do
  for ((i = 0; i < N; i++)); do
    pid="${PIDS[i]}"
    [[ -n "$pid" ]] || continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    PIDS[i]=""
    RUNNING=$((RUNNING - 1))
    if ((rc != 0 && STATUS == 0)); then
      STATUS=$rc
      echo "process $i exited with status $rc; stopping the others. Its log: $LOG_DIR/process_$i.log" >&2
      ((i == 0)) || tail -n 25 "$LOG_DIR/process_$i.log" | sed "s/^/[process $i] /" >&2
      stop_all
    fi
  done
  ((RUNNING > 0)) && sleep 1
done
wait 2>/dev/null || true  # the tee of process 0
if ((STATUS == 0)); then
  echo "All $N processes finished; results in $WORKDIR (eval.json, loss.png, encoder/)."
fi
exit "$STATUS"
