"""A memory planner: what a fine-tuning run needs, computed from a model's configuration alone.

1. :func:`parameter_parts` / :func:`parameter_count`: exact parameter counts, by formula, for the course's
   architectures (Llama family incl. Qwen2/Qwen3, GPT-2 as in transformers, the from-scratch GPT-2 of
   chapter 1, T5 / Flan-T5). Unit tests compare them with instantiated models, to the parameter.
2. :func:`linear_shapes` / :func:`lora_parameter_count`: every Linear layer by its PEFT target name, so
   LoRA counts follow for any rank and any set of target modules (``"all-linear"`` included).
3. :func:`estimate_memory`: weights, gradients, optimizer states and activations of full fine-tuning,
   LoRA and QLoRA, as a function of batch size and sequence length. The activation part is a model (the
   tensors a decoder block keeps for its backward pass), not a measurement; notebook 05 checks it
   against measured peaks and says what it leaves out.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .architectures import has_separate_head
from .memory import NF4_DQ_BITS

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")
ALL_LINEAR = "all-linear"


def family(config) -> str:
    """'llama' (Llama, Mistral, Qwen2, Qwen3), 'gpt2' (transformers' GPT-2), 'gpt2-scratch'
    (``utils.gpt2.GPTConfig``, untied head) or 't5'."""
    kind = getattr(config, "model_type", None)
    if kind in LLAMA_LIKE:
        return "llama"
    if kind in ("gpt2", "t5"):
        return kind
    if type(config).__name__ == "GPTConfig" and hasattr(config, "emb_dim"):
        return "gpt2-scratch"
    raise ValueError(f"the planner knows Llama-family ({', '.join(LLAMA_LIKE)}), GPT-2 and T5 configurations, "
                     f"not {type(config).__name__} (model_type={kind!r}); add its formulas to utils/planner.py.")


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@dataclass(frozen=True)
class Linear:
    """One kind of Linear layer: its shape, whether it has a bias, and how many the model holds."""
    d_in: int
    d_out: int
    bias: bool
    count: int

    @property
    def parameters(self) -> int:
        return self.count * (self.d_in * self.d_out + (self.d_out if self.bias else 0))


def linear_shapes(config) -> dict[str, list[Linear]]:
    """Every Linear layer inside the blocks, keyed by the name PEFT matches as a target module (the last
    part of the module's name). The output head is not included: LoRA and 4-bit quantization leave it alone."""
    fam = family(config)
    if fam == "llama":
        h, n, hd = config.hidden_size, config.num_hidden_layers, _head_dim(config)
        q, kv, inter = config.num_attention_heads * hd, config.num_key_value_heads * hd, config.intermediate_size
        qkv_bias = True if config.model_type == "qwen2" else getattr(config, "attention_bias", False)
        o_bias = False if config.model_type == "qwen2" else getattr(config, "attention_bias", False)
        mlp_bias = getattr(config, "mlp_bias", False)
        return {"q_proj": [Linear(h, q, qkv_bias, n)], "k_proj": [Linear(h, kv, qkv_bias, n)],
                "v_proj": [Linear(h, kv, qkv_bias, n)], "o_proj": [Linear(q, h, o_bias, n)],
                "gate_proj": [Linear(h, inter, mlp_bias, n)], "up_proj": [Linear(h, inter, mlp_bias, n)],
                "down_proj": [Linear(inter, h, mlp_bias, n)]}
    if fam == "gpt2":                      # Conv1D layers; "c_proj" names both the attention and the MLP output
        h, n = config.n_embd, config.n_layer
        inter = config.n_inner or 4 * h
        return {"c_attn": [Linear(h, 3 * h, True, n)], "c_proj": [Linear(h, h, True, n), Linear(inter, h, True, n)],
                "c_fc": [Linear(h, inter, True, n)]}
    if fam == "gpt2-scratch":
        h, n = config.emb_dim, config.n_layers
        return {"W_query": [Linear(h, h, config.qkv_bias, n)], "W_key": [Linear(h, h, config.qkv_bias, n)],
                "W_value": [Linear(h, h, config.qkv_bias, n)], "out_proj": [Linear(h, h, True, n)],
                "ff.layers.0": [Linear(h, 4 * h, True, n)], "ff.layers.2": [Linear(4 * h, h, True, n)]}
    # t5: q, k, v, o in every attention (encoder self, decoder self and cross); the feed-forward per layer
    d, inner, d_ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    attn = config.num_layers + 2 * config.num_decoder_layers
    ff = config.num_layers + config.num_decoder_layers
    out = {"q": [Linear(d, inner, False, attn)], "k": [Linear(d, inner, False, attn)],
           "v": [Linear(d, inner, False, attn)], "o": [Linear(inner, d, False, attn)]}
    if config.is_gated_act:
        out |= {"wi_0": [Linear(d, d_ff, False, ff)], "wi_1": [Linear(d, d_ff, False, ff)]}
    else:
        out |= {"wi": [Linear(d, d_ff, False, ff)]}
    return out | {"wo": [Linear(d_ff, d, False, ff)]}


def parameter_parts(config) -> dict[str, int]:
    """Parameters by where they live: embeddings, attention, feed-forward, norms, output head."""
    fam, lin = family(config), linear_shapes(config)
    attn_names = {"llama": ("q_proj", "k_proj", "v_proj", "o_proj"), "gpt2": ("c_attn",),
                  "gpt2-scratch": ("W_query", "W_key", "W_value", "out_proj"), "t5": ("q", "k", "v", "o")}[fam]
    attention = sum(layer.parameters for name in attn_names for layer in lin[name])
    linear = sum(layer.parameters for layers in lin.values() for layer in layers)
    if fam == "gpt2":                      # the attention's c_proj is the first entry of "c_proj"
        attention += lin["c_proj"][0].parameters
    parts = {"attention": attention, "feed-forward": linear - attention}
    if fam == "llama":
        h, n = config.hidden_size, config.num_hidden_layers
        qk_norm = 2 * _head_dim(config) if config.model_type == "qwen3" else 0
        parts["embeddings"] = config.vocab_size * h
        parts["norms"] = n * (2 * h + qk_norm) + h
        parts["output head"] = 0 if config.tie_word_embeddings else config.vocab_size * h
    elif fam == "gpt2":
        h = config.n_embd
        parts["embeddings"] = (config.vocab_size + config.n_positions) * h
        parts["norms"] = config.n_layer * 4 * h + 2 * h                    # LayerNorms have a bias
        parts["output head"] = 0 if config.tie_word_embeddings else config.vocab_size * h
    elif fam == "gpt2-scratch":
        h = config.emb_dim
        parts["embeddings"] = (config.vocab_size + config.context_length) * h
        parts["norms"] = config.n_layers * 4 * h + 2 * h
        parts["output head"] = config.vocab_size * h                       # always a separate matrix
    else:
        d = config.d_model
        parts["embeddings"] = config.vocab_size * d                          # shared by encoder and decoder
        parts["norms"] = config.num_layers * 2 * d + config.num_decoder_layers * 3 * d + 2 * d
        parts["relative position bias"] = 2 * config.relative_attention_num_buckets * config.num_heads
        parts["output head"] = config.vocab_size * d if has_separate_head(config) else 0
    return parts


def parameter_count(config) -> int:
    return sum(parameter_parts(config).values())


def resolve_targets(config, targets) -> tuple[str, ...]:
    """Target module names; ``"all-linear"`` means every Linear kind inside the blocks (as in PEFT for
    transformers models; on chapter 1's from-scratch GPT, a plain module, PEFT's "all-linear" takes the output head
    too, unless ``exclude_modules=["out_head"]``)."""
    known = linear_shapes(config)
    if targets == ALL_LINEAR:
        return tuple(known)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in known]
    if unknown or not targets:
        raise ValueError(f"unknown or no target module(s) {unknown}; this model's Linear layers are "
                         f"{sorted(known)} (or use {ALL_LINEAR!r}).")
    return tuple(dict.fromkeys(targets))            # a name given twice is one set of layers, as in PEFT


def lora_parameter_count(config, r: int, targets=("q_proj", "v_proj")) -> int:
    """LoRA of rank ``r`` on each target: A (r x d_in) and B (d_out x r), r(d_in + d_out) per layer."""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r <= 0:
        raise ValueError(f"the LoRA rank must be a positive integer, got {r!r}")
    r = int(r)                                       # a NumPy integer (a sweep over an array) is one too
    lin = linear_shapes(config)
    return sum(layer.count * r * (layer.d_in + layer.d_out) for t in resolve_targets(config, targets)
               for layer in lin[t])


def quantized_parameter_count(config) -> int:
    """Weights that 4-bit loading quantizes: the Linear weights inside the blocks (not their biases, not the
    embeddings, norms or output head, which stay unquantized: fp32 in the planner's QLoRA, as
    ``prepare_model_for_kbit_training`` casts them)."""
    return sum(layer.count * layer.d_in * layer.d_out for layers in linear_shapes(config).values() for layer in layers)


# ----------------------------------------------------------------------------- memory

METHODS = ("full", "lora", "qlora")
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw_8bit": 2.0, "sgd": 0.0}   # states per trainable parameter


@dataclass(frozen=True)
class Plan:
    """One training configuration to estimate. Bytes are per number: 2 for fp16/bf16, 4 for fp32."""
    method: str = "qlora"                   # "full", "lora" or "qlora"
    batch_size: int = 1
    seq_len: int = 512
    r: int = 16
    targets: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj")
    weight_bytes: float = 2.0               # base weights of full fine-tuning and LoRA (16-bit on a GPU)
    activation_bytes: float = 2.0           # compute dtype of the activations (full fine-tuning and LoRA; for
                                            # QLoRA see activation_bytes_of: its residual stream is fp32)
    optimizer: str = "adamw"                # AdamW: two fp32 states (8 bytes); "adamw_8bit": 2 bytes
    gradient_checkpointing: bool = False
    lora_dropout: bool = True               # dropout on the LoRA input keeps one more copy of it
    attention_scores: bool = False          # eager attention keeps the (heads x seq x seq) probabilities

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.optimizer not in OPTIMIZER_BYTES:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_BYTES)}, got {self.optimizer!r}")
        whole = {"batch_size": self.batch_size, "seq_len": self.seq_len, "r": self.r}
        if bad := {k: v for k, v in whole.items() if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0}:
            raise ValueError(f"batch_size, seq_len and r must be positive whole numbers, got {bad}")
        if bad := {k: v for k, v in {"weight_bytes": self.weight_bytes, "activation_bytes": self.activation_bytes}.items()
                   if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < math.inf}:
            raise ValueError(f"bytes per number must be positive and finite (2 for fp16/bf16, 4 for fp32), got {bad}")
        if bad := {k: v for k, v in {"gradient_checkpointing": self.gradient_checkpointing,
                                     "lora_dropout": self.lora_dropout,
                                     "attention_scores": self.attention_scores}.items() if not isinstance(v, bool)}:
            raise ValueError(f"these switches take True or False, got {bad} (a text such as 'no' would count as True)")


