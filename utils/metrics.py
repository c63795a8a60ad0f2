"""ROUGE without the network: Google's ``rouge-score`` package (``evaluate.load("rouge")`` would
fetch its script from the hub). Multi-reference: each prediction gets, per ROUGE variant, the best
F1 over its references, as ``rouge_score``'s ``score_multi`` defines it."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# A sentence ends at . ! or ? before whitespace and a capital (or #Person1#, a quote, a bracket), except after a
# title: DialogSum's summaries are full of "Mr. Dawson", which is not two sentences.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bProf\.)\s+(?=[A-Z#\"'(])")


def split_sentences(text: str) -> str:
    """One sentence per line: ROUGE-Lsum computes the LCS sentence by sentence on newlines.
    (NLTK's splitter, the usual one, would need a download; summaries here are short and regular.)"""
    return "\n".join(s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip())


def _kind(x) -> str:
    return f"{type(x).__name__} {repr(x)[:40]}"


def _as_list(items, what: str) -> list:
    if isinstance(items, Mapping):
        raise ValueError(f"{what} is a {type(items).__name__}, not a list: a dict would be scored by its keys. Pass "
                         f"one entry per example, in order (e.g. list(d.values())).")
    if isinstance(items, (str, bytes)):
        raise ValueError(f"{what} is a single {type(items).__name__}, not a list of them: pass [text] for one "
                         f"example (a string would be scored character by character).")
    try:
        return list(items)
    except TypeError:
        raise ValueError(f"{what} must be a list (one entry per example), got {_kind(items)}.") from None


def _as_predictions(predictions) -> list[str]:
    preds = _as_list(predictions, "predictions")
    for i, p in enumerate(preds):
        if isinstance(p, str):
            continue
        if p is None or p is pd.NA or (isinstance(p, (float, np.floating)) and math.isnan(p)):
            raise ValueError(f"prediction {i} is missing (None/NaN: {_kind(p)}): generation failed upstream; fix it "
                             f"before scoring (an empty string is a valid, zero-scoring prediction).")
        hint = " Decode it first (.decode('utf-8'))." if isinstance(p, bytes) else \
            " Decode token ids with the tokenizer first." if isinstance(p, (list, tuple, np.ndarray)) else ""
        raise ValueError(f"prediction {i} is {_kind(p)}, not a string: ROUGE scores text.{hint}")
    return preds


def _as_reference_lists(references) -> list[list[str]]:
    out = []
    for i, refs in enumerate(_as_list(references, "references")):
        if isinstance(refs, str):
            refs = [refs]
        elif isinstance(refs, (list, tuple, np.ndarray, pd.Series)):
            refs = list(refs)
        elif refs is None or refs is pd.NA or (isinstance(refs, (float, np.floating)) and math.isnan(refs)):
            refs = []
        else:
            raise ValueError(f"references of example {i} are {_kind(refs)}: give a string or a list of strings.")
        for r in refs:
            if not isinstance(r, str):
                raise ValueError(f"a reference of example {i} is {_kind(r)}, not a string: fix the data it "
                                 f"came from (every reference summary is text).")
        refs = [r for r in refs if r.strip()]
        if not refs:
            raise ValueError(f"example {i} has no reference summary: every prediction needs at least one.")
        out.append(refs)
    return out


def rouge_per_example(predictions: Sequence[str], references, use_stemmer: bool = True) -> pd.DataFrame:
    """F1 of ROUGE-1/2/L/Lsum for each example (best over its references), one row per example.

    An empty prediction is a real outcome (a model that generates nothing) and scores 0; a missing
    prediction (None, NaN, pd.NA), anything that is not a string, a missing reference, an empty list,
    a single string given as the list, or lists of different lengths are errors."""
    from rouge_score import rouge_scorer

    predictions = _as_predictions(predictions)
    references = _as_list(references, "references")
    if not predictions:
        raise ValueError("no predictions to score: the list is empty.")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference entries: "
                         f"they must pair one to one.")
    refs = _as_reference_lists(references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)
    rows = []
    for pred, rs in zip(predictions, refs):
        scores = scorer.score_multi([split_sentences(r) for r in rs], split_sentences(pred))
        rows.append({k: scores[k].fmeasure for k in ROUGE_KEYS})
    return pd.DataFrame(rows)


def rouge(predictions: Sequence[str], references, use_stemmer: bool = True) -> dict[str, float]:
    """Mean F1 per ROUGE variant over the examples."""
    return rouge_per_example(predictions, references, use_stemmer).mean().to_dict()


def compare(scores: dict[str, dict[str, float]], baseline: str) -> pd.DataFrame:
    """Absolute scores, absolute gain over ``baseline`` (points of F1 x 100) and relative gain (%)."""
    if baseline not in scores:
        raise ValueError(f"baseline {baseline!r} is not among {list(scores)}")
    base = scores[baseline]
    if missing := {name: [k for k in ROUGE_KEYS if k not in s] for name, s in scores.items() if set(ROUGE_KEYS) - set(s)}:
        raise ValueError(f"compare needs every ROUGE variant {list(ROUGE_KEYS)} for every model (utils.metrics.rouge "
                         f"gives them); missing: {missing}.")
    rows = {}
    for name, s in scores.items():
        for k in ROUGE_KEYS:
            rows[(name, k)] = {"score": s[k], "abs. gain (points)": 100 * (s[k] - base[k]),
                               "rel. gain (%)": 100 * (s[k] - base[k]) / base[k] if base[k] else float("nan")}
    return pd.DataFrame(rows).T
