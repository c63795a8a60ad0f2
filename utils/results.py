"""Every notebook writes its key figures to ``results/<notebook-stem>.json``; later notebooks and
instructors read them. Predictions go to ``results/<stem>.predictions.jsonl`` (one row per model and
dialogue).

Nothing half-written is ever trusted:

* every file and folder is written to a temporary name in the same folder, then moved into place with
  ``os.replace`` (:func:`atomic_file`, :func:`atomic_write_text`, :func:`atomic_folder`): a kill, an
  out-of-memory or a full disk mid-write leaves the previous version intact (and a hidden ``.tmp`` file);
* a run's results and predictions carry the same ``run_id`` (``utils.Run.run_id``). :func:`save_run` writes
  both; :func:`load_run` reads both and refuses a pair written by different runs (an interruption between
  the two writes), or a predictions file that is not the one the results describe.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
from glob import escape as glob_escape
from pathlib import Path

import pandas as pd

from .paths import RESULTS_DIR, show


class ResultsError(ValueError):
    """A results or predictions file is damaged or belongs to another run; the message says what to re-run."""


# ----------------------------------------------------------------------------- atomic writes

def _tmp_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def _remove_stale(path: Path) -> None:
    """Delete the temporary files of earlier writers of ``path`` that died (killed, out of memory) mid-write, and the
    previous versions that :func:`replace_folder` had moved aside when it died (a converted model: half a GB)."""
    for kind in ("tmp", "old"):
        for tmp in path.parent.glob(f".{glob_escape(path.name)}.{kind}-*"):
            pid = tmp.name.rsplit(f".{kind}-", 1)[1].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if sys.platform == "win32":       # there os.kill(pid, 0) sends a Ctrl+C event instead of checking the process
        import psutil

        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_file(path: os.PathLike | str, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path`` for writing; on a clean exit flush it to disk and move it onto
    ``path`` (``os.replace``, atomic on POSIX and Windows). On an error the temporary file is removed and
    ``path`` keeps its previous content; a killed process leaves only a hidden ``.<name>.tmp-*`` file,
    which no reader looks at. Text is written with ``\n`` line ends on every system (Windows would write ``\r\n``,
    and a predictions file's recorded checksum would no longer match it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = _tmp_name(path)
    f = open(tmp, mode, **({} if "b" in mode else {"encoding": encoding, "newline": "\n"}))
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: os.PathLike | str, text: str) -> Path:
    with atomic_file(path) as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: os.PathLike | str):
    """Yield a temporary folder beside ``path``; on a clean exit it replaces ``path`` (a previous folder there
    is moved aside first, then deleted). On an error, or if the process dies, ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, path)


def replace_folder(src: os.PathLike | str, dest: os.PathLike | str) -> None:
    """Move the finished folder ``src`` onto ``dest`` (same parent): a previous ``dest`` is moved aside first,
    then deleted, so that ``dest`` is at every moment either the old folder or the new one, never a mix."""
    src, dest = Path(src), Path(dest)
    old = None
    if dest.exists():
        old = _tmp_name(dest, "old")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- results

def new_run_id(stem: str = "") -> str:
    """A fresh id per execution of a notebook: ``<stem prefix>-<UTC time>-<random>``."""
    prefix = f"{stem.split('_')[0]}-" if stem else ""
    return f"{prefix}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def split_lines(text: str) -> list[str]:
    """Lines split at \\n, \\r\\n or \\r only: ``str.splitlines`` also splits at U+2028, U+0085 and form feeds, which
    may sit inside a message or a JSON string."""
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _clean(obj, key: str = "results"):
    """JSON-ready: NaN and infinities become null (standard JSON has neither); floats keep 6 decimals, or 6
    significant digits below 0.001 (a 4e-7 rate would round to 0); arrays, tensors and Series become lists; keys
    that read the same as text, and anything else JSON cannot hold, are errors that name their key."""
    if isinstance(obj, dict):
        if len({str(k) for k in obj}) < len(obj):
            raise ValueError(f"{key} has keys that read the same as text ({sorted(map(repr, obj))[:6]}): one would "
                             f"overwrite the other in the file. Give them distinct names.")
        return {str(k): _clean(v, f"{key}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else round(obj, 6) if abs(obj) >= 1e-3 else float(f"{obj:.6g}")
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):        # numpy / torch scalars
        return _clean(obj.item(), key)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):   # arrays, tensors, Series
        return _clean(obj.tolist(), key)
    if isinstance(obj, Path):
        return obj.name
    if obj is None or isinstance(obj, (str, int)):                      # bool is an int
        return obj
    raise TypeError(f"{key} is a {type(obj).__name__}, which a results file cannot hold: give a number, a text, a "
                    f"list or a dict (e.g. .tolist(), .to_dict(), str()).")


