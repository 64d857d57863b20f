#!/usr/bin/env bash
# Sets up what is missing (the pinned nats-server, Node.js with the local identity provider,
# chromium), builds `hru`, and plays one stalking case end to end with `hru demo`: referral,
# screening, risk assessment, an order with a GPS tag, breaches reaching the control room and
# the victim, reviews, and a final audit, while serving the control room's live page (sign in
# at the local identity provider). Everything lives in a temporary directory and is removed at
# the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/tools.sh" >/dev/null
NATS_SERVER="$ROOT/.tools/venv/bin/nats-server"

echo "== building hru =="
cargo build --release --quiet -p hru-cli
HRU="${CARGO_TARGET_DIR:-$ROOT/target}/release/hru"

export NATS_SERVER_BIN="$NATS_SERVER"
# The control room's page and the local identity provider its operators sign in at.
export HRU_WEB_TOOLS="$ROOT/tools/web" HRU_NODE_BIN="$ROOT/.tools/venv/bin/node"
# Five party nodes, the geofence and the gateway on a throwaway local nats-server; pass
# --non-interactive to run straight through (Ctrl-C stops everything).
exec "$HRU" --policies "$ROOT/policies" demo "$@"
