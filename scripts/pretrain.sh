#!/usr/bin/env bash
# The two-phase BERT pretraining recipe on all local GPUs (and, under TF_CONFIG, on every
# worker of a cluster: see pretrain_multinode.sh). Run with --help for the usage.
#
# Sources of the recipes (numbers checked against them):
#   bert-paper   Devlin et al. 2018, "BERT: Pre-training of Deep Bidirectional Transformers
#                for Language Understanding", appendix A.2: batch 256 sequences, 1,000,000
#                steps, Adam lr 1e-4, beta1 0.9, beta2 0.999, L2 weight decay 0.01, warm-up
#                over the first 10,000 steps, linear decay; sequence length 128 for 90% of
#                the steps, 512 for the remaining 10% "to learn the positional
#                embeddings". 20 / 80 predictions per sequence: google-research/bert README
#                (max_predictions_per_seq ~ max_seq_length x masked_lm_prob).
#                Phase 2 is a new run initialised from phase 1's weights (the optimizer
#                moments start from zero, as with the release's --init_checkpoint), so its
#                schedule is the paper's tail: at step 900k the paper's linear decay stands
#                at 1e-4 x 100k/990k ~ 1e-5 and reaches 0 at 1M, hence PHASE2_LR=1e-5 with
#                a 1% warm-up (the paper's proportion) to rebuild the moments. Phase 1
#                decays to 0 at 900k instead of to 1e-5 (the trainer decays to 0 at the
#                end of its run): a small departure from the paper's single schedule.
#   nvidia-lamb  NVIDIA DeepLearningExamples, PyTorch/LanguageModeling/BERT:
#                scripts/configs/pretrain_config.sh (dgxa100_8gpu_fp16) and
#                scripts/run_pretraining.sh; README: "a global batch size of 65536 and
#                32768 on sequence lengths 128 and 512". Phase 1: 8 GPUs x 8192 = 65,536
#                sequences per step, lr 6e-3, warmup_proportion 0.2843 of 7,038 steps
#                (2,000 steps); phase 2: 8 x 4096 = 32,768, lr 4e-3, warmup_proportion
#                0.128 of 1,563 steps (200 steps); LAMB, polynomial decay with power 0.5,
#                weight decay 0.01. (Their phase 2 also reloads phase 1's LAMB moments;
#                here phase 2 starts them from zero.) The TF2 variant of the same
#                repository (TensorFlow2/LanguageModeling/BERT/scripts/run_pretraining_lamb.sh)
#                uses 61,440 / 30,720 sequences and lr 7.5e-4 / 5e-4 with its own LAMB.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/pretrain.sh [--dry_run] BERT_CONFIG DATA_DIR OUTPUT_DIR

Two-phase BERT pretraining on every local GPU: phase 1 on sequences of 128 tokens for
90% of the steps, then phase 2 on sequences of 512, initialised from phase 1's weights;
each phase evaluates at its end. Run the same command again to resume: finished phases
are skipped, an unfinished one continues from its newest checkpoint.

  BERT_CONFIG  bert_config.json (or a Hugging Face config.json); its
               max_position_embeddings must cover phase 2's sequences (512)
  DATA_DIR     the OUTPUT_DIR of scripts/create_data.sh: phase1/train-*.tfrecord,
               phase2/train-*.tfrecord and, if made, phaseN/eval.tfrecord
  OUTPUT_DIR   receives phase1/ and phase2/ (checkpoints, TensorBoard logs,
               eval_results.txt), pretrain.log (everything printed, appended run after
               run; pretrain.worker-I.log per worker under TF_CONFIG) and
               pretrain_settings.txt (the recipe; a re-run with another is refused).
               The final model: OUTPUT_DIR/phase2 (its newest checkpoint).
  --dry_run    check the inputs, print the settings and the commands, train nothing

Recipes (RECIPE=...), each with its published numbers as defaults:
                     bert-paper (default)           nvidia-lamb
  optimizer          AdamW, linear decay            LAMB, polynomial decay (power 0.5)
  steps              1,000,000 (900,000 + 100,000)  8,601 (7,038 + 1,563)
  global batch       256 / 256                      65,536 / 32,768
  learning rate      1e-4 / 1e-5                    6e-3 / 4e-3
  warm-up steps      10,000 / 1,000                 2,000 / 200
  (phase 1 / phase 2; sources: the comments at the top of this script)
The global batch is kept whatever the number of GPUs: each replica takes at most
PHASEn_BATCH_SIZE sequences per micro-batch and gradients are accumulated over
global batch / (replicas x batch size) micro-batches (e.g. nvidia-lamb on 8 GPUs:
64 x 8 x 128 = 65,536 in phase 1). Warm-ups scale with the steps when the steps are
changed.

