"""utils.profiles: which profile a machine gets, the laptop profile, COURSE_OVERRIDE, COURSE_MIXED_PRECISION,
the GPU check utils.start() does for every notebook, and the banner that states it all."""
import pytest
import torch

import utils
import utils.models as models
from utils.profiles import PROFILES, SMOLLM2, apply_overrides, get_profile, resolve_profile_name


@pytest.mark.parametrize("cuda, hub, gpu_gib, expected", [
    (True, True, 14.7, "colab"),   # Colab with a T4 (14.7 GiB as torch reports it)
    (True, True, 7.6, "laptop"),   # a laptop with an 8 GB GPU: the colab sizes would not fit, the laptop sizes do
    (False, True, None, "laptop"), # a laptop online, or a Colab CPU runtime: real models at CPU sizes, no wheel needed
    (True, False, 14.7, "smoke"),  # no hub: the offline profile, whatever the hardware
    (False, False, None, "smoke"),
])
def test_profile_follows_the_machine(cuda, hub, gpu_gib, expected, capsys):
    assert resolve_profile_name(env={}, cuda=cuda, hub=hub, gpu_gib=gpu_gib) == expected
    said = capsys.readouterr().out
    assert ("this GPU has 7.6 GiB" in said and "COURSE_PROFILE=colab" in said) == (gpu_gib == 7.6)


def test_no_hub_is_checked_before_the_gpu(monkeypatch):
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")              # hub_reachable() must say no without touching the network
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail(f"a connection to {a[0]}"))
    assert resolve_profile_name(env={}, cuda=False) == "smoke"


