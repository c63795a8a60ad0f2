"""Datasets behind one loader, three sources.

1. real, online: the SMS Spam Collection (UCI zip) and DialogSum (``knkarthick/dialogsum``);
2. real, local: ``COURSE_DATA_DIR`` holding the real files in their original formats;
3. bundled samples in ``data/``, written by the course authors (not copied from the real sets).

Every loader returns pandas DataFrames and says what it read, dropped and from where.
Bad input raises :class:`DataError` naming the file and what to do.
"""
from __future__ import annotations

import csv
import io
import json
import os
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from .paths import CACHE_DIR, DATA_DIR, SEED, show

SMS_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_FILE = "SMSSpamCollection"
DIALOGSUM_HUB = "knkarthick/dialogsum"
DIALOGSUM_JSONL = {"train": "dialogsum.train.jsonl", "validation": "dialogsum.dev.jsonl",
                   "test": "dialogsum.test.jsonl"}
DIALOGSUM_CSV = {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"}
SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """A data file is missing or malformed; the message says which file and what to do."""


def data_source(online: bool) -> tuple[str, Path | None]:
    """Which of the three sources this run reads: ('local', dir), ('hub', None) or ('bundled', dir)."""
    local = os.environ.get("COURSE_DATA_DIR", "").strip()
    if local:
        path = Path(local).expanduser()
        if not path.is_dir():
            raise DataError(f"COURSE_DATA_DIR={local!r} is not a folder. Point it at a folder holding "
                            f"'{SMS_FILE}' and/or a 'dialogsum/' subfolder, or unset it.")
        return "local", path
    if online:
        return "hub", None
    return "bundled", DATA_DIR


def describe_source(kind: str, name: str) -> str:
    return {"local": f"real {name}, local files ($COURSE_DATA_DIR)",
            "hub": f"real {name}, downloaded",
            "bundled": f"bundled sample written by the course (data/), not the real {name}"}[kind]


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{show(path)}: file not found. Put the file there, or unset COURSE_DATA_DIR "
                        f"to use the course's bundled sample.")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{show(path)}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}). "
                        f"Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


# ----------------------------------------------------------------------------- SMS spam

def parse_sms_collection(path: Path, verbose: bool = True) -> pd.DataFrame:
    """Read a file in the SMS Spam Collection format: ``label<TAB>text`` per line, header optional."""
    text = _read_text(path)
    rows, empty, no_text = [], 0, 0
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            empty += 1
            continue
        if "\t" not in line:
            raise DataError(f"{show(path)}, line {i}: expected 'label<TAB>text', found no tab: {line[:60]!r}")
        label, msg = line.split("\t", 1)
        label = label.strip().lower()
        if label not in ("ham", "spam"):
            if i == 1 and not rows:          # a header line such as 'label<TAB>text' or 'v1<TAB>v2'
                continue
            raise DataError(f"{show(path)}, line {i}: unknown label {label!r}; labels must be 'ham' or 'spam'.")
        msg = msg.strip()
        if not msg:
            no_text += 1
            continue
        rows.append((label, msg))
    if verbose and (empty or no_text):
        print(f"{show(path)}: skipped {empty} empty line(s) and {no_text} message(s) without text")
    df = pd.DataFrame(rows, columns=["label", "text"])
    for cls in ("ham", "spam"):
        if not (df["label"] == cls).any():
            raise DataError(f"{show(path)}: no '{cls}' message found; the classifier needs both classes.")
    return df


def _download_sms() -> Path:
    target = CACHE_DIR / "sms" / SMS_FILE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(SMS_URL, timeout=30) as r:
                payload = r.read()
        except OSError as e:
            raise DataError(f"Could not download the SMS Spam Collection ({e}). Offline? Download "
                            f"{SMS_URL} elsewhere, unzip it, and set COURSE_DATA_DIR to its folder; "
                            f"or run the smoke profile (COURSE_PROFILE=smoke).") from None
        with zipfile.ZipFile(io.BytesIO(payload)) as z:
            target.write_bytes(z.read(SMS_FILE))
    return target


def load_sms(online: bool, verbose: bool = True) -> tuple[pd.DataFrame, str]:
    """All messages (columns ``label``, ``text``) and a description of their source."""
    kind, folder = data_source(online)
    path = _download_sms() if kind == "hub" else folder / SMS_FILE
    df = parse_sms_collection(path, verbose=verbose)
    source = describe_source(kind, "SMS Spam Collection")
    if verbose:
        counts = df["label"].value_counts()
        print(f"SMS data: {source}: {len(df):,} messages ({counts['ham']:,} ham / {counts['spam']:,} spam)")
    return df, source


def balance_and_split(df: pd.DataFrame, seed: int = SEED, fractions=(0.7, 0.1)) -> dict[str, pd.DataFrame]:
    """Undersample ham to the number of spam, shuffle, split 70/10/20; ``label`` becomes 0 (ham) / 1 (spam)."""
    if set(df.columns) < {"label", "text"}:
        raise DataError(f"expected columns 'label' and 'text', got {list(df.columns)}")
    n_spam = int((df["label"] == "spam").sum())
    ham = df[df["label"] == "ham"].sample(n_spam, random_state=seed)
    balanced = pd.concat([ham, df[df["label"] == "spam"]]).sample(frac=1, random_state=seed)
    balanced = balanced.assign(label=(balanced["label"] == "spam").astype(int)).reset_index(drop=True)
    n = len(balanced)
    a = int(n * fractions[0])
    b = a + int(n * fractions[1])
    splits = {"train": balanced[:a], "validation": balanced[a:b], "test": balanced[b:]}
    for name, part in splits.items():
        if len(part) == 0:
            raise DataError(f"the {name} split is empty ({n} balanced messages); the data needs more spam.")
    return {k: v.reset_index(drop=True) for k, v in splits.items()}


