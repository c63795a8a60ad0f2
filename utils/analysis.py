"""How sure can we be of a difference measured on a few dozen dialogues?

Paired statistics for per-dialogue scores of two systems evaluated on the *same* dialogues:

* :func:`paired_bootstrap`: percentile bootstrap CI of the mean difference (same resampled dialogues
  for both systems, which is what makes it paired);
* :func:`paired_test`: a two-sided paired sign-flip permutation test of the mean difference (default),
  or the Wilcoxon signed-rank test from scipy for comparison;
* :func:`compare_pairs`: both, for every pair of systems and every metric, in one table;
* :func:`ci_width_by_n`: how the interval narrows with the number of evaluated dialogues;
* :func:`length_table`, :func:`copy_fraction`: what the predictions look like (length, copying).

Bad input (unequal lengths, NaN, fewer than two dialogues) raises a ValueError that says what to fix.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import product

import numpy as np
import pandas as pd

from .paths import SEED
from .results import COLAB_DRIVE, PREDICTIONS_DIR_ENV, predictions_dir

_TOKEN = re.compile(r"[a-z0-9]+")
N_BOOT = 2000      # bootstrap resamples: percentile ends stable to ~0.1 point of ROUGE at n = 30-500
N_PERM = 10000     # sign flips for the permutation test: p-values stable to ~0.005 around 0.05


# ----------------------------------------------------------------------------- checks

def _as_scores(x, name: str) -> np.ndarray:
    if isinstance(x, (str, bytes, dict)) or np.isscalar(x):
        raise ValueError(f"{name}: expected one score per dialogue (a list, array or Series of numbers), "
                         f"got a single {type(x).__name__} {repr(x)[:40]}.")
    if isinstance(x, pd.Series):
        x = x.to_numpy(dtype=object) if x.dtype.kind not in "iuf" else x.to_numpy()
    if isinstance(x, np.ndarray) and x.dtype.kind in "iuf":
        values = None                                 # already numeric: checked for NaN/inf below
    elif isinstance(x, np.ndarray) and x.dtype.kind != "O":
        raise ValueError(f"{name}: scores of dtype {x.dtype} ({x[:3].tolist()}...), not numbers: pass the "
                         f"per-dialogue scores (e.g. a column of rouge_per_example).")
    else:
        values = list(x)
    for i, v in enumerate(values or []):
        if v is pd.NA or v is None:
            continue                                  # a missing score: reported below with the NaNs
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name}: score {i} is {type(v).__name__} {repr(v)[:40]}, not a number: pass the "
                             f"per-dialogue scores (e.g. a column of rouge_per_example), not the texts or flags.")
    arr = np.asarray([np.nan if v is pd.NA or v is None else v for v in values] if values is not None else x,
                     dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected one score per dialogue (a 1-D sequence), got shape {arr.shape}.")
    if len(arr) < 2:
        raise ValueError(f"{name}: {len(arr)} score(s); a bootstrap or a test needs at least 2 dialogues.")
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise ValueError(f"{name}: {len(bad)} NaN/inf score(s) (first at position {bad[0]}): a prediction "
                         f"was not scored; fix it upstream instead of dropping it silently.")
    return arr


def check_paired(a, b, names=("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    """Two finite 1-D score arrays of the same length (>= 2): one score per dialogue, same dialogues."""
    a, b = _as_scores(a, names[0]), _as_scores(b, names[1])
    if len(a) != len(b):
        raise ValueError(f"{names[0]} has {len(a)} scores but {names[1]} has {len(b)}: a paired comparison "
                         f"needs both systems scored on the same dialogues, in the same order.")
    return a, b


def _check_ci(ci: float, n_boot: int) -> None:
    if not 0 < ci < 1:
        raise ValueError(f"ci={ci}: a confidence level is a fraction between 0 and 1 (e.g. 0.95).")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: too few resamples for a percentile interval; use 1000 or more.")


# ----------------------------------------------------------------------------- bootstrap

@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""
    estimate: float
    low: float
    high: float
    ci: float = 0.95

    @property
    def width(self) -> float:
        return self.high - self.low

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator, size: int | None = None,
                     chunk: int = 1000) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, ``size`` draws each) of ``x``."""
    size = len(x) if size is None else size
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, len(x), size=(stop - start, size))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def _percentile(means: np.ndarray, estimate: float, ci: float) -> Interval:
    low, high = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
    return Interval(float(estimate), float(low), float(high), ci)


