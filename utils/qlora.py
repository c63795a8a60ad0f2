"""The QLoRA recipe of chapter 3, in one place: notebook 03 shows it step by step and the
command-line fine-tuner (``scripts/finetune.py``) reuses it. A 4-bit base (NF4 + double quantization),
frozen and prepared with ``prepare_model_for_kbit_training``, LoRA on the attention projections,
chat-template examples with the loss on the summary only, the Transformers ``Trainer`` with the brief's
memory savers."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .prompts import IGNORE_INDEX, build_chat_example, chat_prompt_ids


@dataclass(frozen=True)
class LoRASettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    extra: dict = field(default_factory=dict)


def lora_config(s: LoRASettings = LoRASettings()):
    from peft import LoraConfig, TaskType

    return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.targets),
                      bias="none", task_type=TaskType.CAUSAL_LM, **s.extra)


def prepare_4bit_base(model, gradient_checkpointing: bool = True):
    """Freeze the 4-bit base for training: ``prepare_model_for_kbit_training`` freezes every weight, casts the
    unquantized 16-bit ones (embeddings, norms, head) to fp32 and turns on gradient checkpointing, non-reentrant
    (which needs no input that requires gradients; transformers makes the embedding output require them anyway).
    On a GPU (or with bf16 on a CPU) this changes the model's numbers: evaluate "the base" after it,
    so that the base and the adapted model are the same model but for the adapters."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def attach_lora(model, s: LoRASettings = LoRASettings()):
    """Wrap a prepared base with LoRA adapters (A random, B zero: the adapted model starts as the base)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(s))


def add_lora(model, s: LoRASettings = LoRASettings(), gradient_checkpointing: bool = True):
    """Both steps at once: ``prepare_4bit_base`` then ``attach_lora``."""
    return attach_lora(prepare_4bit_base(model, gradient_checkpointing), s)


def tokenize_examples(frame, tokenizer, max_length: int) -> list[dict]:
    """One chat-template example per (dialogue, summary) row; an error names the row (and its id)."""
    if missing := [c for c in ("dialogue", "summary") if c not in frame.columns]:
        raise ValueError(f"the examples lack the column(s) {missing} (they have {list(frame.columns)}): a training "
                         f"split of utils.data.load_dialogsum has 'dialogue' and 'summary'.")
    out, ids = [], frame["id"] if "id" in frame.columns else range(len(frame))
    for i, (rid, d, s) in enumerate(zip(ids, frame["dialogue"], frame["summary"])):
        try:
            out.append(build_chat_example(tokenizer, d, s, max_length))
        except ValueError as e:
            raise ValueError(f"example {i} (id {rid}): {e}") from None
    return out


class PadCollator:
    """Right-pads a batch: ``pad_id`` for inputs, 0 for the attention mask, IGNORE_INDEX for labels."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        n = max(len(b["input_ids"]) for b in batch)
        pad = lambda seq, v: list(seq) + [v] * (n - len(seq))  # noqa: E731
        return {"input_ids": torch.tensor([pad(b["input_ids"], self.pad_id) for b in batch]),
                "attention_mask": torch.tensor([pad(b["attention_mask"], 0) for b in batch]),
                "labels": torch.tensor([pad(b["labels"], IGNORE_INDEX) for b in batch])}


def optimizer_name() -> str:
    """Paged 8-bit AdamW on CUDA (its states of 100,000 elements or more page to CPU RAM under memory pressure; an
    r = 16 adapter's matrices on q, k, v, o are smaller and stay ordinary GPU tensors); on a CPU there is no GPU
    memory to page from (bitsandbytes falls back to unpaged, with a warning), and an adapter's states are small, so
    plain AdamW."""
    return "paged_adamw_8bit" if torch.cuda.is_available() else "adamw_torch"


