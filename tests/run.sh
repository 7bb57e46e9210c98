#!/usr/bin/env bash
# The whole test suite, as the README's quick start runs it:
#   1. install the pinned Node reference (tests/node, npm ci; skipped if node is absent),
#   2. run pytest inside a private network namespace (lo only, multicast routed on lo),
#      so no test can reach a real interface.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v node >/dev/null 2>&1; then
    npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
else
    echo "tests/run.sh: node not found: interop tests will skip" >&2
fi

inner='ip link set lo up multicast on && ip route replace 224.0.0.0/4 dev lo && exec "$0" -m pytest "$@"'
if unshare -rn true 2>/dev/null; then
    exec unshare -rn sh -c "$inner" "$(command -v python3 || command -v python)" "$@"
elif unshare -n true 2>/dev/null; then
    exec unshare -n sh -c "$inner" "$(command -v python3 || command -v python)" "$@"
else
    echo "tests/run.sh: cannot make a network namespace; pytest will try, else multicast tests skip" >&2
    exec python3 -m pytest "$@"
fi
