"""How a dialogue becomes model input: an instruction prompt for Flan-T5, a chat conversation for
instruction-tuned decoders (Llama 3.2, SmolLM2, Qwen), with the loss on the summary tokens only."""
from __future__ import annotations

INSTRUCTION = "Summarize the following conversation."
IGNORE_INDEX = -100          # label value the cross-entropy loss skips


def _check_text(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"empty {what}: every example needs a non-empty {what}.")
    return value.strip()


def t5_prompt(dialogue: str) -> str:
    """Flan-T5 was instruction-tuned on prompts of this shape."""
    return f"{INSTRUCTION}\n\n{_check_text(dialogue, 'dialogue')}\n\nSummary:"


def chat_messages(dialogue: str, summary: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": f"{INSTRUCTION} Answer with a short summary only.\n\n"
                                            f"{_check_text(dialogue, 'dialogue')}"}]
    if summary is not None:
        messages.append({"role": "assistant", "content": _check_text(summary, "summary")})
    return messages


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def chat_prompt_ids(tokenizer, dialogue: str, max_prompt_tokens: int | None = None) -> list[int]:
    """Token ids of the prompt a model sees at generation time (ends with the assistant header).
    A dialogue too long for ``max_prompt_tokens`` is cut at the end of its text, keeping the template."""
    ids = _ids(tokenizer, chat_messages(dialogue), add_generation_prompt=True)
    if max_prompt_tokens is None or len(ids) <= max_prompt_tokens:
        return ids
    words = dialogue.split(" ")
    while len(ids) > max_prompt_tokens and len(" ".join(words)) > 1:
        if len(words) > 1:
            words = words[: max(1, int(len(words) * 0.9))]
        else:                                   # one long "word" (text without spaces): cut characters
            words = [words[0][: max(1, int(len(words[0]) * 0.9))]]
        ids = _ids(tokenizer, chat_messages(" ".join(words)), add_generation_prompt=True)
    if len(ids) > max_prompt_tokens:
        raise ValueError(f"the chat template alone needs {len(ids)} tokens, more than {max_prompt_tokens}.")
    return ids


def build_chat_example(tokenizer, dialogue: str, summary: str, max_length: int) -> dict:
    """One training example in the model's chat template.

    ``labels`` equal ``input_ids`` on the summary (and the end-of-turn token that closes it) and are
    IGNORE_INDEX on the prompt, so the loss teaches the answer, not the question. When the example is
    longer than ``max_length``, the *dialogue* is shortened, never the summary."""
    summary = _check_text(summary, "summary")
    full = _ids(tokenizer, chat_messages(dialogue, summary), add_generation_prompt=False)
    prompt = _ids(tokenizer, chat_messages(dialogue), add_generation_prompt=True)
    answer = full[len(prompt):]
    if full[: len(prompt)] != prompt or not answer:
        raise ValueError("the chat template does not extend the prompt with the answer; check the tokenizer.")
    special = set(tokenizer.all_special_ids)
    ends = [i for i, t in enumerate(answer) if t in special]
    # cut what follows the end-of-turn token (a newline after <|im_end|>); a template without one gets EOS to stop on
    answer = answer[: ends[-1] + 1] if ends else answer + [tokenizer.eos_token_id]
    if all(t in special for t in answer):
        raise ValueError("the chat template puts no summary token before its last special token; check the tokenizer's "
                         "chat template (does it honour add_generation_prompt?).")
    budget = max_length - len(answer)
    raise_it = ("Raise max_length (a profile size: COURSE_OVERRIDE=<section>.max_length=..., e.g. "
                "qlora.max_length=384) or shorten the summary.")
    if budget <= 0:
        raise ValueError(f"the summary alone takes {len(answer)} tokens, more than max_length={max_length}. {raise_it}")
    try:
        prompt = chat_prompt_ids(tokenizer, dialogue, max_prompt_tokens=budget)
    except ValueError as e:                             # even the shortest dialogue does not fit beside the summary
        raise ValueError(f"max_length={max_length} is too small: the summary takes {len(answer)} tokens and leaves "
                         f"{budget} for the prompt, too few: {e} {raise_it}") from None
    input_ids = prompt + answer
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
            "labels": [IGNORE_INDEX] * len(prompt) + answer}
