"""Loads (downloads, decodes and caches) the dataset of a config once, before several processes start.

    python launch/prefetch_data.py --config=configs/simclr_cifar.py [--config.data.path=...] [other main.py flags]

Takes the same flags as `python -m ssl_jax.main` (flags other than --config and its overrides are ignored), so a
launcher can pass its command line through unchanged. Used by launch/multi_gpu.sh --processes and
launch/slurm.sbatch so that N processes do not download CIFAR N times at once, and so that missing data fails
once, early, with the library's message. A streamed data set (ImageNet, STL-10: `streaming.py`) is only checked:
its folder is scanned (or its TFDS files opened), so a missing or malformed one fails here. Imports no JAX for
CIFAR (the streaming reader's grain may import it).
"""
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, as for ssl_jax.main.")


def main(argv):
    flags.FLAGS(argv, known_only=True)
    config = _CONFIG.value
    if config is None:
        sys.exit("error: --config=CONFIG is required")
    from ssl_jax import data

    try:
        dataset = data.load_configured(config.data)  # streamed (ImageNet, STL-10): scanned, nothing cached
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Data ready: {dataset.source}; {len(dataset.train)} train / {len(dataset.test)} test images.", flush=True)


if __name__ == "__main__":
    main(sys.argv)
