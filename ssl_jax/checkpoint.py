"""Checkpoints with orbax: the whole train state every N steps (keep the last k), and the encoder for reuse.

The state is saved as its flax state dict (nested dicts of arrays), so any method's slots (EMA target, loss
state, probe) round-trip without orbax needing to know the dataclass. Every process calls `save`; orbax writes
cooperatively on several hosts.
"""
import json
import os

import flax
import jax
import orbax.checkpoint as ocp

ENCODER_CONFIG_FILE = "encoder_config.json"


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` for `TrainState`s."""

    def __init__(self, directory, save_every_steps, keep=2):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(1, save_every_steps),
                                               create=True, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, force=False):
        """Saves when `step` is on the interval (or `force`); asynchronous, finished by `wait`/`close`."""
        state_dict = flax.serialization.to_state_dict(state)
        return self.manager.save(int(step), args=ocp.args.StandardSave(state_dict), force=force)

    def restore(self, template_state, step=None):
        """The state saved at `step` (default the latest), with the shapes, dtypes and shardings of the template."""
        step = self.latest_step() if step is None else step
        template = flax.serialization.to_state_dict(template_state)
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
        return flax.serialization.from_state_dict(template_state, restored)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def export_encoder(directory, params, batch_stats, model_config):
    """Writes the backbone's variables and the settings needed to rebuild it to `directory`."""
    directory = os.path.abspath(directory)
    variables = {"params": params["backbone"], "batch_stats": batch_stats.get("backbone", {})}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, "variables"), variables, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        keys = ("name", "width", "stem")
        with open(os.path.join(directory, ENCODER_CONFIG_FILE), "w") as f:
            json.dump({k: model_config[k] for k in keys}, f, indent=2)


def load_encoder(directory, dtype="float32"):
    """Loads an exported encoder: returns `(encode, variables)`, `encode(variables, images) -> features`.

    `images` are float images normalised as in training (`ssl_jax.augment.normalize` of values in [0, 1]).
    """
    from ssl_jax import models  # models import flax.linen; kept local so checkpoint I/O stays light

    directory = os.path.abspath(directory)
    config_path = os.path.join(directory, ENCODER_CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {directory} is not an encoder exported by "
                                "ssl_jax.checkpoint.export_encoder (look for WORKDIR/encoder).")
    with open(config_path) as f:
        cfg = json.load(f)
    backbone = models.make_backbone(cfg["name"], width=cfg["width"], stem=cfg["stem"],
                                    dtype=models.parse_dtype(dtype))
    variables = ocp.StandardCheckpointer().restore(os.path.join(directory, "variables"))

    def encode(variables, images):
        return backbone.apply(variables, images, train=False).astype("float32")

    return encode, variables
