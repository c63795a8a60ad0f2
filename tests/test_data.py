"""Every loader format and every bad-input case of utils.data."""
import json

import numpy as np
import pandas as pd
import pytest

from utils.data import DataError, balance_and_split, load_dialogsum, load_sms, parse_sms_collection, take


def write_sms(path, lines, encoding="utf-8"):
    path.write_bytes("\n".join(lines).encode(encoding) + b"\n")


SMS = [f"ham\tSee you at {i} pm, bring the keys" for i in range(14)] + \
      [f"spam\tWIN £{i}00 now! Txt CLAIM to 80{i:03d}" for i in range(6)]


def test_bundled_sms_loads_with_both_classes(monkeypatch):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    df, source = load_sms(online=False)
    assert "bundled" in source
    counts = df["label"].value_counts()
    assert counts.to_dict() == {"ham": 463, "spam": 302}          # every line of data/SMSSpamCollection


def test_local_sms_without_header(data_dir):
    write_sms(data_dir / "SMSSpamCollection", SMS)
    df, source = load_sms(online=False)
    assert "local" in source and len(df) == 20


def test_local_sms_with_header_and_empty_lines(data_dir, capsys):
    write_sms(data_dir / "SMSSpamCollection", ["label\ttext"] + SMS[:10] + ["", ""] + SMS[10:])
    df, _ = load_sms(online=False)
    assert len(df) == 20
    assert "skipped 2 empty line(s)" in capsys.readouterr().out


def test_missing_sms_file(data_dir):
    with pytest.raises(DataError, match="SMSSpamCollection: file not found"):
        load_sms(online=False)


def test_sms_wrong_columns(data_dir):
    write_sms(data_dir / "SMSSpamCollection", SMS[:3] + ["ham, no tab here"])
    with pytest.raises(DataError, match="line 4: expected 'label<TAB>text'"):
        load_sms(online=False)


def test_sms_unknown_label(data_dir):
    write_sms(data_dir / "SMSSpamCollection", SMS[:3] + ["maybe\tcall me"])
    with pytest.raises(DataError, match="line 4: unknown label 'maybe'"):
        load_sms(online=False)


def test_sms_unreadable_encoding(data_dir):
    write_sms(data_dir / "SMSSpamCollection", SMS[:3] + ["ham\tcafé at 5"], encoding="latin-1")
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_sms(online=False)


def test_sms_single_class(data_dir):
    write_sms(data_dir / "SMSSpamCollection", SMS[:5])
    with pytest.raises(DataError, match="no 'spam' message"):
        load_sms(online=False)


def test_course_data_dir_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="is not a folder"):
        load_sms(online=False)


def test_balance_and_split_is_70_10_20_and_balanced(tmp_path):
    path = tmp_path / "SMSSpamCollection"
    write_sms(path, [f"ham\tmsg {i}" for i in range(4825)] + [f"spam\tprize {i}" for i in range(747)])
    splits = balance_and_split(parse_sms_collection(path))
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [1045, 149, 300]
    both = pd.concat(splits.values())
    assert both["label"].sum() == 747 and len(both) == 1494
    assert both["text"].is_unique                   # undersampled, never resampled: no message in two splits
    again = balance_and_split(parse_sms_collection(path))
    assert splits["test"]["text"].tolist() == again["test"]["text"].tolist()   # fixed seed


def test_balance_and_split_refuses_other_columns_and_labels():
    """UCI's own header names (v1, v2) once passed the column check (a proper-subset test) and failed later with a
    KeyError; labels other than ham/spam would have been dropped without a word."""
    with pytest.raises(DataError, match="expected columns 'label' and 'text', got \\['v1', 'v2'\\]"):
        balance_and_split(pd.DataFrame({"v1": ["ham", "spam"], "v2": ["a", "b"]}))
    with pytest.raises(DataError, match="expected columns"):
        balance_and_split(pd.DataFrame({"label": ["ham", "spam"]}))
    with pytest.raises(DataError, match=r"labels must be 'ham' or 'spam'.*\['0', '1'\]"):
        balance_and_split(pd.DataFrame({"label": [0, 1, 1], "text": ["a", "b", "c"]}))
    with pytest.raises(DataError, match="2 spam against 1 ham: balancing undersamples ham"):   # was pandas' own error
        balance_and_split(pd.DataFrame({"label": ["ham", "spam", "spam"], "text": ["a", "b", "c"]}))


