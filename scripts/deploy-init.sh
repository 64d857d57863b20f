#!/usr/bin/env bash
# Generates what compose.yaml mounts, as a development set: fresh keys for every party of the
# agreement plus the provisioner and the auditor, each node party's own CA (listed as its
# `tls_ca` in the directory) and its node certificate, the broker's CA and one certificate per
# nats-server (clients over TLS, routes mutual TLS), the broker authorization generated from the
# agreement, one nats-server config per cluster node, and the paired victim devices named in
# HRU_DEVICES. Secrets are written mode 0600 and never committed (deploy/generated is ignored).
# In production each agency runs `hru keys generate`, `hru keys ca --party` and `hru keys cert`
# itself and sends only the public lines they print.
#
#   scripts/deploy-init.sh [OUT]     (default: deploy/generated; refuses to overwrite keys)
#
# HRU_BIN: the `hru` binary (default: build it with cargo).
# HRU_DEVICES: victim devices to pair (space-separated ids), each with its own broker identity.
# HRU_UID: the containers' user (default 10001, as in the Dockerfile). Compose mounts file
#   secrets with the host file's owner and mode, so when run as root the secrets are given to
#   that user (still mode 0600); otherwise run the printed chown before `docker compose up`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/deploy/generated}"
AGREEMENT="$ROOT/policies/cheshire-hru.toml"
# Parties running a node with a TLS certificate (the host name is the compose service name).
NODES=(police-hru police-control victim-advocacy probation mersey-care cwp evaluation)
NATS_NODES=3
HRU_UID="${HRU_UID:-10001}"
read -r -a DEVICES <<< "${HRU_DEVICES:-}"

if [[ -z "${HRU_BIN:-}" ]]; then
    cargo build --quiet -p hru-cli --manifest-path "$ROOT/Cargo.toml"
    HRU_BIN="$ROOT/target/debug/hru"
fi
if [[ -e "$OUT/keys" ]]; then
    echo "deploy-init: $OUT/keys exists; remove $OUT to generate a new deployment" >&2
    exit 2
fi

mkdir -p "$OUT/keys" "$OUT/policies" "$OUT/nats" "$OUT/tls"
chmod 700 "$OUT/keys" "$OUT/tls" "$OUT/nats"
# Every version of the agreement: the newest in force governs what is sealed from now on, the
# older ones what they sealed.
cp "$ROOT"/policies/cheshire-hru*.toml "$OUT/policies/"

# Every party of the agreement, then the broker's operators. A node party's block also lists
# its own CA, which alone may issue certificates naming that party.
mapfile -t PARTIES < <(python3 -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(p["id"] for p in tomllib.load(f)["party"]))
' "$AGREEMENT")
directory="$OUT/policies/directory.toml"
: > "$directory"
for party in "${PARTIES[@]}" provisioner auditor; do
    entry="$("$HRU_BIN" keys generate --party "$party" --out "$OUT/keys" 2>/dev/null)"
    if [[ " ${NODES[*]} " == *" $party "* ]]; then
        # The CA line belongs to the [[party]] table, before its [[party.signing_key]].
        ca_line="$("$HRU_BIN" keys ca --party "$party" --out "$OUT/tls/$party" 2>/dev/null)"
        entry="${entry%%$'\n\n'*}"$'\n'"$ca_line"$'\n\n'"${entry#*$'\n\n'}"
        "$HRU_BIN" keys cert --ca "$OUT/tls/$party" --party "$party" --host "$party" --host localhost \
            --out "$OUT/tls" 2>/dev/null
        cp "$OUT/tls/$party/ca.pem" "$OUT/tls/$party-ca.pem"
    fi
    printf '%s\n\n' "$entry" >> "$directory"
done
for device in "${DEVICES[@]}"; do
    "$HRU_BIN" device pair --device "$device" --out "$OUT/keys" 2>/dev/null >> "$directory"
    printf '\n' >> "$directory"
done

# The broker: its own CA, one certificate per server (serving clients and routes).
"$HRU_BIN" keys ca --out "$OUT/tls/broker" 2>/dev/null
cp "$OUT/tls/broker/ca.pem" "$OUT/tls/nats-ca.pem"
"$HRU_BIN" --policies "$OUT/policies" policy nats-config --out "$OUT/nats/auth.conf"
for i in $(seq 1 "$NATS_NODES"); do
    "$HRU_BIN" keys cert --ca "$OUT/tls/broker" --server "nats-$i" --host "nats-$i" --host localhost \
        --out "$OUT/nats" 2>/dev/null
    routes=()
    for j in $(seq 1 "$NATS_NODES"); do
        [[ "$i" == "$j" ]] || routes+=(--route "nats-route://nats-$j:6222")
    done
    "$HRU_BIN" log server-config --name "nats-$i" --store /data --cluster hru "${routes[@]}" \
        --auth auth.conf --tls-cert /etc/nats/server.pem --tls-key /etc/nats/server.key \
        --tls-ca /etc/nats/ca.pem --out "$OUT/nats/nats-$i.conf"
done
cp "$OUT/tls/nats-ca.pem" "$OUT/nats/ca.pem"

if [[ "$(id -u)" == 0 ]]; then
    chown -R "$HRU_UID:$HRU_UID" "$OUT/keys" "$OUT/tls"
else
    echo "deploy-init: the containers run as uid $HRU_UID; before \`docker compose up\` run:" >&2
    echo "  sudo chown -R $HRU_UID:$HRU_UID $OUT/keys $OUT/tls" >&2
fi
echo "deploy-init: ${#PARTIES[@]} parties, ${#NODES[@]} agency CAs and certificates, $NATS_NODES nats-server configs over TLS, ${#DEVICES[@]} paired devices in $OUT"
