"""The memory planner (utils/planner.py): formula counts equal instantiated models, to the parameter."""
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, T5ForConditionalGeneration

from utils.architectures import LLAMA_FAMILY, OTHER_MODELS, course_config, meta_model
from utils.gpt2 import GPT2_124M, GPTConfig, GPTModel
from utils.memory import NF4_DQ_BITS, SavedTensors, count_parameters, weight_footprint_bytes
from utils.planner import (Plan, estimate_memory, linear_shapes, lora_parameter_count, parameter_count,
                           parameter_parts, quantized_parameter_count, resolve_targets)


def build(config, device="meta"):
    """The model a configuration describes. transformers 5 ties T5's output head when the model is built
    from a config, whatever the config says; a separate head (Flan-T5) is restored by hand."""
    with torch.device(device):
        if isinstance(config, GPTConfig):
            return GPTModel(config)
        if config.model_type == "t5":
            model = T5ForConditionalGeneration(config)
            if not config.scale_decoder_outputs:
                model.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
            return model
    return meta_model(config) if device == "meta" else AutoModelForCausalLM.from_config(config)


# ----------------------------------------------------------------------------- real models (meta device)

KNOWN = {"openai-community/gpt2": 124_439_808, "google/flan-t5-base": 247_577_856,
         "HuggingFaceTB/SmolLM2-135M-Instruct": 134_515_008, "meta-llama/Llama-3.2-3B-Instruct": 3_212_749_824,
         "meta-llama/Llama-2-7b-hf": 6_738_415_616, "meta-llama/Llama-2-70b-hf": 68_976_648_192}


@pytest.mark.parametrize("name", sorted(LLAMA_FAMILY) + sorted(OTHER_MODELS))
def test_counts_equal_the_instantiated_model(name):
    config = course_config(name)
    assert parameter_count(config) == count_parameters(build(config))[1] == count_parameters(meta_model(config))[1]
    if name in KNOWN:                                    # published figures (see REFERENCES.md)
        assert parameter_count(config) == KNOWN[name]


def test_gpt2_from_scratch_has_an_untied_head():
    assert parameter_count(GPT2_124M) == count_parameters(build(GPT2_124M))[1] == 163_037_184
    assert count_parameters(meta_model(GPT2_124M))[1] == 163_037_184
    assert lora_parameter_count(GPT2_124M, 8, "all-linear") == 8 * 165_888 == 1_327_104   # chapter 1's figure


def test_published_lora_counts():
    assert lora_parameter_count(course_config("google/flan-t5-base"), 32, ("q", "v")) == 3_538_944
    llama = course_config("meta-llama/Llama-3.2-3B-Instruct")
    assert lora_parameter_count(llama, 16, ("q_proj", "k_proj", "v_proj", "o_proj")) == 9_175_040
    assert lora_parameter_count(llama, 16, "all-linear") == 24_313_856


@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen3-1.7B", "openai-community/gpt2",
                                  "google/flan-t5-base"])
@pytest.mark.parametrize("r", [1, 8, 16])
def test_lora_counts_equal_peft(name, r):
    config = course_config(name)
    targets = {"gpt2": ("c_proj",), "t5": ("q", "v", "wo")}.get(config.model_type, ("q_proj", "v_proj"))
    for t in (targets, "all-linear"):
        model = get_peft_model(build(config), LoraConfig(r=r, target_modules=list(t) if t != "all-linear" else t))
        assert count_parameters(model)[0] == lora_parameter_count(config, r, t)


# ----------------------------------------------------------------------------- small random-weight models

TINY = {
    "llama, biases, untied": dict(model_type="llama", attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
    "llama, explicit head_dim": dict(model_type="llama", head_dim=24),
    "mistral": dict(model_type="mistral"),
    "qwen2 (q, k, v biases)": dict(model_type="qwen2", tie_word_embeddings=True),
    "qwen3 (q/k norms), biases": dict(model_type="qwen3", head_dim=16, attention_bias=True, tie_word_embeddings=False),
}
DIMS = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
            vocab_size=211)


@pytest.mark.parametrize("kind", TINY)
def test_tiny_decoders_with_real_weights(kind):
    kw = dict(TINY[kind])
    config = AutoConfig.for_model(kw.pop("model_type"), **DIMS, **kw)
    model = build(config, device="cpu")
    assert parameter_count(config) == count_parameters(model)[1]
    assert sum(parameter_parts(config).values()) == parameter_count(config)
    for targets in (("k_proj", "down_proj"), "all-linear"):
        peft_model = get_peft_model(model, LoraConfig(r=3, target_modules=list(targets) if targets != "all-linear" else targets))
        assert count_parameters(peft_model)[0] == lora_parameter_count(config, 3, targets)
        model = peft_model.unload()


@pytest.mark.parametrize("kw", [dict(n_inner=100), dict(tie_word_embeddings=False)])
def test_tiny_gpt2(kw):
    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=40, vocab_size=97, **kw)
    model = build(config, device="cpu")
    assert parameter_count(config) == count_parameters(model)[1]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["c_proj"]))   # attention and MLP projections
    assert count_parameters(peft_model)[0] == lora_parameter_count(config, 2, ("c_proj",))


@pytest.mark.parametrize("kw", [dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
                                dict(feed_forward_proj="relu"), dict(num_decoder_layers=1)])
def test_tiny_t5(kw):
    config = AutoConfig.for_model("t5", d_model=32, d_ff=48, d_kv=8, num_heads=3, num_layers=2, vocab_size=101, **kw)
    model = build(config, device="cpu")
    assert parameter_count(config) == count_parameters(model)[1]


def test_tiny_gpt_from_scratch():
    config = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=False)
    assert parameter_count(config) == count_parameters(build(config, device="cpu"))[1]


