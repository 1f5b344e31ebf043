"""A sweep's report from its cells' files: results.csv, results.md (ours beside the published figures and the
random-init baseline) and the accuracy plots."""
import csv
import json
import os

from ssl_jax import evaluate
from ssl_jax import metrics_log
from ssl_jax import run_files
from ssl_jax import sweep_cells

METRICS = ("knn_top1", "linear_top1", "linear_top5")
PLOT_AXES = ("epochs", "batch_size")
SETTINGS = ("knn_k", "knn_temperature", "linear_protocol")  # what produced the figures (evaluate.SETTING_KEYS)
RESULT_COLUMNS = ("cell", "method", "source", "epoch", "steps", "batch_size", *METRICS,
                  *(f"{m}_random_init" for m in METRICS), *SETTINGS, "published", "status")
PROTOCOL_WORDS = {"probe_cached": "fast probe: AdamW on cached un-augmented features",
                  "sgd_augmented": "SGD on augmented images' features, solo-learn's protocol"}


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def varying_axes(cells):
    """The axes that take more than one value over the cells: published figures are matched on these."""
    return [a for a in dict.fromkeys(a for c in cells for a, _ in c.values) if len({c.value(a) for c in cells}) > 1]


def matching_published(sweep, cells, method, values):
    """Published figures for `method` whose epochs / batch size agree with `values` on the axes that vary."""
    varying = varying_axes(cells)
    return [p for p in sweep.published if p["method"] == method
            and all(p.get(a) is None or a not in varying or p[a] == values.get(a) for a in PLOT_AXES)]


def describe_published(p):
    budget = ", ".join(text for key, text in (("epochs", f"{p.get('epochs')} ep"),
                                               ("batch_size", f"batch {p.get('batch_size')}")) if p.get(key))
    return f"{p['value']:.2f} {p['metric'].split('_')[0]} ({budget + '; ' if budget else ''}{p['source']})"


def cell_rows(sweep, cells, cell, workdir):
    """The report's rows for one cell: one, or with `evaluated_epochs` one per evaluated epoch (kNN from
    metrics.jsonl, the last row from eval.json)."""
    celldir = os.path.join(workdir, cell.name)
    results = _read_json(os.path.join(celldir, run_files.EVAL_FILE))
    config = _read_json(os.path.join(celldir, run_files.CONFIG_FILE)) or {}
    records = metrics_log.read_metrics(celldir)
    trained = [r for r in records if "train/loss" in r]
    base = dict(cell=cell.name, method=cell.method, **dict(cell.values))
    base.update(_settings(results, config))
    base.update(batch_size=config.get("batch_size", cell.value("batch_size")),
                status="finished" if results else ("interrupted" if trained else "not run"))
    if results:
        base.update({k: results.get(k) for k in RESULT_COLUMNS if k.endswith("_random_init")})
    final = dict(base, source="run", steps=results.get("step") if results else None,
                 epoch=trained[-1]["epoch"] if trained else None, **{m: (results or {}).get(m) for m in METRICS})
    rows = []
    for epoch in cell.evaluated_epochs[:-1]:
        knn = [r["eval/knn_top1"] for r in records if "eval/knn_top1" in r and abs(r["epoch"] - epoch) < 1e-6]
        row = dict(base, epochs=epoch, epoch=epoch, steps=None, source="one run, kNN during training",
                   **dict.fromkeys(METRICS))
        row["knn_top1"] = knn[-1] if knn else None
        rows.append(row)
    if cell.evaluated_epochs:
        final["source"] = "one run, final evaluation"
    rows.append(final)
    for row in rows:
        values = {a: row.get(a) for a in PLOT_AXES}
        row["published"] = "; ".join(map(describe_published, matching_published(sweep, cells, cell.method, values)))
    return rows


def _settings(results, config):
    """knn_k, knn_temperature, linear_protocol: from eval.json, else (a run written before they were recorded, or
    not finished) from the cell's config.json; None where neither says."""
    settings = {k: (results or {}).get(k) for k in SETTINGS}
    eval_config = config.get("eval")
    if eval_config:
        try:
            k, temperature = evaluate.knn_settings(eval_config)
            protocol = evaluate.linear_protocol(eval_config)
        except ValueError:
            return settings
        for key, value in zip(SETTINGS, (k, temperature, protocol)):
            settings[key] = value if settings[key] is None else settings[key]
    return settings


def gather(sweep, workdir):
    """Every cell's results as rows (dicts), in the sweep's order."""
    cells = sweep_cells.expand(sweep)
    return [row for cell in cells for row in cell_rows(sweep, cells, cell, workdir)]


def _percent(value):
    return "" if value is None else f"{100 * value:.1f}"


