#!/usr/bin/env bash
# Sets up what is missing (the pinned nats-server), builds `hru`, and plays the first round
# trip on a local, throwaway nats-server: police-hru records a referral; each party replays
# what it may read. Everything lives in a temporary directory and is removed at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/tools.sh" >/dev/null
NATS_SERVER="$ROOT/.tools/venv/bin/nats-server"

echo "== building hru =="
cargo build --release --quiet -p hru-cli
HRU="${CARGO_TARGET_DIR:-$ROOT/target}/release/hru"

WORK="$(mktemp -d)"
NATS_PID=""
cleanup() {
    if [[ -n "$NATS_PID" ]] && kill -0 "$NATS_PID" 2>/dev/null; then
        kill "$NATS_PID" && wait "$NATS_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$WORK/nats.conf" <<CONF
listen: 127.0.0.1:$PORT
jetstream { store_dir: "$WORK/js", sync_interval: always }
CONF
"$NATS_SERVER" -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
export HRU_NATS_URL="nats://127.0.0.1:$PORT" HRU_POLICIES="$WORK/policies"
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done

echo "== keys: one pair per party, public entries into the directory =="
mkdir -p "$WORK/policies"
cp "$ROOT/policies/cheshire-hru.toml" "$WORK/policies/"
for party in police-hru police-control victim-advocacy probation cwp mersey-care em-vendor geofence evaluation; do
    "$HRU" keys generate --party "$party" --out "$WORK/keys" 2>/dev/null >>"$WORK/policies/directory.toml"
    echo "  $party: $WORK/keys/$party.secret (0600)"
done

CASE="$(python3 -c 'import uuid; print(uuid.uuid4())')"
cat > "$WORK/referral.json" <<JSON
{
  "caseId": "$CASE",
  "occurredAt": "2026-11-21T22:40:00Z",
  "referralReceived": {
    "core": {
      "subjectRef": "3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
      "behaviours": ["BEHAVIOUR_STALKING", "BEHAVIOUR_ONLINE"],
      "area": "Cheshire East",
      "receivedAtMs": "1795300000000",
      "outOfHours": true
    },
    "identity": { "subject": { "fullName": "Sam Example", "dateOfBirth": "1990-02-03" } },
    "narrative": { "text": "Repeated unwanted contact at the victim's workplace since October." }
  }
}
JSON

echo
echo "== police-hru appends a referral (key grants first, then the sealed event) =="
"$HRU" append --party police-hru --keys "$WORK/keys" "$WORK/referral.json"

for party in police-hru probation cwp victim-advocacy evaluation em-vendor; do
    echo
    echo "== what $party can read =="
    "$HRU" replay --party "$party" --keys "$WORK/keys" --case "$CASE" | sed 's/^/  /'
done
echo
echo "== audit: every signature, chain, subject and audience, checked with public keys only =="
"$HRU" audit verify | sed 's/^/  /'

echo
echo "Demo done: each party saw exactly the sections the Cheshire HRU agreement gives it."
echo "See what a party receives and why: hru policy explain --party probation --policies policies"
