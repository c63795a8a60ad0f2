"""Committed notebooks are clean: outputs from one stated profile, no local paths, user names, tokens
or machine-specific noise.

Every ``notebooks/NN_*.ipynb`` is scanned (sources, text outputs, metadata; image data is skipped),
and so are the committed ``results/`` files. The scanner is tested first on notebooks that leak on
purpose, so that a clean result means something.
"""
from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess

import nbformat
import pytest

from utils.paths import RESULTS_DIR, ROOT
from utils.profiles import PROFILE_NAMES

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RESULT_FILES = sorted(p for p in RESULTS_DIR.glob("*") if p.suffix in (".json", ".jsonl", ".csv")) if RESULTS_DIR.is_dir() else []

# Absolute paths of a machine: /work/..., /tmp/..., /home/<user>/..., C:\Users\... (not inside URLs).
LOCAL_DIRS = r"work|tmp|root|home|Users|mnt|opt|private|var|scratch|srv|media|usr|content|builds|workspace|kaggle"
LOCAL_PATH = re.compile(r"(?<![\w.~:/-])/(?:" + LOCAL_DIRS + r")/[\w.\-][\w.\-/]*", re.I)
WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\(?:Users|Documents and Settings)\\", re.I)
INSTALL_PATH = re.compile(r"\b(?:site|dist)-packages\b")

TOKENS = {
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "Hugging Face org token": re.compile(r"\bapi_org_[A-Za-z0-9]{30,}"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})"),
    "API key (sk-...)": re.compile(r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{20,}"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "secret assigned in the clear": re.compile(
        r"(?i)\w*(?:token|api_?key|secret|passw(?:or)?d)\w*\s*[=:]\s*['\"][A-Za-z0-9_\-]{20,}['\"]"),
}

# Noise that depends on the machine that ran the notebook rather than on the course.
NOISE = {
    "memory address": re.compile(r"\bat 0x[0-9a-fA-F]{6,}\b"),
    "warning about what this machine has installed": re.compile(r"No module named|pip install|is not installed", re.I),
}

GENERIC_NAMES = {"root", "user", "admin", "jovyan", "runner", "ubuntu", "debian", "colab", "localhost", "vscode",
                 "codespace", "nobody", "docker", "vm", "ci", "builder", "course", "main"}
TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex", "application/json", "image/svg+xml")