def _trained(row):
    if row.get("epoch") is None:
        return ""
    steps = f"{row['steps']} steps = " if row.get("steps") else ""
    return f"{steps}{row['epoch']:.3g} ep"


def markdown_report(sweep, rows, axes, plots):
    """results.md: the sweep, where its epochs axis comes from, the table of cells and the published figures."""
    lines = [f"# Sweep `{sweep.name}`", "", sweep.description, ""]
    if sweep.note:
        lines += [sweep.note, ""]
    lines += [f"Epochs axis: {sweep_cells.EPOCHS_SOURCES[sweep.epochs_from]}", ""]
    knn_settings = sorted({(r["knn_k"], r["knn_temperature"]) for r in rows
                           if r.get("knn_top1") is not None and r.get("knn_k") is not None})
    protocols = sorted({r["linear_protocol"] for r in rows
                        if r.get("linear_top1") is not None and r.get("linear_protocol")})
    knn_header = "kNN top-1 %" + (f" (k={knn_settings[0][0]}, T={knn_settings[0][1]:g})" if len(knn_settings) == 1
                                  else " (k, T: see below)" if knn_settings else "")
    linear_header = "linear top-1 / top-5 %" + (f" ({PROTOCOL_WORDS.get(protocols[0], protocols[0])})"
                                                if len(protocols) == 1 else " (protocols: see below)" if protocols else "")
    header = ["method", *axes, "trained", knn_header, linear_header, "random init kNN / linear %",
              "published", "status"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        random_init = (f"{_percent(r.get('knn_top1_random_init'))} / {_percent(r.get('linear_top1_random_init'))}"
                       if r.get("knn_top1_random_init") is not None else "")
        linear = (f"{_percent(r['linear_top1'])} / {_percent(r['linear_top5'])}"
                  if r.get("linear_top1") is not None else "")
        status = r["source"] if r["status"] == "finished" and r["source"] != "run" else r["status"]
        cells = [r["method"], *(str(r.get(a, "")) for a in axes), _trained(r), _percent(r.get("knn_top1")),
                 linear, random_init, r["published"], status]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _settings_notes(sweep, rows, knn_settings, protocols)
    if sweep.published:
        lines += ["", "Published figures (percent; epochs, batch size, kNN or linear top-1, source):", ""]
        lines += [f"- {p['method']}: {describe_published(p)}" for p in sweep.published]
    lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    return "\n".join(lines) + "\n"


def _settings_notes(sweep, rows, knn_settings, protocols):
    """The table's notes: which kNN setting and linear protocol each figure used, and where the published figures'
    protocol differs from ours."""
    notes = []
    if len(knn_settings) > 1:
        notes.append("kNN settings by cell: " + "; ".join(
            f"{r['cell']} k={r['knn_k']}, T={r['knn_temperature']:g}" for r in rows
            if r.get("knn_top1") is not None and r.get("knn_k") is not None and r["source"] != "one run, kNN during "
            "training"))
    if len(protocols) > 1:
        notes.append("Linear protocol by cell: " + "; ".join(
            f"{r['cell']} {r['linear_protocol']}" for r in rows if r.get("linear_top1") is not None))
    published_metrics = {p["metric"] for p in sweep.published}
    if "linear_top1" in published_metrics and "probe_cached" in protocols:
        notes.append("The published linear figures are the papers' / solo-learn's protocol, SGD on the frozen "
                     "features of augmented training images (sgd_augmented); the linear figures here marked "
                     "probe_cached are the fast probe on cached, un-augmented features, a different protocol: rerun "
                     "the evaluation with `python -m ssl_jax.evaluate --workdir=CELL --linear_protocol=sgd_augmented` "
                     "for the same protocol.")
    if "knn_top1" in published_metrics and knn_settings:
        ours = ", ".join(f"k={k}, T={t:g}" for k, t in knn_settings)
        notes.append(f"kNN settings differ between sources: ours {ours}; solo-learn's kNN uses k=20, T=0.07 "
                     "(`--knn=solo_learn`), lightly's benchmark k=200, T=0.1 (`--knn=lightly`).")
    return [""] + [f"Note: {n}" for n in notes] if notes else []


def write_csv(path, rows, axes):
    columns = list(RESULT_COLUMNS[:2]) + list(axes) + [c for c in RESULT_COLUMNS[2:] if c not in axes]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _line_groups(rows, x_axis, axes):
    """Rows with a value on `x_axis`, grouped into lines by method and the other axes' values."""
    others = [a for a in axes if a != x_axis]
    groups = {}
    for r in rows:
        if r.get(x_axis) is not None:
            groups.setdefault((r["method"],) + tuple(r.get(a) for a in others), []).append(r)
    return others, groups


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _published_points(sweep, method, metric, x_axis, other_values):
    """(x, %) of the published figures for one plotted line; `other_values`: the line's other axes."""
    return sorted((p[x_axis], p["value"]) for p in sweep.published
                  if p["method"] == method and p["metric"] == metric and p.get(x_axis) is not None
                  and all(p.get(a) in (None, v) for a, v in other_values))


def _finish_panel(panel, sweep, rows, x_axis, metric):
    """Labels, the mean random-init accuracy (dotted), a log2 axis for batch sizes, the legend."""
    import matplotlib.ticker

    baseline = [100 * r[f"{metric}_random_init"] for r in rows if r.get(f"{metric}_random_init") is not None]
    if baseline:
        panel.axhline(sum(baseline) / len(baseline), color="grey", ls=":", label="random init (mean)")
    panel.set_xlabel(sweep.axis_labels.get(x_axis, x_axis))
    panel.set_ylabel(f"{metric.replace('_top1', '').replace('knn', 'kNN')} top-1 (%)")
    if x_axis == "batch_size":
        panel.set_xscale("log", base=2)
        panel.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    panel.grid(alpha=0.3)
    panel.legend(fontsize=7)


def plot_axis(sweep, rows, axes, x_axis, path):
    """accuracy_vs_<axis>.png: kNN and linear top-1 against the axis, one line per method (and per value of the
    other axes), the published figures dashed in the same colour."""
    others, groups = _line_groups(rows, x_axis, axes)
    groups = {k: v for k, v in groups.items() if len({r[x_axis] for r in v}) > 1}
    if not groups:
        return None
    plt = _pyplot()
    fig, panels = plt.subplots(1, 2, figsize=(11, 4.2))
    for (method, *other_values), group in groups.items():
        other_values = list(zip(others, other_values))
        label = method + "".join(f", {a} {v}" for a, v in other_values if len({r.get(a) for r in rows}) > 1)
        for panel, metric in zip(panels, ("knn_top1", "linear_top1")):
            points = sorted((r[x_axis], 100 * r[metric]) for r in group if r.get(metric) is not None)
            if not points:
                continue
            line, = panel.plot(*zip(*points), "o-", label=label)
            published = _published_points(sweep, method, metric, x_axis, other_values)
            if published:
                panel.plot(*zip(*published), "x--", color=line.get_color(), label=f"{label} (published)")
    for panel, metric in zip(panels, ("knn_top1", "linear_top1")):
        _finish_panel(panel, sweep, rows, x_axis, metric)
    fig.suptitle(f"{sweep.name}: accuracy vs {x_axis}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_methods(sweep, rows, path):
    """accuracy_by_method.png (when no epochs or batch axis varies): kNN and linear top-1 per cell as bars, each
    with its random-init accuracy (black line) and the method's published figures (red crosses)."""
    rows = [r for r in rows if r.get("knn_top1") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 4))
    for offset, metric, label in ((-0.2, "knn_top1", "kNN"), (0.2, "linear_top1", "linear")):
        x = [i + offset for i in range(len(rows))]
        ax.bar(x, [100 * (r.get(metric) or 0) for r in rows], 0.4, label=f"{label} top-1")
        ax.plot(x, [100 * (r.get(f"{metric}_random_init") or 0) for r in rows], "k_", ms=16,
                label=f"{label}, random init")
        published = [(xi, p["value"]) for xi, r in zip(x, rows) for p in sweep.published
                     if p["method"] == r["method"] and p["metric"] == metric]
        if published:
            ax.plot(*zip(*published), "rx", label=f"{label}, published (results.md)")
    ax.set_xticks(range(len(rows)), [r["cell"] for r in rows], rotation=20, fontsize=7)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(sweep.name)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(sweep, workdir, print_fn=print):
    """Writes DIR/results.csv, DIR/results.md and the plots from every cell's files; returns the markdown."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    rows = gather(sweep, workdir)
    axes = sweep_cells.axis_order(sweep)
    write_csv(os.path.join(workdir, "results.csv"), rows, axes)
    plots = [plot_axis(sweep, rows, axes, a, os.path.join(workdir, f"accuracy_vs_{a}.png"))
             for a in PLOT_AXES if a in axes]
    plots = [p for p in plots if p] or [plot_methods(sweep, rows, os.path.join(workdir, "accuracy_by_method.png"))]
    plots = [p for p in plots if p]
    text = markdown_report(sweep, rows, axes, plots)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    missing = [r["cell"] for r in rows if r["status"] != "finished"]
    if missing:
        print_fn(f"{len(missing)} of {len(rows)} rows have no eval.json yet: {', '.join(missing)}")
    print_fn(text)
    print_fn(f"Report: {os.path.join(workdir, 'results.md')}, results.csv, "
             f"{', '.join(os.path.basename(p) for p in plots) or 'no plot (no results yet)'}")
    return text