def bootstrap_ci(scores, n_boot: int = N_BOOT, ci: float = 0.95, seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of the mean of one system's per-dialogue scores."""
    x = _as_scores(scores, "scores")
    _check_ci(ci, n_boot)
    return _percentile(_bootstrap_means(x, n_boot, np.random.default_rng(seed)), x.mean(), ci)


def paired_bootstrap(a, b, n_boot: int = N_BOOT, ci: float = 0.95, seed: int = SEED) -> Interval:
    """Interval of mean(b - a): each resample draws dialogue indices with replacement and uses the
    *same* indices for both systems, so a dialogue that is hard for both stays hard for both."""
    a, b = check_paired(a, b, ("baseline scores", "model scores"))
    _check_ci(ci, n_boot)
    d = b - a
    return _percentile(_bootstrap_means(d, n_boot, np.random.default_rng(seed)), d.mean(), ci)


def ci_width_by_n(a, b, sizes, n_boot: int = N_BOOT, ci: float = 0.95, seed: int = SEED) -> pd.DataFrame:
    """Width of the paired interval if ``n`` dialogues like these had been evaluated, for each ``n`` in
    ``sizes`` (resamples of size n drawn from the observed differences; each size draws from a generator seeded
    with ``seed``, so at n = len(a) the width is exactly that of :func:`paired_bootstrap` with the same seed)."""
    a, b = check_paired(a, b, ("baseline scores", "model scores"))
    _check_ci(ci, n_boot)
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 2:
        raise ValueError(f"sizes={sizes}: give sample sizes of at least 2 dialogues.")
    d, rows = b - a, []
    for n in sizes:
        iv = _percentile(_bootstrap_means(d, n_boot, np.random.default_rng(seed), size=n), d.mean(), ci)
        rows.append({"n": n, "low": iv.low, "high": iv.high, "width": iv.width})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- tests

def sign_flip_test(a, b, n_perm: int = N_PERM, seed: int = SEED) -> float:
    """Two-sided paired permutation test of mean(b - a) = 0.

    Under the null hypothesis the two systems are exchangeable on each dialogue, so each difference
    is as likely to have either sign: flip signs at random and count how often the mean difference is
    at least as far from zero as the observed one. Exact (all 2^n sign patterns) when 2^n <= n_perm;
    otherwise Monte Carlo with the +1 correction, so p is never 0."""
    a, b = check_paired(a, b, ("baseline scores", "model scores"))
    if n_perm < 100:
        raise ValueError(f"n_perm={n_perm}: too few permutations; use 1000 or more.")
    d = b - a
    n = len(d)
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, np.abs(d).max())
    if 2 ** n <= n_perm:                               # every sign pattern, exactly once
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
        stats = np.abs(((1 - 2 * bits) * d).mean(axis=1))
        return float((stats >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, 2000):
        signs = rng.choice([-1.0, 1.0], size=(min(2000, n_perm - start), n))
        hits += int((np.abs((signs * d).mean(axis=1)) >= observed - tol).sum())
    return (hits + 1) / (n_perm + 1)


def wilcoxon_test(a, b) -> float:
    """Two-sided Wilcoxon signed-rank test (scipy) on the paired differences; 1.0 when all are zero."""
    from scipy.stats import wilcoxon

    a, b = check_paired(a, b, ("baseline scores", "model scores"))
    if np.all(b - a == 0):
        return 1.0
    return float(wilcoxon(b, a, zero_method="zsplit").pvalue)


def paired_test(a, b, method: str = "permutation", **kwargs) -> float:
    """Two-sided p-value for 'the two systems score the same on average' on paired scores."""
    if method == "permutation":
        return sign_flip_test(a, b, **kwargs)
    if method == "wilcoxon":
        return wilcoxon_test(a, b)
    raise ValueError(f"method={method!r}: choose 'permutation' (sign-flip) or 'wilcoxon'.")


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given): controls the chance of at least one false
    'significant' among all the tests of a table."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or len(p) == 0:
        raise ValueError(f"holm needs a non-empty 1-D list of p-values, got shape {p.shape}.")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must be finite and lie between 0 and 1.")
    m, order = len(p), np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out


