"""Notebook 03's QLoRA recipe as a command-line fine-tuner that scales out with Accelerate.

    python -m scripts.finetune --config configs/smoke.toml [--set key=value ...] [--dry-run]
    accelerate launch --config_file configs/accelerate/ddp.yaml -m scripts.finetune --config configs/colab.toml

Run it from the course root (the folder that holds ``utils/``, ``scripts/`` and ``configs/``).

One process or several, the same code: the Transformers ``Trainer`` reads the distributed environment
that ``accelerate launch`` sets up (DDP, or FSDP from an Accelerate config file), gives each process its
own shard of every global batch, all-reduces the adapters' gradients and saves from the main process.
The recipe itself is not repeated here: loading, LoRA, chat-template examples, training arguments,
generation and ROUGE come from ``utils.models``, ``utils.qlora``, ``utils.prompts`` and ``utils.metrics``,
exactly as notebook 03 uses them; the config's keys, their checks and the plan are in
``scripts/finetune_config.py`` (notebook 03 runs ``--dry-run`` to show the plan).

Where CUDA is present the base is loaded in 4-bit (QLoRA). On a CPU it is the dense fp32 checkpoint
(LoRA, same code): bitsandbytes' 4-bit path works on a CPU but is slow, and data-parallel training over
4-bit weights on a CPU is not something anyone runs.

The whole config is checked before anything heavy happens: an unknown key, a wrong type, a missing
dataset or a max_length too short fails within seconds, before any model is loaded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from utils.data import DataError, load_dialogsum, take
from scripts.finetune_config import ALLOWED_KEYS, ConfigError, Plan, load_config, make_plan
from utils.models import ModelAccessError
from utils.paths import show
from utils.results import atomic_write_text, replace_folder

INTERRUPTED_EXIT_CODE = 75          # what a run stopped by ``stop_after_steps`` exits with (EX_TEMPFAIL)
# what must not change between an interrupted run and its resumption
_SAME_RUN_KEYS = ("model", "train", "epochs", "max_steps", "global_batch", "max_length", "lr", "lora_r",
                  "lora_alpha", "lora_dropout", "lora_targets", "seed", "quantized", "train_data_sha256")


def _fsdp_enabled() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


# ----------------------------------------------------------------------------- resuming: the same run

def check_same_run(plan: Plan, model: str, train_data_sha256: str | None = None,
                   data_source: str | None = None) -> None:
    """Resuming continues the *same* run: refuse when what defines it changed since the checkpoint, the
    training data included (``COURSE_DATA_DIR`` or ``data_dir`` pointing elsewhere)."""
    saved = plan.output_dir / "finetune_config.json"
    if plan.checkpoint is None or not saved.is_file():
        return
    try:
        before = json.loads(saved.read_text(encoding="utf-8")).get("run", {})
    except (ValueError, OSError) as e:
        raise ConfigError(f"{show(saved)} is damaged ({type(e).__name__}), so resuming cannot check it is the same "
                          f"run. Set resume=false to start over there, or use another output_dir.") from None
    now = plan.run_identity(model, train_data_sha256, data_source)
    changed = {k: (before.get(k), now[k]) for k in _SAME_RUN_KEYS if k in before and before[k] != now[k]}
    if "train_data_sha256" in changed:
        raise ConfigError(f"{show(plan.output_dir)} holds checkpoints trained on other data ({before.get('data_source')}; "
                          f"now: {data_source}): the DialogSum training files changed (COURSE_DATA_DIR or data_dir "
                          f"points elsewhere, or the files were edited), and resuming would continue the old run on "
                          f"new data. Point COURSE_DATA_DIR/data_dir back to the old files, or set resume=false to "
                          f"start over there, or use another output_dir.")
    if changed:
        diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"{show(plan.output_dir)} holds checkpoints of a different run ({diff}). Use another "
                          f"output_dir, or set resume=false to start over there.")


# ----------------------------------------------------------------------------- model and adapters

def load_model(name_or_path: str, quantized: bool, token: str | None, fsdp: bool):
    """The base model and its tokenizer: notebook 03's 4-bit loader, or the dense checkpoint."""
    from utils.models import compute_dtype, load_causal_lm_4bit

    if quantized:
        # FSDP flattens parameters of one dtype: the packed 4-bit codes are then stored as the
        # compute dtype (bnb_4bit_quant_storage), as in PEFT's FSDP-QLoRA recipe.
        return load_causal_lm_4bit(name_or_path, token=token, quant_storage=compute_dtype() if fsdp else None)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=compute_dtype(), token=token)
    tok = AutoTokenizer.from_pretrained(name_or_path, token=token)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def attach_lora(model, settings, gradient_checkpointing: bool, fsdp: bool):
    """Notebook 03's ``add_lora`` (freeze, ``prepare_model_for_kbit_training``, LoRA), except where its
    fp32 upcast of every 16-bit tensor would hurt: under FSDP (one dtype per flattened parameter) and on
    a dense 16-bit base (it would double the weights). There: freeze, then the same LoRA config."""
    from utils.qlora import add_lora, lora_config

    dense_16bit = not getattr(model, "is_loaded_in_4bit", False) and model.dtype != torch.float32
    if not fsdp and not dense_16bit:
        return add_lora(model, settings, gradient_checkpointing=gradient_checkpointing)
    from peft import get_peft_model

    model.requires_grad_(False)
    if fsdp and gradient_checkpointing:
        model.enable_input_require_grads()                # reentrant checkpointing under FSDP (see build_trainer)
    return get_peft_model(model, lora_config(settings))


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the names they are saved with (``adapter_model.safetensors``)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(model).items()}


