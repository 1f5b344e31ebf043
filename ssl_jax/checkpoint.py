"""Checkpoints with orbax: the whole train state every N steps (keep the last k), and the encoder for reuse.

The state is saved as its flax state dict (nested dicts of arrays), so any method's slots (EMA target, loss
state, probe) round-trip without orbax needing to know the dataclass. Every process calls `save`; orbax writes
cooperatively on several hosts.
"""
import contextlib
import json
import os

import flax
import jax
import orbax.checkpoint as ocp

ENCODER_CONFIG_FILE = "encoder_config.json"


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointError(Exception):
    """A checkpoint could not be written or read; the message says what to do."""


UNREADABLE_SUFFIX = ".unreadable"  # a skipped checkpoint's directory is renamed STEP.unreadable (orbax ignores it)


def check_writable(directory):
    """Creates `directory` and writes a file in it; raises CheckpointError at start if either fails."""
    probe = os.path.join(directory, ".write_test")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"cannot write to {directory} ({type(e).__name__}: {e.strerror or e}); "
                              "pass a --workdir on a disk you can write to.") from e


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` for `TrainState`s.

    Orbax writes each step to a temporary directory and renames it when complete, so a save cut short (a
    kill, a full disk) never shows up as a step; a failed save raises CheckpointError naming the step that is
    still intact.
    """

    def __init__(self, directory, save_every_steps, keep=2):
        self.directory = os.path.abspath(directory)
        check_writable(self.directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(1, save_every_steps),
                                               create=True, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.saving_step = None

    def latest_step(self):
        return self.manager.latest_step()

    def all_steps(self):
        """The saved steps, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def save(self, step, state, force=False):
        """Saves when `step` is on the interval (or `force`); asynchronous, finished by `wait`/`close`."""
        self.wait()  # orbax waits for the previous save anyway; waiting here names the step if that one failed
        state_dict = flax.serialization.to_state_dict(state)
        self.saving_step = int(step)
        with self._save_errors():
            return self.manager.save(int(step), args=ocp.args.StandardSave(state_dict), force=force)

    def restore(self, template_state, step=None):
        """The state saved at `step` (default the latest), with the shapes, dtypes and shardings of the template."""
        step = self.latest_step() if step is None else step
        template = flax.serialization.to_state_dict(template_state)
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
        return flax.serialization.from_state_dict(template_state, restored)

    def restore_latest_readable(self, template_state, check=None):
        """`(state, step, skipped)`: the newest checkpoint that restores (and passes `check(state)`, which returns
        None or why the state is unusable), or `(None, None, skipped)`. `skipped` lists `(step, reason)` for each
        newer one passed over (see `set_aside`)."""
        skipped = []
        for step in self.all_steps():
            try:
                state = self.restore(template_state, step)
                reason = check(state) if check else None
            except Exception as e:  # noqa: BLE001 -- whatever a damaged checkpoint raises, the next one is tried
                state, reason = None, f"{type(e).__name__}: {_first_line(e)}"
            if reason is None:
                return state, step, skipped
            skipped.append((step, reason))
        return None, None, skipped

    def set_aside(self, steps):
        """Renames each step's directory STEP.unreadable: kept for inspection, ignored by orbax, step free again."""
        if jax.process_index() == 0:
            for step in steps:
                path = os.path.join(self.directory, str(step))
                os.replace(path, path + UNREADABLE_SUFFIX)
        self.manager.reload()

    def wait(self):
        with self._save_errors():
            self.manager.wait_until_finished()

    def close(self):
        self.wait()
        self.manager.close()

    @contextlib.contextmanager
    def _save_errors(self):
        """Turns an exception from an orbax save (or the wait for one) into a CheckpointError that names the step
        being written and the newest complete one."""
        try:
            yield
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 -- any failure to write is reported the same way
            complete = [s for s in self.all_steps() if s != self.saving_step]
            intact = f"the checkpoint at step {complete[0]} is intact" if complete else "no earlier checkpoint exists"
            raise CheckpointError(f"saving the checkpoint at step {self.saving_step} to {self.directory} failed "
                                  f"({type(e).__name__}: {_first_line(e)}); {intact}. Free disk space (or pass "
                                  "another --workdir) and run the same command again.") from e


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


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