def compare_pairs(per_example: dict[str, pd.DataFrame], pairs, metrics, n_boot: int = N_BOOT,
                  ci: float = 0.95, n_perm: int = N_PERM, seed: int = SEED) -> pd.DataFrame:
    """For each (baseline, model) pair and metric: both means, the mean difference with its paired
    bootstrap interval (in points, x 100), the sign-flip p-value and its Holm adjustment over the table.

    ``per_example`` maps a system to a frame with one row per dialogue (same dialogues, same order)."""
    rows = []
    for (base, model), metric in product(pairs, metrics):
        for name in (base, model):
            if name not in per_example:
                raise ValueError(f"no scores for {name!r}; known systems: {sorted(per_example)}")
            if metric not in per_example[name]:
                raise ValueError(f"{name!r} has no {metric!r} column; columns: {list(per_example[name].columns)}")
        a, b = per_example[base][metric].to_numpy(), per_example[model][metric].to_numpy()
        iv = paired_bootstrap(a, b, n_boot, ci, seed)
        rows.append({"baseline": base, "model": model, "metric": metric, "n": len(a),
                     "baseline mean": a.mean(), "model mean": b.mean(), "diff (points)": 100 * iv.estimate,
                     "ci low": 100 * iv.low, "ci high": 100 * iv.high,
                     "p (sign-flip)": sign_flip_test(a, b, n_perm, seed)})
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(table["p (sign-flip)"].to_numpy())
    table["interval excludes 0"] = (table["ci low"] > 0) | (table["ci high"] < 0)
    return table


# ----------------------------------------------------------------------------- what predictions look like

def words(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens, as ``rouge-score`` tokenizes (without stemming)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}: {text!r}")
    return _TOKEN.findall(text.lower())


def copy_fraction(prediction: str, source: str, n: int = 2) -> float:
    """Share of the prediction's n-grams that occur verbatim in ``source`` (the dialogue): 1.0 is pure
    copying, 0.0 fully new wording. NaN when the prediction has fewer than ``n`` words (nothing to count)."""
    if n < 1:
        raise ValueError(f"n={n}: n-grams need n >= 1.")
    p, s = words(prediction), words(source)
    grams = [tuple(p[i:i + n]) for i in range(len(p) - n + 1)]
    if not grams:
        return math.nan
    seen = {tuple(s[i:i + n]) for i in range(len(s) - n + 1)}
    return sum(g in seen for g in grams) / len(grams)


def length_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dialogue: words in the prediction, mean words per reference, their ratio, and the share of the
    prediction's bigrams copied from the dialogue. ``frame`` has prediction, references (list), dialogue."""
    missing = {"prediction", "references", "dialogue"} - set(frame.columns)
    if missing:
        raise ValueError(f"length_table needs column(s) {sorted(missing)}.")
    if bad := [i for i, rs in enumerate(frame["references"]) if isinstance(rs, (str, bytes))]:
        raise ValueError(f"length_table: the references of row {bad[0]} are a single string, not a list of "
                         f"references (its words would be counted as characters); wrap it: [text].")
    pred = frame["prediction"].map(lambda t: len(words(t)))
    ref = frame["references"].map(lambda rs: float(np.mean([len(words(r)) for r in rs])) if len(rs) else math.nan)
    if ref.isna().any():
        raise ValueError("a dialogue has no reference summary: length ratios need at least one.")
    if (ref == 0).any():
        raise ValueError(f"the references of row {int(np.flatnonzero(ref.to_numpy() == 0)[0])} hold no word (only "
                         f"punctuation or spaces): a length ratio needs words. Fix or drop that reference.")
    return pd.DataFrame({"prediction words": pred.to_numpy(), "reference words": ref.to_numpy(),
                         "length ratio": (pred / ref).to_numpy(),
                         "copied bigrams": [copy_fraction(p, d) for p, d in zip(frame["prediction"], frame["dialogue"])]},
                        index=frame.index)


