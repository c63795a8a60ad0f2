"""The real path, where students run it, on a simulated hub (tests/simhub): no network, no GPU.

* **One notebook alone, as on Colab**: each notebook runs by itself in a fresh kernel whose ``google.colab`` is
  simulated (tests/simhub/colab.py). Its setup cell clones the course (a git repository made from the working
  tree's files: what the lead is about to commit) into an empty ``/content/course`` of its own and runs
  ``pip install -r requirements-colab.txt`` with no index (everything must already be there; the venv must be
  left unchanged). Profile ``colab`` on a CPU runtime (``COURSE_ALLOW_CPU=1``), sizes shrunk by
  ``COURSE_OVERRIDE``; notebooks 02, 03 and 05 with ``COURSE_MIXED_PRECISION=bf16``, standing in for a T4's fp16.
  Notebook 04 alone must say that the predictions its clone holds are the course's, not the student's; pointed
  (``COURSE_PREDICTIONS_DIR``, a "Drive" folder) at the results that 02 and 03, run above with the same variable,
  copied there, it must analyse those.
  Checked invariants (lines of ``# NBVAL_CHECK_OUTPUT`` cells ending in ``: False``, quality claims aside) must
  hold: the bf16 run is what shows a mixed-precision defect such as the autocast wrapper left on after training.
* **A Colab CPU runtime** (no GPU, the quota used up): notebooks 02, 03, 05 and 06 alone on the ``laptop`` profile.
* **The ungated fallback** the gated-model message offers: notebook 03 alone with ``COURSE_LLM`` set to Qwen2.5-3B.
* **A laptop online without a GPU**: notebook 01 on the ``laptop`` profile, in a fresh clone, no Colab.

The real ids (openai-community/gpt2, google/flan-t5-base, meta-llama/Llama-3.2-3B-Instruct, ...) resolve from a
local hub cache to shrunk stand-ins (``HF_HUB_OFFLINE=1``), DialogSum from ``datasets``' cache of the hub's CSVs,
the UCI SMS zip from an HTTP server on 127.0.0.1 (``COURSE_SMS_URL``). The course's code is the real path's,
unchanged. Executed copies go to pytest's temporary folder, never over the committed notebooks.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simhub import builder, colab  # noqa: E402
from tools.runner import copy_course  # noqa: E402
from utils.paths import ROOT  # noqa: E402

pytestmark = pytest.mark.realpath

NOTEBOOKS = {p.name[:2]: p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}

# Sizes: a few examples, one or two optimizer steps, a few generated tokens: code paths, not results.
OVERRIDE = ",".join([
    "spam.train=4", "spam.val=4", "spam.test=4", "spam.epochs=1", "spam.batch_size=4", "spam.max_length=32",
    "summary.train=8", "summary.eval=4", "summary.max_steps=2", "summary.batch_size=4",
    "summary.max_source_length=128", "summary.max_target_length=32", "summary.max_new_tokens=8",
    "qlora.train=8", "qlora.eval=4", "qlora.epochs=1", "qlora.batch_size=2", "qlora.grad_accum=2",
    "qlora.max_length=256", "qlora.max_new_tokens=8",
    "ablation.memory_batch=1", "ablation.memory_seq=32", "ablation.adapter_steps=1", "ablation.train=4",
    "ablation.batch_size=2", "ablation.max_length=256", "ablation.max_new_tokens=8",
    "mistakes.train=4", "mistakes.heldout=2", "mistakes.steps=2", "mistakes.batch_size=2", "mistakes.max_length=256",
    "mistakes.generate=2", "mistakes.max_new_tokens=8",
])
TIMES: dict[str, float] = {}
CLONES: dict[str, Path] = {}           # notebook -> the clone it ran in (its results/), for notebook 04


@pytest.fixture(scope="session", autouse=True)
def _report_times():
    """How long each notebook took, printed at the end (pytest -s) and kept in .cache/simhub/times.json."""
    yield
    if TIMES:
        print("\n" + "\n".join(f"real path, notebook {k}: {s:.0f} s" for k, s in TIMES.items()))
        builder.CACHE.mkdir(parents=True, exist_ok=True)
        (builder.CACHE / "times.json").write_text(json.dumps({k: round(s, 1) for k, s in TIMES.items()}, indent=1))


def _venv_state() -> set[tuple[str, str]]:
    return {(d.metadata["Name"], d.version) for d in distributions()}


@pytest.fixture(scope="session")
def hub():
    return builder.build()


@pytest.fixture(scope="session")
def sms_url(hub):
    with builder.serve(hub) as url:
        yield url


@pytest.fixture(scope="session")
def drive(tmp_path_factory) -> Path:
    """The student's Google Drive folder, not created yet: it outlives each notebook's VM. Notebooks 02 and 03 run
    with COURSE_PREDICTIONS_DIR pointing at it (they copy their results there), notebook 04 reads it."""
    return tmp_path_factory.mktemp("drive") / "MyDrive" / "course-runs"


@pytest.fixture(scope="session")
def course_repo(tmp_path_factory) -> Path:
    """A git repository holding the course as the lead is about to commit it (tracked files and new ones git
    does not ignore, with their current content): what COURSE_REPO points the setup cell's clone at."""
    repo = copy_course(tmp_path_factory.mktemp("origin") / "course")
    git = ["git", "-c", "user.name=simhub", "-c", "user.email=simhub@example.org", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "course snapshot"]):
        subprocess.run(git + cmd, cwd=repo, check=True)
    return repo


