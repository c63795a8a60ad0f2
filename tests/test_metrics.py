import math

import pytest

from utils.metrics import compare, rouge, rouge_per_example, split_sentences


def test_identical_texts_score_one():
    s = rouge(["#Person1# books a table for two."], ["#Person1# books a table for two."])
    assert s == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0})


def test_multi_reference_takes_the_best_reference():
    pred = "the cat sat on the mat"
    single_bad = rouge_per_example([pred], [["a dog ran in the park"]]).iloc[0]
    multi = rouge_per_example([pred], [["a dog ran in the park", "the cat sat on the mat"]]).iloc[0]
    assert multi["rouge1"] == 1.0 and single_bad["rouge1"] < multi["rouge1"]


def test_stemming_matches_inflections():
    with_stem = rouge(["he books tables"], ["he booked table"], use_stemmer=True)["rouge1"]
    without = rouge(["he books tables"], ["he booked table"], use_stemmer=False)["rouge1"]
    assert with_stem > without


def test_lsum_uses_sentence_splits():
    assert split_sentences("#Person1# calls. #Person2# answers!") == "#Person1# calls.\n#Person2# answers!"
    # a title is not a sentence end (it once split "Mr. Dawson" in two, as NLTK's splitter does not)
    assert split_sentences("#Person1# tells Mr. Dawson. Mrs. Li and Dr. Wu agree.") == \
        "#Person1# tells Mr. Dawson.\nMrs. Li and Dr. Wu agree."
    pred, ref = "B c. A b.", "A b. B c."
    s = rouge([pred], [ref])
    assert s["rougeLsum"] > s["rougeL"]     # the sentence-level LCS recovers the swapped order


def test_empty_prediction_scores_zero():
    assert rouge([""], ["a reference"])["rouge1"] == 0.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="no predictions"):
        rouge([], [])
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="example 1 has no reference"):
        rouge(["a", "b"], ["a", ""])
    with pytest.raises(ValueError, match="example 0 has no reference"):
        rouge(["a"], [[]])
    with pytest.raises(ValueError, match="None/NaN"):
        rouge([None], ["a"])


def test_compare_absolute_and_relative():
    table = compare({"base": {"rouge1": 0.2, "rouge2": 0.05, "rougeL": 0.1, "rougeLsum": 0.1},
                     "lora": {"rouge1": 0.3, "rouge2": 0.10, "rougeL": 0.1, "rougeLsum": 0.1}}, "base")
    assert math.isclose(table.loc[("lora", "rouge2"), "abs. gain (points)"], 5.0)
    assert math.isclose(table.loc[("lora", "rouge2"), "rel. gain (%)"], 100.0)
    with pytest.raises(ValueError, match="baseline"):
        compare({"a": {}}, "b")


def test_rouge_is_the_mean_over_examples():
    """Hand-derived: ROUGE-1 F1 of "the cat sat" against "the cat" is 2 (2/3)(1) / (2/3 + 1) = 0.8; "a dog" against
    "a dog" is 1. Every other test scores one example, so a rouge() that returned the first or the best would pass."""
    two = rouge(["the cat sat", "a dog"], ["the cat", "a dog"], use_stemmer=False)
    assert two["rouge1"] == pytest.approx(0.9)
    assert rouge(["a dog", "the cat sat"], ["a dog", "the cat"], use_stemmer=False)["rouge1"] == pytest.approx(0.9)


def test_relative_gain_over_a_zero_baseline_is_undefined():
    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    table = compare({"base": dict.fromkeys(keys, 0.0), "tuned": dict.fromkeys(keys, 0.2)}, baseline="base")
    assert table.loc[("tuned", "rouge2"), "abs. gain (points)"] == pytest.approx(20.0)
    assert math.isnan(table.loc[("tuned", "rouge2"), "rel. gain (%)"])     # not 0 %, not infinity printed as a number
