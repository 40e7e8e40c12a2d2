#!/usr/bin/env bash
# Show which local development services (infra/local/up.sh) run, with pid, port and health.
# Exit status: 0 when every service runs and answers its health check, 3 otherwise.
set -euo pipefail

# shellcheck source=infra/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

main() {
    local name pid state health rc=0
    printf '%-8s %-9s %-8s %-6s %s\n' SERVICE STATE PID PORT HEALTH
    for name in "${SERVICES[@]}"; do
        if pid="$(service_pid "$name")"; then
            state=running
            if http_ok "$(health_url "$name")" 10; then health=ok; else health=failing rc=3; fi
        else
            state=stopped pid=- health=- rc=3
            [[ -f "$(pid_file "$name")" ]] && state=stale
        fi
        printf '%-8s %-9s %-8s %-6s %s\n' "$name" "$state" "$pid" "$(service_port "$name")" "$health"
    done
    if [[ -f "$SERVICES_DIR/env.sh" ]]; then
        printf '\nexports: source %s\n' "$SERVICES_DIR/env.sh"
    fi
    return "$rc"
}

main "$@"