Environment variables (default in brackets):
  RECIPE               bert-paper or nvidia-lamb [bert-paper]
  TOTAL_STEPS          optimizer steps of both phases [1000000 | 8601]
  PHASE1_STEPS         phase-1 steps [90% of TOTAL_STEPS | TOTAL_STEPS x 7038/8601]
  PHASE2_STEPS         phase-2 steps [TOTAL_STEPS - PHASE1_STEPS]
  PHASE1_GLOBAL_BATCH  sequences per optimizer step, all replicas [256 | 65536]
  PHASE2_GLOBAL_BATCH  [256 | 32768]
  PHASE1_BATCH_SIZE    most sequences per replica per micro-batch (GPU memory) [64]
  PHASE2_BATCH_SIZE    [16]
  PHASE1_ACCUMULATION  micro-batches per step [computed from the three above]
  PHASE2_ACCUMULATION  [computed]
  PHASE1_LR            peak learning rate [1e-4 | 6e-3]
  PHASE2_LR            [1e-5 | 4e-3]
  PHASE1_WARMUP        warm-up steps [TOTAL_STEPS/100 | 28.43% of PHASE1_STEPS]
  PHASE2_WARMUP        [PHASE2_STEPS/100 | 12.8% of PHASE2_STEPS]
  OPTIMIZER            adamw or lamb [adamw | lamb]
  POLY_POWER           learning-rate decay power after warm-up [1 | 0.5]
  WEIGHT_DECAY         decoupled weight decay [0.01]
  PRECISION            fp32, bf16 or fp16 (bf16 on Ampere or newer GPUs) [fp32]
  XLA                  1: compile the steps with XLA; 0: don't; auto: the trainer's
                       default (on, except bf16 on a CPU with AMX or AVX512-BF16,
                       fp32 on a CPU with AMX, and fp32 at hidden size 768 and up
                       on a CPU with AVX512-BF16) [auto]
  NUM_GPUS             GPUs per machine [those of CUDA_VISIBLE_DEVICES, else nvidia-smi -L]
  CPU_REPLICAS         without a GPU: replicas on logical CPU devices (tests) [0: one]
  PHASE1_DATA          phase-1 training files (globs, comma-separated) [DATA_DIR/phase1/train-*.tfrecord]
  PHASE2_DATA          [DATA_DIR/phase2/train-*.tfrecord]
  PHASE1_EVAL_DATA     held-out eval files [DATA_DIR/phase1/eval.tfrecord if it exists,
                       else none: the training files are evaluated, with a warning]
  PHASE2_EVAL_DATA     [DATA_DIR/phase2/eval.tfrecord if it exists]
  DO_EVAL              1: evaluate at the end of each phase [1]
  EVAL_EVERY           also evaluate every N steps; 0: only at the end [0]
  MAX_EVAL_STEPS       eval batches at most; 0: the whole eval set [100]
  EVAL_BATCH_SIZE      eval sequences per replica [8]
  INIT_CHECKPOINT      phase 1 starts from these weights (continued pretraining) []
  SAVE_STEPS           steps between checkpoints [1000 | 200]
  KEEP_CHECKPOINTS     checkpoints kept per phase [5]
  LOG_EVERY            steps between log lines and TensorBoard summaries [100]
  STEPS_PER_LOOP       most steps per call into TensorFlow [100]
  SEED                 seed of the initial weights, the data order and dropout [12345]
  EXTRA_FLAGS          more flags for run_pretraining_gpu.py, both phases (word-split) []
  PYTHON               interpreter [.venv/bin/python of the repository, else python3]
  TF_CONFIG            the cluster, when several machines train together (set by
                       scripts/pretrain_multinode.sh); absent: this machine alone
  CHIEF_WAIT           seconds a worker other than 0 waits, after a phase, for the
                       chief's checkpoint to appear in the shared OUTPUT_DIR [600]

Example:
  VOCAB_FILE=vocab.txt scripts/create_data.sh corpus/ data/
  scripts/pretrain.sh bert_config.json data/ out/            # Ctrl-C, then again: resumes
  RECIPE=nvidia-lamb PRECISION=bf16 scripts/pretrain.sh bert_config.json data/ out-lamb/
EOF
}

