#!/usr/bin/env bash
# The GPU benchmarks of BENCHMARKS.md and a GPU smoke run of the demo, on one NVIDIA GPU.
#
#   benchmarks/gpu/run.sh OUTPUT_DIR [STEP ...]
#   # default: probe replicas precision large base demo cpu_bf16
#
# Needs a Python (PYTHON, default python3) that imports TensorFlow 2.21 with CUDA
# (pip install "tensorflow[and-cuda]==2.21.0" keras-hub==0.32.0; see offline_env.sh for a
# machine without a package index). Each step runs under its own time limit (NAME_LIMIT
# seconds in the environment overrides it, e.g. BASE_LIMIT=400) and writes its log and
# report under OUTPUT_DIR; a failed step does not stop the next one, except the probe.
# Prints the reports last, and exits 1 if a step failed. The steps:
#
# probe     the GPU TensorFlow sees, and a matmul in each precision (and one under XLA)
#           against NumPy in float64 (benchmarks/gpu/probe.py); the others need it to pass.
# replicas  the --num_gpus=2 code path (XLA clusters per replica, all-reduce between) on
#           the GPU split into two logical GPUs, against one replica with the whole batch,
#           fp32 and bf16, to the tests' tolerances (benchmarks/gpu/replicas.py); on an
#           H100 71 s (2026-11-26).
# precision the bf16 and fp16 gradients of BERT-mini against float32, by variable group,
#           ours with and without XLA against Keras's own dense layer
#           (benchmarks/precision_gradients.py): do the bias gradients sum in the half
#           type on the GPU? (Without XLA they did, as on CPUs; on an H100 85 s, 2026-11-26.)
# large     bench_training.py on the GPU, BERT-large at sequence length 128, batch 64, bf16
# base      and fp16, ours against keras-hub's BertMaskedLM (base: batch 128); all workers
#           of a model compile together, then are timed one at a time. On an H200 with 16
#           CPU cores the compiling took 135-152 s for large (2026-11-26), the timing 40 s;
#           on an H100, the base step took 194 s in all (first steps 118-130 s). On an
#           H100 (80 GB) the four BERT-large workers of bf16 and fp16 compiling together
#           took 215 s, and keras-hub's fp16 worker aborted (2026-11-27): there, run the
#           precisions one at a time, LARGE_PRECISIONS=bf16, then LARGE_PRECISIONS=fp16,
#           each into its own OUTPUT_DIR (the step's log and report are large.log, large.md).
# demo      `make pretrain` (the demo: its data, 800 steps, checkpoints, evals) with this
#           Python, on the GPU, with --precision=bf16, into OUTPUT_DIR/demo.
# cpu_bf16  only where the host CPU has bf16 matrix instructions (AMX or AVX512-BF16):
#           bench_training.py on the host CPU, BERT-small, fp32 and bf16, both sides on the
#           BFC allocator and oneDNN (the speed issue's CPU bf16 goal: bf16 at least 1.6×
#           our fp32, and ahead of keras-hub). Ours runs with its default --xla: off in bf16,
#           and in fp32 too where the CPU has AMX (on with AVX512-BF16 alone). On the H100
#           machine's 16-core Xeon (AMX): under 165 s (2026-11-26).
set -u -o pipefail
out=${1:?usage: benchmarks/gpu/run.sh OUTPUT_DIR [STEP ...]}
shift
steps=${*:-probe replicas precision large base demo cpu_bf16}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
out=$(CDPATH='' cd -- "$out" && pwd)  # the steps run from the repository's root
export PYTHONUNBUFFERED=1
cd "$here" || exit 1

wanted() { [[ " $steps " == *" $1 "* ]]; }

step() {  # step NAME SECONDS COMMAND...: runs it with a limit, logs to OUTPUT_DIR/NAME.log
    local name=$1 limit=$2 start rc override
    shift 2
    override=${name^^}_LIMIT
    limit=${!override:-$limit}
    echo "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout --signal=TERM --kill-after=20 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - start)) s"
    [ "$rc" = 0 ] || failed+=("$name")
    return $rc
}
failed=()

if wanted probe; then
    step probe 120 "$py" benchmarks/gpu/probe.py || {
        tail -n 60 "$out/probe.log"
        exit 1
    }
    grep -E '^(probe|GPU|matmul|xla)' "$out/probe.log"
fi

if wanted replicas; then
    step replicas 240 "$py" benchmarks/gpu/replicas.py
    grep -E '^(replicas|fp32|bf16)' "$out/replicas.log"
fi

if wanted precision; then
    step precision 240 "$py" benchmarks/precision_gradients.py --device=gpu --config=mini \
        --precisions=bf16,fp16 --column_sums=keras,reduce --xla=true,false
    grep -E '^\|' "$out/precision.log"
fi

bench=("$py" benchmarks/bench_training.py --device=gpu --warm_up_together --windows=3
       --window_seconds=2 --gemm_sizes=8192 --gemm_repeats=5 --warmup_steps=2)
reports=()
if wanted large; then
    step large 330 "${bench[@]}" --configs=large \
        --precisions="${LARGE_PRECISIONS:-bf16,fp16}" --batch_size=64 \
        --output="$out/large.md"
    reports+=(large)
fi
if wanted base; then
    step base 300 "${bench[@]}" --configs=base --precisions=bf16,fp16 --batch_size=128 \
        --output="$out/base.md"
    reports+=(base)
fi

if wanted demo; then
    # -o: the Makefile's .venv is neither needed nor built; PY is the Python that runs it.
    step demo 150 make -o .venv/.installed pretrain PY="$py" DEMO="$out/demo" \
        DEMO_DEVICES=--precision=bf16
    grep -v -E '^(W|I|E)0000' "$out/demo.log" | tail -n 25
    rm -rf "$out"/demo/*.tfrecord "$out"/demo/pretrain/model.ckpt-*
fi

if wanted cpu_bf16; then
    if grep -q -w -E 'amx_bf16|avx512_bf16' /proc/cpuinfo; then
        step cpu_bf16 300 "$py" benchmarks/bench_training.py --device=cpu --warm_up_together \
            --configs=small --precisions=fp32,bf16 --windows=3 --window_seconds=8 \
            --theirs_cpu_bfc --theirs_onednn --output="$out/cpu_bf16.md"
        reports+=(cpu_bf16)
    else
        echo "== cpu_bf16: skipped, the host CPU has neither AMX nor AVX512-BF16"
    fi
fi

for report in "${reports[@]}"; do
    echo "== $report"
    if [ -f "$out/$report.md" ]; then cat "$out/$report.md"; else tail -n 30 "$out/$report.log"; fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in $out)"
    exit 1
fi
