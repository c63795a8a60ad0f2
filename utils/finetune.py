"""Notebook 03's QLoRA recipe as a command-line fine-tuner that scales out with Accelerate.

    python -m utils.finetune --config configs/smoke.toml [--set key=value ...] [--dry-run]
    accelerate launch --config_file configs/accelerate/ddp.yaml -m utils.finetune --config configs/colab.toml

One process or several, the same code: the Transformers ``Trainer`` reads the distributed environment
that ``accelerate launch`` sets up (DDP, or FSDP from an Accelerate config file), gives each process its
own shard of every global batch, all-reduces the adapters' gradients and saves from the main process.
The recipe itself is not repeated here: loading, LoRA, chat-template examples, training arguments,
generation and ROUGE come from ``utils.models``, ``utils.qlora``, ``utils.prompts`` and ``utils.metrics``,
exactly as notebook 03 uses them.

Where CUDA is present the base is loaded in 4-bit (QLoRA). On a CPU it is the dense fp32 checkpoint
(LoRA, same code): bitsandbytes' 4-bit path works on a CPU but is slow, and data-parallel training over
4-bit weights on a CPU is not something anyone runs.

A config file is TOML with the keys of :class:`FinetuneConfig`; every size left out comes from the
profile table (``utils/profiles.py``). The whole config is checked before anything heavy happens: an
unknown key, a wrong type, a missing dataset or a max_length too short fails within seconds, before any
model is loaded.
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from .data import DataError, load_dialogsum, take
from .models import ModelAccessError
from .paths import CACHE_DIR, show
from .results import atomic_write_text, replace_folder
from .profiles import PROFILES, Profile, QLoRASizes, get_profile

INTERRUPTED_EXIT_CODE = 75          # what a run stopped by ``stop_after_steps`` exits with (EX_TEMPFAIL)
QUANTIZE_CHOICES = ("auto", "4bit", "none")


class ConfigError(ValueError):
    """A config file or a ``--set`` override is wrong; the message names the key and what to do."""


@dataclass
class FinetuneConfig:
    """Every key a config file may hold. ``None`` means: the profile's value (sizes) or automatic."""
    # what to train, on what, where to write
    profile: str | None = None            # smoke | colab | full; None: $COURSE_PROFILE, else automatic
    model: str | None = None              # hub id or folder; None: the profile's LLM ($COURSE_LLM overrides)
    data_dir: str | None = None           # folder with the real DialogSum files (as $COURSE_DATA_DIR)
    output_dir: str | None = None         # None: .cache/finetune/<profile>
    # sizes (None: the profile's); train/eval also accept "all"
    train: int | str | None = None        # training dialogues
    eval: int | str | None = None         # test dialogues scored with ROUGE
    epochs: int | None = None
    max_steps: int | None = None          # optimizer steps; overrides epochs
    batch_size: int | None = None         # per process, i.e. per GPU
    grad_accum: int | None = None
    global_batch_size: int | None = None  # if set: grad_accum = global / (batch_size x processes)
    max_length: int | None = None         # prompt + summary tokens
    max_new_tokens: int | None = None
    lr: float | None = None
    # LoRA (notebook 03's settings)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # engine
    quantize: str = "auto"                # auto: 4-bit where CUDA is present, dense on a CPU | 4bit | none
    gradient_checkpointing: bool = True
    optim: str | None = None              # None: paged 8-bit AdamW on a GPU (plain AdamW with FSDP or a CPU)
    seed: int = 42
    logging_steps: int = 1
    save_steps: int | None = None         # checkpoint every N optimizer steps; None: once per epoch
    save_total_limit: int = 2
    resume: bool = True                   # continue from the last checkpoint in output_dir; false: delete them
    # evaluation
    evaluate: bool = True                 # ROUGE on `eval` test dialogues after training
    compare_base: bool = True             # ... and of the base model (adapter disabled), for the gain
    eval_batch_size: int = 8
    eval_only: bool = False               # score the adapter already saved in output_dir, no training
    # for tests and debugging
    report: bool = False                  # each process writes report/rank<k>.json (ids seen, adapter hashes)
    stop_after_steps: int | None = None   # simulate a crash: exit after this step (after its save_steps checkpoint)


