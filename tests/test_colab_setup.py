"""The first cell of every notebook, run in a simulated Colab (no network, nothing really executed).

The cell is taken from each notebook and exec'd with a fake ``google.colab`` module, ``subprocess.run``
replaced by a recorder and ``os.chdir`` / ``os.getcwd`` / ``os.path.isdir`` patched. On Colab it must
clone the course and pip-install ``requirements-colab.txt`` (never torch: Colab's CUDA build stays);
when the clone is already there it only moves into it; outside Colab it runs nothing.
``requirements-colab.txt`` itself is checked against ``requirements.txt`` and the installed metadata.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import types
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from utils.paths import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CLONE = "/content/course"
COLAB_REQUIREMENTS = ROOT / "requirements-colab.txt"
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "triton"}
# Colab has shipped torch >= 2.6 since early 2025; nothing we install may ask for more.
COLAB_TORCH_FLOOR = Version("2.6.0")
# What Colab lacks and the course needs (utils imports them).
COLAB_LACKS = {"peft", "bitsandbytes", "rouge-score", "gguf", "accelerate"}


def setup_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    return code[0].source


class Colab:
    """The simulated machine: what the cell ran, where it moved, what it put first on sys.path.
    The patches hold only while the cell runs, so pytest's own reporting sees the real machine."""

    def __init__(self, monkeypatch, on_colab: bool, cloned: bool, cwd: str):
        self.mp, self.on_colab, self.cloned, self.cwd = monkeypatch, on_colab, cloned, cwd
        self.calls: list[tuple[list[str], dict]] = []
        self.chdirs: list[str] = []
        self.path0: str | None = None

    def exec(self, source: str):
        with self.mp.context() as m:
            if self.on_colab:
                m.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
            else:
                m.delitem(sys.modules, "google.colab", raising=False)
            m.setattr(subprocess, "run", self._run)
            for name in ("Popen", "call", "check_call", "check_output"):
                m.setattr(subprocess, name, self._forbidden(f"subprocess.{name}"))
            m.setattr(os, "system", self._forbidden("os.system"))
            m.setattr(os, "chdir", self._chdir)
            m.setattr(os, "getcwd", lambda: self.cwd)
            m.setattr(os.path, "isdir", self._isdir)
            m.setattr(socket.socket, "connect", self._forbidden("a network connection"))
            m.setattr(sys, "path", list(sys.path))
            exec(compile(source, "<setup cell>", "exec"), {"__name__": "__main__"})
            self.path0 = sys.path[0]

    def _run(self, args, *a, **kw):
        self.calls.append(([str(x) for x in args], kw))
        return subprocess.CompletedProcess(args, 0, "", "")

    @staticmethod
    def _forbidden(what):
        def fail(*a, **kw):
            raise AssertionError(f"the setup cell used {what}")
        return fail

    def _chdir(self, path):
        self.chdirs.append(str(path))
        self.cwd = str(path)

    def _isdir(self, path):
        return self.cloned and str(path).rstrip("/") == CLONE

    @property
    def commands(self) -> list[list[str]]:
        return [args for args, _ in self.calls]


def _pip_installs(commands):
    return [c for c in commands if "pip" in c and "install" in c]


def _mentions_torch(arg: str) -> bool:
    name = re.split(r"[<>=!~\[;@ ]", arg.strip(), maxsplit=1)[0]
    return canonicalize_name(name) in TORCH_FAMILY if name else False


