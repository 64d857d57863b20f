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
# Each server's config as its container sees it: the TLS files at /etc/nats.
nats="$OUT/generated/nats"
for i in 1 2 3; do
    sed -e "s|/etc/nats/server.pem|$nats/nats-$i.pem|; s|/etc/nats/server.key|$nats/nats-$i.key|" \
        -e "s|/etc/nats/ca.pem|$nats/ca.pem|" "$nats/nats-$i.conf" > "$nats/check-$i.conf"
    "$BIN/nats-server" -t -c "$nats/check-$i.conf"
done
"$BIN/check-jsonschema" --builtin-schema vendor.compose-spec "$ROOT/compose.yaml"
# The hru containers run as the image's non-root user, and every secret is declared for it.
grep -qx 'USER 10001:10001' "$ROOT/Dockerfile" || { echo "deploy-check: the Dockerfile must end as USER 10001:10001" >&2; exit 1; }
"$BIN/python" - "$ROOT/compose.yaml" <<'PY'
import sys
from ruamel.yaml import YAML
compose = YAML(typ="safe").load(open(sys.argv[1]))
bad = []
for name, service in compose["services"].items():
    if service.get("image", "").startswith("nats:"):
        continue
    if str(service.get("user", "10001")).split(":")[0] in ("0", "root"):
        bad.append(f"{name} runs as root")
    for secret in service.get("secrets", []):
        if not isinstance(secret, dict) or (secret.get("uid"), secret.get("gid"), secret.get("mode")) != ("10001", "10001", 0o400):
            bad.append(f"{name}: secret {secret} is not declared for uid/gid 10001, mode 0400")
if bad:
    sys.exit("deploy-check: " + "; ".join(bad))
PY
# Every file compose.yaml mounts from deploy/generated is one deploy-init.sh writes.
grep -o '\./deploy/generated/[^: ]*' "$ROOT/compose.yaml" | sort -u | while read -r path; do
    [[ -e "$OUT/generated/${path#./deploy/generated/}" ]] || { echo "deploy-check: compose.yaml mounts $path, which deploy-init.sh does not write" >&2; exit 1; }
done
echo "deploy-check: generated nats-server configs (TLS) valid, compose.yaml valid, hru containers non-root"
