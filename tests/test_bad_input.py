"""Bad input never passes silently, and nothing half-written is trusted (issue 15).

Each case: the bad input, the exact class of the error, and the words that tell the user what to do; or, for
the cases the course now handles, what it does instead (and that it says so). Then writers killed mid-write."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import ssl
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import utils.data as data
import utils.results as results
from utils.data import DataError, load_dialogsum, load_sms
from scripts.finetune import ConfigError, load_config, main, make_plan
from utils.metrics import rouge
from utils.results import ResultsError, load_results, load_run, save_run
from simhub.builder import write_sms_parquet

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.toml"
SMS = [f"ham\tSee you at {i} pm, bring the keys" for i in range(14)] + \
      [f"spam\tWIN £{i}00 now! Txt CLAIM to 80{i:03d}" for i in range(6)]


def _raises(exc_class, fn, *words):
    """``fn()`` raises exactly ``exc_class`` (not a subclass, not a parent) whose message holds every word."""
    with pytest.raises(Exception) as info:
        fn()
    assert type(info.value) is exc_class, f"{type(info.value).__name__}: {info.value}"
    for w in words:
        assert w in str(info.value), f"{w!r} not in: {info.value}"
    return str(info.value)


# ----------------------------------------------------------------------------- SMS file (COURSE_DATA_DIR)

def _sms(folder: Path, lines: list[str]) -> None:
    (folder / "SMSSpamCollection").write_text("\n".join(lines) + "\n", encoding="utf-8")


SMS_CASES = {
    "extra tab-separated columns": (SMS[:3] + ["ham\tsee you soon\t0.93\textra"] + SMS[3:],
                                    ["line 4", "4 tab-separated columns, expected 2", "cut -f1,2"]),
    "a typo in the first line's label": (["hamm\tI'll be late tonight"] + SMS,
                                         ["line 1", "unknown label 'hamm' (did you mean 'ham'?)", "Correct that line"]),
    "a typo in a later label": (SMS[:5] + ["spma\tFREE entry"] + SMS[5:], ["line 6", "did you mean 'spam'?"]),
    "an empty file": ([""], ["no message in the file", "Put the SMS Spam Collection there"]),
    "only a header": (["label\ttext"], ["no message in the file"]),
    "a huge message": (SMS + ["ham\t" + "x" * 1_000_000], ["line 21", "1,000,000 characters", "lost its line breaks"]),
    "no tab": (SMS + ["ham just text"], ["line 21", "found no tab", "Separate the label"]),
    "one class only": (SMS[:10], ["no 'spam' message found", "needs both classes"]),
}


@pytest.mark.parametrize("case", SMS_CASES, ids=list(SMS_CASES))
def test_bad_sms_file(case, data_dir):
    lines, words = SMS_CASES[case]
    _sms(data_dir, lines)
    _raises(DataError, lambda: load_sms(online=False, verbose=False), "$COURSE_DATA_DIR/SMSSpamCollection", *words)


def test_blank_line_before_a_header_is_a_header(data_dir, capsys):
    _sms(data_dir, ["", "label\ttext"] + SMS)
    df, _ = load_sms(online=False)
    assert len(df) == 20 and df["text"].iloc[0] == "See you at 0 pm, bring the keys"
    assert "line 2 read as a header" in capsys.readouterr().out


def test_relative_course_data_dir_is_read_from_the_course_root(monkeypatch, capsys):
    folder = ROOT / ".cache" / "test_bad_input_data"
    folder.mkdir(parents=True, exist_ok=True)
    _sms(folder, SMS)
    monkeypatch.chdir(ROOT / "notebooks")                  # where a notebook runs
    monkeypatch.setenv("COURSE_DATA_DIR", ".cache/test_bad_input_data")
    df, source = load_sms(online=False)
    assert len(df) == 20 and "local" in source
    assert f"read from the course root, as {folder}" in capsys.readouterr().out
    monkeypatch.setenv("COURSE_DATA_DIR", "no_such_folder")
    _raises(DataError, lambda: load_sms(online=False), "is not a folder", "read from the course root",
            str(ROOT / "no_such_folder"))


def test_errors_name_files_outside_the_course_by_their_whole_path(tmp_path, capsys):
    _raises(ConfigError, lambda: load_config(tmp_path / "sub" / "bad.toml"), str(tmp_path / "sub" / "bad.toml"))


# ----------------------------------------------------------------------------- DialogSum files

def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _dialogsum(folder: Path, train=None, test=None) -> None:
    d = folder / "dialogsum"
    rows = [{"fname": f"train_{i}", "dialogue": f"#Person1#: table for {i}?\n#Person2#: Yes.", "summary": f"s{i}"}
            for i in range(4)]
    _jsonl(d / "dialogsum.train.jsonl", train if train is not None else rows)
    _jsonl(d / "dialogsum.dev.jsonl", rows)
    _jsonl(d / "dialogsum.test.jsonl", test if test is not None else [
        {"fname": f"test_{i}", "dialogue": f"#Person1#: test {i}", "summary1": "a", "summary2": "b"} for i in range(3)])


def test_same_training_dialogue_with_two_summaries_is_two_examples(data_dir, capsys):
    rows = [{"fname": "train_1", "dialogue": "#Person1#: hi", "summary": "A greets."},
            {"fname": "train_2", "dialogue": "#Person1#: hi", "summary": "Someone says hello."}]
    _dialogsum(data_dir, train=rows)
    train = load_dialogsum(online=False)[0]["train"]
    assert train["summary"].tolist() == ["A greets.", "Someone says hello."]     # neither merged nor dropped
    assert "1 dialogue(s) appear under several ids (e.g. ['train_1', 'train_2'])" in capsys.readouterr().out


DIALOGSUM_CASES = {
    "a duplicate training id": ("train", [{"fname": "train_1", "dialogue": "#Person1#: a", "summary": "x"},
                                          {"fname": "train_1", "dialogue": "#Person1#: b", "summary": "y"}],
                                ["rows 1 and 2", "the id 'train_1' appears twice", "remove the duplicate row"]),
    "a duplicate test id": ("test", [{"fname": "test_1", "dialogue": "#Person1#: a", "summary1": "x"},
                                     {"fname": "test_1", "dialogue": "#Person1#: a", "summary1": "x"}],
                            ["the id 'test_1' appears twice", "give it another id"]),
    "a test copy with another dialogue": ("test", [{"id": "test_1_1", "dialogue": "#Person1#: a", "summary": "x"},
                                                   {"id": "test_1_2", "dialogue": "#Person1#: b", "summary": "y"}],
                                          ["rows 1 and 2", "copy of test dialogue 'test_1'", "Correct the dialogue"]),
    "a number as summary": ("train", [{"fname": "t", "dialogue": "#Person1#: a", "summary": 3}],
                            ["'summary' is int 3, not text", "Fix that row"]),
    "a huge dialogue": ("train", [{"fname": "t", "dialogue": "y" * 60_000, "summary": "s"}],
                        ["60,000 characters", "Check that row"]),
    "no summary key": ("test", [{"fname": "t", "dialogue": "#Person1#: a", "topic": "x"}],
                       ["missing key(s)", "'summary' (or 'summary1'..'summary3'"]),
}


@pytest.mark.parametrize("case", DIALOGSUM_CASES, ids=list(DIALOGSUM_CASES))
def test_bad_dialogsum_file(case, data_dir):
    split, rows, words = DIALOGSUM_CASES[case]
    _dialogsum(data_dir, **{split: rows})
    _raises(DataError, lambda: load_dialogsum(online=False, verbose=False), f"dialogsum.{split}.jsonl", *words)


def test_a_csv_row_with_more_fields_than_the_header_is_named(data_dir):
    d = data_dir / "dialogsum"
    _dialogsum(data_dir)
    (d / "dialogsum.test.jsonl").unlink()
    (d / "test.csv").write_text("id,dialogue,summary,topic\ntest_1,#Person1#: hello, you,a greeting,t\n")
    _raises(DataError, lambda: load_dialogsum(online=False, verbose=False), "test.csv", "row 1 after the header",
            "more fields than the header's 4", "Quote that field")


def test_test_jsonl_accepts_summary_like_the_csv(data_dir):
    _dialogsum(data_dir, test=[{"fname": "test_1", "dialogue": "#Person1#: a", "summary": "x"}])
    assert load_dialogsum(online=False, verbose=False)[0]["test"]["references"].tolist() == [["x"]]


def test_hub_test_copies_are_merged_by_id_stem(data_dir):
    """test_N_k -> test_N, references in file order; an identical dialogue under another stem stays apart."""
    d = data_dir / "dialogsum"
    _dialogsum(data_dir)
    (d / "dialogsum.test.jsonl").unlink()
    rows = [(f"test_{n}_{k}", f"#Person1#: dialogue {n % 2}", f"ref {k} of {n}", "t") for n in range(3) for k in (1, 2, 3)]
    pd.DataFrame(rows, columns=["id", "dialogue", "summary", "topic"]).to_csv(d / "test.csv", index=False)
    test = load_dialogsum(online=False, verbose=False)[0]["test"]
    assert test["id"].tolist() == ["test_0", "test_1", "test_2"]            # test_0 and test_2: same text, 2 dialogues
    assert test["references"].iloc[1] == ["ref 1 of 1", "ref 2 of 1", "ref 3 of 1"]


# ----------------------------------------------------------------------------- metrics and scores

PREDICTION_CASES = {
    "float32 NaN": ([np.float32("nan")], ["prediction 0 is missing", "generation failed upstream"]),
    "pd.NA": ([pd.NA], ["prediction 0 is missing"]),
    "an int": ([3], ["prediction 0 is int 3, not a string"]),
    "bytes": ([b"the cat sat"], ["prediction 0 is bytes", "Decode it first"]),
    "a list of token ids": ([[101, 7]], ["prediction 0 is list", "Decode token ids with the tokenizer"]),
    "a single string": ("the cat sat", ["predictions is a single str", "pass [text] for one example"]),
}


@pytest.mark.parametrize("case", PREDICTION_CASES, ids=list(PREDICTION_CASES))
def test_bad_predictions(case):
    preds, words = PREDICTION_CASES[case]
    _raises(ValueError, lambda: rouge(preds, ["the cat sat on the mat"] * len(preds)), *words)


REFERENCE_CASES = {
    "a NaN reference": ([math.nan], ["example 0 has no reference summary"]),
    "an int reference": ([7], ["references of example 0 are int 7", "give a string or a list of strings"]),
    "an int in a reference list": ([["fine", 7]], ["a reference of example 0 is int 7", "fix the data"]),
}


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=list(REFERENCE_CASES))
def test_bad_references(case):
    refs, words = REFERENCE_CASES[case]
    _raises(ValueError, lambda: rouge(["a prediction"], refs), *words)


@pytest.mark.parametrize("scores, words", [
    ("0.5", ["got a single str"]), ([0.1, "0.2"], ["score 1 is str '0.2', not a number"]),
    ([0.1, pd.NA], ["1 NaN/inf score(s)", "fix it upstream"]), (np.array([True, False]), ["dtype bool"]),
], ids=["a string", "a string inside", "pd.NA", "booleans"])
def test_bad_scores_for_the_statistics(scores, words):
    from utils.analysis import bootstrap_ci

    _raises(ValueError, lambda: bootstrap_ci(scores), *words)


# ----------------------------------------------------------------------------- results and predictions

class FakeRun:
    """What save_run needs from utils.Run: stem, run_id and save()."""

    def __init__(self, stem: str, run_id: str):
        self.stem, self.run_id = stem, run_id

    def save(self, **res):
        payload = {"notebook": self.stem, "run_id": self.run_id, **res}
        results.save_results(self.stem, payload)
        return payload


def _frame(n: int, text: str = "a summary") -> pd.DataFrame:
    return pd.DataFrame({"id": [f"test_{i}" for i in range(n)], "dialogue": ["#Person1#: hi"] * n,
                         "references": [["ref"]] * n, "prediction": [text] * n})


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    return tmp_path


def test_run_ids_tie_results_to_predictions(results_dir):
    save_run(FakeRun("03_x", "03-A"), {"base": _frame(3), "qlora": _frame(3)}, rouge=0.5)
    res, preds = load_run("03_x")
    assert res["run_id"] == "03-A" and set(preds["run_id"]) == {"03-A"} and len(preds) == 6
    assert res["predictions_file"]["rows"] == 6


def test_a_run_is_copied_where_predictions_dir_points_and_read_back_from_there(results_dir, tmp_path_factory,
                                                                               monkeypatch, capsys):
    """On Colab each notebook has its own VM: with COURSE_PREDICTIONS_DIR naming a Drive folder (not there yet),
    02 and 03 copy their pair there and 04 reads that pair, run ids and checksum intact."""
    from utils.analysis import predictions_folder

    drive = tmp_path_factory.mktemp("drive") / "MyDrive" / "runs"
    monkeypatch.setenv("COURSE_PREDICTIONS_DIR", str(drive))
    save_run(FakeRun("03_x", "03-A"), {"base": _frame(3)}, rouge=0.5)
    assert sorted(p.name for p in drive.iterdir()) == ["03_x.json", "03_x.predictions.jsonl"]
    assert "and copied to" in capsys.readouterr().out
    folder, chosen = predictions_folder()
    res, preds = load_run("03_x", folder)
    assert (folder, chosen) == (drive, True) and res["run_id"] == "03-A" and len(preds) == 3
    monkeypatch.setenv("COURSE_PREDICTIONS_DIR", str(results_dir))       # the results folder itself: no copy onto it
    save_run(FakeRun("03_x", "03-B"), {"base": _frame(2)}, rouge=0.6)
    assert "copied" not in capsys.readouterr().out
    assert load_run("03_x")[0]["run_id"] == "03-B" and load_run("03_x", drive)[0]["run_id"] == "03-A"


def test_a_drive_folder_without_drive_mounted_is_refused_before_anything_runs(results_dir, monkeypatch, tmp_path):
    """On Colab, COURSE_PREDICTIONS_DIR under /content/drive while Drive is not mounted: the copy would go to the
    VM's own disk and vanish with it (and block a later mount). utils.start() refuses it at the notebook's start;
    save_run refuses it after writing results/, which keeps this run; once mounted, both go on."""
    import os

    import utils
    import utils.results as results

    monkeypatch.setenv("COURSE_PREDICTIONS_DIR", "/content/drive/MyDrive/lora-course-runs")
    mounted = {"/content/drive": False}
    monkeypatch.setattr(os.path, "ismount", lambda p: mounted.get(str(p), False))
    with pytest.raises(ResultsError, match=r"'/content/drive/MyDrive/lora-course-runs' is on Google Drive, but "
                                           r"Drive is not mounted.*drive\.mount\(\"/content/drive\"\)"):
        utils.start("99_test", profile="smoke")
    relative = os.path.relpath("/content/drive/MyDrive/runs", utils.ROOT)  # from the course root, as read
    with pytest.raises(ResultsError, match="is on Google Drive, but Drive is not mounted"):
        results.predictions_dir({"COURSE_PREDICTIONS_DIR": relative})
    with pytest.raises(ResultsError, match="not mounted.*What this notebook wrote to results/ is kept"):
        save_run(FakeRun("03_x", "03-A"), {"base": _frame(3)}, rouge=0.5)
    assert load_run("03_x")[0]["run_id"] == "03-A"                     # results/ holds the run all the same
    mounted["/content/drive"] = True
    monkeypatch.setattr(results, "COLAB_DRIVE", str(tmp_path))          # "mounted": a folder this test may write
    monkeypatch.setenv("COURSE_PREDICTIONS_DIR", str(tmp_path / "MyDrive" / "runs"))
    mounted[str(tmp_path)] = True
    assert isinstance(utils.start("99_test", profile="smoke"), utils.Run)
    save_run(FakeRun("03_x", "03-B"), {"base": _frame(3)}, rouge=0.5)
    assert load_run("03_x", tmp_path / "MyDrive" / "runs")[0]["run_id"] == "03-B"


def test_a_predictions_dir_that_cannot_be_a_folder_is_refused(tmp_path):
    """A file given as the folder failed only at the notebook's last cell, with a bare FileExistsError; '$HOME/runs'
    (no shell to expand it) created a folder literally named '$HOME' under the course root."""
    import utils.results as results

    a_file = tmp_path / "runs.txt"
    a_file.write_text("")
    _raises(ResultsError, lambda: results.predictions_dir({"COURSE_PREDICTIONS_DIR": str(a_file)}),
            "runs.txt'", "is a file, not a folder")
    _raises(ResultsError, lambda: results.predictions_dir({"COURSE_PREDICTIONS_DIR": "$HOME/runs"}),
            "'$HOME/runs' holds an unexpanded variable", "Give the path itself")
    assert results.predictions_dir({"COURSE_PREDICTIONS_DIR": str(tmp_path / "new")})[0] == tmp_path / "new"


def test_results_cannot_overwrite_what_ties_them_to_their_predictions(results_dir):
    import utils

    run = utils.start("99_test", profile="smoke")
    _raises(ResultsError, lambda: run.save(run_id="mine", rouge=0.5), "run.save(): ['run_id']", "Nothing was written")
    assert not (results_dir / "99_test.json").exists()


def test_a_missing_file_in_the_predictions_folder_says_how_it_gets_there(tmp_path):
    """Notebook 04 pointed at a Drive folder where 02 copied its files but 03 never ran with the variable set."""
    with pytest.raises(FileNotFoundError, match=r"03_x\.json is missing: run notebooks/03_x\.ipynb first, to the "
                                                r"end, with COURSE_PREDICTIONS_DIR naming this folder"):
        load_run("03_x", tmp_path)


def test_run_id_of_utils_run_is_saved(results_dir, monkeypatch):
    import utils

    run = utils.Run("99_test", utils.get_profile("smoke"))
    other = utils.Run("99_test", utils.get_profile("smoke"))
    assert run.run_id != other.run_id
    save_run(run, {"m": _frame(2)}, answer=42)
    res, preds = load_run("99_test")
    assert res["run_id"] == run.run_id == preds["run_id"].iloc[0] and res["answer"] == 42


def _write_predictions(results_dir, run_id=None):
    """A predictions file written on its own, as by hand or by another run (``save_run`` writes it with results)."""
    rows = [{"model": "base", **r, **({"run_id": run_id} if run_id else {})} for r in _frame(4, "newer").to_dict("records")]
    (results_dir / "03_x.predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _damage(results_dir, what):
    save_run(FakeRun("03_x", "03-A"), {"base": _frame(4)}, rouge=0.5)
    res, pred = results_dir / "03_x.json", results_dir / "03_x.predictions.jsonl"
    if what == "results cut short":
        res.write_bytes(res.read_bytes()[:40])
    elif what == "predictions cut mid-line":
        pred.write_bytes(pred.read_bytes()[:-30])
    elif what == "predictions cut at a line break":
        pred.write_text("".join(pred.read_text().splitlines(keepends=True)[:3]))
    elif what == "predictions of another run":
        _write_predictions(results_dir, "03-B")
    elif what == "results of another run":
        FakeRun("03_x", "03-C").save(rouge=0.9)
    elif what == "predictions without run id":
        _write_predictions(results_dir)
    elif what == "results not an object":
        res.write_text("[1, 2]")
    elif what.startswith("predictions: "):            # one line changed, as by hand; the row count stays
        lines = pred.read_text().splitlines(keepends=True)
        row = json.loads(lines[1])
        if what.endswith("text edited"):
            row["prediction"] = "a better summary"
        elif what.endswith("key missing"):
            del row["prediction"]
        elif what.endswith("another run's row"):
            row["run_id"] = "03-B"
        lines[1] = "not json\n" if what.endswith("not JSON") else json.dumps(row) + "\n"
        pred.write_text("".join(lines))
    elif what == "predictions empty":
        pred.write_text("")
    elif what == "predictions not UTF-8":
        pred.write_bytes(b"\xff\xfe" + pred.read_bytes())


RESULT_CASES = {
    "results cut short": ["03_x.json is damaged", "Re-run notebooks/03_x.ipynb"],
    "predictions cut mid-line": ["does not end with a line break: it was cut short", "Re-run notebooks/03_x.ipynb"],
    "predictions cut at a line break": ["is not the file its run wrote (3 rows", "recorded 4", "Re-run notebooks/03_x.ipynb"],
    "predictions of another run": ["03_x.json (run 03-A)", "03_x.predictions.jsonl (run 03-B)",
                                   "come from different runs", "Re-run notebooks/03_x.ipynb to the end"],
    "results of another run": ["(run 03-C)", "(run 03-A)", "come from different runs"],
    "predictions without run id": ["(run without a run id)", "Re-run notebooks/03_x.ipynb"],
    "results not an object": ["03_x.json holds a list, not the results object", "Re-run notebooks/03_x.ipynb"],
    "predictions: text edited": ["is not the file its run wrote (4 rows", "recorded 4 and another checksum"],
    "predictions: key missing": ["line 2: expected the keys", "found ['dialogue', 'id', 'model', 'references', 'run_id']"],
    "predictions: not JSON": ["line 2: not valid JSON", "the file is damaged"],
    "predictions: another run's row": ["mixes rows of 2 runs", "assembled by hand"],
    "predictions empty": ["03_x.predictions.jsonl is empty", "Re-run notebooks/03_x.ipynb"],
    "predictions not UTF-8": ["not UTF-8 at byte 0", "Re-run notebooks/03_x.ipynb"],
}


@pytest.mark.parametrize("case", RESULT_CASES, ids=list(RESULT_CASES))
def test_damaged_or_mismatched_results(case, results_dir):
    _damage(results_dir, case)
    _raises(ResultsError, lambda: load_run("03_x"), *RESULT_CASES[case])


def test_damaged_results_json_names_the_file(results_dir):
    (results_dir / "01_x.json").write_text('{"accuracy": 0.9')
    _raises(ResultsError, lambda: load_results("01_x"), "01_x.json is damaged", "Re-run notebooks/01_x.ipynb")


# ----------------------------------------------------------------------------- writers killed mid-write

WRITER = """
import sys
from pathlib import Path
import pandas as pd
import utils.results as R
R.RESULTS_DIR = Path(sys.argv[1])
class Run:
    stem, run_id = "03_x", "03-KILLED"
    def save(self, **res):
        return R.save_results(self.stem, {"run_id": self.run_id, **res})
