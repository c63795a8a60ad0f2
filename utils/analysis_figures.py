"""Chapter 4's figures: the matplotlib plumbing, kept out of the notebook's cells so that each cell shows one idea.
Every function draws from numbers the notebook computed and returns the figure; the notebook saves it with its
provenance (``utils.plotting.save_figure``). Each title states what the figure shows, computed from the data."""
from __future__ import annotations

import numpy as np

from .paths import SEED
from .plotting import COLORS, plt

MARKERS = {"rouge1": "o", "rouge2": "s", "rougeL": "^", "rougeLsum": "v", "cosine": "D"}


def relative_gains(gains, anchors: dict):
    """Relative against absolute gains on log scales, with the curves of fixed absolute gains and the reference
    lab's ``anchors`` ({metric: (zero-shot, fine-tuned)} in points). Losses cannot be drawn: the table has them."""
    fig, ax = plt.subplots(figsize=(8, 4.6))
    x = np.linspace(0.3, 60, 400)
    for g in (1, 2, 5, 10, 20):
        ax.plot(x, 100 * g / x, color="#c8c8c8", lw=1)
        ax.annotate(f"+{g} points", (60, 100 * g / 60), fontsize=8, color="#777777", va="center")
    for (_, model, key), row in gains.iterrows():
        base = row["score"] - row["abs. gain (points)"] / 100
        if base > 0 and row["rel. gain (%)"] > 0:
            color = COLORS.get(model, "k")               # full hollow: it often lands right under lora
            ax.scatter(100 * base, row["rel. gain (%)"], marker=MARKERS[key], s=45, edgecolors=color,
                       facecolors="none" if model == "full" else color, linewidths=1.4, zorder=3 if model == "full" else 2)
    for k, (b, m) in anchors.items():
        ax.scatter(b, 100 * (m - b) / b, marker="*", s=160, color="#333333", zorder=3)
        ax.annotate(f"{k} +{m - b:.1f}", (b, 100 * (m - b) / b), xytext=(-9, 0), textcoords="offset points",
                    ha="right", va="center", fontsize=8)
    ax.set(xscale="log", yscale="log", xlim=(0.3, 80), ylim=(1, 5000), xlabel="baseline score (F1 × 100, log scale)",
           ylabel="relative gain (%, log scale)", title="The same absolute gain looks huge on a low baseline")
    ax.legend(handles=[plt.Line2D([], [], ls="", marker=MARKERS[k], color="#555555", label=k) for k in MARKERS if k != "cosine"]
              + [plt.Line2D([], [], ls="", marker="o", color=COLORS[m], label=m, mfc="none" if m == "full" else COLORS[m])
                 for m in ("full", "lora", "qlora")]
              + [plt.Line2D([], [], ls="", marker="*", ms=11, color="#333333",
                            label="reference lab (points gained): Flan-T5-base,\nreal DialogSum, mean over references\n"
                                  "(the curves' shape only: not our scoring)")],
              fontsize=8, ncol=2, loc="lower left")
    return fig


def score_spread(scores, studies, focus: str):
    """Every dialogue's score for every model: a box (the middle half) and one dot per dialogue."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    rng = np.random.default_rng(SEED)
    labels = [(stem, m) for stem in studies for m in scores[stem]]
    for k, (stem, m) in enumerate(labels):
        y = 100 * scores[stem][m][focus]
        ax.boxplot(y, positions=[k], widths=0.55, showfliers=False)
        ax.scatter(k + rng.uniform(-0.18, 0.18, len(y)), y, s=12, alpha=0.7, color=COLORS.get(m, "k"))
    ax.set_xticks(range(len(labels)), [f"{s[:2]}\n{m}" for s, m in labels])
    spread = max(scores[s][m][focus].std() for s, m in labels)
    ax.set(ylabel=f"{focus} F1 × 100, one dot per dialogue",
           title=f"Scores spread widely: up to {100 * spread:.0f} points (s.d.) within a model")
    return fig


def sorted_differences(scores, studies, focus: str, main: str):
    """For each pair, the per-dialogue differences (model minus baseline), sorted from the largest win down."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for stem, pairs in studies.items():
        for base, model in pairs:
            d = 100 * (scores[stem][model][focus] - scores[stem][base][focus]).to_numpy()
            ax.plot(np.arange(1, len(d) + 1), np.sort(d)[::-1], marker=".", color=COLORS.get(model, "k"),
                    ls="-" if base in ("zero-shot", "base") else ":", label=f"{stem[:2]}: {model} − {base}")
    ax.axhline(0, color="k", lw=0.8)
    base, model = studies[main][0]
    wins = int((scores[main][model][focus] > scores[main][base][focus]).sum())
    ax.set(xlabel="dialogues, sorted by difference", ylabel=f"{focus} difference (points)",
           title=f"{model} beats {base} on {wins} of {len(scores[main][base])} dialogues (above 0: wins)")
    ax.legend(fontsize=8)
    return fig