def adapter_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the adapter's names and float32 bytes: equal fingerprints = bitwise equal adapters."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].float().contiguous().numpy().tobytes())
    return h.hexdigest()


def read_adapter(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(Path(folder) / "adapter_model.safetensors")).items()}


# ----------------------------------------------------------------------------- training helpers

class RecordingCollator:
    """notebook 03's ``PadCollator``, remembering which examples (by DialogSum id) this process saw."""

    def __init__(self, pad_id: int):
        from utils.qlora import PadCollator

        self.pad, self.seen = PadCollator(pad_id), []

    def __call__(self, batch: list[dict]) -> dict:
        self.seen += [b["id"] for b in batch]
        return self.pad(batch)


# After a non-finite loss, in the script: (after fp16, how to run again; otherwise, what to change). resume=false:
# a checkpoint saved between that step and the log that showed it may hold ruined weights.
SCRIPT_REMEDY = ("run the same command again with --set resume=false",
                 "lower lr in the config (e.g. lr = 1e-4) and run again with --set resume=false")


def _callbacks(plan: Plan):
    from transformers import TrainerCallback

    from utils.qlora import stop_on_non_finite_loss

    cfg = plan.cfg

    class Fingerprints(TrainerCallback):
        """After every optimizer step: this process's adapter fingerprint (for the report)."""

        def __init__(self):
            self.model, self.by_step = None, {}

        def on_train_begin(self, args, st, control, model=None, **kw):
            self.model = model
            self.by_step[st.global_step] = adapter_fingerprint(adapter_state(model))

        def on_step_end(self, args, st, control, **kw):
            self.by_step[st.global_step] = adapter_fingerprint(adapter_state(self.model))

    class Interrupt(TrainerCallback):
        """Simulates a crash after optimizer step ``stop_after_steps`` (after its checkpoint, if one is due):
        ``os._exit`` skips every clean-up, as a killed process would."""

        def _die(self, st):
            print(f"\nsimulated interruption after step {st.global_step} (stop_after_steps); "
                  f"run the same command again to resume.", flush=True)
            sys.stderr.flush()
            os._exit(INTERRUPTED_EXIT_CODE)

        def on_step_end(self, args, st, control, **kw):
            if st.global_step >= cfg.stop_after_steps and not control.should_save:
                self._die(st)

        def on_save(self, args, st, control, **kw):
            if st.global_step >= cfg.stop_after_steps:
                self._die(st)

    out = [stop_on_non_finite_loss(SCRIPT_REMEDY)]
    fingerprints = Fingerprints() if cfg.report and not _fsdp_enabled() else None
    if fingerprints:
        out.append(fingerprints)
    if cfg.stop_after_steps is not None:
        out.append(Interrupt())
    return out, fingerprints


