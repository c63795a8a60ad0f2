import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from utils.analysis import (DEGENERATE_SHARE, align_models, bootstrap_ci, ci_width_by_n, compare_pairs, copy_fraction,
                            degenerate_reason, degenerate_table, dialogues_needed, holm, length_table,
                            paired_bootstrap, paired_test, sign_flip_test, words)


def _pair(n=30, shift=0.02, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.1, 0.6, n)                 # dialogues differ a lot in difficulty ...
    return a, a + shift + rng.normal(0, noise, n)  # ... the model gains a little on each


def test_paired_bootstrap_equals_the_textbook_resampling():
    a, b = _pair()
    iv = paired_bootstrap(a, b, n_boot=3000, seed=7)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, len(a), size=(3000, len(a)))
    means = b[idx].mean(axis=1) - a[idx].mean(axis=1)   # same indices for both systems
    assert math.isclose(iv.estimate, (b - a).mean())
    assert np.allclose([iv.low, iv.high], np.quantile(means, [0.025, 0.975]))
    assert paired_bootstrap(a, b, n_boot=3000, seed=7) == iv          # seeded: reproducible


def test_constant_difference_has_a_zero_width_interval():
    a = np.linspace(0, 0.5, 20)
    iv = paired_bootstrap(a, a + 0.05)
    assert math.isclose(iv.low, 0.05) and math.isclose(iv.high, 0.05) and iv.width < 1e-12


def test_pairing_removes_dialogue_difficulty():
    a, b = _pair(shift=0.02, noise=0.01)
    paired = paired_bootstrap(a, b)
    ia, ib = bootstrap_ci(a), bootstrap_ci(b)
    assert paired.excludes_zero() and paired.low > 0
    assert ia.high > ib.low                      # the two separate intervals overlap ...
    assert paired.width < 0.25 * ia.width        # ... the paired one is far narrower


def test_interval_coverage_is_close_to_95_percent():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        a = rng.normal(0.3, 0.1, 40)
        b = a + rng.normal(0.01, 0.05, 40)       # true mean difference 0.01
        iv = paired_bootstrap(a, b, n_boot=1000, seed=int(rng.integers(1 << 30)))
        covered += iv.low <= 0.01 <= iv.high
    assert 0.88 <= covered / 200 <= 0.99


def test_ci_width_shrinks_like_one_over_sqrt_n():
    a, b = _pair(noise=0.05)
    table = ci_width_by_n(a, b, [25, 100, 400], n_boot=4000)
    w = table.set_index("n")["width"]
    assert w[25] > w[100] > w[400]
    assert 0.2 < w[400] / w[25] < 0.3           # sqrt(25 / 400) = 0.25