# ----------------------------------------------------------------------------- memory

def test_full_fine_tuning_is_16_bytes_per_parameter_before_activations():
    config = course_config("meta-llama/Llama-2-7b-hf")
    est = estimate_memory(config, Plan(method="full"))
    state = est["weights"] + est["trainable copy"] + est["gradients"] + est["optimizer states"]
    assert state == 16 * parameter_count(config)


def test_qlora_weights_and_adapter_state():
    config = course_config("meta-llama/Llama-2-7b-hf")
    n, q = parameter_count(config), quantized_parameter_count(config)
    est = estimate_memory(config, Plan(method="qlora", r=16))
    assert est["weights"] == pytest.approx(q * NF4_DQ_BITS / 8 + (n - q) * 4)    # the rest cast to fp32
    # the same, counted on the real module tree (the Linear layers in the blocks at NF4's bits, the rest at 4 bytes)
    assert est["weights"] == pytest.approx(weight_footprint_bytes(meta_model(config), NF4_DQ_BITS, other_bytes=4), abs=1)
    trainable = lora_parameter_count(config, 16, ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert est["trainable copy"] + est["gradients"] + est["optimizer states"] == 16 * trainable
    assert estimate_memory(config, Plan(method="qlora", optimizer="adamw_8bit"))["optimizer states"] == 2 * trainable


def test_activations_scale_with_tokens_and_checkpointing_saves():
    config = course_config("meta-llama/Llama-3.2-3B-Instruct")
    act = lambda **kw: estimate_memory(config, Plan(**kw))["activations"]  # noqa: E731
    assert act(batch_size=4, seq_len=256) == pytest.approx(2 * act(batch_size=2, seq_len=256))
    assert act(seq_len=512) == pytest.approx(2 * act(seq_len=256))                 # linear without eager attention
    assert act(seq_len=512, attention_scores=True) > 2 * act(seq_len=256, attention_scores=True)
    assert act(gradient_checkpointing=True) < act() / 5


@pytest.mark.parametrize("method, targets, dropout", [("full", "all-linear", 0.0), ("lora", ("q_proj", "v_proj"), 0.0),
                                                      ("lora", "all-linear", 0.05)])
def test_activation_count_matches_what_autograd_saves(method, targets, dropout):
    config = AutoConfig.for_model("llama", hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                                  num_attention_heads=8, num_key_value_heads=4, vocab_size=512)
    torch.manual_seed(0)
    model = build(config, device="cpu")
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=8, target_modules=list(targets) if targets != "all-linear" else targets,
                                                 lora_dropout=dropout))
    model.train()
    ids = torch.randint(0, config.vocab_size, (2, 64))
    with SavedTensors(exclude=model.parameters()) as saved:
        model(input_ids=ids, labels=ids)
    est = estimate_memory(config, Plan(method=method, batch_size=2, seq_len=64, r=8, targets=targets,
                                       lora_dropout=dropout > 0, activation_bytes=4))
    log_softmax = 2 * 64 * config.vocab_size * 4                         # the one logits copy autograd keeps
    assert est["activations"] + log_softmax == pytest.approx(saved.bytes, rel=0.08)


def test_bad_input_is_a_clear_error():
    config = course_config("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(ValueError, match="unknown or no target"):
        lora_parameter_count(config, 8, ("query",))
    with pytest.raises(ValueError, match="positive integer"):
        lora_parameter_count(config, 0)
    with pytest.raises(ValueError, match="method must be"):
        Plan(method="prefix")
    with pytest.raises(ValueError, match="positive"):
        Plan(seq_len=0)
    for bad, words in (({"batch_size": 1.5}, "positive whole numbers, got {'batch_size': 1.5}"),
                       ({"r": -1}, "got {'r': -1}"), ({"weight_bytes": 0}, "bytes per number must be positive"),
                       ({"weight_bytes": float("nan")}, "got {'weight_bytes': nan}"),
                       ({"activation_bytes": float("inf")}, "positive and finite"),      # NaN, inf once passed
                       ({"gradient_checkpointing": "no"}, "take True or False")):   # "no" once counted as True
        with pytest.raises(ValueError, match=re.escape(words)):
            Plan(**bad)
    with pytest.raises(ValueError, match="Llama-family"):
        estimate_memory(course_config("google/flan-t5-base"), Plan(targets=("q", "v")))
    with pytest.raises(ValueError, match="planner knows"):
        parameter_count(object())
    assert resolve_targets(config, "all-linear") == tuple(linear_shapes(config))


def test_qlora_activations_are_fp32_after_prepare_model_for_kbit_training(tmp_path):
    """Issue 12, defect 6: on a T4 the compute dtype is fp16, but prepare_model_for_kbit_training casts the
    embeddings and norms to fp32 and bitsandbytes' Linear4bit returns its input's dtype, so every activation the
    blocks keep is fp32. A 16-bit compute dtype (bf16 here, standing in for fp16) must not halve the estimate."""
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": "cpu"})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    assert model.model.embed_tokens.weight.dtype == torch.float32
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             lora_dropout=0.05))
    model.train()
    ids = torch.randint(0, config.vocab_size, (2, 64))
    with SavedTensors(exclude=model.parameters()) as saved:
        model(input_ids=ids, labels=ids)
    est = estimate_memory(config, Plan(method="qlora", batch_size=2, seq_len=64, r=8, activation_bytes=2))
    log_softmax = 2 * 64 * config.vocab_size * 4
    assert est["activations"] + log_softmax == pytest.approx(saved.bytes, rel=0.12)   # 2-byte count: 0.57 x
    with SavedTensors(exclude=model.parameters()) as saved_autocast, torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids)
    assert 0.7 < saved_autocast.bytes / (est["activations"] + log_softmax) <= 1.0       # 4 bytes: an upper bound