def run_on_colab(key: str, tmp_path: Path, hub: Path, sms_url: str, course_repo: Path, **extra):
    """Notebook ``key`` alone on a simulated Colab CPU runtime, profile colab; returns (notebook, content dir)."""
    site = colab.make_site(tmp_path / "colab")
    content = tmp_path / "content"
    content.mkdir()
    env = colab.base_env({**builder.environment(hub, sms_url), **colab.colab_env(site, content),
                          "COURSE_PROFILE": "colab", "COURSE_ALLOW_CPU": "1", "COURSE_OVERRIDE": OVERRIDE,
                          "COURSE_REPO": course_repo.as_uri(), **extra})
    before = _venv_state()
    nb, seconds, probe = colab.execute(course_repo / "notebooks" / NOTEBOOKS[key].name, content, env,
                                       tmp_path / "executed" / NOTEBOOKS[key].name)
    TIMES[" ".join([key, "colab", extra.get("COURSE_MIXED_PRECISION", "")]).strip()] = seconds
    clone = content / "course"
    assert Path(probe["utils"]).resolve().is_relative_to(clone.resolve()), \
        f"utils was imported from {probe['utils']}, not from the notebook's own clone {clone}"
    assert _venv_state() == before, "the setup cell's pip install changed the installed packages"
    return nb, clone


# Checked lines that state a result the stand-ins' random weights cannot promise (quality, not code paths).
QUALITY_CLAIM = re.compile(r"beats|went down|better than|improves|fits a", re.IGNORECASE)   # and a plan's "fits"
EQUALITY = re.compile(r"same|equal|exactly|copied", re.IGNORECASE)


def broken_invariants(nb) -> list[str]:
    """Lines of the notebook's checked cells (# NBVAL_CHECK_OUTPUT) with a broken invariant: a 'label: False' anywhere
    on the line, or an equality counted as 'N of M' with N != M (copied, same, equal, exactly). Quality claims and a
    plan's "fits" are not invariants; the invariants (reloaded = trained, adapters off = base, merged = unmerged, our
    NF4 = bitsandbytes', ...) must hold on any weights."""
    bad = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in cell.source:
            text = "".join(o.get("text", "") for o in cell.get("outputs", []))
            for line in text.splitlines():
                short = EQUALITY.search(line) and any(n != m for n, m in re.findall(r"(\d+(?:,\d{3})*) of (\d+(?:,\d{3})*)", line))
                if (re.search(r":\s*False\b", line) or short) and not QUALITY_CLAIM.search(line):
                    bad.append(f"cell {i}: {line.strip()}")
    return bad


