"""One style for every figure; each figure says which profile, model and sample size it came from."""
from __future__ import annotations

import matplotlib.pyplot as plt

from .paths import IMG_DIR

STYLE = {"figure.dpi": 100, "savefig.dpi": 120, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "font.size": 10,
         "axes.titlesize": 11, "figure.autolayout": False}
COLORS = {"zero-shot": "#9e9e9e", "base": "#9e9e9e", "full": "#d95f02", "lora": "#1b9e77",
          "qlora": "#7570b3", "train": "#1b9e77", "validation": "#d95f02", "test": "#7570b3"}


def setup_style():
    plt.rcParams.update(STYLE)


def save_figure(fig, name: str, provenance: str):
    """Save to ``img/<name>.png`` with a footnote saying where the numbers came from."""
    if not provenance:
        raise ValueError("a figure needs its provenance (profile, model, sample size)")
    fig.text(0.01, 0.005, provenance, fontsize=7.5, color="#555555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    IMG_DIR.mkdir(exist_ok=True)
    path = IMG_DIR / f"{name}.png"
    from .results import atomic_file

    with atomic_file(path, "wb") as f:              # a kill mid-write leaves the previous figure, not half a PNG
        fig.savefig(f, format="png", bbox_inches="tight")
    return path
