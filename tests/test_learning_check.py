"""The learning check's machinery on small synthetic data (the check itself runs on real CIFAR-10 in .ci/run)."""
import math

import jax
import numpy as np
import pytest

import helpers
from ssl_jax import collapse
from ssl_jax import config_files
from ssl_jax import learning_check
from ssl_jax import sharding
from ssl_jax import train

SMALL = ("batch_size=32", "model.projector_hidden=[32]", "model.projection_dim=16", "eval.knn_k=5",
         "eval.linear_epochs=2", "eval.batch_size=64")


def test_every_method_has_a_config_of_its_own():
    from ssl_jax import methods

    assert sorted(config_files.METHOD_CONFIGS) == sorted(methods.METHODS)
    for method, name in config_files.METHOD_CONFIGS.items():
        assert config_files.load_config(name).method == method


def test_check_config_shrinks_the_method_config_and_keeps_its_recipe():
    config = learning_check.check_config("byol", steps=50, width=8)
    recipe = config_files.load_config("byol_cifar")
    assert (config.model.width, config.batch_size, config.num_train_steps) == (8, 256, 50)
    assert config.model.projector_hidden == recipe.model.projector_hidden
    assert config.optimizer.base_lr == recipe.optimizer.base_lr
    assert config.optimizer.warmup_epochs * (50000 // 256) == pytest.approx(5.0)
    overridden = learning_check.check_config("tico", overrides=["loss.rho=3", "model.projector_hidden=[16, 8]"])
    assert overridden.loss.rho == 3.0 and overridden.model.projector_hidden == (16, 8)


def test_check_method_compares_with_the_network_at_random_initialisation():
    dataset = helpers.synthetic_dataset(num_train=96, num_test=40)
    lines = []
    result = learning_check.check_method("simclr", dataset, margin=-1.0, steps=3, width=4, overrides=SMALL,
                                         print_fn=lines.append)
    config = learning_check.check_config("simclr", 3, 4, SMALL)
    exp = train.build_experiment(config, dataset)
    baseline = train.evaluate_random_init(exp)
    assert result["knn_top1_random_init"] == pytest.approx(baseline["knn_top1_random_init"])
    assert result["linear_top1_random_init"] == pytest.approx(baseline["linear_top1_random_init"])
    assert [entry[0] for entry in result["losses"]] == [3] and result["passed"] and result["failure"] == ""
    assert 1.0 <= result["losses"][-1][3] <= config.model.width * 8  # the backbone's feature rank, in [1, D]
    assert 1.0 <= result["feature_rank_random_init"] <= config.model.width * 8
    assert result["knn_gain"] == pytest.approx(result["knn_top1"] - result["knn_top1_random_init"])
    assert lines and "step 3/3" in lines[-1] and "feature_rank" in lines[-1] and "step 0" in lines[0]
    table = learning_check.markdown_table([result], margin=0.04)
    assert "| simclr |" in table and "learns" in table
    assert "kNN top-1 (k=5, T=0.1) | linear top-1 (probe_cached)" in table  # SMALL: eval.knn_k=5


def test_a_diverging_run_fails_the_check():
    dataset = helpers.synthetic_dataset(num_train=96, num_test=40)
    result = learning_check.check_method("simclr", dataset, margin=-1.0, steps=3, width=4,
                                         overrides=SMALL + ("optimizer.name=\"sgd\"", "optimizer.base_lr=1e25"),
                                         print_fn=lambda line: None)
    assert not math.isfinite(result["losses"][-1][1])
    assert result["failure"] == "NaN loss" and not result["passed"]
    assert "NaN loss" in learning_check.markdown_table([result], margin=0.04)


def test_random_init_backbone_is_the_same_for_every_method():
    """One seed gives one initial backbone whatever the heads: the baseline is the same network for all methods."""
    dataset = helpers.synthetic_dataset(num_train=32, num_test=8)
    backbones = []
    for method, extra in (("simclr", ()), ("byol", ("model.predictor_hidden=[32]", "model.predictor_dim=16")),
                          ("vicreg", ())):
        exp = train.build_experiment(learning_check.check_config(method, 2, 4, SMALL + extra), dataset)
        backbones.append(sharding.local_copy(train.initial_state(exp)).params["backbone"])
    for other in backbones[1:]:
        for a, b in zip(jax.tree.leaves(backbones[0]), jax.tree.leaves(other)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("losses, gain, expected", [
    ([(20, 5.8, 0.08), (40, 5.5, 0.08), (60, 5.4, 0.08)], 0.09, ""),
    ([(20, 5.8, 0.08), (40, 5.5, 0.08), (60, 5.4, 0.08)], 0.03, "kNN gain < 4%"),
    ([(20, 5.8, 0.08), (40, float("nan"), 0.08), (60, 5.4, 0.08)], 0.09, "NaN loss"),
    ([(20, -0.1, 0.02), (40, -0.6, 0.01), (60, -0.9, 0.005)], 0.09, "collapsed"),
    ([(20, 0.14, 0.05), (40, 0.36, 0.05), (60, 0.79, 0.05)], 0.09, "loss rising"),
    ([(20, 21.7, 0.02), (40, 21.0, 0.02), (60, 21.5, 0.02)], 0.09, ""),  # within 5% of its size
])
def test_verdict(losses, gain, expected):
    assert learning_check.verdict(losses, gain, projection_dim=256, margin=0.04) == expected


def test_a_loss_that_may_rise_is_judged_by_the_rest():
    """MoCo v2+'s loss against its queue rises while it learns: 'loss rising' is no failure for LOSS_MAY_RISE,
    the other verdicts still are."""
    rising = [(20, 7.56, 0.02), (40, 6.76, 0.02), (60, 7.03, 0.02), (120, 7.61, 0.02)]
    assert learning_check.verdict(rising, 0.05, 256, 0.04) == "loss rising"
    assert learning_check.verdict(rising, 0.05, 256, 0.04, loss_may_rise=True) == ""
    assert learning_check.verdict(rising, 0.03, 256, 0.04, loss_may_rise=True) == "kNN gain < 4%"
    collapsed = [(20, 7.5, 0.01), (40, 7.6, 0.01)]
    assert learning_check.verdict(collapsed, 0.05, 256, 0.04, loss_may_rise=True) == "collapsed"
    assert learning_check.LOSS_MAY_RISE == ("moco_v2_plus",)


def test_normalized_std_against_numpy():
    z = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32) + 3.0
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(collapse.normalized_std(z), zn.std(axis=0).mean(), rtol=1e-5)
    collapsed = np.tile(z[:1], (64, 1))
    assert float(collapse.normalized_std(collapsed)) < 1e-3


def test_effective_rank_against_numpy():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(128, 16)) * np.linspace(0.1, 3.0, 16)
    s = np.linalg.svd(features, compute_uv=False)
    p = s / s.sum() + 1e-7
    np.testing.assert_allclose(collapse.effective_rank(features), np.exp(-np.sum(p * np.log(p))), rtol=1e-4)
    rank_one = np.outer(rng.normal(size=128), rng.normal(size=16))
    assert float(collapse.effective_rank(rank_one)) < 1.01
    assert 15.0 < float(collapse.effective_rank(rng.normal(size=(4096, 16)))) <= 16.0