def test_broken_invariants_reads_every_form_and_none_in_the_committed_notebooks():
    """The check the runs below apply, on made-up outputs, then on the committed notebooks (which must pass it)."""
    import nbformat

    def nb(*lines):
        cell = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint()")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="\n".join(lines) + "\n")]
        return nbformat.v4.new_notebook(cells=[cell])

    assert broken_invariants(nb("same codes: False (3 of 4)", "pairs copied: 209 of 210, equal: True",
                                "by hand == rouge-score, exactly: 11 of 12", "merged = unmerged: False")) == [
        "cell 0: same codes: False (3 of 4)", "cell 0: pairs copied: 209 of 210, equal: True",
        "cell 0: by hand == rouge-score, exactly: 11 of 12", "cell 0: merged = unmerged: False"]
    assert broken_invariants(nb("trainable: 1,327,104 of 164,364,288", "fits a T4 (15 GB): False / True",
                                "QLoRA beats the base model on ROUGE-2: False", "same codes: True (884,736 of 884,736)",
                                "pad token = end token: True", "batches that hold both classes: 39 of 40",
                                "LoRA pairs copied: 210 of 210, same classes: True")) == []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert broken_invariants(nbformat.read(path, as_version=4)) == [], path.name


def _results(clone: Path, stem: str) -> dict:
    path = clone / "results" / f"{stem}.json"
    assert path.exists(), f"{stem} wrote no results/{path.name}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("key, precision", [("01", None), ("02", "bf16"), ("03", "bf16"), ("05", "bf16"), ("06", None)])
def test_notebook_alone_on_colab_cpu_runtime(key, precision, tmp_path, hub, sms_url, course_repo, drive):
    extra = {"COURSE_MIXED_PRECISION": precision} if precision else {}
    if key in ("02", "03"):
        extra["COURSE_PREDICTIONS_DIR"] = str(drive)
    nb, clone = run_on_colab(key, tmp_path, hub, sms_url, course_repo, **extra)
    text = colab.outputs_text(nb)
    assert re.search(r"profile\s*: colab", text), "the banner does not state the colab profile"
    assert broken_invariants(nb) == [], f"checked invariants print False ({precision or 'fp32'} run)"
    saved = _results(clone, NOTEBOOKS[key].stem)
    assert saved["profile"] == "colab"
    if key == "03":     # its last section runs the fine-tuning script's --dry-run, as a command, on the colab config
        assert "--config configs/colab.toml --dry-run   (exit 0)" in text and "dry run: every check passed" in text, \
            "notebook 03's dry run of scripts.finetune failed on the colab profile"
    if key in ("02", "03"):
        for name in (f"{NOTEBOOKS[key].stem}.json", f"{NOTEBOOKS[key].stem}.predictions.jsonl"):
            assert (drive / name).read_bytes() == (clone / "results" / name).read_bytes(), f"{name} not copied to Drive"
    CLONES[key] = clone


@pytest.mark.parametrize("key", ["02", "03", "05", "06"])
def test_notebook_alone_on_a_colab_cpu_runtime_once_the_gpu_quota_is_gone(key, tmp_path, hub, sms_url, course_repo):
    """A Colab CPU runtime reaches the hub without a GPU: the `laptop` profile (named here, since the simulated hub is
    offline to the probe), with its models: flan-t5-base, and SmolLM2 from the hub in 4-bit for the QLoRA chapters."""
    nb, clone = run_on_colab(key, tmp_path, hub, sms_url, course_repo, COURSE_PROFILE="laptop")
    text = colab.outputs_text(nb)
    assert re.search(r"profile\s*: laptop", text), "the banner does not state the laptop profile"
    assert ("google/flan-t5-base" if key == "02" else builder.SMOLLM2) in text, "not the laptop profile's model"
    assert broken_invariants(nb) == [], "checked invariants print False on a Colab CPU runtime"
    assert _results(clone, NOTEBOOKS[key].stem)["profile"] == "laptop"


