"""Sweeps: cells from grids, the commands they run, the report's rows; a 2x2 sweep end to end with an interrupted
cell resumed, and the shipped sweep files."""
import csv
import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

import helpers
from ssl_jax import config_files
from ssl_jax import methods
from ssl_jax import sweep as sweep_lib
from ssl_jax import sweep_cells
from ssl_jax import sweep_report
from ssl_jax import sweep_runner
from ssl_jax import train

SWEEP_DIR = os.path.join(helpers.CONFIG_DIR, "sweeps")
SHIPPED = {  # file: {variant: cells}
    "simclr_vs_byol": {"": 14, "cpu": 6},
    "vicreg_tico": {"": 3, "resnet50": 3, "cpu": 3},
    "all_methods": {v: len(config_files.METHOD_CONFIGS) for v in ("", "long", "cpu")},  # every method
}


def make_sweep(grids, **fields):
    return sweep_cells.base_sweep("test", "a test sweep", grids, config_arg="smoke", **fields)


def test_grids_expand_to_each_combination_once():
    sweep = make_sweep([dict(method=["simclr", "byol"], epochs=[20, 40], batch_size=[64]),
                        dict(method=["simclr", "byol"], epochs=[40], batch_size=[64, 128])])
    cells = sweep_cells.expand(sweep)
    expected = [(m, e, b) for m in ("simclr", "byol") for e in (20, 40) for b in (64,)]
    expected += [(m, 40, 128) for m in ("simclr", "byol")]
    assert [(c.method, c.value("epochs"), c.value("batch_size")) for c in cells] == expected
    assert len({c.name for c in cells}) == len(cells) == 6
    assert cells[0].name == "simclr_ep20_bs64"
    assert dict(cells[0].overrides) == {"num_epochs": 20, "num_train_steps": -1, "batch_size": 64}


def test_nominal_epochs_become_steps_and_any_config_key_is_an_axis():
    sweep = make_sweep([dict(method=["tico"], epochs=[20, 100], **{"loss.rho": [8.0, 20.0]})],
                       steps_per_epoch=0.5)
    cells = sweep_cells.expand(sweep)
    assert [dict(c.overrides) for c in cells] == [
        {"num_train_steps": s, "loss.rho": r} for s in (10, 50) for r in (8.0, 20.0)]
    assert cells[1].name == "tico_ep20_rho20.0"


def test_one_run_reads_the_epochs_axis_from_evaluations_during_one_run():
    sweep = make_sweep([dict(method=["simclr"], epochs=[20, 40, 60, 80, 100], batch_size=[64, 128])],
                       epochs_from="one_run")
    cells = sweep_cells.expand(sweep)
    assert [c.name for c in cells] == ["simclr_ep100-every20_bs64", "simclr_ep100-every20_bs128"]
    overrides = dict(cells[0].overrides)
    assert overrides["num_epochs"] == 100 and overrides["eval.every_epochs"] == 20
    assert cells[0].evaluated_epochs == (20, 40, 60, 80, 100)
    with pytest.raises(ValueError, match="needs whole epochs"):
        sweep_cells.expand(make_sweep(sweep.grids, steps_per_epoch=2.0, epochs_from="one_run"))


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="'simclrr' is not one of"):
        sweep_cells.expand(make_sweep([dict(method=["simclrr"])]))


def test_cell_command_is_ssl_jax_main_with_the_cell_settings_last_the_command_line():
    sweep = make_sweep([dict(method=["byol"], batch_size=[32])], overrides=["model.width=4"])
    cell, = sweep_cells.expand(sweep)
    args = shlex.split(sweep_cells.cell_command(sweep, cell, "/w", ["--config.data.path=/d x"], python="py"))
    assert args[:3] == ["py", "-m", "ssl_jax.main"]
    assert args[3] == "--config=" + os.path.relpath(os.path.join(helpers.CONFIG_DIR, "byol_cifar.py")) + ":smoke"
    assert args[4:] == ["--workdir=/w/byol_bs32", "--config.model.width=4", "--config.batch_size=32",
                        "--config.data.path=/d x"]
    config = sweep_cells.cell_config(sweep, cell, ["--config.eval.knn_k=7"])
    assert (config.model.width, config.batch_size, config.eval.knn_k, config.method) == (4, 32, 7, "byol")
    with pytest.raises(ValueError, match=r"cell byol_bs32: --config.model.widht=3: config.model has no key "
                                         r".widht. \(did you mean .width.\?\)"):
        sweep_cells.cell_config(sweep, cell, ["--config.model.widht=3"])


