"""ROUGE without the network: Google's ``rouge-score`` package (``evaluate.load("rouge")`` would
fetch its script from the hub). Multi-reference: each prediction gets, per ROUGE variant, the best
F1 over its references, as ``rouge_score``'s ``score_multi`` defines it."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import pandas as pd

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z#\"'(])")


def split_sentences(text: str) -> str:
    """One sentence per line: ROUGE-Lsum computes the LCS sentence by sentence on newlines.
    (NLTK's splitter would need a download; summaries here are short and regular.)"""
    return "\n".join(s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip())


def _as_reference_lists(references) -> list[list[str]]:
    out = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs) if refs is not None else []
        refs = [r for r in refs if isinstance(r, str) and r.strip()]
        if not refs:
            raise ValueError(f"example {i} has no reference summary: every prediction needs at least one.")
        out.append(refs)
    return out


def rouge_per_example(predictions: Sequence[str], references, use_stemmer: bool = True) -> pd.DataFrame:
    """F1 of ROUGE-1/2/L/Lsum for each example (best over its references), one row per example.

    An empty prediction is a real outcome (a model that generates nothing) and scores 0; a missing
    reference, an empty list or lists of different lengths are errors."""
    from rouge_score import rouge_scorer

    predictions, references = list(predictions), list(references)
    if not predictions:
        raise ValueError("no predictions to score: the list is empty.")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference entries: "
                         f"they must pair one to one.")
    if any(p is None or (isinstance(p, float) and math.isnan(p)) for p in predictions):
        raise ValueError("a prediction is None/NaN: generation failed upstream; fix it before scoring.")
    refs = _as_reference_lists(references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)
    rows = []
    for pred, rs in zip(predictions, refs):
        scores = scorer.score_multi([split_sentences(r) for r in rs], split_sentences(str(pred)))
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
    rows = {}
    for name, s in scores.items():
        for k in ROUGE_KEYS:
            rows[(name, k)] = {"score": s[k], "abs. gain (points)": 100 * (s[k] - base[k]),
                               "rel. gain (%)": 100 * (s[k] - base[k]) / base[k] if base[k] else float("nan")}
    return pd.DataFrame(rows).T
