"""Checkpoints with orbax: the whole train state every N steps (keep the last k), and the encoder for reuse.

The state is saved as its flax state dict (nested dicts of arrays), so any method's slots (EMA target, loss
state, probe) round-trip without orbax needing to know the dataclass; its arrays go to orbax packed into one flat
buffer per dtype (`pack`), since orbax's work grows with the number of arrays, not their bytes. Every process
calls `save`; the state is replicated, so each holds the same buffers. A save costs the training loop only a copy
of the state on its devices: the host copy, the check, the packing and orbax's own work run on a writer thread
(docs/benchmarks.md, "Checkpoints and evaluation in the loop").

Packing drops the leaves' names, so every checkpoint also records each leaf's path, shape and dtype (`leaf_specs`)
and the config that wrote it, in orbax's step metadata (`_CHECKPOINT_METADATA`, a few KB). `restore` compares them
with the template's and refuses a checkpoint of another state (`StateMismatch`) even when its sizes per dtype agree;
`describe` (or `python -m ssl_jax.checkpoint DIR`) lists a checkpoint's named arrays.
"""
import concurrent.futures
import contextlib
import json
import os
import socket

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl_jax import errors
from ssl_jax import sharding

ENCODER_CONFIG_FILE = "encoder_config.json"


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointError(Exception):
    """A checkpoint could not be written or read; the message says what to do."""


class StateMismatch(CheckpointError):
    """The checkpoint holds another state than the template (other leaves, shapes or dtypes): written by another
    config or another version of the code. Not a damaged checkpoint: `restore_latest_readable` raises it."""


class StateRefused(Exception):
    """`save`'s check refused the state at `step` (`reason`, e.g. non-finite values): nothing was written."""

    def __init__(self, step, reason):
        super().__init__(f"the state at step {step} was not saved: {reason}")
        self.step = step
        self.reason = reason


def device_copy(tree):
    """A copy of every jax.Array in `tree` on the devices it lives on (numpy leaves copied on the host): the
    caller may then donate or change the originals. Asynchronous, and compiles nothing."""
    leaves, treedef = jax.tree.flatten(tree)
    on_devices = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)]
    arrays = [leaves[i] for i in on_devices]
    copies = dict(zip(on_devices, jax.device_put(arrays, [x.sharding for x in arrays], may_alias=False)))
    return treedef.unflatten([copies[i] if i in copies else np.array(x, copy=True) for i, x in enumerate(leaves)])


PACKED_PREFIX = "packed_"  # a packed checkpoint's keys: packed_float32, packed_int32, ...


def _packed_key(dtype):
    return PACKED_PREFIX + np.dtype(dtype).name


def pack(host_tree):
    """The arrays of `host_tree` as one flat buffer per dtype, in `jax.tree.flatten` order: `{'packed_float32':
    ..., ...}`. `unpack` with a template of the same structure inverts it. One buffer costs orbax a fraction of the CPU
    time of many small arrays (docs/benchmarks.md, "Checkpoints and evaluation in the loop")."""
    groups = {}
    for leaf in jax.tree.leaves(host_tree):
        leaf = np.asarray(leaf)
        groups.setdefault(_packed_key(leaf.dtype), []).append(leaf.reshape(-1))
    return {key: np.concatenate(parts) for key, parts in groups.items()}


def _packed_sizes(template):
    sizes = {}
    for leaf in jax.tree.leaves(template):
        key = _packed_key(leaf.dtype)
        sizes[key] = sizes.get(key, 0) + int(np.prod(leaf.shape, dtype=np.int64))
    return sizes


