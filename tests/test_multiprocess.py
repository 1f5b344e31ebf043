"""Two processes on localhost (jax.distributed with CPU collectives) train like one process.

Both runs take 2 steps (the multi-process one stops after step 1 and resumes from its checkpoint): the width-4
test network amplifies float rounding differences roughly tenfold per step, so longer runs drift apart even
between 1 and 4 devices of one process.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import helpers

# With today's PyPI jax (0.10.2) one BatchNorm offset of the width-4 net (0.0250 on one process, 0.0248 on two)
# differs by 2.7e-4 after the two steps, with this session's code and with 4269584's alike: rounding, amplified.
# On an AMD EPYC host the same offsets (0.087 vs 0.086) differed by 2.2e-3: each leaf may also differ by
# helpers.LEAF_SCALE_TOL of its largest entry.
ATOL = 5e-4

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process):
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    return output


def test_two_processes_match_one_process(tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    workers = [_start([coordinator, 2, i, tmp_path / "multi", tmp_path / f"multi{i}.npz"]) for i in range(2)]
    outputs = [_finish(w) for w in workers]
    _finish(_start(["-", 1, 0, tmp_path / "single", tmp_path / "single.npz"]))

    single = np.load(tmp_path / "single.npz")
    assert int(single["devices"]) == 2
    assert "Resuming from the checkpoint at step 1" in outputs[0]
    for i in range(2):
        multi = np.load(tmp_path / f"multi{i}.npz")
        assert int(multi["devices"]) == 4 and int(multi["step"]) == 2
        leaf_names = [k for k in single.files if k.startswith("arr_")]
        for name in leaf_names:
            helpers.assert_leaf_close(multi[name], single[name], 2e-3, ATOL, helpers.LEAF_SCALE_TOL, err_msg=name)
    assert os.path.exists(tmp_path / "multi" / "checkpoints")
    assert not os.path.exists(tmp_path / "multi" / "metrics.jsonl.tmp")


def test_two_processes_read_their_own_shares_of_a_jpeg_folder(tmp_path):
    """Streaming from a folder: each process decodes only its half of every global batch, the two halves of an
    epoch are every example once (48 images, batch 24: 2 steps), a resume in the middle of the epoch reads on
    from where it stopped (step 1's batch is read once, after the restart), and the run ends where one process
    with both halves ends (2 steps: longer runs drift apart by rounding, see the module docstring)."""
    tree = helpers.write_jpeg_tree(tmp_path / "jpegs")
    coordinator = f"127.0.0.1:{_free_port()}"
    workers = [_start([coordinator, 2, i, tmp_path / "multi", tmp_path / f"multi{i}.npz", tree]) for i in range(2)]
    outputs = [_finish(w) for w in workers]
    _finish(_start(["-", 1, 0, tmp_path / "single", tmp_path / "single.npz", tree]))
    assert "Resuming from the checkpoint at step 1" in outputs[0]

    single = np.load(tmp_path / "single.npz")
    multi = [np.load(tmp_path / f"multi{i}.npz") for i in range(2)]
    for run in (single, *multi):
        steps = run["reads_step"].tolist()
        assert sorted(steps) == [0, 1], steps  # each step read once, across the restart
    by_step = [{int(s): set(i.tolist()) for s, i in zip(run["reads_step"], run["reads_index"])} for run in multi]
    single_by_step = {int(s): i.tolist() for s, i in zip(single["reads_step"], single["reads_index"])}
    for step in range(2):
        assert len(by_step[0][step]) == len(by_step[1][step]) == 12
        assert not by_step[0][step] & by_step[1][step]
        assert sorted(by_step[0][step] | by_step[1][step]) == sorted(single_by_step[step])
    epoch = set().union(*(by_step[p][s] for p in range(2) for s in range(2)))
    assert epoch == set(range(48))
    for name in (k for k in single.files if k.startswith("arr_")):
        for run in multi:
            helpers.assert_leaf_close(run[name], single[name], 2e-3, ATOL, helpers.LEAF_SCALE_TOL, err_msg=name)
    # Each process evaluates on its own devices (a mesh across hosts could not be read back): the same figure.
    assert 0.0 <= float(single["knn"]) <= 1.0
    assert float(multi[0]["knn"]) == float(multi[1]["knn"])
    assert float(multi[0]["knn"]) == pytest.approx(float(single["knn"]), abs=1.5 / 18)  # rounding may move one
