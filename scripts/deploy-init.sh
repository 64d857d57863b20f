#!/usr/bin/env bash
# Generates what compose.yaml mounts: fresh keys for every party of the agreement plus the
# provisioner and the auditor, the public directory, the broker authorization generated from the
# agreement, one nats-server config per cluster node, a deployment CA and each service's
# certificate. Secrets are written mode 0600 and never committed (deploy/generated is ignored).
#
#   scripts/deploy-init.sh [OUT]     (default: deploy/generated; refuses to overwrite keys)
#
# Uses HRU_BIN if set, otherwise builds the CLI with cargo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/deploy/generated}"
AGREEMENT="$ROOT/policies/cheshire-hru.toml"
# Services with a TLS certificate (the host name is the compose service name).
NODES=(police-hru police-control victim-advocacy probation cwp)
NATS_NODES=3

if [[ -z "${HRU_BIN:-}" ]]; then
    cargo build --quiet -p hru-cli --manifest-path "$ROOT/Cargo.toml"
    HRU_BIN="$ROOT/target/debug/hru"
fi
if [[ -e "$OUT/keys" ]]; then
    echo "deploy-init: $OUT/keys exists; remove $OUT to generate a new deployment" >&2
    exit 2
fi

mkdir -p "$OUT/keys" "$OUT/policies" "$OUT/nats" "$OUT/tls"
chmod 700 "$OUT/keys" "$OUT/tls"
cp "$AGREEMENT" "$OUT/policies/"

# Every party of the agreement, then the broker's operators.
mapfile -t PARTIES < <(python3 -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(p["id"] for p in tomllib.load(f)["party"]))
' "$AGREEMENT")
: > "$OUT/policies/directory.toml"
for party in "${PARTIES[@]}" provisioner auditor; do
    "$HRU_BIN" keys generate --party "$party" --out "$OUT/keys" >> "$OUT/policies/directory.toml"
done

"$HRU_BIN" --policies "$OUT/policies" policy nats-config --out "$OUT/nats/auth.conf"
for i in $(seq 1 "$NATS_NODES"); do
    routes=()
    for j in $(seq 1 "$NATS_NODES"); do
        [[ "$i" == "$j" ]] || routes+=(--route "nats-route://nats-$j:6222")
    done
    "$HRU_BIN" log server-config --name "nats-$i" --store /data --cluster hru "${routes[@]}" \
        --auth auth.conf --out "$OUT/nats/nats-$i.conf"
done

"$HRU_BIN" keys ca --out "$OUT/tls"
for party in "${NODES[@]}"; do
    "$HRU_BIN" keys cert --ca "$OUT/tls" --party "$party" --host "$party" --host localhost --out "$OUT/tls"
done
echo "deploy-init: ${#PARTIES[@]} parties, $NATS_NODES nats-server configs and ${#NODES[@]} certificates in $OUT"
