# shellcheck shell=bash
# Settings and helpers shared by infra/local/{up,down,status}.sh; sourced, never run on its own.
# Every service binds to 127.0.0.1. Each runs in its own session (setsid) with a pid file and a
# log under $SERVICES_DIR, so stopping one ends exactly the processes this script started.

DECO_ROOT="${DECO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
SERVICES_DIR="${DECO_SERVICES_DIR:-$DECO_ROOT/.services}"
VENV_DIR="${VENV:-.venv}"
[[ "$VENV_DIR" == /* ]] || VENV_DIR="$DECO_ROOT/$VENV_DIR"

LOCAL_HOST=127.0.0.1
MLFLOW_PORT="${DECO_MLFLOW_PORT:-5000}"
MLFLOW_WORKERS="${DECO_MLFLOW_WORKERS:-1}"
S3_PORT="${DECO_S3_PORT:-9000}"
S3_BUCKET="${DECO_S3_BUCKET:-deco}"
RAY_CPUS="${DECO_RAY_CPUS:-4}"
RAY_PORT="${DECO_RAY_PORT:-6379}"
RAY_DASHBOARD_PORT="${DECO_RAY_DASHBOARD_PORT:-8265}"
RAY_CLIENT_PORT="${DECO_RAY_CLIENT_PORT:-10001}"
RAY_AGENT_PORT="${DECO_RAY_AGENT_PORT:-52365}"
READY_TIMEOUT="${DECO_READY_TIMEOUT:-90}"
STOP_TIMEOUT="${DECO_STOP_TIMEOUT:-40}"

# Start order: the slowest first, so the waits overlap.
SERVICES=(mlflow s3 ray)

log() { printf '[deco-services] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Path of an executable: the project venv's copy when present, else the one on PATH.
bin_path() {
    if [[ -x "$VENV_DIR/bin/$1" ]]; then
        printf '%s\n' "$VENV_DIR/bin/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        return 1
    fi
}

pid_file() { printf '%s/%s.pid\n' "$SERVICES_DIR" "$1"; }
log_file() { printf '%s/%s.log\n' "$SERVICES_DIR" "$1"; }

service_port() {
    case "$1" in
        mlflow) echo "$MLFLOW_PORT" ;;
        s3) echo "$S3_PORT" ;;
        ray) echo "$RAY_DASHBOARD_PORT" ;;
        *) die "unknown service '$1' (valid: ${SERVICES[*]})" ;;
    esac
}

# Every TCP port the service listens on by fixed number (checked before starting it).
service_ports() {
    case "$1" in
        ray) echo "$RAY_DASHBOARD_PORT $RAY_PORT $RAY_CLIENT_PORT $RAY_AGENT_PORT" ;;
        *) service_port "$1" ;;
    esac
}

# The URL whose HTTP 200 means the service is ready.
health_url() {
    case "$1" in
        mlflow) echo "http://$LOCAL_HOST:$MLFLOW_PORT/health" ;;
        s3) echo "http://$LOCAL_HOST:$S3_PORT/" ;;
        ray) echo "http://$LOCAL_HOST:$RAY_DASHBOARD_PORT/api/version" ;;
        *) die "unknown service '$1' (valid: ${SERVICES[*]})" ;;
    esac
}

# Text that the service's command line must contain: guards against a recycled pid.
service_marker() {
    case "$1" in
        mlflow) echo "mlflow server" ;;
        s3) echo "moto_server" ;;
        ray) echo "ray start --head" ;;
        *) die "unknown service '$1' (valid: ${SERVICES[*]})" ;;
    esac
}

# Print the pid of a running service that this script started; fail otherwise.
service_pid() {
    local file pid cmdline
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmdline="$(ps -ww -p "$pid" -o args= 2>/dev/null || true)"
    [[ "$cmdline" == *"$(service_marker "$1")"* ]] || return 1
    printf '%s\n' "$pid"
}

# http_ok URL [SECONDS]: true when URL answers HTTP 200 within SECONDS (default 3).
http_ok() {
    local max_time="${2:-3}"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time "$max_time" "$1" 2>/dev/null
    else
        "$(bin_path python3 || echo python3)" - "$1" "$max_time" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
    fi
}

# True when something already accepts TCP connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/$LOCAL_HOST/$1") 2>/dev/null; }

# Stop one service: SIGTERM to its leader, wait, then SIGKILL whatever is left of its session.
stop_service() {
    local name="$1" pid file i
    file="$(pid_file "$name")"
    if ! pid="$(service_pid "$name")"; then
        [[ -f "$file" ]] && log "$name: not running (removing stale pid file)"
        rm -f "$file"
        return 0
    fi
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 2; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    # Leftovers of the session this script created (setsid made pid the group id).
    if kill -0 -- "-$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$file"
    log "$name: stopped"
}
