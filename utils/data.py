"""Datasets behind one loader, three sources.

1. real, online: the SMS Spam Collection (UCI zip; when UCI cannot be reached, the same 5,574 messages from the
   Hugging Face Hub's parquet export of ``ucirvine/sms_spam``) and DialogSum (``knkarthick/dialogsum``);
2. real, local: ``COURSE_DATA_DIR`` holding the real files in their original formats;
3. bundled samples in ``data/``, written by the course authors (not copied from the real sets).

Every loader returns pandas DataFrames and says what it read, dropped and from where.
Bad input raises :class:`DataError` naming the file and what to do.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import numbers
import os
import re
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from .paths import CACHE_DIR, DATA_DIR, ROOT, SEED, show
from .results import atomic_file, atomic_write_text, split_lines

# COURSE_SMS_URL: a mirror of the same zip (the tests serve one on 127.0.0.1)
SMS_URL = os.environ.get("COURSE_SMS_URL", "").strip() or "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_FILE = "SMSSpamCollection"
# The same collection on the Hugging Face Hub, as its parquet converter exports it (public, no token): one row per
# UCI line, in the file's order, `sms` (the text) and `label` (0 ham, 1 spam). Read only when UCI cannot be reached.
SMS_HUB = {"repo_id": "ucirvine/sms_spam", "filename": "plain_text/train/0000.parquet", "repo_type": "dataset",
           "revision": "refs/convert/parquet"}
DIALOGSUM_HUB = "knkarthick/dialogsum"
DIALOGSUM_JSONL = {"train": "dialogsum.train.jsonl", "validation": "dialogsum.dev.jsonl",
                   "test": "dialogsum.test.jsonl"}
DIALOGSUM_CSV = {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"}
SPLITS = ("train", "validation", "test")
# Longer than any real record by far (UCI's longest SMS: 910 characters; DialogSum's longest dialogue: a few
# thousand): a record above these is a broken file (lost line breaks, a wrong file), and tokenising it would
# take minutes.
MAX_SMS_CHARS = 5_000
MAX_DIALOGUE_CHARS = 50_000
MAX_SUMMARY_CHARS = 5_000
SMS_HEADER_LABELS = ("label", "labels", "v1", "class", "category", "type", "target")
# the hub's test split repeats each dialogue once per reference, as test_<n>_1, test_<n>_2, test_<n>_3
_TEST_COPY_ID = re.compile(r"(.+_\d+)_(\d+)")


class DataError(ValueError):
    """A data file is missing or malformed; the message says which file and what to do."""


def course_data_dir(verbose: bool = False) -> Path | None:
    """``$COURSE_DATA_DIR`` as a folder, or None when unset. A relative path is read from the course root
    (not from the folder a notebook runs in), and that is said."""
    local = os.environ.get("COURSE_DATA_DIR", "").strip()
    if not local:
        return None
    path = Path(local).expanduser()
    relative = not path.is_absolute()
    if relative:
        path = (ROOT / path).resolve()
    if not path.is_dir():
        where = f" (a relative path, read from the course root: {path})" if relative else ""
        raise DataError(f"COURSE_DATA_DIR={local!r} is not a folder{where}. Point it at a folder holding "
                        f"'{SMS_FILE}' and/or a 'dialogsum/' subfolder (an absolute path is safest), or unset it.")
    if relative and verbose:
        print(f"COURSE_DATA_DIR={local!r} is relative: read from the course root, as {path}")
    return path


def data_source(online: bool, verbose: bool = False) -> tuple[str, Path | None]:
    """Which of the three sources this run reads: ('local', dir), ('hub', None) or ('bundled', dir)."""
    local = course_data_dir(verbose)
    if local is not None:
        return "local", local
    if online:
        return "hub", None
    return "bundled", DATA_DIR


def describe_source(kind: str, name: str) -> str:
    return {"local": f"real {name}, local files ($COURSE_DATA_DIR)",
            "hub": f"real {name}, downloaded",
            "bundled": f"bundled sample written by the course (data/), not the real {name}"}[kind]


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{show(path)}: file not found. Put the file there, or unset COURSE_DATA_DIR (online the "
                        f"course then downloads the real data; offline it reads its bundled sample).")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{show(path)}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}). "
                        f"Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


# ----------------------------------------------------------------------------- SMS spam

def parse_sms_collection(path: Path, verbose: bool = True) -> pd.DataFrame:
    """Read a file in the SMS Spam Collection format: ``label<TAB>text`` per line, header optional.

    A header is recognised only by its name (``label``, ``v1``, ``class``...) on the first non-empty line; any
    other unknown label is an error (a typo such as ``hamm`` is not taken for a header and dropped)."""
    text = _read_text(path)
    rows, empty, no_text, header = [], 0, 0, None
    for i, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            empty += 1
            continue
        fields = line.split("\t")
        if len(fields) == 1:
            raise DataError(f"{show(path)}, line {i}: expected 'label<TAB>text', found no tab: {line[:60]!r}. "
                            f"Separate the label from the message with one tab.")
        if len(fields) > 2:
            raise DataError(f"{show(path)}, line {i}: {len(fields)} tab-separated columns, expected 2 "
                            f"('label<TAB>text'); the extra columns {[f[:20] for f in fields[2:]][:3]} would end up "
                            f"in the message. Keep only the first two columns (e.g. `cut -f1,2`).")
        label, msg = fields
        label = label.strip().lower()
        if label not in ("ham", "spam"):
            if not rows and header is None and label in SMS_HEADER_LABELS:
                header = i                   # a header line such as 'label<TAB>text' or 'v1<TAB>v2'
                continue
            close = difflib.get_close_matches(label, ["ham", "spam"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{show(path)}, line {i}: unknown label {label!r}{hint}; labels must be 'ham' or "
                            f"'spam'. Correct that line (a header line may only be named "
                            f"{', '.join(repr(h) for h in SMS_HEADER_LABELS)}).")
        msg = msg.strip()
        if not msg:
            no_text += 1
            continue
        if len(msg) > MAX_SMS_CHARS:
            raise DataError(f"{show(path)}, line {i}: a message of {len(msg):,} characters (an SMS has at most a "
                            f"few hundred; the limit here is {MAX_SMS_CHARS:,}). The file has probably lost its line "
                            f"breaks or is not the SMS Spam Collection: check that line.")
        rows.append((label, msg))
    if verbose and header:
        print(f"{show(path)}: line {header} read as a header")
    if verbose and (empty or no_text):
        print(f"{show(path)}: skipped {empty} empty line(s) and {no_text} message(s) without text")
    if not rows:
        raise DataError(f"{show(path)}: no message in the file (it is empty, or holds only blank lines or a "
                        f"header). Put the SMS Spam Collection there ('label<TAB>text' per line).")
    df = pd.DataFrame(rows, columns=["label", "text"])
    for cls in ("ham", "spam"):
        if not (df["label"] == cls).any():
            raise DataError(f"{show(path)}: no '{cls}' message found among {len(df)}; the classifier needs both "
                            f"classes. Use the whole file.")
    return df


def _sms_cache_problem(target: Path, stamp: Path) -> str | None:
    """Why a cached download cannot be trusted, or None. The checksum stamp is written only after the file
    has been downloaded, checked and moved into place: a fragment has none."""
    if not stamp.is_file():
        return "no checksum stamp beside it (an interrupted download?)"
    if stamp.read_text().strip() != hashlib.sha256(target.read_bytes()).hexdigest():
        return "its content does not match the checksum written after the download (damaged or edited)"
    return None


def _https_context():
    """The system's certificates (and ``SSL_CERT_FILE``'s), plus certifi's where installed (they come with
    huggingface_hub's httpx): Python from python.org on macOS has none of its own until "Install
    Certificates.command" runs, and the download failed as if offline."""
    import ssl

    context = ssl.create_default_context()
    try:
        import certifi

        context.load_verify_locations(certifi.where())
    except ImportError:
        pass
    return context


