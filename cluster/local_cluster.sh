#!/usr/bin/env bash
# A several-node Ray cluster on THIS machine, for rehearsing multi-node runs and scaling studies.
#
#   cluster/local_cluster.sh start N [options]   head + N-1 more Ray nodes, all on this machine
#   cluster/local_cluster.sh status [options]    `ray status` of that cluster
#   cluster/local_cluster.sh stop [options]      stop every node this script started
#
# Options (also as environment variables):
#   --port P            GCS port of the head                 RAYPROF_CLUSTER_PORT  (6390)
#   --temp-dir D        node K keeps its Ray files in D/nK   RAYPROF_CLUSTER_TMP   (/tmp/rayprof-local-cluster)
#   --num-cpus C        CPUs each node advertises            RAYPROF_CLUSTER_CPUS  (cores / N, at least 1)
#   --num-gpus G        GPUs each node advertises            RAYPROF_CLUSTER_GPUS  (0)
#   --object-store-mb M object store of each node, MiB       RAYPROF_CLUSTER_OBJECT_STORE_MB (512)
#   --force             stop: SIGKILL at once (default: SIGTERM, then SIGKILL after RAYPROF_CLUSTER_STOP_GRACE=3 s)
#   ray comes from $RAY, else the active virtualenv, else PATH, else this repo's .venv/bin/ray.
#
# Node k runs on cores of its own (taskset) while the machine has enough for every node's CPUs,
# so the nodes do not share cores, as separate machines would not; otherwise they share them.
# Node k advertises the custom resource {"nodeK": 1}, so a worker can be sent to it (every node
# here has the same IP and hostname, so custom resources are the only way to tell them apart).
# With --num-gpus G every node claims the same physical GPUs: the nodes share them.
# Each node gets its own block of ports (node manager, object manager, workers, dashboard agent,
# metrics, runtime-env agent) so several raylets coexist on one host: node K uses P+10+10K ..
# P+15+10K and workers P+1000+200K .. +199; the head also P+1 (Ray Client), P+2 (dashboard, Jobs).
# Ray's CLI replaces a loopback --node-ip-address by this host's own address, so the nodes register
# under that address (all the same one; traffic stays on this machine) and the GCS and raylets
# listen on every interface, as `ray start` always does; the dashboard listens on 127.0.0.1 only.
#
# Each node has its own Ray temp dir (D/n0, D/n1, ...): nodes sharing one would share one
# runtime_resources folder, and a node setting up a job's working_dir deletes and re-creates it
# (overwrite=True) under the driver that runs in it on the head.
#
# `stop` ends only the processes of this cluster (each node runs in its own session, recorded in
# the temp dir). It does not run `ray stop`, which would end EVERY Ray on the machine, including
# other people's local Ray and your tests' ray.init().
set -euo pipefail
export RAY_USAGE_STATS_ENABLED=0
# Recent Ray turns token authentication on for `ray start --head` when ~/.ray/auth_token exists,
# but neither a joining node nor a client given an explicit address (RAY_ADDRESS, --address) turns
# it on by itself, so they could not connect. For this rehearsal cluster auth is off unless you
# export RAY_AUTH_MODE=token yourself (then export it for the clients too); do that on a machine
# that others can reach over the network. Older Ray ignores the variable.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"

usage() {  # the header above; on stderr when it answers a wrong call
  if [ "${1:-2}" = 0 ]; then sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; else sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; fi
  exit "${1:-2}"
}
die() { echo "local_cluster.sh: $*" >&2; exit 1; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMD="${1:-}"; [ $# -gt 0 ] && shift
NODES=""
if [ "$CMD" = start ]; then
  NODES="${1:-}"; [ $# -gt 0 ] && shift
  [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "start needs the number of nodes, e.g. 'start 3'"
  [ "$NODES" -le 32 ] || die "at most 32 nodes on one machine"
fi
PORT="${RAYPROF_CLUSTER_PORT:-6390}"
TMP="${RAYPROF_CLUSTER_TMP:-/tmp/rayprof-local-cluster}"
CPUS="${RAYPROF_CLUSTER_CPUS:-}"
GPUS="${RAYPROF_CLUSTER_GPUS:-0}"
STORE_MB="${RAYPROF_CLUSTER_OBJECT_STORE_MB:-512}"
GRACE="${RAYPROF_CLUSTER_STOP_GRACE:-3}"
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --temp-dir) TMP="$2"; shift 2 ;;
    --num-cpus) CPUS="$2"; shift 2 ;;
    --num-gpus) GPUS="$2"; shift 2 ;;
    --object-store-mb) STORE_MB="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown option '$1' (try --help)" ;;
  esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1024 ] && [ "$PORT" -le 20000 ] || die "--port must be 1024..20000"
