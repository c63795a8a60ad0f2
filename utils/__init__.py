"""The course's shared plumbing: profiles, data, models, metrics, memory, figures and results.

A notebook starts with ``run = utils.start("<notebook stem>")``: it resolves the profile, seeds
every generator and starts the clock; ``run.banner(...)`` states profile, device, model and data.
"""
from __future__ import annotations

import logging
import platform
import random
import time

import numpy as np
import torch

# bitsandbytes, on a CPU with AVX512-BF16, logs at import that an optional hub kernel ("kernels-community")
# cannot be fetched. The course never uses that kernel (it is an inference fast path, and offline it cannot be
# downloaded anyway), so the warning is machine-specific noise in committed outputs: silenced here, once.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from . import memory  # noqa: E402,F401
from .paths import CACHE_DIR, DATA_DIR, IMG_DIR, RESULTS_DIR, ROOT, SEED  # noqa: F401
from .profiles import Profile, describe_device, device, get_profile, resolve_profile_name  # noqa: F401


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Run:
    """One execution of one notebook: its profile, device, clock and the results it will save."""

    def __init__(self, stem: str, profile: Profile):
        self.stem, self.profile, self.device = stem, profile, device()
        self.t0 = time.perf_counter()
        self.info: dict = {}

    def banner(self, model: str, data: str, **extra) -> None:
        self.info.update(model=model, data_source=data, **extra)
        print(f"profile : {self.profile.name} - {self.profile.description}")
        print(f"device  : {describe_device()}")
        print(f"model   : {model}")
        print(f"data    : {data}")
        for k, v in extra.items():
            print(f"{k:<8}: {v}")

    def provenance(self, n: int | None = None, model: str | None = None) -> str:
        """The footnote every figure carries."""
        bits = [f"profile: {self.profile.name}", f"model: {model or self.info.get('model', '?')}"]
        if n is not None:
            bits.append(f"n = {n}")
        bits.append(f"data: {self.info.get('data_source', '?')}")
        return " | ".join(bits)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self, **results):
        from .results import save_results

        payload = {"notebook": self.stem, "profile": self.profile.name, "device": describe_device(),
                   "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                **_versions("transformers", "peft", "bitsandbytes")},
                   **self.info, **results, "notebook_seconds": round(self.elapsed(), 1)}
        path = save_results(self.stem, payload)
        print(f"results written to results/{path.name}")
        return payload


def _versions(*names):
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def start(stem: str, profile: str | None = None) -> Run:
    seed_everything()
    from .plotting import setup_style

    setup_style()
    return Run(stem, get_profile(profile))