def leaf_specs(tree):
    """`[(path, shape, dtype), ...]` of `tree`'s leaves in `jax.tree.flatten` order (the order `pack` writes):
    path as `jax.tree_util.keystr` (e.g. "['params']['conv']['kernel']"), shape a tuple, dtype its numpy name."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(path), tuple(int(n) for n in np.shape(leaf)), np.dtype(leaf.dtype).name)
            for path, leaf in leaves]


SPECS_KEY, CONFIG_KEY = "leaves", "config"  # the step metadata's keys (orbax custom_metadata)
SHOWN_DIFFERENCES = 3  # a mismatch names this many differing leaves


def _specs_from_json(saved):
    return [(path, tuple(shape), dtype) for path, shape, dtype in saved]


def _format_spec(spec):
    return "absent" if spec is None else f"{spec[0]} {spec[1]}"


def spec_differences(saved, expected):
    """`[(path, saved (shape, dtype) or None, expected (shape, dtype) or None), ...]` for each leaf that differs,
    in the checkpoint's order, then the template's leaves the checkpoint lacks; [] when they agree leaf for leaf
    (an order that differs with the same leaves counts: `pack` relies on it)."""
    saved_by_path = {path: (shape, dtype) for path, shape, dtype in saved}
    expected_by_path = {path: (shape, dtype) for path, shape, dtype in expected}
    differences = [(path, spec, expected_by_path.get(path)) for path, *_ in saved
                   for spec in [saved_by_path[path]] if expected_by_path.get(path) != spec]
    differences += [(path, None, spec) for path, spec in expected_by_path.items() if path not in saved_by_path]
    if not differences and [p for p, *_ in saved] != [p for p, *_ in expected]:
        differences = [(p, saved_by_path[p], expected_by_path[p]) for (p, *_), (q, *_) in zip(saved, expected)
                       if p != q]
    return differences


def config_summary(config_json):
    """A few words naming the config in `config_json` (method, model, width, batch), or None."""
    if not config_json:
        return None
    try:
        config = json.loads(config_json)
        model = config.get("model", {})
        return (f"method={config.get('method')} model={model.get('name')} width={model.get('width')} "
                f"batch_size={config.get('batch_size')}")
    except (ValueError, AttributeError):
        return config_json[:200]


def mismatch_message(step, directory, differences, config_json):
    """One line: the first differing leaves (saved vs expected), the config that wrote the checkpoint, what to do."""
    shown = "; ".join(f"{path}: saved {_format_spec(saved)}, this run's state {_format_spec(expected)}"
                      for path, saved, expected in differences[:SHOWN_DIFFERENCES])
    more = (f" (and {len(differences) - SHOWN_DIFFERENCES} more)" if len(differences) > SHOWN_DIFFERENCES else "")
    summary = config_summary(config_json)
    written = f"; it was written by the config {summary}" if summary else ""
    return (f"the checkpoint at step {step} in {directory} holds another state than this run's "
            f"(differing leaves: {len(differences)}: {shown}{more}){written}. Resume it with the config (and code) "
            "that wrote it, or pass another --workdir to start this config afresh.")


def unpack(packed, template):
    """`template`'s structure with its leaves cut from `packed` (see `pack`): numpy arrays, or jax.Arrays with the
    template leaf's sharding where it has one."""
    leaves, treedef = jax.tree.flatten(template)
    offsets = dict.fromkeys(packed, 0)
    out = []
    for leaf in leaves:
        key, size = _packed_key(leaf.dtype), int(np.prod(leaf.shape, dtype=np.int64))
        value = np.asarray(packed[key][offsets[key]:offsets[key] + size]).reshape(leaf.shape)
        offsets[key] += size
        if isinstance(leaf, jax.Array):
            value = jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda index, v=value: v[index])
        out.append(value)
    return treedef.unflatten(out)


UNREADABLE_SUFFIX = ".unreadable"  # a skipped checkpoint's directory is renamed STEP.unreadable (orbax ignores it)