def _generate(model, tok, dialogues: list[str], plan: Plan, state, what: str) -> tuple[list[str], dict]:
    """Greedy summaries with notebook 03's ``generate_summaries``; each process takes a contiguous
    slice of the dialogues and the main process gathers them in order. A progress bar per batch.
    Returns every prediction, in the dialogues' order, and this process's own (their indices and predictions)."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from utils.qlora import generate_summaries

    b = plan.cfg.eval_batch_size
    with state.split_between_processes(list(range(len(dialogues)))) as mine:
        preds = []
        for i in tqdm(range(0, len(mine), b), desc=f"generating ({what})", disable=not state.is_main_process,
                      unit="batch"):
            preds += generate_summaries(model, tok, [dialogues[k] for k in mine[i:i + b]], plan.sizes.max_new_tokens,
                                        batch_size=b)
    return gather_object(preds), {"indices": mine, "predictions": preds}


def evaluate(model, tok, eval_df, plan: Plan, state) -> tuple[dict, dict]:
    """The metrics (ROUGE of the gathered predictions), and this process's own share (for the report)."""
    from utils.metrics import rouge

    dialogues = list(eval_df["dialogue"])
    scores = {}
    preds, own = _generate(model, tok, dialogues, plan, state, "fine-tuned")
    scores["finetuned"] = rouge(preds, eval_df["references"])
    if plan.cfg.compare_base:
        with model.disable_adapter():
            base, _ = _generate(model, tok, dialogues, plan, state, "base")
        scores["base"] = rouge(base, eval_df["references"])
    return {"rouge": scores, "n_eval": len(preds), "examples": [        # len(preds): after the gather
        {"id": i, "prediction": p} for i, p in zip(eval_df["id"][:3], preds[:3])]}, own


