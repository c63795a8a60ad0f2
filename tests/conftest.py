import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The tests were written for the committed outputs' profile on a CPU (some read CPU-only behaviour, such as
# bitsandbytes' repacking): every run of them pins both, `make test`'s jobs (tools.runner's unit_env) and a bare
# `pytest` alike. Set before anything imports torch, so that no GPU is ever seen.
os.environ["COURSE_PROFILE"] = "smoke"
os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty COURSE_DATA_DIR for a test to fill with real-format files."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    (tmp_path / "dialogsum").mkdir()
    return tmp_path


def pytest_configure(config):
    config.addinivalue_line("markers", "realpath: a notebook run end to end on the simulated hub (tests/test_real_path.py)")