def test_command_line_settings_for_every_cell_and_sweep_file_mistakes_in_one_line():
    extra, rest = sweep_lib.split_config_args(["sweep", "run", "--config.data.path=/d", "--workdir=/w"])
    assert extra == ["--config.data.path=/d"] and rest == ["sweep", "run", "--workdir=/w"]
    with pytest.raises(Exception, match="--config.data.path: write cell settings as --config.KEY=VALUE"):
        sweep_lib.split_config_args(["sweep", "run", "--config.data.path", "/d"])
    simclr_vs_byol = os.path.join(SWEEP_DIR, "simclr_vs_byol.py")
    assert sweep_lib.sweep_argument_problem(["sweep", f"--sweep={simclr_vs_byol}:cpu"]) is None
    assert "Unknown sweep variant 'gpu'; known: 'cpu'" in sweep_lib.sweep_argument_problem(
        ["sweep", f"--sweep={simclr_vs_byol}:gpu"])
    assert "is not a file" in sweep_lib.sweep_argument_problem(["sweep", "--sweep=configs/sweeps/none.py"])


def test_published_figures_match_on_the_axes_that_vary():
    seed = dict(method="simclr", epochs=20, batch_size=64, metric="linear_top1", value=26.56, source="seed")
    other_budget = dict(method="simclr", epochs=200, batch_size=512, metric="knn_top1", value=84.8, source="l")
    varying = make_sweep([dict(method=["simclr"], epochs=[20, 40], batch_size=[64])], published=[seed])
    cells = sweep_cells.expand(varying)
    assert sweep_report.matching_published(varying, cells, "simclr", {"epochs": 20, "batch_size": 64}) == [seed]
    assert sweep_report.matching_published(varying, cells, "simclr", {"epochs": 40, "batch_size": 64}) == []
    one_budget = make_sweep([dict(method=["simclr", "byol"], epochs=[20])], published=[seed, other_budget])
    cells = sweep_cells.expand(one_budget)
    assert sweep_report.matching_published(one_budget, cells, "simclr", {"epochs": 20}) == [seed, other_budget]
    assert sweep_report.matching_published(one_budget, cells, "byol", {"epochs": 20}) == []


