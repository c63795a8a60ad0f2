"""One way to generate summaries, whatever the model family.

* **seq2seq** (Flan-T5): the encoder reads the instruction prompt (``utils.prompts.t5_prompt``), right-padded
  under an attention mask; the decoder starts fresh for every row.
* **causal** chat models (SmolLM2, Llama 3.2, Qwen): the prompt is the chat template up to the assistant header
  (``utils.prompts.chat_prompt_ids``), left-padded so that every row continues from its own last token.

Both decode greedily (no sampling, one beam) and stop at the end of the answer: the tokenizer's EOS, and for
chat models also the end-of-turn tokens of the common templates (``<|im_end|>``, Llama 3's ``<|eot_id|>``)
and whatever the model's generation config lists. The family is read from the model's configuration
(``is_encoder_decoder``), so a PEFT-wrapped or merged model goes through the same path as its base.
"""
from __future__ import annotations

import torch

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>")


def model_family(model) -> str:
    """'seq2seq' for encoder-decoders (T5), 'causal' for decoder-only models."""
    return "seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "causal"


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: EOS, the model's own generation EOS ids, and the known end-of-turn tokens
    the tokenizer has (a chat model trained on ChatML ends with ``<|im_end|>``, Llama 3 with ``<|eot_id|>``).
    For a seq2seq model only its EOS: T5's pad token also starts the decoder and must not stop it."""
    ids = [tokenizer.eos_token_id]
    if model_family(model) == "causal":
        gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids += gen if isinstance(gen, (list, tuple)) else [gen]
        vocab = tokenizer.get_vocab()
        ids += [vocab[t] for t in END_OF_TURN if t in vocab and t in tokenizer.all_special_tokens]
    out = []
    for i in ids:
        if i is not None and i not in out:
            out.append(int(i))
    if not out:
        raise ValueError("the tokenizer has no EOS token: generation would never stop. Set tokenizer.eos_token.")
    return out


def _prompt_ids(family: str, tokenizer, dialogue: str, max_prompt_tokens: int) -> list[int]:
    if family == "seq2seq":
        from .t5 import encode_source

        return encode_source(tokenizer, dialogue, max_prompt_tokens)
    from .prompts import chat_prompt_ids

    return chat_prompt_ids(tokenizer, dialogue, max_prompt_tokens)


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a padding nor an EOS token; set tokenizer.pad_token.")
    return tokenizer.eos_token_id


@torch.no_grad()
def generate_summaries(model, tokenizer, dialogues, max_new_tokens: int, batch_size: int = 8,
                       max_prompt_tokens: int = 1024) -> list[str]:
    """Greedy summaries of ``dialogues``, ``batch_size`` at a time: one string per dialogue, in order.
    ``max_prompt_tokens`` caps the prompt (T5: the encoder input; chat models: the templated prompt); a longer
    dialogue is cut at its end, keeping the instruction and the template."""
    if isinstance(dialogues, str):
        raise ValueError("dialogues is a single string: pass a list of dialogues ([dialogue] for one).")
    dialogues = list(dialogues)
    if not dialogues:
        raise ValueError("no dialogues to summarise: the list is empty.")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be at least 1.")
    family, pad = model_family(model), _pad_id(tokenizer)
    stops = stop_token_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out: list[str] = []
    try:
        for i in range(0, len(dialogues), batch_size):
            prompts = [_prompt_ids(family, tokenizer, d, max_prompt_tokens) for d in dialogues[i:i + batch_size]]
            n = max(map(len, prompts))
            if family == "seq2seq":          # right padding: the decoder starts fresh for every row
                ids = [p + [pad] * (n - len(p)) for p in prompts]
                mask = [[1] * len(p) + [0] * (n - len(p)) for p in prompts]
                extra = {"decoder_start_token_id": model.config.decoder_start_token_id}
            else:                            # left padding: every row continues from its own last token
                ids = [[pad] * (n - len(p)) + p for p in prompts]
                mask = [[0] * (n - len(p)) + [1] * len(p) for p in prompts]
                extra = {}
            gen = model.generate(input_ids=torch.tensor(ids, device=dev), attention_mask=torch.tensor(mask, device=dev),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                                 eos_token_id=stops, **extra)
            new = gen if family == "seq2seq" else gen[:, n:]
            out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return out