def align_models(predictions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Split a predictions frame (model, id, dialogue, references, prediction) into one frame per model,
    every one on the same dialogues in the same order; an error if the models saw different dialogues."""
    missing = {"model", "id", "dialogue", "references", "prediction"} - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions lack column(s) {sorted(missing)}.")
    if predictions["model"].isna().any():
        raise ValueError(f"{int(predictions['model'].isna().sum())} prediction(s) name no model: re-run the notebook "
                         f"that wrote them.")
    out, order = {}, None
    for name, df in predictions.groupby("model", sort=False):
        if df["id"].duplicated().any():
            raise ValueError(f"model {name!r} has several predictions for dialogue(s) "
                             f"{sorted(df.loc[df['id'].duplicated(), 'id'])[:3]}.")
        if df["prediction"].isna().any():
            raise ValueError(f"model {name!r} has missing predictions: re-run the notebook that wrote them.")
        if order is None:
            order = list(df["id"])             # the first model's order (the dataset's) for everyone
        elif set(df["id"]) != set(order):
            raise ValueError(f"model {name!r} was evaluated on other dialogues than {next(iter(out))!r}: "
                             f"paired comparisons need the same dialogues.")
        out[name] = df.set_index("id").loc[order].reset_index()[list(predictions.columns.drop("model"))]
    if not out:
        raise ValueError("the predictions frame is empty.")
    return out


# ----------------------------------------------------------------------------- how many dialogues

def dialogues_needed(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Dialogues needed for a paired comparison to detect a true mean difference ``delta`` with probability
    ``power`` at two-sided level ``alpha``, when per-dialogue differences have standard deviation ``sd``:
    n = ((z_{1-alpha/2} + z_{power}) sd / delta)^2 (normal approximation). With power = 0.5 this is the
    "half-width below delta" rule (1.96 sd / delta)^2, which misses a real difference of size delta half the time."""
    from scipy.stats import norm

    for name, v in (("sd", sd), ("delta", delta)):
        if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name}={v!r}: a standard deviation and a difference to detect are positive numbers "
                             f"(in the same unit, e.g. ROUGE points).")
    for name, v in (("alpha", alpha), ("power", power)):
        if not 0 < v < 1:
            raise ValueError(f"{name}={v!r}: a probability strictly between 0 and 1 (e.g. alpha=0.05, power=0.8).")
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return int(math.ceil((z * sd / delta) ** 2 - 1e-9))


# ----------------------------------------------------------------------------- degenerate outputs

SPEAKER_TAG = re.compile(r"#(?:Person\d*#?)+|#", re.IGNORECASE)   # DialogSum's #Person1#, runs of them, stray #
DEGENERATE_SHARE = 0.5     # a model whose predictions are degenerate this often is shown apart, never ranked


def degenerate_reason(prediction: str, dialogue: str | None = None) -> str | None:
    """Why a prediction is not a summary at all, or None. Checks, in order:

    * "empty": nothing but white space;
    * "speaker tags only": nothing (or a cut-off fragment) left once #Person1#-style tags and punctuation are
      removed ("#Person1#Person1#Person1#...");
    * "repetition": at least 8 words and fewer than half of its word pairs distinct (a loop);
    * "unrelated to the dialogue": at least 3 words and under 25 % of them found in the dialogue (noise such
      as "QualplasticityBI encouraging$"). A real summary reuses the dialogue's names, objects and verbs."""
    if not isinstance(prediction, str):
        raise ValueError(f"prediction is {type(prediction).__name__} ({prediction!r}), not a string.")
    if not prediction.strip():
        return "empty"
    w = words(SPEAKER_TAG.sub(" ", prediction))
    tag_chars = sum(map(len, SPEAKER_TAG.findall(prediction)))
    if not w or (len(w) < 3 and tag_chars >= 3 * len("".join(w))):          # "#Person#Person#...#Pe"
        return "speaker tags only"
    if len(w) >= 8 and len(set(zip(w, w[1:]))) < 0.5 * (len(w) - 1):
        return "repetition"
    if dialogue is not None and len(w) >= 3:
        known = set(words(SPEAKER_TAG.sub(" ", dialogue)))
        if sum(t in known for t in w) < 0.25 * len(w):
            return "unrelated to the dialogue"
    return None


