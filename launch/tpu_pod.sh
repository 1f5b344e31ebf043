#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM or TPU VM pod slice: the same command on every worker (host), joined by
# jax.distributed (python -m ssl_jax.main ... --distributed detects the pod from the TPU metadata).
#
# Usage (on your own machine, with gcloud authenticated and the TPU VM created):
#
#   launch/tpu_pod.sh [OPTIONS] TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...] [-- OTHER ssl_jax.main FLAGS]
#
#   # copy this checkout to every worker, install, run (WORKDIR: a shared path, see below)
#   launch/tpu_pod.sh my-tpu us-central2-b configs/simclr_cifar.py /mnt/shared/runs/simclr
#   # or clone a repository on every worker instead of copying the checkout
#   launch/tpu_pod.sh --repo https://github.com/OWNER/ssl_jax --ref main my-tpu us-central2-b \
#       configs/byol_cifar.py /mnt/shared/runs/byol --config.batch_size=1024
#   # run in the background (survives a dropped ssh); log in ~/ssl_jax_run.log on each worker
#   launch/tpu_pod.sh --detach my-tpu us-central2-b configs/simclr_cifar.py /mnt/shared/runs/simclr
#   # print the gcloud commands only
#   launch/tpu_pod.sh --dry_run my-tpu us-central2-b configs/simclr_cifar.py /mnt/shared/runs/simclr
#   # ImageNet (streamed): prepared TFDS imagenet2012 (array_record) on a disk mounted read-only on every worker,
#   # or an image folder DIR/train/<wnid>/*.JPEG + DIR/val/<wnid>/*.JPEG with --config.data.path=DIR
#   launch/tpu_pod.sh my-tpu us-central2-b configs/byol_imagenet.py /mnt/shared/runs/byol_in \
#       --config.data.tfds_data_dir=/mnt/disks/imagenet/tfds
#   launch/tpu_pod.sh my-tpu us-central2-b configs/byol_imagenet.py:in100 /mnt/shared/runs/byol_in100 \
#       --config.data.path=/mnt/disks/imagenet
#
# Steps, each one `gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all --command=...`:
#   1. code: this checkout (tracked and untracked, non-ignored files) is packed and copied to every worker with
#      `gcloud compute tpus tpu-vm scp --worker=all`, or, with --repo, cloned there; it goes to ~/ssl_jax
#      (--remote_dir), which the launcher owns and replaces each time;
#   2. install on every worker: cd ~/ssl_jax && python3 -m pip install -e . "jax[tpu]";
#   3. check that WORKDIR is the same directory on every worker (worker 0 writes a marker, all must see it);
#   4. run on every worker: cd ~/ssl_jax && python3 -m ssl_jax.main --config=CONFIG --workdir=WORKDIR --distributed
#      Process 0 prints the progress; the others print little.
#
# Options:
#   --project P       gcloud project (default: gcloud's configured one)
#   --repo URL        git clone URL for the workers instead of copying this checkout
#   --ref REF         branch or tag to clone with --repo (default: the repository's default branch)
#   --remote_dir D    code directory on the workers, relative to the home directory (default: ssl_jax)
#   --python PY       interpreter on the workers (default: python3). If pip refuses to install into the
#                     system Python (externally-managed-environment), make a venv on every worker
#                     (--command="python3 -m venv ~/venv") and pass --python '~/venv/bin/python' (quoted)
#   --skip_install    reuse the code and packages already on the workers (steps 1-2 skipped)
#   --detach          start the run with nohup and return; follow it with
#                     gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=0 --command="tail -f ~/ssl_jax_run.log"
#   --dry_run         print the commands, run nothing
#   -h, --help        this text
#
# Expects:
#   - a TPU VM (single host such as v4-8/v5e-8, or a pod slice such as v4-32 with several workers) in ZONE;
#   - CONFIG relative to the repository root (configs/*.py, optionally :smoke);
#   - WORKDIR: an absolute path that is the SAME directory on every worker. Orbax checkpoints are written
#     cooperatively by all hosts and must land in one place every host can write; logs, eval.json and the
#     encoder are written there too. Use a Filestore/NFS mount, or a GCS bucket mounted with Cloud Storage FUSE
#     on every worker (the path must not be gs://...: the library writes through the local filesystem), e.g.
#       gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all --command="sudo mkdir -p /mnt/gcs && \
#         sudo chown \$USER /mnt/gcs && gcsfuse --implicit-dirs --rename-dir-limit=100000 BUCKET /mnt/gcs"
#     (gcsfuse installed on the workers), then WORKDIR=/mnt/gcs/runs/NAME. On a single-host TPU VM a local path works.
#   - the data: each worker loads CIFAR itself (downloaded into ~/.cache/ssl_jax when online, or
#     --config.data.path=PATH present on every worker, or --config.data.tfds_data_dir).
#     ImageNet, ImageNet-100 (configs/*_imagenet.py) and STL-10 are streamed, never downloaded: each worker reads
#     its share of every batch, so EVERY worker needs the whole data set at the same path: a persistent disk
#     attached read-only to all workers and mounted at the same path (e.g. /mnt/disks/imagenet), Filestore, or a
#     local copy on each worker. gcsfuse is slow for 1.28M small JPEGs (prefer TFDS array_record files there, or a
#     local copy). Prepare a folder (val/ sorted into class folders, e.g. with valprep.sh) or
#     `tfds build imagenet2012 --data_dir=DIR --file_format=array_record` with ILSVRC2012_img_train.tar and
#     ILSVRC2012_img_val.tar in DIR/downloads/manual/; ImageNet-100 needs a folder. The data are checked when
#     ssl_jax.main starts on each worker. Decoding threads per worker: --config.data.workers (default 8; one
#     process per worker feeds all its chips). launch/README.md, "ImageNet-class data (streamed)".
#   - config.batch_size divisible by the total number of TPU devices (else the run stops at start).
# Resuming: run the same command again with the same WORKDIR (add --skip_install if nothing changed).
# Stopping a detached run: gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all \
#     --command="pkill -f ssl_jax.main"   (a leftover process keeps the TPU busy for the next run).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "tpu_pod.sh: error: $*" >&2; exit 2; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROJECT="" REPO_URL="" REF="" REMOTE_DIR="ssl_jax" PY="python3" SKIP_INSTALL=0 DETACH=0 DRY_RUN=0
POSITIONAL=() EXTRA=()
while (($#)); do
  case "$1" in
    --project|--repo|--ref|--remote_dir|--python)
      [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
      case "$1" in
        --project) PROJECT="$2" ;; --repo) REPO_URL="$2" ;; --ref) REF="$2" ;;
        --remote_dir) REMOTE_DIR="$2" ;; --python) PY="$2" ;;
      esac
      shift ;;
    --project=*) PROJECT="${1#*=}" ;;
    --repo=*) REPO_URL="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
    --python=*) PY="${1#*=}" ;;
    --skip_install) SKIP_INSTALL=1 ;;
    --detach) DETACH=1 ;;
    --dry_run|--dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --config.*) EXTRA+=("$1") ;;
    --) shift; EXTRA+=("$@"); break ;;
    -*) die "unknown option $1 (config overrides look like --config.batch_size=1024; put other ssl_jax.main flags after --)" ;;
    *) POSITIONAL+=("$1") ;;
  esac
  shift
