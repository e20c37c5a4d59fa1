#!/usr/bin/env bash
# Benchmark: a data subject's export (`dsr submit --kind export`, then
# `lethe run dsr.process`: every mapped row of the subject, one JSON file a
# table spooled to disk, tar, zstd + age, stored) against the shell pipeline
# a person would write,
#   psql -c "\copy (SELECT row_to_json(t) FROM events t WHERE user_id = 1) TO STDOUT" | zstd -3 | age -r KEY
# for two subjects (ROWS/4 and ROWS rows), alternating ROUNDS times; median
# wall time, CPU and the peak RSS of the whole process tree (benches/measure.py).
# Flat memory means Lethe's RSS at ROWS is about its RSS at ROWS/4.
# Usage: benches/dsr_export.sh [ROWS] [ROUNDS]   (default 1000000, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
ROUNDS="${2:-3}"
command -v age >/dev/null || { echo "installing age (apt)" >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null; }
source benches/common.sh

small=$((ROWS / 4))
echo "generating subjects 1 ($small rows) and 2 ($ROWS rows) of events..." >&2
psql -X -q -v ON_ERROR_STOP=1 "$LETHE_TEST_PG_URL" <<SQL
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO users VALUES (1, 'small@bench.example'), (2, 'large@bench.example'), (3, 'other@bench.example');
CREATE TABLE events (id bigserial PRIMARY KEY, user_id int NOT NULL, org_id uuid NOT NULL,
  kind text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO events (user_id, org_id, kind, payload, created_at)
SELECT CASE WHEN g <= $small THEN 1 ELSE 2 END, gen_random_uuid(),
       (ARRAY['login','export','comment','payment'])[1 + g % 4],
       jsonb_build_object('ip', '10.0.' || (g % 250) || '.' || (g % 199), 'ref', md5(g::text)),
       now() - (g % 1000) * interval '1 hour'
FROM generate_series(1, $small + $ROWS) g;
INSERT INTO events (user_id, org_id, kind, payload, created_at)
SELECT 3, gen_random_uuid(), 'login', '{}', now() FROM generate_series(1, 1000);
CREATE INDEX events_user ON events (user_id);
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
subjects = { table = "users", id = "id", email = "email" }
[[data_map]]
table = "events"
class = "events"
subject = "user_id"
export = true
TOML
printf 'kind = "dsr.process"\nschedule = "0 0 3 * * *"\ntimeout = "2h"\n' > "$work/lethe/jobs/dsr.process.toml"
export LETHE_DATABASE_URL="$LETHE_TEST_PG_URL"
"$LETHE" --config "$work/lethe/lethe.toml" migrate >/dev/null

results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for user in 1 2; do
    rows=$([ "$user" = 1 ] && echo "$small" || echo "$ROWS")
    email=$([ "$user" = 1 ] && echo small || echo large)@bench.example
    echo "round $round: subject $user ($rows rows)" >&2
    "$LETHE" --config "$work/lethe/lethe.toml" dsr submit --kind export --subject "$email" --json >/dev/null
    printf 'lethe %s %s\n' "$rows" "$(measure "$LETHE" --config "$work/lethe/lethe.toml" run dsr.process --json)" >> "$results"
    printf 'pipeline %s %s\n' "$rows" "$(measure bash -c "psql -X -q '$LETHE_TEST_PG_URL' -c '\\copy (SELECT row_to_json(t) FROM events t WHERE user_id = $user) TO STDOUT' | zstd -q -3 | age -r '$recipient' > '$work/pipeline.age'")" >> "$results"
    rm -rf "$work/lethe/objects"
  done
done

# Every export must have completed: a failed run's timing means nothing.
"$LETHE" --config "$work/lethe/lethe.toml" dsr list --json | python3 -c '
import json, sys
states = [r["state"] for r in json.load(sys.stdin)["requests"]]
assert states and all(s == "completed" for s in states), states
print(f"{len(states)} exports completed")'
python3 - "$results" "$ROUNDS" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    who, rows, wall, cpu, rss = line.split()
    runs.setdefault((who, int(rows)), []).append((float(wall), float(cpu), float(rss)))
print(f"DSR export of one subject's events (PostgreSQL), {sys.argv[2]} alternating rounds")
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
