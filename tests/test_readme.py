"""The README's figures are those of the committed runs, and the house's import contracts hold."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tools import readme
from utils.paths import ROOT


def test_readme_figures_equal_the_committed_results():
    assert readme.current() == readme.block(), (
        "README.md's generated block disagrees with results/*.json: run `python -m tools.readme`.")


def test_every_notebook_states_its_findings():
    names = {r["notebook"] for r in readme._results() if r.get("headline")}
    notebooks = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert notebooks <= names, f"no headline in results/ for {sorted(notebooks - names)}"


def test_the_check_fails_on_a_changed_figure(tmp_path, monkeypatch):
    fake = tmp_path / "README.md"
    fake.write_text(ROOT.joinpath("README.md").read_text().replace(readme.END, "| tampered |\n" + readme.END))
    monkeypatch.setattr(readme, "README", fake)
    assert readme.main(["--check"]) == 1


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(ROOT / ".venv" / "bin" / "lint-imports")
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