n = int(sys.argv[2])
frame = pd.DataFrame({"id": [f"test_{i}" for i in range(n)], "dialogue": ["#Person1#: " + "y" * 2000] * n,
                      "references": [["ref"]] * n, "prediction": ["z" * 2000] * n})
print("ready", flush=True)
R.save_run(Run(), {"qlora": frame}, rouge=0.99)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_run_intact(results_dir):
    """Run A is saved; run B's writer (a subprocess writing ~120 MB of predictions) is killed with SIGKILL as soon
    as its temporary file appears. The next reader gets run A, whole; the fragment is ignored, then cleaned up."""
    save_run(FakeRun("03_x", "03-A"), {"qlora": _frame(5)}, rouge=0.5)
    before = {p.name: p.read_bytes() for p in results_dir.iterdir()}
    for rows in (30_000, 120_000, 480_000):          # a larger write if a loaded machine let the first one finish
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(results_dir), str(rows)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            while not list(results_dir.glob(".03_x.predictions.jsonl.tmp-*")) and proc.poll() is None:
                time.sleep(0.002)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        if proc.returncode == -signal.SIGKILL:
            break
        save_run(FakeRun("03_x", "03-A"), {"qlora": _frame(5)}, rouge=0.5)      # it finished: put run A back
        before = {p.name: p.read_bytes() for p in results_dir.iterdir()}
    assert proc.returncode == -signal.SIGKILL, "the writer always finished before it could be killed"
    fragments = list(results_dir.glob(".03_x.predictions.jsonl.tmp-*"))
    assert len(fragments) == 1                                   # killed mid-write: the fragment is there ...
    assert {p.name: p.read_bytes() for p in results_dir.iterdir() if not p.name.startswith(".")} == before
    res, preds = load_run("03_x")                                # ... and nobody reads it
    assert res["run_id"] == "03-A" and len(preds) == 5
    save_run(FakeRun("03_x", "03-D"), {"qlora": _frame(2)}, rouge=0.7)     # the next writer removes it
    assert not list(results_dir.glob(".03_x.predictions.jsonl.tmp-*")) and load_run("03_x")[0]["run_id"] == "03-D"


