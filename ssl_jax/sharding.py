"""Devices and processes: multi-host start-up, the mesh and the mapped per-device step (`shard_map` or `pmap` over
the named axis 'batch'), placing state and batches on the devices and copying them back to the host.

The step function is written once, per device: it sees its slice of the global batch and the full (replicated)
train state, and talks to the other devices only through collectives over `AXIS` (gradient `pmean`,
cross-replica BatchNorm, gathered negatives and batch statistics in the losses). This module maps it:

- 'shard_map' (default): `jax.jit(jax.shard_map(step, mesh, in_specs=(P(), P(AXIS)), out_specs=P()))`; the state
  lives as replicated global arrays, batches as global arrays sharded along their first axis. Works unchanged
  on several hosts (each process feeds its own shard through `jax.make_array_from_process_local_data`).
- 'pmap': `jax.pmap(step, axis_name=AXIS)` over the local devices; the state carries a leading device axis.

A method's per-device state (a queue: `methods.PER_DEVICE`) is the exception to "replicated": `state_specs` marks
it `P(AXIS)`; it is stored with a leading axis of one copy per device, sharded over the mesh, and each device's
step sees its own copy (with a device axis of length 1) in either mode.

shard_map runs with `check_vma=False`, pmap's semantics: `jax.grad` inside the step gives each device the gradient
of its own loss, and the step's `lax.pmean` averages them. (With `check_vma=True` the gradient of a replicated
parameter comes back already summed over devices, so the same step would train with an n-times larger gradient.)
"""
import collections
import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"
PARALLEL_MODES = ("shard_map", "pmap")


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
    """`jax.distributed.initialize`, from explicit flags or, when none are given, from the environment
    (Cloud TPU pods, SLURM, Open MPI auto-detection)."""
    import jax

    kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)
    print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
          f"{jax.device_count()} devices", flush=True)


def make_mesh(num_devices=0):
    """A one-axis mesh over the first `num_devices` devices (0: all devices of all processes)."""
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(f"config.num_devices={num_devices} but {len(devices)} device(s) are visible "
                         f"({devices[0].platform}); use 0 for all, or a number up to {len(devices)}.")
    if num_devices:
        devices = devices[:num_devices]
    return Mesh(np.array(devices), (AXIS,))