def _sms_from_uci() -> bytes:
    """The UCI archive's ``SMSSpamCollection``, as bytes."""
    try:
        with urllib.request.urlopen(SMS_URL, timeout=30, context=_https_context()) as r:
            payload = r.read()
    except OSError as e:
        raise DataError(f"could not download {SMS_URL} ({e})") from None
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as z:
            return z.read(SMS_FILE)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"the download from {SMS_URL} is not the expected zip holding '{SMS_FILE}' ({e})") from None


def _sms_from_hub() -> bytes:
    """The same collection from the Hub's parquet export (``SMS_HUB``), written back as UCI's ``label<TAB>text``
    lines, in the same order: the split that follows is then the one UCI's file gives."""
    from huggingface_hub import hf_hub_download

    where = f"{SMS_HUB['repo_id']} ({SMS_HUB['filename']} at {SMS_HUB['revision']})"
    try:
        df = pd.read_parquet(hf_hub_download(**SMS_HUB))
    except Exception as e:  # noqa: BLE001 - offline, hub down, file moved: all reported with UCI's failure
        raise DataError(f"could not read {where} from the Hugging Face Hub ({type(e).__name__}: {e})") from None
    if not {"sms", "label"} <= set(df.columns) or not df["label"].isin([0, 1]).all():
        raise DataError(f"{where} holds columns {list(df.columns)} and labels {sorted(set(df.get('label', [])))[:5]}, "
                        f"not the expected `sms` and `label` (0 ham, 1 spam)")
    return "".join(f"{('ham', 'spam')[label]}\t{str(sms).strip()}\n"
                   for sms, label in zip(df["sms"], df["label"])).encode("utf-8")


