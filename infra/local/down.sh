#!/usr/bin/env bash
# Stop the local development services started by infra/local/up.sh.
# Usage: infra/local/down.sh [ray] [s3] [mlflow]    (default: all three)
# Only the processes recorded in .services/*.pid are signalled (never `ray stop`, which would end
# every Ray instance of this user on the machine). Data (.services/mlflow.db, artifacts) is kept.
set -euo pipefail

# shellcheck source=infra/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

main() {
    local wanted=("$@") name pids=() pid rc=0
    ((${#wanted[@]} > 0)) || wanted=("${SERVICES[@]}")
    for name in "${wanted[@]}"; do
        service_port "$name" >/dev/null # validates the name
    done
    # The services do not depend on each other: stop them concurrently.
    for name in "${wanted[@]}"; do
        stop_service "$name" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || rc=1
    done
    return "$rc"
}

main "$@"
