"""Runs launch/colab.ipynb headless, cell by cell, on this checkout and this Python; exits non-zero when a cell fails.

    python launch/run_notebook.py --data=../shared/data/cifar10-jpeg.tar.gz

The notebook's settings cell reads SSL_JAX_* environment variables, set here: SSL_JAX_NOTEBOOK_HEADLESS=1 (no clone,
no pip install, no Google Drive, no full-length training), SSL_JAX_TRAIN_STEPS (--train_steps: 0 skips the
training cell's run and the cells after it read the smoke test's outputs; N runs the :smoke network N steps with a
short evaluation instead of the full recipe), SSL_JAX_REPO_DIR (this checkout), SSL_JAX_DATA_PATH (--data), SSL_JAX_WORK_ROOT
(--workdir), SSL_JAX_CONFIG (--config) and SSL_JAX_EXTRA_FLAGS (--extra_flags, appended to both training commands).
On Colab none is set and the notebook keeps its defaults.

The kernel is IPython (ipykernel) on this interpreter, sys.executable, through a kernel spec of its own, so the
notebook's `!` commands (`{PYTHON} -m ssl_jax.main ...`) run the same Python. Each cell's output is printed as it
finishes; the executed notebook, outputs included, is written to WORKDIR/colab.executed.ipynb. Needs nbclient,
nbformat and ipykernel (the `test` extra). Without --data the notebook downloads CIFAR-10 (online only).
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab.ipynb")
KERNEL_NAME = "ssl-jax-headless"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", default=NOTEBOOK, help="the notebook to run (default: launch/colab.ipynb)")
    parser.add_argument("--data", default="", help="CIFAR-10 copy for --config.data.path (archive, folder or "
                        "image-folder tarball); empty: the library's default (downloads when online)")
    parser.add_argument("--workdir", default="", help="work root: WORKDIR/smoke, WORKDIR/<config name> and the "
                        "executed notebook (default: a new temporary directory)")
    parser.add_argument("--config", default="configs/simclr_cifar.py", help="the notebook's CONFIG")
    parser.add_argument("--extra_flags", default="", help="flags appended to both training commands, e.g. "
                        "'--config.model.width=4 --config.num_train_steps=2'")
    parser.add_argument("--train_steps", type=int, default=0, help="the training cell's run: N steps of the :smoke "
                        "network with a short evaluation; 0 (default) skips it, and the cells after it read the smoke "
                        "test's outputs")
    parser.add_argument("--cell_timeout", type=int, default=600, help="seconds one cell may run (default 600)")
    parser.add_argument("--startup_timeout", type=int, default=120, help="seconds the kernel may take to start")
    return parser.parse_args(argv)


def write_kernel_spec(root):
    """A kernel spec that starts ipykernel on this interpreter; returns the folder to put on JUPYTER_PATH."""
    folder = os.path.join(root, "kernels", KERNEL_NAME)
    os.makedirs(folder, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({sys.executable})", "language": "python"}
    with open(os.path.join(folder, "kernel.json"), "w") as f:
        json.dump(spec, f)
    return root


def output_text(output):
    """The printable part of one cell output."""
    kind = output.get("output_type")
    if kind == "stream":
        return output.get("text", "")
    if kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        if "text/plain" in data and not any(k.startswith("image/") for k in data):
            return data["text/plain"] + "\n"
        return "[" + ", ".join(sorted(data)) + "]\n"
    if kind == "error":
        return f"{output.get('ename')}: {output.get('evalue')}\n"
    return ""


def first_line(cell):
    lines = [line for line in "".join(cell.source).splitlines() if line.strip()]
    return lines[0][:100] if lines else ""


def run(args, kernels):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="ssl_jax_notebook_"))
    os.makedirs(workdir, exist_ok=True)
    kernels = write_kernel_spec(kernels)
    # Read by the notebook's settings cell, through the kernel's environment.
    os.environ.update({
        "SSL_JAX_NOTEBOOK_HEADLESS": "1",
        "SSL_JAX_REPO_DIR": REPO,
        "SSL_JAX_WORK_ROOT": workdir,
        "SSL_JAX_DATA_PATH": os.path.abspath(args.data) if args.data else "",
        "SSL_JAX_CONFIG": args.config,
        "SSL_JAX_EXTRA_FLAGS": args.extra_flags,
        "SSL_JAX_TRAIN_STEPS": str(args.train_steps),
        "JUPYTER_PATH": os.pathsep.join(p for p in (kernels, os.environ.get("JUPYTER_PATH")) if p),
    })
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MPLBACKEND", "Agg")

    nb = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=args.cell_timeout,
                            startup_timeout=args.startup_timeout, resources={"metadata": {"path": REPO}})
    executed = os.path.join(workdir, "colab.executed.ipynb")
    code_cells = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    print(f"Running {args.notebook} headless: {len(code_cells)} code cells, kernel {sys.executable}, "
          f"work root {workdir}", flush=True)
    start = time.time()
    failure = None
    try:
        with client.setup_kernel():
            for number, index in enumerate(code_cells, 1):
                cell = nb.cells[index]
                cell_start = time.time()
                print(f"\n--- cell {index} (code cell {number}/{len(code_cells)}): {first_line(cell)}", flush=True)
                try:
                    client.execute_cell(cell, index)
                except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
                    failure = (index, number, cell, error)
                finally:
                    text = "".join(output_text(o) for o in cell.get("outputs", []))
                    if text:
                        print(text.rstrip("\n"), flush=True)
                    print(f"--- cell {index}: {time.time() - cell_start:.1f} s", flush=True)
                if failure:
                    break
    finally:
        nbformat.write(nb, executed)
    elapsed = time.time() - start
    if failure:
        index, number, cell, error = failure
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        reason = (f"{errors[-1].get('ename')}: {errors[-1].get('evalue')}" if errors
                  else f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}")
        for output in errors:
            print(re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(output.get("traceback", []))), file=sys.stderr)
        print(f"\nNOTEBOOK FAILED at cell {index} (code cell {number}/{len(code_cells)}, '{first_line(cell)}') "
              f"after {elapsed:.0f} s: {reason}\nExecuted notebook with its outputs: {executed}", file=sys.stderr)
        return 1
    print(f"\nNotebook ran: {len(code_cells)} code cells in {elapsed:.0f} s; executed copy {executed}")
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="ssl_jax_kernel_") as kernels:
        return run(args, kernels)


if __name__ == "__main__":
    sys.exit(main())