def activation_elements_per_token(config, plan: Plan) -> float:
    """Numbers one decoder layer keeps for the backward pass, per token (Llama family, SDPA attention).

    Counted tensor by tensor (notebook 05 checks the count against what autograd really saves):
    * each RMSNorm keeps its input and 1/rms (h + 1), and its normalized input when its weight trains (h);
    * attention keeps q, k, v after RoPE and its output, which is also o_proj's input (2q + 2kv), plus one
      log-sum-exp per head; eager attention also keeps the heads x seq probabilities;
    * the MLP keeps gate, up and SiLU(gate) (3I); Qwen3's per-head query and key norms keep their inputs;
    * a Linear keeps its input when its weight trains, or when it carries a LoRA adapter without dropout
      (q, k, v share one input, gate and up another); a LoRA adapter keeps its r-dimensional hidden
      output and, with dropout, a mask and the dropped copy of its input (2 d_in)."""
    if family(config) != "llama":
        raise ValueError("activation estimates cover Llama-family decoders (Llama, Mistral, Qwen2, Qwen3); "
                         "for GPT-2 or T5, count parameters and LoRA with this module and measure activations.")
    h, hd = config.hidden_size, _head_dim(config)
    q, kv, inter = config.num_attention_heads * hd, config.num_key_value_heads * hd, config.intermediate_size
    heads, full = config.num_attention_heads, plan.method == "full"
    kept = 2 * (h + 1) + (2 * h if full else 0) + 2 * q + 2 * kv + heads + 3 * inter
    if config.model_type == "qwen3":        # RMSNorm on each query and key head, before RoPE
        kept += q + kv + heads + config.num_key_value_heads + ((q + kv) if full else 0)
    if plan.attention_scores:
        kept += heads * plan.seq_len
    if full:
        return kept + 2 * h + inter
    targets = set(resolve_targets(config, plan.targets))
    lin = linear_shapes(config)
    for t in targets:
        kept += plan.r + (2 * lin[t][0].d_in if plan.lora_dropout else 0)
    if not plan.lora_dropout:
        kept += h * bool(targets & {"q_proj", "k_proj", "v_proj"}) + h * bool(targets & {"gate_proj", "up_proj"})
        kept += inter * ("down_proj" in targets)
    return kept