def _uci_zip(lines: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("SMSSpamCollection", "\n".join(lines) + "\n")
    return buf.getvalue()


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.fixture
def sms_download(tmp_path, monkeypatch):
    """The hub profile's SMS download, served from memory; counts the downloads. UCI serves ``served["payload"]``
    (an OSError when it is one); the Hugging Face Hub's parquet export is ``served["hub"]`` (a path; None: the hub
    cannot be reached)."""
    import huggingface_hub

    calls, served = [], {"payload": _uci_zip(SMS), "hub": None}
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path)
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)

    def urlopen(url, timeout, context):      # the certificates' context is passed (python.org's macOS Python)
        assert isinstance(context, ssl.SSLContext)
        calls.append(url)
        if isinstance(served["payload"], OSError):
            raise served["payload"]
        return _Response(served["payload"])

    def hf_hub_download(**kwargs):
        calls.append(kwargs)
        if served["hub"] is None:
            raise OSError("the hub cannot be reached (test)")
        return str(served["hub"])

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return tmp_path / "sms" / "SMSSpamCollection", calls, served


def test_sms_download_is_checked_stamped_and_reused(sms_download):
    target, calls, _ = sms_download
    assert len(load_sms(online=True, verbose=False)[0]) == 20 and len(calls) == 1
    assert target.with_name("SMSSpamCollection.sha256").read_text().strip() == hashlib.sha256(
        target.read_bytes()).hexdigest()
    load_sms(online=True, verbose=False)
    assert len(calls) == 1                                        # a complete, stamped file is reused


