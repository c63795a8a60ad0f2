"""scripts.finetune: notebook 03's recipe as a script, launched by Accelerate on 2 CPU processes (gloo).

Offline, on SmolLM2-135M-Instruct (the dense fp32 checkpoint on a CPU, same LoRA code), on tiny
settings: 4 training dialogues, a global batch of 2 (so 2 optimizer steps), max_length 128. Four
short runs are shared by the tests below: a 2-process run, a 1-process reference with the same global
batch, an interrupted run and its resumption. About a minute on 2 idle cores."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scripts.finetune import (ALLOWED_KEYS, INTERRUPTED_EXIT_CODE, ConfigError, adapter_fingerprint, load_config,
                            main, make_plan, read_adapter)

ROOT = Path(__file__).resolve().parent.parent
CPU_2PROC = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
SMOKE = ROOT / "configs" / "smoke.toml"
# 4 dialogues, global batch 2 -> 2 optimizer steps, a checkpoint after each; dropout 0, so that two
# processes and one process draw no different random masks and must agree up to rounding.
TRAIN, GLOBAL = 4, 2
TINY = [f"train={TRAIN}", "eval=2", "max_length=128", "batch_size=1", f"global_batch_size={GLOBAL}", "epochs=1",
        "save_steps=1", "lora_r=8", "lora_dropout=0.0", "max_new_tokens=8", "report=true"]
LOSS_RTOL = 1e-4        # 2 processes vs 1: the same examples per step, only the order of float sums differs
ADAPTER_ATOL = 1e-6     # same reason, on the adapter weights (measured: bitwise equal on this CPU)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_DATA_DIR", "COURSE_LLM", "COURSE_PROFILE")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finetune(out: Path, *extra: str, processes: int = 1, evaluate: bool = False) -> subprocess.CompletedProcess:
    """One run of the CLI (under `accelerate launch` when processes > 1), output in ``out``."""
    sets = [f"--set={s}" for s in (*TINY, f"output_dir={out}", f"evaluate={str(evaluate).lower()}", *extra)]
    cli = ["-m", "scripts.finetune", "--config", str(SMOKE), *sets]
    if processes > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC),
               "--num_processes", str(processes), "--main_process_port", str(_free_port()), *cli]
    else:
        cmd = [sys.executable, *cli]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    (out.parent / f"{out.name}.log").write_text(done.stdout + "\n--- stderr\n" + done.stderr)
    return done


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"exit code {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _report(out: Path, rank: int = 0) -> dict:
    return json.loads((out / "report" / f"rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def two_processes(runs):
    """2 processes x batch 1 = global batch 2, then ROUGE on 2 test dialogues (one per process)."""
    done = finetune(runs / "ddp", "compare_base=true", processes=2, evaluate=True)
    _ok(done)
    return runs / "ddp", done


@pytest.fixture(scope="module")
def one_process(runs):
    """The reference: 1 process x batch 1 x accumulation 2 = the same global batch 2, uninterrupted."""
    done = finetune(runs / "single")
    _ok(done)
    return runs / "single", done


# ----------------------------------------------------------------------------- data parallel, 2 processes

def test_processes_see_disjoint_shards_of_each_global_batch(two_processes, one_process):
    rank0, rank1 = _report(two_processes[0], 0), _report(two_processes[0], 1)
    r0, r1, reference = rank0["ids_seen"], rank1["ids_seen"], _report(one_process[0])["ids_seen"]
    assert rank0["distributed_type"] == "MULTI_CPU" and rank0["backend"] == "gloo" and rank0["world_size"] == 2
    half = GLOBAL // 2                                                     # examples per process per step
    assert len(r0) == len(r1) == TRAIN // 2 and not set(r0) & set(r1)     # different shards ...
    assert sorted(r0 + r1) == sorted(reference) and len(set(reference)) == TRAIN   # ... covering the data once
    for k in range(TRAIN // GLOBAL):        # optimizer step k trains on the same examples as with 1 process
        mine = r0[k * half:(k + 1) * half] + r1[k * half:(k + 1) * half]
        assert set(mine) == set(reference[k * GLOBAL:(k + 1) * GLOBAL])


def test_adapters_identical_across_processes_after_every_step(two_processes):
    a, b = _report(two_processes[0], 0)["fingerprints"], _report(two_processes[0], 1)["fingerprints"]
    assert list(a) == ["0", "1", "2"] and a == b          # different data, same weights: gradients were all-reduced
    assert len({a["0"], a["1"], a["2"]}) == 3             # and every step changed them


def test_adapter_written_once_by_the_main_process(two_processes):
    out, done = two_processes
    reports = [_report(out, r) for r in (0, 1)]
    assert [r["wrote_adapter"] for r in reports] == [True, False]
    assert done.stdout.count("adapter      : saved once") == 1
    saved = read_adapter(out / "adapter")
    assert adapter_fingerprint(saved) == reports[0]["fingerprints"]["2"]   # the file holds the final, shared adapter
    assert sorted(p.name for p in out.iterdir() if (p / "adapter_config.json").exists()) == [
        "adapter", "checkpoint-1", "checkpoint-2"]


def test_loss_and_adapter_match_one_process_with_the_same_global_batch(two_processes, one_process):
    ddp, single = _report(two_processes[0])["losses"], _report(one_process[0])["losses"]
    assert [s for s, _ in ddp] == [s for s, _ in single] == [1, 2]
    for (_, a), (_, b) in zip(ddp, single):
        assert a == pytest.approx(b, rel=LOSS_RTOL)
    a, b = read_adapter(two_processes[0] / "adapter"), read_adapter(one_process[0] / "adapter")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=ADAPTER_ATOL, rtol=0) for k in a)


def test_evaluation_is_split_across_processes_and_gathered(two_processes):
    out, done = two_processes
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["n_eval"] == 2 and metrics["global_batch"] == GLOBAL
    assert set(metrics["rouge"]) == {"finetuned", "base"}
    assert all(0 <= v <= 1 for s in metrics["rouge"].values() for v in s.values())
    assert len(metrics["peak_memory_mb_per_process"]) == 2
    own = [_report(out, rank)["evaluated"] for rank in (0, 1)]        # what each process generated
    assert [i for o in own for i in o["indices"]] == [0, 1]           # disjoint shares, in order, covering both
    gathered = [e["prediction"] for e in metrics["examples"]]
    assert gathered == [p for o in own for p in o["predictions"]] and len(set(gathered)) == 2   # in rank order
    from utils.data import load_dialogsum                              # the gathered predictions are what was scored,
    from utils.metrics import rouge                                   # each against its own dialogue's references

    test = load_dialogsum(online=False, splits=("test",), verbose=False)[0]["test"].set_index("id")
    refs = [test.loc[e["id"], "references"] for e in metrics["examples"]]
    assert metrics["rouge"]["finetuned"] == pytest.approx(rouge(gathered, refs), abs=1e-6)
    assert rouge(gathered, refs[::-1]) != pytest.approx(rouge(gathered, refs), abs=1e-6)   # a mix-up would show
    assert "generating (fine-tuned)" in done.stderr and "2/2 [" in done.stderr     # progress bars


# ----------------------------------------------------------------------------- interruption and resumption

def test_interrupted_run_resumes_to_the_uninterrupted_adapter(runs, one_process):
    """The interruption is simulated with ``stop_after_steps=1``: the run saves checkpoint-1, then leaves with
    ``os._exit`` (no clean-up, no final adapter), as a killed process would. We do not send a real SIGKILL at
    a random moment: on a loaded 2-core machine its timing would make the test flaky, and a kill during the
    checkpoint write tests the filesystem, not the resumption. Running the same command again must continue
    from checkpoint-1 (not start over: it trains only the second global batch) and end with the adapter of
    the uninterrupted run (dropout 0 here, so the adapters may differ only by rounding)."""
    out = runs / "resumed"
    first = finetune(out, "stop_after_steps=1")
    assert first.returncode == INTERRUPTED_EXIT_CODE, first.stderr[-2000:]
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists() and not (out / "adapter").exists()

    # resuming with a different recipe is refused before anything is loaded
    t0 = time.perf_counter()
    assert main(["--config", str(SMOKE), *[f"--set={s}" for s in TINY], f"--set=output_dir={out}",
                 "--set=evaluate=false", "--set=lr=0.001"]) == 2
    assert time.perf_counter() - t0 < 10

    # a checkpoint-2 half-written when the process died (no trainer_state.json: the Trainer writes it last)
    import shutil

    shutil.copytree(out / "checkpoint-1", out / "checkpoint-2", ignore=shutil.ignore_patterns("trainer_state.json"))
    (out / "checkpoint-2" / "left-by-the-killed-run").write_text("")
    second = finetune(out)
    _ok(second)
    report, reference = _report(out), _report(one_process[0])
    assert "checkpoint-2: no trainer_state.json" in second.stdout   # skipped, said, and deleted before training
    assert not (out / "checkpoint-2" / "left-by-the-killed-run").exists()    # the checkpoint-2 there now is the new run's
    assert report["resumed_from"] == "checkpoint-1"
    assert report["ids_seen"] == reference["ids_seen"][GLOBAL:]       # only the second global batch was trained
    assert [s for s, _ in report["losses"]] == [1, 2]                 # the log history came back with the checkpoint
    a, b = read_adapter(out / "adapter"), read_adapter(one_process[0] / "adapter")
    assert a and a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=ADAPTER_ATOL, rtol=0) for k in a)


# ----------------------------------------------------------------------------- bad configs fail fast

@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a model fails the test; the data folder is the bundled one."""
    import scripts.finetune as ft

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded although the config is wrong")

    monkeypatch.setattr(ft, "load_model", forbidden)
    for name in ("COURSE_DATA_DIR", "COURSE_LLM", "WORLD_SIZE"):   # unset now, and after the test even if main
        monkeypatch.setenv(name, "")                               # sets it (delenv alone restores nothing when
        monkeypatch.delenv(name)                                   # the variable was not set before)