def check_writable(directory):
    """Creates `directory` and writes a file in it; raises CheckpointError at start if either fails.

    The file's name is this process's own: the processes of a multi-host run probe the same directory at once.
    """
    probe = os.path.join(directory, f".write_test.{socket.gethostname()}.{os.getpid()}")
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

    def __init__(self, directory, save_every_steps, keep=2, config_json=None):
        """`config_json`: the run's config as JSON (`config.to_json()`), recorded with every checkpoint so that a
        mismatch at restore can name the config that wrote it; None records none."""
        self.directory = os.path.abspath(directory)
        self.config_json = config_json
        check_writable(self.directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(1, save_every_steps),
                                               create=True, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=ocp.StandardCheckpointHandler())
        self.saving_step = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._pending = None  # the Future of the save handed to the writer thread

    def latest_step(self):
        return self.manager.latest_step()

    def all_steps(self):
        """The saved steps, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def save(self, step, state, force=False, check=None):
        """Saves when `step` is on the interval (or `force`), without waiting: the state is copied on its devices
        and the writer thread fetches it, passes it to `check` (host arrays -> None, or why not to save: then
        nothing is written and `StateRefused` is raised by the next `save`, `poll`, `wait` or `close`) and hands
        it to orbax. Waits only for a previous save still in flight."""
        self.wait()
        snapshot = device_copy(flax.serialization.to_state_dict(state))
        self.saving_step = int(step)
        self._pending = self._writer.submit(self._write, int(step), snapshot, force, check)

    def _write(self, step, state_dict, force, check):
        host_state = sharding.local_copy(state_dict, copy=False)
        reason = check(host_state) if check else None
        if reason:
            raise StateRefused(step, reason)
        with self._save_errors():
            self.manager.save(step, args=ocp.args.StandardSave(pack(host_state)), force=force,
                              custom_metadata={SPECS_KEY: leaf_specs(host_state), CONFIG_KEY: self.config_json})

    def poll(self):
        """Raises the error of a save that has finished with one (`StateRefused`, `CheckpointError`); never waits."""
        if self._pending is not None and self._pending.done():
            self._finish_pending()

    def _finish_pending(self):
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def restore(self, template_state, step=None):
        """The state saved at `step` (default the latest), with the shapes, dtypes and shardings of the template.

        Raises `StateMismatch` unless the checkpoint's leaves (path, shape, dtype) are the template's. Packed
        checkpoints written before the leaves were recorded restore when their sizes per dtype agree (the only check
        they allow; the names cannot be checked), as do the unpacked ones written before packing (orbax checks
        each array)."""
        step = self.latest_step() if step is None else step
        template = flax.serialization.to_state_dict(template_state)
        metadata = self.manager.item_metadata(step)
        if metadata and all(key.startswith(PACKED_PREFIX) for key in metadata.keys()):
            self._check_packed(step, {key: int(np.prod(metadata[key].shape)) for key in metadata.keys()}, template)
            empty = {key: np.zeros(size, np.dtype(key[len(PACKED_PREFIX):]))
                     for key, size in _packed_sizes(template).items()}
            restored = unpack(self.manager.restore(step, args=ocp.args.StandardRestore(empty)), template)
        else:  # written before packing: one orbax array per leaf
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
        return flax.serialization.from_state_dict(template_state, restored)

    def _check_packed(self, step, saved_sizes, template):
        """Raises `StateMismatch` unless the packed checkpoint at `step` was written from a state like `template`:
        leaf for leaf where it records its leaves, else by the sizes per dtype."""
        recorded = self.manager.metadata(step).custom_metadata or {}
        if recorded.get(SPECS_KEY) is not None:
            differences = spec_differences(_specs_from_json(recorded[SPECS_KEY]), leaf_specs(template))
            if differences:
                raise StateMismatch(mismatch_message(step, self.directory, differences, recorded.get(CONFIG_KEY)))
        elif saved_sizes != _packed_sizes(template):
            raise StateMismatch(f"the checkpoint at step {step} holds {saved_sizes} values but this run's state has "
                                f"{_packed_sizes(template)}: it was written by another config (a different model or "
                                "method). Resume it with the config that wrote it, or pass another --workdir.")

    def restore_latest_readable(self, template_state, check=None):
        """`(state, step, skipped)`: the newest checkpoint that restores (and passes `check(state)`, which returns
        None or why the state is unusable), or `(None, None, skipped)`. `skipped` lists `(step, reason)` for each
        newer one passed over (see `set_aside`). A checkpoint of another state raises `StateMismatch`: it is the
        wrong workdir or config, not a damaged file, and nothing is set aside."""
        skipped = []
        for step in self.all_steps():
            try:
                state = self.restore(template_state, step)
                reason = check(state) if check else None
            except StateMismatch:
                raise  # not damage: every checkpoint here was written from another state
            except Exception as e:  # noqa: BLE001 -- whatever a damaged checkpoint raises, the next one is tried
                state, reason = None, f"{type(e).__name__}: {errors.first_line(e)}"
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
        """Waits for the save in flight to be written; raises its error."""
        self._finish_pending()
        with self._save_errors():
            self.manager.wait_until_finished()

    def close(self):
        try:
            self.wait()
        finally:
            self._writer.shutdown()
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
                                  f"({type(e).__name__}: {errors.first_line(e)}); {intact}. Free disk space (or pass "
                                  "another --workdir) and run the same command again.") from e



def _open_read_only(directory):
    """A read-only CheckpointManager on `directory`, or on `directory`/checkpoints for a run's workdir."""
    from ssl_jax import run_files

    directory = os.path.abspath(directory)
    nested = os.path.join(directory, run_files.CHECKPOINT_DIR)
    directory = nested if os.path.isdir(nested) else directory
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    return ocp.CheckpointManager(directory, options=options, item_handlers=ocp.StandardCheckpointHandler())


