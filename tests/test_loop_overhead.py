"""Checkpoints off the loop's critical path, and a progress line whose images/s counts training time only."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpoint
from ssl_jax import metrics_log
from ssl_jax import train


def test_a_save_keeps_the_state_as_it_was_though_the_caller_then_donates_it(tmp_path):
    state = {"params": jnp.arange(1000, dtype=jnp.float32) + 1, "step": jnp.array(3)}
    expected = np.asarray(state["params"]).copy()
    checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    checkpointer.save(1, state)
    donated = jax.jit(lambda x: x * 0, donate_argnums=0)(state["params"])  # as the next train step does
    checkpointer.close()
    again = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    restored = again.restore({"params": np.zeros(1000, np.float32), "step": np.array(0, np.int32)})
    again.close()
    np.testing.assert_array_equal(restored["params"], expected)
    assert int(restored["step"]) == 3 and float(donated.sum()) == 0


def test_a_refused_state_is_not_written_and_the_refusal_reaches_the_loop(tmp_path):
    checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    good = {"params": np.ones(4, np.float32)}
    bad = {"params": np.array([1.0, np.nan, 0, 0], np.float32)}
    checkpointer.save(1, good, check=train._unusable_reason)
    checkpointer.save(2, bad, check=train._unusable_reason)
    with pytest.raises(checkpoint.StateRefused, match=r"step 2 .*non-finite values in params") as refused:
        checkpointer.close()
    assert refused.value.step == 2
    assert checkpoint.Checkpointer(str(tmp_path), save_every_steps=1).all_steps() == [1]


def test_nonfinite_parts_names_the_fields_with_a_nan_or_inf_and_ignores_integers():
    state = {"params": {"w": jnp.ones(3)}, "opt_state": {"m": jnp.array([0.0, jnp.inf])},
             "step": jnp.array(7), "batch_stats": {}}
    assert train.nonfinite_parts(state) == ["opt_state"]
    assert train.nonfinite_parts({"params": {"w": jnp.ones(3)}, "step": jnp.array(7)}) == []


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_images_per_sec_leave_out_checkpoint_and_eval_time_and_say_it(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(metrics_log.time, "perf_counter", clock)
    lines = []
    logger = metrics_log.MetricLogger(str(tmp_path), total_steps=100, steps_per_epoch=10, global_batch_size=8,
                                      print_fn=lines.append)
    logger.start(0)
    clock.now += 2.0
    logger.write(10, {"loss": 1.0})  # 80 images in 2 s
    clock.now += 1.0 + 0.5 + 4.0
    logger.exclude("checkpoint", 0.5)
    logger.exclude("eval", 4.0)
    logger.write(20, {"knn_top1": 0.3, "eval_seconds": 4.0}, prefix="eval")  # no progress line, same window
    assert logger.write(20, {"loss": 0.9}) == pytest.approx(80.0)  # 80 images in 1 s of training
    assert lines[0].endswith("| 40 img/s | ETA 0:00:18")
    assert "| 80 img/s (train only) | checkpoint 0.50 s | eval 4.00 s | ETA 0:00:08" in lines[-1]
    record = metrics_log.read_metrics(str(tmp_path))[-1]
    assert record["train/images_per_sec"] == pytest.approx(80.0)
    assert record["train/window_seconds"] == pytest.approx(5.5)
    assert record["train/checkpoint_seconds"] == 0.5 and record["train/eval_seconds"] == 4.0
    logger.close()
