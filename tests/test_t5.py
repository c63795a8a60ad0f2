"""Chapter 2's T5 helpers: exact counts from the configuration, the offline model and tokenizer,
Seq2Seq data, batched generation, training that lowers the loss, adapter save/reload and sizes."""
import json

import pandas as pd
import pytest
import torch
from peft import PeftModel, get_peft_model

from utils.architectures import meta_model as meta_t5
from utils.memory import checkpoint_size_mb, count_parameters, weights_mb
from utils.planner import lora_parameter_count as planned
from utils.generate import generate_summaries
from utils.prompts import IGNORE_INDEX, INSTRUCTION
from t5_stand_in import FLAN_T5_BASE, FLAN_T5_BASE_PARAMETERS, offline_t5_tokenizer, t5_config, tiny_t5_checkpoint
from utils.models import drop_mixed_precision_wrapper
from utils.t5 import (Seq2SeqCollator, check_t5_tokenizer,
                      encode_source, encode_target, load_t5, t5_lora_config,
                      tokenize_pairs)

# google/flan-t5-base's config.json as published on the hub (what AutoConfig reads on the real path).
HUB_CONFIG_JSON = {
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64, "d_model": 768,
    "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True,
    "is_gated_act": True, "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512,
    "num_decoder_layers": 12, "num_heads": 12, "num_layers": 12, "output_past": True, "pad_token_id": 0,
    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.23.1",
    "use_cache": True, "vocab_size": 32128}

DIALOGUE = "#Person1#: Can I return these shoes?\n#Person2#: Yes, with the receipt, within thirty days."
SUMMARY = "#Person1# wants to return shoes; #Person2# asks for the receipt."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread beats two that wait for each other on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return offline_t5_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tok, tmp_path_factory):
    return tiny_t5_checkpoint(tok, tmp_path_factory.mktemp("t5") / "init")


def _frame(n=8):
    return pd.DataFrame({"id": [f"d{i}" for i in range(n)],
                         "dialogue": [f"#Person1#: Order {i} is late.\n#Person2#: I will check order {i}." for i in range(n)],
                         "summary": [f"#Person2# checks order {i}." for i in range(n)]})


# ----------------------------------------------------------------------------- exact counts

def _counts(config):
    model = meta_t5(config)
    total = count_parameters(model)[1]
    peft_model = get_peft_model(model, t5_lora_config())
    return total, *count_parameters(peft_model)


def test_flan_t5_base_counts_from_literal_hyper_parameters():
    config = t5_config(**FLAN_T5_BASE)
    assert _counts(config) == (FLAN_T5_BASE_PARAMETERS, 3_538_944, 251_116_800) == (247_577_856, 3_538_944, 251_116_800)
    assert planned(config, 32, ("q", "v")) == 3_538_944              # the formula agrees with PEFT


def test_flan_t5_base_counts_from_hub_config_file(tmp_path):
    """The colab path reads the hub's config.json through AutoConfig: same model, same counts."""
    from transformers import AutoConfig

    (tmp_path / "config.json").write_text(json.dumps(HUB_CONFIG_JSON))
    assert _counts(AutoConfig.from_pretrained(tmp_path)) == (247_577_856, 3_538_944, 251_116_800)


def test_head_is_untied_and_a_tied_t5_is_smaller():
    untied = meta_t5(t5_config(**FLAN_T5_BASE))
    assert untied.lm_head.weight is not untied.shared.weight
    original_t5 = meta_t5(t5_config(**{**FLAN_T5_BASE, "tie_word_embeddings": True}))   # T5 1.0 shares its head
    assert count_parameters(original_t5)[1] == 247_577_856 - 32128 * 768


def test_unknown_lora_target_is_an_error():
    with pytest.raises(ValueError, match="unknown or no target"):
        planned(t5_config(**FLAN_T5_BASE), 32, ("q_proj",))


# ----------------------------------------------------------------------------- tokenizer and data

def test_offline_tokenizer_fits_t5(tok, tiny_dir):
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "right"
    model = load_t5(tiny_dir, tok, device="cpu")
    assert model.config.decoder_start_token_id == tok.pad_token_id
    assert model.lm_head.weight is not model.shared.weight


