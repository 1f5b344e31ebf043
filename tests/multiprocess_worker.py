"""One process of a multi-process CPU run (started by test_multiprocess.py): trains, checkpoints, resumes.

    python multiprocess_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID WORKDIR OUT.npz
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


def main(coordinator, num_processes, process_id, workdir, out_path):
    num_processes, process_id = int(num_processes), int(process_id)
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    from ssl_jax import sharding
    from ssl_jax import train

    config = helpers.tiny_config(steps=2, batch_size=16, checkpoint_every_steps=1)
    dataset = helpers.synthetic_dataset(num_train=32)
    train.train(train.build_experiment(config, dataset), workdir, stop_after_steps=1)
    state = train.train(train.build_experiment(config, dataset), workdir)
    leaves = sharding.local_copy(jax.tree.leaves(state.params))
    np.savez(out_path, *leaves, step=int(sharding.local_copy(state.step)), devices=jax.device_count())


if __name__ == "__main__":
    main(*sys.argv[1:])
