"""Fine-tuning evaluation (ssl_jax/finetune.py): layer-wise decay table, label smoothing against NumPy, a tiny
ResNet that learns a separable problem with its backbone changing, equal budgets, and the command line."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import helpers
from ssl_jax import config_lib
from ssl_jax import data
from ssl_jax import finetune
from ssl_jax import models
from ssl_jax import optim


def _tiny_vit(depth=2, pos_embedding="learned"):
    return models.make_backbone("vit_tiny", patch_size=8, vit_depth=depth, pos_embedding=pos_embedding)


def _shapes(backbone, size):
    """The backbone's variables as shapes only (no computation)."""
    return jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32),
                                                train=False))


def test_layer_decay_scales_of_a_tiny_vit_equal_a_hand_written_table():
    variables = _shapes(_tiny_vit(depth=2), 16)
    params = {"backbone": variables["params"], "head": finetune.init_head(jax.random.PRNGKey(1), 192, 10, 2e-5)}
    scales = finetune.layer_decay_scales(params, 0.5)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): s
            for path, s in jax.tree_util.tree_flatten_with_path(scales)[0]}
    # decay^(L + 1 - layer), L = 2 blocks: embedding, position embeddings, class token layer 0; block k layer k;
    # the final norm and the head layer 3.
    table = {"embedding": 0.125, "pos_embedding": 0.125, "cls": 0.125, "block1": 0.25, "block2": 0.5,
             "encoder_norm": 1.0, "head": 1.0}
    seen = set()
    for path, scale in flat.items():
        top = path.split("/")[1] if path.startswith("backbone/") else path.split("/")[0]
        assert scale == table[top], (path, scale)
        seen.add(top)
    assert seen == set(table)
    assert flat["backbone/block1/attention/query/kernel"] == 0.25
    assert finetune.vit_depth(params) == 2
    # A ResNet (no blocks) and a decay of 1 scale nothing.
    rparams = _shapes(models.make_backbone("resnet18", width=2), 8)["params"]
    assert set(jax.tree.leaves(finetune.layer_decay_scales(rparams, 0.5))) == {1.0}
    assert set(jax.tree.leaves(finetune.layer_decay_scales(params, 1.0))) == {1.0}


