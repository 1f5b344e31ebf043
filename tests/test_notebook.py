"""launch/colab.ipynb and its headless runner, launch/run_notebook.py.

The whole notebook runs in CI on the real CIFAR-10 copy (`.ci/run`; about 2 minutes, mostly its smoke test). Here,
in seconds: its `!` commands use the kernel's Python and stop the notebook when they fail, and the runner executes
the notebook's own settings cell in a kernel on this interpreter, with the SSL_JAX_* overrides, and exits 1 naming
the failing cell.
"""
import json
import os
import re
import subprocess
import sys

import pytest

import helpers

NOTEBOOK = os.path.join(helpers.REPO, "launch", "colab.ipynb")
RUNNER = os.path.join(helpers.REPO, "launch", "run_notebook.py")


def code_cells():
    with open(NOTEBOOK) as f:
        notebook = json.load(f)
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_notebook_shell_commands_run_the_kernels_python_and_are_checked():
    cells = code_cells()
    commands = [(cell, line.strip()) for cell in cells for line in cell.splitlines() if line.strip().startswith("!")]
    assert commands
    for cell, command in commands:
        # A bare `python`/`pip` would be whatever the shell finds first (a system Python in CI).
        assert not re.match(r"!\s*(python3?|pip3?)\b", command), command
        assert not re.search(r"&&\s*(python3?|pip3?)\b", command), command
        if re.search(r"ssl_jax\.main|pip install|git clone|TRAIN_CMD", command):
            assert "check(" in cell.split(command, 1)[1], f"no check() after {command!r}"
    assert any("{PYTHON} -m ssl_jax.main" in command for _, command in commands)
    settings = cells[0]
    for name in ("SSL_JAX_NOTEBOOK_HEADLESS", "SSL_JAX_REPO_DIR", "SSL_JAX_DATA_PATH", "SSL_JAX_WORK_ROOT"):
        assert name in settings
    # Colab's defaults stay Colab's.
    assert 'REPO_DIR = "/content/ssl_jax"' in settings and "USE_DRIVE = True" in settings


def _notebook(path, *sources):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(notebook, path)
    return path


def test_runner_executes_the_settings_cell_and_names_the_failing_cell(tmp_path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    settings = code_cells()[0]
    notebook = _notebook(
        tmp_path / "nb.ipynb", settings,
        'print("headless", HEADLESS, "data", DATA_PATH, "drive", USE_DRIVE, "workdir", WORKDIR)\n'
        '!{PYTHON} -c "import sys; print(\'shell python\', sys.executable)"\ncheck("printing")',
        '!{PYTHON} -c "raise SystemExit(3)"\ncheck("The command")',
        'print("not reached")')
    env = dict(os.environ, XLA_FLAGS=helpers.xla_flags(), JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, RUNNER, f"--notebook={notebook}", f"--workdir={tmp_path / 'w'}",
                             f"--data={tmp_path / 'data'}"], cwd=helpers.REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"headless True data {tmp_path / 'data'} drive False workdir {tmp_path / 'w'}/smoke" in result.stdout
    assert f"shell python {sys.executable}" in result.stdout
    assert "not reached" not in result.stdout
    assert "NOTEBOOK FAILED at cell 2 (code cell 3/4" in result.stderr
    assert "RuntimeError: The command failed with exit status 3" in result.stderr
    assert os.path.exists(tmp_path / "w" / "colab.executed.ipynb")