def test_notebook_03_alone_on_the_ungated_fallback(tmp_path, hub, sms_url, course_repo):
    """What the gated-model message tells a student without Llama access: COURSE_LLM=Qwen/Qwen2.5-3B-Instruct, then
    notebook 03 from section 1. The whole notebook on the fallback's stand-in (Qwen2 architecture, ChatML, <|im_end|>),
    bf16 standing in for a T4's fp16: its checked invariants hold and its results name the fallback."""
    nb, clone = run_on_colab("03", tmp_path, hub, sms_url, course_repo, COURSE_MIXED_PRECISION="bf16",
                             COURSE_LLM="Qwen/Qwen2.5-3B-Instruct")
    assert "Qwen/Qwen2.5-3B-Instruct" in colab.outputs_text(nb), "the banner does not name the fallback"
    assert broken_invariants(nb) == [], "checked invariants print False on the fallback"
    assert _results(clone, NOTEBOOKS["03"].stem)["model"] == "Qwen/Qwen2.5-3B-Instruct"


def test_notebook_04_alone_says_it_holds_none_of_the_students_predictions(tmp_path, hub, sms_url, course_repo):
    nb, _ = run_on_colab("04", tmp_path, hub, sms_url, course_repo)
    text = colab.outputs_text(nb)
    assert re.search(r"\byour own\b", text, re.IGNORECASE) and "02" in text and "03" in text, \
        ("notebook 04, alone on Colab (its clone holds only the course's committed predictions), must say that it "
         "holds none of your own predictions and what to do (run 02 and 03, or point it at their results)")


def test_notebook_04_alone_analyses_the_predictions_it_is_pointed_at(tmp_path, hub, sms_url, course_repo, drive):
    """The student's own runs of 02 and 03 (above, each on its own Colab VM), which copied their results to the
    folder (their Drive) that COURSE_PREDICTIONS_DIR names: notebook 04, alone on a fresh VM, analyses those."""
    if not {"02", "03"} <= set(CLONES):
        pytest.skip("needs notebooks 02 and 03 to have run above (see their failures)")
    nb, _ = run_on_colab("04", tmp_path, hub, sms_url, course_repo, COURSE_PREDICTIONS_DIR=str(drive))
    text = colab.outputs_text(nb)
    assert "02 ran on colab" in text and "03 ran on colab" in text, "04 did not read the runs it was pointed at"
    assert not re.search(r"NOT YOURS", text), "04 calls the student's own predictions the course's"
    assert broken_invariants(nb) == []


def test_notebook_01_on_a_laptop_online_without_gpu(tmp_path, hub, sms_url, course_repo):
    clone = tmp_path / "course"
    subprocess.run(["git", "clone", "-q", course_repo.as_uri(), str(clone)], check=True)
    env = colab.base_env({**builder.environment(hub, sms_url), "COURSE_PROFILE": "laptop",
                          "COURSE_OVERRIDE": OVERRIDE})
    name = NOTEBOOKS["01"].name
    nb, seconds, probe = colab.execute(clone / "notebooks" / name, clone / "notebooks", env,
                                       tmp_path / "executed" / name)
    TIMES["01 laptop"] = seconds
    text = colab.outputs_text(nb)
    assert re.search(r"profile\s*: laptop", text), "the banner does not state the laptop profile"
    assert broken_invariants(nb) == []
    assert "openai-community/gpt2" in text
    assert "real SMS Spam Collection, downloaded" in text
    assert _results(clone, NOTEBOOKS["01"].stem)["profile"] == "laptop"


# ----------------------------------------------------------------------------------------------
# The stand-ins behave like the real ids where the course depends on it (seconds, in-process)
# ----------------------------------------------------------------------------------------------