ALLOWED_KEYS = tuple(f.name for f in fields(FinetuneConfig))
_HINTS = typing.get_type_hints(FinetuneConfig)
_ALL_OK = ("train", "eval")                           # the string "all" is allowed there
_POSITIVE = ("train", "eval", "epochs", "max_steps", "batch_size", "grad_accum", "global_batch_size",
             "max_new_tokens", "lora_r", "lora_alpha", "logging_steps", "save_steps", "save_total_limit",
             "eval_batch_size", "stop_after_steps")
# what must not change between an interrupted run and its resumption
_SAME_RUN_KEYS = ("model", "train", "epochs", "max_steps", "global_batch", "max_length", "lr", "lora_r",
                  "lora_alpha", "lora_dropout", "lora_targets", "seed", "quantized", "train_data_sha256")
MAX_SEED = 2**32 - 1                                   # numpy's seeds (the Trainer seeds numpy too)


# ----------------------------------------------------------------------------- config: read and check

def _type_name(tp) -> str:
    """How a key's type reads in an error: "an integer", "a number", "a list of strings"..."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return "a list of strings"
    return {bool: "true or false", str: "a string", int: "an integer", float: "a number"}[tp]


def _expected(key: str) -> str:
    tp = _HINTS[key]
    if key in _ALL_OK:
        return 'an integer or "all"'
    text = _type_name(tp)
    if type(None) in typing.get_args(tp):
        text += " (or leave the key out for the default)"
    return text


def _matches(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(tp)[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(value) -> str:
    return f"{type(value).__name__} ({value!r})"


def _parse_override(item: str):
    """``key=value`` from the command line; the value is read as TOML (numbers, true/false, lists,
    quoted strings) and otherwise kept as a plain string, so ``model=Qwen/Qwen2.5-3B-Instruct`` works."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set epochs=1")
    key, raw = (s.strip() for s in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if key in _HINTS and typing.get_origin(_HINTS[key]) is list and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]       # lora_targets=q_proj,v_proj
    return key, value


def check_config(values: dict, where: str = "config") -> FinetuneConfig:
    """A :class:`FinetuneConfig` from plain values, or a :class:`ConfigError` naming the first problem."""
    unknown = [k for k in values if k not in ALLOWED_KEYS]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, ALLOWED_KEYS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown key {k!r}.{hint} Allowed keys: {', '.join(ALLOWED_KEYS)}.")
    for k, v in values.items():
        if isinstance(v, dict):
            raise ConfigError(f"{where}: [{k}] is a table, but the config is flat: put every key at the top "
                              f"level (allowed: {', '.join(ALLOWED_KEYS)}).")
        if not _matches(v, _HINTS[k]) or (k in _ALL_OK and isinstance(v, str) and v != "all"):
            raise ConfigError(f"{where}: key {k!r} expects {_expected(k)}, got {_describe(v)}.")
        if k in _POSITIVE and isinstance(v, int) and v < 1:
            raise ConfigError(f"{where}: key {k!r} must be at least 1, got {v}.")
    cfg = FinetuneConfig(**values)
    if cfg.profile is not None and cfg.profile not in PROFILES:
        raise ConfigError(f"{where}: profile {cfg.profile!r} is not a profile; choose one of {', '.join(PROFILES)}.")
    if cfg.quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"{where}: quantize {cfg.quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}.")
    if cfg.lr is not None and not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ConfigError(f"{where}: lr must be a positive, finite number (LoRA: 1e-4 to 3e-4), got {cfg.lr}.")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"{where}: seed must be between 0 and {MAX_SEED:,} (e.g. 42), got {cfg.seed}.")
    if not 0 <= cfg.lora_dropout < 1:
        raise ConfigError(f"{where}: lora_dropout must be in [0, 1), got {cfg.lora_dropout}.")
    if not cfg.lora_targets or not all(t.strip() for t in cfg.lora_targets):
        raise ConfigError(f"{where}: lora_targets must list module names, e.g. [\"q_proj\", \"v_proj\"].")
    if cfg.max_length is not None and cfg.max_length < 32:
        raise ConfigError(f"{where}: max_length {cfg.max_length} is too short for a chat prompt and a summary "
                          f"(at least 32 tokens).")
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> FinetuneConfig:
    """Read a TOML config (optional) and apply ``key=value`` overrides; check everything."""
    values: dict = {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = show(p)
        if not p.is_file():
            raise ConfigError(f"config file {where} not found; see configs/ for examples.")
        try:
            values = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where} is not valid TOML: {e}.") from None
    check_config(values, where)                     # the file alone, so errors point at the file
    for item in overrides:
        key, value = _parse_override(item)
        check_config({key: value}, f"--set {key}")
        values[key] = value
    return check_config(values, where)