@pytest.mark.parametrize("fragment", ["no stamp", "stamp of another file"])
def test_sms_download_fragment_is_not_trusted(sms_download, fragment, capsys):
    """A fragment of an interrupted download (half the file, no stamp, or a stamp that does not match) is
    downloaded again, not trusted because it exists."""
    target, calls, _ = sms_download
    target.parent.mkdir(parents=True)
    target.write_text("\n".join(SMS[:7]) + "\nham\tI'll be th")    # ham only, cut mid-line
    if fragment == "stamp of another file":
        target.with_name("SMSSpamCollection.sha256").write_text("0" * 64 + "\n")
    df, _ = load_sms(online=True, verbose=False)
    assert len(df) == 20 and len(calls) == 1
    assert "downloading it again" in capsys.readouterr().out


def test_a_broken_sms_download_replaces_nothing(sms_download):
    target, calls, served = sms_download
    load_sms(online=True, verbose=False)
    good = target.read_bytes()
    target.with_name("SMSSpamCollection.sha256").unlink()         # force a new download ...
    served["payload"] = _uci_zip(["ham\tonly ham"] * 3)                  # ... of a file that fails its check
    _raises(DataError, lambda: load_sms(online=True, verbose=False), "no 'spam' message found")
    assert target.read_bytes() == good and not list(target.parent.glob(".SMSSpamCollection.tmp-*"))
    served["payload"] = b"<html>rate limited</html>"             # and the hub's copy cannot be reached either
    _raises(DataError, lambda: load_sms(online=True, verbose=False), "is not the expected zip",
            "could not read ucirvine/sms_spam", "set COURSE_DATA_DIR")
    assert target.read_bytes() == good


