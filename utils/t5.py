"""Flan-T5 for chapter 2 on the online profiles: configuration, loading, tokenizer checks, Seq2Seq data, sizes.
(Offline, chapter 2's task evidence comes from SmolLM2-135M-Instruct: ``utils.full_vs_lora.summary_task``.)

The exact parameter counts of flan-t5-base come from its configuration alone (``utils.architectures.meta_model``
builds it on PyTorch's ``meta`` device and gives it back its own output head, which transformers 5 ties to the
embedding when it builds T5 from a configuration), from the hub's config online, offline from
``utils.architectures``, the course's one table of model configurations.
"""
from __future__ import annotations

import torch

from .architectures import course_config, has_separate_head
from .models import quiet_transformers
from .prompts import IGNORE_INDEX, t5_prompt

FLAN_T5 = "google/flan-t5-base"

# The brief's T5 recipe (the "T5 note"): rank 32, alpha 32, on the query and value projections.
T5_LORA = dict(r=32, lora_alpha=32, target_modules=["q", "v"], lora_dropout=0.05, bias="none")


# ----------------------------------------------------------------------------- configurations and counts

def flan_t5_config(profile):
    """flan-t5-base's configuration: from the hub on the real path, from ``utils.architectures`` offline."""
    if profile.online:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(profile.t5_model)
    return course_config(FLAN_T5)


def t5_lora_config(**overrides):
    """PEFT's ``LoraConfig`` for a sequence-to-sequence model, with the brief's T5 recipe."""
    from peft import LoraConfig, TaskType

    return LoraConfig(**{**T5_LORA, **overrides}, task_type=TaskType.SEQ_2_SEQ_LM)


# ----------------------------------------------------------------------------- tokenizer

def check_t5_tokenizer(tokenizer, config=None) -> None:
    """What an encoder-decoder needs from its tokenizer: a padding token, a distinct end-of-sequence token,
    and (given the model's config) the same pad id as the model, which also starts every decoder input."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: T5 must learn where a summary ends. Set "
                         "tokenizer.eos_token to a special token of its vocabulary.")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("the tokenizer needs a padding token distinct from EOS (T5 starts every decoder input "
                         "with the pad token; if it were EOS, the model would read 'end' as 'start'). Set "
                         "tokenizer.pad_token to another special token.")
    if tokenizer.padding_side != "right":
        raise ValueError(f"padding_side is {tokenizer.padding_side!r}: an encoder-decoder pads on the right "
                         f"(the decoder starts fresh; only decoder-only models need left padding). "
                         f"Set tokenizer.padding_side = 'right'.")
    if config is None:
        return
    if config.decoder_start_token_id != tokenizer.pad_token_id or config.pad_token_id != tokenizer.pad_token_id:
        raise ValueError(f"the model starts decoding with id {config.decoder_start_token_id} and pads with "
                         f"{config.pad_token_id}, the tokenizer pads with {tokenizer.pad_token_id}: they must agree.")
    if config.eos_token_id != tokenizer.eos_token_id:
        raise ValueError(f"the model's EOS id is {config.eos_token_id}, the tokenizer's {tokenizer.eos_token_id}.")
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer):,} tokens but the model's embedding only "
                         f"{config.vocab_size:,} rows: some ids would have no embedding.")


def t5_tokenizer(profile):
    """Flan-T5's SentencePiece tokenizer from the hub, checked (:func:`check_t5_tokenizer`)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(profile.t5_model)
    tok.padding_side = "right"
    check_t5_tokenizer(tok)
    return tok


# ----------------------------------------------------------------------------- models

def load_t5(name_or_path, tokenizer=None, device=None):
    """A fresh T5 in fp32 (T5 overflows in fp16; mixed precision, where used, is the Trainer's job).
    Checks that the output head is its own matrix and, with ``tokenizer``, that their special ids agree."""
    from transformers import AutoModelForSeq2SeqLM

    with quiet_transformers():
        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, dtype=torch.float32)
    if has_separate_head(model.config) and model.lm_head.weight is model.shared.weight:
        raise RuntimeError(f"{name_or_path}: lm_head came back tied to the embedding; this transformers version "
                           f"loads T5 v1.1 checkpoints differently than the course expects.")
    if tokenizer is not None:
        check_t5_tokenizer(tokenizer, model.config)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


# ----------------------------------------------------------------------------- data

def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_source(tokenizer, dialogue: str, max_source_length: int) -> list[int]:
    """Token ids of the instruction prompt for one dialogue, ending with EOS. A dialogue too long for
    ``max_source_length`` is shortened from its end; the instruction and the final "Summary:" are kept."""
    ids = _encode(tokenizer, t5_prompt(dialogue))
    if len(ids) + 1 <= max_source_length:
        return ids + [tokenizer.eos_token_id]
    words = dialogue.strip().split(" ")
    keep = max(1, int(len(words) * (max_source_length - 1) / len(ids)))
    while True:
        words = words[:keep]
        ids = _encode(tokenizer, t5_prompt(" ".join(words)))
        if len(ids) + 1 <= max_source_length:
            return ids + [tokenizer.eos_token_id]
        if keep == 1:
            raise ValueError(f"max_source_length={max_source_length} is too short for the instruction alone "
                             f"({len(ids) + 1} tokens with one word of dialogue); raise it.")
        keep = max(1, int(keep * 0.9))


def encode_target(tokenizer, summary: str, max_target_length: int) -> list[int]:
    """Label ids of a reference summary: its tokens (cut to fit) followed by EOS, so the model learns to stop."""
    if not isinstance(summary, str) or not summary.strip():
        raise ValueError("empty summary: every training example needs a reference summary.")
    if max_target_length < 2:
        raise ValueError(f"max_target_length={max_target_length}: a summary needs at least one token and EOS.")
    return _encode(tokenizer, summary.strip())[: max_target_length - 1] + [tokenizer.eos_token_id]


def tokenize_pairs(frame, tokenizer, max_source_length: int, max_target_length: int) -> list[dict]:
    """One training example per (dialogue, summary) row: encoder input, its mask, decoder labels."""
    missing = {"dialogue", "summary"} - set(frame.columns)
    if missing:
        raise ValueError(f"the frame lacks column(s) {sorted(missing)}; load it with utils.data.load_dialogsum.")
    examples = []
    for dialogue, summary in zip(frame["dialogue"], frame["summary"]):
        ids = encode_source(tokenizer, dialogue, max_source_length)
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                         "labels": encode_target(tokenizer, summary, max_target_length)})
    return examples


class Seq2SeqCollator:
    """Right-pads a batch: inputs with ``pad_id`` (mask 0), labels with IGNORE_INDEX. The model builds its
    decoder inputs from the labels itself: shifted right, starting with the decoder-start (= pad) id."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        if not batch:
            raise ValueError("empty batch")
        n_in = max(len(b["input_ids"]) for b in batch)
        n_out = max(len(b["labels"]) for b in batch)
        pad = lambda seq, n, v: list(seq) + [v] * (n - len(seq))  # noqa: E731
        return {"input_ids": torch.tensor([pad(b["input_ids"], n_in, self.pad_id) for b in batch]),
                "attention_mask": torch.tensor([pad(b["attention_mask"], n_in, 0) for b in batch]),
                "labels": torch.tensor([pad(b["labels"], n_out, IGNORE_INDEX) for b in batch])}


# Generation lives in utils.generate.generate_summaries (one function for T5 and chat models).