# ----------------------------------------------------------------------------- the plan: sizes, processes

@dataclass
class Plan:
    cfg: FinetuneConfig
    profile: Profile
    sizes: QLoRASizes
    world_size: int
    global_batch: int
    output_dir: Path
    checkpoint: Path | None
    quantized: bool
    incomplete: list = field(default_factory=list)        # (checkpoint folder, what is wrong): never resumed


    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"

    def run_identity(self, model: str, train_data_sha256: str | None = None, data_source: str | None = None) -> dict:
        c, s = self.cfg, self.sizes
        return {"model": model, "train_data_sha256": train_data_sha256, "data_source": data_source,
                "train": s.train, "epochs": s.epochs, "max_steps": c.max_steps,
                "global_batch": self.global_batch, "max_length": s.max_length, "lr": s.lr, "lora_r": c.lora_r,
                "lora_alpha": c.lora_alpha, "lora_dropout": c.lora_dropout, "lora_targets": list(c.lora_targets),
                "seed": c.seed, "quantized": self.quantized}

    def describe(self) -> str:
        s = self.sizes
        lines = [f"profile      : {self.profile.name}",
                 f"processes    : {self.world_size} ({'CUDA' if torch.cuda.is_available() else 'CPU'})",
                 f"base weights : {'4-bit NF4 (QLoRA)' if self.quantized else 'dense (LoRA)'}",
                 f"data         : {'all' if s.train is None else s.train} training / "
                 f"{'all' if s.eval is None else s.eval} evaluated dialogues",
                 f"batch        : {s.batch_size} per process x {s.grad_accum} accumulation x {self.world_size} "
                 f"process(es) = {self.global_batch} examples per optimizer step",
                 "schedule     : " + (f"{self.cfg.max_steps} steps" if self.cfg.max_steps else f"{s.epochs} epoch(s)")
                 + f", lr {s.lr}, max_length {s.max_length}",
                 f"output       : {show(self.output_dir)}"
                 + (f" (resuming from {self.checkpoint.name})" if self.checkpoint else "")]
        lines += [f"skipped      : {folder.name}: {why}; it is not resumed (a real run deletes it)"
                  for folder, why in self.incomplete]
        return "\n".join(lines)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _fsdp_enabled() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from, or None. The Trainer writes trainer_state.json
    last: without it (or with it cut short) the checkpoint was interrupted while being written."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (written last: the checkpoint was interrupted half-way)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        return f"trainer_state.json is damaged ({type(e).__name__})"
    weights = [folder / n for n in ("adapter_model.safetensors", "model.safetensors") if (folder / n).is_file()]
    if not weights:
        return "no adapter_model.safetensors"
    try:
        from safetensors import safe_open

        with safe_open(str(weights[0]), "pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - any unreadable weights file means: do not resume from it
        return f"{weights[0].name} is unreadable ({type(e).__name__})"
    return None


def _checkpoints(folder: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The last complete checkpoint in ``folder`` (or None) and the incomplete ones, with what is wrong."""
    if not folder.is_dir():
        return None, []
    found = sorted((int(m.group(1)), p) for p in folder.iterdir()
                   if p.is_dir() and (m := _CHECKPOINT.fullmatch(p.name)))
    complete, incomplete = [], []
    for _, p in found:
        problem = checkpoint_problem(p)
        (incomplete.append((p, problem)) if problem else complete.append(p))
    return (complete[-1] if complete else None), incomplete


def _check_output_dir(out: Path) -> None:
    """output_dir must be (or become) a writable folder: checked before anything is loaded."""
    where = f"output_dir {show(out)}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{where} is a file, not a folder. Choose another output_dir (or remove the file).")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{where}: {show(parent)} is a file, so the folder cannot be created there. "
                          f"Choose another output_dir.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: {show(parent)} is not writable by this user. Choose another output_dir.")


def make_plan(cfg: FinetuneConfig, world_size: int | None = None) -> Plan:
    """Everything that can be decided without loading data or a model; errors are ConfigErrors.
    ``world_size``: the number of processes (default: what `accelerate launch` set, else 1)."""
    try:
        profile = get_profile(cfg.profile)
    except ValueError as e:                               # a bad $COURSE_PROFILE
        raise ConfigError(str(e)) from None
    world = world_size or _world_size()
    base = profile.qlora
    all_or = lambda v, default: default if v is None else (None if v == "all" else v)  # noqa: E731
    sizes = replace(base, train=all_or(cfg.train, base.train), eval=all_or(cfg.eval, base.eval),
                    **{k: getattr(cfg, k) for k in ("epochs", "batch_size", "grad_accum", "max_length",
                                                    "max_new_tokens", "lr") if getattr(cfg, k) is not None})
    if cfg.global_batch_size is not None:
        per_step = sizes.batch_size * world
        if cfg.global_batch_size % per_step:
            raise ConfigError(f"global_batch_size {cfg.global_batch_size} is not a multiple of batch_size "
                              f"{sizes.batch_size} x {world} process(es) = {per_step}; change one of them.")
        if cfg.grad_accum is not None and cfg.grad_accum != cfg.global_batch_size // per_step:
            raise ConfigError(f"grad_accum {cfg.grad_accum} contradicts global_batch_size {cfg.global_batch_size} "
                              f"(which needs {cfg.global_batch_size // per_step}); set only one of them.")
        sizes = replace(sizes, grad_accum=cfg.global_batch_size // per_step)
    cuda = torch.cuda.is_available()
    quantized = cfg.quantize == "4bit" or (cfg.quantize == "auto" and cuda)
    if quantized and not cuda and world > 1:
        raise ConfigError("quantize='4bit' on a CPU runs in one process only (bitsandbytes' CPU path is slow "
                          "and data-parallel 4-bit training on CPUs is not supported here); use quantize='auto'.")
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else CACHE_DIR / "finetune" / profile.name
    _check_output_dir(out)
    checkpoint, incomplete = _checkpoints(out) if cfg.resume and not cfg.eval_only else (None, [])
    if cfg.stop_after_steps is not None and cfg.eval_only:
        raise ConfigError("stop_after_steps and eval_only exclude each other.")
    if cfg.eval_only and not (out / "adapter" / "adapter_config.json").is_file():
        raise ConfigError(f"eval_only=true scores the adapter a finished run saved in {show(out / 'adapter')}, but "
                          f"there is none (no adapter_config.json). Train first with the same output_dir (without "
                          f"eval_only), or set output_dir to the folder of the run that trained it.")
    return Plan(cfg, profile, sizes, world, sizes.batch_size * sizes.grad_accum * world, out, checkpoint, quantized,
                incomplete)


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
    from .models import compute_dtype, load_causal_lm_4bit

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
    from .qlora import add_lora, lora_config

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
        from .qlora import PadCollator

        self.pad, self.seen = PadCollator(pad_id), []

    def __call__(self, batch: list[dict]) -> dict:
        self.seen += [b["id"] for b in batch]
        return self.pad(batch)


def _callbacks(plan: Plan):
    from transformers import TrainerCallback

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

    out = []
    fingerprints = Fingerprints() if cfg.report and not _fsdp_enabled() else None
    if fingerprints:
        out.append(fingerprints)
    if cfg.stop_after_steps is not None:
        out.append(Interrupt())
    return out, fingerprints


def _generate(model, tok, dialogues: list[str], plan: Plan, state, what: str) -> list[str]:
    """Greedy summaries with notebook 03's ``generate_summaries``; each process takes a contiguous
    slice of the dialogues and the main process gathers them in order. A progress bar per batch."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from .qlora import generate_summaries

    b = plan.cfg.eval_batch_size
    with state.split_between_processes(dialogues) as mine:
        preds = []
        for i in tqdm(range(0, len(mine), b), desc=f"generating ({what})", disable=not state.is_main_process,
                      unit="batch"):
            preds += generate_summaries(model, tok, mine[i:i + b], plan.sizes.max_new_tokens, batch_size=b)
    return gather_object(preds)


def evaluate(model, tok, eval_df, plan: Plan, state) -> dict:
    from .metrics import rouge

    dialogues = list(eval_df["dialogue"])
    scores = {}
    preds = _generate(model, tok, dialogues, plan, state, "fine-tuned")
    scores["finetuned"] = rouge(preds, eval_df["references"])
    if plan.cfg.compare_base:
        with model.disable_adapter():
            base = _generate(model, tok, dialogues, plan, state, "base")
        scores["base"] = rouge(base, eval_df["references"])
    return {"rouge": scores, "n_eval": len(preds), "examples": [        # len(preds): after the gather
        {"id": i, "prediction": p} for i, p in zip(eval_df["id"][:3], preds[:3])]}


def _write_json(path: Path, payload: dict, rounded: bool = True) -> None:
    from .results import _clean

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

    from .models import check_gpu_for, check_llm_access, hf_token, llm_display_name, llm_name_or_path
    from .qlora import tokenize_examples

    cfg, sizes = plan.cfg, plan.sizes
    check_gpu_for(plan.profile)                            # colab/full on a CPU: hours; stop now unless asked
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


def check_model_source(name_or_path: str, setting: str, online: bool) -> None:
    """A model folder must hold a config and a tokenizer; a name that is no folder here must be a hub id that
    can be reached (online) or is in the local hub cache (offline). ``setting``: where the name came from."""
    from huggingface_hub import try_to_load_from_cache

    p = Path(name_or_path).expanduser()
    where = f"{setting}={name_or_path!r}"
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{where} is a file, not a model folder. Point it at the folder save_pretrained wrote "
                              f"(config.json, weights, tokenizer), or at a hub id.")
        if not (p / "config.json").is_file():
            raise ConfigError(f"{where} is a folder but not a model (no config.json in it). Point it at the folder "
                              f"save_pretrained wrote, or at a hub id such as Qwen/Qwen2.5-3B-Instruct.")
        if not any((p / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
            raise ConfigError(f"{where} holds a model but no tokenizer (tokenizer.json / tokenizer.model). Save the "
                              f"tokenizer there too (tokenizer.save_pretrained(folder)).")
        return
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or "\\" in name_or_path or name_or_path.count("/") > 1
    if looks_like_path:
        raise ConfigError(f"{where}: no such folder (read from {Path.cwd()}). Check the path, or give a hub id "
                          f"(organisation/name).")
    if not online and not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        raise ConfigError(f"{where} is not a folder here, and this profile is offline (no hub): it cannot be "
                          f"downloaded. Point {setting} at a local model folder, or leave it unset for the offline "
                          f"model (SmolLM2-135M-Instruct).")


def build_trainer(plan: Plan, model, tok, examples: list[dict], fsdp: bool):
    """The Transformers ``Trainer`` with notebook 03's training arguments, plus what a script needs:
    progress bars, checkpoints to resume from, one process per device."""
    from transformers import Trainer

    from .models import compute_dtype
    from .qlora import training_arguments

    cfg = plan.cfg
    overrides = dict(disable_tqdm=False, logging_steps=cfg.logging_steps, seed=cfg.seed, data_seed=cfg.seed,
                     gradient_checkpointing=cfg.gradient_checkpointing, save_total_limit=cfg.save_total_limit,
                     save_strategy="steps" if cfg.save_steps else "epoch", ddp_find_unused_parameters=False,
                     use_cpu=not torch.cuda.is_available())    # on CPUs: several processes talk over gloo
    if cfg.save_steps:
        overrides["save_steps"] = cfg.save_steps
    if cfg.max_steps:
        overrides["max_steps"] = cfg.max_steps
    if cfg.optim or fsdp:
        overrides["optim"] = cfg.optim or "adamw_torch"   # FSDP shards plain AdamW states, not bitsandbytes' paged ones
    if fsdp:                                              # as in PEFT's FSDP-QLoRA example
        overrides["gradient_checkpointing_kwargs"] = {"use_reentrant": True}
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

    from .memory import PeakMemory, Timer
    from .qlora import LoRASettings

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

        metrics = evaluate(PeftModel.from_pretrained(model, str(plan.adapter_dir)), tok, data.eval_df, plan, state)
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
    if cfg.evaluate and not trainer.is_fsdp_enabled:
        metrics.update(evaluate(trainer.model, tok, data.eval_df, plan, state))
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
            "resumed_from": metrics["resumed_from"]})
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
        prog="python -m utils.finetune",
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