def _write_json(path: Path, payload: dict, rounded: bool = True) -> None:
    from utils.results import _clean

    atomic_write_text(path, json.dumps(_clean(payload) if rounded else payload, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- the run

@dataclass
class Prepared:
    """What a run needs before any model is loaded."""
    model_path: str
    model_name: str
    token: str | None
    data_source: str
    examples: list[dict]
    eval_df: object
    train_data_sha256: str = ""
    data_where: str = ""


def prepare(plan: Plan, verbose: bool = True) -> Prepared:
    """Data, the model's name and the tokenized examples: cheap steps, so that a missing dataset, a
    gated model without access or a max_length too short stops the run before any model is loaded."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from utils.models import (check_gpu_for, check_llm_access, check_model_source, check_peft_can_inject, hf_token,
                              llm_display_name, llm_name_or_path)
    from utils.qlora import tokenize_examples

    cfg, sizes = plan.cfg, plan.sizes
    check_gpu_for(plan.profile)                            # colab/full on a CPU: hours; stop now unless asked
    check_peft_can_inject()                                # an old torchao: peft would refuse LoRA after loading
    if cfg.data_dir:
        folder = Path(cfg.data_dir).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"data_dir={cfg.data_dir!r} is not a folder (read from {Path.cwd()}). Point it at the "
                              f"folder holding dialogsum/ (see data/README.md), or leave the key out.")
        os.environ["COURSE_DATA_DIR"] = str(folder.resolve())
    model_path = cfg.model or llm_name_or_path(plan.profile)
    check_model_source(model_path, "model" if cfg.model else "COURSE_LLM", plan.profile.online)
    splits, source = load_dialogsum(online=plan.profile.online, splits=("train", "test"), verbose=verbose)
    train_df = take(splits["train"], sizes.train, "train", verbose=verbose)
    eval_df = take(splits["test"], sizes.eval, "test", verbose=verbose)
    data_sha = hashlib.sha256(json.dumps(train_df[["id", "dialogue", "summary"]].values.tolist()).encode()).hexdigest()
    data_where = os.environ.get("COURSE_DATA_DIR") or source
    check_same_run(plan, llm_display_name(model_path), data_sha, data_where)
    token = hf_token()
    if not Path(model_path).exists() and plan.profile.online:
        check_llm_access(model_path, plan.profile.llm_fallback, token)
    tokenizer, examples, chunk = AutoTokenizer.from_pretrained(model_path, token=token), [], 200
    try:
        with tqdm(total=len(train_df), desc="tokenizing", unit="dialogue", disable=not verbose) as bar:
            for i in range(0, len(train_df), chunk):
                examples += tokenize_examples(train_df.iloc[i:i + chunk], tokenizer, sizes.max_length)
                bar.update(len(train_df.iloc[i:i + chunk]))
    except ValueError as e:
        raise ConfigError(f"max_length={sizes.max_length} does not fit the training examples: {e} "
                          f"Raise max_length.") from None
    for ex, i in zip(examples, train_df["id"]):
        ex["id"] = str(i)                                  # not used by the padding; recorded for the report
    return Prepared(model_path, llm_display_name(model_path), token, source, examples, eval_df, data_sha, data_where)


def build_trainer(plan: Plan, model, tok, examples: list[dict], fsdp: bool):
    """The Transformers ``Trainer`` with notebook 03's training arguments, plus what a script needs:
    progress bars, checkpoints to resume from, one process per device."""
    from transformers import Trainer

    from utils.models import compute_dtype
    from utils.qlora import training_arguments

    cfg = plan.cfg
    overrides = dict(disable_tqdm=False, logging_steps=cfg.logging_steps, seed=cfg.seed, data_seed=cfg.seed,
                     activation_checkpointing=cfg.gradient_checkpointing, save_total_limit=cfg.save_total_limit,
                     save_strategy="steps" if cfg.save_steps else "epoch", ddp_find_unused_parameters=False)
    if cfg.save_steps:
        overrides["save_steps"] = cfg.save_steps
    if cfg.max_steps:
        overrides["max_steps"] = cfg.max_steps
    if cfg.optim or fsdp:
        overrides["optim"] = cfg.optim or "adamw_torch"   # FSDP shards plain AdamW states, not bitsandbytes' paged ones
    if fsdp:                                              # as in PEFT's FSDP-QLoRA example
        overrides["activation_checkpointing_kwargs"] = {"use_reentrant": True}
    args = training_arguments(plan.sizes, plan.output_dir, compute_dtype(), **overrides)
    collator = RecordingCollator(tok.pad_token_id)
    callbacks, fingerprints = _callbacks(plan)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator,
                      processing_class=tok, callbacks=callbacks)
    if trainer.is_fsdp_enabled:                           # one FSDP unit per decoder layer, LoRA layers included
        from peft.utils.other import fsdp_auto_wrap_policy

        trainer.accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(trainer.model)
    return trainer, collator, fingerprints


def run(plan: Plan) -> dict:
    """Prepare (cheap), load the model, train or resume, save the adapter once, evaluate. Returns the metrics."""
    from accelerate import PartialState

    from utils.memory import PeakMemory, Timer
    from utils.qlora import LoRASettings

    cfg = plan.cfg
    # processes: one per GPU under `accelerate launch` (gloo on CPUs), else just this one. The main
    # process goes first wherever something may be downloaded or converted; the others read the cache.
    state = PartialState(cpu=not torch.cuda.is_available())
    say = print if state.is_main_process else (lambda *a, **k: None)
    with state.main_process_first():
        data = prepare(plan, verbose=state.is_main_process)
    say(plan.describe())
    fsdp = _fsdp_enabled()
    old = sorted(plan.output_dir.glob("checkpoint-*")) if not cfg.resume and not cfg.eval_only else []
    if old and state.is_main_process:                     # resume=false: start over, without stale checkpoints
        say(f"resume=false: deleting {len(old)} old checkpoint(s) in {show(plan.output_dir)}")
        for folder in old:
            shutil.rmtree(folder)
    if plan.incomplete and state.is_main_process:         # half-written: never resumed, and in the Trainer's way
        for folder, why in plan.incomplete:
            say(f"deleting {show(folder)}: {why}")
            shutil.rmtree(folder, ignore_errors=True)
    state.wait_for_everyone()
    with Timer() as load_time, state.main_process_first():
        model, tok = load_model(data.model_path, plan.quantized, data.token, fsdp)
    say(f"model        : {data.model_name} loaded in {load_time.seconds:.0f} s")
    if cfg.eval_only:
        from peft import PeftModel

        metrics, _ = evaluate(PeftModel.from_pretrained(model, str(plan.adapter_dir)), tok, data.eval_df, plan, state)
        if state.is_main_process:
            _write_json(plan.output_dir / "eval_metrics.json", metrics)
            _print_scores(metrics)
        _finish(state)
        return metrics
    torch.manual_seed(cfg.seed)                           # the same LoRA initialisation in every process
    model = attach_lora(model, LoRASettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                            targets=tuple(cfg.lora_targets)), cfg.gradient_checkpointing, fsdp)
    trainer, collator, fingerprints = build_trainer(plan, model, tok, data.examples, fsdp)
    if state.is_main_process:
        _write_json(plan.output_dir / "finetune_config.json", {
            "config": asdict(cfg), "world_size": plan.world_size,
            "run": plan.run_identity(data.model_name, data.train_data_sha256, data.data_where)},
            rounded=False)                                # compared exactly when a run resumes
    say(f"distributed  : {state.distributed_type.value}, backend {state.backend or '-'}, {state.num_processes} "
        f"process(es); optimizer {getattr(trainer.args.optim, 'value', trainer.args.optim)}")

    with Timer() as train_time, PeakMemory() as peak:
        trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan.checkpoint else None)
    if trainer.is_fsdp_enabled:                           # gather the sharded adapter into one file
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    staging = plan.output_dir / ".adapter.tmp"            # the same name in every process (FSDP gathers into it)
    if state.is_main_process and staging.exists():
        shutil.rmtree(staging)                             # left by a run killed while saving
    state.wait_for_everyone()
    trainer.save_model(str(staging))                       # writes from the main process only
    state.wait_for_everyone()
    if state.is_main_process:
        replace_folder(staging, plan.adapter_dir)          # atomic: a half-saved adapter never sits in adapter/
    state.wait_for_everyone()
    say(f"adapter      : saved once, by the main process, to {show(plan.adapter_dir)}")

    metrics = {"profile": plan.profile.name, "model": data.model_name, "data_source": data.data_source,
               "processes": state.num_processes, "distributed_type": state.distributed_type.value,
               "quantized_4bit": plan.quantized, "global_batch": plan.global_batch,
               "optimizer_steps": trainer.state.global_step,
               "resumed_from": plan.checkpoint.name if plan.checkpoint else None,
               "losses": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
               "train_seconds": round(train_time.seconds, 1), "peak_memory_kind": peak.kind,
               "peak_memory_mb_per_process": gather_list([round(peak.peak_mb)])}
    evaluated = {}                                        # this process's share of the evaluation (for the report)
    if cfg.evaluate and not trainer.is_fsdp_enabled:
        scores, evaluated = evaluate(trainer.model, tok, data.eval_df, plan, state)
        metrics.update(scores)
    elif cfg.evaluate:
        say("evaluation   : skipped under FSDP (the weights are sharded); score the saved adapter on one GPU "
            "with the same config and --set eval_only=true")
    if state.is_main_process:
        _write_json(plan.output_dir / "metrics.json", metrics)
        _print_scores(metrics)
    if cfg.report:
        _write_json(plan.output_dir / "report" / f"rank{state.process_index}.json", {
            "rank": state.process_index, "world_size": state.num_processes,
            "distributed_type": state.distributed_type.value, "backend": state.backend,
            "ids_seen": collator.seen, "fingerprints": fingerprints.by_step if fingerprints else {},
            "wrote_adapter": bool(trainer.args.should_save), "losses": metrics["losses"],
            "resumed_from": metrics["resumed_from"], "evaluated": evaluated})
    _finish(state)
    return metrics


def gather_list(items: list) -> list:
    """Every process's items, concatenated in process order (the items themselves when alone)."""
    from accelerate.utils import gather_object

    return gather_object(items)


def _print_scores(metrics: dict) -> None:
    if metrics.get("losses"):
        first, last = metrics["losses"][0][1], metrics["losses"][-1][1]
        print(f"training     : {metrics['optimizer_steps']} optimizer steps, loss {first:.3f} -> {last:.3f}, "
              f"{metrics['train_seconds']:.0f} s; peak memory per process (MB): "
              f"{metrics['peak_memory_mb_per_process']}")
    for name, s in metrics.get("rouge", {}).items():
        print(f"ROUGE {name:<9}: " + ", ".join(f"{k} {v:.4f}" for k, v in s.items()))


def _finish(state) -> None:
    """Wait for every process, then close the process group (gloo aborts at exit otherwise)."""
    if state.use_distributed:
        state.wait_for_everyone()
        state.destroy_process_group()


# ----------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.finetune",
        description="Fine-tune an LLM on DialogSum with notebook 03's QLoRA recipe; runs unchanged under "
                    "`accelerate launch` (DDP or FSDP).",
        epilog=f"Config keys: {', '.join(ALLOWED_KEYS)}. See configs/ and the README, section 'Beyond one GPU'.")
    p.add_argument("--config", help="TOML file (see configs/); keys left out come from the profile")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set epochs=1 --set lora_targets=q_proj,v_proj")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check a real run makes (config, output_dir, checkpoints, data, model folder or "
                        "access, tokenized lengths), print the plan; load no model and write nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        plan = make_plan(cfg)
        if args.dry_run:
            prepare(plan)                                  # data, model name/folder, same run, tokenized lengths
            print(plan.describe())
            print("dry run: every check passed; no model was loaded and nothing was written.")
            return 0
        run(plan)
    except (ConfigError, DataError, ModelAccessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