parse_options "$@"
((${#ARGS[@]} == 3)) || die "expected BERT_CONFIG DATA_DIR OUTPUT_DIR (see --help)"
BERT_CONFIG=${ARGS[0]} DATA_DIR=${ARGS[1]} OUTPUT_DIR=${ARGS[2]}
# Absolute, so that the recorded settings and the logged commands hold from any directory.
DATA_DIR=$(realpath -s -m -- "$DATA_DIR")
OUTPUT_DIR=$(realpath -s -m -- "$OUTPUT_DIR")

# ----------------------------------------------------------------------------------------
# Settings: the recipe's published numbers, then what the environment overrides.

RECIPE=${RECIPE:-bert-paper}
case $RECIPE in
bert-paper)
    TOTAL_STEPS=${TOTAL_STEPS:-1000000}
    require_int TOTAL_STEPS "$TOTAL_STEPS" 2
    PHASE1_STEPS=${PHASE1_STEPS:-$((10#$TOTAL_STEPS * 9 / 10))}
    PHASE1_GLOBAL_BATCH=${PHASE1_GLOBAL_BATCH:-256}
    PHASE2_GLOBAL_BATCH=${PHASE2_GLOBAL_BATCH:-256}
    PHASE1_LR=${PHASE1_LR:-1e-4}
    PHASE2_LR=${PHASE2_LR:-1e-5}
    PHASE1_WARMUP=${PHASE1_WARMUP:-$((10#$TOTAL_STEPS / 100))}
    OPTIMIZER=${OPTIMIZER:-adamw}
    POLY_POWER=${POLY_POWER:-1}
    SAVE_STEPS=${SAVE_STEPS:-1000}
    ;;
nvidia-lamb)
    TOTAL_STEPS=${TOTAL_STEPS:-8601}
    require_int TOTAL_STEPS "$TOTAL_STEPS" 2
    PHASE1_STEPS=${PHASE1_STEPS:-$((10#$TOTAL_STEPS * 7038 / 8601))}
    PHASE1_GLOBAL_BATCH=${PHASE1_GLOBAL_BATCH:-65536}
    PHASE2_GLOBAL_BATCH=${PHASE2_GLOBAL_BATCH:-32768}
    PHASE1_LR=${PHASE1_LR:-6e-3}
    PHASE2_LR=${PHASE2_LR:-4e-3}
    require_int PHASE1_STEPS "$PHASE1_STEPS" 1
    PHASE1_WARMUP=${PHASE1_WARMUP:-$((10#$PHASE1_STEPS * 2843 / 10000))}
    OPTIMIZER=${OPTIMIZER:-lamb}
    POLY_POWER=${POLY_POWER:-0.5}
    SAVE_STEPS=${SAVE_STEPS:-200}
    ;;
*) die "RECIPE=$RECIPE: expected bert-paper or nvidia-lamb" ;;
esac
require_int PHASE1_STEPS "$PHASE1_STEPS" 1
[[ -n ${PHASE2_STEPS:-} ]] || ((10#$PHASE1_STEPS < 10#$TOTAL_STEPS)) ||
    die "PHASE1_STEPS=$PHASE1_STEPS leaves no steps of TOTAL_STEPS=$TOTAL_STEPS for phase 2"
PHASE2_STEPS=${PHASE2_STEPS:-$((10#$TOTAL_STEPS - 10#$PHASE1_STEPS))}
require_int PHASE2_STEPS "$PHASE2_STEPS" 1
if [[ $RECIPE == bert-paper ]]; then
    PHASE2_WARMUP=${PHASE2_WARMUP:-$((10#$PHASE2_STEPS / 100))}
else
    PHASE2_WARMUP=${PHASE2_WARMUP:-$((10#$PHASE2_STEPS * 128 / 1000))}
fi
PHASE1_BATCH_SIZE=${PHASE1_BATCH_SIZE:-64}
PHASE2_BATCH_SIZE=${PHASE2_BATCH_SIZE:-16}
PHASE1_ACCUMULATION=${PHASE1_ACCUMULATION:-}
PHASE2_ACCUMULATION=${PHASE2_ACCUMULATION:-}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.01}
PRECISION=${PRECISION:-fp32}
XLA=${XLA:-auto}
NUM_GPUS=${NUM_GPUS:-}
CPU_REPLICAS=${CPU_REPLICAS:-0}
PHASE1_DATA=${PHASE1_DATA:-$DATA_DIR/phase1/train-*.tfrecord}
PHASE2_DATA=${PHASE2_DATA:-$DATA_DIR/phase2/train-*.tfrecord}
if [[ -z ${PHASE1_EVAL_DATA+set} ]]; then
    PHASE1_EVAL_DATA=""
    [[ ! -f $DATA_DIR/phase1/eval.tfrecord ]] || PHASE1_EVAL_DATA=$DATA_DIR/phase1/eval.tfrecord
fi
if [[ -z ${PHASE2_EVAL_DATA+set} ]]; then
    PHASE2_EVAL_DATA=""
    [[ ! -f $DATA_DIR/phase2/eval.tfrecord ]] || PHASE2_EVAL_DATA=$DATA_DIR/phase2/eval.tfrecord
fi
DO_EVAL=${DO_EVAL:-1}
EVAL_EVERY=${EVAL_EVERY:-0}
MAX_EVAL_STEPS=${MAX_EVAL_STEPS:-100}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-8}
INIT_CHECKPOINT=${INIT_CHECKPOINT:-}
KEEP_CHECKPOINTS=${KEEP_CHECKPOINTS:-5}
LOG_EVERY=${LOG_EVERY:-100}
STEPS_PER_LOOP=${STEPS_PER_LOOP:-100}
SEED=${SEED:-12345}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
CHIEF_WAIT=${CHIEF_WAIT:-600}
PYTHON=${PYTHON:-$(default_python)}

# ----------------------------------------------------------------------------------------
# Check everything before the first long step.

for name in PHASE1_WARMUP PHASE2_WARMUP; do require_int "$name" "${!name}" 0; done
for name in PHASE1_GLOBAL_BATCH PHASE2_GLOBAL_BATCH PHASE1_BATCH_SIZE PHASE2_BATCH_SIZE \
    SAVE_STEPS KEEP_CHECKPOINTS LOG_EVERY STEPS_PER_LOOP EVAL_BATCH_SIZE; do
    require_int "$name" "${!name}" 1
done
for name in PHASE1_ACCUMULATION PHASE2_ACCUMULATION NUM_GPUS; do
    [[ -z ${!name} ]] || require_int "$name" "${!name}" "$([[ $name == NUM_GPUS ]] && echo 0 || echo 1)"
done
for name in CPU_REPLICAS EVAL_EVERY MAX_EVAL_STEPS SEED CHIEF_WAIT; do require_int "$name" "${!name}" 0; done
for name in PHASE1_LR PHASE2_LR POLY_POWER WEIGHT_DECAY; do require_number "$name" "${!name}"; done
case $XLA in 0 | 1 | auto) ;; *) die "XLA=$XLA: expected 0, 1 or auto" ;; esac
require_bool DO_EVAL "$DO_EVAL"
case $OPTIMIZER in adamw | lamb) ;; *) die "OPTIMIZER=$OPTIMIZER: expected adamw or lamb" ;; esac
case $PRECISION in fp32 | bf16 | fp16) ;; *) die "PRECISION=$PRECISION: expected fp32, bf16 or fp16" ;; esac
for phase in 1 2; do
    steps_var=PHASE${phase}_STEPS warmup_var=PHASE${phase}_WARMUP
    ((10#${!warmup_var} <= 10#${!steps_var})) ||
        die "$warmup_var=${!warmup_var} is more than $steps_var=${!steps_var}: the learning rate would never reach its peak"
done
[[ -f $BERT_CONFIG && -r $BERT_CONFIG ]] || die "BERT_CONFIG=$BERT_CONFIG: no such readable file"
[[ -d $DATA_DIR ]] || die "DATA_DIR=$DATA_DIR: no such directory (make it with scripts/create_data.sh)"
for name in BERT_CONFIG OUTPUT_DIR PHASE1_EVAL_DATA PHASE2_EVAL_DATA INIT_CHECKPOINT; do
    require_no_comma "$name" "${!name}"
done
[[ ! -e $OUTPUT_DIR || -d $OUTPUT_DIR ]] || die "OUTPUT_DIR=$OUTPUT_DIR exists and is not a directory"
require_python
read -r -a EXTRA <<<"$EXTRA_FLAGS"

# The cluster: TF_CONFIG names the workers (pretrain_multinode.sh sets it); without it,
# this machine trains alone.
NUM_WORKERS=1 WORKER_INDEX=0
if [[ -n ${TF_CONFIG:-} ]]; then
    cluster=$("$PYTHON" -c '
import json, os, sys
try:
    c = json.loads(os.environ["TF_CONFIG"])
    hosts, task = list(c["cluster"]["worker"]), c["task"]
    index = int(task["index"])
    assert set(c["cluster"]) == {"worker"} and task.get("type", "worker") == "worker"
    assert 0 <= index < len(hosts)
except Exception as e:
    sys.exit(f"{type(e).__name__}: {e}")
print(len(hosts), index)
') || die "TF_CONFIG is not a valid cluster description of worker tasks (expected {\"cluster\": {\"worker\": [\"host:port\", ...]}, \"task\": {\"type\": \"worker\", \"index\": i}}): $TF_CONFIG"
    read -r NUM_WORKERS WORKER_INDEX <<<"$cluster"
fi

# Replicas of this machine.
if [[ -z $NUM_GPUS ]]; then
    if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
        NUM_GPUS=0
        IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
        for device in "${visible[@]}"; do [[ -z $device || $device == -* ]] || NUM_GPUS=$((NUM_GPUS + 1)); done
    else
        NUM_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
fi
NUM_GPUS=$((10#$NUM_GPUS))
CPU_REPLICAS=$((10#$CPU_REPLICAS))
if ((NUM_GPUS > 0)); then
    ((CPU_REPLICAS == 0)) || die "CPU_REPLICAS=$CPU_REPLICAS is for machines without a GPU, and NUM_GPUS=$NUM_GPUS: set one of them"
    DEVICE_FLAGS=(--num_gpus="$NUM_GPUS") LOCAL_REPLICAS=$NUM_GPUS DEVICES="$NUM_GPUS GPU(s)"
    if ((NUM_WORKERS > 1)); then
        # Each worker of a cluster trains on all the GPUs it sees (the trainer refuses
        # --num_gpus there): let it see NUM_GPUS of them, so the batch arithmetic holds.
        if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
            IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
        else
            mapfile -t visible < <(seq 0 $((NUM_GPUS - 1)))
        fi
        ((${#visible[@]} >= NUM_GPUS)) || die "NUM_GPUS=$NUM_GPUS, but CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES names ${#visible[@]}"
        CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${visible[*]:0:NUM_GPUS}")
        export CUDA_VISIBLE_DEVICES
        DEVICE_FLAGS=() DEVICES="$NUM_GPUS GPU(s) (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)"
    fi
elif ((CPU_REPLICAS > 0)); then
    DEVICE_FLAGS=(--cpu_replicas="$CPU_REPLICAS") LOCAL_REPLICAS=$CPU_REPLICAS
    DEVICES="no GPU: $CPU_REPLICAS logical CPU device(s)"
else
    DEVICE_FLAGS=(--num_gpus=0) LOCAL_REPLICAS=1 DEVICES="no GPU: 1 CPU replica (a GPU-less machine trains BERT very slowly)"
fi
REPLICAS=$((LOCAL_REPLICAS * NUM_WORKERS))

# split_batch PHASE: sets BATCH and ACCUMULATION of the phase so that
# BATCH x REPLICAS x ACCUMULATION is the phase's global batch, BATCH <= its batch size.
split_batch() {
    local phase=$1 global_var=PHASE$1_GLOBAL_BATCH max_var=PHASE$1_BATCH_SIZE accum_var=PHASE$1_ACCUMULATION
    local global=$((10#${!global_var})) max=$((10#${!max_var})) accumulation=${!accum_var}
    ((global % REPLICAS == 0)) ||
        die "$global_var=$global is not a multiple of the $REPLICAS replica(s) ($LOCAL_REPLICAS per machine x $NUM_WORKERS machine(s)): choose a multiple of $REPLICAS"
    local per_replica=$((global / REPLICAS))
    if [[ -n $accumulation ]]; then
        accumulation=$((10#$accumulation))
        ((per_replica % accumulation == 0)) ||
            die "$accum_var=$accumulation does not divide the $per_replica sequences per replica of $global_var=$global over $REPLICAS replica(s)"
    else
        accumulation=$(((per_replica + max - 1) / max))
        while ((per_replica % accumulation)); do accumulation=$((accumulation + 1)); done
    fi
    BATCH=$((per_replica / accumulation)) ACCUMULATION=$accumulation
}
split_batch 1
PHASE1_BATCH=$BATCH PHASE1_ACCUM=$ACCUMULATION
split_batch 2
PHASE2_BATCH=$BATCH PHASE2_ACCUM=$ACCUMULATION

# The data and the model must fit each other in BOTH phases: checked now from the data's
# metadata (no TensorFlow needed), not when phase 2 starts days from now. The trainer
# checks again, in full, when each phase starts.
DATA_FACTS=$("$PYTHON" - "$ROOT" "$BERT_CONFIG" "$PHASE1_DATA" "$PHASE2_DATA" \
    "$PHASE1_EVAL_DATA" "$PHASE2_EVAL_DATA" "$PHASE1_STEPS" "$PHASE2_STEPS" \
    "$PHASE1_GLOBAL_BATCH" "$PHASE2_GLOBAL_BATCH" "$NUM_WORKERS" "$DO_EVAL" 2>&1 <<'PY'
import glob, json, os, sys

root, config_file, *patterns = sys.argv[1:7]
steps, global_batch = [int(x) for x in sys.argv[7:9]], [int(x) for x in sys.argv[9:11]]
workers, do_eval = int(sys.argv[11]), sys.argv[12] == "1"
sys.path.insert(0, root)
from data_format import metadata_path, validate_metadata  # noqa: E402

problems = []
try:
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    max_positions, vocab_size = int(config["max_position_embeddings"]), int(config["vocab_size"])
except (OSError, ValueError, KeyError, TypeError) as e:
    sys.exit(f"BERT_CONFIG={config_file}: not a BERT config with max_position_embeddings and vocab_size ({e})")

def files_of(spec, name, required):
    if not spec:
        return []
    found = []
    for pattern in filter(None, (p.strip() for p in spec.split(","))):
        matches = sorted(p for p in glob.glob(pattern) if not p.endswith(".json"))
        if not matches:
            problems.append(f"{name}: {pattern!r} matches no file" + (
                " (make the data with scripts/create_data.sh)" if required else ""))
        found += matches
    return found

def facts(files, name):
    """(max_seq_length, max_predictions, instances, vocab sha) of files with metadata."""
    seen, instances, shas = set(), 0, set()
    for path in files:
        meta_file = metadata_path(path)
        if not os.path.exists(meta_file):
            continue  # e.g. made by the original release: the trainer checks its records
        try:
            with open(meta_file, encoding="utf-8") as f:
                meta = validate_metadata(json.load(f), meta_file)
        except (OSError, ValueError) as e:
            problems.append(str(e))
            continue
        seen.add((meta["max_seq_length"], meta["max_predictions_per_seq"]))
        instances += meta["num_instances"]
        shas.add(meta.get("vocab_sha256"))
        if meta["vocab_size"] > vocab_size:
            problems.append(f"{path}: made with a vocabulary of {meta['vocab_size']:,} tokens, "
                            f"more than vocab_size={vocab_size:,} of {config_file}")
    if len(seen) > 1:
        problems.append(f"{name}: files of different shapes (max_seq_length, "
                        f"max_predictions_per_seq): {sorted(seen)}")
    seq, pred = next(iter(seen)) if len(seen) == 1 else (None, None)
    if seq is not None and seq > max_positions:
        problems.append(f"{name}: sequences of {seq} tokens, more than max_position_embeddings="
                        f"{max_positions} of {config_file}")
    return seq, pred, instances, shas

lines, all_shas = [], set()
for phase in (1, 2):
    train = files_of(patterns[phase - 1], f"PHASE{phase}_DATA", True)
    evals = files_of(patterns[phase + 1], f"PHASE{phase}_EVAL_DATA", False) if do_eval else []
    seq, pred, n, shas = facts(train, f"PHASE{phase}_DATA")
    eseq, epred, en, eshas = facts(evals, f"PHASE{phase}_EVAL_DATA")
    all_shas |= shas | eshas
    if evals and seq is not None and eseq is not None and (seq, pred) != (eseq, epred):
        problems.append(f"PHASE{phase}_EVAL_DATA: sequences of {eseq} tokens with {epred} "
                        f"predictions, the training data {seq} with {pred}")
    if len(train) < workers:
        problems.append(f"PHASE{phase}_DATA: {len(train)} file(s) for {workers} workers, each of "
                        "which reads its own files: make more shards (NUM_SHARDS of "
                        "scripts/create_data.sh, a multiple of the number of workers)")
    if train:
        shape = f"{seq} tokens, {pred} predictions" if seq else "no metadata"
        epochs = f", {steps[phase - 1] * global_batch[phase - 1] / n:.2f} epoch(s)" if n else ""
        uneven = (f" (not a multiple of the {workers} workers: some read more files than "
                  "others)" if len(train) % workers else "")
        lines.append(f"phase {phase} data: {len(train)} file(s){uneven}, {n:,} instances "
                     f"({shape}){epochs}"
                     + ("" if not do_eval else
                        f"; eval: {len(evals)} file(s), {en:,} instances" if evals else
                        "; eval: the training files (no held-out eval data)"))
all_shas.discard(None)
if len(all_shas) > 1:
    problems.append("the phase-1 and phase-2 data were made with different vocabularies "
                    "(vocab_sha256 differs): make both with the same VOCAB_FILE")
if problems:
    sys.exit("\n  ".join(["the data does not fit:"] + problems))
print("\n".join(lines))
PY
) || die "$DATA_FACTS"

# ----------------------------------------------------------------------------------------
# The commands.

PHASE1_DIR="$OUTPUT_DIR/phase1"
PHASE2_DIR="$OUTPUT_DIR/phase2"
case $XLA in 1) XLA_FLAG=(--xla) ;; 0) XLA_FLAG=(--noxla) ;; *) XLA_FLAG=() ;; esac

# phase_command PHASE: sets CMD to the trainer command of the phase.
phase_command() {
    local p=$1 data_var=PHASE$1_DATA eval_var=PHASE$1_EVAL_DATA steps_var=PHASE$1_STEPS
    local lr_var=PHASE$1_LR warmup_var=PHASE$1_WARMUP batch_var=PHASE$1_BATCH accum_var=PHASE$1_ACCUM
    local dir_var=PHASE$1_DIR
    CMD=("$PYTHON" "$ROOT/run_pretraining_gpu.py"
        --input_file="${!data_var}" --output_dir="${!dir_var}" --bert_config_file="$BERT_CONFIG"
        --do_train --batch_size="${!batch_var}" --gradient_accumulation_steps="${!accum_var}"
        --num_train_steps="$((10#${!steps_var}))" --num_warmup_steps="$((10#${!warmup_var}))"
        --learning_rate="${!lr_var}" --optimizer="$OPTIMIZER" --poly_power="$POLY_POWER"
        --weight_decay_rate="$WEIGHT_DECAY" --precision="$PRECISION" "${XLA_FLAG[@]}"
        --save_checkpoints_steps="$((10#$SAVE_STEPS))" --keep_checkpoint_max="$((10#$KEEP_CHECKPOINTS))"
        --log_every_n_steps="$((10#$LOG_EVERY))" --steps_per_loop="$((10#$STEPS_PER_LOOP))"
        --seed="$((10#$SEED))" "${DEVICE_FLAGS[@]}")
    if ((DO_EVAL)); then
        CMD+=(--do_eval --eval_every_n_steps="$((10#$EVAL_EVERY))"
            --max_eval_steps="$((10#$MAX_EVAL_STEPS))" --eval_batch_size="$((10#$EVAL_BATCH_SIZE))")
        [[ -z ${!eval_var} ]] || CMD+=(--eval_input_file="${!eval_var}")
    fi
    if ((p == 1)); then
        [[ -z $INIT_CHECKPOINT ]] || CMD+=(--init_checkpoint="$INIT_CHECKPOINT")
    else
        CMD+=(--init_checkpoint="$PHASE1_DIR")
    fi
    CMD+=("${EXTRA[@]}")
}

# The recipe as resolved: a re-run must use the same one, since finished phases are
# skipped without the trainer's own checks. Devices, batch split, logging and eval
# settings may change, and XLA too: the trainer keeps a resumed phase's mode (and refuses
# another one); a phase not started yet takes the mode asked for now. (Files written
# before XLA left the recipe still hold an XLA line; it is ignored.)
settings() {
    printf '%s\n' "RECIPE=$RECIPE" "BERT_CONFIG=$(realpath -s -- "$BERT_CONFIG")" \
        "PHASE1_DATA=$PHASE1_DATA" "PHASE2_DATA=$PHASE2_DATA" "INIT_CHECKPOINT=$INIT_CHECKPOINT" \
        "PHASE1_STEPS=$((10#$PHASE1_STEPS))" "PHASE2_STEPS=$((10#$PHASE2_STEPS))" \
        "PHASE1_GLOBAL_BATCH=$((10#$PHASE1_GLOBAL_BATCH))" "PHASE2_GLOBAL_BATCH=$((10#$PHASE2_GLOBAL_BATCH))" \
        "PHASE1_LR=$PHASE1_LR" "PHASE2_LR=$PHASE2_LR" \
        "PHASE1_WARMUP=$((10#$PHASE1_WARMUP))" "PHASE2_WARMUP=$((10#$PHASE2_WARMUP))" \
        "OPTIMIZER=$OPTIMIZER" "POLY_POWER=$POLY_POWER" "WEIGHT_DECAY=$WEIGHT_DECAY" \
        "SEED=$((10#$SEED))" "EXTRA_FLAGS=$EXTRA_FLAGS"
}
SETTINGS=$(settings)
SETTINGS_FILE="$OUTPUT_DIR/pretrain_settings.txt"
if [[ -f $SETTINGS_FILE ]] && [[ "$(cat "$SETTINGS_FILE")" != "$SETTINGS" ]]; then
    declare -A saved=()
    while IFS='=' read -r key value; do saved[$key]=$value; done <"$SETTINGS_FILE"
    changes=()
    while IFS='=' read -r key value; do
        [[ ${saved[$key]-} == "$value" ]] || changes+=("$key: ${saved[$key]-(not set)} then, $value now")
    done <<<"$SETTINGS"
    ((${#changes[@]} == 0)) || die "$OUTPUT_DIR holds a run with other settings ($SETTINGS_FILE):
$(printf '  %s\n' "${changes[@]}")
resume with the same settings, or give a new OUTPUT_DIR (INIT_CHECKPOINT=$PHASE2_DIR starts from its weights)"
fi

# checkpoint_step DIR: the step of DIR's newest checkpoint (0 if none).
checkpoint_step() {
    local line
    line=$(grep -m1 '^model_checkpoint_path:' "$1/checkpoint" 2>/dev/null) || {
        echo 0
        return
    }
    [[ $line =~ ckpt-([0-9]+)\"?$ ]] && echo "${BASH_REMATCH[1]}" || echo 0
}

# phase_done PHASE: trained to its last step, and evaluated there if DO_EVAL.
phase_done() {
    local dir_var=PHASE$1_DIR steps_var=PHASE$1_STEPS
    local dir=${!dir_var} steps=$((10#${!steps_var}))
    (($(checkpoint_step "$dir") >= steps)) || return 1
    ((DO_EVAL == 0)) || grep -qx "global_step = $steps" "$dir/eval_results.txt" 2>/dev/null
}

describe() {
    cat <<EOF
recipe $RECIPE: $OPTIMIZER, decay power $POLY_POWER, weight decay $WEIGHT_DECAY, $PRECISION, XLA $XLA
devices: $DEVICES per machine x $NUM_WORKERS machine(s) = $REPLICAS replica(s)$( ((NUM_WORKERS == 1)) || echo "; this is worker $WORKER_INDEX")
phase 1: $((10#$PHASE1_STEPS)) steps, global batch $((10#$PHASE1_GLOBAL_BATCH)) = $PHASE1_BATCH per replica x $REPLICAS x $PHASE1_ACCUM accumulated, lr $PHASE1_LR, warm-up $((10#$PHASE1_WARMUP))
phase 2: $((10#$PHASE2_STEPS)) steps, global batch $((10#$PHASE2_GLOBAL_BATCH)) = $PHASE2_BATCH per replica x $REPLICAS x $PHASE2_ACCUM accumulated, lr $PHASE2_LR, warm-up $((10#$PHASE2_WARMUP)), from phase 1's weights
$DATA_FACTS
EOF
}

if ((DRY_RUN)); then
    describe
    for phase in 1 2; do
        state=todo
        phase_done "$phase" && state=done
        phase_command "$phase"
        echo "phase $phase [$state]:$(printf ' %q' "${CMD[@]}")"
    done
    exit 0
fi

mkdir -p "$OUTPUT_DIR" || die "cannot create OUTPUT_DIR=$OUTPUT_DIR"
if ((NUM_WORKERS == 1)); then LOG_NAME=pretrain.log; else LOG_NAME=pretrain.worker-$WORKER_INDEX.log; fi
touch "$OUTPUT_DIR/$LOG_NAME" 2>/dev/null || die "cannot write $OUTPUT_DIR/$LOG_NAME: is OUTPUT_DIR writable?"
LOG_FILE="$OUTPUT_DIR/$LOG_NAME"
lock_output_dir "$OUTPUT_DIR/.pretrain.worker-$WORKER_INDEX.lock"
# Worker 0 records the recipe; the others only compare (they share the directory).
if [[ ! -f $SETTINGS_FILE ]] && ((WORKER_INDEX == 0)); then
    printf '%s\n' "$SETTINGS" >"$SETTINGS_FILE.tmp.$$" && mv "$SETTINGS_FILE.tmp.$$" "$SETTINGS_FILE"
fi
note "log: $LOG_FILE"
while IFS= read -r line; do note "$line"; done < <(describe)

started=$SECONDS
for phase in 1 2; do
    if phase_done "$phase"; then
        dir_var=PHASE${phase}_DIR
        note "phase $phase: finished ($(basename "$(grep -m1 '^model_checkpoint_path:' "${!dir_var}/checkpoint" | cut -d'"' -f2)")), skipped"
        continue
    fi
    note "== phase $phase"
    phase_command "$phase"
    status=0
    run_logged "${CMD[@]}" || status=$?
    if ((status)); then
        note "phase $phase failed (exit status $status); see $LOG_FILE. Fix the problem and run the same command again: it resumes from the newest checkpoint"
        exit "$status"
    fi
    if ((WORKER_INDEX == 0)); then
        phase_done "$phase" || {
            note "phase $phase ended without a checkpoint at its last step$( ((DO_EVAL)) && echo ' and its eval'): see $LOG_FILE"
            exit 1
        }
    else
        # The chief writes the checkpoints (and evaluates) and may finish after this worker.
        dir_var=PHASE${phase}_DIR steps_var=PHASE${phase}_STEPS deadline=$((SECONDS + 10#$CHIEF_WAIT))
        until (($(checkpoint_step "${!dir_var}") >= 10#${!steps_var})); do
            ((SECONDS < deadline)) || {
                note "phase $phase: the chief (worker 0) wrote no checkpoint at step ${!steps_var} in ${!dir_var} within CHIEF_WAIT=$CHIEF_WAIT s: see its log, and check that OUTPUT_DIR is one shared directory"
                exit 1
            }
            sleep 2
        done
    fi
done
note "done in $((SECONDS - started)) s: the pretrained model is the newest checkpoint of $PHASE2_DIR"
if [[ -f $PHASE2_DIR/eval_results.txt ]]; then
    while IFS= read -r line; do note "  $line"; done <"$PHASE2_DIR/eval_results.txt"
fi