def test_when_uci_is_down_the_same_collection_comes_from_the_hub(sms_download, tmp_path, capsys):
    """UCI unreachable: the messages come from the Hub's parquet export of the same collection, in the same order,
    so the rest of the chapter (balance, split) sees exactly what UCI's file gives; stamped and reused like it."""
    target, calls, served = sms_download
    uci_file = tmp_path / "SMSSpamCollection"
    uci_file.write_text("\n".join(SMS) + "\n", encoding="utf-8")
    expected = data.parse_sms_collection(uci_file, verbose=False)
    served["payload"] = OSError("[Errno 101] Network is unreachable")
    served["hub"] = write_sms_parquet(tmp_path / "0000.parquet", SMS)      # as the simulated hub writes it
    df, _ = load_sms(online=True, verbose=False)
    pd.testing.assert_frame_equal(df, expected)
    assert calls[1] == data.SMS_HUB and "read from the Hugging Face Hub's copy, ucirvine/sms_spam" in capsys.readouterr().out
    load_sms(online=True, verbose=False)
    assert len(calls) == 2                                        # stamped: reused, nothing downloaded again


def test_a_hub_copy_of_another_layout_is_refused_by_name(sms_download, tmp_path):
    _, _, served = sms_download
    served["payload"] = OSError("[Errno 101] Network is unreachable")
    served["hub"] = tmp_path / "0000.parquet"
    pd.DataFrame({"text": ["hi"], "label": ["ham"]}).to_parquet(served["hub"])
    _raises(DataError, lambda: load_sms(online=True, verbose=False), "Network is unreachable",
            "holds columns ['text', 'label']", "not the expected `sms` and `label` (0 ham, 1 spam)")


