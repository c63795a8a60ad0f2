"""Run the notebooks in course order and report a per-notebook table (result, seconds, peak memory, profile).

``python -m tools.runner execute NB...``  re-executes notebooks in place, one after the other, refreshing their
                                          outputs, img/ and results/ (``make course``: the one command that
                                          refreshes them);
``python -m tools.runner test NB...``     the unit tests (``pytest tests``, as two jobs) and each notebook under nbval
                                          (``make test``), the notebooks in a temporary copy of the course, so
                                          that the working tree stays as it was;
``python -m tools.runner nbval NB...``    the same without the unit tests.

Under ``test`` and ``nbval`` the jobs run two at a time where the machine has the cores and memory for it
(``COURSE_TEST_JOBS`` sets the number; 1 runs them one after the other), each with its share of the cores, and a
notebook starts only after the notebooks it reads (:data:`READS`). Of the jobs ready to start, the longest starts
first, by each job's newest time in ``results/timings.json`` (this CPU's where it has one; a job never timed first
of all): two long notebooks left for the end would leave one core idle while the other finishes them. The unit tests
are two jobs: the simulated-hub runs of the real path (``-m realpath``) and the rest. Each job's output is printed
when it ends. A job that runs past ``COURSE_JOB_TIMEOUT`` seconds (default 2,400: four times the slowest job
measured) is stopped, with the processes it started, and reported as timed out; the other jobs go on.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

from tools.readme import TIMINGS, read_timings
from utils.paths import CACHE_DIR, ROOT
from utils.profiles import cpu_model

# Notebooks that read what others wrote: 04 analyses the predictions 02 and 03 save in results/.
READS = {"04": ("02", "03")}
# The profile of the committed outputs, a CPU profile. make test runs it whatever the machine reaches (nbval compares
# with them), on the CPU even where a GPU is visible; make course too, unless COURSE_PROFILE names another
# (COURSE_PROFILE=colab make course on a GPU machine).
COMMITTED_PROFILE = "smoke"


def _profile_of(root: Path, nb: Path) -> str:
    try:
        return json.loads((root / "results" / f"{nb.stem}.json").read_text()).get("profile", "?")
    except (OSError, ValueError):
        return "?"


def _call(cmd: list[str], cwd: Path, env: dict | None = None, log=None) -> tuple[int, float]:
    """Exit status and peak resident memory (MB) of a command: the largest of its process and the
    processes it waited for (the notebook's kernel), as the kernel's accounting reports it (Linux)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
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


def test_jobs() -> int:
    """How many jobs run at once: ``COURSE_TEST_JOBS``, else 2 on a machine with 2+ cores and 16+ GiB of
    memory (two notebooks at once need about 10 GB), else 1."""
    value = os.environ.get("COURSE_TEST_JOBS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"COURSE_TEST_JOBS={value!r}: give a whole number of jobs, 1 or more (1: one at a time).")
        return int(value)
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return 2 if (os.cpu_count() or 1) >= 2 and memory_gib >= 16 else 1


def job_timeout() -> float:
    """Seconds a job may run: ``COURSE_JOB_TIMEOUT``, else 2,400."""
    value = os.environ.get("COURSE_JOB_TIMEOUT", "").strip()
    try:
        seconds = float(value) if value else 2400.0
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise SystemExit(f"COURSE_JOB_TIMEOUT={value!r}: give the seconds a job may run, a positive number "
                         f"(default 2400).")
    return seconds


def job_key(name: str) -> str:
    """A job's name as ``results/timings.json`` keeps it: a notebook by its number ("01"), other jobs as named."""
    return name[:2] if name[:2].isdigit() else name


def expected_seconds(path: Path | None = None) -> dict[str, float]:
    """Each job's newest measured seconds (``jobs_seconds`` of the measurements in ``results/timings.json``, or
    ``path``; those of ``make test`` where there are any), a measurement on this CPU before one on another: the order
    in which ready jobs start. Empty, with a message, where the file cannot be read: the jobs then start in the order
    given, which changes how long the run takes, not what it checks."""
    try:
        measured = read_timings(path)["measurements"]
    except (OSError, ValueError) as e:
        print(f"{(path or TIMINGS).name} cannot be read ({e!r}): jobs start in the order given, not longest first.", flush=True)
        return {}
    timed = [m for m in measured if isinstance(m.get("jobs_seconds"), dict)]
    timed = [m for m in timed if m.get("command") == "make test"] or timed   # not make course's or test-avx2's times
    this_cpu = cpu_model()
    seconds: dict[str, float] = {}
    for m in sorted(timed, key=lambda m: m.get("cpu") == this_cpu):   # stable: file order (oldest first) within each
        seconds.update(m["jobs_seconds"])
    return seconds


def longest_first(jobs: list[dict], expected: Mapping[str, float]) -> list[dict]:
    """``jobs`` ordered by the seconds ``expected`` of each (by :func:`job_key`), longest first, a job it does not
    list before any it does, ties in the order given."""
    return sorted(jobs, key=lambda j: -expected.get(job_key(j["name"]), float("inf")))


def _wait_for_one(running: dict, timeout: float) -> tuple[int, int, object]:
    """Wait until a running job ends; a job past ``timeout`` seconds is killed with its process group first."""
    while True:
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid:
            return pid, status, usage
        now = time.perf_counter()
        for pid, (job, _, t0) in running.items():
            if now - t0 > timeout and not job.get("timed_out"):
                job["timed_out"] = True
                _kill_group(pid)
        time.sleep(0.2)


def _kill_group(pid: int) -> None:
    """Kill a job and what it started in its process group (each job runs in a session of its own)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _schedule(jobs: list[dict], workers: int, logs: Path, timeout: float | None = None,
              expected: Mapping[str, float] | None = None) -> list[tuple]:
    """Run ``jobs`` (dicts: name, cmd, cwd, env, after) ``workers`` at a time, each once those it comes after have
    ended, each for at most ``timeout`` seconds (default: :func:`job_timeout`); of the jobs ready, the longest
    ``expected`` starts first (:func:`longest_first`). Returns (name, result, seconds, peak MB) rows in the jobs'
    order."""
    timeout = timeout or job_timeout()
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    waiting, running, done = [dict(j) for j in longest_first(jobs, expected or {})], {}, {}
    while waiting or running:
        for job in [j for j in waiting if all(a in done for a in j["after"])][:workers - len(running)]:
            waiting.remove(job)
            env = job["env"] if workers == 1 else {**job["env"], "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            log = open(logs / f"{len(done) + len(running)}.log", "w")
            proc = subprocess.Popen(job["cmd"], cwd=job["cwd"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            running[proc.pid] = (job, log, time.perf_counter())
        if not running:
            raise SystemExit(f"{[j['name'] for j in waiting]} wait for jobs that never run: check READS.")
        try:
            pid, status, usage = _wait_for_one(running, timeout)
        except BaseException:       # Ctrl-C or an error here: the jobs, in sessions of their own, must not outlive it
            for pid in running:
                _kill_group(pid)
            raise
        if pid not in running:
            continue
        job, log, t0 = running.pop(pid)
        log.close()
        code = os.waitstatus_to_exitcode(status)
        result = ("passed" if code == 0 else f"FAILED ({code})") if not job.get("timed_out") else \
            f"TIMED OUT ({timeout:.0f} s; COURSE_JOB_TIMEOUT)"
        done[job["name"]] = (result, time.perf_counter() - t0, usage.ru_maxrss / 1024)  # ru_maxrss: KiB on Linux
        print(f"\n=== {job['name']}: {result} after {done[job['name']][1]:.0f} s", flush=True)
        print(Path(log.name).read_text(errors="replace"), flush=True)
    return [(j["name"], *done[j["name"]]) for j in jobs]


def main(argv: list[str]) -> int:
    mode, notebooks = argv[0], [Path(a) for a in argv[1:]]
    if mode not in ("execute", "test", "nbval"):
        raise SystemExit(f"unknown mode {mode!r}: use `execute` (refresh outputs in place), `test` (unit tests and "
                         f"nbval) or `nbval`.")
    tmp = tempfile.TemporaryDirectory(prefix="course-nbval-") if mode != "execute" else None
    root = copy_course(Path(tmp.name)) if tmp else ROOT
    env = {**os.environ, "PYTHONPATH": str(root), "COURSE_CACHE_DIR": str(CACHE_DIR)}
    asked = env.get("COURSE_PROFILE", "").strip().lower()
    if mode != "execute" and asked not in ("", COMMITTED_PROFILE):
        print(f"COURSE_PROFILE={asked} is ignored: nbval compares with the committed outputs, the "
              f"{COMMITTED_PROFILE} profile's", flush=True)
    env["COURSE_PROFILE"] = asked if mode == "execute" and asked else COMMITTED_PROFILE   # colab make course: asked
    if env["COURSE_PROFILE"] == COMMITTED_PROFILE:     # a CPU profile: its outputs are a CPU's, even beside a GPU
        env["CUDA_VISIBLE_DEVICES"] = ""
    # the real-path runs set their own profile; all of make test runs on the CPU, where it was built and checked
    unit_env = {**os.environ, "COURSE_PROFILE": COMMITTED_PROFILE, "CUDA_VISIBLE_DEVICES": ""}
    rows, start = [], time.perf_counter()
    try:
        if mode == "execute":
            for nb in notebooks:
                print(f"\n=== execute: {nb.name}", flush=True)
                cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                       "--ExecutePreprocessor.timeout=1800", str(nb.resolve().relative_to(ROOT))]
                t0 = time.perf_counter()
                rc, peak_mb = _call(cmd, root, env)
                rows.append((nb.name, "passed" if rc == 0 else f"FAILED ({rc})", time.perf_counter() - t0, peak_mb))
        else:
            workers, timeout = test_jobs(), job_timeout()     # a bad setting stops before anything runs
            print(f"nbval runs in a temporary copy of the course: the working tree is left as it is; "
                  f"{workers} job(s) at a time", flush=True)
            if workers > 1 and notebooks:   # convert SmolLM2 to its cache once, before two jobs could both start to
                subprocess.run([sys.executable, "-c", "from utils.models import smollm2_checkpoint as c; c()"],
                               cwd=ROOT, check=True)
            pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            jobs = [] if mode == "nbval" else [      # the unit tests read the working tree, as before
                dict(name="unit tests", cmd=pytest + ["-m", "not realpath", "tests"], cwd=ROOT, env=unit_env,
                     after=[]),
                dict(name="real-path tests", cmd=pytest + ["-m", "realpath", "tests"], cwd=ROOT,
                     env=unit_env, after=[])]
            names = {nb.name[:2]: nb.name for nb in notebooks}
            jobs += [dict(name=nb.name, cwd=root, env=env, after=[names[k] for k in READS.get(nb.name[:2], ())
                                                                  if k in names],
                          cmd=pytest + ["--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=1800",
                                        str(nb.resolve().relative_to(ROOT))]) for nb in notebooks]
            expected = expected_seconds()
            if workers > 1 and expected:
                print("ready jobs start longest first, by their newest times in results/timings.json: "
                      + ", ".join(f"{job_key(j['name'])} ({expected[job_key(j['name'])]:.0f} s)"
                                  if job_key(j["name"]) in expected else f"{job_key(j['name'])} (not timed yet)"
                                  for j in longest_first(jobs, expected)), flush=True)
            with tempfile.TemporaryDirectory(prefix="course-test-logs-") as logs:
                rows = _schedule(jobs, workers, Path(logs), timeout, expected)
        profiles = {nb.name: _profile_of(root, nb) for nb in notebooks}
    finally:
        if tmp:
            tmp.cleanup()
    print(f"\nCPU: {cpu_model()}")
    print(f"{'job':<44} {'result':<12} {'seconds':>8} {'peak RSS (MB)':>14}  profile")
    for name, res, sec, peak in rows:
        print(f"{name:<44} {res:<12} {sec:8.0f} {peak:14,.0f}  {profiles.get(name, '')}")
    print(f"{'sum of the jobs':<44} {'':<12} {sum(r[2] for r in rows):8.0f}")
    print(f"{'wall time':<44} {'':<12} {time.perf_counter() - start:8.0f}")
    return 1 if any(r[1] != "passed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
