"""Run the notebooks in course order and report a per-notebook table (result, seconds, peak memory, profile).

``python -m tools.runner execute NB...``  re-executes notebooks in place, refreshing their outputs, img/ and
                                          results/ (``make course``: the one command that refreshes them);
``python -m tools.runner nbval NB...``    re-executes them under nbval, one pytest per notebook (``make test``), in a
                                          temporary copy of the course, so that the working tree stays as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from utils.paths import CACHE_DIR, ROOT
from utils.profiles import cpu_model


def _profile_of(root: Path, nb: Path) -> str:
    try:
        return json.loads((root / "results" / f"{nb.stem}.json").read_text()).get("profile", "?")
    except (OSError, ValueError):
        return "?"


def _call(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[int, float]:
    """Exit status and peak resident memory (MB) of a command: the largest of its process and the
    processes it waited for (the notebook's kernel), as the kernel's accounting reports it (Linux)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024     # ru_maxrss is in KiB on Linux


def copy_course(dest: Path) -> Path:
    """The course's files (tracked, and new ones git does not ignore) copied to ``dest``: what a fresh clone
    holds, plus uncommitted edits. Outside a git checkout, everything but the venv, caches and site."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        files = [f for f in out.split("\0") if f and (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", ".cache", ".git", "_site", "__pycache__", ".pytest_cache"}
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    return dest


def main(argv: list[str]) -> int:
    mode, notebooks = argv[0], [Path(a) for a in argv[1:]]
    if mode not in ("execute", "nbval"):
        raise SystemExit(f"unknown mode {mode!r}: use `execute` (refresh outputs in place) or `nbval` (test).")
    tmp = tempfile.TemporaryDirectory(prefix="course-nbval-") if mode == "nbval" else None
    root = copy_course(Path(tmp.name)) if tmp else ROOT
    env = {**os.environ, "PYTHONPATH": str(root), "COURSE_CACHE_DIR": str(CACHE_DIR)}
    if tmp:
        print(f"nbval runs in a temporary copy of the course: the working tree is left as it is", flush=True)
    rows, failed = [], False
    try:
        for nb in notebooks:
            print(f"\n=== {mode}: {nb.name}", flush=True)
            rel = nb.resolve().relative_to(ROOT)
            cmd = ([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                    "--ExecutePreprocessor.timeout=1800", str(rel)] if mode == "execute" else
                   [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                    "--nbval-current-env", "--nbval-cell-timeout=1800", str(rel)])
            t0 = time.perf_counter()
            rc, peak_mb = _call(cmd, root, env)
            rows.append((nb.name, "passed" if rc == 0 else f"FAILED ({rc})", time.perf_counter() - t0, peak_mb,
                         _profile_of(root, nb)))
            failed |= rc != 0
    finally:
        if tmp:
            tmp.cleanup()
    print(f"\nCPU: {cpu_model()}")
    print(f"{'notebook':<44} {'result':<12} {'seconds':>8} {'peak RSS (MB)':>14}  profile")
    for name, res, sec, peak, prof in rows:
        print(f"{name:<44} {res:<12} {sec:8.0f} {peak:14,.0f}  {prof}")
    print(f"{'total':<44} {'':<12} {sum(r[2] for r in rows):8.0f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