def test_bad_tokenizers_are_clear_errors(tok, tiny_dir):
    from utils.models import offline_tokenizer

    raw = offline_tokenizer()                       # SmolLM2 pads with its EOS token
    with pytest.raises(ValueError, match="distinct from EOS"):
        check_t5_tokenizer(raw)
    raw.pad_token = "<|endoftext|>"
    raw.padding_side = "left"
    with pytest.raises(ValueError, match="pads on the right"):
        check_t5_tokenizer(raw)
    config = load_t5(tiny_dir, device="cpu").config
    config.decoder_start_token_id = tok.eos_token_id
    with pytest.raises(ValueError, match="must agree"):
        check_t5_tokenizer(tok, config)


def test_source_keeps_instruction_and_eos_when_the_dialogue_is_cut(tok):
    long_dialogue = "\n".join(f"#Person{1 + i % 2}#: sentence number {i} of a long talk." for i in range(300))
    ids = encode_source(tok, long_dialogue, max_source_length=96)
    assert len(ids) <= 96 and ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.startswith(INSTRUCTION) and text.endswith("Summary:") and "sentence number 0 " in text
    short = encode_source(tok, DIALOGUE, max_source_length=512)
    assert tok.decode(short[:-1]) == f"{INSTRUCTION}\n\n{DIALOGUE}\n\nSummary:"


def test_target_ends_with_eos_and_is_cut_to_length(tok):
    ids = encode_target(tok, SUMMARY, max_target_length=64)
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == SUMMARY
    cut = encode_target(tok, SUMMARY, max_target_length=5)
    assert len(cut) == 5 and cut[:4] == ids[:4] and cut[-1] == tok.eos_token_id


def test_bad_examples_are_clear_errors(tok):
    with pytest.raises(ValueError, match="empty dialogue"):
        encode_source(tok, "   ", 128)
    with pytest.raises(ValueError, match="too short for the instruction"):
        encode_source(tok, DIALOGUE, 8)
    with pytest.raises(ValueError, match="empty summary"):
        encode_target(tok, "", 32)
    with pytest.raises(ValueError, match="lacks column"):
        tokenize_pairs(_frame().drop(columns="summary"), tok, 128, 32)


def test_collator_pads_inputs_and_masks_label_padding():
    batch = Seq2SeqCollator(pad_id=0)([{"input_ids": [5, 6, 2], "attention_mask": [1, 1, 1], "labels": [7, 2]},
                                       {"input_ids": [8, 2], "attention_mask": [1, 1], "labels": [9, 10, 11, 2]}])
    assert batch["input_ids"].tolist() == [[5, 6, 2], [8, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 2, IGNORE_INDEX, IGNORE_INDEX], [9, 10, 11, 2]]


def test_label_padding_does_not_change_the_loss(tok, tiny_dir):
    """Padding a short summary with IGNORE_INDEX next to a long one leaves its loss unchanged."""
    model = load_t5(tiny_dir, device="cpu").eval()
    ex = tokenize_pairs(_frame(2), tok, 128, 32)
    ex[1]["labels"] = ex[1]["labels"] + ex[1]["labels"][:-1] * 2          # a longer second summary
    with torch.no_grad():
        alone = model(**{k: v for k, v in Seq2SeqCollator(tok.pad_token_id)([ex[0]]).items()}).loss
        batch = Seq2SeqCollator(tok.pad_token_id)(ex)
        logits = model(**batch).logits
        first = torch.nn.functional.cross_entropy(logits[0], batch["labels"][0], ignore_index=IGNORE_INDEX)
    assert torch.allclose(alone, first, atol=1e-5)


# ----------------------------------------------------------------------------- generation and training

def test_batched_generation_equals_one_by_one(tok, tiny_dir):
    model = load_t5(tiny_dir, device="cpu")
    dialogues = [DIALOGUE, DIALOGUE + "\n#Person1#: Great, thank you very much for your help today!", "#Person1#: Hi."]
    batched = generate_summaries(model, tok, dialogues, max_new_tokens=8, batch_size=3, max_prompt_tokens=128)
    single = [generate_summaries(model, tok, [d], max_new_tokens=8, batch_size=1, max_prompt_tokens=128)[0]
              for d in dialogues]
    assert batched == single and len(batched) == 3 and all(isinstance(s, str) for s in batched)
    with pytest.raises(ValueError, match="empty"):
        generate_summaries(model, tok, [], 8)
    with pytest.raises(ValueError, match="at least 1"):
        generate_summaries(model, tok, dialogues, 0)