# ----------------------------------------------------------------------------- the fine-tuning script

@pytest.fixture
def no_model(monkeypatch):
    import scripts.finetune as ft

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded although a check should have stopped the run")

    monkeypatch.setattr(ft, "load_model", forbidden)
    for name in ("COURSE_DATA_DIR", "COURSE_LLM", "WORLD_SIZE"):   # unset now, and after the test even if main
        monkeypatch.setenv(name, "")                               # sets it (delenv alone restores nothing when
        monkeypatch.delenv(name)                                   # the variable was not set before)


def _checkpoint(folder: Path, complete: bool = True) -> None:
    from safetensors.torch import save_file
    import torch

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": int(folder.name.split("-")[1])}))


def _previous_run(out: Path, **changed) -> None:
    """out/ as an interrupted run left it: checkpoint-1 and finetune_config.json, with some keys changed."""
    from utils.profiles import SMOLLM2

    plan = make_plan(load_config(SMOKE, [f"output_dir={out}"]))
    _checkpoint(out / "checkpoint-1")
    splits, _ = load_dialogsum(online=False, splits=("train",), verbose=False)
    train = splits["train"].iloc[: plan.sizes.train]
    sha = hashlib.sha256(json.dumps(train[["id", "dialogue", "summary"]].values.tolist()).encode()).hexdigest()
    ident = {**plan.run_identity(SMOLLM2, sha, "bundled"), **changed}
    (out / "finetune_config.json").write_text(json.dumps({"run": ident}))


def _dry(capsys, *sets, code=2):
    rc = main(["--config", str(SMOKE), *[f"--set={s}" for s in sets], "--dry-run"])
    out = capsys.readouterr()
    assert rc == code, out.err + out.out
    return out.err if code else out.out


FINETUNE_CASES = {
    "output_dir is a file": (lambda t: (t / "f").write_text("x"), ["output_dir={t}/f"],
                             ["output_dir", "is a file, not a folder", "Choose another output_dir"]),
    "output_dir under a file": (lambda t: (t / "f").write_text("x"), ["output_dir={t}/f/out"],
                                ["is a file, so the folder cannot be created"]),
    "seed=-1": (None, ["seed=-1"], ["seed must be between 0 and", "e.g. 42", "got -1"]),
    "lr=inf": (None, ["lr=inf"], ["lr must be a positive, finite number", "got inf"]),
    "lr=nan": (None, ["lr=nan"], ["lr must be a positive, finite number"]),
    "eval_only without an adapter": (None, ["eval_only=true", "output_dir={t}/o"],
                                     ["eval_only=true scores the adapter", "there is none", "Train first"]),
    "missing data folder": (None, ["data_dir={t}/nowhere"], ["data_dir=", "is not a folder", "dialogsum/"]),
    "data folder without DialogSum": (lambda t: (t / "d").mkdir(), ["data_dir={t}/d", "output_dir={t}/o"],
                                      ["no DialogSum train file", "dialogsum.train.jsonl"]),
    "missing model folder": (None, ["model={t}/no_model", "output_dir={t}/o"], ["no such folder", "Check the path"]),
    "a folder that is not a model": (lambda t: (t / "m").mkdir(), ["model={t}/m", "output_dir={t}/o"],
                                     ["not a model (no config.json", "save_pretrained"]),
    "a model folder without tokenizer": (lambda t: (t / "m").mkdir() or (t / "m" / "config.json").write_text("{}"),
                                         ["model={t}/m", "output_dir={t}/o"], ["holds a model but no tokenizer"]),
    "a hub id offline": (None, ["model=Qwen/Qwen2.5-3B-Instruct", "output_dir={t}/o"],
                         ["this profile is offline", "cannot be downloaded", "Point model at a local model folder"]),
    "a different run to resume": (lambda t: _previous_run(t / "o", lr=0.5), ["output_dir={t}/o"],
                                  ["holds checkpoints of a different run", "lr: 0.5 ->", "resume=false"]),
    "resume after COURSE_DATA_DIR changed": (lambda t: _previous_run(t / "o", train_data_sha256="0" * 64,
                                                                     data_source="/old/dialogsum/folder"),
                                             ["output_dir={t}/o"],
                                             ["trained on other data (/old/dialogsum/folder", "COURSE_DATA_DIR",
                                              "Point COURSE_DATA_DIR/data_dir back", "resume=false"]),
}


@pytest.mark.parametrize("case", FINETUNE_CASES, ids=list(FINETUNE_CASES))
def test_dry_run_makes_every_check_of_a_real_run(case, tmp_path, capsys, no_model):
    """--dry-run exits 2 with the message; so does the real run (same checks), before any model is loaded."""
    setup, sets, words = FINETUNE_CASES[case]
    if setup:
        setup(tmp_path)
    sets = [s.format(t=tmp_path) for s in sets]
    for dry in (True, False):
        t0 = time.perf_counter()
        rc = main(["--config", str(SMOKE), *[f"--set={s}" for s in sets], *(["--dry-run"] if dry else [])])
        err = capsys.readouterr().err
        assert rc == 2 and time.perf_counter() - t0 < 60, err
        for w in words:
            assert w in err, f"{w!r} not in {err}"


