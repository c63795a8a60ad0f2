"""Counting parameters, bytes on disk and peak memory (GPU allocator or process RSS on a CPU)."""
from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time
from pathlib import Path

import torch


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters. 4-bit weights are counted as the parameters they stand for."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if getattr(p, "quant_state", None) is not None:       # bitsandbytes packs two 4-bit values per byte
            n = int(torch.Size(p.quant_state.shape).numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def trainable_summary(model) -> str:
    trainable, total = count_parameters(model)
    return f"trainable: {trainable:,} | total: {total:,} | trainable share: {100 * trainable / total:.2f} %"


def dir_size_mb(path: os.PathLike | str) -> float:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: nothing there to measure; save the checkpoint first (or check the path).")
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def checkpoint_size_mb(model, path) -> float:
    """``save_pretrained`` into a fresh ``path`` (written beside it, then moved in: an interrupted save leaves the
    previous checkpoint) and return its size on disk in MB (2^20 bytes). A PEFT model saves its adapter only; a
    plain model saves every weight."""
    from .models import quiet_transformers
    from .results import atomic_folder

    if Path(path).is_file():
        raise NotADirectoryError(f"{path} is a file: give checkpoint_size_mb a folder to save into.")
    with quiet_transformers(), atomic_folder(path) as tmp:
        model.save_pretrained(tmp)
    return dir_size_mb(path)


def weights_mb(n_parameters: int, dtype: torch.dtype = torch.float32) -> float:
    """What ``n_parameters`` weights take at ``dtype``, in MB (2^20 bytes): the floor of a checkpoint's size."""
    return n_parameters * torch.empty(0, dtype=dtype).element_size() / 2**20


PROC = "/proc/self"       # Linux's view of this process; macOS and Windows have none


def _rss_mb() -> float:
    """Resident memory of this process now, in MB: from /proc on Linux, from psutil elsewhere (macOS, Windows)."""
    try:
        with open(f"{PROC}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except FileNotFoundError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def release_freed_memory() -> None:
    """Hand the memory this process has freed back to the OS (glibc's ``malloc_trim``), so that resident memory counts
    only what is in use. Without it, the pages of a deleted model stay resident: a measurement that follows starts
    high and reuses them without its RSS growing, so what it adds is understated. A no-op without glibc (macOS)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB: the kernel's record (VmHWM) on Linux, ``getrusage`` on
    macOS, psutil's peak working set on Windows."""
    try:
        with open(f"{PROC}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (FileNotFoundError, StopIteration):
        pass
    if sys.platform == "win32":
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024    # bytes on macOS, KiB on Linux


class PeakMemory:
    """Peak memory inside a ``with`` block: the CUDA allocator's peak on a GPU, else the process's peak RSS as
    RSS sampled every 20 ms, and the kernel's record of the process's peak (VmHWM) where the block raised it
    (which catches a peak shorter than the sampling interval; VmHWM is never reset, the process's own peak stays). On a
    CPU the block starts after :func:`release_freed_memory`. ``peak_mb`` is the peak; ``delta_mb`` what the block added
    on top of the start."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_mb, self.start_mb, self.kind = interval, 0.0, 0.0, ""
        self._stop = threading.Event()

    def __enter__(self):
        if torch.cuda.is_available():
            self.kind = "GPU max_memory_allocated"
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self.kind = "process peak RSS"
            release_freed_memory()                     # start from what is in use, not from freed pages still held
            self._hwm_start = peak_rss_mb()
            self.start_mb = self.peak_mb = _rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _rss_mb())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, _rss_mb(), self._block_hwm())
        return False

    def _block_hwm(self) -> float:
        hwm = peak_rss_mb()
        return hwm if hwm > self._hwm_start else 0.0      # the process peak, if it was reached inside the block

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.start_mb


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


# ----------------------------------------------------------------------------- weight footprints

NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)    # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 blocks = 4.127


def weight_footprint_bytes(model, quantized_bits: float | None = None, other_bytes: int = 2) -> int:
    """Bytes of a model's weights. With ``quantized_bits`` (e.g. NF4_DQ_BITS), the Linear layers inside
    the decoder blocks are counted at that many bits per weight, as bitsandbytes quantizes them; the
    embeddings, norms and output head stay at ``other_bytes`` per parameter. Works on meta-device models."""
    import torch.nn as nn

    quantized = set()
    if quantized_bits is not None:
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and ".layers." in f".{name}":
                quantized.add(id(m.weight))
    total = 0.0
    for p in {id(p): p for p in model.parameters()}.values():
        total += p.numel() * quantized_bits / 8 if id(p) in quantized else p.numel() * other_bytes
    return int(total)


# The brief's textbook table (7B: 112 / 15.4 / 4.2 GB; 70B: 1120 / 154 / 42 GB) is reproduced exactly by
# these bytes per parameter; they ignore activations, the KV cache and the framework's own overhead.
TEXTBOOK_BYTES_PER_PARAM = {"full fine-tuning": 16.0, "LoRA": 2.2, "QLoRA": 0.6}


def textbook_estimate_gb(n_params: int) -> dict[str, float]:
    return {k: n_params * b / 1e9 for k, b in TEXTBOOK_BYTES_PER_PARAM.items()}


# ----------------------------------------------------------------------------- what autograd keeps

class SavedTensors:
    """Bytes that autograd keeps for the backward pass of what runs inside a ``with`` block: every tensor
    saved by an operation, each underlying storage counted once, parameters excluded (pass them as
    ``exclude``). Exact and independent of the allocator, unlike a peak; blind to what runs under gradient
    checkpointing (which installs its own hooks)."""

    def __init__(self, exclude=()):
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self._seen: dict[int, int] = {}

    def _pack(self, t):
        s = t.untyped_storage()
        if s.data_ptr() not in self._exclude:
            self._seen.setdefault(s.data_ptr(), s.nbytes())
        return t.detach()     # not ``t``: a saved output would then hold its own node, a cycle no collector frees

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())


def training_account(model, optimizer, batch: dict, autocast_dtype: torch.dtype | None = None) -> dict[str, int]:
    """What a training step of ``model`` holds, in bytes, counted tensor by tensor rather than sampled from the
    allocator: its weights (each storage once), the gradients of its trainable weights, the optimizer's states (call
    after at least one step, once they exist), and what autograd saves for the backward pass of one forward on
    ``batch`` in train mode (:class:`SavedTensors`; under ``autocast_dtype`` when training used mixed precision).
    The forward builds no gradient and leaves the random state as it found it. What a step *adds* on top of the
    loaded weights is at least gradients + states + saved; temporaries of the backward pass come on top."""
    params = list(model.parameters())
    weights = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in params}
    gradients = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    states = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
              for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)}
    device = params[0].device
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None), \
            SavedTensors(exclude=params) as saved:
        model(**{k: v.to(device) for k, v in batch.items()})
    model.train(was_training)
    return {"weights": sum(weights.values()), "gradients": gradients, "optimizer states": sum(states.values()),
            "saved for backward": saved.bytes}
