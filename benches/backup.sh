#!/usr/bin/env bash
# Benchmark: `lethe run backup.create` vs the shell pipeline
#   pg_dump -Fc | zstd -T2 | age -r KEY > file
# on the same ~1 GiB PostgreSQL database, in one script; raw `zstd -T2` over
# a dump file as the ceiling; peak RSS of each; and Lethe's verify (restore) time.
# Usage: benches/backup.sh [PGBENCH_SCALE]   (default 50 ≈ 750 MB, plus ~250 MB of text)
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${1:-50}"
command -v age >/dev/null || { echo "installing age (apt)" >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null; }
source scripts/test-servers
trap 'lethe_servers_stop; rm -rf "${work:-}"' EXIT INT TERM
lethe_servers_start >/dev/null
export PATH="$LETHE_PG_BIN:$PATH"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lethe/target}"
cargo build --release --quiet
LETHE="$CARGO_TARGET_DIR/release/lethe"
work=$(mktemp -d /var/tmp/lethe-bench.XXXXXX)

echo "generating the database (pgbench scale $SCALE + text table)..." >&2
pgbench -q -i -s "$SCALE" "$LETHE_TEST_PG_URL" >/dev/null 2>&1
psql -X -q -v ON_ERROR_STOP=1 "$LETHE_TEST_PG_URL" <<'SQL'
CREATE TABLE documents AS
  SELECT g AS id, repeat(md5(g::text) || ' ', 8) || md5(random()::text) AS body
  FROM generate_series(1, 800000) g;
VACUUM ANALYZE;
SQL
db_size=$(psql -X -At "$LETHE_TEST_PG_URL" -c "SELECT pg_database_size(current_database())")

age-keygen -o "$work/identity.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/identity.txt")
mkdir -p "$work/lethe/jobs"
: > "$work/lethe/app.db"
cat > "$work/lethe/lethe.toml" <<TOML
[database]
url = "sqlite://app.db"
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
zstd_level = 3
zstd_threads = 2
part_size_mib = 16
TOML
printf 'kind = "backup.create"\nschedule = "0 0 * * * *"\ntimeout = "2h"\n' > "$work/lethe/jobs/create.toml"
printf 'kind = "backup.verify"\nschedule = "0 0 * * * *"\ntimeout = "2h"\n' > "$work/lethe/jobs/verify.toml"
export LETHE_DATABASE_URL="$LETHE_TEST_PG_URL"
"$LETHE" --config "$work/lethe/lethe.toml" migrate >/dev/null

# measure NAME CMD...: wall seconds and peak RSS (MiB) of the command and its children.
measure() {
  local name="$1"; shift
  python3 - "$name" "$@" <<'PY'
import resource, subprocess, sys, time
name, cmd = sys.argv[1], sys.argv[2:]
t = time.monotonic()
subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
wall = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{name}\t{wall:.2f}\t{rss:.0f}")
PY
}

# Warms the cache, and is the ceiling's input: uncompressed, as Lethe dumps it (--compress=0).
pg_dump -Fc -Z0 -f "$work/plain.dump" "$LETHE_TEST_PG_URL"
results=$(
  measure "shell pipeline" bash -c "pg_dump -Fc '$LETHE_TEST_PG_URL' | zstd -q -T2 -3 | age -r '$recipient' > '$work/pipeline.age'"
  measure "lethe backup.create" "$LETHE" --config "$work/lethe/lethe.toml" run create --json
  measure "zstd -T2 on the dump (ceiling)" bash -c "zstd -q -T2 -3 -c '$work/plain.dump' > '$work/plain.zst'"
  measure "lethe backup.verify (restore)" "$LETHE" --config "$work/lethe/lethe.toml" run verify --json
)
lethe_bytes=$(du -cb "$work"/lethe/objects/backups/*.age | tail -1 | cut -f1)
pipe_bytes=$(stat -c %s "$work/pipeline.age")
python3 - "$db_size" "$lethe_bytes" "$pipe_bytes" <<PY
import sys
db, lethe_b, pipe_b = map(int, sys.argv[1:4])
rows = [l.split("\t") for l in """$results""".strip().splitlines()]
t = {r[0]: float(r[1]) for r in rows}
print(f"database: {db/2**20:,.0f} MiB; stored: lethe {lethe_b/2**20:,.0f} MiB, pipeline {pipe_b/2**20:,.0f} MiB")
for name, wall, rss in rows:
    print(f"{name:34s} {float(wall):8.2f} s   peak RSS {int(rss):5d} MiB")
print(f"lethe / shell pipeline wall time: {t['lethe backup.create'] / t['shell pipeline']:.2f}x")
PY