def _fails(argv, capsys, *fragments, within: float = 10.0):
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < within
    err = capsys.readouterr().err
    for f in fragments:
        assert f in err, err
    return err


def test_unknown_key_names_it_and_lists_the_allowed_ones(tmp_path, capsys, no_model):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('profile = "smoke"\nlearning_rate = 1e-4\n')
    err = _fails(["--config", str(cfg)], capsys, "unknown key 'learning_rate'", "Allowed keys:")
    assert all(k in err for k in ALLOWED_KEYS)


def test_wrong_type_names_key_expected_and_got(tmp_path, capsys, no_model):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('epochs = "two"\n')
    _fails(["--config", str(cfg)], capsys, "key 'epochs' expects an integer", "got str ('two')")
    _fails(["--set", "lora_targets=7"], capsys, "key 'lora_targets' expects a list of strings", "got int (7)")
    _fails(["--set", "resume=1"], capsys, "key 'resume' expects true or false", "got int (1)")
    _fails(["--set", "train=most"], capsys, "key 'train' expects an integer or \"all\"", "got str ('most')")


def test_missing_data_is_the_data_error_before_any_model(tmp_path, capsys, no_model):
    (tmp_path / "dialogsum").mkdir()
    _fails(["--config", str(SMOKE), f"--set=data_dir={tmp_path}", f"--set=output_dir={tmp_path / 'out'}"], capsys,
           "no DialogSum train file")


