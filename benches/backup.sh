#!/usr/bin/env bash
# Benchmark: `lethe run backup.create` against what a user would otherwise run,
# on one ~1 GiB PostgreSQL database with realistic entropy
# (benches/gen_app_data.sql: names, emails, uuids, JSON, prose; ~3x under zstd -3):
#   pipeline  pg_dump -Fc -Z0 | zstd -T2 -3 | age -r KEY > file   (the same work, by hand)
#   pg_dump   pg_dump -Fc -Z0 > /dev/null                          (the ceiling: the dump alone)
#   pgbackrest  full backup, zst level 3, process-max 2, aes-256-cbc  (the peer, from Debian)
# Contenders alternate (lethe, pipeline, pg_dump, pgbackrest, lethe, …) for ROUNDS
# rounds; each is reported as median, min–max, CPU seconds and the peak RSS of
# its whole process tree. Lethe's verify (download, decrypt, restore, count) runs once.
# Usage: benches/backup.sh [SCALE] [ROUNDS]   (default 10 ≈ 1 GiB, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${1:-10}"
ROUNDS="${2:-3}"
export DEBIAN_FRONTEND=noninteractive
for tool in age zstd pgbackrest; do
  command -v "$tool" >/dev/null || { echo "installing $tool (apt)" >&2; apt-get install -y -qq "$tool" >/dev/null || true; }
done
source benches/common.sh

echo "generating the database (scale $SCALE)..." >&2
psql -X -q -v scale="$SCALE" -f benches/gen_app_data.sql "$LETHE_TEST_PG_URL" >/dev/null
db_size=$(psql -X -At "$LETHE_TEST_PG_URL" -c "SELECT pg_database_size(current_database())")

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
[object_store]
url = "file://objects"
[backup]
recipients = ["$recipient"]
identity_file = "$work/identity.txt"
zstd_level = 3
zstd_threads = 2
part_size_mib = 16
allow_scratch_on_app_server = true
TOML
printf 'kind = "backup.create"\nschedule = "0 0 * * * *"\ntimeout = "2h"\n' > "$work/lethe/jobs/create.toml"
printf 'kind = "backup.verify"\nschedule = "0 0 * * * *"\ntimeout = "2h"\n' > "$work/lethe/jobs/verify.toml"
export LETHE_DATABASE_URL="$LETHE_TEST_PG_URL"
"$LETHE" --config "$work/lethe/lethe.toml" migrate >/dev/null

# pgBackRest runs as the cluster's owner, against its data folder, into a repository here.
pgbr=()
if command -v pgbackrest >/dev/null; then
  mkdir -p "$work/pgbr/repo" "$work/pgbr/log" "$work/pgbr/lock"
  pg_port=${LETHE_TEST_PG_URL##*:}; pg_port=${pg_port%%/*}
  cat > "$work/pgbr/pgbackrest.conf" <<CONF
[global]
repo1-path=$work/pgbr/repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-only-passphrase-not-a-secret
repo1-retention-full=9999
compress-type=zst
compress-level=3
process-max=2
start-fast=y
archive-check=n
log-path=$work/pgbr/log
lock-path=$work/pgbr/lock
log-level-console=error
log-level-stderr=error
[bench]
pg1-path=$LETHE_PG_DATA
pg1-port=$pg_port
pg1-socket-path=$LETHE_PG_DATA
pg1-user=postgres
CONF
  [ "$(id -u)" -eq 0 ] && chown -R postgres "$work/pgbr"
  pgbr=("${LETHE_PG_AS[@]}" pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench)
  "${pgbr[@]}" stanza-create >/dev/null
fi

# Warm the cache once, and measure the data's compressibility: raw dump bytes over zstd -3 bytes.
pg_dump -Fc -Z0 -f "$work/plain.dump" "$LETHE_TEST_PG_URL"
raw_bytes=$(stat -c %s "$work/plain.dump")
zst_bytes=$(zstd -q -T2 -3 -c "$work/plain.dump" | wc -c)
rm -f "$work/plain.dump"

names=(lethe pipeline pg_dump)
[ ${#pgbr[@]} -gt 0 ] && names+=(pgbackrest)
run_one() {
  case "$1" in
    lethe) measure "$LETHE" --config "$work/lethe/lethe.toml" run create --json ;;
    pipeline) measure bash -c "pg_dump -Fc -Z0 '$LETHE_TEST_PG_URL' | zstd -q -T2 -3 | age -r '$recipient' > '$work/pipeline.age'" ;;
    pg_dump) measure bash -c "pg_dump -Fc -Z0 '$LETHE_TEST_PG_URL' > /dev/null" ;;
    pgbackrest) measure "${pgbr[@]}" backup --type=full ;;
  esac
}
results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for name in "${names[@]}"; do
    echo "round $round: $name" >&2
    printf '%s %s\n' "$name" "$(run_one "$name")" >> "$results"
  done
  # Keep one backup of each on disk, so the disk fills no faster than a round.
  rm -rf "$work/lethe/objects"
done
"$LETHE" --config "$work/lethe/lethe.toml" run create --json >/dev/null
lethe_bytes=$(du -cb "$work"/lethe/objects/backups/*.age | tail -1 | cut -f1)
pipe_bytes=$(stat -c %s "$work/pipeline.age")
# The newest full backup only (the repository keeps one per round).
newest_full=$(ls -d "$work"/pgbr/repo/backup/bench/*F 2>/dev/null | sort | tail -n 1)
pgbr_bytes=$( [ -n "$newest_full" ] && du -sb "$newest_full" | cut -f1 || echo 0)
verify=$(measure "$LETHE" --config "$work/lethe/lethe.toml" run verify --json)

python3 - "$results" "$db_size" "$raw_bytes" "$zst_bytes" "$lethe_bytes" "$pipe_bytes" "${pgbr_bytes:-0}" "$verify" "$ROUNDS" <<'PY'
import statistics, sys
path, db, raw, zst, lethe_b, pipe_b, pgbr_b = sys.argv[1], *map(int, sys.argv[2:8])
verify, rounds = sys.argv[8].split(), sys.argv[9]
runs = {}
for line in open(path):
    name, wall, cpu, rss = line.split()
    runs.setdefault(name, []).append((float(wall), float(cpu), float(rss)))
mib = 2**20
print(f"database {db/mib:,.0f} MiB; dump {raw/mib:,.0f} MiB, zstd -3 ratio {raw/zst:.2f}x; {rounds} alternating rounds")
print(f"stored: lethe {lethe_b/mib:,.0f} MiB, pipeline {pipe_b/mib:,.0f} MiB" + (f", pgbackrest {pgbr_b/mib:,.0f} MiB (files, with indexes)" if pgbr_b else ""))
print(f"{'':12s} {'median s':>9s} {'min–max s':>13s} {'CPU s':>7s} {'tree RSS MiB':>13s}")
med = {}
for name, r in runs.items():
    walls = [w for w, _, _ in r]
    med[name] = statistics.median(walls)
    print(f"{name:12s} {med[name]:9.2f} {min(walls):6.2f}–{max(walls):<6.2f} {statistics.median(c for _, c, _ in r):7.2f} {max(m for _, _, m in r):13.0f}")
print(f"lethe verify (restore + count) {float(verify[0]):.2f} s, tree RSS {float(verify[2]):.0f} MiB")
for base in ("pipeline", "pg_dump", "pgbackrest"):
    if base in med:
        print(f"lethe / {base}: {med['lethe'] / med[base]:.2f}x (median wall time)")
PY
