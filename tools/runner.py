"""Run the notebooks in course order and report a per-notebook table (executed, seconds, peak memory, profile).

``python -m utils.runner execute NB...``  re-executes notebooks in place (``make course``);
``python -m utils.runner nbval NB...``    re-executes them under nbval, one pytest per notebook (``make test``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .paths import ROOT


def _profile_of(nb: Path) -> str:
    stem = nb.stem
    res = ROOT / "results" / f"{stem}.json"
    try:
        return json.loads(res.read_text()).get("profile", "?")
    except (OSError, ValueError):
        return "?"


def _call(cmd: list[str]) -> tuple[int, float]:
    """Exit status and peak resident memory (MB) of a command: the largest of its process and the
    processes it waited for (the notebook's kernel), as the kernel's accounting reports it (Linux)."""
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024     # ru_maxrss is in KiB on Linux


def _execute(nb: Path) -> tuple[int, float]:
    return _call([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                  "--ExecutePreprocessor.timeout=1800", str(nb)])


def _nbval(nb: Path) -> tuple[int, float]:
    return _call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                  "--nbval-current-env", "--nbval-cell-timeout=1800", str(nb)])


def main(argv: list[str]) -> int:
    mode, notebooks = argv[0], [Path(a) for a in argv[1:]]
    run = {"execute": _execute, "nbval": _nbval}[mode]
    rows, failed = [], False
    for nb in notebooks:
        print(f"\n=== {mode}: {nb.name}", flush=True)
        t0 = time.perf_counter()
        rc, peak_mb = run(nb)
        rows.append((nb.name, "passed" if rc == 0 else f"FAILED ({rc})", time.perf_counter() - t0, peak_mb,
                     _profile_of(nb)))
        failed |= rc != 0
    print(f"\n{'notebook':<44} {'result':<12} {'seconds':>8} {'peak RSS (MB)':>14}  profile")
    for name, res, sec, peak, prof in rows:
        print(f"{name:<44} {res:<12} {sec:8.0f} {peak:14,.0f}  {prof}")
    print(f"{'total':<44} {'':<12} {sum(r[2] for r in rows):8.0f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