def test_set_values_split_at_commas_outside_brackets():
    got = learning_check.split_overrides(["loss.rho=2,model.projector_hidden=[2048,512]", "seed=1", ""])
    assert got == ["loss.rho=2", "model.projector_hidden=[2048,512]", "seed=1"]
    config = learning_check.check_config("simsiam", 2, 4, got[1:])
    assert config.model.projector_hidden == (2048, 512) and config.seed == 1


def test_a_method_with_another_initial_backbone_gets_its_own_baseline():
    """SimSiam's backbone starts with zero-initialised residual branches: its baseline is that network, not the
    one the methods before it in the same check started from."""
    dataset = helpers.synthetic_dataset(num_train=96, num_test=40)
    baselines = {}
    predictor = ("model.predictor_hidden=[32]", "model.predictor_dim=16")
    for method, extra in (("simclr", ()), ("simsiam", predictor)):
        learning_check.check_method(method, dataset, margin=-1.0, steps=1, width=4, overrides=SMALL + extra,
                                    print_fn=lambda line: None, baselines=baselines)
    assert len(baselines) == 2
    learning_check.check_method("vicreg", dataset, margin=-1.0, steps=1, width=4, overrides=SMALL,
                                print_fn=lambda line: None, baselines=baselines)
    assert len(baselines) == 2  # VICReg starts from SimCLR's backbone


