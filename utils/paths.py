"""Where things live. Paths printed in notebooks are shown relative to the repository root."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"
IMG_DIR = ROOT / "img"
RESULTS_DIR = ROOT / "results"
# Converted checkpoints, downloads and trained adapters: outside git, reused between runs.
# COURSE_CACHE_DIR: ~ expanded, a relative path read from the course root (as COURSE_DATA_DIR), wherever a notebook runs
CACHE_DIR = ROOT / Path(os.environ.get("COURSE_CACHE_DIR", "").strip() or ".cache").expanduser()
SEED = 42


def show(path: os.PathLike | str) -> str:
    """A path as a reader may see it: relative to the course root, $COURSE_DATA_DIR or the cache."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        pass
    data_dir = os.environ.get("COURSE_DATA_DIR", "").strip()
    if data_dir:
        d = Path(data_dir).expanduser()
        d = d if d.is_absolute() else ROOT / d           # as utils.data reads it: from the course root
        try:
            return "$COURSE_DATA_DIR/" + str(p.resolve().relative_to(d.resolve()))
        except ValueError:
            pass
    try:
        return "$COURSE_CACHE_DIR/" + str(p.resolve().relative_to(CACHE_DIR.resolve()))
    except ValueError:
        return str(p.resolve())                          # elsewhere: the whole path, so the reader can find it