done

USAGE="usage: tpu_pod.sh [OPTIONS] TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]; -h for help"
names=(TPU_NAME ZONE CONFIG WORKDIR)
for ((i = ${#POSITIONAL[@]}; i < 4; i++)); do
  die "missing ${names[i]} ($USAGE)"
done
((${#POSITIONAL[@]} == 4)) || die "unexpected arguments: ${POSITIONAL[*]:4} ($USAGE)"
TPU_NAME="${POSITIONAL[0]}" ZONE="${POSITIONAL[1]}" CONFIG="${POSITIONAL[2]}" WORKDIR="${POSITIONAL[3]}"

case "$WORKDIR" in
  gs://*) die "WORKDIR=$WORKDIR: gs:// paths are not supported (the library writes through the local filesystem). Mount the bucket on every worker with Cloud Storage FUSE (gcsfuse) and pass the mounted path, or use a Filestore/NFS path; see -h" ;;
  /*) ;;
  *) die "WORKDIR must be an absolute path that is the same directory on every worker (got '$WORKDIR')" ;;
esac
[[ "$REMOTE_DIR" =~ ^[A-Za-z0-9._][A-Za-z0-9._/-]*$ && "$REMOTE_DIR" != "." && "$REMOTE_DIR" != ".." ]] ||
  die "--remote_dir must be a plain directory name relative to the home directory (got '$REMOTE_DIR')"
[[ "$CONFIG" != /* ]] || die "CONFIG is relative to the repository root on the workers, e.g. configs/simclr_cifar.py (got '$CONFIG')"
if [[ -z "$REPO_URL" && ! -f "$REPO_ROOT/${CONFIG%%:*}" ]]; then
  die "config file ${CONFIG%%:*} not found in $REPO_ROOT (CONFIG is relative to the repository root); see configs/*.py"
fi
[[ -z "$REF" || -n "$REPO_URL" ]] || die "--ref only applies with --repo"
if ((!DRY_RUN)); then
  command -v gcloud >/dev/null 2>&1 || die "gcloud not found: install the Google Cloud CLI and run 'gcloud auth login'"
fi

q() { printf '%q' "$1"; }
qpath() { if [[ "$1" == "~/"* ]]; then printf '~/%q' "${1#\~/}"; else q "$1"; fi; }  # keeps a leading ~/
PYQ="$(qpath "$PY")"
GCLOUD=(gcloud compute tpus tpu-vm)
TARGET=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && TARGET+=(--project="$PROJECT")

run() {  # prints, then runs unless --dry_run
  printf '+'; printf ' %q' "$@"; echo
  ((DRY_RUN)) || "$@"
}
on_workers() {  # on_workers WORKER REMOTE_COMMAND
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${TARGET[@]}" --worker="$1" --command="$2"
}

# ---- 1-2. Code and packages on every worker ----------------------------------------------------------------
if ((!SKIP_INSTALL)); then
  if [[ -n "$REPO_URL" ]]; then
    echo "== Cloning $REPO_URL${REF:+ ($REF)} into ~/$REMOTE_DIR on every worker"
    clone="rm -rf $(q "$REMOTE_DIR.tmp") && git clone -q --depth 1 ${REF:+--branch $(q "$REF") }$(q "$REPO_URL") $(q "$REMOTE_DIR.tmp")"
    clone+=" && rm -rf $(q "$REMOTE_DIR") && mv $(q "$REMOTE_DIR.tmp") $(q "$REMOTE_DIR")"
    on_workers all "set -e; $clone"
  else
    echo "== Copying $REPO_ROOT to ~/$REMOTE_DIR on every worker"
    archive="/tmp/ssl_jax_src.tar.gz"
    if ((!DRY_RUN)); then
      archive="$(mktemp -d)/ssl_jax_src.tar.gz"
      trap 'rm -rf "$(dirname "$archive")"' EXIT
      if git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard |
          xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
          tar -czf "$archive" --null -T -)
      else
        tar -czf "$archive" -C "$REPO_ROOT" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ .
      fi
      echo "packed $(du -h "$archive" | cut -f1) into $archive"
    fi
    run "${GCLOUD[@]}" scp "$archive" "$TPU_NAME:ssl_jax_src.tar.gz" "${TARGET[@]}" --worker=all
    on_workers all "set -e; rm -rf $(q "$REMOTE_DIR") && mkdir -p $(q "$REMOTE_DIR") && tar -xzf ssl_jax_src.tar.gz -C $(q "$REMOTE_DIR") && rm -f ssl_jax_src.tar.gz"
  fi
  echo "== Installing ssl_jax and jax[tpu] on every worker"
  on_workers all "set -e; cd $(q "$REMOTE_DIR") && $PYQ -m pip install -q -e . 'jax[tpu]' && $PYQ -c 'import jax, ssl_jax; print(\"jax\", jax.__version__, \"ssl_jax\", ssl_jax.__version__)'"
fi

# ---- 3. WORKDIR shared by all workers? -----------------------------------------------------------------------
MARKER="$WORKDIR/.tpu_pod_check_$(date +%s)_$RANDOM"
echo "== Checking that $WORKDIR is shared by all workers"
on_workers 0 "mkdir -p $(q "$WORKDIR") && touch $(q "$MARKER")"
on_workers all "test -f $(q "$MARKER") || { echo \"\$(hostname): $(q "$WORKDIR") is not the directory worker 0 sees: WORKDIR must be on a filesystem shared by all workers (NFS/Filestore, gcsfuse)\" >&2; exit 1; }"

# ---- 4. Run on every worker -----------------------------------------------------------------------------------
main=(-m ssl_jax.main --config="$CONFIG" --workdir="$WORKDIR" --distributed ${EXTRA[@]+"${EXTRA[@]}"})
main_str="$PYQ $(printf '%q ' "${main[@]}")"
cmd="rm -f $(q "$MARKER"); cd $(q "$REMOTE_DIR") && "
if ((DETACH)); then
  cmd+="setsid nohup $main_str> ~/ssl_jax_run.log 2>&1 < /dev/null & echo \"\$(hostname): started, log in ~/ssl_jax_run.log\""
else
  cmd+="exec $main_str"
fi
echo "== Running on every worker: $main_str"
on_workers all "$cmd"
if ((DETACH)); then
  echo "Started. Follow: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE${PROJECT:+ --project=$PROJECT} --worker=0 --command=\"tail -f ~/ssl_jax_run.log\""
else
  echo "Done; results in $WORKDIR (eval.json, loss.png, encoder/)."
fi
