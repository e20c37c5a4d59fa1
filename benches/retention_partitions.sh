#!/usr/bin/env bash
# Benchmark: retention.purge on a table range-partitioned by month vs what a
# DBA does by hand, on identical tables in the same cluster and script:
#   baseline A: DETACH PARTITION … CONCURRENTLY + DROP TABLE for every month
#               wholly before the cutoff (the floor: it deletes nothing else);
#   baseline B: A, plus one DELETE of the expired rows of the month that
#               straddles the cutoff (the same work Lethe does).
# Lethe also counts each partition per org (its evidence) and checkpoints
# every step. Rounds alternate Lethe and the baselines (fresh tables each
# round, a CHECKPOINT before each side); prints medians, min–max and ratios.
# Data: ROWS rows of request logs (1,000 orgs, md5 payloads), 70 % in the
# last 95 days, 30 % between 100 and 400 days old; retention 90 days.
# Usage: benches/retention_partitions.sh [ROWS] [ROUNDS]   (default 10000000 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-10000000}"
ROUNDS="${2:-3}"
source scripts/test-servers
trap 'lethe_servers_stop; rm -rf "${dir:-}"' EXIT INT TERM
lethe_servers_start >/dev/null

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lethe/target}"
cargo build --release --quiet
LETHE="$CARGO_TARGET_DIR/release/lethe"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$LETHE_TEST_PG_URL")

echo "generating $ROWS rows..." >&2
"${PSQL[@]}" <<SQL
CREATE TABLE orgs (id int PRIMARY KEY, closed_at timestamptz);
INSERT INTO orgs SELECT g, NULL FROM generate_series(1, 1000) g;
CREATE UNLOGGED TABLE seed AS
  SELECT (g % 1000) + 1 AS org_id, (g % 50000) + 1 AS user_id,
         now() - (CASE WHEN g % 10 < 3 THEN 100 + (g % 300) ELSE (g % 95) END) * interval '1 day'
               - (g % 86400) * interval '1 second' AS created_at,
         md5(g::text) || md5((g * 7)::text) AS payload
  FROM generate_series(1, $ROWS) g;
-- A partitioned copy of the seed, months from 14 back to next month, rows in time order.
CREATE FUNCTION make_events(name text) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
  EXECUTE format('CREATE TABLE %I (id bigserial, org_id int, user_id int, created_at timestamptz NOT NULL, payload text)
                  PARTITION BY RANGE (created_at)', name);
  FOR m IN -1..14 LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', name || '_m' || (m + 1), name,
                   date_trunc('month', now()) - make_interval(months => m),
                   date_trunc('month', now()) - make_interval(months => m - 1));
  END LOOP;
  EXECUTE format('INSERT INTO %I (org_id, user_id, created_at, payload) SELECT * FROM seed ORDER BY created_at', name);
  EXECUTE format('CREATE INDEX ON %I (created_at)', name);
  EXECUTE format('ANALYZE %I', name);
END \$\$;
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
target_batch_ms = 250
max_batch_size = 1000000
TOML
export LETHE_DATABASE_URL="$LETHE_TEST_PG_URL"
"$LETHE" --config "$dir/lethe.toml" migrate >/dev/null

now() { python3 -c 'import time; print(time.monotonic())'; }
: > "$dir/times"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS: building two partitioned tables..." >&2
  "${PSQL[@]}" -c "DROP TABLE IF EXISTS events_lethe, events_base CASCADE" \
               -c "SELECT make_events('events_lethe')" -c "SELECT make_events('events_base')" -c "CHECKPOINT" >/dev/null
  expired=$("${PSQL[@]}" -At -c "SELECT count(*) FROM events_base WHERE created_at < now() - interval '90 days'")
  # The months wholly before the cutoff, by their upper bounds.
  mapfile -t months < <("${PSQL[@]}" -At -c "
    SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events_base'::regclass
      AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
          <= now() - interval '90 days'")
  in_months=0
  for m in "${months[@]}"; do in_months=$((in_months + $("${PSQL[@]}" -At -c "SELECT count(*) FROM $m"))); done

  # Lethe first in odd rounds, the baselines first in even ones.
  run_lethe() {
    "${PSQL[@]}" -c "CHECKPOINT"
    local t0; t0=$(now)
    /usr/bin/time -f "%U %S %M" -o "$dir/lethe.time" "$LETHE" --config "$dir/lethe.toml" run purge --json > "$dir/run.json"
    lethe_s=$(python3 -c "print($(now) - $t0)")
    python3 - "$dir/run.json" "$expired" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "succeeded", r
assert r["result"]["deleted"] == int(sys.argv[2]), (r["result"]["deleted"], sys.argv[2])
PY
  }
  run_base() {
    "${PSQL[@]}" -c "CHECKPOINT"
    local t0; t0=$(now)
    # One session, each statement its own transaction (CONCURRENTLY needs that).
    local steps=()
    for m in "${months[@]}"; do
      steps+=(-c "ALTER TABLE events_base DETACH PARTITION $m CONCURRENTLY" -c "DROP TABLE $m")
    done
    "${PSQL[@]}" "${steps[@]}"
    a_s=$(python3 -c "print($(now) - $t0)")
    "${PSQL[@]}" -c "DELETE FROM events_base WHERE created_at < now() - interval '90 days'"
    b_s=$(python3 -c "print($(now) - $t0)")
  }
  if [ $((round % 2)) -eq 1 ]; then run_lethe; run_base; else run_base; run_lethe; fi
  echo "$lethe_s $a_s $b_s $(cat "$dir/lethe.time") $expired $in_months ${#months[@]}" >> "$dir/times"
done

python3 - "$dir/times" "$ROWS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
lethe, a, b = ([float(r[i]) for r in rows] for i in range(3))
cpu = [float(r[3]) + float(r[4]) for r in rows]
rss = [int(r[5]) / 1024 for r in rows]
expired, in_months, months = int(rows[0][6]), int(rows[0][7]), int(rows[0][8])
n = int(sys.argv[2])
def s(v): return f"median {statistics.median(v):7.2f} s  (min {min(v):.2f}, max {max(v):.2f})"
print(f"rows: {n:,}; expired: {expired:,} ({expired/n:.0%}); in {months} wholly expired months: {in_months:,} ({in_months/n:.0%}); rounds: {len(rows)}")
print(f"lethe retention.purge:                 {s(lethe)}  client CPU {statistics.median(cpu):.2f} s, peak RSS {statistics.median(rss):.0f} MiB")
print(f"A: detach concurrently + drop:         {s(a)}")
print(f"B: A + DELETE of the straddling month: {s(b)}")
print(f"ratio lethe/A: {statistics.median(lethe)/statistics.median(a):.2f}x   lethe/B: {statistics.median(lethe)/statistics.median(b):.2f}x   (per round: "
      + ", ".join(f"{l/x:.2f}/{l/y:.2f}" for l, x, y in zip(lethe, a, b)) + ")")
PY
