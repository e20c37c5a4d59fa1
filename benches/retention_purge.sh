#!/usr/bin/env bash
# Benchmark: batched retention purge vs one `DELETE ... WHERE ts < cutoff`.
# Two identical PostgreSQL tables of ROWS rows (30% older than 90 days, heap in
# time order like request logs, md5 payloads), one purged by `lethe run`, one
# by a single statement, in the same cluster and script. PAIRS rounds, each on
# fresh tables, alternate which side goes first; a CHECKPOINT before each.
# Prints medians and min–max of both, their throughput ratio, the longest
# single transaction, Lethe's CPU time and peak RSS.
# Usage: benches/retention_purge.sh [ROWS] [PAIRS]   (default 10000000 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-10000000}"
PAIRS="${2:-3}"
source scripts/test-servers
trap lethe_servers_stop EXIT INT TERM
lethe_servers_start >/dev/null

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lethe/target}"
cargo build --release --quiet
LETHE="$CARGO_TARGET_DIR/release/lethe"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$LETHE_TEST_PG_URL")

echo "generating $ROWS rows (30% older than 90 days)..." >&2
"${PSQL[@]}" <<SQL
CREATE TABLE orgs (id int PRIMARY KEY, closed_at timestamptz);
INSERT INTO orgs SELECT g, NULL FROM generate_series(1, 1000) g;
CREATE UNLOGGED TABLE seed AS
  SELECT (g % 1000) + 1 AS org_id, (g % 50000) + 1 AS user_id,
         now() - ((CASE WHEN g % 10 < 3 THEN 91 + (g % 600) ELSE (g % 89) END) * interval '1 day')
               - (g % 86400) * interval '1 second' AS created_at,
         md5(g::text) || md5((g * 7)::text) AS payload
  FROM generate_series(1, $ROWS) g;
SQL
# Both tables afresh from the seed; logs are appended in time order, so the heap is ordered by created_at.
build_tables() {
  "${PSQL[@]}" <<'SQL'
DROP TABLE IF EXISTS events_lethe, events_single;
CREATE TABLE events_lethe (id bigserial PRIMARY KEY, org_id int, user_id int, created_at timestamptz NOT NULL, payload text);
CREATE TABLE events_single (LIKE events_lethe INCLUDING ALL);
INSERT INTO events_lethe (org_id, user_id, created_at, payload) SELECT * FROM seed ORDER BY created_at;
INSERT INTO events_single (org_id, user_id, created_at, payload) SELECT * FROM seed ORDER BY created_at;
CREATE INDEX ON events_lethe (created_at);
CREATE INDEX ON events_single (created_at);
VACUUM ANALYZE events_lethe;
VACUUM ANALYZE events_single;
SQL
}

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

now() { python3 -c 'import time; print(time.monotonic())'; }
: > "$dir/times"
for pair in $(seq 1 "$PAIRS"); do
  echo "pair $pair/$PAIRS: building the tables..." >&2
  build_tables >/dev/null
  expired=$("${PSQL[@]}" -At -c "SELECT count(*) FROM events_single WHERE created_at < now() - interval '90 days'")
  run_single() {
    "${PSQL[@]}" -c "CHECKPOINT"
    local t0; t0=$(now)
    "${PSQL[@]}" -c "DELETE FROM events_single WHERE created_at < now() - interval '90 days'"
    single_s=$(python3 -c "print($(now) - $t0)")
  }
  run_lethe() {
    "${PSQL[@]}" -c "CHECKPOINT"
    local t0; t0=$(now)
    /usr/bin/time -f "%U %S %M" -o "$dir/lethe.time" "$LETHE" --config "$dir/lethe.toml" run purge --json > "$dir/run.json"
    lethe_s=$(python3 -c "print($(now) - $t0)")
  }
  if [ $((pair % 2)) -eq 1 ]; then run_lethe; run_single; else run_single; run_lethe; fi
  python3 - "$dir/run.json" "$expired" "$single_s" "$lethe_s" "$(cat "$dir/lethe.time")" >> "$dir/times" <<'PY'
import json, sys
run = json.load(open(sys.argv[1])); expired = int(sys.argv[2]); r = run["result"]
assert run["status"] == "succeeded", run
assert r["deleted"] == expired, (r["deleted"], expired)
print(expired, sys.argv[3], sys.argv[4], r["longest_batch_ms"], r["batches"], r["windows_redone"], r["plan_ms"], r["delete_ms"], sys.argv[5])
PY
done

python3 - "$dir/times" "$ROWS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
expired = int(rows[0][0])
single = [float(r[1]) for r in rows]; lethe = [float(r[2]) for r in rows]
longest = [int(r[3]) for r in rows]; plan = [int(r[6]) for r in rows]; delete = [int(r[7]) for r in rows]
cpu = [float(r[8]) + float(r[9]) for r in rows]; rss = [int(r[10]) / 1024 for r in rows]
med = statistics.median
def s(v): return f"median {med(v):6.2f} s (min {min(v):.2f}, max {max(v):.2f})"
print(f"rows: {int(sys.argv[2]):,}  expired: {expired:,}  pairs: {len(rows)} (alternating)")
print(f"single DELETE:   {s(single)}  {expired/med(single):12,.0f} rows/s  one transaction of {med(single)*1000:,.0f} ms")
print(f"lethe (batched): {s(lethe)}  {expired/med(lethe):12,.0f} rows/s  longest transaction {max(longest):,} ms; plan {med(plan):,} ms, delete {med(delete):,} ms; CPU {med(cpu):.2f} s, peak RSS {med(rss):.0f} MiB")
ratios = [x / y for x, y in zip(single, lethe)]
print(f"throughput ratio lethe/single: median {med(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})")
PY
rm -rf "$dir"