def process_local_mesh(mesh):
    """The part of `mesh` on this process's own devices, on the same axis: for work each process does whole by
    itself (evaluation), whose results it must be able to read back (an array on other hosts' devices cannot be)."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return Mesh(np.array(local), mesh.axis_names)


def check_batch_size(global_batch_size, num_devices, process_count=1):
    """Fails at start, with what to do, when the global batch cannot be split evenly."""
    if global_batch_size <= 0 or global_batch_size % num_devices:
        raise ValueError(
            f"config.batch_size={global_batch_size} cannot be split evenly over {num_devices} device(s); "
            f"choose a multiple of {num_devices} (e.g. {max(1, global_batch_size // num_devices) * num_devices}) "
            f"or set config.num_devices to a divisor of {global_batch_size}.")
    if global_batch_size % process_count:
        raise ValueError(f"config.batch_size={global_batch_size} is not divisible by the {process_count} processes.")


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Places state and batches on the devices and maps a per-device step, in either mode."""
    mesh: Mesh
    mode: str = "shard_map"
    state_specs: Any = P()   # a spec prefix of the train state: P() replicated, P(AXIS) one copy per device

    def __post_init__(self):
        if self.mode not in PARALLEL_MODES:
            raise ValueError(f"config.parallel={self.mode!r} is not known; use one of {PARALLEL_MODES}.")
        if self.mode == "pmap" and jax.process_count() > 1 and len(self.mesh.devices.flat) != jax.device_count():
            raise ValueError("config.parallel='pmap' on several hosts uses all devices; set config.num_devices=0.")

    @property
    def num_devices(self):
        return self.mesh.devices.size

    @property
    def local_devices(self):
        return [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]

    def map_step(self, per_device_step, donate_state=True):
        """Maps `per_device_step(state, batch) -> (state, metrics)` over the devices; jitted, state donated."""
        donate = (0,) if donate_state else ()
        if self.mode == "pmap":
            return jax.pmap(per_device_step, axis_name=AXIS, devices=self.local_devices, donate_argnums=donate)
        mapped = jax.shard_map(per_device_step, mesh=self.mesh, in_specs=(self.state_specs, P(AXIS)),
                               out_specs=(self.state_specs, P()), check_vma=False)
        return jax.jit(mapped, donate_argnums=donate)

    def map_batch_fn(self, per_device_fn, out_sharded=True):
        """Maps a per-device function of a batch alone (e.g. the augmentation benchmark)."""
        if self.mode == "pmap":
            return jax.pmap(per_device_fn, axis_name=AXIS, devices=self.local_devices)
        out_spec = P(AXIS) if out_sharded else P()
        return jax.jit(jax.shard_map(per_device_fn, mesh=self.mesh, in_specs=P(AXIS), out_specs=out_spec,
                                     check_vma=False))

    def _map_specs(self, fn, state):
        """fn(spec, leaf) over the state's leaves, each with the spec that `state_specs` gives its subtree."""
        return jax.tree.map(lambda spec, sub: jax.tree.map(lambda x: fn(spec, x), sub), self.state_specs, state,
                            is_leaf=lambda x: isinstance(x, P))

    def put_state(self, state):
        """A host/single-device state on the mesh: replicated on every device, but per-device parts (leading
        axis: one copy per device) split over the devices."""
        if self.mode == "pmap":
            n = len(self.local_devices)
            return self._map_specs(
                lambda spec, x: np.reshape(np.asarray(x), (n, 1) + np.shape(x)[1:]) if spec != P()
                else np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), state)
        return self._map_specs(lambda spec, x: _put_replicated(x, NamedSharding(self.mesh, spec)), state)

    def get_state(self, state):
        """The state as one copy (global arrays in shard_map mode), per-device parts with their device axis."""
        if self.mode == "pmap":
            return self._map_specs(lambda spec, x: x.reshape((-1,) + x.shape[2:]) if spec != P() else x[0], state)
        return state

    def put_batch(self, local_batch):
        """Host arrays of this process's share of the global batch -> device arrays sharded over the axis."""
        if self.mode == "pmap":
            n = len(self.local_devices)
            return jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), local_batch)
        sharding = NamedSharding(self.mesh, P(AXIS))
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)

    def get_metrics(self, metrics):
        """Metrics are averaged over devices inside the step; take one copy."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], metrics)
        return metrics


def _put_replicated(x, sharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jax.process_count() > 1:
        return jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x)[index])
    return jax.device_put(x, sharding)


def local_copy(tree, copy=True):
    """This process's copy of each (replicated) jax.Array in `tree` as numpy, waiting for it to be computed; other
    leaves as they are. Works for multi-host replicated arrays too.

    `copy=True` makes a real copy: on the CPU backend `np.asarray` can alias the device buffer, which the next
    step's donation then overwrites. `copy=False` is for arrays no step will donate (a checkpoint's snapshot)."""
    def to_host(x):
        if not x.is_fully_replicated:  # a per-device part: every device's copy
            if x.is_fully_addressable:
                return np.array(x, copy=True)
            from jax.experimental import multihost_utils
            return np.array(multihost_utils.process_allgather(x, tiled=True), copy=True)
        return np.array(x.addressable_data(0), copy=True) if copy else np.asarray(x.addressable_data(0))

    return jax.tree.map(lambda x: to_host(x) if isinstance(x, jax.Array) else x, tree)


def prefetch(iterator, put_fn, size=2):
    """Keeps `size` batches in flight on the devices (transfers are asynchronous) so the step never waits."""
    queue = collections.deque()
    for item in iterator:
        queue.append(put_fn(item))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
