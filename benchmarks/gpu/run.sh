#!/usr/bin/env bash
# The GPU benchmarks of BENCHMARKS.md and a GPU smoke run of the demo, on one NVIDIA GPU.
#
#   benchmarks/gpu/run.sh OUTPUT_DIR
#
# Needs a Python (PYTHON, default python3) that imports TensorFlow 2.21 with CUDA
# (pip install "tensorflow[and-cuda]==2.21.0" keras-hub==0.32.0; see offline_env.sh for a
# machine without a package index). Each step runs under its own time limit and writes
# its log and report under OUTPUT_DIR; a failed step does not stop the next one. Prints
# the reports last.
#
# 1. A probe: the GPU TensorFlow sees, and a matmul in each precision (and one under XLA)
#    against NumPy in float64.
# 2. bench_training.py on the GPU: BERT-large and BERT-base at sequence length 128, bf16
#    and fp16, ours against keras-hub's BertMaskedLM, all workers of a model compiling
#    together and then timed one at a time.
# 3. The demo's pretraining (make pretrain's data and flags) on the GPU for a few hundred
#    steps with --precision=bf16: the command line, checkpoints and eval on a real GPU.
set -u -o pipefail
out=${1:?usage: benchmarks/gpu/run.sh OUTPUT_DIR}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$here" || exit 1

step() {  # step NAME SECONDS COMMAND...: runs it with a limit, logs to OUTPUT_DIR/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout --signal=TERM --kill-after=20 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - start)) s"
    return $rc
}

step probe 120 "$py" benchmarks/gpu/probe.py || {
    tail -n 60 "$out/probe.log"
    exit 1
}
grep -E '^(probe|GPU|matmul|xla)' "$out/probe.log"

# Each model's workers take 100-150 s to trace and compile together on an H200 with 16
# CPU cores (first run, 2026-11-26), then about 40 s to be timed.
bench=("$py" benchmarks/bench_training.py --device=gpu --warm_up_together --windows=3
       --window_seconds=2 --gemm_sizes=8192 --gemm_repeats=5 --warmup_steps=2)
step large "${LARGE_LIMIT:-330}" "${bench[@]}" --configs=large --precisions=bf16,fp16 \
    --batch_size=64 --output="$out/large.md"
step base "${BASE_LIMIT:-300}" "${bench[@]}" --configs=base --precisions=bf16,fp16 \
    --batch_size=128 --output="$out/base.md"

demo=$out/demo
mkdir -p "$demo"
awk 'BEGIN { RS = ""; ORS = "\n\n" } NR <= 36 { print > "'"$demo"'/train.txt" }
     NR > 36 { print > "'"$demo"'/heldout.txt" }' sample_text.txt
step demo "${DEMO_LIMIT:-120}" bash -c "
    CUDA_VISIBLE_DEVICES= $py create_pretraining_data.py --input_file=$demo/train.txt \
        --vocab_file=vocab.txt --output_file=$demo/train.tfrecord --max_seq_length=128 \
        --max_predictions_per_seq=20 --dupe_factor=10 &&
    CUDA_VISIBLE_DEVICES= $py create_pretraining_data.py --input_file=$demo/heldout.txt \
        --vocab_file=vocab.txt --output_file=$demo/heldout.tfrecord --max_seq_length=128 \
        --max_predictions_per_seq=20 --dupe_factor=2 --random_seed=54321 &&
    $py run_pretraining_gpu.py --input_file=$demo/train.tfrecord \
        --eval_input_file=$demo/heldout.tfrecord --output_dir=$demo/pretrain \
        --bert_config_file=bert_config.json --do_train --do_eval --num_gpus=1 \
        --precision=bf16 --batch_size=16 --num_train_steps=400 --num_warmup_steps=40 \
        --learning_rate=1e-3 --save_checkpoints_steps=200 --eval_every_n_steps=200 \
        --log_every_n_steps=100 --max_eval_steps=0"
grep -v -E '^(W|I|E)0000' "$out/demo.log" | tail -n 25
rm -rf "$demo"/*.tfrecord "$demo"/pretrain/model.ckpt-*
for report in large base; do
    echo "== $report"
    [ -f "$out/$report.md" ] && cat "$out/$report.md" || tail -n 30 "$out/$report.log"
done
