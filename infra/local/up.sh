#!/usr/bin/env bash
# Start the local development services, all bound to 127.0.0.1: an MLflow tracking server
# (sqlite store), moto's S3-compatible server and a Ray head with its dashboard / Jobs API.
# Usage: infra/local/up.sh [mlflow] [s3] [ray]      (default: all three)
#        eval "$(infra/local/up.sh)"                 (stdout carries only the env exports)
# Idempotent: a service already running is left as it is. Pid files and logs: .services/.
#
# Local-only choices, on purpose:
#   RAY_AUTH_MODE=disabled                 Ray's token auth is off; acceptable only because every
#                                          Ray port listens on 127.0.0.1 (next line). Never use
#                                          this setting for a cluster reachable from other hosts.
#   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0    makes Ray keep 127.0.0.1 as its node address instead of
#                                          replacing it with the host's routable IP; clients need
#                                          it too (it is part of the printed exports).
#   AWS keys "testing"                     dummies for the local moto endpoint; not credentials.
# Knobs: DECO_MLFLOW_PORT (5000) DECO_S3_PORT (9000) DECO_S3_BUCKET (deco) DECO_RAY_CPUS (4)
#        DECO_RAY_PORT (6379) DECO_RAY_DASHBOARD_PORT (8265) DECO_RAY_CLIENT_PORT (10001)
#        DECO_RAY_AGENT_PORT (52365) DECO_RAY_OBJECT_STORE_BYTES DECO_RAY_TMPDIR
#        DECO_SERVICES_DIR (.services) DECO_READY_TIMEOUT (90 s) VENV (.venv)
set -euo pipefail