def _download_sms() -> Path:
    """The UCI file in the cache: downloaded (from UCI; when UCI fails, from the Hub's copy), parsed (checked)
    before it is moved into place, then stamped with its SHA-256; a cached file is reused only when its stamp
    matches."""
    target = CACHE_DIR / "sms" / SMS_FILE
    stamp = target.with_name(SMS_FILE + ".sha256")
    if target.exists():
        problem = _sms_cache_problem(target, stamp)
        if problem is None:
            return target
        print(f"{show(target)}: {problem}; downloading it again.")
    try:
        content = _sms_from_uci()
    except DataError as uci:
        try:
            content = _sms_from_hub()
        except DataError as hub:
            raise DataError(f"Could not download the SMS Spam Collection: {uci}; and {hub}. Offline? Download "
                            f"{SMS_URL} elsewhere, unzip it, and set COURSE_DATA_DIR to its folder; "
                            f"or run the smoke profile (COURSE_PROFILE=smoke).") from None
        print(f"UCI failed ({uci}); the same collection was read from the Hugging Face Hub's copy, "
              f"{SMS_HUB['repo_id']}.")
    with atomic_file(target, "wb") as f:
        f.write(content)
        f.flush()
        parse_sms_collection(Path(f.name), verbose=False)     # checked before it replaces anything
    atomic_write_text(stamp, hashlib.sha256(content).hexdigest() + "\n")
    return target


def load_sms(online: bool, verbose: bool = True) -> tuple[pd.DataFrame, str]:
    """All messages (columns ``label``, ``text``) and a description of their source."""
    kind, folder = data_source(online, verbose)
    path = _download_sms() if kind == "hub" else folder / SMS_FILE
    df = parse_sms_collection(path, verbose=verbose)
    source = describe_source(kind, "SMS Spam Collection")
    if verbose:
        counts = df["label"].value_counts()
        print(f"SMS data: {source}: {len(df):,} messages ({counts['ham']:,} ham / {counts['spam']:,} spam)")
    return df, source


def balance_and_split(df: pd.DataFrame, seed: int = SEED, fractions=(0.7, 0.1)) -> dict[str, pd.DataFrame]:
    """Undersample ham to the number of spam, shuffle, split 70/10/20; ``label`` becomes 0 (ham) / 1 (spam)."""
    if not {"label", "text"} <= set(df.columns):
        raise DataError(f"expected columns 'label' and 'text', got {list(df.columns)}")
    if unknown := sorted({str(x) for x in df["label"]} - {"ham", "spam"}):
        raise DataError(f"labels must be 'ham' or 'spam' (as `parse_sms_collection` writes them); found "
                        f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}: map them, or those rows would be dropped.")
    n_spam, n_ham = int((df["label"] == "spam").sum()), int((df["label"] == "ham").sum())
    if n_spam > n_ham:
        raise DataError(f"{n_spam} spam against {n_ham} ham: balancing undersamples ham to the number of spam, so it "
                        f"needs at least as many ham messages (the real collection has 4,827 ham, 747 spam).")
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
    """The first ``n`` rows of a split (all when ``n`` is None), saying so when rows are left out, or when the split
    holds fewer than ``n`` (then all of them)."""
    if len(split) == 0:
        raise DataError(f"the {name} split is empty: nothing to train or evaluate on.")
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
        raise DataError(f"{name}: asked for {n!r} rows; give a positive whole number (a profile size), or None for all.")
    if n is None or n >= len(split):
        if verbose and n is not None and n > len(split):
            print(f"{name}: asked for {n} rows, the split has {len(split)}: using all of them")
        return split
    if verbose:
        print(f"{name}: using {n} of {len(split)} rows (profile size)")
    return split.iloc[:n].reset_index(drop=True)