def personal_strings() -> dict[str, str]:
    """The user name, host name and e-mail of whoever runs the test: none may appear in a notebook."""
    found = {}
    for what, get in (("user name", getpass.getuser), ("host name", socket.gethostname)):
        try:
            value = get()
        except Exception:
            continue
        if value and len(value) >= 4 and value.lower() not in GENERIC_NAMES:
            found[value] = what
    try:
        email = subprocess.run(["git", "config", "--get", "user.email"], capture_output=True, text=True,
                               cwd=ROOT, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        email = ""
    for value in (email, os.environ.get("EMAIL", "")):
        if "@" in value:
            found[value] = "e-mail address"
    return found


def _texts(nb):
    """(where, kind, text): kind is source, output, stderr, metadata, or fallback (the text/plain of an
    output that also has HTML or an image: a reader never sees it, so its memory address is tolerated).
    Image data is not text."""
    yield "notebook metadata", "metadata", json.dumps(nb.metadata)
    for i, cell in enumerate(nb.cells, 1):
        where = f"cell {i} ({cell.cell_type})"
        yield where, "source", cell.source
        if cell.metadata:
            yield where + " metadata", "metadata", json.dumps(cell.metadata)
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                yield where, "stderr" if out.name == "stderr" else "output", out.text
            elif out.output_type == "error":
                yield where, "output", "\n".join(out.get("traceback", [])) + f"\n{out.get('ename')}: {out.get('evalue')}"
            else:
                data = out.get("data", {})
                richer = any(m != "text/plain" for m in data)   # then text/plain is a fallback nobody reads
                for mime, value in data.items():
                    if mime in TEXT_MIMES or mime.endswith("+json"):
                        kind = "fallback" if mime == "text/plain" and richer else "output"
                        yield where, kind, value if isinstance(value, str) else json.dumps(value)


def scan_text(where: str, kind: str, text: str, personal: dict[str, str]) -> list[str]:
    found = []

    def hit(what, m):
        found.append(f"{where}: {what}: {m.group(0)[:60]!r}")

    for m in LOCAL_PATH.finditer(text):
        if kind == "source" and m.group(0).startswith("/content/"):
            continue                              # the Colab setup cell's own folder
        hit("absolute local path", m)
    for pattern, what in ((WINDOWS_PATH, "absolute local path"), (INSTALL_PATH, "path of an installation")):
        for m in pattern.finditer(text):
            hit(what, m)
    for what, pattern in TOKENS.items():
        for m in pattern.finditer(text):
            hit(what, m)
    if kind not in ("source", "fallback"):
        for what, pattern in NOISE.items():
            if what.startswith("warning") and kind != "stderr":
                continue
            for m in pattern.finditer(text):
                hit("machine-specific noise (" + what + ")", m)
    for value, what in personal.items():
        for m in re.finditer(r"(?<![\w.])" + re.escape(value) + r"(?![\w])", text):
            hit(what, m)
    return found


def scan_notebook(nb, personal: dict[str, str] | None = None) -> list[str]:
    personal = personal_strings() if personal is None else personal
    return [f for where, kind, text in _texts(nb) for f in scan_text(where, kind, text, personal)]


def run_problems(nb, results: dict | None) -> list[str]:
    """The committed outputs come from one clean top-to-bottom run of a stated profile."""
    problems = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    if counts != list(range(1, len(code) + 1)):
        problems.append(f"execution counts {counts} are not 1..{len(code)}: re-run the notebook top to bottom "
                        "(make course, or nbconvert --execute --inplace)")
    for i, cell in enumerate(nb.cells, 1):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                problems.append(f"cell {i}: committed with an error ({out.get('ename')})")
    stated = set()
    for cell in code:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                stated |= set(re.findall(r"^profile\s*:\s*(\w+)", out.text, flags=re.M))
    if not stated:
        problems.append("no output states the profile (run.banner(...) prints `profile : <name>`)")
    elif len(stated) > 1 or not stated <= set(PROFILE_NAMES):
        problems.append(f"outputs state the profiles {sorted(stated)}: expected exactly one of {PROFILE_NAMES}")
    elif results is not None and results.get("profile") not in stated:
        problems.append(f"outputs are from profile {sorted(stated)[0]} but results/ says {results.get('profile')}")
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != "python3":
        problems.append(f"kernelspec {kernel!r}: use the standard 'python3' kernel (a local kernel name breaks Colab)")
    return problems


# ----------------------------------------------------------------------------------------------
# The scanner, on notebooks that leak on purpose
# ----------------------------------------------------------------------------------------------

def _leaky(source="x = 1", text="", stderr="", metadata=None):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(source, execution_count=1)
    if text:
        cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text=text))
    if stderr:
        cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=stderr))
    nb.cells = [cell]
    nb.metadata.update(metadata or {})
    return nb


FAKE_HF_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"