def test_max_length_too_short_fails_before_the_model(tmp_path, capsys, no_model):
    _fails(["--config", str(SMOKE), "--set=train=8", "--set=max_length=40", f"--set=output_dir={tmp_path}"], capsys,
           "max_length=40 does not fit the training examples")


def test_bad_config_fails_fast_from_the_command_line(tmp_path):
    """The real CLI: exit code 2, the message on stderr, and nothing loaded (no model line printed)."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("lora_rank = 8\n")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "scripts.finetune", "--config", str(cfg)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown key 'lora_rank'. Did you mean 'lora_r'?" in done.stderr
    assert "model        :" not in done.stdout and time.perf_counter() - t0 < 30


def test_global_batch_is_kept_whatever_the_number_of_processes(monkeypatch):
    cfg = load_config(SMOKE, ["batch_size=2", "global_batch_size=8"])
    for world, accum in ((1, 4), (2, 2), (4, 1)):
        plan = make_plan(cfg, world_size=world)
        assert (plan.sizes.grad_accum, plan.global_batch) == (accum, 8)
    monkeypatch.setenv("WORLD_SIZE", "4")                  # what `accelerate launch` sets in each process
    assert make_plan(cfg).sizes.grad_accum == 1
    with pytest.raises(ConfigError, match="not a multiple of batch_size 2 x 3 process"):
        make_plan(cfg, world_size=3)
    without = make_plan(load_config(SMOKE, ["batch_size=2", "grad_accum=4"]), world_size=4)
    assert without.global_batch == 32                      # without global_batch_size, more GPUs = a bigger batch


def test_profile_sizes_are_the_defaults(monkeypatch):
    from utils.profiles import PROFILES

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    plan = make_plan(load_config(SMOKE))
    assert plan.sizes == PROFILES["smoke"].qlora
    plan = make_plan(load_config(SMOKE, ["profile=colab", "train=all", "lr=1e-4"]))
    assert plan.sizes.train is None and plan.sizes.lr == 1e-4
    assert plan.sizes.max_length == PROFILES["colab"].qlora.max_length     # the rest from the colab row


# ----------------------------------------------------------------------------- a loss that turns NaN

def test_the_script_stops_at_the_first_nan_loss_with_what_to_change(tmp_path, monkeypatch):
    """The script's own Trainer (build_trainer), on a model whose loss turns NaN at step 3 as an fp16 overflow does:
    training stops at that step with the script's advice (no checkpoint written after it), instead of going on."""
    import types

    from overflow_stand_in import OverflowsAtStep3

    from scripts.finetune import build_trainer
    from utils.qlora import NonFiniteLossError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    plan = make_plan(load_config(SMOKE, ["batch_size=1", "global_batch_size=1", "gradient_checkpointing=false",
                                         "save_steps=1", "epochs=1", f"output_dir={tmp_path}"]), world_size=1)
    examples = [{"id": f"train_{i}", "input_ids": [1], "attention_mask": [1], "labels": [2]} for i in range(6)]
    tok = types.SimpleNamespace(pad_token_id=0, save_pretrained=lambda *a, **k: None)
    trainer, _, _ = build_trainer(plan, OverflowsAtStep3(), tok, examples, fsdp=False)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 \(fp32\).*lower lr in the config.*resume=false"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
