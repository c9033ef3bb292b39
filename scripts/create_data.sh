#!/usr/bin/env bash
# Text files -> sharded pretraining TFRecords for both phases of BERT pretraining.
# Run with --help for the usage, the layout of the output and every setting.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/create_data.sh [--dry_run] INPUT... OUTPUT_DIR

Turns a corpus into the masked-LM / next-sentence TFRecords of the two-phase recipe
(scripts/pretrain.sh): phase 1 at 128 tokens with 20 predictions per sequence, phase 2 at
512 tokens with 80, the values of the original BERT release (max_predictions_per_seq is
about max_seq_length x masked_lm_prob). Every shard gets its metadata file (F.json).

  INPUT       a directory (every file under it, hidden ones excepted), a text file, or a
              glob (quote it: 'corpus/*.txt'). The original format: one sentence per
              line, a blank line between documents.
  OUTPUT_DIR  receives
                phase1/train-00000-of-00064.tfrecord (+ .json) ...   sequences of 128
                phase2/train-00000-of-00064.tfrecord (+ .json) ...   sequences of 512
                phase1/eval.tfrecord, phase2/eval.tfrecord           with EVAL_INPUT
                phaseN/plan/*.flags   the exact flags of each create_pretraining_data run
                create_data.log       everything printed, appended run after run
  --dry_run   print the plan (groups, their files and shards, the commands), make nothing

Sharding: the input files are dealt into NUM_GROUPS groups of about equal size (largest
file first, into the group with the fewest bytes so far), and the NUM_SHARDS output files
of a phase into the same groups. Each group is one run of create_pretraining_data.py,
which uses every core (NUM_WORKERS), shuffles all its instances globally in bounded
memory and writes its shards atomically (records and metadata appear together, only when
complete). So:
  - resumable: run the same command again and the groups whose shards all exist are
    skipped; a stopped run (Ctrl-C, kill, reboot) loses at most the group in progress;
  - well mixed: each shard is a uniform random sample of its group's instances, each
    group a size-balanced share of the corpus's files, and the trainer reads several
    shards at once and shuffles again. The price of more groups is narrower mixing
    (next-sentence negatives and the shuffle stay within a group); of fewer, more work
    lost to a stop. One run writing every shard would mix best but restart from zero.
  - reproducible: group g of phase p is seeded with RANDOM_SEED + (p-1)*NUM_GROUPS + g
    (the eval data with RANDOM_SEED + 2*NUM_GROUPS + p-1); the same corpus and settings
    give the same bytes whatever NUM_WORKERS.
A second run with other settings or other input files into the same OUTPUT_DIR is
refused (its shards would not belong together): use another OUTPUT_DIR.

Environment variables (default in brackets):
  VOCAB_FILE               WordPiece vocab.txt (required unless SPM_MODEL_FILE is set)
  SPM_MODEL_FILE           SentencePiece model instead of VOCAB_FILE []
  DO_LOWER_CASE            1: uncased (lower-case, strip accents); 0: cased [1]
  WHOLE_WORD_MASK          1: mask every piece of a word together [0]
  PHASES                   which phases to make, e.g. "1" or "1 2" [1 2]
  PHASE1_SEQ_LENGTH        tokens per phase-1 sequence [128]
  PHASE1_MAX_PREDICTIONS   masked-LM predictions per phase-1 sequence [20]
  PHASE2_SEQ_LENGTH        tokens per phase-2 sequence [512]
  PHASE2_MAX_PREDICTIONS   masked-LM predictions per phase-2 sequence [80]
  NUM_SHARDS               training shards per phase; on several machines each worker
                           reads its own, so keep it a multiple of their number [64]
  NUM_GROUPS               independent runs per phase [min(input files, NUM_SHARDS, 16)]
  DUPE_FACTOR              passes over the corpus, each with other masks and pairs [10]
  MASKED_LM_PROB           fraction of the tokens masked [0.15]
  SHORT_SEQ_PROB           probability of a shorter sequence [0.1]
  RANDOM_SEED              base seed [12345]
  EVAL_INPUT               held-out text (directory, file or glob) for phaseN/eval.tfrecord;
                           must share no file with INPUT []
  NUM_WORKERS              worker processes per run; 0: one per core [0]
  CHUNK_MB                 --chunk_mb of create_pretraining_data.py [its default, 1]
  SHUFFLE_MB               --shuffle_mb of create_pretraining_data.py [its default, 64]
  PYTHON                   interpreter [.venv/bin/python of the repository, else python3]

Example:
  VOCAB_FILE=vocab.txt scripts/create_data.sh corpus/ data/
  scripts/pretrain.sh bert_config.json data/ out/
EOF
}

parse_options "$@"
((${#ARGS[@]} >= 2)) || die "expected INPUT... OUTPUT_DIR (see --help)"
OUTPUT_DIR=${ARGS[-1]}
INPUTS=("${ARGS[@]:0:${#ARGS[@]}-1}")

VOCAB_FILE=${VOCAB_FILE:-}
SPM_MODEL_FILE=${SPM_MODEL_FILE:-}
DO_LOWER_CASE=${DO_LOWER_CASE:-1}
WHOLE_WORD_MASK=${WHOLE_WORD_MASK:-0}
PHASES=${PHASES:-1 2}
PHASE1_SEQ_LENGTH=${PHASE1_SEQ_LENGTH:-128}
PHASE1_MAX_PREDICTIONS=${PHASE1_MAX_PREDICTIONS:-20}
PHASE2_SEQ_LENGTH=${PHASE2_SEQ_LENGTH:-512}
PHASE2_MAX_PREDICTIONS=${PHASE2_MAX_PREDICTIONS:-80}
NUM_SHARDS=${NUM_SHARDS:-64}
NUM_GROUPS=${NUM_GROUPS:-}
DUPE_FACTOR=${DUPE_FACTOR:-10}
MASKED_LM_PROB=${MASKED_LM_PROB:-0.15}
SHORT_SEQ_PROB=${SHORT_SEQ_PROB:-0.1}
RANDOM_SEED=${RANDOM_SEED:-12345}
EVAL_INPUT=${EVAL_INPUT:-}
NUM_WORKERS=${NUM_WORKERS:-0}
CHUNK_MB=${CHUNK_MB:-}
SHUFFLE_MB=${SHUFFLE_MB:-}
PYTHON=${PYTHON:-$(default_python)}

# ----------------------------------------------------------------------------------------
# Check everything before the first long step.

[[ -n $VOCAB_FILE || -n $SPM_MODEL_FILE ]] ||
    die "set VOCAB_FILE to the WordPiece vocab.txt (or SPM_MODEL_FILE to a SentencePiece model)"
[[ -z $VOCAB_FILE || -z $SPM_MODEL_FILE ]] || die "set VOCAB_FILE or SPM_MODEL_FILE, not both"
for name in VOCAB_FILE SPM_MODEL_FILE; do
    path=${!name}
    if [[ -n $path ]]; then
        [[ -f $path && -r $path ]] || die "$name=$path: no such readable file"
        require_no_comma "$name" "$path"
    fi
done
require_bool DO_LOWER_CASE "$DO_LOWER_CASE"
require_bool WHOLE_WORD_MASK "$WHOLE_WORD_MASK"
read -r -a PHASE_LIST <<<"$PHASES"
((${#PHASE_LIST[@]} > 0)) || die "PHASES is empty: expected \"1\", \"2\" or \"1 2\""
for phase in "${PHASE_LIST[@]}"; do
    [[ $phase == 1 || $phase == 2 ]] || die "PHASES=$PHASES: expected phases 1 and/or 2"
done
for phase in 1 2; do
    seq_var=PHASE${phase}_SEQ_LENGTH pred_var=PHASE${phase}_MAX_PREDICTIONS
    require_int "$seq_var" "${!seq_var}" 8
    require_int "$pred_var" "${!pred_var}" 1
    ((10#${!pred_var} < 10#${!seq_var})) ||
        die "$pred_var=${!pred_var} must be below $seq_var=${!seq_var}"
done
require_int NUM_SHARDS "$NUM_SHARDS" 1
require_int DUPE_FACTOR "$DUPE_FACTOR" 1
require_int RANDOM_SEED "$RANDOM_SEED" 0
require_int NUM_WORKERS "$NUM_WORKERS" 0
require_number MASKED_LM_PROB "$MASKED_LM_PROB"
require_number SHORT_SEQ_PROB "$SHORT_SEQ_PROB"
[[ -z $CHUNK_MB ]] || require_number CHUNK_MB "$CHUNK_MB"
[[ -z $SHUFFLE_MB ]] || require_number SHUFFLE_MB "$SHUFFLE_MB"
require_python
require_no_comma OUTPUT_DIR "$OUTPUT_DIR"
[[ ! -e $OUTPUT_DIR || -d $OUTPUT_DIR ]] || die "OUTPUT_DIR=$OUTPUT_DIR exists and is not a directory"

# glob_matches PATTERN: sets MATCHES to the paths PATTERN matches (no word splitting).
glob_matches() {
    local IFS= path expanded
    shopt -s nullglob
    # shellcheck disable=SC2206
    expanded=($1)
    shopt -u nullglob
    MATCHES=()
    for path in "${expanded[@]}"; do [[ ! -e $path ]] || MATCHES+=("$path"); done
}

# expand_inputs ARG...: sets EXPANDED to the absolute path of every file the arguments
# name, sorted, without duplicates. Dies naming an argument that names nothing.
expand_inputs() {
    local arg path found=()
    for arg in "$@"; do
        if [[ -e $arg ]]; then
            MATCHES=("$arg")
        else
            glob_matches "$arg"
            ((${#MATCHES[@]} > 0)) || die "INPUT $arg: no such file or directory (and no file matches it as a glob)"
        fi
        for path in "${MATCHES[@]}"; do
            if [[ -d $path ]]; then
                mapfile -d '' -O "${#found[@]}" found < <(find "$path" -mindepth 1 -name '.*' -prune -o \( -type f -o -xtype f \) -print0)
            else
                found+=("$path")
            fi
        done
    done
    for path in "${found[@]}"; do
        [[ $path != *$'\n'* ]] || die "input file name with a line break: $path"
        require_no_comma "input file" "$path"
        [[ -r $path ]] || die "input file $path: not readable"
    done
    EXPANDED=()
    ((${#found[@]})) || return 0
    mapfile -t EXPANDED < <(printf '%s\0' "${found[@]}" | xargs -0 realpath -s -- | LC_ALL=C sort -u)
}

expand_inputs "${INPUTS[@]}"
TRAIN_FILES=("${EXPANDED[@]}")
((${#TRAIN_FILES[@]} > 0)) || die "no input files in ${INPUTS[*]} (directories are searched recursively; hidden files are skipped)"
EVAL_FILES=()
if [[ -n $EVAL_INPUT ]]; then
    expand_inputs "$EVAL_INPUT"
    EVAL_FILES=("${EXPANDED[@]}")
    ((${#EVAL_FILES[@]} > 0)) || die "EVAL_INPUT=$EVAL_INPUT: no files in it"
    shared=$(LC_ALL=C comm -12 <(printf '%s\n' "${TRAIN_FILES[@]}") <(printf '%s\n' "${EVAL_FILES[@]}"))
    [[ -z $shared ]] || die "EVAL_INPUT shares files with INPUT, so the eval data would not be held out: ${shared//$'\n'/, }"
fi

# Empty files hold no documents; leaving them out keeps a group from being all empty.
SIZED=$(printf '%s\0' "${TRAIN_FILES[@]}" | xargs -0 stat --printf '%s\t%n\n' -- | awk -F '\t' '$1 > 0')
[[ -n $SIZED ]] || die "every input file is empty: ${TRAIN_FILES[*]}"
NUM_FILES=$(printf '%s\n' "$SIZED" | wc -l)
if [[ -z $NUM_GROUPS ]]; then
    NUM_GROUPS=$((NUM_FILES < NUM_SHARDS ? NUM_FILES : NUM_SHARDS))
    NUM_GROUPS=$((NUM_GROUPS < 16 ? NUM_GROUPS : 16))
fi
require_int NUM_GROUPS "$NUM_GROUPS" 1
((10#$NUM_GROUPS <= NUM_FILES)) ||
    die "NUM_GROUPS=$NUM_GROUPS, but there are $NUM_FILES non-empty input files: each group needs one (split the corpus into more files, at document boundaries)"
((10#$NUM_GROUPS <= 10#$NUM_SHARDS)) || die "NUM_GROUPS=$NUM_GROUPS is more than NUM_SHARDS=$NUM_SHARDS: each group writes at least one shard"
NUM_GROUPS=$((10#$NUM_GROUPS))
NUM_SHARDS=$((10#$NUM_SHARDS))

# Largest file first, into the group with the fewest bytes so far (ties: lowest group).
# Output: "group<TAB>path", sorted by group, then path.
GROUPING=$(printf '%s\n' "$SIZED" | LC_ALL=C sort -t $'\t' -k1,1nr -k2,2 |
    awk -F '\t' -v groups="$NUM_GROUPS" '{
        best = 0
        for (g = 1; g < groups; g++) if (total[g] < total[best]) best = g
        total[best] += $1
        print best "\t" $2
    }' | LC_ALL=C sort -t $'\t' -k1,1n -k2,2)

shard_name() { printf 'train-%05d-of-%05d.tfrecord' "$1" "$NUM_SHARDS"; }

# group_shards G: the shard indices of group G, as a contiguous range.
group_shards() {
    local g=$1
    seq $((g * NUM_SHARDS / NUM_GROUPS)) $(((g + 1) * NUM_SHARDS / NUM_GROUPS - 1))
}

# flags FILES_NEWLINE_SEPARATED OUTPUTS_COMMA_SEPARATED SEED PHASE: the flag file of one run.
# Outputs are relative to the phase directory, where the run starts.
flags() {
    local files=$1 outputs=$2 seed=$3 phase=$4 inputs
    # create_pretraining_data.py expands --input_file as globs: [*], [?] and [[] match
    # those characters themselves.
    inputs=$(sed 's/[[*?]/[&]/g' <<<"$files" | paste -sd ,)
    local seq_var=PHASE${phase}_SEQ_LENGTH pred_var=PHASE${phase}_MAX_PREDICTIONS
    printf '%s\n' "--input_file=$inputs" "--output_file=$outputs"
    if [[ -n $VOCAB_FILE ]]; then
        printf '%s\n' "--vocab_file=$(realpath -s -- "$VOCAB_FILE")"
    else
        printf '%s\n' "--spm_model_file=$(realpath -s -- "$SPM_MODEL_FILE")"
    fi
    if ((DO_LOWER_CASE)); then echo --do_lower_case; else echo --nodo_lower_case; fi
    if ((WHOLE_WORD_MASK)); then echo --do_whole_word_mask; else echo --nodo_whole_word_mask; fi
    printf '%s\n' "--max_seq_length=$((10#${!seq_var}))" \
        "--max_predictions_per_seq=$((10#${!pred_var}))" \
        "--dupe_factor=$((10#$DUPE_FACTOR))" "--masked_lm_prob=$MASKED_LM_PROB" \
        "--short_seq_prob=$SHORT_SEQ_PROB" "--random_seed=$seed"
    [[ -z $CHUNK_MB ]] || echo "--chunk_mb=$CHUNK_MB"
    [[ -z $SHUFFLE_MB ]] || echo "--shuffle_mb=$SHUFFLE_MB"
}

# The plan: for every run, its directory, flag file name, flag file text and outputs.
RUN_DIRS=() RUN_FLAGFILES=() RUN_FLAGS=() RUN_OUTPUTS=() RUN_TITLES=()
SEED=$((10#$RANDOM_SEED))
for phase in "${PHASE_LIST[@]}"; do
    dir="$OUTPUT_DIR/phase$phase"
    for ((g = 0; g < NUM_GROUPS; g++)); do
        files=$(printf '%s\n' "$GROUPING" | awk -F '\t' -v g="$g" '$1 == g { print $2 }')
        outputs=""
        for i in $(group_shards "$g"); do outputs+="${outputs:+,}$(shard_name "$i")"; done
        RUN_DIRS+=("$dir")
        RUN_FLAGFILES+=("$(printf 'plan/group-%05d.flags' "$g")")
        RUN_FLAGS+=("$(flags "$files" "$outputs" $((SEED + (phase - 1) * NUM_GROUPS + g)) "$phase")")
        RUN_OUTPUTS+=("$outputs")
        RUN_TITLES+=("phase $phase, group $((g + 1))/$NUM_GROUPS ($(printf '%s\n' "$files" | wc -l) file(s), shards $outputs)")
    done
    if ((${#EVAL_FILES[@]})); then
        RUN_DIRS+=("$dir")
        RUN_FLAGFILES+=("plan/eval.flags")
        RUN_FLAGS+=("$(flags "$(printf '%s\n' "${EVAL_FILES[@]}")" eval.tfrecord \
            $((SEED + 2 * NUM_GROUPS + phase - 1)) "$phase")")
        RUN_OUTPUTS+=(eval.tfrecord)
        RUN_TITLES+=("phase $phase, eval data (${#EVAL_FILES[@]} file(s))")
    fi
done

# plan_change FILE TEXT: the flags of FILE missing from TEXT ("then") and the reverse ("now").
plan_change() {
    local then now
    then=$(LC_ALL=C comm -23 <(LC_ALL=C sort "$1") <(LC_ALL=C sort <<<"$2") | cut -c1-150 | paste -sd ' ')
    now=$(LC_ALL=C comm -13 <(LC_ALL=C sort "$1") <(LC_ALL=C sort <<<"$2") | cut -c1-150 | paste -sd ' ')
    printf '%s then, %s now' "${then:-(nothing)}" "${now:-(nothing)}"
}

# A plan already in OUTPUT_DIR must be this one: its finished shards are skipped below.
changed=()
for phase in "${PHASE_LIST[@]}"; do
    plan_dir="$OUTPUT_DIR/phase$phase/plan"
    [[ -d $plan_dir ]] || continue
    for old in "$plan_dir"/*.flags; do
        [[ -e $old ]] || continue
        found=0
        for ((r = 0; r < ${#RUN_DIRS[@]}; r++)); do
            [[ "${RUN_DIRS[r]}/${RUN_FLAGFILES[r]}" == "$old" ]] || continue
            found=1
            [[ "$(cat "$old")" == "${RUN_FLAGS[r]}" ]] || changed+=("$old: $(plan_change "$old" "${RUN_FLAGS[r]}")")
        done
        ((found)) || changed+=("$old belongs to no run of these settings (NUM_GROUPS or EVAL_INPUT changed?)")
    done
done
if ((${#changed[@]})); then
    die "$OUTPUT_DIR was made with other settings or input files:
$(printf '  %s\n' "${changed[@]}")
its shards would not belong with the new ones: use another OUTPUT_DIR, or delete this one"
fi

is_complete() { # DIR OUTPUTS_COMMA_SEPARATED: every output and its metadata exist
    local dir=$1 output outs
    IFS=, read -r -a outs <<<"$2"
    for output in "${outs[@]}"; do
        [[ -f "$dir/$output" && -f "$dir/$output.json" ]] || return 1
    done
}

if ((DRY_RUN)); then
    echo "plan: ${#TRAIN_FILES[@]} input file(s) ($NUM_FILES non-empty) in $NUM_GROUPS group(s), $NUM_SHARDS shard(s) per phase, phase(s) ${PHASE_LIST[*]}"
    for ((r = 0; r < ${#RUN_DIRS[@]}; r++)); do
        state=todo
        is_complete "${RUN_DIRS[r]}" "${RUN_OUTPUTS[r]}" && state=done
        echo "== ${RUN_TITLES[r]} [$state]"
        echo "   env -C ${RUN_DIRS[r]} $PYTHON $ROOT/create_pretraining_data.py --flagfile=${RUN_FLAGFILES[r]} --num_workers=$NUM_WORKERS"
        printf '%s\n' "${RUN_FLAGS[r]}" | sed 's/^/   /'
    done
    exit 0
fi

# ----------------------------------------------------------------------------------------
# The runs.

mkdir -p "$OUTPUT_DIR" || die "cannot create OUTPUT_DIR=$OUTPUT_DIR"
lock_output_dir "$OUTPUT_DIR/.create_data.lock"
touch "$OUTPUT_DIR/create_data.log" 2>/dev/null || die "cannot write $OUTPUT_DIR/create_data.log: is OUTPUT_DIR writable?"
LOG_FILE="$OUTPUT_DIR/create_data.log"
note "log: $LOG_FILE"
started=$SECONDS made=0 skipped=0
for ((r = 0; r < ${#RUN_DIRS[@]}; r++)); do
    dir=${RUN_DIRS[r]}
    mkdir -p "$dir/plan"
    [[ -f "$dir/${RUN_FLAGFILES[r]}" ]] || printf '%s\n' "${RUN_FLAGS[r]}" >"$dir/${RUN_FLAGFILES[r]}"
    if is_complete "$dir" "${RUN_OUTPUTS[r]}"; then
        note "${RUN_TITLES[r]}: complete, skipped"
        skipped=$((skipped + 1))
        continue
    fi
    note "== ${RUN_TITLES[r]}"
    status=0
    run_logged env -C "$dir" "$PYTHON" "$ROOT/create_pretraining_data.py" \
        --flagfile="${RUN_FLAGFILES[r]}" --num_workers="$NUM_WORKERS" || status=$?
    if ((status)); then
        note "${RUN_TITLES[r]} failed (exit status $status); see $LOG_FILE. The finished groups are kept: fix the problem and run the same command again"
        exit "$status"
    fi
    made=$((made + 1))
done

summary=$("$PYTHON" - "$OUTPUT_DIR" "${PHASE_LIST[@]}" <<'PY'
import glob, json, os, sys
out, phases = sys.argv[1], sys.argv[2:]
for phase in phases:
    for kind in ("train-*.tfrecord", "eval.tfrecord"):
        metas = sorted(glob.glob(os.path.join(out, f"phase{phase}", kind + ".json")))
        if not metas:
            continue
        m = [json.load(open(p)) for p in metas]
        print(f"phase {phase} {kind.split('.')[0].rstrip('-*')}: {len(m)} file(s), "
              f"{sum(x['num_instances'] for x in m):,} instances of {m[0]['max_seq_length']} "
              f"tokens ({m[0]['max_predictions_per_seq']} predictions): "
              f"{os.path.join(out, f'phase{phase}', kind)}")
PY
) || summary="(could not read the metadata files for a summary)"
note "done: $made run(s) made, $skipped already complete, in $((SECONDS - started)) s"
printf '%s\n' "$summary" | tee -a "$LOG_FILE"
