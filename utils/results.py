"""Every notebook writes its key figures to ``results/<notebook-stem>.json``; later notebooks and
instructors read them. Predictions go to ``results/<stem>.predictions.jsonl`` (one row per model and
dialogue)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .paths import RESULTS_DIR


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 6)
    if hasattr(obj, "item"):                 # numpy / torch scalars
        return _clean(obj.item())
    if isinstance(obj, Path):
        return obj.name
    return obj


def save_results(stem: str, results: dict) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{stem}.json"
    path.write_text(json.dumps(_clean(results), indent=2, ensure_ascii=False) + "\n")
    return path


def load_results(stem: str) -> dict:
    path = RESULTS_DIR / f"{stem}.json"
    if not path.exists():
        raise FileNotFoundError(f"results/{stem}.json is missing: run notebooks/{stem}.ipynb first.")
    return json.loads(path.read_text())


PREDICTION_COLUMNS = ["model", "id", "dialogue", "references", "prediction"]


def save_predictions(stem: str, frames: dict[str, pd.DataFrame]) -> Path:
    """``frames`` maps a model name to a frame with id, dialogue, references (list), prediction."""
    rows = []
    for name, df in frames.items():
        missing = set(PREDICTION_COLUMNS[1:]) - set(df.columns)
        if missing:
            raise ValueError(f"predictions of {name!r} lack column(s) {sorted(missing)}")
        rows += [{"model": name, **{c: r[c] for c in PREDICTION_COLUMNS[1:]}} for _, r in df.iterrows()]
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{stem}.predictions.jsonl"
    path.write_text("".join(json.dumps(_clean(r), ensure_ascii=False) + "\n" for r in rows))
    return path


def load_predictions(stem: str) -> pd.DataFrame:
    path = RESULTS_DIR / f"{stem}.predictions.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"results/{path.name} is missing: run notebooks/{stem}.ipynb first "
                                f"(it writes every model's predictions there).")
    df = pd.read_json(path, lines=True)
    missing = set(PREDICTION_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"results/{path.name} lacks column(s) {sorted(missing)}: re-run notebooks/{stem}.ipynb.")
    return df