def bootstrap_histogram(boot, interval, xlabel: str, color):
    """The bootstrap distribution of a paired difference (in points), its 95 % interval and zero."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.hist(100 * np.asarray(boot), bins=40, color=color, alpha=0.75)
    for v, style in [(interval.low, "--"), (interval.high, "--"), (0, "-")]:
        ax.axvline(100 * v, color="k", ls=style, lw=1)
    ax.set(xlabel=xlabel, ylabel="bootstrap resamples",
           title=f"Paired bootstrap: 95 % of resampled differences lie in [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]")
    return fig


def interval_width(curves: dict, theory, marks):
    """95 % interval width against the number of dialogues, log-log. ``curves``: label -> (n, width in points,
    colour); ``theory``: (n, width, label) of the normal approximation; ``marks``: (n, what that size is) pairs."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for k, (label, (n, width, color)) in enumerate(curves.items()):
        ax.plot(n, width, "o-" if k == 0 else "s-", color=color, label=label)
    ax.plot(theory[0], theory[1], "--", color="#555555", label=theory[2])
    top = max(max(w) for _, w, _ in curves.values())
    for n, what in marks:
        ax.axvline(n, color="#999999", lw=0.8, ls=":")
        ax.annotate(what, (n, top), rotation=90, fontsize=8, va="top", ha="right")
    ax.set(xscale="log", yscale="log", xlabel="dialogues evaluated (log scale)", ylabel="95 % interval width (points, log)",
           title="The interval narrows like 1/√n: 10× the dialogues, ~3× narrower")
    ax.yaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.legend(fontsize=8, loc="lower left")
    return fig


def length_and_copying(lengths: dict, ref_words, focus: str, main_key, lead_key):
    """Each prediction's score against its length (grey band: the middle half of the references' lengths) and
    against the share of its bigrams copied from the dialogue; ``lengths``: (notebook, model) -> per-prediction table."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    band = ax1.axvspan(*np.percentile(ref_words, [25, 75]), color="#dddddd", label="middle 50 % of references")
    markers = {nb: "osD^v"[k % 5] for k, nb in enumerate(dict.fromkeys(nb for nb, _ in lengths))}   # one per study
    for (nb, m), t in lengths.items():
        style = dict(s=14, alpha=0.7, color=COLORS.get(m, "#222222"), marker=markers[nb], label=f"{nb} {m}")
        ax1.scatter(t["prediction words"], 100 * t[focus], **style)
        ax2.scatter(t["copied bigrams"], 100 * t[focus], **style)
    ax1.legend(handles=[band], fontsize=7, loc="upper right")
    mm, ll, model = lengths[main_key], lengths[lead_key], main_key[1]
    ax1.set(xlabel="words in the prediction", ylabel=f"{focus} F1 × 100",
            title=f"{model} writes {mm['length ratio'].median():.0%} of a reference's length (median)")
    ax2.set(xlabel="share of the prediction's bigrams copied from the dialogue", ylabel=f"{focus} F1 × 100",
            title=f"Pure copying ({lead_key[1].split()[0]}) scores {100 * ll[focus].mean():.0f}; {model} {100 * mm[focus].mean():.0f}")
    ax2.legend(fontsize=7, loc="upper left")
    return fig


def meaning_against_overlap(scores, focus: str, main: str, agreement: dict[str, float]):
    """Cosine against ROUGE, one dot per prediction (circles: the ``main`` study's, crosses: the other's).
    ``agreement``: Spearman's rho by "<study> all models" and "<study> <model>"; the title gives the ``main``
    study's pooled rho and its weakest within one model."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for stem, ms in scores.items():
        for m, s in ms.items():
            ax.scatter(100 * s[focus], s["cosine"], s=16, alpha=0.7, color=COLORS.get(m, "k"), label=f"{stem[:2]} {m}",
                       marker="o" if stem == main else "x")
    within = {m: agreement[f"{main[:2]} {m}"] for m in scores[main]
              if not np.isnan(agreement.get(f"{main[:2]} {m}", np.nan))}           # nan: a constant column
    weakest = min(within, key=within.get) if within else None
    ax.set(xlabel=f"{focus} F1 × 100", ylabel="cosine similarity (all-MiniLM-L6-v2)",
           title=f"Meaning against word overlap: notebook {main[:2]}'s models (circles) ρ = "
                 f"{agreement[f'{main[:2]} all models']:.2f} pooled"
                 + (f", {within[weakest]:.2f} within {weakest}" if weakest else "")
                 + f"\n(Spearman, {len(next(iter(scores[main].values())))} dialogues each; crosses: the other notebook's)")
    ax.legend(fontsize=8)
    return fig


def gains_with_intervals(final, metrics):
    """Every comparison's gain per metric with its paired 95 % interval (``final``: one row per comparison and metric)."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    comparisons = list(dict.fromkeys(final["comparison"]))
    for i, comp in enumerate(comparisons):
        for j, metric in enumerate(metrics):
            r = final[(final["comparison"] == comp) & (final["metric"] == metric)].iloc[0]
            d, color = r["diff (points)"], COLORS.get(r["model"], "k")
            resolved = r["interval excludes 0"] and r["p (Holm)"] < 0.05
            ax.errorbar(d, i + (j - 2) * 0.14, xerr=[[d - r["ci low"]], [r["ci high"] - d]], fmt=MARKERS.get(metric, "D"),
                        color=color, mfc=color if resolved else "white", capsize=2, ms=5)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(comparisons)), comparisons)
    ax.set(xlabel="gain in points (F1 × 100; cosine × 100), paired 95 % interval",
           title="What each technique gained, and how sure we are\n(filled: resolved, interval without 0 and Holm p < 0.05; "
                 "hollow: not)")
    ax.legend(handles=[plt.Line2D([], [], ls="", marker=MARKERS[k], color="#555555", label=k) for k in metrics],
              fontsize=8)
    return fig
