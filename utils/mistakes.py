"""Chapter 6: ten (and three more) ways to break LoRA and QLoRA, each made on purpose and measured.

Only what the notebook needs beyond the other helpers (its sizes are ``profile.mistakes``): the two faulty
collators (the loss on the prompt; EOS used as the padding token and masked with it), the same example in three prompt formats, the
probability of the end token, whether a greedy generation stops by itself, and one short LoRA run (reusing
``utils.ablation``'s training loop and held-out loss).
"""
from __future__ import annotations

import torch

from .prompts import INSTRUCTION, IGNORE_INDEX
from .qlora import PadCollator

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


def loss_on_prompt(examples: list[dict]) -> list[dict]:
    """The mistake: labels on every token, the prompt included (copies; the inputs are unchanged)."""
    return [{**e, "labels": list(e["input_ids"])} for e in examples]


class EosAsPadCollator(PadCollator):
    """The mistake: pad with the EOS token, then mask every label equal to the padding id (a common recipe,
    ``labels[labels == tokenizer.pad_token_id] = -100``). With pad = EOS, the real end of each answer is masked too."""

    def __call__(self, batch: list[dict]) -> dict:
        out = super().__call__(batch)
        out["labels"] = out["labels"].masked_fill(out["input_ids"] == self.pad_id, IGNORE_INDEX)
        return out


def labelled_share(batch: dict, token_id: int) -> tuple[int, int]:
    """(labelled positions holding ``token_id``, positions holding it in the real, unpadded input)."""
    real = batch["attention_mask"].bool() & (batch["input_ids"] == token_id)
    return int((real & (batch["labels"] != IGNORE_INDEX)).sum()), int(real.sum())


LLAMA3_TEMPLATE = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")
FORMATS = ("its own chat template", "no template (plain text)", "another model's template (Llama 3)")


def formatted_example(tokenizer, dialogue: str, summary: str, fmt: str, max_dialogue_chars: int = 600) -> dict:
    """One example in one of ``FORMATS``, labels on the summary's own tokens only (no end token), so that the
    loss compares the same words under different prompts. The dialogue is cut to ``max_dialogue_chars``."""
    user = f"{INSTRUCTION} Answer with a short summary only.\n\n{dialogue[:max_dialogue_chars]}"
    if fmt == FORMATS[0]:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
    elif fmt == FORMATS[1]:
        prompt = f"{user}\n\nSummary:\n"
    elif fmt == FORMATS[2]:
        prompt = LLAMA3_TEMPLATE.format(user=user)
    else:
        raise ValueError(f"format {fmt!r}: choose one of {FORMATS}")
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    s = tokenizer(summary.strip(), add_special_tokens=False)["input_ids"]
    return {"input_ids": p + s, "attention_mask": [1] * (len(p) + len(s)), "labels": [IGNORE_INDEX] * len(p) + s}


@torch.no_grad()
def end_probability(model, examples: list[dict], end_id: int) -> float:
    """Mean probability the model gives the end token where the answer ends (the last labelled position holds
    ``end_id`` in the course's chat examples): low means it would keep writing."""
    model.eval()
    dev, probs = next(model.parameters()).device, []
    for e in examples:
        ids = torch.tensor([e["input_ids"]], device=dev)
        last = max(i for i, lab in enumerate(e["labels"]) if lab != IGNORE_INDEX)
        if e["input_ids"][last] != end_id:
            raise ValueError("the example's last labelled token is not the end token")
        logits = model(input_ids=ids[:, :last]).logits[0, -1].float()
        probs.append(logits.softmax(-1)[end_id].item())
    return sum(probs) / len(probs)


@torch.no_grad()
def stops_by_itself(model, tokenizer, dialogues, max_new_tokens: int, max_prompt_tokens: int = 512) -> list[int | None]:
    """Greedy generation, one dialogue at a time, stopping at any end token (``utils.generate.stop_token_ids``):
    the number of tokens before the end, or None when it was still writing at ``max_new_tokens``."""
    from .generate import stop_token_ids
    from .prompts import chat_prompt_ids

    model.eval()
    dev, stops, out = next(model.parameters()).device, stop_token_ids(model, tokenizer), []
    for d in dialogues:
        ids = torch.tensor([chat_prompt_ids(tokenizer, d, max_prompt_tokens)], device=dev)
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        out.append(next((i for i, t in enumerate(new) if t in stops), None))
    return out


def lora_run(model, batches, heldout: list[dict], collate, lr: float, r: int = 16, alpha: int = 32, targets=QKVO,
             dropout: float = 0.05, seed: int = 42) -> tuple[object, dict]:
    """Wrap ``model`` with fresh LoRA adapters (seeded), train one AdamW step per batch, and measure: trainable
    parameters, every step's training loss, the held-out loss per summary token (``heldout`` batched by ``collate``,
the correct collator, whatever the training batches were built with). Returns the PEFT model (call
    ``.unload()`` to get the untouched base back) and the measurements."""
    from peft import LoraConfig, get_peft_model

    from .ablation import held_out_losses, train_steps
    from .memory import count_parameters

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                  lora_dropout=dropout, bias="none", task_type="CAUSAL_LM"))
    losses = train_steps(peft_model, batches, lr=lr)
    held = held_out_losses(peft_model, heldout, collate)
    return peft_model, {"trainable": count_parameters(peft_model)[0], "train_loss": losses,
                        "heldout": float(held.mean())}