def _results_text(results: dict) -> str:
    return json.dumps(_clean(results), indent=2, ensure_ascii=False) + "\n"


def save_results(stem: str, results: dict) -> Path:
    return atomic_write_text(RESULTS_DIR / f"{stem}.json", _results_text(results))


def _is_results_dir(folder) -> bool:
    return Path(folder).resolve() == RESULTS_DIR.resolve()


def _where_to(folder) -> str:
    """For a missing file in a folder other than results/: how the notebook's run gets its files there."""
    if not folder or _is_results_dir(folder):
        return ""
    return (f", to the end, with {PREDICTIONS_DIR_ENV} naming this folder (its last cell copies its files there; "
            f"on Colab, set it in that notebook too), or unset {PREDICTIONS_DIR_ENV} to read the course's results/")


def load_results(stem: str, folder: os.PathLike | str | None = None) -> dict:
    """``folder``: where to read (default ``results/``), e.g. a student's own runs copied to Google Drive."""
    path = (Path(folder) if folder else RESULTS_DIR) / f"{stem}.json"
    if not path.exists():
        raise FileNotFoundError(f"{show(path)} is missing: run notebooks/{stem}.ipynb first{_where_to(folder)}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{show(path)} is damaged (not valid JSON: {e}); it was cut short or edited. "
                           f"Re-run notebooks/{stem}.ipynb to write it again.") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{show(path)} holds a {type(data).__name__}, not the results object a notebook "
                           f"writes. Re-run notebooks/{stem}.ipynb.")
    return data


# ----------------------------------------------------------------------------- predictions

PREDICTION_COLUMNS = ["model", "id", "dialogue", "references", "prediction"]


def _prediction_text(frames: dict[str, pd.DataFrame], run_id: str | None) -> tuple[str, int]:
    rows = []
    if not frames:
        raise ValueError("no predictions to save: give each evaluated model's predictions, {name: DataFrame}.")
    for name, df in frames.items():
        missing = set(PREDICTION_COLUMNS[1:]) - set(df.columns)
        if missing:
            raise ValueError(f"predictions of {name!r} lack column(s) {sorted(missing)}")
        if len(df) == 0:
            raise ValueError(f"predictions of {name!r} have no rows: was its evaluation split empty?")
        extra = {"run_id": run_id} if run_id else {}
        rows += [{"model": name, **{c: r[c] for c in PREDICTION_COLUMNS[1:]}, **extra} for _, r in df.iterrows()]
    return "".join(json.dumps(_clean(r), ensure_ascii=False) + "\n" for r in rows), len(rows)


PREDICTIONS_DIR_ENV = "COURSE_PREDICTIONS_DIR"
COLAB_DRIVE = "/content/drive"      # where Colab mounts Google Drive (google.colab.drive.mount)


def predictions_dir(env=None) -> tuple[Path, str] | None:
    """The folder ``$COURSE_PREDICTIONS_DIR`` names (relative paths from the course root) and the value as given,
    or None when it is unset. Notebooks 02 and 03 copy their results there, notebook 04 reads them from there: on
    Colab, where each notebook gets a fresh VM, a folder on a mounted Google Drive carries them from one to the
    next. A folder under /content/drive while Drive is not mounted there is refused (``utils.start()`` checks it
    first): writing would create it on the VM's disk, whose files go with the VM."""
    from .paths import ROOT

    env = os.environ if env is None else env
    value = env.get(PREDICTIONS_DIR_ENV, "").strip()
    if not value:
        return None
    if "$" in value or "%" in value:
        raise ResultsError(f"{PREDICTIONS_DIR_ENV}={value!r} holds an unexpanded variable: Python does not expand it "
                           f"(it would create a folder of that literal name). Give the path itself.")
    folder = Path(value).expanduser()
    folder = Path(os.path.normpath(folder if folder.is_absolute() else ROOT / folder))
    if folder.exists() and not folder.is_dir():
        raise ResultsError(f"{PREDICTIONS_DIR_ENV}={value!r} is a file, not a folder: give a folder (it is created "
                           f"if missing).")
    if folder.is_relative_to(COLAB_DRIVE) and not os.path.ismount(COLAB_DRIVE):
        raise ResultsError(f"{PREDICTIONS_DIR_ENV}={value!r} is on Google Drive, but Drive is not mounted: the files "
                           f"would land on this VM's own disk and vanish with it. Mount it first, "
                           f"`from google.colab import drive; drive.mount(\"{COLAB_DRIVE}\")`, then run this cell again.")
    return folder, value


