"""utils.mistakes: the faulty collators and formats of notebook 06 do exactly the mistake they claim, and the
measurements work on a tiny model."""
from __future__ import annotations

import pytest
import torch

from utils import mistakes
from utils.prompts import IGNORE_INDEX, build_chat_example
from utils.qlora import PadCollator

DIALOGUES = ["#Person1#: Hi, how are you?\n#Person2#: Fine, thanks. And you?",
             "#Person1#: Where is the station?\n#Person2#: Two blocks north, next to the bank. You can't miss it."]
SUMMARIES = ["They greet each other.", "#Person2# tells #Person1# the way to the station."]


@pytest.fixture(scope="module")
def tokenizer():
    from utils.models import offline_tokenizer
    return offline_tokenizer()


@pytest.fixture(scope="module")
def examples(tokenizer):
    return [build_chat_example(tokenizer, d, s, 128) for d, s in zip(DIALOGUES, SUMMARIES)]


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_every_profile_has_sizes_and_course_override_shrinks_them():
    from utils.profiles import PROFILES, apply_overrides
    for p in PROFILES.values():
        assert p.mistakes.steps > 0
    shrunk = apply_overrides(PROFILES["colab"], "mistakes.steps=2,mistakes.train=4")
    assert (shrunk.mistakes.steps, shrunk.mistakes.train) == (2, 4)
    assert shrunk.mistakes.heldout == PROFILES["colab"].mistakes.heldout


def test_loss_on_prompt_labels_every_token(examples):
    wrong = mistakes.loss_on_prompt(examples)
    for right, bad in zip(examples, wrong):
        assert bad["labels"] == bad["input_ids"] == right["input_ids"]
        prompt = right["labels"].count(IGNORE_INDEX)
        assert prompt > 0 and all(lab != IGNORE_INDEX for lab in bad["labels"][:prompt])   # the prompt now counts
        assert right["labels"][:prompt] == [IGNORE_INDEX] * prompt                           # the input is not changed


def test_eos_as_pad_masks_the_end_token(tokenizer, examples):
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos                       # SmolLM2: the padding token is the end token
    right, wrong = PadCollator(eos)(examples), mistakes.EosAsPadCollator(eos)(examples)
    assert torch.equal(right["input_ids"], wrong["input_ids"])
    assert mistakes.labelled_share(right, eos)[0] == len(examples)     # each answer's end token carries a label
    assert mistakes.labelled_share(wrong, eos)[0] == 0                  # ... masked by the pad-id recipe
    # only end tokens lost their label: every other labelled token is the same
    other = right["input_ids"] != eos
    assert torch.equal(right["labels"][other], wrong["labels"][other])


def test_formats_label_the_same_summary_tokens(tokenizer):
    ex = [mistakes.formatted_example(tokenizer, DIALOGUES[1], SUMMARIES[1], f) for f in mistakes.FORMATS]
    answers = [[lab for lab in e["labels"] if lab != IGNORE_INDEX] for e in ex]
    assert answers[0] == answers[1] == answers[2] == tokenizer(SUMMARIES[1], add_special_tokens=False)["input_ids"]
    assert "<|im_start|>assistant" in tokenizer.decode(ex[0]["input_ids"])
    assert "<|im_start|>" not in tokenizer.decode(ex[1]["input_ids"])
    with pytest.raises(ValueError, match="format 'no such format': choose one of .*its own chat template"):
        mistakes.formatted_example(tokenizer, DIALOGUES[0], SUMMARIES[0], "no such format")


def test_frozen_base_mistake_changes_the_trainable_count_exactly(tiny_model):
    from peft import LoraConfig, get_peft_model

    from utils.memory import count_parameters
    from utils.planner import lora_parameter_count, parameter_count
    peft_model = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=list(mistakes.QKVO)))
    lora = lora_parameter_count(tiny_model.config, 4, mistakes.QKVO)
    assert count_parameters(peft_model)[0] == lora
    peft_model.requires_grad_(True)                             # the mistake
    assert count_parameters(peft_model)[0] == parameter_count(tiny_model.config) + lora
    peft_model.unload()


def test_lora_run_and_measurements(tiny_model, tokenizer, examples):
    from utils.ablation import fixed_batches
    collate = PadCollator(tokenizer.pad_token_id)
    batches = fixed_batches(examples, 2, 2, collate)
    peft_model, out = mistakes.lora_run(tiny_model, batches, examples, collate, lr=1e-3, r=2, alpha=4)
    from utils.planner import lora_parameter_count
    assert out["trainable"] == lora_parameter_count(tiny_model.config, 2, mistakes.QKVO)
    assert len(out["train_loss"]) == 2
    from utils.ablation import held_out_losses
    assert out["heldout"] == pytest.approx(float(held_out_losses(peft_model, examples, collate).mean()), rel=1e-6)
    assert all(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)   # it trained: B left 0
    eos = tokenizer.eos_token_id
    p = mistakes.end_probability(peft_model, examples, eos)
    with torch.no_grad():                                # reference: one pass over each whole example
        ends = [max(i for i, lab in enumerate(e["labels"]) if lab != IGNORE_INDEX) for e in examples]
        ref = [peft_model(input_ids=torch.tensor([e["input_ids"]])).logits[0, k - 1].softmax(-1)[eos].item()
               for e, k in zip(examples, ends)]
    assert p == pytest.approx(sum(ref) / len(ref), rel=1e-4)
    base = peft_model.unload()
    assert not any("lora_" in n for n, _ in base.named_parameters())


@pytest.mark.parametrize("end_at", [0, 2, None])
def test_stops_by_itself_counts_the_tokens_before_the_end(tiny_model, tokenizer, end_at):
    """The head is forced to write another token, then the end token at new token ``end_at`` (never: None)."""
    from utils.generate import stop_token_ids

    stops, calls = stop_token_ids(tiny_model, tokenizer), []
    other = next(t for t in range(100, 200) if t not in stops)

    def force(module, inputs, logits):                  # one head call per new token (the cache feeds the rest)
        calls.append(1)
        forced = torch.full_like(logits, -1e4)
        forced[..., tokenizer.eos_token_id if len(calls) - 1 == end_at else other] = 1e4
        return forced

    handle = tiny_model.lm_head.register_forward_hook(force)
    try:
        assert mistakes.stops_by_itself(tiny_model, tokenizer, DIALOGUES[:1], max_new_tokens=4) == [end_at]
    finally:
        handle.remove()