def test_course_llm_missing_folder_is_named(tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.setenv("COURSE_LLM", str(tmp_path / "llama"))
    err = _dry(capsys, f"output_dir={tmp_path}/o")
    assert "COURSE_LLM=" in err and "no such folder" in err


def test_a_half_written_checkpoint_is_skipped_not_resumed(tmp_path, capsys, no_model):
    out = tmp_path / "o"
    _previous_run(out)
    _checkpoint(out / "checkpoint-2", complete=False)             # killed while the Trainer wrote it
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_st')      # cut short
    plan = make_plan(load_config(SMOKE, [f"output_dir={out}"]))
    assert plan.checkpoint == out / "checkpoint-1"
    assert [(p.name, why.split(" (")[0]) for p, why in plan.incomplete] == [
        ("checkpoint-2", "no trainer_state.json"), ("checkpoint-3", "trainer_state.json is damaged")]
    text = _dry(capsys, f"output_dir={out}", code=0)
    assert "resuming from checkpoint-1" in text and "skipped      : checkpoint-2: no trainer_state.json" in text
    assert (out / "checkpoint-2").is_dir()                        # a dry run writes (and deletes) nothing


def test_dry_run_passes_a_good_config_and_writes_nothing(tmp_path, capsys, no_model):
    text = _dry(capsys, f"output_dir={tmp_path}/o", code=0)
    assert "dry run: every check passed" in text and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- the cached SmolLM2 checkpoint

def test_a_damaged_smollm2_cache_is_rebuilt(tmp_path, monkeypatch, capsys):
    """A truncated model.safetensors (as after a full disk) is detected, reported and converted again; a
    half-written conversion folder left by a killed conversion is removed first. The GGUF conversion itself
    (15-50 s) is stood in for by a 1-layer Llama with SmolLM2's config and tokenizer: what is tested here is
    the check and the rebuild, not transformers' dequantization."""
    import torch
    import transformers

    import utils.models as models

    good = models.smollm2_checkpoint(verbose=False)
    config = transformers.AutoConfig.from_pretrained(good)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 1, 64, 128
    config.num_attention_heads, config.num_key_value_heads = 4, 4
    tokenizer = transformers.AutoTokenizer.from_pretrained(good)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: transformers.LlamaForCausalLM(config).to(torch.float32))
    cache = tmp_path / "smollm2-135m-instruct"
    transformers.LlamaForCausalLM(config).save_pretrained(cache)
    tokenizer.save_pretrained(cache)
    assert models._smollm2_cache_problem(cache) is None
    size = (cache / "model.safetensors").stat().st_size
    with open(cache / "model.safetensors", "r+b") as f:
        f.truncate(size // 2)                                     # a full disk, a killed copy
    leftover = tmp_path / ".smollm2-135m-instruct.tmp-999999999-dead00"    # a conversion killed half-way
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    aside = tmp_path / ".smollm2-135m-instruct.old-999999999-dead01"       # a replacement killed after moving aside
    aside.mkdir()
    (aside / "model.safetensors").write_bytes(b"old")
    monkeypatch.setattr(models, "SMOLLM2_CACHE", cache)
    assert models.smollm2_checkpoint() == cache
    out = capsys.readouterr().out
    assert f"is damaged (model.safetensors has {size // 2:,} bytes, its header announces {size:,})" in out
    assert "converting it again" in out
    assert models._smollm2_cache_problem(cache) is None and not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]          # nothing half-written is left
    assert (cache / "model.safetensors").stat().st_size == size


