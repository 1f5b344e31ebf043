#!/usr/bin/env bash
# Every method's own config on one machine, side by side: each trained and evaluated by `ssl_jax.main` in
# WORKDIR/<method>/ (its eval.json with the random-initialisation baseline), PARALLEL runs at a time (a GPU has
# room for several small CIFAR runs), then one markdown table of them all (WORKDIR/results.md).
#
#   launch/compare_methods.sh DATA WORKDIR [EPOCHS [PARALLEL]] [-- extra --config.x=y flags]
#   launch/compare_methods.sh ../shared/data/cifar10-jpeg.tar.gz /tmp/compare 15 3
#
# The README's GPU table was made this way (EPOCHS=15: warm-up 1.5 epochs, linear evaluation 30 epochs).
# METHODS (environment) picks a subset, e.g. METHODS="simclr tico"; by default every entry of the learning check
# (config_files.CHECKED_CONFIGS: each method's own config, and DINO on a ViT as dino_vit).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="$1"; WORKDIR="$2"; EPOCHS="${3:-15}"; PARALLEL="${4:-3}"
shift $(( $# < 4 ? $# : 4 ))
[ "${1:-}" = "--" ] && shift
METHODS="${METHODS:-$(python -c "from ssl_jax import config_files; print(' '.join(config_files.CHECKED_CONFIGS))")}"
mkdir -p "$WORKDIR"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share one GPU

# Decode the data once, so the parallel runs read the cache instead of decoding it each.
python -c "import sys; from ssl_jax import data; data.load_dataset('cifar10', path=sys.argv[1])" "$DATA"

run_one() {
  local method="$1"; shift
  local config
  config=$(python -c "import sys; from ssl_jax import config_files as c; print(c.CHECKED_CONFIGS[sys.argv[1]])" "$method")
  python -m ssl_jax.main --config="configs/${config}.py" --workdir="$WORKDIR/$method" \
    --config.data.path="$DATA" --config.num_epochs="$EPOCHS" \
    --config.optimizer.warmup_epochs="$(python -c "print($EPOCHS / 10)")" \
    --config.eval.linear_epochs=30 --config.log_every_steps=50 "$@" > "$WORKDIR/$method.log" 2>&1 \
    && echo "done: $method $(tail -n 1 "$WORKDIR/$method.log")" || echo "FAILED: $method (see $WORKDIR/$method.log)"
}

for method in $METHODS; do
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do sleep 1; done
  run_one "$method" "$@" &
done
wait
python -m ssl_jax.learning_check --report="$WORKDIR" | tee "$WORKDIR/results.md"