[[ "$TMP" = /* ]] || die "--temp-dir must be an absolute path"
# Ray puts Unix sockets under <temp-dir>/nK/session_<date>_<pid>/sockets/; Linux allows 107 bytes.
[ "${#TMP}" -le 36 ] || die "--temp-dir '$TMP' is too long for Ray's socket paths (36 characters at most)"
STATE="$TMP/local_cluster.state"
ADDRESS="127.0.0.1:$PORT"
DASHBOARD_PORT=$((PORT + 2))

find_ray() {
  if [ -n "${RAY:-}" ]; then echo "$RAY"
  elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/ray" ]; then echo "$VIRTUAL_ENV/bin/ray"
  elif command -v ray >/dev/null 2>&1; then command -v ray
  elif [ -x "$REPO/.venv/bin/ray" ]; then echo "$REPO/.venv/bin/ray"
  else die "no 'ray' found: activate the environment, set RAY=/path/to/ray, or run 'make setup'"
  fi
}

# ------------------------------------------------------------------ sessions of this cluster
recorded_sids() { [ -f "$STATE" ] && awk '$1 == "node" {print $3}' "$STATE" || true; }

ours() {  # a session that still runs Ray processes of this temp dir (guards against pid reuse)
  local sid="$1" args
  [[ "$sid" =~ ^[1-9][0-9]*$ ]] || return 1
  args="$(ps -o args= -s "$sid" 2>/dev/null || true)"
  [ -n "$args" ] && { grep -qF -- "$TMP" <<<"$args" || grep -q '^ray::' <<<"$args"; }
}

alive_in() { local sid; for sid in "$@"; do pgrep -s "$sid" >/dev/null 2>&1 && return 0; done; return 1; }

stop_sessions() {  # SIGTERM, up to $GRACE s for a clean exit (gcs_server often ignores it), SIGKILL
  local sids=() sid i
  for sid in $(recorded_sids); do ours "$sid" && sids+=("$sid"); done
  if [ ${#sids[@]} -gt 0 ]; then
    if [ "$FORCE" != 1 ]; then
      for sid in "${sids[@]}"; do pkill -TERM -s "$sid" 2>/dev/null || true; done
      for i in $(seq 1 $((GRACE * 5))); do alive_in "${sids[@]}" || break; sleep 0.2; done
    fi
    for sid in "${sids[@]}"; do pkill -KILL -s "$sid" 2>/dev/null || true; done
    for i in $(seq 1 25); do alive_in "${sids[@]}" || break; sleep 0.2; done
  fi
  rm -f "$STATE"
  echo "stopped ${#sids[@]} Ray node(s) of $ADDRESS (logs stay in $TMP)"
}

node_cores() {  # node_cores INDEX: its own slice of this machine's cores, while they last (else nothing)
  local n; n=$(nproc)
  if [ $((NODES * CPUS)) -le "$n" ] && command -v taskset >/dev/null; then
    echo "$(($1 * CPUS))-$((($1 + 1) * CPUS - 1))"
  fi
}

start_node() {  # start_node INDEX: one `ray start` in a session of its own, recorded in $STATE
  local i="$1" base=$((PORT + 10 + 10 * $1)) wbase=$((PORT + 1000 + 200 * $1))
  local log="$TMP/local_cluster.node$i.log"
  local args=(start --node-ip-address=127.0.0.1 --temp-dir="$TMP/n$i" --disable-usage-stats
    --num-cpus="$CPUS" --num-gpus="$GPUS" --resources="{\"node$i\": 1}"
    --object-store-memory=$((STORE_MB * 1024 * 1024))
    --node-manager-port=$base --object-manager-port=$((base + 1))
    --dashboard-agent-listen-port=$((base + 2)) --dashboard-agent-grpc-port=$((base + 3))
    --metrics-export-port=$((base + 4)) --runtime-env-agent-port=$((base + 5))
    --min-worker-port=$wbase --max-worker-port=$((wbase + 199)))
  if [ "$i" = 0 ]; then
    args+=(--head --port="$PORT" --ray-client-server-port=$((PORT + 1))
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT")
  else
    args+=(--address="$ADDRESS")
  fi
  # The new session's id is the pid of the shell that execs `ray start`; every Ray process of this
  # node (raylet, agents, workers) inherits it, which is how `stop` finds them and nothing else.
  # It is recorded before `ray start` runs, so even an interrupted start can be stopped.
  # Where the machine has cores enough, node i runs on cores of its own (taskset; its raylet and
  # workers inherit the mask), as separate machines would: rayprof pins inside that slice.
  local pin=() cores; cores=$(node_cores "$i")
  [ -n "$cores" ] && pin=(taskset -c "$cores")
  if ! setsid -w bash -c 'echo "node $2 $$" >>"$1"; shift 2; exec "$@"' _ "$STATE" "$i" \
      "${pin[@]}" "$RAY" "${args[@]}" >"$log" 2>&1; then
    echo "node$i failed to start; the end of $log:" >&2
    tail -n 20 "$log" >&2
    return 1
  fi
}

cmd_start() {
  command -v setsid >/dev/null || die "needs setsid (util-linux)"
  RAY="$(find_ray)"
  [ -x "$RAY" ] || die "'$RAY' is not an executable ray"
  mkdir -p "$TMP"
  for sid in $(recorded_sids); do
    ours "$sid" && die "a cluster from $TMP is already running; 'local_cluster.sh stop' first"
  done
  rm -f "$STATE"
  if [ -z "$CPUS" ]; then CPUS=$(( $(nproc) / NODES )); [ "$CPUS" -ge 1 ] || CPUS=1; fi
  [[ "$CPUS" =~ ^[0-9]+$ ]] || die "--num-cpus must be a whole number"
  [[ "$GPUS" =~ ^[0-9]+$ ]] || die "--num-gpus must be a whole number"
  echo "port $PORT" >"$STATE"
  trap 'echo "interrupted: stopping the nodes started so far" >&2; stop_sessions >&2; exit 130' INT TERM
  local i
  for i in $(seq 0 $((NODES - 1))); do
    local cores; cores=$(node_cores "$i")
    echo "starting node$i ($CPUS CPU, $GPUS GPU, resource node$i${cores:+, cores $cores}) ..."
    if ! start_node "$i"; then
      echo "start failed: stopping the nodes started so far" >&2
      stop_sessions >&2
      exit 1
    fi
  done
  trap - INT TERM
  local auth=""
  if [ "$RAY_AUTH_MODE" = token ]; then auth=" RAY_AUTH_MODE=token"; fi
  cat <<EOF

Ray cluster of $NODES node(s) on this machine (node0 is the head), temp dir $TMP
  export RAY_ADDRESS=$ADDRESS$auth
  dashboard, Jobs API: http://127.0.0.1:$DASHBOARD_PORT  (ray job submit --address http://127.0.0.1:$DASHBOARD_PORT)
  status: $0 status --port $PORT --temp-dir $TMP
  stop:   $0 stop --port $PORT --temp-dir $TMP
EOF
}

case "$CMD" in
  start) cmd_start ;;
  stop) stop_sessions ;;
  status) RAY="$(find_ray)"; exec "$RAY" status --address "$ADDRESS" ;;
  -h|--help|help) usage 0 ;;
  *) usage 2 ;;
esac
