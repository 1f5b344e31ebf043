"""The names of the files and folders a run writes in its workdir, so every reader finds them by one name."""
CONFIG_FILE = "config.json"            # the run's full config (`python -m ssl_jax.evaluate --workdir` reads it back)
EVAL_FILE = "eval.json"                # kNN / linear results of the trained encoder (and of its random init)
FROZEN_EVAL_FILE = "eval_frozen.json"  # `python -m ssl_jax.evaluate`'s results for a saved encoder
METRICS_FILE = "metrics.jsonl"         # one JSON record per log line
LOSS_PLOT_FILE = "loss.png"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"         # orbax train-state checkpoints
ENCODER_DIR = "encoder"                # the exported backbone (`ssl_jax.checkpoint.load_encoder`)

