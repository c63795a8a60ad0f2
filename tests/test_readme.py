"""The README's figures are those of the committed runs, and the house's import contracts hold."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tools import readme
from utils.paths import ROOT


def test_readme_figures_equal_the_committed_results():
    assert readme.current() == readme.block(), (
        "README.md's generated block disagrees with results/*.json: run `python -m tools.readme`.")
    assert readme.current_timings() == readme.timings_block(), (
        "README.md's Timings table disagrees with results/timings.json: run `python -m tools.readme`.")


def test_every_timing_names_its_command_cpu_and_date():
    for m in readme._timings_file()["measurements"]:
        assert m["command"] in readme.COMMANDS, m
        assert m["seconds"] > 0 and m["cpu"] and m["conditions"], m
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", m["date"]), m


LOG = """fresh clone of abc1234 in /tmp/x/course; running: bash .ci/run
installing chromium (Debian) for the browser test of the site
=== unit tests: passed after 301 s
........ [100%]
457 passed, 2 skipped in 300.12s (0:05:00)
=== 01_lora_from_scratch_gpt2.ipynb: passed after 250 s
CPU: Test CPU, 2 cores, AVX2
job                                          result        seconds  peak RSS (MB)  profile
unit tests                                   passed            301          2,100
01_lora_from_scratch_gpt2.ipynb              passed            250          4,700  smoke
04_rouge_analysis.ipynb                      passed             14            723  smoke
sum of the jobs                                                565
wall time                                                      400
ci: exit 0 after 812s (budget for make test: 1200 s from a fresh clone)
"""


def test_a_fresh_clone_log_becomes_a_measurement():
    m = readme.parse_test_log(LOG, "fresh clone")
    assert (m["command"], m["seconds"], m["commit"], m["cpu"]) == ("make test", 812, "abc1234", "Test CPU, 2 cores, AVX2")
    assert m["jobs_seconds"] == {"unit tests": 301, "01": 250, "04": 14}
    assert (m["jobs_sum_seconds"], m["jobs_wall_seconds"], m["peak_rss_mb_of_one_job"]) == (565, 400, 4700)
    assert m["unit_tests_passed"] == 457 and m["avx512_bf16"] is None        # not this machine's CPU: not guessed
    assert m["conditions"] == "fresh clone, Chromium installed by the run"


def test_the_two_unit_test_jobs_are_counted_together():
    log = LOG.replace("=== 01_lora", "=== real-path tests: passed after 220 s\n"
                                     "==================== warnings summary ====================\n"
                                     "17 passed in 219.50s (0:03:39)\n=== 01_lora")
    log = log.replace("01_lora_from_scratch_gpt2.ipynb              passed",
                      "real-path tests                              passed            220          3,100\n"
                      "01_lora_from_scratch_gpt2.ipynb              passed")
    m = readme.parse_test_log(log, "fresh clone")
    assert m["jobs_seconds"] == {"unit tests": 301, "real-path tests": 220, "01": 250, "04": 14}
    assert m["unit_tests_passed"] == 457 + 17 and m["peak_rss_mb_of_one_job"] == 4700


@pytest.mark.parametrize("log, error", [(LOG.replace("ci: exit 0", "ci: exit 2"), "failed (exit 2)"),
                                        (LOG.replace("CPU: ", "cpu "), "`CPU:` line"),
                                        ("", ".ci/fresh-clone's first line")])
def test_a_failed_or_partial_log_is_refused(log, error):
    with pytest.raises(SystemExit, match=re.escape(error)):
        readme.parse_test_log(log, "fresh clone")


@pytest.fixture
def scratch_readme(tmp_path, monkeypatch):
    """README.md and results/timings.json copied to tmp_path, where tools.readme writes instead."""
    for name, attr in (("README.md", "README"), ("timings.json", "TIMINGS")):
        shutil.copy(getattr(readme, attr), tmp_path / name)
        monkeypatch.setattr(readme, attr, tmp_path / name)
    return tmp_path


def test_a_timed_command_is_recorded_only_when_it_succeeds(scratch_readme):
    before = len(readme._timings_file()["measurements"])
    assert readme.main(["--time", "exit 3", "--as", "make site", "--conditions", "idle"]) == 3
    assert len(readme._timings_file()["measurements"]) == before
    assert readme.main(["--time", "true", "--as", "make site", "--conditions", "idle"]) == 0
    newest = readme._timings_file()["measurements"][-1]
    assert (newest["command"], newest["conditions"]) == ("make site", "idle") and newest["seconds"] >= 0
    assert readme.main(["--check"]) == 0                      # the README was regenerated with it
    assert "| `make site` | the static site in `_site/` | **" in readme.current_timings()


def test_a_command_the_table_does_not_list_is_refused_before_it_runs(scratch_readme, tmp_path):
    with pytest.raises(SystemExit, match="not a command the Timings table lists"):
        readme.main(["--time", f"touch {tmp_path / 'ran'}", "--conditions", "idle"])
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("text", ['{"measurements": {}}', '{"measurements": ["one"]}', "[]", "{cut"])
def test_a_malformed_timings_file_is_named(scratch_readme, text):
    (scratch_readme / "timings.json").write_text(text)
    with pytest.raises(SystemExit, match="results/timings.json is missing or malformed"):
        readme.timings_block()


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


def test_the_readme_t4_plan_is_the_planners():
    """The README's planned GB for one QLoRA step of Llama-3.2-3B on a T4 is notebook 03's planner call."""
    from utils.architectures import llama_config
    from utils.planner import Plan, estimate_memory
    from utils.profiles import PROFILES

    q = PROFILES["colab"].qlora
    plan = Plan(method="qlora", batch_size=q.batch_size, seq_len=q.max_length, weight_bytes=4, activation_bytes=2,
                targets=("q_proj", "k_proj", "v_proj", "o_proj"), optimizer="adamw_8bit", gradient_checkpointing=True)
    total = estimate_memory(llama_config(PROFILES["colab"].llm_model), plan)["total"]
    said = re.search(r"Notebook 03's memory table plans ([\d.]+) GB \(10\^9 bytes; ([\d.]+) GiB\)",
                     ROOT.joinpath("README.md").read_text())
    assert said, "the README no longer states notebook 03's T4 plan: update this test with it"
    assert (said.group(1), said.group(2)) == (f"{total / 1e9:.2f}", f"{total / 2**30:.1f}")