# ----------------------------------------------------------------------------- DialogSum

def _text_field(r: dict, key: str, where: str, row: int) -> str | None:
    v = r.get(key)
    if v is None or (isinstance(v, float) and v != v):     # absent, JSON null, or NaN from a table
        return None
    if not isinstance(v, str):
        raise DataError(f"{where}, row {row}: {key!r} is {type(v).__name__} {v!r}, not text. Fix that row "
                        f"(every dialogue and summary is a string).")
    return v


def _records_to_frame(records: list[dict], split: str, where: str, verbose: bool = True) -> pd.DataFrame:
    """Records with 'dialogue' and one or more summaries -> one row per dialogue with its references.

    Every record is one example, except the hub's test copies: ids ``test_<n>_1``, ``test_<n>_2``... are one
    dialogue (id ``test_<n>``) with one reference each, merged here (their dialogues must be equal). A repeated
    id is an error; a dialogue repeated under different ids is kept as separate examples, and said."""
    rows: dict[str, dict] = {}
    first_row: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    by_text: dict[str, list[str]] = {}
    for i, r in enumerate(records):
        n = i + 1
        dialogue = (_text_field(r, "dialogue", where, n) or "").replace("\r\n", "\n").strip()
        if not dialogue:
            raise DataError(f"{where}, row {n}: empty dialogue. Fill it in or remove the row.")
        if len(dialogue) > MAX_DIALOGUE_CHARS:
            raise DataError(f"{where}, row {n}: a dialogue of {len(dialogue):,} characters (the limit is "
                            f"{MAX_DIALOGUE_CHARS:,}; real ones are a few thousand). Check that row: is the file "
                            f"broken (a missing quote or line break)?")
        refs = []
        for k in ("summary", "summary1", "summary2", "summary3"):
            text = _text_field(r, k, where, n)
            if text is not None and text.strip():
                if len(text) > MAX_SUMMARY_CHARS:
                    raise DataError(f"{where}, row {n}: {k!r} has {len(text):,} characters (the limit is "
                                    f"{MAX_SUMMARY_CHARS:,}). Check that row.")
                refs.append(text.strip())
        if not refs:
            raise DataError(f"{where}, row {n}: no reference summary ('summary' or 'summary1..3'). Add one or "
                            f"remove the row.")
        raw = r.get("id") if r.get("id") not in (None, "") else r.get("fname")
        rid = f"{split}_{i}" if raw in (None, "") else str(raw).strip()
        if rid in seen_ids:
            raise DataError(f"{where}, rows {seen_ids[rid]} and {n}: the id {rid!r} appears twice. Each dialogue "
                            f"needs its own id (the hub's test copies are named {rid}_1, {rid}_2...): remove the "
                            f"duplicate row or give it another id.")
        seen_ids[rid] = n
        copy = _TEST_COPY_ID.fullmatch(rid) if split == "test" else None
        key = copy.group(1) if copy else rid
        topic = str(_text_field(r, "topic", where, n) or _text_field(r, "topic1", where, n) or "")
        if key in rows:
            if rows[key]["dialogue"].split() != dialogue.split():      # spacing aside, the same dialogue
                raise DataError(f"{where}, rows {first_row[key]} and {n}: {rid!r} is named as a copy of test "
                                f"dialogue {key!r} (one copy per reference), but its dialogue differs. Correct "
                                f"the dialogue or the id.")
            rows[key]["references"] += refs
            continue
        rows[key], first_row[key] = {"id": key, "dialogue": dialogue, "references": refs, "topic": topic}, n
        by_text.setdefault(dialogue, []).append(key)
    if not rows:
        raise DataError(f"{where}: the {split} split is empty. Put its records in the file.")
    repeated = [ids for ids in by_text.values() if len(ids) > 1]
    if repeated and verbose:
        print(f"{where}: {len(repeated)} dialogue(s) appear under several ids (e.g. {repeated[0][:3]}); "
              f"each is kept as its own example, with its own summary.")
    df = pd.DataFrame(list(rows.values()))
    df["summary"] = df["references"].str[0]
    return df[["id", "dialogue", "summary", "references", "topic"]]