@pytest.mark.parametrize("damage, words", [
    ("header", "unreadable"), ("tensor", "lacks 1 tensor(s), e.g. model.norm.weight"), ("file", "tokenizer.json is missing"),
])
def test_smollm2_cache_check_finds_each_kind_of_damage(tmp_path, damage, words):
    import torch
    from safetensors.torch import save_file

    from utils.models import _smollm2_cache_problem

    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 0, "tie_word_embeddings": True}))
    (tmp_path / "tokenizer.json").write_text("{}")
    tensors = {"model.embed_tokens.weight": torch.zeros(4, 2), "model.norm.weight": torch.ones(2)}
    if damage == "tensor":
        del tensors["model.norm.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    assert _smollm2_cache_problem(tmp_path) is None or damage == "tensor"
    if damage == "header":
        (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    if damage == "file":
        (tmp_path / "tokenizer.json").unlink()
    assert words in _smollm2_cache_problem(tmp_path)


def test_a_folder_written_atomically_is_old_or_new_never_a_mix(tmp_path):
    """What the adapter and checkpoint folders get: a failure while writing leaves the previous folder whole."""
    from utils.results import atomic_folder

    target = tmp_path / "adapter"
    with atomic_folder(target) as tmp:
        (tmp / "adapter_model.safetensors").write_text("old")
    with pytest.raises(OSError, match="No space left"):
        with atomic_folder(target) as tmp:
            (tmp / "adapter_model.safetensors").write_text("ne")
            raise OSError(28, "No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert (target / "adapter_model.safetensors").read_text() == "old"
    with atomic_folder(target) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json"]     # nothing left of the old one


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_a_dead_writers_temporary_file_is_told_from_a_live_ones_on_every_platform(monkeypatch, platform):
    """On Windows os.kill(pid, 0) sends a Ctrl+C event (and raises WinError 87 for a dead pid): there the check asks
    psutil instead, and never calls os.kill."""
    import psutil

    monkeypatch.setattr(results.sys, "platform", platform)
    if platform == "win32":                 # psutil's own check, on this Linux machine, is os.kill: stand in for it
        monkeypatch.setattr(psutil, "pid_exists", lambda pid: pid == os.getpid())
        monkeypatch.setattr(results.os, "kill", lambda *a: pytest.fail("os.kill called on Windows"))
    assert results._alive(os.getpid()) and not results._alive(999_999_999)


def test_the_sms_download_trusts_certifis_certificates_beside_the_systems(monkeypatch):
    """Python from python.org on macOS starts with no certificates: the UCI download failed as if offline. certifi's
    are added to the system's (a company's own CA there keeps working)."""
    import certifi

    loaded = []
    original = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations",
                        lambda self, *a, **k: (loaded.append(a or k), original(self, *a, **k))[1])
    context = data._https_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert loaded == [(certifi.where(),)] and context.get_ca_certs()


def test_numerical_helpers_refuse_what_they_would_get_wrong():
    """Inputs that once gave a wrong number without a word: a NaN weight turned its whole NF4 block into NaN; a dict
    of references was scored by its keys; plain-string references were counted in characters; a rank given as a
    NumPy integer was refused and a target named twice counted twice."""
    import numpy as np
    import torch

    from utils import nf4
    from utils.analysis import length_table
    from utils.architectures import course_config
    from utils.metrics import compare, rouge
    from utils.planner import lora_parameter_count

    w = torch.randn(128)
    w[70] = float("nan")
    with pytest.raises(ValueError, match="non-finite values \\(the first at flat index 70: nan\\)"):
        nf4.quantize_blockwise(w)
    with pytest.raises(ValueError, match="references is a dict, not a list: a dict would be scored by its keys"):
        rouge(["a cat"], {"x": "a cat"})
    with pytest.raises(ValueError, match="compare needs every ROUGE variant.*missing: \\{'a': \\['rouge2'"):
        compare({"a": {"rouge1": 0.1}}, "a")
    frame = pd.DataFrame({"prediction": ["one two"], "references": ["one two three four"], "dialogue": ["x"]})
    with pytest.raises(ValueError, match="references of row 0 are a single string"):
        length_table(frame)
    config = course_config("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert lora_parameter_count(config, np.int64(8), ("q_proj",)) == lora_parameter_count(config, 8, ("q_proj",))
    assert lora_parameter_count(config, 8, ("q_proj", "q_proj")) == lora_parameter_count(config, 8, ("q_proj",))
    with pytest.raises(ValueError, match="positive integer, got True"):
        lora_parameter_count(config, True, ("q_proj",))


def test_results_keep_arrays_and_small_numbers_and_name_what_they_cannot_hold(results_dir):
    """An array of losses once failed with "can only convert an array of size 1 to a Python scalar", naming no key;
    a learning rate of 4e-7 was saved as 0.0 (6 decimals)."""
    import numpy as np
    import torch

    save_run(FakeRun("03_x", "03-A"), {"base": _frame(2)}, losses=np.array([2.5, 1.25]), lr=4e-7,
             grad=torch.tensor([0.5, 0.25]), p=0.0001)
    saved = json.loads((results_dir / "03_x.json").read_text())
    assert saved["losses"] == [2.5, 1.25] and saved["grad"] == [0.5, 0.25] and saved["lr"] == 4e-7
    assert saved["p"] == 0.0001
    _raises(TypeError, lambda: save_run(FakeRun("03_x", "03-B"), {"base": _frame(2)}, seen={"tags": {"a", "b"}}),
            "results.seen.tags is a set", "which a results file cannot hold")
    assert load_run("03_x")[0]["run_id"] == "03-A"          # the refused save left the earlier pair as it was


def test_a_prediction_holding_a_unicode_line_separator_reads_back(results_dir):
    """Predictions are written with ensure_ascii=False, so a model's U+2028 stays raw in the file; reading split at
    it (str.splitlines) and called the line "not valid JSON"."""
    save_run(FakeRun("03_x", "03-A"), {"base": _frame(2, "first line\u2028second line")}, rouge=0.5)
    assert load_run("03_x")[1]["prediction"].tolist() == ["first line\u2028second line"] * 2


def test_a_windows_checkout_of_the_predictions_reads_back(results_dir):
    """Git for Windows checks text out with \\r\\n line ends: the recorded checksum is of the \\n text, so the file once
    read as "edited or cut short" there. Files are written with \\n on every system (``newline``) and read either way."""
    save_run(FakeRun("03_x", "03-A"), {"base": _frame(3)}, rouge=0.5)
    path = results_dir / "03_x.predictions.jsonl"
    assert b"\r" not in path.read_bytes()
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert load_run("03_x")[1]["id"].tolist() == ["test_0", "test_1", "test_2"]


def test_results_refuse_what_the_file_would_change_or_what_later_notebooks_cannot_use(results_dir):
    """Infinity is not JSON (``jq`` and browsers refuse it): null, as NaN. Keys 1 and "1" would overwrite each other;
    a model without predictions left a file whose "re-run" advice wrote it empty again."""
    save_run(FakeRun("03_x", "03-A"), {"base": _frame(2)}, loss=float("inf"), floor=float("-inf"))
    saved = (results_dir / "03_x.json").read_text()
    assert "Infinity" not in saved and json.loads(saved)["loss"] is None
    _raises(ValueError, lambda: save_run(FakeRun("03_x", "03-B"), {"base": _frame(2)}, counts={1: "a", "1": "b"}),
            "results.counts has keys that read the same", "'1'")
    _raises(ValueError, lambda: save_run(FakeRun("03_x", "03-C"), {"base": _frame(0)}, rouge=0.5),
            "predictions of 'base' have no rows")
    _raises(ValueError, lambda: save_run(FakeRun("03_x", "03-D"), {}, rouge=0.5), "no predictions to save")
    assert load_run("03_x")[0]["run_id"] == "03-A"          # every refused save left the earlier pair as it was


@pytest.mark.parametrize("value, expected", [("~/course-cache", Path.home() / "course-cache"),
                                             ("cache-alt", "ROOT/cache-alt"), ("", "ROOT/.cache")])
def test_the_cache_folder_is_the_same_from_a_notebook_and_from_make(tmp_path, value, expected):
    """COURSE_CACHE_DIR=~/x once made a folder named "~"; a relative one was read from the working directory
    (notebooks/ for a notebook, the root for make): two caches, each converting SmolLM2 again."""
    from utils.paths import ROOT

    code = "from utils.paths import CACHE_DIR; print(CACHE_DIR)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "COURSE_CACHE_DIR": value}).stdout.strip()
    assert out == str(expected).replace("ROOT", str(ROOT))


def test_accuracy_of_an_empty_split_is_an_error():
    """It was NaN, printed as an accuracy."""
    from utils.classifier import accuracy

    _raises(ValueError, lambda: accuracy(None, pd.DataFrame({"text": [], "label": []}), None, 16),
            "accuracy of no messages", "split is empty")
