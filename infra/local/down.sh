#!/usr/bin/env bash
# Stop the local development services started by infra/local/up.sh.
# Usage: infra/local/down.sh [ray] [s3] [mlflow]    (default: all three)
# Only the processes recorded in .services/*.pid are signalled (never `ray stop`, which would end
# every Ray instance of this user on the machine). Data (.services/mlflow.db, artifacts) is kept.
set -euo pipefail

# shellcheck source=infra/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

main() {
    local wanted=("$@") name
    if ((${#wanted[@]} == 0)); then
        wanted=(ray s3 mlflow) # reverse start order
    fi
    for name in "${wanted[@]}"; do
        service_port "$name" >/dev/null
        stop_service "$name"
    done
}

main "$@"