def test_the_vit_dino_config_is_checked_on_a_small_vit():
    """The learning check covers every config: the ViT DINO config is an entry of its own (not a method name), and
    check_config shrinks its ViT (ViT-Tiny of CHECK_VIT_DEPTH blocks, its patch and crops kept) instead of setting a
    ResNet width."""
    assert config_files.CHECKED_CONFIGS["dino_vit"] == "dino_vit_cifar"
    assert "dino_vit" not in config_files.METHOD_CONFIGS
    assert all(config_files.CHECKED_CONFIGS[m] == name for m, name in config_files.METHOD_CONFIGS.items())
    recipe = config_files.load_config("dino_vit_cifar")
    config = learning_check.check_config("dino_vit", steps=50, width=8)
    assert config.method == "dino"
    assert (config.model.name, config.model.vit_depth) == ("vit_tiny", learning_check.CHECK_VIT_DEPTH)
    assert config.model.width == recipe.model.width  # no ResNet width set on a ViT
    assert config.model.patch_size == recipe.model.patch_size
    assert config.augment.local_crops == recipe.augment.local_crops
    assert (config.batch_size, config.num_train_steps) == (256, 50)
    assert learning_check.check_config("dino", width=8).model.name == "resnet18"


def test_a_queue_longer_than_the_checks_is_shortened():
    """NNCLR's 65,536-row support set is mostly random vectors for 120 steps of 256: the check keeps
    CHECK_QUEUE_SIZE rows (whole batches of 256), leaves shorter queues (SwAV's 3840) as they are, and an override
    still wins."""
    assert config_files.load_config("nnclr_cifar").loss.queue_size == 65536
    config = learning_check.check_config("nnclr", steps=50)
    assert config.loss.queue_size == learning_check.CHECK_QUEUE_SIZE == 4096
    assert config.loss.queue_size % config.batch_size == 0
    assert learning_check.check_config("swav").loss.queue_size == 3840
    assert "queue_size" not in learning_check.check_config("simclr").loss
    assert learning_check.check_config("nnclr", overrides=["loss.queue_size=8192"]).loss.queue_size == 8192
    # MoCo v2+'s negatives: a queue of its own length in the check (CHECK_QUEUE_SIZES), whole batches too.
    assert config_files.load_config("mocov2plus_cifar").loss.queue_size == 32768
    moco = learning_check.check_config("moco_v2_plus")
    assert moco.loss.queue_size == learning_check.CHECK_QUEUE_SIZES["moco_v2_plus"] == 1024
    assert moco.loss.queue_size % moco.batch_size == 0


def test_an_ema_slower_than_the_check_is_sped_up():
    """DINO's teacher decay 0.9995 averages ~2000 steps, longer than the check's run: the check lowers it to
    CHECK_MAX_EMA_DECAY, leaves 0.99 (BYOL, MoCo) as it is, and an override still wins."""
    assert config_files.load_config("dino_cifar").ema.base_decay == 0.9995
    assert learning_check.check_config("dino").ema.base_decay == learning_check.CHECK_MAX_EMA_DECAY == 0.99
    assert learning_check.check_config("dino_vit").ema.base_decay == 0.99  # its config: 0.996
    assert learning_check.check_config("byol").ema.base_decay == config_files.load_config("byol_cifar").ema.base_decay
    overridden = learning_check.check_config("dino", overrides=["ema.base_decay=0.9995"])
    assert overridden.ema.base_decay == 0.9995


def test_a_reconstruction_must_fall_and_meet_its_own_margin():
    """MAE's verdict: its own margin (METHOD_MARGINS) and a loss that falls by MIN_LOSS_FALL of its first value."""
    assert learning_check.METHOD_MARGINS["mae"] < learning_check.DEFAULT_MARGIN
    fall = learning_check.MIN_LOSS_FALL["mae"]
    falling = [(20, 1.10, 0.04), (60, 0.95, 0.04), (120, 0.83, 0.04)]  # seed 0's reconstruction error, -25%
    flat = [(20, 1.10, 0.04), (60, 1.08, 0.04), (120, 1.05, 0.04)]  # -5%: not learning to reconstruct
    margin = learning_check.METHOD_MARGINS["mae"]
    assert learning_check.verdict(falling, 0.03, 192, margin, min_loss_fall=fall) == ""
    assert learning_check.verdict(flat, 0.03, 192, margin, min_loss_fall=fall) == f"loss fell < {fall:.0%}"
    assert learning_check.verdict(flat, 0.03, 192, margin) == ""  # without the requirement: as before
    assert learning_check.verdict(falling, 0.01, 192, margin, min_loss_fall=fall) == f"kNN gain < {margin:.0%}"


