#!/usr/bin/env bash
# The two-phase recipe of pretrain.sh on several machines: sets TF_CONFIG for this
# machine's worker, then runs pretrain.sh. Run with --help for the usage.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/pretrain_multinode.sh [--dry_run] HOSTS INDEX BERT_CONFIG DATA_DIR OUTPUT_DIR

Runs scripts/pretrain.sh as worker INDEX of a cluster: start it on every machine, with
the same HOSTS and arguments and each machine's own INDEX. It writes the standard
TF_CONFIG ({"cluster": {"worker": [HOSTS...]}, "task": {"type": "worker", "index":
INDEX}}); each worker trains on all its local GPUs, and the gradients of all replicas of
all machines are averaged every step, so the global batch of the recipe is kept (each
replica's micro-batch and the accumulation are computed over every machine's GPUs).

  HOSTS        comma-separated host[:port] of every worker, in the same order on every
               machine, e.g. gpu1:12345,gpu2:12345 (a host without a port gets PORT).
               Worker 0 is the chief: it writes the checkpoints, summaries and eval results.
  INDEX        this machine's position in HOSTS, from 0
  BERT_CONFIG, DATA_DIR, OUTPUT_DIR   as for scripts/pretrain.sh. OUTPUT_DIR (and the
               data) must be the same directory on every machine (a shared filesystem:
               NFS, Lustre, ...): the workers resume from and skip phases by what it
               holds. Each worker logs to OUTPUT_DIR/pretrain.worker-INDEX.log.
  --dry_run    print TF_CONFIG and what pretrain.sh would run, train nothing

Every machine needs the same number of GPUs (NUM_GPUS), the same code, Python
environment and data paths, and must reach the others' ports. Stop one worker and the
others stop with an error; start all of them again with the same commands to resume.

Environment variables (default in brackets):
  PORT                 port of a HOSTS entry without one [12345]
  every variable of scripts/pretrain.sh (see scripts/pretrain.sh --help), e.g. RECIPE,
  NUM_GPUS, PRECISION; set them the same on every machine.
  TF_CONFIG            replaced by the one this script writes

Example, on two machines with 8 GPUs each (16 replicas; nvidia-lamb phase 1:
64 per replica x 16 x 64 accumulated = 65,536):
  gpu1$ RECIPE=nvidia-lamb scripts/pretrain_multinode.sh gpu1,gpu2 0 bert_config.json /shared/data /shared/out
  gpu2$ RECIPE=nvidia-lamb scripts/pretrain_multinode.sh gpu1,gpu2 1 bert_config.json /shared/data /shared/out
EOF
}

parse_options "$@"
((${#ARGS[@]} == 5)) || die "expected HOSTS INDEX BERT_CONFIG DATA_DIR OUTPUT_DIR (see --help)"
HOSTS=${ARGS[0]} INDEX=${ARGS[1]}
PORT=${PORT:-12345}

require_int PORT "$PORT" 1
((10#$PORT <= 65535)) || die "PORT=$PORT: expected a port number up to 65535"
IFS=, read -r -a ENTRIES <<<"$HOSTS"
[[ -n $HOSTS && $HOSTS != *, && ${#ENTRIES[@]} -gt 0 ]] || die "HOSTS=$HOSTS: expected host[:port] entries separated by commas"
WORKERS=()
for entry in "${ENTRIES[@]}"; do
    # host, host:port, [ipv6], [ipv6]:port
    if [[ $entry =~ ^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:([0-9]+))?$ ]]; then
        host=${BASH_REMATCH[1]} port=${BASH_REMATCH[4]:-$((10#$PORT))}
    else
        die "HOSTS entry '$entry': expected host or host:port (e.g. gpu1:12345)"
    fi
    ((10#$port >= 1 && 10#$port <= 65535)) || die "HOSTS entry '$entry': port $port is not between 1 and 65535"
    worker="$host:$((10#$port))"
    for seen in "${WORKERS[@]}"; do
        [[ $seen != "$worker" ]] || die "HOSTS names $worker twice: each worker needs its own host:port"
    done
    WORKERS+=("$worker")
done
[[ $INDEX =~ ^[0-9]+$ ]] && ((10#$INDEX < ${#WORKERS[@]})) ||
    die "INDEX=$INDEX: expected this machine's position in HOSTS, 0 to $((${#WORKERS[@]} - 1))"
INDEX=$((10#$INDEX))

list=$(printf '"%s", ' "${WORKERS[@]}")
export TF_CONFIG="{\"cluster\": {\"worker\": [${list%, }]}, \"task\": {\"type\": \"worker\", \"index\": $INDEX}}"

me=${WORKERS[INDEX]}
note "worker $INDEX of ${#WORKERS[@]} ($me$( ((INDEX)) || echo ', the chief'))"
echo "TF_CONFIG=$TF_CONFIG"
DRY_RUN_FLAG=()
((DRY_RUN == 0)) || DRY_RUN_FLAG=(--dry_run)
exec "$ROOT/scripts/pretrain.sh" "${DRY_RUN_FLAG[@]}" "${ARGS[@]:2}"
