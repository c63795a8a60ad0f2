"""A small random-weight T5 v1.1 for the tests of ``utils.t5`` and ``utils.generate``: the same code as Flan-T5
(gated-GELU, untied output head), trained in seconds on a CPU, with SmolLM2's byte-level BPE made fit for T5
(``<|endoftext|>``, id 0 as T5's ``<pad>``, pads and starts the decoder; ``<|im_end|>`` ends a sequence).
Code paths and exact shapes only: no test draws a conclusion about a task from it."""
from __future__ import annotations

from pathlib import Path

import torch

from utils.architectures import OTHER_MODELS, untie_lm_head
from utils.memory import checkpoint_size_mb
from utils.t5 import FLAN_T5, check_t5_tokenizer

# google/flan-t5-base's hyper-parameters (from utils.architectures) and what the hub checkpoint holds
FLAN_T5_BASE = {k: v for k, v in OTHER_MODELS[FLAN_T5].items() if k != "model_type"}
FLAN_T5_BASE_PARAMETERS = 247_577_856

TINY_T5 = dict(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=1, num_decoder_layers=1,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=32,
               relative_attention_max_distance=128, dropout_rate=0.0, layer_norm_epsilon=1e-6)


def t5_config(**hyper_parameters):
    from transformers import T5Config

    return T5Config(**hyper_parameters)


def offline_t5_tokenizer():
    from utils.models import offline_tokenizer

    tok = offline_tokenizer()
    tok.pad_token, tok.padding_side = "<|endoftext|>", "right"
    check_t5_tokenizer(tok)
    return tok


def tiny_t5_checkpoint(tokenizer, path, seed: int = 42) -> Path:
    """A random T5 v1.1 sized for ``tokenizer``, saved to ``path``: every model of a test starts from it."""
    from transformers import T5ForConditionalGeneration

    config = t5_config(**TINY_T5, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                       decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    checkpoint_size_mb(untie_lm_head(T5ForConditionalGeneration(config)), path)
    return Path(path)
