"""The course's shared plumbing: profiles, data, models, metrics, memory, figures and results.

A notebook starts with ``run = utils.start("<notebook stem>")``: it resolves the profile, seeds
every generator and starts the clock; ``run.banner(...)`` states profile, device, model and data.
"""
from __future__ import annotations

import logging
import os
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
from .profiles import Profile, cpu_model, describe_device, device, get_profile, resolve_profile_name  # noqa: F401


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
        from .results import new_run_id

        self.run_id = new_run_id(stem)      # stamped on this run's results and predictions (utils.results.save_run)

    def banner(self, model: str, data: str, precision: str | None = None, mixed: str | None = None, **extra) -> None:
        """The notebook's first output: profile, device, model, data, size overrides, mixed precision. A notebook
        that uses no mixed precision says what it does instead (``precision``), and one whose model overrides the
        machine's choice gives its own (``mixed``: T5 is never trained in fp16): the machine's choice (fp16 on a
        T4) would otherwise be printed and saved for a run that never used it."""
        from .models import mixed_precision

        chosen = precision is None
        machine = mixed_precision() if chosen else None     # a notebook without mixed precision never asks
        precision = (mixed or machine) if chosen else precision
        overrides = ", ".join(self.profile.overrides) or "none"
        self.info.update(model=model, data_source=data, overrides=list(self.profile.overrides),
                         mixed_precision=precision, **extra)
        print(f"profile  : {self.profile.name} - {self.profile.description}")
        print(f"device   : {describe_device()}")
        print(f"model    : {model}")
        print(f"data     : {data}")
        print(f"overrides: {overrides}" + ("" if self.profile.overrides else " (COURSE_OVERRIDE changes sizes)"))
        print(f"precision: mixed precision {precision} "
              f"(COURSE_MIXED_PRECISION={os.environ.get('COURSE_MIXED_PRECISION', '') or 'auto'}"
              + (f"; the machine's choice, {machine}, does not suit this model)" if precision != machine else ")")
              if chosen else f"precision: {precision}")
        for k, v in extra.items():
            print(f"{k:<9}: {v}")

    def provenance(self, n: int | str | None = None, model: str | None = None, data: str | None = None) -> str:
        """The footnote every figure carries (``data``: for a figure that does not use the run's dataset)."""
        bits = [f"profile: {self.profile.name}", f"model: {model or self.info.get('model', '?')}"]
        if n is not None:
            bits.append(f"n = {n}")
        bits.append(f"data: {data or self.info.get('data_source', '?')}")
        return " | ".join(bits)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self, **results):
        from .results import ResultsError, save_results

        if taken := sorted(set(results) & {"notebook", "run_id", "profile"}):   # what ties results to predictions
            raise ResultsError(f"run.save(): {taken} name what the run records itself (the notebook, its run id, its "
                               f"profile): give these results other names. Nothing was written.")
        payload = {"notebook": self.stem, "run_id": self.run_id, "profile": self.profile.name,
                   "device": describe_device(),
                   "cpu": cpu_model(),
                   "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                **_versions("transformers", "peft", "bitsandbytes")},
                   **self.info, **results, "notebook_seconds": round(self.elapsed(), 1),
                   "notebook_peak_rss_mb": round(memory.peak_rss_mb())}
        path = save_results(self.stem, payload)
        print(f"results written to results/{path.name}")
        print(f"this notebook so far: {payload['notebook_seconds']:.0f} s, peak resident memory "
              f"{payload['notebook_peak_rss_mb']:,} MB ({payload['cpu']})")
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
    """Resolve the profile (COURSE_PROFILE, COURSE_OVERRIDE), stop a GPU profile on a machine without a GPU
    (unless COURSE_ALLOW_CPU=1), a machine where peft cannot inject LoRA (an old torchao) and a COURSE_PREDICTIONS_DIR
    on an unmounted Google Drive; seed every generator and start the clock."""
    from .models import check_gpu_for, check_peft_can_inject
    from .plotting import setup_style
    from .results import predictions_dir

    chosen = get_profile(profile)
    check_gpu_for(chosen)
    check_peft_can_inject()
    predictions_dir()                   # a COURSE_PREDICTIONS_DIR on an unmounted Drive: refused now, not after training
    seed_everything()
    setup_style()
    return Run(stem, chosen)
