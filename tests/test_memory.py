"""utils.memory: weight footprints, the textbook's table, peak memory."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.architectures import llama_config, meta_model
from utils.memory import NF4_DQ_BITS, PeakMemory, Timer, textbook_estimate_gb, weight_footprint_bytes
from utils.planner import parameter_count, quantized_parameter_count

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLAMA = "meta-llama/Llama-3.2-3B-Instruct"


@pytest.mark.parametrize("name", [SMOL, LLAMA])
def test_weight_footprint_counts_16_bit_and_nf4_exactly(name):
    config = llama_config(name)
    model = meta_model(config)
    n, quantized = parameter_count(config), quantized_parameter_count(config)
    assert weight_footprint_bytes(model) == 2 * n
    assert weight_footprint_bytes(model, NF4_DQ_BITS) == int(quantized * NF4_DQ_BITS / 8 + (n - quantized) * 2)
    assert NF4_DQ_BITS == pytest.approx(4.127, abs=1e-3)       # 4 + 8/64 + 32/(64 x 256)


def test_tied_embeddings_are_counted_once():
    model = meta_model(llama_config(SMOL))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert weight_footprint_bytes(model) == 2 * 134_515_008


def test_textbook_table_is_reproduced():
    gb = textbook_estimate_gb(7_000_000_000)
    assert gb == pytest.approx({"full fine-tuning": 112.0, "LoRA": 15.4, "QLoRA": 4.2})
    assert textbook_estimate_gb(70_000_000_000)["QLoRA"] == pytest.approx(42.0)


def in_a_fresh_process(code: str) -> list[float]:
    """The numbers ``code`` prints, run in a new Python process from the course root (its memory is its own)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    return [float(x) for x in out]


def test_peak_memory_sees_an_allocation_and_its_release():
    """A 300 MB block allocated and freed within a few milliseconds (shorter than the sampling interval), in a
    fresh process whose peak so far is below it: the kernel's peak record catches it."""
    code = ("import torch\nfrom utils.memory import PeakMemory, Timer, _rss_mb\n"
            "with Timer() as clock, PeakMemory() as mem:\n"
            "    block = torch.ones(300 * 2**20 // 4); block.add_(1); del block\n"
            "print(mem.delta_mb, mem.peak_mb, _rss_mb(), clock.seconds)")
    delta, peak, after, seconds = in_a_fresh_process(code)
    assert 250 < delta < 450 and seconds > 0            # the 300 MB block, counted once
    assert after < peak - 250                           # released: the process is back below the peak


def test_peak_memory_works_without_proc_as_on_macos_and_windows():
    """Without /proc (a student's Mac or Windows laptop) the probe reads psutil and getrusage: it crashed there
    (FileNotFoundError) before. The same 300 MB block is seen, and the readings agree with /proc's."""
    code = ("import torch, utils.memory as m\n"
            "with_proc = (m._rss_mb(), m.peak_rss_mb()); m.PROC = '/nonexistent'\n"
            "without = (m._rss_mb(), m.peak_rss_mb())\n"
            "with m.PeakMemory() as mem:\n"
            "    block = torch.ones(300 * 2**20 // 4); block.add_(1); del block\n"
            "print(*with_proc, *without, mem.delta_mb)")
    rss, peak, rss_psutil, peak_rusage, delta = in_a_fresh_process(code)
    assert rss_psutil == pytest.approx(rss, abs=5)
    assert peak_rusage >= peak - 5          # getrusage also keeps the peak of the forked parent before exec
    assert 250 < delta < 450


@pytest.mark.parametrize("platform, expected", [("darwin", 3072.0), ("win32", 2048.0), ("linux", 1024.0)])
def test_peak_rss_reads_each_platforms_record_in_its_unit(monkeypatch, platform, expected):
    """Without /proc: getrusage's ru_maxrss is bytes on macOS and KiB on Linux; Windows has no getrusage, psutil's
    peak working set instead."""
    import resource
    import types

    import psutil

    import utils.memory as m

    monkeypatch.setattr(m, "PROC", "/nonexistent")
    monkeypatch.setattr(m.sys, "platform", platform)
    maxrss = {"darwin": 3 * 2**30, "linux": 2**20}.get(platform, 0)
    monkeypatch.setattr(resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=maxrss))
    monkeypatch.setattr(psutil, "Process", lambda: types.SimpleNamespace(
        memory_info=lambda: types.SimpleNamespace(peak_wset=2 * 2**30, rss=2**30)))
    assert m.peak_rss_mb() == expected and m._rss_mb() == 1024.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")