def test_empty_split_is_an_error():
    tiny = pd.DataFrame({"label": ["ham", "spam"], "text": ["a", "b"]})
    with pytest.raises(DataError, match="split is empty"):
        balance_and_split(tiny)


def test_take_says_what_it_leaves_out(capsys):
    df = pd.DataFrame({"x": range(10)})
    assert len(take(df, 4, "train")) == 4
    assert "using 4 of 10 rows" in capsys.readouterr().out
    with pytest.raises(DataError, match="empty"):
        take(df.iloc[:0], 4, "test")
    assert len(take(df, 1000, "test")) == 10                     # fewer than asked: all, and said (it was silent)
    assert "test: asked for 1000 rows, the split has 10: using all of them" in capsys.readouterr().out
    for bad in (0, -1, 2.5, "5", True):                          # -1 once dropped the last row, 0 returned nothing
        with pytest.raises(DataError, match=r"train: asked for .* rows; give a positive whole number"):
            take(df, bad, "train")
    assert len(take(df, np.int64(3), "train")) == 3


# ----------------------------------------------------------------------------- DialogSum

def dialogue(i):
    return f"#Person1#: Hello, table for {i}?\n#Person2#: Sure, this way."


def write_jsonl(folder, with_test_refs=3):
    for split, name in (("train", "dialogsum.train.jsonl"), ("validation", "dialogsum.dev.jsonl")):
        rows = [{"fname": f"{split}_{i}", "dialogue": dialogue(i), "summary": f"#Person1# books {i}.",
                 "topic": "restaurant"} for i in range(5)]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = []
    for i in range(4):
        r = {"fname": f"test_{i}", "dialogue": dialogue(i), "topic1": "restaurant"}
        for k in range(1, with_test_refs + 1):
            r[f"summary{k}"] = f"reference {k} for {i}"
        rows.append(r)
    (folder / "dialogsum.test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_hub_csv(folder):
    for split in ("train", "validation"):
        pd.DataFrame({"id": [f"{split}_{i}" for i in range(5)], "dialogue": [dialogue(i) for i in range(5)],
                      "summary": [f"s{i}" for i in range(5)], "topic": ["t"] * 5}).to_csv(folder / f"{split}.csv", index=False)
    # the hub's test split: each dialogue three times, one reference per row
    rows = [(f"test_{i}_{k}", dialogue(i), f"reference {k} for {i}", "t") for i in range(4) for k in range(1, 4)]
    pd.DataFrame(rows, columns=["id", "dialogue", "summary", "topic"]).to_csv(folder / "test.csv", index=False)


def test_bundled_dialogsum_has_multi_reference_test(monkeypatch):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    splits, source = load_dialogsum(online=False)
    assert "bundled" in source
    assert {k: len(v) for k, v in splits.items()} == {"train": 84, "validation": 16, "test": 30}   # every record
    assert (splits["test"]["references"].str.len() == 3).all()
    assert splits["train"]["dialogue"].str.startswith("#Person1#:").all()


def test_local_jsonl(data_dir):
    write_jsonl(data_dir / "dialogsum")
    splits, source = load_dialogsum(online=False)
    assert "local" in source
    assert len(splits["train"]) == 5 and len(splits["test"]) == 4
    assert splits["test"]["references"].iloc[0] == ["reference 1 for 0", "reference 2 for 0", "reference 3 for 0"]


def test_local_hub_csv_groups_the_repeated_test_dialogues(data_dir):
    write_hub_csv(data_dir / "dialogsum")
    splits, _ = load_dialogsum(online=False)
    assert len(splits["test"]) == 4                  # 12 rows -> 4 distinct dialogues
    assert splits["test"]["references"].str.len().tolist() == [3, 3, 3, 3]


def test_missing_dialogsum_split(data_dir):
    write_jsonl(data_dir / "dialogsum")
    (data_dir / "dialogsum" / "dialogsum.dev.jsonl").unlink()
    with pytest.raises(DataError, match="no DialogSum validation file; expected dialogsum.dev.jsonl.*serves both "
                                        "datasets.*'dialogsum/' subfolder.*online the course then downloads"):
        load_dialogsum(online=False)


def test_course_data_dir_at_the_dialogsum_folder_itself_says_so(data_dir, monkeypatch):
    """Pointing COURSE_DATA_DIR at dialogsum/ (one level too deep) said only that no train file was found."""
    write_jsonl(data_dir / "dialogsum")
    monkeypatch.setenv("COURSE_DATA_DIR", str(data_dir / "dialogsum"))
    with pytest.raises(DataError, match="names the dialogsum folder itself; point it at the folder above it"):
        load_dialogsum(online=True)


def test_dialogsum_wrong_csv_columns(data_dir):
    write_hub_csv(data_dir / "dialogsum")
    pd.DataFrame({"id": [1], "text": ["x"]}).to_csv(data_dir / "dialogsum" / "train.csv", index=False)
    with pytest.raises(DataError, match="wrong columns"):
        load_dialogsum(online=False)


def test_dialogsum_malformed_jsonl(data_dir):
    write_jsonl(data_dir / "dialogsum")
    with open(data_dir / "dialogsum" / "dialogsum.train.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match="line 6: not valid JSON"):
        load_dialogsum(online=False)


def test_dialogsum_missing_key(data_dir):
    write_jsonl(data_dir / "dialogsum", with_test_refs=0)
    with pytest.raises(DataError, match="missing key"):
        load_dialogsum(online=False)


def test_dialogsum_empty_split(data_dir):
    write_jsonl(data_dir / "dialogsum")
    (data_dir / "dialogsum" / "dialogsum.dev.jsonl").write_text("\n")
    with pytest.raises(DataError, match="validation split is empty"):
        load_dialogsum(online=False)


def test_dialogsum_empty_dialogue(data_dir):
    write_jsonl(data_dir / "dialogsum")
    with open(data_dir / "dialogsum" / "dialogsum.train.jsonl", "a") as f:
        f.write(json.dumps({"fname": "x", "dialogue": "  ", "summary": "s", "topic": "t"}) + "\n")
    with pytest.raises(DataError, match="row 6: empty dialogue"):
        load_dialogsum(online=False)


def test_unicode_line_separators_inside_a_line_do_not_split_it(tmp_path, data_dir):
    """str.splitlines() also splits at U+2028, U+0085 and form feeds: a message holding one was cut in two ("found
    no tab"), and a JSONL line written with ensure_ascii=False became "Unterminated string"."""
    path = tmp_path / "SMSSpamCollection"
    write_sms(path, SMS + ["ham\tline one\u2028line two\x0cpage"], encoding="utf-8")
    df = parse_sms_collection(path, verbose=False)
    assert len(df) == len(SMS) + 1 and df["text"].iloc[-1] == "line one\u2028line two\x0cpage"
    write_jsonl(data_dir / "dialogsum")
    train = data_dir / "dialogsum" / "dialogsum.train.jsonl"
    row = {"fname": "train_9", "dialogue": "#Person1#: Hi\u2028there.\n#Person2#: Hello.", "summary": "A greeting."}
    train.write_text(train.read_text() + json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    splits, _ = load_dialogsum(online=False, splits=("train",), verbose=False)
    assert len(splits["train"]) == 6 and "\u2028" in splits["train"]["dialogue"].iloc[-1]