def take(split: pd.DataFrame, n: int | None, name: str, verbose: bool = True) -> pd.DataFrame:
    """The first ``n`` rows of a split (all when ``n`` is None), saying so when rows are left out."""
    if len(split) == 0:
        raise DataError(f"the {name} split is empty: nothing to train or evaluate on.")
    if n is None or n >= len(split):
        return split
    if verbose:
        print(f"{name}: using {n} of {len(split)} rows (profile size)")
    return split.iloc[:n].reset_index(drop=True)


# ----------------------------------------------------------------------------- DialogSum

def _records_to_frame(records: list[dict], split: str, where: str) -> pd.DataFrame:
    """Records with 'dialogue' and one or more summaries -> one row per distinct dialogue."""
    by_dialogue: dict[str, dict] = {}
    for i, r in enumerate(records):
        dialogue = str(r.get("dialogue") or "").replace("\r\n", "\n").strip()
        refs = [str(r[k]).strip() for k in ("summary", "summary1", "summary2", "summary3")
                if k in r and r[k] is not None and str(r[k]).strip()]
        if not dialogue:
            raise DataError(f"{where}, row {i + 1}: empty dialogue.")
        if not refs:
            raise DataError(f"{where}, row {i + 1}: no reference summary ('summary' or 'summary1..3').")
        rid = str(r.get("id") or r.get("fname") or f"{split}_{i}")
        topic = str(r.get("topic") or r.get("topic1") or "")
        if dialogue in by_dialogue:          # the hub's test split repeats each dialogue 3 times
            by_dialogue[dialogue]["references"] += [s for s in refs if s not in by_dialogue[dialogue]["references"]]
        else:
            by_dialogue[dialogue] = {"id": rid, "dialogue": dialogue, "references": refs, "topic": topic}
    if not by_dialogue:
        raise DataError(f"{where}: the {split} split is empty.")
    df = pd.DataFrame(list(by_dialogue.values()))
    df["summary"] = df["references"].str[0]
    return df[["id", "dialogue", "summary", "references", "topic"]]


def _read_jsonl(path: Path, required: set[str]) -> list[dict]:
    rows = []
    for i, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{show(path)}, line {i}: not valid JSON ({e.msg}).") from None
        if not isinstance(row, dict) or not required <= set(row):
            missing = required - set(row) if isinstance(row, dict) else required
            raise DataError(f"{show(path)}, line {i}: missing key(s) {sorted(missing)}; "
                            f"DialogSum JSONL rows need {sorted(required)}.")
        rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    need = {"dialogue", "summary"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise DataError(f"{show(path)}: wrong columns {reader.fieldnames}; the hub's DialogSum CSVs "
                        f"have 'id, dialogue, summary, topic'.")
    return list(reader)


def _local_dialogsum(folder: Path, split: str) -> tuple[list[dict], str]:
    jsonl, csv_path = folder / DIALOGSUM_JSONL[split], folder / DIALOGSUM_CSV[split]
    if jsonl.exists():
        required = {"dialogue", "summary1"} if split == "test" else {"dialogue", "summary"}
        return _read_jsonl(jsonl, required), show(jsonl)
    if csv_path.exists():
        return _read_csv(csv_path), show(csv_path)
    raise DataError(f"{show(folder)}: no DialogSum {split} file; expected {DIALOGSUM_JSONL[split]} "
                    f"(original release) or {DIALOGSUM_CSV[split]} (hub export).")


def load_dialogsum(online: bool, splits=SPLITS, verbose: bool = True) -> tuple[dict[str, pd.DataFrame], str]:
    """DialogSum splits, one row per distinct dialogue with all its reference summaries."""
    kind, folder = data_source(online)
    out = {}
    if kind == "hub":
        from datasets import load_dataset
        try:
            ds = load_dataset(DIALOGSUM_HUB)
        except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
            raise DataError(f"Could not download {DIALOGSUM_HUB} ({type(e).__name__}: {e}). Offline? Put the "
                            f"CSVs in $COURSE_DATA_DIR/dialogsum/ or use COURSE_PROFILE=smoke.") from None
        for s in splits:
            out[s] = _records_to_frame(list(ds[s]), s, f"{DIALOGSUM_HUB}[{s}]")
    else:
        sub = folder / "dialogsum"
        for s in splits:
            records, where = _local_dialogsum(sub, s)
            out[s] = _records_to_frame(records, s, where)
    source = describe_source(kind, "DialogSum")
    if verbose:
        sizes = ", ".join(f"{s} {len(df):,} dialogues" for s, df in out.items())
        refs = {s: round(df["references"].str.len().mean(), 2) for s, df in out.items()}
        print(f"DialogSum: {source}: {sizes}; references per dialogue {refs}")
    return out, source