def test_a_measurement_after_a_freed_model_starts_from_what_is_in_use():
    """Memory freed inside glibc's heap stays resident (here 250 MB of 64 KB tensors, below the mmap threshold, with a
    live tensor above them): a probe that started there would see the next allocations reuse it without the RSS
    growing. PeakMemory hands it back first, so its start is the resident memory before the allocation."""
    code = ("import torch\nfrom utils.memory import PeakMemory, _rss_mb, release_freed_memory\n"
            "release_freed_memory(); before = _rss_mb()\n"
            "chunks = [torch.ones(16_000) for _ in range(4000)]; keep = torch.ones(10); del chunks\n"
            "held = _rss_mb()\n"
            "with PeakMemory() as mem:\n    pass\n"
            "print(before, held, mem.start_mb)")
    before, held, start = in_a_fresh_process(code)
    assert held > before + 150                # freed, yet still resident
    assert start < before + 30                # the probe starts from what is in use


def test_size_of_a_missing_checkpoint_is_an_error_not_zero(tmp_path):
    from utils.memory import dir_size_mb

    (tmp_path / "a.bin").write_bytes(b"x" * 2**20)
    assert dir_size_mb(tmp_path) == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="nothing there to measure; save the checkpoint first"):
        dir_size_mb(tmp_path / "adapter")


class _TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.drop, self.second = torch.nn.Linear(8, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.second(self.drop(torch.relu(self.first(x))))


def test_training_account_counts_weights_gradients_states_and_saved_tensors_exactly():
    from utils.memory import training_account

    torch.manual_seed(0)
    model, batch = _TwoLayers(), {"x": torch.randn(5, 8)}
    model.first.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(**batch).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    rng = torch.get_rng_state()
    account = training_account(model, opt, batch)
    trainable = (16 * 4 + 4) * 4
    # only the second Linear saves its input: the first is frozen and x needs no gradient, so nothing before it does
    assert account == {"weights": (8 * 16 + 16 + 16 * 4 + 4) * 4, "gradients": trainable,
                       "optimizer states": 2 * trainable + 2 * 4, "saved for backward": 5 * 16 * 4}
    assert torch.equal(torch.get_rng_state(), rng)                      # the dropout draw was on a forked state
    assert not model.training and all(p.grad is None for p in model.parameters())

    model.first.requires_grad_(True)      # now the first Linear saves x, ReLU its output, dropout its mask (fp32 on a
    assert training_account(model, opt, batch)["saved for backward"] == 5 * 8 * 4 + 3 * 5 * 16 * 4     # CPU tensor)


def test_saved_tensors_frees_what_it_saw_and_keeps_gradients_exact():
    """exp saves its own output. Handed back as is, that output would hold its own graph node: a cycle of C++ and
    Python objects that no collector frees, so every measured forward leaked its activations (02 held 1.6 GB more)."""
    import gc
    import weakref

    from utils.memory import SavedTensors

    x = torch.randn(100, requires_grad=True)
    with SavedTensors() as saved:
        y = x.exp()
    ref = weakref.ref(y)
    del y
    gc.collect()
    assert ref() is None and saved.bytes == 400
    with SavedTensors():
        x.exp().sum().backward()
    assert torch.equal(x.grad, x.detach().exp())


def test_a_checkpoint_replaces_the_previous_one_whole_or_not_at_all(tmp_path):
    """checkpoint_size_mb deleted the previous folder before saving: a failed save lost it; and a file in its place
    was deleted too."""
    from utils.memory import checkpoint_size_mb

    class Saves:
        def __init__(self, fail=False):
            self.fail = fail

        def save_pretrained(self, folder):
            (Path(folder) / "model.safetensors").write_bytes(b"x" * 2**20)
            if self.fail:
                raise OSError("disk full")

    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    assert checkpoint_size_mb(Saves(), target) == 1.0 and sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    with pytest.raises(OSError, match="disk full"):
        checkpoint_size_mb(Saves(fail=True), target)
    assert (target / "model.safetensors").stat().st_size == 2**20 and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    (tmp_path / "a-file").write_text("keep me")
    with pytest.raises(NotADirectoryError, match="is a file"):
        checkpoint_size_mb(Saves(), tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "keep me"