def test_layer_decay_scales_the_adamw_step_per_layer():
    """With the scales chained after AdamW, a parameter's first step is its scale times plain AdamW's."""
    params = {"backbone": {"embedding": {"kernel": np.ones((2, 2), np.float32)},
                           "block1": {"kernel": np.ones((2, 2), np.float32)}},
              "head": {"kernel": np.ones((2, 2), np.float32)}}
    grads = jax.tree.map(lambda p: np.full_like(p, 0.3), params)
    config = config_lib.base_config().eval.finetune
    config.layer_decay, config.warmup_fraction = 0.5, 0.0
    tx, _, _ = finetune.make_optimizer(config, params, 10)
    plain = optax_adamw(config)
    got, _ = tx.update(grads, tx.init(params), params)
    want, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(got["backbone"]["embedding"]["kernel"], 0.25 * want["backbone"]["embedding"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_allclose(got["backbone"]["block1"]["kernel"], 0.5 * want["backbone"]["block1"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_allclose(got["head"]["kernel"], want["head"]["kernel"], rtol=1e-6)


def optax_adamw(config):
    import optax

    lr = optim.learning_rate_schedule(config.base_lr * config.batch_size / 256, 0, 10)
    return optax.adamw(lr, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=optim.decay_mask)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_loss_equals_numpy(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 7)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    targets = np.full((7, 5), smoothing / 5) + (1 - smoothing) * np.eye(5)[labels]
    want = np.mean(-(targets * log_probs).sum(axis=1))
    got = finetune.smoothed_cross_entropy(logits, labels, smoothing)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def _separable(num_train=128, num_test=64, num_classes=4, size=16):
    return data.Dataset(name="cifar10", num_classes=num_classes,
                        train=helpers.synthetic_split(num_train, num_classes, 0, size),
                        test=helpers.synthetic_split(num_test, num_classes, 1, size), source="synthetic (tests)")


def _fast_config(**changes):
    config = config_lib.base_config().eval.finetune
    config.update(dict(epochs=6, batch_size=32, base_lr=0.02, warmup_fraction=0.1), **changes)
    return config


def test_finetuning_a_tiny_resnet_learns_and_changes_the_backbone_with_equal_budgets(monkeypatch):
    dataset = _separable()
    backbone = models.make_backbone("resnet18", width=4)
    pretrained = finetune.random_init_variables(backbone, (16, 16, 3), seed=7)  # stands in for an encoder
    runs = []
    original = finetune.fine_tune

    def recording(step_fn, variables, head, *args, **kwargs):
        params, stats, info = original(step_fn, variables, head, *args, **kwargs)
        runs.append((variables, params, stats, info, step_fn))
        return params, stats, info

    monkeypatch.setattr(finetune, "fine_tune", recording)
    results = finetune.finetune_and_baseline(backbone, pretrained, dataset, _fast_config(), seed=0,
                                             eval_batch_size=64)
    assert len(runs) == 2
    (_, params, stats, info, step_fn), (_, _, _, base_info, base_step_fn) = runs
    assert info["steps"] == base_info["steps"] == results["steps"] == 6 * (128 // 32)
    assert step_fn is base_step_fn and step_fn.traces == 1  # the same step, compiled once for both runs
    # The whole backbone trained (unlike the linear probe), BatchNorm statistics updated.
    for before, after in zip(jax.tree.leaves(pretrained["params"]), jax.tree.leaves(params["backbone"])):
        assert not np.array_equal(np.asarray(before), np.asarray(after))
    for before, after in zip(jax.tree.leaves(pretrained["batch_stats"]), jax.tree.leaves(stats)):
        assert not np.array_equal(np.asarray(before), np.asarray(after))
    assert info["loss_last_epoch"] < info["loss_first_epoch"]
    for key in ("finetune_top1", "finetune_top1_random_init"):
        assert results[key] > 0.5, results  # chance: 0.25
    assert results["finetune_gain_points"] == pytest.approx(
        100 * (results["finetune_top1"] - results["finetune_top1_random_init"]))
    line = finetune.format_line(results)
    assert line.startswith("finetune top-1 pretrained ") and "| random init " in line and "(6 epochs, 128 train" in line


def test_a_vit_fine_tunes_without_batch_statistics():
    dataset = _separable(num_train=32, num_test=16)
    backbone = _tiny_vit(depth=1, pos_embedding="sincos2d")
    pretrained = finetune.random_init_variables(backbone, (16, 16, 3), seed=3)
    assert pretrained["batch_stats"] == {}
    results = finetune.finetune_and_baseline(backbone, pretrained, dataset, _fast_config(epochs=1, batch_size=16),
                                             eval_batch_size=16)
    assert results["vit_blocks"] == 1 and results["layer_decay"] == 0.65
    assert results["pretrained"]["steps"] == results["random_init"]["steps"] == 2
    assert 0.0 <= results["finetune_top1"] <= 1.0


def test_command_line_on_a_finished_tiny_run(tmp_path):
    """On the files a finished run leaves (config.json and encoder/, written by the functions that
    `train.train_and_evaluate` uses, the encoder at initialisation): its pretraining is tests/test_train.py's."""
    from ssl_jax import checkpoint
    from ssl_jax import run_files

    folder = helpers.write_image_folder(tmp_path, helpers.synthetic_dataset(num_train=48, num_test=16))
    config = helpers.tiny_config(steps=2, **{"data.path": str(folder), "data.cache_dir": str(tmp_path / "cache")})
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / run_files.CONFIG_FILE).write_text(config.to_json(indent=2))
    backbone = models.make_backbone(**models.backbone_settings(config.model))
    variables = jax.jit(lambda: finetune.random_init_variables(backbone, (32, 32, 3), seed=0))()
    checkpoint.export_encoder(str(workdir / run_files.ENCODER_DIR), {"backbone": variables["params"]},
                              {"backbone": variables["batch_stats"]}, config.model)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "ssl_jax.finetune", f"--workdir={workdir}", "--epochs=1",
                             "--max_train_examples=32", "--batch_size=16"], cwd=helpers.REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((workdir / finetune.FINETUNE_FILE).read_text())
    assert written["train_examples"] == 32 and written["epochs"] == 1 and written["steps"] == 2
    assert written["pretrained"]["steps"] == written["random_init"]["steps"] == 2
    assert written["settings"]["label_smoothing"] == 0.1 and written["test_examples"] == 16
    assert finetune.format_line(written) in result.stdout
    missing = subprocess.run([sys.executable, "-m", "ssl_jax.finetune", f"--workdir={tmp_path}"], cwd=helpers.REPO,
                             env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "holds no exported encoder" in missing.stderr
