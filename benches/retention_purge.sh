#!/usr/bin/env bash
# Benchmark: batched retention purge vs one `DELETE ... WHERE ts < cutoff`.
# Two identical PostgreSQL tables of ROWS rows (30% older than 90 days), one
# purged by `lethe run`, one by a single statement, in the same cluster and script.
# Prints rows/s of each, their ratio, and the longest single transaction.
# Usage: benches/retention_purge.sh [ROWS]   (default 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-10000000}"
source scripts/test-servers
trap lethe_servers_stop EXIT INT TERM
lethe_servers_start >/dev/null

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lethe/target}"
cargo build --release --quiet
LETHE="$CARGO_TARGET_DIR/release/lethe"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$LETHE_TEST_PG_URL")

echo "generating 2 x $ROWS rows (30% older than 90 days)..." >&2
"${PSQL[@]}" <<SQL
CREATE TABLE orgs (id int PRIMARY KEY, closed_at timestamptz);
INSERT INTO orgs SELECT g, NULL FROM generate_series(1, 1000) g;
CREATE UNLOGGED TABLE seed AS
  SELECT (g % 1000) + 1 AS org_id, (g % 50000) + 1 AS user_id,
         now() - ((CASE WHEN g % 10 < 3 THEN 91 + (g % 600) ELSE (g % 89) END) * interval '1 day')
               - (g % 86400) * interval '1 second' AS created_at,
         md5(g::text) || md5((g * 7)::text) AS payload
  FROM generate_series(1, $ROWS) g;
CREATE TABLE events_lethe (id bigserial PRIMARY KEY, org_id int, user_id int, created_at timestamptz NOT NULL, payload text);
CREATE TABLE events_single (LIKE events_lethe INCLUDING ALL);
-- Logs are appended in time order, so the heap is ordered by created_at (as real request logs are).
INSERT INTO events_lethe (org_id, user_id, created_at, payload) SELECT * FROM seed ORDER BY created_at;
INSERT INTO events_single (org_id, user_id, created_at, payload) SELECT * FROM seed ORDER BY created_at;
DROP TABLE seed;
CREATE INDEX ON events_lethe (created_at);
CREATE INDEX ON events_single (created_at);
VACUUM ANALYZE;
SQL

dir=$(mktemp -d)
mkdir -p "$dir/jobs"
: > "$dir/app.db"
cat > "$dir/lethe.toml" <<TOML
[database]
url = "sqlite://app.db"
[store]
url = "sqlite://lethe.db"
[mail]
from = "Lethe <lethe@bench.example>"
transport = "file"
[app]
subjects = { table = "events_lethe", id = "user_id", email = "payload" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
[[data_map]]
table = "events_lethe"
class = "events"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
retention = "90d"
TOML
cat > "$dir/jobs/purge.toml" <<TOML
kind = "retention.purge"
schedule = "0 0 3 * * *"
timeout = "2h"
[params]
batch_size = 5000
target_batch_ms = ${TARGET_MS:-250}
max_batch_size = 1000000
TOML
export LETHE_DATABASE_URL="$LETHE_TEST_PG_URL"
"$LETHE" --config "$dir/lethe.toml" migrate >/dev/null

expired=$("${PSQL[@]}" -At -c "SELECT count(*) FROM events_single WHERE created_at < now() - interval '90 days'")

# Each side starts from a fresh checkpoint, so neither pays for the other's dirty pages.
"${PSQL[@]}" -c "CHECKPOINT"
start=$(date +%s.%N)
"${PSQL[@]}" -c "DELETE FROM events_single WHERE created_at < now() - interval '90 days'"
single_s=$(python3 -c "print($(date +%s.%N) - $start)")

"${PSQL[@]}" -c "CHECKPOINT"
start=$(date +%s.%N)
"$LETHE" --config "$dir/lethe.toml" run purge --json > "$dir/run.json"
lethe_s=$(python3 -c "print($(date +%s.%N) - $start)")

python3 - "$dir/run.json" "$expired" "$single_s" "$lethe_s" "$ROWS" <<'PY'
import json, sys
run = json.load(open(sys.argv[1])); expired = int(sys.argv[2])
single_s, lethe_s, rows = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
r = run["result"]
assert run["status"] == "succeeded", run
assert r["deleted"] == expired, (r["deleted"], expired)
single_rate, lethe_rate = expired / single_s, expired / lethe_s
print(f"rows: {rows:,}  expired: {expired:,}")
print(f"single DELETE:   {single_s:8.2f} s  {single_rate:12,.0f} rows/s  longest transaction {single_s*1000:10,.0f} ms")
print(f"lethe (batched): {lethe_s:8.2f} s  {lethe_rate:12,.0f} rows/s  longest transaction {r['longest_batch_ms']:10,} ms  ({r['batches']} batches, {r['windows_redone']} redone; plan {r['plan_ms']} ms, delete {r['delete_ms']} ms)")
print(f"throughput ratio lethe/single: {lethe_rate/single_rate:.2f}x")
PY
rm -rf "$dir"