def test_maes_decoder_is_shrunk_as_its_encoder():
    """The check's MAE: a ViT-Tiny encoder of CHECK_VIT_DEPTH blocks and a decoder of its width and depth; other
    configs have no decoder setting to shrink."""
    config = learning_check.check_config("mae")
    assert (config.model.name, config.model.vit_depth) == ("vit_tiny", learning_check.CHECK_VIT_DEPTH)
    assert (config.model.decoder_dim, config.model.decoder_depth, config.model.decoder_num_heads) == (192, 1, 3)
    assert config_files.load_config("mae_cifar").model.decoder_dim == 512
    assert "decoder_dim" not in learning_check.check_config("dino_vit").model


def test_the_default_run_checks_every_entry_but_those_not_yet_passing():
    left_out = set(learning_check.NOT_YET_PASSING)
    assert not left_out & set(learning_check.DEFAULT_METHODS)
    assert set(learning_check.DEFAULT_METHODS) == set(config_files.CHECKED_CONFIGS) - left_out
    assert {"swav", "nnclr", "dino", "mae", "moco_v2_plus", "dino_vit"} <= set(learning_check.DEFAULT_METHODS)
    assert left_out <= set(config_files.CHECKED_CONFIGS)  # still checkable by name


def test_a_method_may_have_check_settings_of_its_own_which_overrides_still_beat():
    """SwAV's Sinkhorn epsilon is 0.03 in the check (CHECK_SETTINGS: SwAV's README's workaround for codes stuck
    near uniform), 0.05 in its config; other methods and the other SwAV values are the config's."""
    assert config_files.load_config("swav_cifar").loss.epsilon == 0.05
    swav = learning_check.check_config("swav")
    assert swav.loss.epsilon == learning_check.CHECK_SETTINGS["swav"]["loss.epsilon"] == 0.03
    assert (swav.loss.temperature, swav.loss.sinkhorn_iterations, swav.model.num_prototypes) == (0.1, 3, 3000)
    assert learning_check.check_config("swav", overrides=["loss.epsilon=0.05"]).loss.epsilon == 0.05
    assert all(set(settings) and method in config_files.CHECKED_CONFIGS
               for method, settings in learning_check.CHECK_SETTINGS.items())


def test_an_entry_may_have_steps_of_its_own():
    """DINO on a ViT trains 240 steps in the check (METHOD_STEPS), every other entry 120; --steps wins."""
    assert learning_check.check_config("dino_vit").num_train_steps == learning_check.METHOD_STEPS["dino_vit"] == 240
    assert learning_check.check_config("dino").num_train_steps == learning_check.DEFAULT_STEPS == 120
    assert learning_check.check_config("dino_vit", steps=50).num_train_steps == 50
    assert learning_check.check_steps("simclr") == 120 and learning_check.check_steps("dino_vit", 7) == 7


def test_compare_methods_runs_each_checked_entry_and_reports_them(tmp_path):
    """launch/compare_methods.sh (the README's side-by-side GPU table): each entry's config by its learning-check
    name (dino_vit included: an entry of CHECKED_CONFIGS, not of METHOD_CONFIGS), trained and evaluated, then one
    table."""
    import os
    import subprocess
    import sys

    import helpers

    folder = helpers.write_image_folder(tmp_path, helpers.synthetic_dataset(num_train=64, num_test=20))
    env = dict(os.environ, JAX_PLATFORMS="cpu", SSL_JAX_CACHE=str(tmp_path / "cache"), METHODS="simclr dino_vit",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))  # its `python`
    env.pop("XLA_FLAGS", None)  # one device per run
    run = subprocess.run(
        ["bash", "launch/compare_methods.sh", str(folder), str(tmp_path / "compare"), "1", "2", "--",
         "--config.num_train_steps=2", "--config.batch_size=16", "--config.eval.linear_epochs=2",
         "--config.log_every_steps=1", "--config.model.width=4"],
        cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "FAILED" not in run.stdout, run.stdout
    rows = [line for line in run.stdout.splitlines() if line.startswith("| simclr") or line.startswith("| dino_vit")]
    assert len(rows) == 2, run.stdout