def degenerate_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model: how many predictions are degenerate and why, the share, and whether the model as a whole is
    degenerate (share >= DEGENERATE_SHARE), with one example. ``frames`` maps a model to its predictions frame
    (prediction, dialogue)."""
    rows = {}
    for name, f in frames.items():
        reasons = [degenerate_reason(p, d) for p, d in zip(f["prediction"], f["dialogue"])]
        flagged = [(r, p) for r, p in zip(reasons, f["prediction"]) if r]
        share = len(flagged) / max(len(reasons), 1)
        rows[name] = {"degenerate": len(flagged), "of": len(reasons), "share": share,
                      "degenerate model": share >= DEGENERATE_SHARE,
                      "reasons": ", ".join(f"{k} {v}" for k, v in pd.Series([r for r, _ in flagged]).value_counts().items()),
                      "example": (flagged[0][1][:60] if flagged else "")}
    return pd.DataFrame(rows).T


# ----------------------------------------------------------------------------- whose predictions are these?

def predictions_folder(env=None):
    """Where notebook 04 reads predictions: the folder ``$COURSE_PREDICTIONS_DIR`` names when set (e.g. a Google
    Drive folder, where notebooks 02 and 03 copied their ``results/*.json`` and ``*.predictions.jsonl``), else the
    course's ``results/``. Returns (folder, chosen by the student?)."""
    from .paths import RESULTS_DIR

    chosen = predictions_dir(env)
    if chosen is None:
        return RESULTS_DIR, False
    folder, value = chosen
    if not folder.is_dir():
        raise FileNotFoundError(f"{PREDICTIONS_DIR_ENV}={value!r}: no such folder ({folder}). Point it at the folder "
                                f"where notebooks 02 and 03 copied their results (they do when the same variable is "
                                f"set while they run; on Colab: mount Drive, e.g. {COLAB_DRIVE}/MyDrive/lora-course-runs), "
                                f"or unset it to read the course's results/.")
    return folder, True


def provenance_note(written: dict[str, dict], profile_name: str, chosen: bool, on_colab: bool) -> str | None:
    """A warning when the predictions analysed are not the student's own: read from the course's ``results/``
    while they were written on another profile than the current one (a fresh Colab clone holds the course's
    committed offline run), or on Colab without COURSE_PREDICTIONS_DIR (each Colab notebook gets its own fresh
    machine and clone, so notebooks 02 and 03 never wrote here). None when nothing needs saying."""
    if chosen:
        return None
    other = {stem: w.get("profile", "?") for stem, w in written.items() if w.get("profile") != profile_name}
    if not other and not on_colab:
        return None
    what = ", ".join(f"{stem[:2]}: profile {p!r}" for stem, p in (other or {s: w.get('profile', '?') for s, w in written.items()}).items())
    return (f"THESE ARE THE COURSE'S PREDICTIONS, NOT YOURS ({what}; this notebook runs on {profile_name!r}). "
            f"results/ holds the run committed with the course{' (on Colab, every notebook gets a fresh copy of it)' if on_colab else ''}. "
            f"To analyse your own: set {PREDICTIONS_DIR_ENV} to one folder (on Colab, on your mounted Drive) in "
            f"notebooks 02, 03 and this one; run 02 and 03 to the end (each copies its results/<notebook>.json and "
            f".predictions.jsonl there), then re-run this notebook.")
