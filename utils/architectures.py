"""Hyper-parameters of the real models the course talks about, copied from their public
``config.json`` files, so exact parameter counts can be computed offline, without weights
(models are instantiated on PyTorch's ``meta`` device: shapes only, no memory)."""
from __future__ import annotations

import torch

LLAMA_FAMILY = {
    "meta-llama/Llama-3.2-3B-Instruct": dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5),
    "Qwen/Qwen2.5-3B-Instruct": dict(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, attention_bias=True,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, model_type="qwen2"),
    # the 7B and 70B shapes of the textbook's memory table (gated on the hub; only their shapes are used)
    "meta-llama/Llama-2-7b-hf": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5),
    "meta-llama/Llama-2-70b-hf": dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False,
        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5),
}


def llama_config(name: str):
    """A transformers config for one of the models above (Llama or Qwen2 architecture)."""
    from transformers import LlamaConfig, Qwen2Config

    if name not in LLAMA_FAMILY:
        raise KeyError(f"no offline configuration for {name!r}; known: {sorted(LLAMA_FAMILY)}")
    kw = dict(LLAMA_FAMILY[name])
    cls = Qwen2Config if kw.pop("model_type", "llama") == "qwen2" else LlamaConfig
    return cls(**kw)


def meta_model(config):
    """The model's full module tree on the meta device (no weights are allocated), for any configuration the course
    counts: a decoder (Llama family, GPT-2), T5 (its own output head given back: :func:`untie_lm_head`) or chapter 1's
    from-scratch GPT-2 (``utils.gpt2.GPTConfig``)."""
    from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

    with torch.device("meta"):
        if type(config).__name__ == "GPTConfig":
            from .gpt2 import GPTModel
            return GPTModel(config)
        if getattr(config, "model_type", None) == "t5":
            model = T5ForConditionalGeneration(config)
            return untie_lm_head(model) if has_separate_head(config) else model
        return AutoModelForCausalLM.from_config(config)


def has_separate_head(config) -> bool:
    """Does this T5 have its own output matrix (T5 v1.1, Flan-T5: ``tie_word_embeddings: false`` in its config file)?
    transformers 5 forces ``tie_word_embeddings=True`` on ``T5Config`` and keeps the file's ``false`` as
    ``scale_decoder_outputs=False``; transformers 4 keeps ``tie_word_embeddings`` as written."""
    return not getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)


def untie_lm_head(model):
    """Give a T5 v1.1 model built from its configuration its own ``lm_head``: transformers 5 ties it to the input
    embedding (24.7 M parameters fewer than flan-t5-base). Off the meta device the new head is random with std
    ``factor / sqrt(d_model)``, so that a random model's logits start near unit scale and its loss near
    ln(vocabulary) (transformers' own init for an untied T5 head uses std ``factor``: a small random model would
    start at a loss of ~50)."""
    from torch import nn

    if model.lm_head.weight is not model.shared.weight:
        return model
    ref = model.shared.weight
    head = nn.Linear(model.config.d_model, model.config.vocab_size, bias=False, device=ref.device, dtype=ref.dtype)
    if ref.device.type != "meta":
        nn.init.normal_(head.weight, mean=0.0, std=model.config.initializer_factor * model.config.d_model ** -0.5)
    model.lm_head = head
    getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    return model


# ----------------------------------------------------------------------------- other architectures
# Models of other families the course compares (notebook 05's planner), from their public config.json.
OTHER_MODELS = {
    "Qwen/Qwen3-1.7B": dict(
        model_type="qwen3", hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        tie_word_embeddings=True, attention_bias=False, max_position_embeddings=40960,
        rope_theta=1000000.0, rms_norm_eps=1e-6),
    "openai-community/gpt2": dict(
        model_type="gpt2", n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257),
    "google/flan-t5-base": dict(
        model_type="t5", d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12,
        vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
        layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
}


def course_config(name: str):
    """A transformers config for any model above (both tables), by hub name."""
    from transformers import AutoConfig

    if name in LLAMA_FAMILY:
        return llama_config(name)
    if name not in OTHER_MODELS:
        raise KeyError(f"no offline configuration for {name!r}; known: {sorted(LLAMA_FAMILY) + sorted(OTHER_MODELS)}")
    kw = dict(OTHER_MODELS[name])
    return AutoConfig.for_model(kw.pop("model_type"), **kw)