def _train(model, examples, pad_id, lr, steps=25):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = Seq2SeqCollator(pad_id)(examples)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method, lr", [("full", 3e-3), ("lora", 1e-2)])
def test_training_lowers_the_loss(tok, tiny_dir, method, lr):
    torch.manual_seed(0)
    model = load_t5(tiny_dir, device="cpu")
    if method == "lora":
        model = get_peft_model(model, t5_lora_config(lora_dropout=0.0))
        assert model.base_model.model.lm_head.weight is not model.base_model.model.shared.weight
    losses = _train(model, tokenize_pairs(_frame(), tok, 96, 24), tok.pad_token_id, lr)
    assert losses[-1] < 0.7 * losses[0]


def test_adapter_reload_and_merge_give_the_same_model(tok, tiny_dir, tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(load_t5(tiny_dir, device="cpu"), t5_lora_config(lora_dropout=0.0))
    _train(model, tokenize_pairs(_frame(), tok, 96, 24), tok.pad_token_id, 1e-2, steps=5)
    adapter_mb = checkpoint_size_mb(model, tmp_path / "adapter")
    lora = count_parameters(model)[0]
    assert weights_mb(lora) <= adapter_mb < weights_mb(lora) + 0.05          # the adapter file is the LoRA weights
    batch = Seq2SeqCollator(tok.pad_token_id)(tokenize_pairs(_frame(3), tok, 96, 24))
    model.eval()
    reloaded = PeftModel.from_pretrained(load_t5(tiny_dir, device="cpu"), tmp_path / "adapter").eval()
    with torch.no_grad():
        trained = model(**batch).logits
        assert torch.equal(reloaded(**batch).logits, trained)
        merged = reloaded.merge_and_unload()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        assert torch.allclose(merged(**batch).logits, trained, atol=1e-4)
        base = load_t5(tiny_dir, device="cpu").eval()(**batch).logits
    assert not torch.allclose(base, trained, atol=1e-3)                     # training did change the model


def test_full_checkpoint_size_is_the_weights(tiny_dir, tmp_path):
    model = load_t5(tiny_dir, device="cpu")
    n = count_parameters(model)[1]
    assert weights_mb(n) <= checkpoint_size_mb(model, tmp_path / "full") < weights_mb(n) + 0.1
    assert weights_mb(1024, torch.bfloat16) == 2048 / 2**20


def test_t5_never_trains_in_fp16(monkeypatch):
    """Chapter 2's Trainer precision (utils.full_vs_lora.precision): T5 in fp32 where a causal LM would get fp16."""
    from types import SimpleNamespace

    import utils.models
    from utils.full_vs_lora import precision

    for given, t5, causal in (("fp16", "no", "fp16"), ("bf16", "bf16", "bf16"), ("no", "no", "no")):
        monkeypatch.setattr(utils.models, "mixed_precision", lambda g=given: g)
        assert precision(SimpleNamespace(family="seq2seq")) == t5
        assert precision(SimpleNamespace(family="causal")) == causal


def test_mixed_precision_wrapper_is_removed_after_training(tok, tiny_dir, tmp_path):
    """The GPU path's bf16 training, simulated on the CPU: after train() the model still runs under autocast
    until the wrapper is dropped; then it computes exactly what the plain fp32 forward computes."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    model = load_t5(tiny_dir, device="cpu")
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, bf16=True,
                                    use_cpu=True, save_strategy="no", report_to="none", disable_tqdm=True,
                                    remove_unused_columns=False)
    examples = tokenize_pairs(_frame(4), tok, 96, 24)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=examples, data_collator=Seq2SeqCollator(tok.pad_token_id))
    trainer.train()
    batch = Seq2SeqCollator(tok.pad_token_id)(examples)
    model.eval()
    with torch.no_grad():
        plain = type(model).forward(model, **batch).logits
        assert not torch.equal(model(**batch).logits, plain)          # still under bf16 autocast
        assert drop_mixed_precision_wrapper(trainer) is model
        assert torch.equal(model(**batch).logits, plain)