def test_ci_width_at_the_observed_n_is_the_paired_interval():
    """At n = len(a) the table gives the width of the interval printed beside it (same seed, same draws); it once
    drew every size from one shared generator, and notebook 04 showed 7.48 beside an interval 7.32 wide."""
    a, b = _pair(noise=0.05)
    n = len(a)
    width = ci_width_by_n(a, b, [n // 2, n, 2 * n], n_boot=2000, seed=7).set_index("n")["width"][n]
    assert width == paired_bootstrap(a, b, n_boot=2000, seed=7).width


def test_sign_flip_is_exact_on_small_samples():
    # d = 1, 2, 3: of the 8 sign patterns, only +++ and --- reach |mean| = 2  ->  p = 2 / 8
    assert sign_flip_test([0, 0, 0], [1, 2, 3]) == 0.25
    assert sign_flip_test([0.3, 0.2], [0.3, 0.2]) == 1.0  # no difference at all
    assert paired_test([0.1] * 5, [0.1] * 5, method="wilcoxon") == 1.0


def test_monte_carlo_agrees_with_exact_enumeration():
    a, b = _pair(n=13, shift=0.004, noise=0.01, seed=3)
    exact = sign_flip_test(a, b, n_perm=10000)              # 2^13 = 8192 patterns: exact
    approx = sign_flip_test(a, b, n_perm=2000, seed=5)       # Monte Carlo
    assert 0.02 < exact < 0.98 and abs(exact - approx) < 0.04


def test_tests_see_a_consistent_gain_and_not_noise():
    a, b = _pair(shift=0.02, noise=0.01)
    assert paired_test(a, b) < 0.001 and paired_test(a, b, method="wilcoxon") < 0.001
    assert paired_test(a, b, method="wilcoxon") == wilcoxon(b, a, zero_method="zsplit").pvalue
    rng = np.random.default_rng(2)
    null_p = [sign_flip_test(x, x + rng.normal(0, 0.05, 30), n_perm=1000, seed=i)
              for i, x in enumerate(rng.uniform(0, 1, (200, 30)))]
    assert 0.02 < np.mean(np.array(null_p) < 0.05) < 0.09    # ~5 % false alarms under the null


def test_holm_adjustment():
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert np.allclose(holm([0.5]), [0.5])
    with pytest.raises(ValueError, match="between 0 and 1"):
        holm([0.2, 1.5])


def test_compare_pairs_table():
    a, b = _pair()
    scores = {"base": pd.DataFrame({"rouge1": a}), "lora": pd.DataFrame({"rouge1": b})}
    t = compare_pairs(scores, [("base", "lora")], ["rouge1"], n_boot=1000)
    row = t.iloc[0]
    assert math.isclose(row["diff (points)"], 100 * (b.mean() - a.mean()))
    assert row["ci low"] < row["diff (points)"] < row["ci high"] and row["interval excludes 0"]
    assert row["n"] == 30 and row["p (Holm)"] == row["p (sign-flip)"]
    with pytest.raises(ValueError, match="no scores for 'qlora'"):
        compare_pairs(scores, [("base", "qlora")], ["rouge1"])
    with pytest.raises(ValueError, match="no 'rouge2' column"):
        compare_pairs(scores, [("base", "lora")], ["rouge2"])


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="30 scores but .* has 29"):
        paired_bootstrap(np.zeros(30), np.zeros(29))
    with pytest.raises(ValueError, match="NaN/inf score.*position 2"):
        paired_bootstrap([0.1, 0.2, float("nan")], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 2 dialogues"):
        sign_flip_test([0.1], [0.2])
    with pytest.raises(ValueError, match="NaN"):
        paired_test([0.1, float("nan")], [0.1, 0.2], method="wilcoxon")
    with pytest.raises(ValueError, match="ci=95"):
        paired_bootstrap([0.1, 0.2], [0.2, 0.3], ci=95)
    with pytest.raises(ValueError, match="choose 'permutation'"):
        paired_test([0.1, 0.2], [0.2, 0.3], method="t-test")
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci(np.zeros((3, 2)))


def test_copying_and_lengths():
    dialogue = "#Person1#: I want to book a table for two at eight."
    assert copy_fraction("I want to book a table", dialogue) == 1.0
    assert copy_fraction("Reservation requested tonight", dialogue) == 0.0
    assert copy_fraction("table two", dialogue) == 0.0 and math.isnan(copy_fraction("hello", dialogue))
    assert words("#Person1#'s table, 8 pm") == ["person1", "s", "table", "8", "pm"]
    frame = pd.DataFrame({"prediction": ["a b c d", ""], "dialogue": ["a b c", "x"],
                          "references": [["a b", "a b c d e f"], ["x y"]]})
    t = length_table(frame)
    assert list(t["prediction words"]) == [4, 0] and list(t["reference words"]) == [4.0, 2.0]
    assert list(t["length ratio"]) == [1.0, 0.0]
    assert math.isclose(t["copied bigrams"][0], 2 / 3) and math.isnan(t["copied bigrams"][1])
    with pytest.raises(ValueError, match="no reference"):
        length_table(frame.assign(references=[["a"], []]))
    with pytest.raises(ValueError, match="references of row 1 hold no word"):      # once a ratio of inf
        length_table(frame.assign(references=[["a"], ["...", " "]]))


def test_align_models():
    rows = [("base", "d2", "p"), ("base", "d1", "p"), ("lora", "d1", "q1"), ("lora", "d2", "q2")]
    df = pd.DataFrame([{"model": m, "id": i, "dialogue": "x", "references": ["r"], "prediction": p} for m, i, p in rows])
    out = align_models(df)
    assert list(out) == ["base", "lora"] and list(out["lora"]["id"]) == ["d2", "d1"]
    assert list(out["lora"]["prediction"]) == ["q2", "q1"]
    with pytest.raises(ValueError, match="other dialogues"):
        align_models(df[df["id"].ne("d1") | df["model"].eq("base")])
    with pytest.raises(ValueError, match="several predictions"):
        align_models(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(ValueError, match="1 prediction.s. name no model"):           # groupby once dropped them
        align_models(df.assign(model=["base", "base", None, "lora"]))


# ----------------------------------------------------------------------------- how many dialogues, degenerate outputs

def test_dialogues_needed_has_80_percent_power():
    assert dialogues_needed(10, 1) == 785                         # ((1.96 + 0.8416) x 10 / 1)^2 = 784.9
    assert dialogues_needed(10, 1, power=0.5) == 385              # the old (1.96 s / delta)^2 rule: 384.1
    assert dialogues_needed(10, 2) == math.ceil(784.89 / 4)
    # simulated: with n from the rule, a paired t-style z test at 5 % detects delta about 80 % of the time
    rng = np.random.default_rng(0)
    n = dialogues_needed(10, 2)
    d = rng.normal(2, 10, size=(4000, n))
    z = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(n))
    assert 0.77 < (np.abs(z) > 1.96).mean() < 0.83
    for bad in (dict(sd=0, delta=1), dict(sd=1, delta=-1), dict(sd=1, delta=1, power=1.0), dict(sd=1, delta=1, alpha=0)):
        with pytest.raises(ValueError, match="positive numbers|strictly between"):
            dialogues_needed(**bad)


DIALOGUE = "#Person1#: Could you sign this form for the school trip? #Person2#: Sure, how much does it cost? #Person1#: 15 pounds."


@pytest.mark.parametrize("prediction, reason", [
    ("", "empty"), ("   ", "empty"),
    ("#Person1#Person1#Person1#Person1#Person1#", "speaker tags only"),
    ("#Person#Person#Person#Person#Person#Pe", "speaker tags only"),
    ("the trip the trip the trip the trip the trip", "repetition"),
    ("QualplasticityBI encouraging$, Confucianorestation UVB stric", "unrelated to the dialogue"),
    ("#Person1# asks #Person2# to sign a form for the school trip, which costs 15 pounds.", None),
    ("#Person2# signs.", None),
])
def test_degenerate_reason(prediction, reason):
    assert degenerate_reason(prediction, DIALOGUE) == reason


def test_no_real_summary_is_flagged_degenerate():
    """Every reference summary of the bundled DialogSum sample (written like real ones) passes."""
    from utils.data import load_dialogsum
    data, _ = load_dialogsum(online=False, verbose=False)
    flagged = [(r, degenerate_reason(r, d)) for df in data.values() for refs, d in zip(df["references"], df["dialogue"])
               for r in refs if degenerate_reason(r, d)]
    assert flagged == []


def test_degenerate_table_marks_whole_models():
    frames = {"loops": pd.DataFrame({"prediction": ["#Person1#Person1#Person1#"] * 3 + ["#Person2# signs the form."],
                                     "dialogue": [DIALOGUE] * 4}),
              "fine": pd.DataFrame({"prediction": ["#Person2# signs the form for the trip."] * 4, "dialogue": [DIALOGUE] * 4})}
    t = degenerate_table(frames)
    assert t.loc["loops", "degenerate"] == 3 and t.loc["loops", "share"] == 0.75 >= DEGENERATE_SHARE
    assert bool(t.loc["loops", "degenerate model"]) and not bool(t.loc["fine", "degenerate model"])
    assert t.loc["loops", "reasons"] == "speaker tags only 3"
    with pytest.raises(ValueError, match="not a string"):
        degenerate_reason(None)


def test_predictions_folder_and_whose_predictions(tmp_path):
    """Issue 12, defect 2: on Colab, notebook 04 silently analysed the course's committed predictions."""
    from utils.analysis import predictions_folder, provenance_note
    from utils.paths import RESULTS_DIR
    assert predictions_folder({}) == (RESULTS_DIR, False)
    assert predictions_folder({"COURSE_PREDICTIONS_DIR": str(tmp_path)}) == (tmp_path, True)
    with pytest.raises(FileNotFoundError, match="COURSE_PREDICTIONS_DIR='/nowhere'"):
        predictions_folder({"COURSE_PREDICTIONS_DIR": "/nowhere"})
    written = {"02_x": {"profile": "smoke"}, "03_y": {"profile": "smoke"}}
    assert provenance_note(written, "smoke", chosen=False, on_colab=False) is None          # CI: the run it just made
    note = provenance_note(written, "colab", chosen=False, on_colab=True)
    assert "NOT YOURS" in note and "'smoke'" in note and "COURSE_PREDICTIONS_DIR" in note
    assert "NOT YOURS" in provenance_note(written, "smoke", chosen=False, on_colab=True)  # Colab CPU: fresh clone
    assert provenance_note(written, "colab", chosen=True, on_colab=True) is None          # the student's folder


def test_figure_titles_state_what_the_data_show():
    """Chapter 4's figure titles are computed from the numbers drawn: a title can't go stale when the run changes."""
    import matplotlib
    matplotlib.use("Agg")
    from utils import analysis_figures as figs
    from utils.analysis import Interval

    base = pd.DataFrame({"rougeL": [0.1, 0.2, 0.3, 0.4, 0.5]})
    model = pd.DataFrame({"rougeL": [0.3, 0.1, 0.6, 0.5, 0.5]})          # better on 3, worse on 1, tied on 1
    scores, studies = {"03_x": {"base": base, "qlora": model}}, {"03_x": [("base", "qlora")]}
    title = lambda fig: fig.axes[0].get_title()                         # noqa: E731
    assert title(figs.sorted_differences(scores, studies, "rougeL", "03_x")) == \
        "qlora beats base on 3 of 5 dialogues (above 0: wins)"
    spread = 100 * max(base["rougeL"].std(), model["rougeL"].std())
    assert title(figs.score_spread(scores, studies, "rougeL")) == \
        f"Scores spread widely: up to {spread:.0f} points (s.d.) within a model"
    assert title(figs.bootstrap_histogram(np.zeros(10), Interval(0.01, -0.02, 0.05), "x", "k")) == \
        "Paired bootstrap: 95 % of resampled differences lie in [-2.0, +5.0]"
    rho_title = title(figs.meaning_against_overlap({"03_x": {m: s.assign(cosine=0.5) for m, s in scores["03_x"].items()}},
                                                   "rougeL", "03_x",
                                                   {"03 all models": 0.4567, "03 base": 0.9, "03 qlora": 0.2,
                                                    "02 all models": 0.1}))
    assert rho_title == ("Meaning against word overlap: notebook 03's models (circles) ρ = 0.46 pooled, 0.20 within qlora"
                         f"\n(Spearman, {len(base)} dialogues each; crosses: the other notebook's)")
    matplotlib.pyplot.close("all")
