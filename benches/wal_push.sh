#!/usr/bin/env bash
# Benchmark: `lethe wal push` as archive_command against pgBackRest's
# `archive-push` (Debian's package), on the same real 16 MiB WAL segments: a
# cluster of this script's own loads benches/gen_app_data.sql (realistic
# entropy; the segments' zstd -3 ratio is printed) and copies each segment it
# completes aside. Both compress with zstd level 3 and encrypt (age /
# aes-256-cbc), one process per segment as PostgreSQL calls them (pgBackRest
# synchronous, its default), both as the cluster's owner. Lethe runs twice:
# with zstd_threads = 1 (the same work as pgBackRest's single-threaded push)
# and with its default 2 (PostgreSQL archives one file at a time, so the
# second core is otherwise idle). They alternate for ROUNDS rounds, each into
# a fresh archive; reported: segments/s as median and min–max, and the
# ratios of the medians.
# Usage: benches/wal_push.sh [SCALE] [ROUNDS]   (default 1 ≈ 100 MiB of rows, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${1:-1}"
ROUNDS="${2:-3}"
export DEBIAN_FRONTEND=noninteractive
for tool in age zstd pgbackrest; do
  command -v "$tool" >/dev/null || { echo "installing $tool (apt)" >&2; apt-get install -y -qq "$tool" >/dev/null; }
done
source benches/common.sh

# The cluster runs as postgres when we are root; so do both archivers.
segs="$work/segments"
mkdir -p "$segs"
chmod 777 "$segs"
bench_cluster "cp %p $segs/%f"
echo "loading scale $SCALE to make WAL..." >&2
psql -X -q -v scale="$SCALE" -f benches/gen_app_data.sql "$url" >/dev/null
last=$(psql -X -At "$url" -c "SELECT pg_walfile_name(pg_switch_wal())")
# Archived means cp returned: the archiver's own record, not the file's existence.
archived=""
for _ in $(seq 1 600); do
  archived=$(psql -X -At "$url" -c "SELECT coalesce(last_archived_wal, '') >= '$last' FROM pg_stat_archiver")
  [ "$archived" = t ] && break
  sleep 0.1
done
[ "$archived" = t ] || { echo "the cluster did not archive $last within a minute" >&2; exit 1; }
mapfile -t names < <(ls "$segs" | grep -E '^[0-9A-F]{24}$' | sort)
n=${#names[@]}
[ "$n" -gt 0 ] || { echo "no WAL segments were made" >&2; exit 1; }
raw=$(( n * 16 * 1024 * 1024 ))
zst=$(cat "${names[@]/#/$segs/}" | zstd -q -3 -c | wc -c)

# Lethe: the release binary where the postgres user can run it; a folder store per round.
cp "$LETHE" "$work/lethe-bin"
chmod 755 "$work/lethe-bin"
age-keygen -o "$work/identity.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/identity.txt")
mkdir -p "$work/lethe/jobs"
cat > "$work/lethe/lethe.toml" <<TOML
[database]
url = "sqlite://unused.db"
[mail]
from = "Lethe <lethe@bench.example>"
transport = "file"
[object_store]
url = "file://$work/lethe-archive"
[backup]
recipients = ["$recipient"]
zstd_level = 3
zstd_threads = 2
TOML
sed 's/zstd_threads = 2/zstd_threads = 1/' "$work/lethe/lethe.toml" > "$work/lethe/lethe-1t.toml"
chmod -R a+rX "$work/lethe"

mkdir -p "$work/pgbr/log" "$work/pgbr/lock"
cat > "$work/pgbr/pgbackrest.conf" <<CONF
[global]
repo1-path=$work/pgbr/repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-only-passphrase-not-a-secret
compress-type=zst
compress-level=3
archive-async=n
log-path=$work/pgbr/log
lock-path=$work/pgbr/lock
log-level-console=error
log-level-stderr=error
log-level-file=off
[bench]
pg1-path=$data
pg1-port=$port
pg1-socket-path=$data
pg1-user=postgres
CONF
pgbr=("${as_pg[@]}" pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench)

# Seconds to archive every segment, one process each.
run_one() {
  local start end
  case "$1" in
    lethe | lethe-1t)
      local cfg="$work/lethe/lethe.toml"
      [ "$1" = lethe-1t ] && cfg="$work/lethe/lethe-1t.toml"
      rm -rf "$work/lethe-archive"
      mkdir -p "$work/lethe-archive"
      [ ${#as_pg[@]} -gt 0 ] && chown postgres "$work/lethe-archive"
      start=$(date +%s.%N)
      for s in "${names[@]}"; do
        "${as_pg[@]}" "$work/lethe-bin" --config "$cfg" wal push "$segs/$s" >/dev/null
      done
      end=$(date +%s.%N)
      ;;
    pgbackrest)
      rm -rf "$work/pgbr/repo"
      mkdir -p "$work/pgbr/repo"
      [ ${#as_pg[@]} -gt 0 ] && chown -R postgres "$work/pgbr"
      "${pgbr[@]}" stanza-create >/dev/null
      start=$(date +%s.%N)
      for s in "${names[@]}"; do
        "${pgbr[@]}" archive-push "$segs/$s" >/dev/null
      done
      end=$(date +%s.%N)
      ;;
  esac
  python3 -c "print($end - $start)"
}
results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  # Each goes first in every other round.
  order=(lethe-1t pgbackrest lethe)
  [ $((round % 2)) -eq 0 ] && order=(lethe pgbackrest lethe-1t)
  for name in "${order[@]}"; do
    echo "round $round: $name" >&2
    printf '%s %s\n' "$name" "$(run_one "$name")" >> "$results"
  done
done
lethe_bytes=$(du -cb "$work"/lethe-archive/wal/*/*.zst.age | tail -1 | cut -f1)
mapfile -t pgbr_files < <(find "$work/pgbr/repo/archive" -type f -name '0*')
pgbr_bytes=0
[ ${#pgbr_files[@]} -gt 0 ] && pgbr_bytes=$(du -cb "${pgbr_files[@]}" | tail -1 | cut -f1)

python3 - "$results" "$n" "$raw" "$zst" "$lethe_bytes" "$pgbr_bytes" "$ROUNDS" <<'PY'
import statistics, sys
path = sys.argv[1]
n, raw, zst, lethe_b, pgbr_b = map(int, sys.argv[2:7])
rounds = sys.argv[7]
runs = {}
for line in open(path):
    name, secs = line.split()
    runs.setdefault(name, []).append(n / float(secs))
mib = 2**20
print(f"{n} WAL segments ({raw/mib:,.0f} MiB), zstd -3 ratio {raw/zst:.2f}x; {rounds} alternating rounds")
print(f"stored: lethe {lethe_b/mib:,.1f} MiB, pgbackrest {pgbr_b/mib:,.1f} MiB (the last round's)")
print(f"{'':12s} {'segments/s':>11s} {'min–max':>13s}")
med = {}
for name, r in runs.items():
    med[name] = statistics.median(r)
    print(f"{name:12s} {med[name]:11.1f} {min(r):6.1f}–{max(r):<6.1f}")
for name in ("lethe-1t", "lethe"):
    print(f"{name} / pgbackrest: {med[name] / med['pgbackrest']:.2f}x segments/s (median)")
PY