# shellcheck source=infra/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Ray keeps unix sockets under its temp dir; their paths must stay under ~107 characters.
ray_temp_dir() {
    local dir="${DECO_RAY_TMPDIR:-$SERVICES_DIR/ray}"
    if ((${#dir} > 60)) && [[ -z "${DECO_RAY_TMPDIR:-}" ]]; then
        dir="${TMPDIR:-/tmp}/deco-ray-$(printf '%s' "$SERVICES_DIR" | cksum | cut -d' ' -f1)"
    fi
    printf '%s\n' "$dir"
}

# Run a command detached in its own session; its pid (== its process group) goes to the pid file.
launch() {
    local name="$1"
    shift
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >"$(log_file "$name")" 2>&1 </dev/null &
    else
        nohup "$@" >"$(log_file "$name")" 2>&1 </dev/null &
    fi
    printf '%s\n' "$!" >"$(pid_file "$name")"
}

start_mlflow() {
    local exe
    exe="$(bin_path mlflow)" || die "mlflow not found (looked in $VENV_DIR/bin and PATH); run 'make setup'"
    mkdir -p "$SERVICES_DIR/mlartifacts"
    (
        cd "$SERVICES_DIR"
        # MLflow 3's server-side job runner (GenAI jobs; a Huey consumer pool) is not used: off.
        launch mlflow env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$exe" server \
            --backend-store-uri "sqlite:///$SERVICES_DIR/mlflow.db" \
            --default-artifact-root "$SERVICES_DIR/mlartifacts" \
            --host "$LOCAL_HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS"
    )
}

start_s3() {
    local exe
    exe="$(bin_path moto_server)" || die "moto_server not found (looked in $VENV_DIR/bin and PATH); install the dev extras"
    (
        cd "$SERVICES_DIR"
        launch s3 "$exe" -H "$LOCAL_HOST" -p "$S3_PORT"
    )
}

start_ray() {
    local exe temp_dir
    exe="$(bin_path ray)" || die "ray not found (looked in $VENV_DIR/bin and PATH); run 'make setup'"
    temp_dir="$(ray_temp_dir)"
    mkdir -p "$temp_dir"
    local args=(start --head --block
        --node-ip-address "$LOCAL_HOST" --dashboard-host "$LOCAL_HOST"
        --port "$RAY_PORT" --dashboard-port "$RAY_DASHBOARD_PORT"
        --ray-client-server-port "$RAY_CLIENT_PORT" --dashboard-agent-listen-port "$RAY_AGENT_PORT"
        --num-cpus "$RAY_CPUS" --temp-dir "$temp_dir" --disable-usage-stats)
    if [[ -n "${DECO_RAY_OBJECT_STORE_BYTES:-}" ]]; then
        args+=(--object-store-memory "$DECO_RAY_OBJECT_STORE_BYTES")
    fi
    # Job entrypoints (`python -m ...`, `deco ...`) are resolved on the head's PATH: put the venv that holds
    # the project first, so jobs run its Python and not whatever `python` the calling shell had.
    local path="$PATH"
    [[ -d "$VENV_DIR/bin" ]] && path="$VENV_DIR/bin:$PATH"
    (
        cd "$SERVICES_DIR"
        launch ray env PATH="$path" RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
            RAY_USAGE_STATS_ENABLED=0 "$exe" "${args[@]}"
    )
}

# Poll every started service's health URL; on a crash or timeout stop what this run started.
wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT)) pending=("$@") still name
    while ((${#pending[@]} > 0)); do
        still=()
        for name in "${pending[@]}"; do
            if http_ok "$(health_url "$name")"; then
                log "$name: ready at $(health_url "$name")"
            elif ! service_pid "$name" >/dev/null; then
                log "$name: exited during start-up; last lines of $(log_file "$name"):"
                tail -n 20 "$(log_file "$name")" >&2 || true
                abort_started "$@"
            else
                still+=("$name")
            fi
        done
        pending=("${still[@]+"${still[@]}"}")
        if ((${#pending[@]} > 0 && SECONDS >= deadline)); then
            log "timed out after ${READY_TIMEOUT}s waiting for: ${pending[*]} (see logs in $SERVICES_DIR;" \
                "raise DECO_READY_TIMEOUT on a slow machine)"
            abort_started "$@"
        fi
        ((${#pending[@]} == 0)) || sleep 0.5
    done
}

abort_started() {
    local name
    for name in "$@"; do stop_service "$name"; done
    die "start-up failed; the services started by this run were stopped"
}

create_bucket() {
    local py
    py="$(bin_path python3 || bin_path python)" || { log "no python to create bucket $S3_BUCKET"; return 0; }
    "$py" - "http://$LOCAL_HOST:$S3_PORT/$S3_BUCKET" <<'PY' || log "could not create bucket $S3_BUCKET"
import sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], method="PUT")
try:
    urllib.request.urlopen(req, timeout=5).close()
except urllib.error.HTTPError as err:  # 409: the bucket exists already
    sys.exit(0 if err.code == 409 else 1)
PY
}

write_env() {
    local env_file="$SERVICES_DIR/env.sh"
    cat >"$env_file" <<EOF
# Written by infra/local/up.sh: source it to talk to the local services (127.0.0.1 only).
export MLFLOW_TRACKING_URI=http://$LOCAL_HOST:$MLFLOW_PORT
export AWS_ENDPOINT_URL=http://$LOCAL_HOST:$S3_PORT
export MLFLOW_S3_ENDPOINT_URL=http://$LOCAL_HOST:$S3_PORT
# Dummy keys for the local moto endpoint only; never put real credentials here.
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1
export RAY_ADDRESS=$LOCAL_HOST:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://$LOCAL_HOST:$RAY_DASHBOARD_PORT
export RAY_AUTH_MODE=disabled
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
EOF
    log "exports written to $env_file (source it, or eval this script's stdout)"
    grep '^export ' "$env_file"
}

main() {
    local wanted=("$@") started=() name pid port
    ((${#wanted[@]} > 0)) || wanted=("${SERVICES[@]}")
    mkdir -p "$SERVICES_DIR"
    for name in "${wanted[@]}"; do
        service_port "$name" >/dev/null
        if pid="$(service_pid "$name")"; then
            log "$name: already running (pid $pid)"
            continue
        fi
        for port in $(service_ports "$name"); do
            if port_busy "$port"; then
                die "$name: port $port on $LOCAL_HOST is used by another process;" \
                    "stop it or choose other ports (DECO_*_PORT)"
            fi
        done
        "start_$name"
        started+=("$name")
        log "$name: started (pid $(<"$(pid_file "$name")"), log $(log_file "$name"))"
    done
    ((${#started[@]} == 0)) || wait_ready "${started[@]}"
    for name in "${wanted[@]}"; do
        [[ "$name" != s3 ]] || create_bucket
    done
    write_env
}

main "$@"
