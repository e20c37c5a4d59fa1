#!/usr/bin/env bash
# Benchmark: a restore drill (`lethe run backup.verify`: download, decrypt,
# decompress, restore into a scratch database, count rows) streamed into one
# pg_restore (verify_jobs = 1, the baseline) against the spooled, parallel
# restore (verify_jobs = N: the dump is decrypted to a temporary file first,
# then pg_restore --jobs=N), on one backup of a database with realistic
# entropy (benches/gen_app_data.sql, ~3x under zstd -3). The two alternate for
# ROUNDS rounds; each is reported as median, min–max, CPU seconds and the peak
# RSS of its process tree, and the ratio of the medians.
# Usage: benches/restore_parallel.sh [SCALE] [ROUNDS] [JOBS]   (default 10 ≈ 1 GiB, 3, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${1:-10}"
ROUNDS="${2:-3}"
JOBS="${3:-2}"
source benches/common.sh

echo "generating the database (scale $SCALE)..." >&2
psql -X -q -v scale="$SCALE" -f benches/gen_app_data.sql "$LETHE_TEST_PG_URL" >/dev/null
db_size=$(psql -X -At "$LETHE_TEST_PG_URL" -c "SELECT pg_database_size(current_database())")
age-keygen -o "$work/identity.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/identity.txt")
mkdir -p "$work/lethe/jobs"
config() {
  cat <<TOML
[database]
url = "sqlite://unused.db"
[store]
url = "sqlite://lethe.db"
[mail]
from = "Lethe <lethe@bench.example>"
transport = "file"
[object_store]
url = "file://objects"
[backup]
recipients = ["$recipient"]
identity_file = "$work/identity.txt"
allow_scratch_on_app_server = true
verify_jobs = $1
TOML
}
config 1 > "$work/lethe/stream.toml"
config "$JOBS" > "$work/lethe/parallel.toml"
printf 'kind = "backup.create"\nschedule = "0 0 * * * *"\ntimeout = "2h"\n' > "$work/lethe/jobs/create.toml"
printf 'kind = "backup.verify"\nschedule = "0 0 * * * *"\ntimeout = "2h"\n' > "$work/lethe/jobs/verify.toml"
export LETHE_DATABASE_URL="$LETHE_TEST_PG_URL"
"$LETHE" --config "$work/lethe/stream.toml" migrate >/dev/null
"$LETHE" --config "$work/lethe/stream.toml" run create --json > "$work/create.json"
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["result"]["id"])' "$work/create.json")
raw=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["result"]["raw_bytes"])' "$work/create.json")

results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for name in stream parallel; do
    echo "round $round: $name" >&2
    printf '%s %s\n' "$name" "$(measure "$LETHE" --config "$work/lethe/$name.toml" backup verify "$id" --json)" >> "$results"
  done
done
python3 - "$results" "$db_size" "$raw" "$ROUNDS" "$JOBS" <<'PY'
import statistics, sys
path, db, raw, rounds, jobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
runs = {}
for line in open(path):
    name, wall, cpu, rss = line.split()
    runs.setdefault(name, []).append((float(wall), float(cpu), float(rss)))
mib = 2**20
print(f"database {db/mib:,.0f} MiB; dump {raw/mib:,.0f} MiB; {rounds} alternating rounds; parallel = {jobs} jobs")
print(f"{'':10s} {'median s':>9s} {'min–max s':>13s} {'CPU s':>7s} {'tree RSS MiB':>13s}")
med = {}
for name, r in runs.items():
    walls = [w for w, _, _ in r]
    med[name] = statistics.median(walls)
    print(f"{name:10s} {med[name]:9.2f} {min(walls):6.2f}–{max(walls):<6.2f} {statistics.median(c for _, c, _ in r):7.2f} {max(m for _, _, m in r):13.0f}")
print(f"parallel / stream: {med['parallel'] / med['stream']:.2f}x (median wall time)")
PY