@pytest.fixture
def proxy_env(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _fake_proxy(answer: bytes):
    """A one-connection HTTP proxy on 127.0.0.1 that records the request and answers ``answer``."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    seen = []

    def serve():
        conn, _ = server.accept()
        with conn:
            seen.append(conn.recv(1024).decode())
            conn.sendall(answer)
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], seen


@pytest.mark.parametrize("answer, reachable", [(b"HTTP/1.1 200 Connection established\r\n\r\n", True),
                                               (b"HTTP/1.1 403 Forbidden\r\n\r\n", False)])
def test_hub_check_asks_the_proxy_to_reach_the_hub(proxy_env, answer, reachable):
    """Behind a proxy, the hub counts as reachable only if the proxy agrees to tunnel to it: a proxy that blocks
    huggingface.co (a sandbox's) means offline, as before; one that lets it through means online (before, the direct
    probe failed there and a laptop behind a company proxy fell back to `smoke`)."""
    import utils.profiles as profiles

    port, seen = _fake_proxy(answer)
    proxy_env.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    proxy_env.setenv("HTTPS_PROXY", f"user:p%40ss@127.0.0.1:{port}")        # no scheme, as httpx also accepts
    assert profiles.hub_reachable() is reachable
    assert seen[0].startswith("CONNECT hf-mirror.example:443 HTTP/1.1\r\n")
    assert "Proxy-Authorization: Basic dXNlcjpwQHNz\r\n" in seen[0]          # base64 of user:p@ss


def test_hub_check_goes_direct_without_a_proxy_or_when_no_proxy_exempts_the_hub(proxy_env):
    import socket

    import utils.profiles as profiles

    tried = []

    def connect(address, timeout):
        tried.append(address)
        raise OSError("unreachable")

    proxy_env.setattr(socket, "create_connection", connect)
    assert not profiles.hub_reachable()
    proxy_env.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    proxy_env.setenv("NO_PROXY", "huggingface.co")
    assert not profiles.hub_reachable()
    assert tried == [("huggingface.co", 443), ("huggingface.co", 443)]


def test_explicit_profile_wins():
    assert resolve_profile_name(env={"COURSE_PROFILE": "FULL"}, cuda=False, hub=False) == "full"
    assert resolve_profile_name(env={"COURSE_PROFILE": "laptop"}, cuda=True, hub=False) == "laptop"


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="not a profile; choose one of smoke, laptop, colab, full"):
        resolve_profile_name(env={"COURSE_PROFILE": "gpu"})


def test_every_profile_has_every_size():
    for p in PROFILES.values():
        assert p.spam.batch_size > 0 and p.summary.max_steps > 0 and p.qlora.epochs > 0
    assert not get_profile("smoke", env={}).online and get_profile("colab", env={}).online


def test_brief_sizes_on_colab():
    colab = get_profile("colab", env={})
    assert (colab.summary.train, colab.summary.eval) == (100, 50)
    assert (colab.qlora.train, colab.qlora.eval) == (100, 50)


def test_laptop_is_the_real_path_at_cpu_sizes():
    laptop, colab = PROFILES["laptop"], PROFILES["colab"]
    assert laptop.online and not laptop.needs_gpu and colab.needs_gpu and PROFILES["full"].needs_gpu
    assert laptop.gpt2_model == colab.gpt2_model == "openai-community/gpt2"         # real pretrained GPT-2
    assert laptop.llm_model == laptop.llm_fallback == SMOLLM2                         # ungated, from the hub
    assert models.llm_name_or_path(laptop) == SMOLLM2                                 # no wheel involved
    for section in ("spam", "summary", "qlora"):                                      # smaller than colab's
        small, big = getattr(laptop, section), getattr(colab, section)
        assert (small.train or 10**9) <= (big.train or 10**9)
    assert laptop.qlora.eval < colab.qlora.eval and laptop.summary.max_steps < colab.summary.max_steps


# ------------------------------------------------------------------------------------------ COURSE_OVERRIDE

def test_overrides_change_only_the_named_sizes():
    p = get_profile("colab", env={"COURSE_OVERRIDE": "spam.train=16, summary.max_steps=2,qlora.eval=4,"
                                                     "summary.lr_grid_lora=1e-4,3e-4,spam.val=none,qlora.lr=1e-3"})
    colab = PROFILES["colab"]
    assert (p.spam.train, p.spam.val, p.summary.max_steps, p.qlora.eval) == (16, None, 2, 4)
    assert p.summary.lr_grid_lora == (1e-4, 3e-4) and p.qlora.lr == 1e-3
    assert (p.spam.epochs, p.qlora.train, p.llm_model) == (colab.spam.epochs, colab.qlora.train, colab.llm_model)
    assert p.overrides == ("spam.train=16", "summary.max_steps=2", "qlora.eval=4", "summary.lr_grid_lora=1e-4,3e-4",
                           "spam.val=none", "qlora.lr=1e-3")
    assert PROFILES["colab"].overrides == () and PROFILES["colab"].qlora.eval == 50      # the table is untouched
    assert apply_overrides(colab, "") is colab


@pytest.mark.parametrize("text, message", [
    ("spam.trian=3", r"spam.trian is not a size .* fields of spam are train, val"),
    ("model.name=x", r"'model.name' is not a size; .*section one of spam, summary, qlora, ablation"),
    ("qlora=4", r"'qlora' is not a size"),
    ("16", r"'16' is not of the form section.field=value"),
    ("spam.train=-1", r"spam.train='-1' must be a positive integer \(or none"),
    ("qlora.epochs=1.5", r"qlora.epochs='1.5' must be a positive integer"),
    ("qlora.lr=fast", r"qlora.lr='fast' must be a positive number"),
    ("qlora.lr=nan", r"qlora.lr='nan' must be a positive number"),
    ("summary.lr_grid_lora=1e-3,x", r"summary.lr_grid_lora='1e-3,x' must be positive numbers separated by commas"),
    ("summary.lr_grid_full=1e-3,0", r"summary.lr_grid_full='1e-3,0' must be positive numbers"),
])
def test_bad_overrides_are_clear_errors(text, message):
    with pytest.raises(ValueError, match="COURSE_OVERRIDE") as err:
        get_profile("smoke", env={"COURSE_OVERRIDE": text})
    assert err.match(message)


# ------------------------------------------------------------------------------------ mixed precision

@pytest.mark.parametrize("asked, cuda, capability, expected", [
    ("", True, (7, 5), "fp16"),          # T4: no native bf16 (is_bf16_supported() may still say yes)
    ("auto", True, (8, 0), "bf16"),      # A100, L4, H100
    ("auto", False, None, "no"),         # CPU
    ("bf16", False, None, "bf16"),       # the CPU stand-in for a T4's fp16
    ("no", True, (7, 5), "no"),
    ("FP16", True, (8, 0), "fp16"),
])
def test_mixed_precision(asked, cuda, capability, expected):
    env = {"COURSE_MIXED_PRECISION": asked}
    assert models.mixed_precision(env, cuda=cuda, capability=capability) == expected


def test_mixed_precision_errors():
    with pytest.raises(ValueError, match="COURSE_MIXED_PRECISION='fp32' is not one of auto, fp16, bf16, no"):
        models.mixed_precision({"COURSE_MIXED_PRECISION": "fp32"}, cuda=False)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU.*COURSE_MIXED_PRECISION=bf16"):
        models.mixed_precision({"COURSE_MIXED_PRECISION": "fp16"}, cuda=False)
    with pytest.raises(ValueError, match=r"bf16 on a GPU of compute capability 7\.5.*no native bf16.*=fp16"):
        models.mixed_precision({"COURSE_MIXED_PRECISION": "bf16"}, cuda=True, capability=(7, 5))    # a T4
    assert models.mixed_precision({"COURSE_MIXED_PRECISION": "bf16"}, cuda=True, capability=(8, 9)) == "bf16"  # L4


def test_compute_dtype_follows_mixed_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("COURSE_MIXED_PRECISION", raising=False)
    assert models.compute_dtype() == torch.float32
    monkeypatch.setenv("COURSE_MIXED_PRECISION", "bf16")
    assert models.compute_dtype() == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setenv("COURSE_MIXED_PRECISION", "auto")
    assert models.compute_dtype() == torch.float16


# ------------------------------------------------------------------ utils.start(): the GPU check, the banner

def test_every_notebook_stops_on_a_gpu_profile_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("COURSE_ALLOW_CPU", raising=False)
    monkeypatch.delenv("COURSE_OVERRIDE", raising=False)
    for name in ("colab", "full"):
        with pytest.raises(models.NoGPUError, match=r"needs a CUDA GPU.*T4 GPU.*COURSE_PROFILE=laptop.*"
                                                    r"COURSE_PROFILE=smoke.*COURSE_ALLOW_CPU=1"):
            utils.start("01_any_notebook", name)
    for name in ("smoke", "laptop"):
        assert utils.start("01_any_notebook", name).profile.name == name       # the CPU is their plan
    monkeypatch.setenv("COURSE_ALLOW_CPU", "1")
    assert utils.start("01_any_notebook", "colab").profile.name == "colab"      # asked for explicitly
    monkeypatch.setenv("COURSE_ALLOW_CPU", "0")
    with pytest.raises(models.NoGPUError):
        utils.start("01_any_notebook", "colab")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert utils.start("01_any_notebook", "colab").profile.name == "colab"


def test_banner_states_profile_device_model_data_overrides_precision(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COURSE_OVERRIDE", "qlora.eval=4,qlora.train=8")
    monkeypatch.setenv("COURSE_MIXED_PRECISION", "bf16")
    run = utils.start("03_any", "laptop")
    run.banner(model=SMOLLM2, data="knkarthick/dialogsum")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["profile", "device", "model", "data", "overrides",
                                                              "precision"]
    assert lines[0].startswith("profile  : laptop - CPU, online") and lines[1].startswith("device   : cpu")
    assert lines[4] == "overrides: qlora.eval=4, qlora.train=8"
    assert lines[5] == "precision: mixed precision bf16 (COURSE_MIXED_PRECISION=bf16)"
    assert run.profile.qlora.eval == 4 and run.info["overrides"] == ["qlora.eval=4", "qlora.train=8"]
    assert run.info["mixed_precision"] == "bf16"
    run.banner(model=SMOLLM2, data="knkarthick/dialogsum", precision="fp32 throughout (no mixed precision here)")
    assert capsys.readouterr().out.splitlines()[5] == "precision: fp32 throughout (no mixed precision here)"
    assert run.info["mixed_precision"] == "fp32 throughout (no mixed precision here)"    # not the machine's bf16
    monkeypatch.setenv("COURSE_MIXED_PRECISION", "fp16")           # wrong for this CPU, and not this notebook's concern
    run.banner(model=SMOLLM2, data="knkarthick/dialogsum", precision="fp32 throughout (no mixed precision here)")
    capsys.readouterr()
    monkeypatch.setenv("COURSE_MIXED_PRECISION", "bf16")
    run.banner(model="google/flan-t5-base", data="knkarthick/dialogsum", mixed="no")    # notebook 02 on a T4 (fp16)
    assert capsys.readouterr().out.splitlines()[5] == ("precision: mixed precision no (COURSE_MIXED_PRECISION=bf16; "
                                                       "the machine's choice, bf16, does not suit this model)")
    assert run.info["mixed_precision"] == "no"          # it once recorded the machine's fp16 for a run in fp32


@pytest.mark.parametrize("capability, machine, expected", [
    ("AVX512", "AMD64", "AVX-512"), ("AVX2", "x86_64", "AVX2"), ("DEFAULT", "AMD64", "no AVX2"),
    ("DEFAULT", "arm64", "arm64")])
def test_cpu_model_without_proc_cpuinfo_asks_pytorch(monkeypatch, capability, machine, expected):
    """On macOS and Windows there is no /proc/cpuinfo: the record said "no AVX2" even on an AVX-512 laptop."""
    import platform

    import utils.profiles as profiles

    monkeypatch.setattr(profiles, "cpu_info", lambda: ("", set()))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert profiles.cpu_model().endswith(f" cores, {expected}")
