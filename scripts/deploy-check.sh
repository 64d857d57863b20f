#!/usr/bin/env bash
# Checks the deployment without Docker: generates a throwaway deployment, has the pinned
# nats-server test every generated config (`nats-server -t`), and validates compose.yaml against
# the Compose specification (pinned check-jsonschema). Run by scripts/test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.tools/venv/bin"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

HRU_BIN="${HRU_BIN:-}" "$ROOT/scripts/deploy-init.sh" "$OUT/generated" > /dev/null 2>&1 \
    || { echo "deploy-check: scripts/deploy-init.sh failed" >&2; HRU_BIN="${HRU_BIN:-}" "$ROOT/scripts/deploy-init.sh" "$OUT/again"; exit 1; }
for conf in "$OUT"/generated/nats/nats-*.conf; do
    "$BIN/nats-server" -t -c "$conf"
done
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec "$ROOT/compose.yaml"
# Every file compose.yaml mounts from deploy/generated is one deploy-init.sh writes.
grep -o '\./deploy/generated/[^: ]*' "$ROOT/compose.yaml" | sort -u | while read -r path; do
    [[ -e "$OUT/generated/${path#./deploy/generated/}" ]] || { echo "deploy-check: compose.yaml mounts $path, which deploy-init.sh does not write" >&2; exit 1; }
done
echo "deploy-check: generated nats-server configs valid, compose.yaml valid"