def training_arguments(sizes, output_dir, dtype: torch.dtype, **overrides):
    from transformers import TrainingArguments

    args = dict(output_dir=str(output_dir), num_train_epochs=sizes.epochs, per_device_train_batch_size=sizes.batch_size,
                gradient_accumulation_steps=sizes.grad_accum, learning_rate=sizes.lr, lr_scheduler_type="constant",
                warmup_steps=0, optim=optimizer_name(), activation_checkpointing=True,
                activation_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1, save_strategy="no",
                report_to="none", disable_tqdm=True, seed=42, data_seed=42, remove_unused_columns=False,
                fp16=dtype == torch.float16, bf16=dtype == torch.bfloat16, dataloader_pin_memory=False,
                logging_nan_inf_filter=False,     # log a NaN loss as it is (loss_printer stops on it), not the mean
                # without CUDA, the CPU (the script's processes then talk over gloo): on a Mac the Trainer would pick
                # Apple's mps, away from the 4-bit model bitsandbytes keeps on the CPU (and bf16 on a CPU needs it)
                use_cpu=not torch.cuda.is_available())
    if old := {"gradient_checkpointing", "gradient_checkpointing_kwargs"} & overrides.keys():   # ignored beside the new
        raise TypeError(f"{sorted(old)}: pass activation_checkpointing(_kwargs), transformers' names for them")
    args.update(overrides)
    return TrainingArguments(**args)


def generate_summaries(model, tokenizer, dialogues, max_new_tokens: int, batch_size: int = 8,
                       max_prompt_tokens: int = 1024) -> list[str]:
    """Greedy summaries: ``utils.generate.generate_summaries`` (one function for every model family)."""
    from .generate import generate_summaries as generate

    return generate(model, tokenizer, list(dialogues), max_new_tokens, batch_size=batch_size,
                    max_prompt_tokens=max_prompt_tokens)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the adapter is ruined from that step on."""


# What to do after a non-finite loss, in a notebook: (after fp16, where to re-run from; otherwise, what to change)
NOTEBOOK_REMEDY = ("re-run from the cell that loads the model",
                   "lower the learning rate (e.g. COURSE_OVERRIDE=qlora.lr=1e-4) and re-run from section 1, which reads it")


def check_finite_loss(logs: dict | None, step: int, args, remedy: tuple[str, str] = NOTEBOOK_REMEDY) -> None:
    """Raise :class:`NonFiniteLossError`, with what to change, when a logged training loss is NaN or infinite
    (the Trainer logs it as it is with ``logging_nan_inf_filter=False``, as ``training_arguments`` sets)."""
    import math

    if logs and "loss" in logs and not math.isfinite(logs["loss"]):
        precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
        raise NonFiniteLossError(
            f"the training loss is {logs['loss']} at step {step} ({precision}): training stopped. In fp16 (a T4) a "
            f"model's activations can overflow (T5 and some Qwen models do), and then no step trains (the loss scaler "
            f"skips each one): set COURSE_MIXED_PRECISION=no (fp32: slower, more memory) and {remedy[0]}. In fp32 or "
            f"bf16 the weights are poisoned: {remedy[1]}.")


def stop_on_non_finite_loss(remedy: tuple[str, str] = NOTEBOOK_REMEDY):
    """A Trainer callback that stops at the first NaN or infinite logged loss (:func:`check_finite_loss`)."""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            check_finite_loss(logs, state.global_step, args, remedy)

    return StopOnNonFiniteLoss()


def loss_printer(every: int = 5):
    """A Trainer callback that prints one short line every ``every`` optimizer steps (and at the last):
    step, training loss, seconds so far. A live view of the loss without a line per step. It stops training at
    the first NaN or infinite loss (:func:`check_finite_loss`): in fp16, on a T4, a model's activations can
    overflow, and the Trainer would otherwise go on, logging the window's mean instead."""
    import time

    from transformers import TrainerCallback

    class LossPrinter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            step, last = state.global_step, state.global_step == state.max_steps
            check_finite_loss(logs, step, args)
            if logs and "loss" in logs and (step % every == 0 or last or step == 1):
                print(f"step {step:>4}/{state.max_steps} | loss {logs['loss']:.3f} | "
                      f"{time.perf_counter() - self.t0:5.0f} s", flush=True)

    return LossPrinter()
