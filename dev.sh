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

APT_PACKAGES=(gcc g++ pkg-config liburing-dev iproute2 ethtool libssl-dev
    libxdp-dev libbpf-dev xdp-tools dpdk dpdk-dev libdpdk-dev)
VENV=.venv
QUICKFIX_VERSION=1.16.0
WHEEL_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/aiolowlat/wheels

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

# QuickFIX's sdist builds without TLS (its config.h leaves HAVE_SSL undefined and setup.py
# links no OpenSSL), and the FIX-over-TLS interop tests need it: so we build it ourselves,
# patched, once (~6 min), and keep the wheel outside the tree for later venvs.
quickfix_has_ssl() {
    local so
    so=$("$VENV/bin/python" -c \
        'import importlib.util as u; print(getattr(u.find_spec("_quickfix"), "origin", ""))')
    [ -n "$so" ] && [[ $(ldd "$so") == *libssl.so* ]]  # (grep -q would SIGPIPE ldd: pipefail)
}

build_quickfix_wheel() (
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "dev.sh: building QuickFIX $QUICKFIX_VERSION with TLS (once, ~6 min)" >&2
    "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-binary :all: \
        --no-deps "quickfix==$QUICKFIX_VERSION" -d "$tmp"
    tar -xzf "$tmp/quickfix-$QUICKFIX_VERSION.tar.gz" -C "$tmp"
    src=$tmp/quickfix-$QUICKFIX_VERSION
    sed -i 's|^/\* #undef HAVE_SSL \*/$|#define HAVE_SSL 1|' "$src/C++/config.h"
    sed -i "s|^\( *\)glob.glob('C++/\*.cpp'),$|&\n\1libraries=['ssl', 'crypto'],|" "$src/setup.py"
    if ! grep -q '^#define HAVE_SSL 1$' "$src/C++/config.h" \
        || ! grep -q "libraries=\['ssl', 'crypto'\]" "$src/setup.py"; then
        echo "dev.sh: the TLS patch no longer applies to quickfix-$QUICKFIX_VERSION's sdist" >&2
        exit 1
    fi
    if ! "$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
        -w "$tmp/out" "$src"; then
        echo "dev.sh: building QuickFIX with TLS failed (see above; it needs g++, libssl-dev" \
            "and the Python headers)" >&2
        exit 1
    fi
    mkdir -p "$WHEEL_CACHE"
    mv "$tmp"/out/quickfix-*.whl "$WHEEL_CACHE/"
)

install_quickfix_with_ssl() {
    quickfix_has_ssl && return 0
    local from_cache=(-m pip install -q --disable-pip-version-check --force-reinstall
        --no-deps --no-index --find-links "$WHEEL_CACHE" "quickfix==$QUICKFIX_VERSION")
    if ! "$VENV/bin/python" "${from_cache[@]}" 2>/dev/null; then
        build_quickfix_wheel
        "$VENV/bin/python" "${from_cache[@]}"
    fi
    if ! quickfix_has_ssl; then
        echo "dev.sh: the quickfix installed from $WHEEL_CACHE has no TLS (no libssl linked);" \
            "delete that wheel and run again" >&2
        exit 1
    fi
}

install_python_packages() {
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    install_quickfix_with_ssl
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