def save_run(run, predictions: dict[str, pd.DataFrame], **results) -> dict:
    """Write a notebook's predictions and results as one unit, both stamped with ``run.run_id``.

    The predictions go to a temporary file first; then ``run.save(**results)`` writes the results
    (atomically), recording the predictions' row count and SHA-256; then the predictions file is moved
    into place. An interruption anywhere leaves either the old pair, or a pair whose run ids differ, which
    :func:`load_run` refuses. With ``$COURSE_PREDICTIONS_DIR`` set (:func:`predictions_dir`), the pair is then
    copied there too, each file atomically, for notebook 04 to read. Returns the results payload."""
    text, n = _prediction_text(predictions, run.run_id)
    path = RESULTS_DIR / f"{run.stem}.predictions.jsonl"
    meta = {"file": path.name, "rows": n, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    with atomic_file(path) as f:
        f.write(text)
        payload = run.save(**results, predictions_file=meta)
    print(f"{n} predictions of {list(predictions)} written to results/{path.name} (run {run.run_id})")
    try:
        extra = predictions_dir()
    except ResultsError as e:
        raise ResultsError(f"{e} What this notebook wrote to results/ is kept: nothing is trained again.") from None
    if extra is not None and not _is_results_dir(extra[0]):
        atomic_write_text(extra[0] / f"{run.stem}.json", _results_text(payload))     # both still in memory
        atomic_write_text(extra[0] / path.name, text)
        print(f"and copied to {show(extra[0])} ({PREDICTIONS_DIR_ENV}), where notebook 04 reads them")
    return payload


def load_predictions(stem: str, folder: os.PathLike | str | None = None) -> pd.DataFrame:
    """The predictions file of a notebook, every line checked (a damaged line names the file and line)."""
    path = (Path(folder) if folder else RESULTS_DIR) / f"{stem}.predictions.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{show(path)} is missing: run notebooks/{stem}.ipynb first{_where_to(folder)} "
                                f"(it writes every model's predictions there).")
    redo = f"Re-run notebooks/{stem}.ipynb to write it again."
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ResultsError(f"{show(path)} is damaged (not UTF-8 at byte {e.start}). {redo}") from None
    if not text.strip():
        raise ResultsError(f"{show(path)} is empty. {redo}")
    if not text.endswith("\n"):
        raise ResultsError(f"{show(path)} does not end with a line break: it was cut short. {redo}")
    rows = []
    for i, line in enumerate(split_lines(text), start=1):       # a prediction may hold U+2028 (ensure_ascii=False)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{show(path)}, line {i}: not valid JSON ({e.msg}); the file is damaged. {redo}") from None
        if not isinstance(row, dict) or set(PREDICTION_COLUMNS) - set(row):
            have = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ResultsError(f"{show(path)}, line {i}: expected the keys {PREDICTION_COLUMNS}, found {have}. {redo}")
        rows.append(row)
    df = pd.DataFrame(rows)
    if "run_id" in df.columns and df["run_id"].nunique(dropna=False) > 1:
        raise ResultsError(f"{show(path)} mixes rows of {df['run_id'].nunique(dropna=False)} runs "
                           f"({sorted(map(str, df['run_id'].unique()))[:3]}): it was assembled by hand. {redo}")
    return df


def load_run(stem: str, folder: os.PathLike | str | None = None) -> tuple[dict, pd.DataFrame]:
    """Results and predictions of one run of ``notebooks/<stem>.ipynb`` (read from ``folder``, default
    ``results/``); a :class:`ResultsError` when they do not belong together (different run ids, or a
    predictions file other than the one the results recorded)."""
    base = Path(folder) if folder else RESULTS_DIR
    results, predictions = load_results(stem, base), load_predictions(stem, base)
    res_path, pred_path = show(base / f"{stem}.json"), show(base / f"{stem}.predictions.jsonl")
    redo = (f"Re-run notebooks/{stem}.ipynb to the end (its last cells write both files), "
            f"then re-run this notebook.")
    res_id = results.get("run_id")
    pred_id = predictions["run_id"].iloc[0] if "run_id" in predictions.columns else None
    if res_id is None and pred_id is None:
        print(f"note: {res_path} and {pred_path} were written before run ids existed; "
              f"that they come from the same run cannot be checked. {redo}")
        return results, predictions
    if res_id != pred_id:
        raise ResultsError(f"{res_path} (run {res_id or 'without a run id'}) and {pred_path} "
                           f"(run {pred_id or 'without a run id'}) come from different runs: notebooks/{stem}.ipynb "
                           f"was interrupted between its two writes, or one file was copied from elsewhere. {redo}")
    meta = results.get("predictions_file")
    if meta:
        path = base / f"{stem}.predictions.jsonl"
        digest = hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()   # a Windows checkout may add \r
        if meta.get("rows") != len(predictions) or meta.get("sha256") not in (None, digest):
            raise ResultsError(f"{pred_path} is not the file its run wrote ({len(predictions)} rows, "
                               f"{res_path} recorded {meta.get('rows')} and another checksum): it was edited "
                               f"or cut short. {redo}")
    return results, predictions
