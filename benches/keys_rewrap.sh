#!/usr/bin/env bash
# Benchmark: KMS re-wrap of N data keys against moto's KMS over HTTP, at
# concurrency 1 vs the configured concurrency (8), in one script.
# Each org holds one DEK marked as wrapped under an old KEK version, so a
# `keys rotate` does exactly N ReEncrypt calls and nothing else.
# Usage: benches/keys_rewrap.sh [N]   (default 10000; the issue's 100000 takes ~10x longer)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
source scripts/test-servers
trap 'lethe_servers_stop; rm -rf "${work:-}"' EXIT INT TERM
lethe_servers_start >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lethe/target}"
cargo build --release --quiet
LETHE="$CARGO_TARGET_DIR/release/lethe"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
work=$(mktemp -d)
mkdir -p "$work/jobs"
python3 - "$work/app.db" "$N" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
c.execute("CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at TEXT)")
c.executemany("INSERT INTO orgs VALUES (?, NULL)", [(i,) for i in range(1, int(sys.argv[2]) + 1)])
c.commit()
PY
write_config() {
cat > "$work/lethe.toml" <<TOML
[database]
url = "sqlite://app.db"
[store]
url = "sqlite://lethe.db"
[mail]
from = "Lethe <lethe@bench.example>"
transport = "file"
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
[keys]
provider = "aws"
kms_endpoint = "$LETHE_TEST_MOTO_URL"
region = "us-east-1"
concurrency = $1
TOML
}
write_config 8
"$LETHE" --config "$work/lethe.toml" migrate >/dev/null
echo "creating $N KEKs and DEKs in moto..." >&2
"$LETHE" --config "$work/lethe.toml" keys rotate --json > /dev/null

rewrap() { # concurrency → seconds for N re-wraps
  write_config "$1"
  python3 -c "import sqlite3; c=sqlite3.connect('$work/lethe.db'); c.execute(\"UPDATE org_deks SET kek_version='stale'\"); c.commit()"
  python3 - "$LETHE" "$work/lethe.toml" "$N" <<'PY'
import json, subprocess, sys, time
t = time.monotonic()
out = subprocess.run([sys.argv[1], "--config", sys.argv[2], "keys", "rotate", "--json"], check=True, capture_output=True, text=True).stdout
dt = time.monotonic() - t
r = json.loads(out)
assert r["rewrapped"] == int(sys.argv[3]), r["rewrapped"]
print(f"{dt:.2f}")
PY
}
s1=$(rewrap 1)
s8=$(rewrap 8)
python3 -c "
n=$N; s1=$s1; s8=$s8
print(f're-wrap of {n:,} DEKs via KMS ReEncrypt (moto over HTTP)')
print(f'concurrency 1: {s1:8.2f} s  {n/s1:8,.0f} DEKs/s')
print(f'concurrency 8: {s8:8.2f} s  {n/s8:8,.0f} DEKs/s')
print(f'speed-up: {s1/s8:.2f}x')
"
