# Helpers shared by create_data.sh, pretrain.sh and pretrain_multinode.sh; sourced, not run.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT_NAME=$(basename "$0")

# Input errors exit with 2 (as the Python commands do for bad flags); a failed step
# exits with its own status; a stopped one with 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP).
die() {
    printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
    exit 2
}

# note MESSAGE: to the terminal, and with the time to LOG_FILE once that is set.
LOG_FILE=""
note() {
    printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2
    [[ -z $LOG_FILE ]] || printf '[%s] %s: %s\n' "$(date '+%F %T')" "$SCRIPT_NAME" "$*" >>"$LOG_FILE"
}

# parse_options "$@": --help (the script's `usage`), --dry_run (DRY_RUN=1, else 0); the
# other arguments, in order, into ARGS; any other option is an error.
parse_options() {
    DRY_RUN=0
    ARGS=()
    local arg
    for arg in "$@"; do
        case $arg in
        -h | --help)
            usage
            exit 0
            ;;
        --dry_run | --dry-run) DRY_RUN=1 ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) ARGS+=("$arg") ;;
        esac
    done
}

# The project's virtual environment when there is one, else python3 on the PATH.
default_python() {
    if [[ -x "$ROOT/.venv/bin/python" ]]; then
        printf '%s\n' "$ROOT/.venv/bin/python"
    else
        printf '%s\n' python3
    fi
}

# require_python: PYTHON runs; made absolute, as the steps may run in other directories.
require_python() {
    command -v "$PYTHON" >/dev/null 2>&1 ||
        die "PYTHON=$PYTHON: no such command (set PYTHON to the interpreter with TensorFlow, e.g. $ROOT/.venv/bin/python)"
    [[ $PYTHON != */* ]] || PYTHON=$(realpath -s -- "$PYTHON")
}

# require_int NAME VALUE MIN: VALUE is a whole number >= MIN.
require_int() {
    local name=$1 value=$2 min=$3
    [[ $value =~ ^[0-9]+$ ]] || die "$name=$value: expected a whole number"
    ((10#$value >= min)) || die "$name=$value: expected at least $min"
}

# require_bool NAME VALUE: 0 or 1.
require_bool() {
    [[ $2 == 0 || $2 == 1 ]] || die "$1=$2: expected 0 or 1"
}

# require_number NAME VALUE: a decimal number such as 1e-4, 0.15 or 6e-3.
require_number() {
    [[ $2 =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "$1=$2: expected a number such as 1e-4"
}

# The TFRecord tools split their file arguments at commas.
require_no_comma() {
    [[ $2 != *,* ]] || die "$1=$2: the path must not contain a comma (file lists are comma-separated)"
}

# lock_output_dir LOCK_FILE: refuses to run beside another run of the same script on the
# same directory (two trainers writing one set of checkpoints would corrupt it). The
# lock is held as long as this script or the step it started runs.
lock_output_dir() {
    command -v flock >/dev/null 2>&1 || return 0
    exec {LOCK_FD}>>"$1" || die "cannot write $1"
    flock -n "$LOCK_FD" ||
        die "another $SCRIPT_NAME is already running on $(dirname "$1") (lock $1): wait for it, or stop it first"
}

# ----------------------------------------------------------------------------------------
# Running the long steps. Each runs in its own session so that a Ctrl-C at the terminal
# reaches only this script, which passes ONE SIGTERM on: the Python commands treat a
# second signal as "stop at once", and both the terminal's SIGINT and ours would count.
# On SIGTERM the trainer writes a checkpoint and exits 143, the data tool removes its
# temporary files; this script then exits 130/143/129 and, run again, resumes.

CHILD=""
STOPPED_BY=""

_stop() {
    STOPPED_BY=$1
    if [[ -n $CHILD ]]; then
        note "stopping (signal $(($1 - 128))): passing SIGTERM to process $CHILD; run the same command again to resume"
        kill -TERM "$CHILD" 2>/dev/null || true
    else
        exit "$1"
    fi
}
trap '_stop 130' INT
trap '_stop 143' TERM
trap '_stop 129' HUP

# run_logged COMMAND...: runs COMMAND with its output shown and appended to LOG_FILE;
# returns its exit status (exits with 128+signal if this script was stopped meanwhile).
run_logged() {
    local log=$LOG_FILE
    printf '[%s] +%s\n' "$(date '+%F %T')" "$(printf ' %q' "$@")" | tee -a "$log" >&2
    local tee_fd tee_pid
    exec {tee_fd}> >(exec tee -i -a "$log")
    tee_pid=$!
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >&"$tee_fd" 2>&1 &
    else
        "$@" >&"$tee_fd" 2>&1 &
    fi
    CHILD=$!
    local status=0 last=0
    while :; do
        status=0
        wait "$CHILD" || status=$?
        kill -0 "$CHILD" 2>/dev/null || break
    done
    # If a trapped signal interrupted the last wait, the child's own status is still held.
    wait "$CHILD" 2>/dev/null || last=$?
    ((last == 127)) || status=$last
    CHILD=""
    exec {tee_fd}>&-
    wait "$tee_pid" 2>/dev/null || true
    [[ -z $STOPPED_BY ]] || exit "$STOPPED_BY"
    return "$status"
}