def setup_problems(source: str, monkeypatch) -> list[str]:
    """Run the cell on a fresh Colab, on a Colab where the course is already cloned, and outside
    Colab; return what it did wrong."""
    bad = []
    monkeypatch.delenv("COURSE_REPO", raising=False)
    fresh = Colab(monkeypatch, on_colab=True, cloned=False, cwd="/content")
    fresh.exec(source)
    cmds = fresh.commands
    clones = [c for c in cmds if c[:2] == ["git", "clone"]]
    if len(clones) != 1 or clones[0][-1] != CLONE or not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", clones[0][-2]):
        bad.append(f"fresh Colab: expected one `git clone <github repo> {CLONE}`, got {cmds}")
    pips = _pip_installs(cmds)
    expected_pip = [sys.executable, "-m", "pip", "install", "-q", "-r", f"{CLONE}/requirements-colab.txt"]
    if pips != [expected_pip]:
        bad.append(f"fresh Colab: expected one {' '.join(expected_pip[1:])}, got {pips}")
    elif clones and cmds.index(pips[0]) < cmds.index(clones[0]):
        bad.append("fresh Colab: installs before cloning")
    if len(cmds) != len(clones) + len(pips):
        bad.append(f"fresh Colab: runs more than the clone and the install: {cmds}")
    if not all(kw.get("check") is True for _, kw in fresh.calls):
        bad.append("fresh Colab: a command without check=True (a failed clone or install must stop the notebook)")
    for cmd in cmds:
        if any(_mentions_torch(a) for a in cmd):
            bad.append(f"fresh Colab: installs torch: {cmd}")
        if {"-U", "--upgrade", "--force-reinstall", "--upgrade-strategy"} & set(cmd):
            bad.append(f"fresh Colab: upgrades packages: {cmd}")
    if fresh.chdirs != [f"{CLONE}/notebooks"] or fresh.path0 != CLONE:
        bad.append(f"fresh Colab: should move to {CLONE}/notebooks and import from {CLONE}; "
                   f"moved to {fresh.chdirs}, sys.path[0] = {fresh.path0}")

    again = Colab(monkeypatch, on_colab=True, cloned=True, cwd="/content")
    again.exec(source)
    if again.calls:
        bad.append(f"Colab with the course already cloned: should run nothing, ran {again.commands}")
    if again.chdirs != [f"{CLONE}/notebooks"] or again.path0 != CLONE:
        bad.append(f"Colab with the course already cloned: moved to {again.chdirs}, sys.path[0] = {again.path0}")

    local = Colab(monkeypatch, on_colab=False, cloned=False, cwd=str(ROOT / "notebooks"))
    local.exec(source)
    if local.calls or local.chdirs:
        bad.append(f"outside Colab: should do nothing, ran {local.commands}, moved to {local.chdirs}")
    if local.path0 != str(ROOT):
        bad.append(f"outside Colab: sys.path[0] should be the course root, is {local.path0}")
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_setup_cell_clones_and_installs_only_on_colab_and_never_torch(path, monkeypatch):
    assert setup_problems(setup_cell(path), monkeypatch) == []


REFERENCE = setup_cell(NOTEBOOKS[0]) if NOTEBOOKS else ""
PIP_LINE = '"/content/course/requirements-colab.txt"], check=True)'


@pytest.mark.skipif(not REFERENCE, reason="no notebook")
@pytest.mark.parametrize("mutation, expected", [
    ((PIP_LINE, '"/content/course/requirements-colab.txt", "torch"], check=True)'), "installs torch"),
    ((PIP_LINE, '"/content/course/requirements-colab.txt", "-U"], check=True)'), "upgrades packages"),
    ((PIP_LINE, '"/content/course/requirements-colab.txt"])'), "without check=True"),
    (('if "google.colab" in sys.modules and not', 'if not'), "outside Colab: should do nothing"),
    (('not os.path.isdir("/content/course")', 'True'), "already cloned: should run nothing"),
    (('    os.chdir("/content/course/notebooks")', '    pass'), "should move to /content/course/notebooks"),
    (('"--depth", "1", COURSE_REPO', '"--depth", "1", "https://example.org/x"'), "expected one `git clone"),
])
def test_setup_checks_catch_a_broken_cell(mutation, expected, monkeypatch):
    old, new = mutation
    assert old in REFERENCE, f"the reference cell changed: update this test ({old!r})"
    problems = setup_problems(REFERENCE.replace(old, new), monkeypatch)
    assert any(expected in p for p in problems), problems