@pytest.mark.parametrize("nb, expected", [
    (_leaky(text="saved to /work/main/.cache/adapter"), "absolute local path: '/work/"),
    (_leaky(text="loaded /home/alice/data.csv"), "absolute local path: '/home/"),
    (_leaky(stderr="  warnings.warn( /tmp/ipykernel_4242/123.py:3"), "absolute local path: '/tmp/"),
    (_leaky(text="/content/course/results/x.json"), "absolute local path: '/content/"),
    (_leaky(text=r"C:\Users\bob\course"), "absolute local path"),
    (_leaky(stderr="lib/python3.11/site-packages/torch/x.py:12: UserWarning"), "path of an installation"),
    (_leaky(source=f'token = "{FAKE_HF_TOKEN}"'), "Hugging Face token"),
    (_leaky(text=f"using {FAKE_HF_TOKEN}"), "Hugging Face token"),
    (_leaky(metadata={"colab": {"token": FAKE_HF_TOKEN}}), "Hugging Face token"),
    (_leaky(source='WANDB_API_KEY = "0123456789abcdef0123456789abcdef"'), "secret assigned in the clear"),
    (_leaky(text="<utils.Run object at 0x7f3a2c1b9d50>"), "memory address"),
    (_leaky(stderr="Failed to load kernel: No module named 'kernels'"), "what this machine has installed"),
])
def test_scanner_finds_each_kind_of_leak(nb, expected):
    found = scan_notebook(nb, personal={})
    assert any(expected in f for f in found), found


def test_scanner_tolerates_an_address_only_in_an_unseen_fallback():
    nb = _leaky()
    styler = {"text/plain": "<pandas.io.formats.style.Styler at 0x7f6025de6d10>", "text/html": "<table></table>"}
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", data=styler, execution_count=1)]
    assert scan_notebook(nb, personal={}) == []
    nb.cells[0].outputs[0].data = {"text/plain": styler["text/plain"]}
    assert scan_notebook(nb, personal={}) == [
        "cell 1 (code): machine-specific noise (memory address): 'at 0x7f6025de6d10'"]


def test_scanner_finds_the_user_name():
    found = scan_notebook(_leaky(text="owner: jdoe42 on ws-7"), personal={"jdoe42": "user name"})
    assert found == ["cell 1 (code): user name: 'jdoe42'"]


def test_scanner_passes_clean_text():
    nb = _leaky(source='import os\nos.chdir("/content/course/notebooks")\nurl = "https://github.com/a/tmp/b"',
                text="profile : smoke\nresults written to results/01_x.json\n$COURSE_CACHE_DIR/smollm2\n"
                     "pad_token = '<|endoftext|>' ratio 3/4 and/or work/tmp\n", stderr="100%|##| 30/30 [00:02<00:00]")
    assert scan_notebook(nb, personal={}) == []


def test_run_problems_catch_a_stale_or_unstated_run():
    nb = _leaky(text="profile : smoke\n")
    nb.metadata["kernelspec"] = {"name": "python3"}
    assert run_problems(nb, {"profile": "smoke"}) == []
    assert "results/ says colab" in run_problems(nb, {"profile": "colab"})[0]
    nb.cells[0].execution_count = 7
    assert "are not 1..1" in run_problems(nb, None)[0]
    assert run_problems(_leaky(text="hello"), None) == [
        "no output states the profile (run.banner(...) prints `profile : <name>`)",
        "kernelspec None: use the standard 'python3' kernel (a local kernel name breaks Colab)"]


# ----------------------------------------------------------------------------------------------
# The committed notebooks and results
# ----------------------------------------------------------------------------------------------

def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_no_leak(path):
    found = scan_notebook(nbformat.read(path, as_version=4))
    assert found == [], f"{path.name}:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_outputs_come_from_one_stated_run(path):
    res = RESULTS_DIR / f"{path.stem}.json"
    results = json.loads(res.read_text()) if res.is_file() else None
    problems = run_problems(nbformat.read(path, as_version=4), results)
    assert problems == [], f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", RESULT_FILES, ids=[p.name for p in RESULT_FILES])
def test_results_file_has_no_leak(path):
    personal = personal_strings()
    found = [f for i, line in enumerate(path.read_text().splitlines(), 1)
             for f in scan_text(f"line {i}", "output", line, personal) if "noise" not in f]
    assert found == [], f"results/{path.name}:\n  " + "\n  ".join(found[:20])


# ----------------------------------------------------------------------------------------------
# A checked cell never loads the notebook's first model: on a fresh machine the first load converts SmolLM2's
# GGUF (a message and a progress bar), so its output depends on whether the cache exists.
# ----------------------------------------------------------------------------------------------

