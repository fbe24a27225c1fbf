#!/usr/bin/env bash
# The two commands of the README, and the set-up they share.
#   ./dev.sh demo [args]          the demo: a strategy on the embedded exchange
#                                 simulators (five WebSocket/TLS venues in, FIX
#                                 orders out) on the io_uring loop (default: 10 s)
#   ./dev.sh test [pytest args]   run the tests and the linter
# Both install what they need: Debian packages with apt-get, Python packages
# into ./.venv with pip, and the C core compiled by cffi at install.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(gcc pkg-config liburing-dev iproute2 ethtool
    libxdp-dev libbpf-dev xdp-tools dpdk dpdk-dev libdpdk-dev)
VENV=.venv

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_system_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    # Debian's own python3 needs its venv and header packages; other Pythons bring both.
    python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
    python3 - <<'PY' || missing+=(python3-dev)
import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
PY
    if [ ${#missing[@]} -gt 0 ]; then
        echo "dev.sh: installing Debian packages: ${missing[*]}" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install_python_packages() {
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    # Editable, so the tests and examples import this tree with its compiled core.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
}

setup() {
    install_system_packages
    install_python_packages
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo)
        setup
        [ $# -gt 0 ] || set -- --seconds 10
        exec "$VENV/bin/python" examples/demo.py "$@"
        ;;
    test)
        setup
        "$VENV/bin/ruff" check aiolowlat tests benchmarks examples
        exec "$VENV/bin/python" -m pytest tests "$@"
        ;;
    setup)
        setup
        ;;
    *)
        echo "usage: ./dev.sh demo [--seconds N] [--busy-poll] | test [pytest args] | setup" >&2
        exit 2
        ;;
esac