_SUMMARY_KEYS = ("summary", "summary1")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(split_lines(_read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{show(path)}, line {i}: not valid JSON ({e.msg}). Fix or remove that line.") from None
        if not isinstance(row, dict) or "dialogue" not in row or not any(k in row for k in _SUMMARY_KEYS):
            have = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{show(path)}, line {i}: missing key(s): DialogSum JSONL rows need 'dialogue' and "
                            f"'summary' (or 'summary1'..'summary3' as in the original test file); found {have}.")
        rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if "dialogue" not in fields or not any(k in fields for k in _SUMMARY_KEYS):
        raise DataError(f"{show(path)}: wrong columns {reader.fieldnames}; the hub's DialogSum CSVs "
                        f"have 'id, dialogue, summary, topic'. Fix the header line.")
    rows = []
    for n, row in enumerate(reader, start=1):
        if None in row:
            raise DataError(f"{show(path)}, row {n} after the header: more fields than the header's "
                            f"{len(fields)}: a comma inside an unquoted field? Quote that field.")
        rows.append(row)
    return rows


def _local_dialogsum(folder: Path, split: str) -> tuple[list[dict], str]:
    jsonl, csv_path = folder / DIALOGSUM_JSONL[split], folder / DIALOGSUM_CSV[split]
    if jsonl.exists():
        return _read_jsonl(jsonl), show(jsonl)
    if csv_path.exists():
        return _read_csv(csv_path), show(csv_path)
    one_up = any((folder.parent / n[split]).exists() for n in (DIALOGSUM_JSONL, DIALOGSUM_CSV))
    hint = (f" The files are in {show(folder.parent)}: COURSE_DATA_DIR names the dialogsum folder itself; point it at "
            f"the folder above it." if one_up else
            f" COURSE_DATA_DIR serves both datasets: DialogSum's files go in its 'dialogsum/' subfolder (or unset "
            f"COURSE_DATA_DIR: online the course then downloads DialogSum; offline it reads its bundled sample).")
    raise DataError(f"{show(folder)}: no DialogSum {split} file; expected {DIALOGSUM_JSONL[split]} "
                    f"(original release) or {DIALOGSUM_CSV[split]} (hub export).{hint}")


def load_dialogsum(online: bool, splits=SPLITS, verbose: bool = True) -> tuple[dict[str, pd.DataFrame], str]:
    """DialogSum splits, one row per dialogue with all its reference summaries (the hub's test copies merged)."""
    kind, folder = data_source(online, verbose)
    out = {}
    if kind == "hub":
        from datasets import load_dataset
        try:
            ds = load_dataset(DIALOGSUM_HUB)
        except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
            raise DataError(f"Could not download {DIALOGSUM_HUB} ({type(e).__name__}: {e}). Offline? Put the "
                            f"CSVs in $COURSE_DATA_DIR/dialogsum/ or use COURSE_PROFILE=smoke.") from None
        for s in splits:
            out[s] = _records_to_frame(list(ds[s]), s, f"{DIALOGSUM_HUB}[{s}]", verbose)
    else:
        sub = folder / "dialogsum"
        for s in splits:
            records, where = _local_dialogsum(sub, s)
            out[s] = _records_to_frame(records, s, where, verbose)
    source = describe_source(kind, "DialogSum")
    if verbose:
        sizes = ", ".join(f"{s} {len(df):,} dialogues" for s, df in out.items())
        refs = {s: round(float(df["references"].str.len().mean()), 2) for s, df in out.items()}
        print(f"DialogSum: {source}: {sizes}; references per dialogue {refs}")
    return out, source