def describe(directory, step=None):
    """`(step, [(path, shape, dtype), ...], config_json or None)` of the checkpoint at `step` (default the latest)
    in `directory` (a checkpoint directory or a run's workdir): its named arrays as `leaf_specs` gives them, and the
    config that wrote it. Reads metadata only. A packed checkpoint written before the leaves were recorded lists
    its packed buffers (`packed_float32`, ...); one written before packing lists its arrays."""
    manager = _open_read_only(directory)
    try:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise CheckpointError(f"no checkpoint at step {step} in {manager.directory} (steps: "
                                  f"{sorted(manager.all_steps())}); pass a checkpoint directory or a run's workdir.")
        recorded = manager.metadata(step).custom_metadata or {}
        if recorded.get(SPECS_KEY) is not None:
            return step, _specs_from_json(recorded[SPECS_KEY]), recorded.get(CONFIG_KEY)
        tree = manager.item_metadata(step)
        return step, leaf_specs(dict(tree.items()) if hasattr(tree, "items") else tree), None
    finally:
        manager.close()


def main(argv):
    """`python -m ssl_jax.checkpoint DIR [STEP]`: prints the checkpoint's step, the config that wrote it and one
    line per named array (path, shape, dtype)."""
    if len(argv) not in (2, 3):
        raise SystemExit("usage: python -m ssl_jax.checkpoint DIR [STEP]  (DIR: a workdir or its checkpoints/)")
    step, specs, config_json = describe(argv[1], int(argv[2]) if len(argv) == 3 else None)
    print(f"step {step}; written by config: {config_summary(config_json) or 'not recorded'}")
    for path, shape, dtype in specs:
        print(f"{path} {shape} {dtype}")


def export_encoder(directory, params, batch_stats, model_config, pixel_stats=None):
    """Writes the backbone's variables and the settings needed to rebuild it to `directory`: ENCODER_CONFIG_FILE
    holds `models.backbone_settings` (name, width and stem for a ResNet; name, patch size, pooling, position
    embedding and depth for a ViT) and, given `pixel_stats`, the per-channel `pixel_mean` and `pixel_std` its
    inputs were normalised with in training (`encoder_pixel_stats` reads them back)."""
    from ssl_jax import models  # see load_encoder

    directory = os.path.abspath(directory)
    variables = {"params": params["backbone"], "batch_stats": batch_stats.get("backbone", {})}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, "variables"), variables, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        with open(os.path.join(directory, ENCODER_CONFIG_FILE), "w") as f:
            settings = models.backbone_settings(model_config)
            if pixel_stats is not None:
                settings.update(pixel_mean=list(pixel_stats[0]), pixel_std=list(pixel_stats[1]))
            json.dump(settings, f, indent=2)


def encoder_pixel_stats(directory):
    """(mean, std) per channel that the exported encoder in `directory` was trained on (`augment.normalize`'s
    `stats`): as recorded by `export_encoder`, or CIFAR-10's for an encoder written before they were recorded
    (every run then normalised with CIFAR-10's)."""
    from ssl_jax import augment  # see load_encoder

    with open(os.path.join(os.path.abspath(directory), ENCODER_CONFIG_FILE)) as f:
        cfg = json.load(f)
    if "pixel_mean" not in cfg:
        return augment.PIXEL_STATS["cifar10"]
    return tuple(float(v) for v in cfg["pixel_mean"]), tuple(float(v) for v in cfg["pixel_std"])


def load_encoder(directory, dtype="float32"):
    """Loads an exported encoder: returns `(encode, variables)`, `encode(variables, images) -> features`.

    `images` are float images normalised as in training: `ssl_jax.augment.normalize(x, encoder_pixel_stats(
    directory))` of values x in [0, 1]. Files written before ViTs, with only name, width and stem, still load:
    missing settings take their defaults.
    """
    from ssl_jax import models  # models import flax.linen; kept local so checkpoint I/O stays light

    directory = os.path.abspath(directory)
    config_path = os.path.join(directory, ENCODER_CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {directory} is not an encoder exported by "
                                "ssl_jax.checkpoint.export_encoder (look for WORKDIR/encoder).")
    with open(config_path) as f:
        cfg = json.load(f)
    backbone = models.make_backbone(dtype=models.parse_dtype(dtype), **models.backbone_settings(cfg))
    variables = ocp.StandardCheckpointer().restore(os.path.join(directory, "variables"))

    def encode(variables, images):
        return backbone.apply(variables, images, train=False).astype("float32")

    return encode, variables


if __name__ == "__main__":
    import sys

    try:
        main(sys.argv)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
