"""One process of a multi-process CPU run (started by test_multiprocess.py): trains, checkpoints, resumes.

    python multiprocess_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID WORKDIR OUT.npz [JPEG_TREE]

With JPEG_TREE it trains on that folder data set (streamed, crops on the host) for one epoch, and OUT.npz also
records, per step read, the examples this process decoded (`reads_step`, `reads_index`).
"""
import os
import sys

from fast_compile import FAST_COMPILE_FLAGS

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 " + FAST_COMPILE_FLAGS
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers  # noqa: E402


def main(coordinator, num_processes, process_id, workdir, out_path, jpeg_tree=None):
    num_processes, process_id = int(num_processes), int(process_id)
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    from ssl_jax import sharding
    from ssl_jax import train

    if jpeg_tree is None:
        config = helpers.tiny_config(steps=2, batch_size=16, checkpoint_every_steps=1)
        dataset = helpers.synthetic_dataset(num_train=32)
    else:  # 48 images, batch 24: one epoch is 2 steps, stopped after the first and resumed in the middle
        config = helpers.tiny_config(steps=2, batch_size=24, checkpoint_every_steps=1, **{
            "data.name": "image_folder", "data.path": jpeg_tree, "data.workers": 2})
        dataset = None
    reads = _record_reads()
    train.train(train.build_experiment(config, dataset), workdir, stop_after_steps=1)
    state = train.train(train.build_experiment(config, dataset), workdir)
    leaves = sharding.local_copy(jax.tree.leaves(state.params))
    knn = -1.0
    if jpeg_tree is not None:  # the streamed evaluation, each process on its own devices
        knn = train.evaluate_state(train.build_experiment(config, dataset), state, linear=False)["knn_top1"]
    np.savez(out_path, *leaves, step=int(sharding.local_copy(state.step)), devices=jax.device_count(),
             reads_step=np.array([s for s, _ in reads], int), reads_index=np.array([i for _, i in reads], int),
             knn=knn)


def _record_reads():
    """[(step, indices of the examples this process decoded for it)], filled as image_folder reads batches."""
    from ssl_jax import image_folder

    reads, host_batch = [], image_folder.host_batch

    def recording_host_batch(source, groups, step, *args, **kwargs):
        batch = host_batch(source, groups, step, *args, **kwargs)
        reads.append((step, batch["index"].tolist()))
        return batch

    image_folder.host_batch = recording_host_batch
    return reads


if __name__ == "__main__":
    main(*sys.argv[1:])