def activation_bytes_of(plan: Plan) -> float:
    """Bytes per kept activation. Full fine-tuning and LoRA: the plan's compute dtype. QLoRA: 4, whatever the
    compute dtype, because PEFT's ``prepare_model_for_kbit_training`` casts every weight that is not 4-bit
    (embeddings, norms, an untied head) to fp32, so the residual stream starts in fp32, and bitsandbytes'
    ``Linear4bit`` computes in the compute dtype but returns its *input's* dtype: every tensor the blocks keep is
    fp32. (Under autocast, i.e. the Trainer's fp16/bf16, the attention and adapter matmuls keep 16-bit copies:
    measured on a small Llama, autograd then keeps about 0.8 x the 4-byte count, so 4 bytes is an upper bound.)"""
    return 4.0 if plan.method == "qlora" else float(plan.activation_bytes)


def config_layers(config) -> int:
    return {"llama": lambda c: c.num_hidden_layers, "gpt2": lambda c: c.n_layer,
            "gpt2-scratch": lambda c: c.n_layers, "t5": lambda c: c.num_layers + c.num_decoder_layers}[family(config)](config)


def estimate_memory(config, plan: Plan = Plan()) -> dict[str, float]:
    """Bytes needed by one training step, by component.

    * weights: the base model (16-bit; under QLoRA, NF4 with double quantization for the Linear layers and fp32
      for the rest, which ``prepare_model_for_kbit_training`` casts up);
    * trainable copy: full fine-tuning in 16-bit keeps an fp32 master copy; LoRA keeps its adapters in fp32;
    * gradients: one per trainable parameter (16-bit for full fine-tuning, fp32 for adapters);
    * optimizer: AdamW's two fp32 moments (8 bytes) per trainable parameter, 2 bytes with 8-bit AdamW;
    * activations: tensors kept for the backward pass, per token and layer (see
      :func:`activation_elements_per_token`); with gradient checkpointing only each block's input, plus one
      block's tensors while it is recomputed; in fp32 under QLoRA (:func:`activation_bytes_of`);
    * logits and loss: the logits, upcast to fp32 by the loss, their log-softmax (kept for the backward
      pass) and, in the backward pass, their gradient: three fp32 copies of batch x seq x vocab.

    Left out: the framework's own memory (CUDA context, kernels), allocator caching and fragmentation,
    temporary buffers (a dequantized 4-bit weight, matmul workspaces) and anything the process holds outside
    the model."""
    n = parameter_count(config)
    if plan.method == "full":
        trainable = n
        weights = n * plan.weight_bytes
        trainable_copy = n * 4.0 if plan.weight_bytes < 4 else 0.0
        gradients = n * plan.weight_bytes
    else:
        trainable = lora_parameter_count(config, plan.r, plan.targets)
        if plan.method == "qlora":               # the rest (embeddings, norms, head) is cast to fp32 by
            quantized = quantized_parameter_count(config)         # prepare_model_for_kbit_training
            weights = quantized * NF4_DQ_BITS / 8 + (n - quantized) * 4.0
        else:
            weights = n * plan.weight_bytes
        trainable_copy = trainable * 4.0
        gradients = trainable * 4.0
    optimizer = trainable * OPTIMIZER_BYTES[plan.optimizer]
    tokens, layers, h = plan.batch_size * plan.seq_len, config_layers(config), config.hidden_size
    per_layer = activation_elements_per_token(config, plan)
    kept = layers * h + per_layer if plan.gradient_checkpointing else layers * per_layer
    kept += h + 1 + (2 * h if plan.method == "full" else 0)    # final norm (+ the head's input when the head trains)
    act_bytes = activation_bytes_of(plan)
    activations = tokens * kept * act_bytes
    # a 16-bit copy of the logits when the head runs in 16 bits (under autocast also with QLoRA's fp32 head)
    logits = tokens * config.vocab_size * ((plan.activation_bytes if plan.activation_bytes < 4 else 0) + 12)
    parts = {"weights": weights, "trainable copy": trainable_copy, "gradients": gradients,
             "optimizer states": optimizer, "activations": activations, "logits and loss": logits}
    return parts | {"total": sum(parts.values())}