def test_course_repo_can_be_overridden(monkeypatch):
    monkeypatch.setenv("COURSE_REPO", "https://github.com/someone/fork")
    colab = Colab(monkeypatch, on_colab=True, cloned=False, cwd="/content")
    colab.exec(setup_cell(NOTEBOOKS[0]))
    assert colab.commands[0][-2:] == ["https://github.com/someone/fork", CLONE]


def test_every_notebook_starts_with_the_same_setup_cell():
    cells = {p.name: setup_cell(p) for p in NOTEBOOKS}
    first = cells[NOTEBOOKS[0].name]
    assert "google.colab" in first
    assert [name for name, src in cells.items() if src != first] == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_colab_badge_opens_this_notebook_from_the_cloned_repository(path, monkeypatch):
    monkeypatch.delenv("COURSE_REPO", raising=False)
    colab = Colab(monkeypatch, on_colab=True, cloned=False, cwd="/content")
    colab.exec(setup_cell(path))
    repo = colab.commands[0][-2].removeprefix("https://github.com/")
    nb = nbformat.read(path, as_version=4)
    first_md = next(c.source for c in nb.cells if c.cell_type == "markdown")
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{repo}/blob/main/notebooks/{path.name})"
    assert badge in first_md, f"{path.name}: the first markdown cell needs the badge\n{badge}"


# ----------------------------------------------------------------------------------------------
# requirements-colab.txt
# ----------------------------------------------------------------------------------------------

def _requirements(path: Path) -> dict[str, Requirement]:
    reqs = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            r = Requirement(line)
            reqs[canonicalize_name(r.name)] = r
    return reqs


def _makefile_wheels() -> dict[str, str]:
    """The offline wheels make install adds with --no-deps: name -> version."""
    lines = re.findall(r"--no-deps([^\n]*)", (ROOT / "Makefile").read_text())
    return {canonicalize_name(n): v for line in lines for n, v in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][\w.]*)", line)}


def test_colab_requirements_never_install_torch():
    reqs = _requirements(COLAB_REQUIREMENTS)
    assert reqs, "requirements-colab.txt is empty"
    assert not TORCH_FAMILY & set(reqs), f"requirements-colab.txt lists {TORCH_FAMILY & set(reqs)}"


def test_colab_requirements_cover_what_colab_lacks():
    assert COLAB_LACKS <= set(_requirements(COLAB_REQUIREMENTS)), COLAB_LACKS - set(_requirements(COLAB_REQUIREMENTS))


def test_colab_requirements_pin_the_versions_the_course_was_run_with():
    main, wheels = _requirements(ROOT / "requirements.txt"), _makefile_wheels()
    for name, req in _requirements(COLAB_REQUIREMENTS).items():
        if name in main:
            assert req.specifier == main[name].specifier, f"{name}: {req} here, {main[name]} in requirements.txt"
        else:
            assert name in wheels, f"{name} is in neither requirements.txt nor make install"
            assert str(req.specifier) == f"=={wheels[name]}", f"{name}: {req} here, =={wheels[name]} in the Makefile"


def _dependencies(name: str, seen: set[str]):
    """(package, requirement) for every dependency installed here, transitively (extras ignored)."""
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        return
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        yield name, req
        dep = canonicalize_name(req.name)
        if dep not in seen and dep not in TORCH_FAMILY:
            seen.add(dep)
            yield from _dependencies(dep, seen)


def test_nothing_in_the_colab_requirements_asks_for_a_newer_torch():
    checked, seen = [], set()
    for name in _requirements(COLAB_REQUIREMENTS):
        for pkg, req in _dependencies(name, seen):
            if canonicalize_name(req.name) == "torch":
                checked.append(pkg)
                assert req.specifier.contains(COLAB_TORCH_FLOOR, prereleases=True), \
                    f"{pkg} requires {req}: it would replace a Colab torch {COLAB_TORCH_FLOOR}"
    assert {"peft", "bitsandbytes", "accelerate"} <= {canonicalize_name(p) for p in checked}, checked
