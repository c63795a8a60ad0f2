"""`make test`'s job runner (tools/runner.py): jobs run at most N at a time, a notebook waits for those it reads,
a failure is reported as such, and a bad setting stops with a message that names it."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from tools import runner
from tools.runner import READS, _schedule


def _job(folder, name, code, after=()):
    """A job that runs ``code`` and records its start and end times in folder/<name>."""
    body = (f"import time, pathlib; p = pathlib.Path({str(folder)!r}) / {name!r}; t0 = time.time(); {code}; "
            f"p.write_text(f'{{t0}} {{time.time()}}')")
    return dict(name=name, cmd=[sys.executable, "-c", body], cwd=folder, env=dict(os.environ), after=list(after))


def _span(folder, name) -> tuple[float, float]:
    return tuple(map(float, (folder / name).read_text().split()))


@pytest.fixture
def logs(tmp_path):
    (tmp_path / "logs").mkdir()
    return tmp_path / "logs"


def test_a_job_starts_only_after_those_it_reads(tmp_path, logs):
    jobs = [_job(tmp_path, "02", "time.sleep(1.0)"), _job(tmp_path, "03", "time.sleep(1.2)"),
            _job(tmp_path, "04", "pass", after=("02", "03"))]
    rows = _schedule(jobs, workers=2, logs=logs)
    assert [r[:2] for r in rows] == [("02", "passed"), ("03", "passed"), ("04", "passed")]
    assert _span(tmp_path, "04")[0] >= max(_span(tmp_path, "02")[1], _span(tmp_path, "03")[1])
    # two workers: 02 and 03 overlapped
    assert _span(tmp_path, "03")[0] < _span(tmp_path, "02")[1]


def test_one_worker_runs_one_job_at_a_time(tmp_path, logs):
    jobs = [_job(tmp_path, n, "time.sleep(0.2)") for n in ("a", "b", "c")]
    _schedule(jobs, workers=1, logs=logs)
    spans = sorted(_span(tmp_path, n) for n in ("a", "b", "c"))
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_a_failing_job_is_reported_and_the_others_still_run(tmp_path, logs, capsys):
    jobs = [_job(tmp_path, "bad", "print('the reason'); raise SystemExit(3)"),
            _job(tmp_path, "good", "pass")]
    rows = _schedule(jobs, workers=2, logs=logs)
    assert [r[:2] for r in rows] == [("bad", "FAILED (3)"), ("good", "passed")]
    assert "the reason" in capsys.readouterr().out            # the failing job's log is printed


@pytest.mark.parametrize("results, code", [(("passed", "FAILED (3)"), 1), (("passed", "timed out"), 1),
                                            (("passed", "passed"), 0)])
def test_the_run_exits_1_when_any_job_did_not_pass(monkeypatch, capsys, results, code):
    """What `make test` returns: the rows `_schedule` reports decide it (here: no notebook, two jobs' rows)."""
    rows = [(f"job {i}", r, 1.0, 100.0) for i, r in enumerate(results)]
    monkeypatch.setattr(runner, "_schedule", lambda *args, **kwargs: rows)
    assert runner.main(["nbval"]) == code
    out = capsys.readouterr().out
    assert all(r in out for r in results) and "wall time" in out


def test_jobs_that_wait_for_a_job_that_never_runs_stop_with_a_message(tmp_path, logs):
    with pytest.raises(SystemExit, match="wait for jobs that never run"):
        _schedule([_job(tmp_path, "04", "pass", after=("02",))], workers=2, logs=logs)


def test_the_longest_ready_job_starts_first_and_an_untimed_one_before_it(tmp_path, logs):
    jobs = [_job(tmp_path, n, "pass") for n in ("01_short.ipynb", "unit tests", "03_long.ipynb", "new job")]
    jobs.append(_job(tmp_path, "04_reads.ipynb", "pass", after=("01_short.ipynb",)))
    expected = {"01": 10, "unit tests": 50, "03": 400, "04": 900}        # 04, the longest, still waits for 01
    rows = _schedule(jobs, workers=1, logs=logs, expected=expected)
    assert [r[0] for r in rows] == [j["name"] for j in jobs]          # rows keep the order given
    starts = sorted((_span(tmp_path, j["name"])[0], j["name"]) for j in jobs)
    assert [name for _, name in starts] == ["new job", "03_long.ipynb", "unit tests", "01_short.ipynb",
                                            "04_reads.ipynb"]


def _timings(path, *measurements):
    path.write_text(json.dumps({"about": "test", "measurements": list(measurements)}))
    return path


def test_expected_seconds_are_the_newest_and_this_cpus_first(tmp_path):
    here, other = runner.cpu_model(), "Another CPU, 2 cores"
    path = _timings(tmp_path / "timings.json",
                    dict(cpu=here, jobs_seconds={"01": 300, "unit tests": 400}),
                    dict(cpu=here, jobs_seconds={"01": 310}),                   # newer on this CPU
                    dict(cpu=other, jobs_seconds={"01": 900, "real-path tests": 200}),   # newest, another CPU
                    dict(cpu=here))                                             # no job times: not read
    assert runner.expected_seconds(path) == {"01": 310, "unit tests": 400, "real-path tests": 200}


def test_expected_seconds_are_make_tests_own_where_it_has_any(tmp_path):
    here = runner.cpu_model()
    path = _timings(tmp_path / "timings.json",
                    dict(command="make test", cpu=here, jobs_seconds={"01": 170, "unit tests": 120}),
                    dict(command="make test-avx2", cpu=here, jobs_seconds={"01": 260}),     # newer, held to AVX2
                    dict(command="make course", cpu=here, jobs_seconds={"01": 100, "02": 110}))
    assert runner.expected_seconds(path) == {"01": 170, "unit tests": 120}
    only_course = _timings(tmp_path / "course.json", dict(command="make course", cpu=here, jobs_seconds={"01": 100}))
    assert runner.expected_seconds(only_course) == {"01": 100}


@pytest.mark.parametrize("text", ["{not json", '{"measurements": 3}', "[]", '{"measurements": [1]}'])
def test_unreadable_timings_start_the_jobs_in_the_order_given_and_say_so(tmp_path, capsys, text):
    path = tmp_path / "timings.json"
    path.write_text(text)
    assert runner.expected_seconds(path) == {}
    assert "timings.json cannot be read" in capsys.readouterr().out
    assert runner.expected_seconds(tmp_path / "missing.json") == {}


def test_a_job_past_its_time_is_stopped_and_reported(tmp_path, logs):
    jobs = [_job(tmp_path, "hung", "import subprocess; subprocess.run(['sleep', '60'])"),
            _job(tmp_path, "quick", "pass")]
    start = time.perf_counter()
    rows = _schedule(jobs, workers=2, logs=logs, timeout=1.5)
    assert [r[:2] for r in rows] == [("hung", "TIMED OUT (2 s; COURSE_JOB_TIMEOUT)"), ("quick", "passed")]
    assert time.perf_counter() - start < 20 and not (tmp_path / "hung").exists()


@pytest.mark.parametrize("value", ["0", "-5", "ten", "inf", "nan"])
def test_a_bad_job_timeout_names_the_setting(monkeypatch, value):
    monkeypatch.setenv("COURSE_JOB_TIMEOUT", value)
    with pytest.raises(SystemExit, match="COURSE_JOB_TIMEOUT"):
        runner.job_timeout()


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_job_count_names_the_setting(monkeypatch, value):
    monkeypatch.setenv("COURSE_TEST_JOBS", value)
    with pytest.raises(SystemExit, match="COURSE_TEST_JOBS"):
        runner.test_jobs()


def test_the_job_count_can_be_set(monkeypatch):
    monkeypatch.setenv("COURSE_TEST_JOBS", "3")
    assert runner.test_jobs() == 3
    monkeypatch.delenv("COURSE_TEST_JOBS")
    page, gib = 4096, 2**30 // 4096                    # os.sysconf: page size, then pages of physical memory
    for cores, memory_gib, jobs in ((2, 16, 2), (16, 64, 2), (1, 64, 1), (2, 15, 1)):
        monkeypatch.setattr(runner.os, "cpu_count", lambda: cores)
        monkeypatch.setattr(runner.os, "sysconf", lambda name: page if name == "SC_PAGE_SIZE" else memory_gib * gib)
        assert runner.test_jobs() == jobs, (cores, memory_gib)


def test_reads_names_notebooks_that_exist():
    from utils.paths import ROOT

    prefixes = {p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert set(READS) | {d for deps in READS.values() for d in deps} <= prefixes


@pytest.mark.parametrize("asked", ["", "laptop", "colab"])
def test_make_test_runs_the_committed_profile_and_make_course_the_one_asked(monkeypatch, capsys, asked):
    """On a machine that reaches the hub the automatic profile is laptop or colab, while the committed outputs are
    smoke's: every job of `make test` runs smoke (nbval compares with those outputs; the real-path runs set their
    own), whatever COURSE_PROFILE says, and says so when it ignores it; every job runs on the CPU (smoke is a CPU
    profile, and the tests were built on CPUs), even where a GPU is visible. `make course` runs smoke (on the CPU) unless asked for another."""
    monkeypatch.setenv("COURSE_PROFILE", asked)
    monkeypatch.setenv("COURSE_TEST_JOBS", "1")
    seen = {}

    def schedule(jobs, *args, **kwargs):
        seen.update({job["name"]: job["env"]["COURSE_PROFILE"] for job in jobs})
        seen["GPU hidden"] = {job["env"].get("CUDA_VISIBLE_DEVICES") for job in jobs}
        return [(job["name"], "passed", 1.0, 100.0) for job in jobs]

    monkeypatch.setattr(runner, "_schedule", schedule)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    notebook = runner.ROOT / "notebooks" / "04_rouge_analysis.ipynb"
    assert runner.main(["test", str(notebook)]) == 0
    assert seen == {"unit tests": "smoke", "real-path tests": "smoke", notebook.name: "smoke", "GPU hidden": {""}}
    assert ("is ignored" in capsys.readouterr().out) == (asked not in ("", "smoke"))

    calls = []
    monkeypatch.setattr(runner, "_call", lambda cmd, cwd, env=None, log=None: (calls.append(env), (0, 100.0))[1])
    assert runner.main(["execute", str(notebook)]) == 0
    assert calls[0]["COURSE_PROFILE"] == (asked or "smoke")
    assert calls[0]["CUDA_VISIBLE_DEVICES"] == ("0" if asked in ("laptop", "colab") else "")   # smoke: on the CPU