def test_one_run_report_rows_come_from_the_metrics_log(tmp_path):
    """kNN at the smaller epochs from metrics.jsonl's eval records (as train.train writes them), the last row
    from eval.json."""
    sweep = make_sweep([dict(method=["simclr"], epochs=[1, 2, 3])], epochs_from="one_run")
    cell, = sweep_cells.expand(sweep)
    celldir = tmp_path / cell.name
    celldir.mkdir()
    records = [{"step": 4, "epoch": 1.0, "train/loss": 5.0}, {"step": 4, "epoch": 1.0, "eval/knn_top1": 0.25},
               {"step": 8, "epoch": 2.0, "eval/knn_top1": 0.5}, {"step": 12, "epoch": 3.0, "train/loss": 4.0}]
    (celldir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (celldir / "eval.json").write_text(json.dumps(dict(knn_top1=0.75, linear_top1=0.5, linear_top5=0.9, step=12,
                                                       knn_top1_random_init=0.2, linear_top1_random_init=0.125)))
    rows = sweep_report.gather(sweep, str(tmp_path))
    assert [(r["epochs"], r["knn_top1"], r["linear_top1"]) for r in rows] == [(1, 0.25, None), (2, 0.5, None),
                                                                              (3, 0.75, 0.5)]
    assert rows[0]["source"] == "one run, kNN during training" and rows[2]["source"] == "one run, final evaluation"
    assert {(r["knn_top1_random_init"], r["linear_top1_random_init"]) for r in rows} == {(0.2, 0.125)}
    markdown = sweep_report.markdown_report(sweep, rows, ["epochs"], [])
    assert "| simclr | 3 | 12 steps = 3 ep | 75.0 | 50.0 / 90.0 | 20.0 / 12.5 |  | one run, final evaluation |" in (
        markdown)
    assert "one run per line to the most epochs" in markdown


def test_report_says_which_knn_setting_and_linear_protocol_and_where_published_differs(tmp_path):
    """k and T in the kNN column's header, the protocol in the linear column's, and a note where the published
    linear figures (SGD on augmented images) were made by another protocol than ours (the fast probe). A cell
    without eval.json takes its settings from its config.json."""
    published = [dict(method="simclr", epochs=2, metric="linear_top1", value=60.0, source="paper"),
                 dict(method="simclr", epochs=2, metric="knn_top1", value=55.0, source="solo-learn")]
    sweep = make_sweep([dict(method=["simclr"], epochs=[1, 2])], published=published)
    first, second = sweep_cells.expand(sweep)
    for cell in (first, second):
        (tmp_path / cell.name).mkdir()
    (tmp_path / first.name / "eval.json").write_text(json.dumps(dict(
        knn_top1=0.5, linear_top1=0.5, linear_top5=0.9, step=4, knn_k=20, knn_temperature=0.07,
        linear_protocol="probe_cached")))
    (tmp_path / second.name / "config.json").write_text(json.dumps(dict(eval=dict(
        knn_preset="solo_learn", knn_k=0, knn_temperature=0.0, linear_protocol="sgd_augmented"))))
    rows = sweep_report.gather(sweep, str(tmp_path))
    assert [(r["knn_k"], r["knn_temperature"], r["linear_protocol"]) for r in rows] == [
        (20, 0.07, "probe_cached"), (20, 0.07, "sgd_augmented")]
    markdown = sweep_report.markdown_report(sweep, rows, ["epochs"], [])
    assert "kNN top-1 % (k=20, T=0.07)" in markdown
    assert "linear top-1 / top-5 % (fast probe: AdamW on cached un-augmented features)" in markdown
    assert "Note: The published linear figures are the papers'" in markdown and "probe_cached" in markdown
    assert "solo-learn's kNN uses k=20, T=0.07" in markdown
    sweep_report.write_csv(str(tmp_path / "results.csv"), rows, ["epochs"])
    with open(tmp_path / "results.csv") as f:
        written = list(csv.DictReader(f))
    assert (written[0]["knn_k"], written[0]["knn_temperature"], written[0]["linear_protocol"]) == (
        "20", "0.07", "probe_cached")
    # Figures of the papers' protocol only: no protocol note.
    rows[0]["linear_protocol"] = "sgd_augmented"
    markdown = sweep_report.markdown_report(sweep, rows, ["epochs"], [])
    assert "SGD on augmented images' features, solo-learn's protocol" in markdown
    assert "Note: The published linear figures" not in markdown


def test_sweep_eta_fits_overhead_plus_time_per_image():
    clock = sweep_runner.SweepClock()
    assert clock.eta([100]).startswith("unknown")
    clock.add(1000, 30.0)
    assert clock.eta([1000, 5000]) == "0:01:00"  # one size seen: each cell as long as that one
    clock.add(3000, 50.0)  # 20 s + 10 ms per image
    assert clock.fit() == pytest.approx((20.0, 0.01))
    assert clock.eta([5000, 1000]) == "0:01:40"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_sweeps_build_every_cell_config(name):
    for variant, num_cells in SHIPPED[name].items():
        sweep = sweep_cells.load_config_file(os.path.join(SWEEP_DIR, f"{name}.py") + (f":{variant}" if variant else ""))
        cells = sweep_cells.expand(sweep)
        assert len(cells) == num_cells, variant
        for cell in cells:
            config = sweep_cells.cell_config(sweep, cell)
            assert config.method == cell.method
            train.check_method_config(config, methods.get_method(cell.method))  # e.g. a queue of whole batches
        for entry in sweep.published:
            assert entry["metric"] in ("knn_top1", "linear_top1") and entry["source"] and entry["method"] in {
                c.method for c in cells}
    with pytest.raises(ValueError, match="Unknown sweep variant"):
        sweep_cells.load_config_file(os.path.join(SWEEP_DIR, f"{name}.py:nope"))


SWEEP_FILE = '''
from ssl_jax import sweep_cells


def get_config(arg=None):
    return sweep_cells.base_sweep(
        "two_by_two", "2 x 2 on synthetic images", [dict(method=["simclr"], epochs=[1, 2], batch_size=[8, 16])],
        config_arg="smoke",
        overrides=["model.width=4", "eval.knn_k=5", "eval.linear_epochs=2", "eval.max_train_examples=0",
                   "eval.batch_size=64", "eval.random_init=False", "xla_cpu_flags=none", "log_every_steps=1",
                   "checkpoint_every_steps=2"],
        published=[dict(method="simclr", epochs=2, batch_size=8, metric="linear_top1", value=12.5,
                        source="a test figure")])
'''


ONE_DEVICE = dict(os.environ, XLA_FLAGS=helpers.xla_flags())  # the cells on one CPU device, not conftest's 8


def _sweep_command(command, sweep_file, workdir, *extra):
    return [sys.executable, "-m", "ssl_jax.sweep", command, f"--sweep={sweep_file}", f"--workdir={workdir}", *extra]


def test_two_by_two_sweep_runs_resumes_an_interrupted_cell_and_reports(tmp_path):
    folder = helpers.write_image_folder(tmp_path, helpers.synthetic_dataset(num_train=32, num_test=20))
    sweep_file = tmp_path / "two_by_two.py"
    sweep_file.write_text(SWEEP_FILE)
    workdir = tmp_path / "sweep"
    data_args = [f"--config.data.path={folder}", f"--config.data.cache_dir={tmp_path / 'cache'}"]
    run = _sweep_command("run", sweep_file, workdir, *data_args)

    # First run: cells 1 and 2 finish, cell 3 (8 steps) is stopped by SIGTERM after step 4's log line.
    proc = subprocess.Popen(run, cwd=helpers.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ONE_DEVICE)
    first = []
    for line in proc.stdout:
        first.append(line)
        if "simclr_ep2_bs8 | step 4/8" in line:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=600) != 0, "".join(first)
    first = "".join(first)
    assert "[1/4] simclr_ep1_bs8: starting; sweep ETA unknown" in first and "[2/4] simclr_ep1_bs16: starting" in first
    assert "[3/4] simclr_ep2_bs8: STOPPED" in first and "[4/4]" not in first
    assert not (workdir / "simclr_ep2_bs8" / "eval.json").exists()

    # Second run: two cells skipped, the stopped one resumes from its checkpoint, the last one runs; then the report.
    second = subprocess.run(run, cwd=helpers.REPO, capture_output=True, text=True, timeout=600, env=ONE_DEVICE)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("finished before (eval.json), skipped") == 2
    assert "[3/4] simclr_ep2_bs8: resuming; sweep ETA unknown" in second.stdout
    assert "simclr_ep2_bs8 | Resuming from the checkpoint at step" in second.stdout
    assert "[4/4] simclr_ep2_bs16: starting; sweep ETA 0:" in second.stdout
    steps = [json.loads(line)["step"] for line in open(workdir / "simclr_ep2_bs8" / "metrics.jsonl")
             if "train/loss" in line]
    assert steps == list(range(1, 9)), "the resumed cell's log has each step once"

    # Third run: nothing left to do.
    third = subprocess.run(run, cwd=helpers.REPO, capture_output=True, text=True, timeout=600, env=ONE_DEVICE)
    assert third.returncode == 0 and third.stdout.count("skipped") == 4 and "starting" not in third.stdout

    with open(workdir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["cell"], r["epochs"], r["batch_size"], r["status"]) for r in rows] == [
        ("simclr_ep1_bs8", "1", "8", "finished"), ("simclr_ep1_bs16", "1", "16", "finished"),
        ("simclr_ep2_bs8", "2", "8", "finished"), ("simclr_ep2_bs16", "2", "16", "finished")]
    for row in rows:
        results = json.loads((workdir / row["cell"] / "eval.json").read_text())
        for key in ("knn_top1", "linear_top1", "linear_top5"):
            assert float(row[key]) == pytest.approx(results[key])
        assert int(row["steps"]) == int(row["epochs"]) * 32 // int(row["batch_size"]) == results["step"]
    markdown = (workdir / "results.md").read_text()
    assert "| simclr | 2 | 8 | 8 steps = 2 ep |" in markdown
    assert "12.50 linear (2 ep, batch 8; a test figure)" in markdown
    for plot in ("accuracy_vs_epochs.png", "accuracy_vs_batch_size.png"):
        assert (workdir / plot).stat().st_size > 10_000 and f"]({plot})" in markdown

    # `list` prints the commands `run` ran (each cell's sweep.log starts with it).
    listed = subprocess.run(_sweep_command("list", sweep_file, workdir, *data_args, f"--python={sys.executable}"),
                            cwd=helpers.REPO, capture_output=True, text=True, timeout=120)
    commands = listed.stdout.splitlines()
    assert len(commands) == 4
    for command, row in zip(commands, rows):
        assert (workdir / row["cell"] / "sweep.log").read_text().splitlines()[0] == f"$ {command}"


def test_a_failed_cell_does_not_stop_the_sweep(tmp_path):
    """Both cells fail at start (a batch that 8 devices cannot split): the second runs anyway, both are named at
    the end, the exit status is 1."""
    sweep_file = tmp_path / "failing.py"
    sweep_file.write_text(SWEEP_FILE.replace("batch_size=[8, 16]", "batch_size=[12]").replace(
        "epochs=[1, 2]", "epochs=[1]").replace('method=["simclr"]', 'method=["simclr", "vicreg"]'))
    result = subprocess.run(_sweep_command("run", sweep_file, tmp_path / "w", "--config.data.path=/nowhere"),
                            cwd=helpers.REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "[1/2] simclr_ep1_bs12: FAILED" in result.stdout and "[2/2] vicreg_ep1_bs12: FAILED" in result.stdout
    assert "2 cell(s) did not finish" in result.stderr
    assert "simclr_ep1_bs12 (exit status 2): error:" in result.stderr
