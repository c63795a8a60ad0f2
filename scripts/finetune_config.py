"""The fine-tuning script's config and plan (notebook 03 shows the plan with ``--dry-run``): the keys a
TOML config may hold (:class:`FinetuneConfig`), their checks (:func:`load_config`), and the run they describe
(:func:`make_plan`: sizes from the profile, processes, global batch, output folder, the checkpoint to resume from).

The program itself (loading, training, checkpoints, evaluation, the command line) is ``scripts/finetune.py``:

    python -m scripts.finetune --config configs/smoke.toml [--set key=value ...] [--dry-run]

A config file is TOML with the keys of :class:`FinetuneConfig`; every size left out comes from the
profile table (``utils/profiles.py``). The whole config is checked before anything heavy happens: an
unknown key, a wrong type or a value out of range fails within seconds, before any model is loaded.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as checked_dataclass

from utils.paths import CACHE_DIR, show
from utils.profiles import PROFILES, Profile, QLoRASizes, get_profile

QUANTIZE_CHOICES = ("auto", "4bit", "none")
MAX_SEED = 2**32 - 1                                   # numpy's seeds (the Trainer seeds numpy too)


class ConfigError(ValueError):
    """A config file or a ``--set`` override is wrong; the message names the key and what to do."""


Positive = Annotated[int, Field(ge=1)]


@checked_dataclass(config=ConfigDict(strict=True))     # pydantic: types and ranges checked on construction
class FinetuneConfig:
    """Every key a config file may hold. ``None`` means: the profile's value (sizes) or automatic."""
    # what to train, on what, where to write
    profile: str | None = None            # smoke | laptop | colab | full; None: $COURSE_PROFILE, else automatic
    model: str | None = None              # hub id or folder; None: the profile's LLM ($COURSE_LLM overrides)
    data_dir: str | None = None           # folder with the real DialogSum files (as $COURSE_DATA_DIR)
    output_dir: str | None = None         # None: .cache/finetune/<profile>
    # sizes (None: the profile's); train/eval also accept "all"
    train: Positive | Literal["all"] | None = None        # training dialogues
    eval: Positive | Literal["all"] | None = None         # test dialogues scored with ROUGE
    epochs: Positive | None = None
    max_steps: Positive | None = None                     # optimizer steps; overrides epochs
    batch_size: Positive | None = None                    # per process, i.e. per GPU
    grad_accum: Positive | None = None
    global_batch_size: Positive | None = None             # if set: grad_accum = global / (batch_size x processes)
    max_length: Annotated[int, Field(ge=32)] | None = None          # prompt + summary tokens
    max_new_tokens: Positive | None = None
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    # LoRA (notebook 03's settings)
    lora_r: Positive = 16
    lora_alpha: Positive = 32
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    lora_targets: Annotated[list[Annotated[str, Field(pattern=r"\S")]], Field(min_length=1)] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # engine
    quantize: Literal["auto", "4bit", "none"] = "auto"    # auto: 4-bit where CUDA is present, dense on a CPU
    gradient_checkpointing: bool = True
    optim: str | None = None              # None: paged 8-bit AdamW on a GPU (plain AdamW with FSDP or a CPU)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 42
    logging_steps: Positive = 1
    save_steps: Positive | None = None    # checkpoint every N optimizer steps; None: once per epoch
    save_total_limit: Positive = 2
    resume: bool = True                   # continue from the last checkpoint in output_dir; false: delete them
    # evaluation
    evaluate: bool = True                 # ROUGE on `eval` test dialogues after training
    compare_base: bool = True             # ... and of the base model (adapter disabled), for the gain
    eval_batch_size: Positive = 8
    eval_only: bool = False               # score the adapter already saved in output_dir, no training
    # for tests and debugging
    report: bool = False                  # each process writes report/rank<k>.json (ids seen, adapter hashes)
    stop_after_steps: Positive | None = None   # simulate a crash: exit after this step (after its save_steps checkpoint)


ALLOWED_KEYS = tuple(f.name for f in fields(FinetuneConfig))
_HINTS = typing.get_type_hints(FinetuneConfig)
_ALL_OK = ("train", "eval")                           # the string "all" is allowed there
# What a key's value must be when its type is right but pydantic refuses its value (default: at least 1).
_RANGE = {"lr": "lr must be a positive, finite number (LoRA: 1e-4 to 3e-4), got {v}.",
          "seed": f"seed must be between 0 and {MAX_SEED:,} (e.g. 42), got {{v}}.",
          "lora_dropout": "lora_dropout must be in [0, 1), got {v}.",
          "lora_targets": 'lora_targets must list module names, e.g. ["q_proj", "v_proj"].',
          "max_length": "max_length {v} is too short for a chat prompt and a summary (at least 32 tokens).",
          "quantize": "quantize {v!r} is not one of " + ", ".join(QUANTIZE_CHOICES) + "."}


# ----------------------------------------------------------------------------- config: read and check

def _type_name(tp) -> str:
    """How a key's type reads in an error: "an integer", "a number", "a list of strings"..."""
    tp = typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return "a list of strings"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return {bool: "true or false", str: "a string", int: "an integer", float: "a number"}[tp]


def _expected(key: str) -> str:
    tp = _HINTS[key]
    if key in _ALL_OK:
        return 'an integer or "all"'
    text = _type_name(tp)
    if type(None) in typing.get_args(tp):
        text += " (or leave the key out for the default)"
    return text


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


def _message(error: ValidationError, values: dict) -> str:
    """pydantic's first refused key, in the course's words: the type expected, or the range."""
    key = error.errors()[0]["loc"][0]
    kinds = {e["type"] for e in error.errors() if e["loc"][0] == key}
    if key in _ALL_OK:
        kinds.discard("literal_error")                  # "all" was one option of the union, not the problem
    v = values[key]
    if kinds and all(k.endswith("_type") for k in kinds):
        return f"key {key!r} expects {_expected(key)}, got {_describe(v)}."
    return _RANGE.get(key, "key {k!r} must be at least 1, got {v}.").format(k=key, v=v)


def check_config(values: dict, where: str = "config") -> FinetuneConfig:
    """A :class:`FinetuneConfig` from plain values, or a :class:`ConfigError` naming the first problem."""
    unknown = [k for k in values if k not in ALLOWED_KEYS]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, ALLOWED_KEYS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown key {k!r}.{hint} Allowed keys: {', '.join(ALLOWED_KEYS)}.")
    tables = [k for k, v in values.items() if isinstance(v, dict)]
    if tables:
        raise ConfigError(f"{where}: [{tables[0]}] is a table, but the config is flat: put every key at the top "
                          f"level (allowed: {', '.join(ALLOWED_KEYS)}).")
    try:
        cfg = FinetuneConfig(**values)
    except ValidationError as e:
        raise ConfigError(f"{where}: {_message(e, values)}") from None
    if cfg.profile is not None and cfg.profile not in PROFILES:
        raise ConfigError(f"{where}: profile {cfg.profile!r} is not a profile; choose one of {', '.join(PROFILES)}.")
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
