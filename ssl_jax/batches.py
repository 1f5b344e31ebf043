"""Which examples each step trains on: a seeded shuffle per epoch, the global batch of a step, and each process's
share of it, as host numpy arrays. A step's batch depends on the seed and the step only, so a resumed run and
any device or process count see the same examples in the same order."""
import functools

import numpy as np

from ssl_jax import data


def steps_per_epoch(num_examples, global_batch_size) -> int:
    """Full batches per epoch (the remainder is dropped)."""
    if global_batch_size <= 0:
        raise data.DataError(f"global_batch_size must be positive, got {global_batch_size}")
    return num_examples // global_batch_size


@functools.lru_cache(maxsize=4)
def _permutation(num_examples, seed, epoch):
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def batch_indices(num_examples, global_batch_size, seed, step) -> np.ndarray:
    """Example indices of global batch `step`: a fresh seeded permutation per epoch, remainder dropped."""
    per_epoch = steps_per_epoch(num_examples, global_batch_size)
    if per_epoch == 0:
        raise data.DataError(f"global_batch_size {global_batch_size} is bigger than the split ({num_examples} "
                        "examples); use a smaller batch size")
    if step < 0 or seed < 0:
        raise ValueError(f"step and seed must be >= 0, got step={step}, seed={seed}")
    epoch, i = divmod(int(step), per_epoch)
    perm = _permutation(int(num_examples), int(seed), epoch)
    return perm[i * global_batch_size:(i + 1) * global_batch_size].astype(np.int64)


def process_share(num_examples, global_batch_size, seed, step, process_index=0, process_count=1):
    """This process's part of global batch `step`: the examples' indices in the split (int64 [B / n]) and their
    positions in the global batch (int32; process i of n holds positions [i * B/n, (i+1) * B/n)), so the global
    batch is the processes' parts in process order."""
    if global_batch_size % process_count:
        raise data.DataError(f"global_batch_size {global_batch_size} is not divisible by the {process_count} "
                             "processes; pick a multiple of the process count")
    if not 0 <= process_index < process_count:
        raise data.DataError(f"process_index {process_index} is outside 0..{process_count - 1}")
    local = global_batch_size // process_count
    start = process_index * local
    indices = batch_indices(num_examples, global_batch_size, seed, step)[start:start + local]
    return indices, np.arange(start, start + local, dtype=np.int32)


def host_batch(split, step, global_batch_size, seed, process_index=0, process_count=1) -> dict:
    """This process's slice of global batch `step`: 'image', 'label', and 'global_index', each example's position
    in the global batch (its augmentation keys derive from it, so the device count does not change them)."""
    idx, positions = process_share(len(split.labels), global_batch_size, seed, step, process_index, process_count)
    return {"image": split.images[idx], "label": split.labels[idx], "global_index": positions}
