#!/usr/bin/env bash
# Benchmark: `lethe org export` of one org (PostgreSQL) against the shell
# pipeline a person would write,
#   psql -c "\copy (SELECT row_to_json(t) FROM events t WHERE org_id = 1) TO STDOUT" | zstd -3 | age -r KEY
# at two org sizes (ROWS/4 and ROWS), alternating ROUNDS times; median wall
# time, CPU and the peak RSS of the whole process tree (benches/measure.py).
# Flat memory means Lethe's RSS at ROWS is about its RSS at ROWS/4.
# Usage: benches/org_export.sh [ROWS] [ROUNDS]   (default 1000000, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
ROUNDS="${2:-3}"
command -v age >/dev/null || { echo "installing age (apt)" >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null; }
source benches/common.sh

small=$((ROWS / 4))
echo "generating orgs 1 ($small rows) and 2 ($ROWS rows) of events..." >&2
psql -X -q -v ON_ERROR_STOP=1 "$LETHE_TEST_PG_URL" <<SQL
CREATE TABLE orgs (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO orgs VALUES (1, 'small'), (2, 'large'), (3, 'other');
CREATE TABLE events (id bigserial PRIMARY KEY, org_id int NOT NULL, user_id uuid NOT NULL,
  kind text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO events (org_id, user_id, kind, payload, created_at)
SELECT CASE WHEN g <= $small THEN 1 ELSE 2 END, gen_random_uuid(),
       (ARRAY['login','export','comment','payment'])[1 + g % 4],
       jsonb_build_object('ip', '10.0.' || (g % 250) || '.' || (g % 199), 'ref', md5(g::text)),
       now() - (g % 1000) * interval '1 hour'
FROM generate_series(1, $small + $ROWS) g;
INSERT INTO events (org_id, user_id, kind, payload, created_at)
SELECT 3, gen_random_uuid(), 'login', '{}', now() FROM generate_series(1, 1000);
CREATE INDEX events_org ON events (org_id);
VACUUM ANALYZE events;
SQL

age-keygen -o "$work/identity.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/identity.txt")
mkdir -p "$work/lethe/jobs"
cat > "$work/lethe/lethe.toml" <<TOML
[database]
url = "sqlite://unused.db"
[store]
url = "sqlite://lethe.db"
[mail]
from = "Lethe <lethe@bench.example>"
transport = "file"
[mail.recipients]
dpo = ["dpo@bench.example"]
[object_store]
url = "file://objects"
[backup]
recipients = ["$recipient"]
[app]
subjects = { table = "orgs", id = "id", email = "name" }
orgs = { table = "orgs", id = "id" }
[[data_map]]
table = "events"
class = "events"
org = "org_id"
TOML
export LETHE_DATABASE_URL="$LETHE_TEST_PG_URL"
"$LETHE" --config "$work/lethe/lethe.toml" migrate >/dev/null

results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for org in 1 2; do
    rows=$([ "$org" = 1 ] && echo "$small" || echo "$ROWS")
    echo "round $round: org $org ($rows rows)" >&2
    printf 'lethe %s %s\n' "$rows" "$(measure "$LETHE" --config "$work/lethe/lethe.toml" org export --org "$org" --json)" >> "$results"
    printf 'pipeline %s %s\n' "$rows" "$(measure bash -c "psql -X -q '$LETHE_TEST_PG_URL' -c '\\copy (SELECT row_to_json(t) FROM events t WHERE org_id = $org) TO STDOUT' | zstd -q -3 | age -r '$recipient' > '$work/pipeline.age'")" >> "$results"
    rm -rf "$work/lethe/objects"
  done
done

python3 - "$results" "$ROUNDS" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    who, rows, wall, cpu, rss = line.split()
    runs.setdefault((who, int(rows)), []).append((float(wall), float(cpu), float(rss)))
print(f"org export of one org's events (PostgreSQL), {sys.argv[2]} alternating rounds")
print(f"{'':10s} {'rows':>9s} {'median s':>9s} {'min–max s':>13s} {'CPU s':>7s} {'tree RSS MiB':>13s}")
for (who, rows), r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    walls = [w for w, _, _ in r]
    print(f"{who:10s} {rows:9d} {statistics.median(walls):9.2f} {min(walls):6.2f}–{max(walls):<6.2f} "
          f"{statistics.median(c for _, c, _ in r):7.2f} {max(m for _, _, m in r):13.0f}")
sizes = sorted({rows for _, rows in runs})
small, large = sizes[0], sizes[-1]
peak = lambda who, rows: max(m for _, _, m in runs[(who, rows)])
med = lambda who, rows: statistics.median(w for w, _, _ in runs[(who, rows)])
print(f"lethe RSS at {large} rows / at {small} rows: {peak('lethe', large) / peak('lethe', small):.2f}x (flat memory: about 1)")
print(f"lethe / pipeline wall time at {large} rows: {med('lethe', large) / med('pipeline', large):.2f}x")
PY