# Calls that load a model or build the converted checkpoint (the course's loaders, transformers' own).
LOADERS = {"build_classifier", "load_backbone", "smollm2_checkpoint", "llm_name_or_path", "summary_task",
           "load_base", "load_causal_lm_4bit", "from_pretrained", "offline_tokenizer"}


def _top_level_calls(source: str) -> set[str]:
    """Names of functions called when a cell runs (calls inside a ``def`` or ``lambda`` are not run by it)."""
    import ast

    from nbcode import code_of

    try:
        tree = ast.parse(code_of(source))
    except SyntaxError:
        return set()
    names, todo = set(), list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
        todo.extend(ast.iter_child_nodes(node))
    return names


def first_load_is_checked(nb) -> int | None:
    """Index (among code cells) of the first cell that loads a model, if that cell is a checked one."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        if _top_level_calls(cell.source) & LOADERS:
            return i if "NBVAL_CHECK_OUTPUT" in cell.source else None
    return None


def test_first_load_detector_sees_calls_not_definitions():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def build(p):\n    return load_backbone(p)"),
                nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nclf = build_classifier()\nprint(1)")]
    assert first_load_is_checked(nb) == 1
    nb.cells.insert(1, nbformat.v4.new_code_cell("clf = build_classifier()"))
    assert first_load_is_checked(nb) is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_checked_cell_makes_the_first_model_load(path):
    i = first_load_is_checked(nbformat.read(path, as_version=4))
    assert i is None, (f"{path.name}: code cell {i} is checked (# NBVAL_CHECK_OUTPUT) and is the first to load a "
                       f"model; on a fresh machine it also prints the conversion. Load the model in an unchecked "
                       f"cell before it.")


NOTEBOOK_RESULTS = [RESULTS_DIR / f"{nb.stem}.json" for nb in NOTEBOOKS if (RESULTS_DIR / f"{nb.stem}.json").is_file()]


@pytest.mark.parametrize("path", NOTEBOOK_RESULTS, ids=[p.stem for p in NOTEBOOK_RESULTS])
def test_results_name_the_pretrained_model_behind_their_task_results(path):
    """A notebook's `model` (its banner's, saved in results/) is the model its task results come from: real
    pretrained weights. Random-weight models of the exact architectures are for counts and shapes only, and are
    named in another field."""
    model = json.loads(path.read_text()).get("model", "")
    assert model, f"results/{path.name} names no model"
    assert not re.search(r"random", model, re.IGNORECASE), \
        f"results/{path.name}: the headline model is random-weight ({model!r}); name the pretrained one in `model`"


MAX_CELLS = 50       # issue 14: a student finishes a notebook in one sitting


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_fits_one_sitting(path):
    cells = nbformat.read(path, as_version=4).cells
    assert len(cells) <= MAX_CELLS, (f"{path.name} has {len(cells)} cells, more than {MAX_CELLS}: merge cells that "
                                     f"serve one idea, move plumbing into utils/, or split the notebook")


REFERENCE_CITATION = re.compile(r"REFERENCES\.md\)?\s*§\s*(\d+)")


def test_reference_citations_resolve_inside_the_repository():
    """Every "REFERENCES.md §N" cited by a notebook or test names a section of the repository's REFERENCES.md, and
    nothing cites the course's private notes (ANCHORS), which readers of the repository cannot open."""
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "REFERENCES.md").read_text(encoding="utf-8"), re.M))
    assert sections, "REFERENCES.md has no numbered sections"
    cited, private = {}, []
    for path in [*NOTEBOOKS, *sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "utils").glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":
            text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        cited.update({n: path.name for n in REFERENCE_CITATION.findall(text)})
        if "ANCHORS" in text and path.name != "test_hygiene.py":
            private.append(path.name)
    assert cited, "no notebook cites REFERENCES.md"
    assert {n: p for n, p in cited.items() if n not in sections} == {}
    assert private == []
