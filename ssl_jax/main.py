"""Command line: `python -m ssl_jax.main --config=configs/simclr_cifar.py --workdir=DIR [--config.a.b=v ...]`.

Thin on purpose: parses flags, sets up the process (XLA CPU options, multi-host), and calls the library.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging

from ssl_jax import cli
from ssl_jax import cpu_tuning
from ssl_jax import preemption

FLAGS = flags.FLAGS
cli.define_config_flag("Config file, e.g. configs/simclr_cifar.py or configs/simclr_cifar.py:smoke.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, the exported encoder and eval.json.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host: TPU pods, SLURM, or the "
                  "coordinator flags below).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for multi-process runs.")
flags.DEFINE_integer("process_id", None, "This process's index, for multi-process runs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    cpu_tuning.configure_xla_cpu(config.xla_cpu_flags)
    if FLAGS.distributed or FLAGS.coordinator_address:
        from ssl_jax import sharding

        sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from ssl_jax import train  # imports jax's backend-dependent pieces after the XLA options are set

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO (and raises the level on import)

    try:
        cpu_tuning.configure_cpu_allocator(config.cpu_allocator)
        train.train_and_evaluate(config, FLAGS.workdir)
    except (ValueError, train.data.DataError) as e:
        cli.exit_with_error(e)
    except (train.TrainingDiverged, train.checkpoint.CheckpointError) as e:
        cli.exit_with_error(e, status=1)
    except train.Preempted:
        sys.exit(preemption.PREEMPTED_EXIT_STATUS)  # train logged the checkpoint it saved


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cli.run_cli(main)