def _tokenizer(hub: Path, repo_id: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(repo_id, cache_dir=hub / "hub", local_files_only=True)


def test_stand_in_tokenizers_keep_the_real_special_tokens(hub):
    gpt2 = _tokenizer(hub, builder.GPT2)
    assert gpt2.pad_token is None and gpt2.eos_token == gpt2.bos_token == "<|endoftext|>"
    assert gpt2("Hello there")["input_ids"][0] != gpt2.bos_token_id          # GPT-2 adds no BOS
    t5 = _tokenizer(hub, builder.FLAN_T5)
    assert (t5.pad_token, t5.pad_token_id, t5.eos_token, t5.eos_token_id) == ("<pad>", 0, "</s>", 1)
    assert t5("Hello there")["input_ids"][-1] == 1                            # T5 appends </s>
    llama = _tokenizer(hub, builder.LLAMA)
    assert llama.pad_token is None and llama.eos_token == "<|eot_id|>"
    assert llama("Hello")["input_ids"][0] == llama.bos_token_id == llama.convert_tokens_to_ids("<|begin_of_text|>")
    chat = llama.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date:")
    assert chat.endswith("Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    for repo_id in (builder.QWEN, builder.SMOLLM2):
        tok = _tokenizer(hub, repo_id)
        chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
        assert chat.startswith("<|im_start|>system\n")
        assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        assert tok.eos_token == "<|im_end|>"


def test_dialogsum_is_in_the_hubs_layout(hub):
    import csv

    snap = next((hub / "hub" / "datasets--knkarthick--dialogsum" / "snapshots").iterdir())
    for split in ("train", "validation", "test"):
        rows = list(csv.DictReader((snap / f"{split}.csv").open()))
        assert list(rows[0]) == ["id", "dialogue", "summary", "topic"]
    ids = [r["id"] for r in rows]                                              # the test split
    assert len(ids) == 3 * len({i.rsplit("_", 1)[0] for i in ids}) and ids[:3] == ["test_1_1", "test_1_2", "test_1_3"]


def test_the_sms_zip_is_served_as_uci_ships_it(hub, sms_url):
    import io
    import urllib.request
    import zipfile

    with urllib.request.urlopen(sms_url, timeout=10) as r:
        names = zipfile.ZipFile(io.BytesIO(r.read())).namelist()
    assert "SMSSpamCollection" in names


SMS_WITHOUT_UCI = """
from utils.data import DATA_DIR, load_sms, parse_sms_collection
df, _ = load_sms(online=True)
print("SAME", df.equals(parse_sms_collection(DATA_DIR / "SMSSpamCollection", verbose=False)), len(df))
"""


def test_when_uci_is_down_the_sms_collection_comes_from_the_hubs_parquet_export(hub, tmp_path):
    """UCI unreachable (nothing listens on the URL): utils.data reads the same messages from ucirvine/sms_spam's
    parquet export through huggingface_hub, in the simulated hub's cache layout, and gets exactly the frame UCI's
    file gives (same rows, same order)."""
    env = colab.base_env({**builder.environment(hub, "http://127.0.0.1:9/unreachable.zip"), "PYTHONPATH": str(ROOT),
                          "COURSE_CACHE_DIR": str(tmp_path / "cache")})
    out = subprocess.run([sys.executable, "-c", SMS_WITHOUT_UCI], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "UCI failed (could not download http://127.0.0.1:9/unreachable.zip" in out.stdout
    assert "read from the Hugging Face Hub's copy, ucirvine/sms_spam" in out.stdout and "SAME True 765" in out.stdout


FALLBACK = """
from utils.models import check_llm_access, load_causal_lm_4bit
from utils.generate import generate_summaries
check_llm_access("meta-llama/Llama-3.2-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct", None)   # resolves: no exception
model, tok = load_causal_lm_4bit("Qwen/Qwen2.5-3B-Instruct")
out = generate_summaries(model, tok, ["#Person1#: Hi.\\n#Person2#: Hello, how can I help?"], 4, batch_size=1)
print("OK", type(model).__name__, tok.pad_token, len(out))
"""


def test_the_ungated_fallback_loads_in_4bit_and_summarises(hub, tmp_path):
    """COURSE_LLM=Qwen/Qwen2.5-3B-Instruct (the fallback the gated-model message offers) on the real path's loader."""
    env = colab.base_env({**builder.environment(hub), "PYTHONPATH": str(ROOT)})
    out = subprocess.run([sys.executable, "-c", FALLBACK], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK Qwen2ForCausalLM <|endoftext|> 1" in out.stdout
