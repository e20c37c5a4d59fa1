#!/usr/bin/env bash
# Benchmark: Lethe's physical base backup (`backup.mode = "physical"`:
# `lethe run backup.create` streams `pg_basebackup -Ft -X none --checkpoint=fast`
# through zstd -3 (2 threads) + age into a folder object store, then checks the
# backup's last WAL file is in its archive) against pgBackRest's full backup
# (Debian's 2.45: zst level 3, process-max 2, aes-256-cbc, start-fast, as
# benches/backup.sh configures it), on one cluster of this script's own holding
# the ~1 GiB database of benches/gen_app_data.sql (realistic entropy; the base
# backup's zstd -3 ratio is printed). The floor: a bare
# `pg_basebackup -D - -Ft -X none --checkpoint=fast > /dev/null` (the same read,
# no compression, encryption or store), on the cluster as Lethe configures it.
#
# Fair to both: each contender runs with the WAL archiving its own users would
# configure, since neither tool's backup is complete without its WAL. Before a
# Lethe (or floor) run the server's archive_command is
# `lethe --config CFG wal push %p` with the bench's config; before a pgBackRest
# run it is `pgbackrest --stanza=bench archive-push %p` and pgBackRest's
# archive-check is left on (its default: the backup waits until its stop
# segment is in its own repository), after `stanza-create` and `check` as its
# docs require. Switching is done untimed, with the archiver idle, and each
# contender's preparation forces and waits for one WAL switch into its own
# archive, so every timed backup starts from the same state. Each run goes into
# a fresh store (Lethe's folder object store, pgBackRest's repository). The
# order rotates every round (lethe, pgbackrest, pg_basebackup; pgbackrest,
# pg_basebackup, lethe; …). Reported: wall time as median and min–max; client
# CPU and the peak RSS of the command's process tree (benches/measure.py);
# server CPU (the cluster's processes, archive_command included: pg_basebackup's
# walsender reads and sends the files, where pgBackRest reads them itself); the
# bytes stored (backup, and the WAL its run archived); ratios of the medians.
# The cluster, both archivers and pgBackRest run as postgres when we are root.
# Usage: benches/base_backup.sh [SCALE] [ROUNDS]   (default 10 ≈ 1 GiB, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${1:-10}"
ROUNDS="${2:-3}"
[ "$ROUNDS" -ge 3 ] || { echo "ROUNDS must be at least 3" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive
for tool in age zstd pgbackrest; do
  command -v "$tool" >/dev/null || { echo "installing $tool (apt)" >&2; apt-get install -y -qq "$tool" >/dev/null; }
done
source benches/common.sh

# The socket outside the data folder: no base backup meets it. Archiving is
# on from the start; the load's WAL is no contender's, so it is discarded.
sock="$work/sock"
bench_cluster /bin/true "$sock"
sql() { psql -X -q -At "$url" -c "$1"; }

echo "generating the database (scale $SCALE)..." >&2
psql -X -q -v scale="$SCALE" -f benches/gen_app_data.sql "$url" >/dev/null
sql "CHECKPOINT"
db_size=$(sql "SELECT pg_database_size(current_database())")

# Lethe: the release binary and its config where the postgres user can read them (0755).
bin="$work/lethe"
mkdir -p "$bin/jobs"
cp "$LETHE" "$bin/lethe"
age-keygen -o "$work/identity.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/identity.txt")
store="$work/store"
cat > "$bin/lethe.toml" <<TOML
[database]
url = "$url"
[store]
url = "sqlite://lethe.db"
[mail]
from = "Lethe <lethe@bench.example>"
transport = "file"
[object_store]
url = "file://$store"
[backup]
mode = "physical"
recipients = ["$recipient"]
zstd_level = 3
zstd_threads = 2
part_size_mib = 16
TOML
printf 'kind = "backup.create"\nschedule = "0 0 * * * *"\ntimeout = "2h"\n' > "$bin/jobs/create.toml"
chmod -R a+rX "$bin"
chmod 755 "$bin/lethe"
"$bin/lethe" --config "$bin/lethe.toml" migrate >/dev/null
lethe_archive="$bin/lethe --config $bin/lethe.toml wal push %p"

# pgBackRest: benches/backup.sh's configuration, with its archive check on (its default).
mkdir -p "$work/pgbr/repo" "$work/pgbr/log" "$work/pgbr/lock"
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
log-path=$work/pgbr/log
lock-path=$work/pgbr/lock
log-level-console=error
log-level-stderr=error
[bench]
pg1-path=$data
pg1-port=$port
pg1-socket-path=$sock
pg1-user=postgres
CONF
[ ${#as_pg[@]} -gt 0 ] && chown -R postgres "$work/pgbr"
pgbr=("${as_pg[@]}" pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench)
pgbr_archive="pgbackrest --config=$work/pgbr/pgbackrest.conf --stanza=bench archive-push %p"

# Until nothing waits to be archived (no .ready file), at most two minutes.
wait_idle() {
  for _ in $(seq 1 1200); do
    compgen -G "$data/pg_wal/archive_status/*.ready" >/dev/null || return 0
    sleep 0.1
  done
  echo "the archiver did not catch up within two minutes" >&2
  exit 1
}
set_archive() {
  wait_idle
  sql "ALTER SYSTEM SET archive_command = '$1'"
  sql "SELECT pg_reload_conf()" >/dev/null
  sleep 1
}
# Forces a WAL switch and waits for the archiver's record of it (a minute at most).
switch_and_wait() {
  local last archived=""
  sql "SELECT pg_create_restore_point('bench')" >/dev/null
  last=$(sql "SELECT pg_walfile_name(pg_switch_wal())")
  for _ in $(seq 1 600); do
    archived=$(sql "SELECT coalesce(last_archived_wal, '') >= '$last' FROM pg_stat_archiver")
    [ "$archived" = t ] && break
    sleep 0.1
  done
  [ "$archived" = t ] || { echo "the cluster did not archive $last within a minute" >&2; exit 1; }
  echo "$last"
}
# Untimed: the contender's own archive_command, a fresh store, one switch archived into it.
prepare() {
  case "$1" in
    lethe | pg_basebackup)
      wait_idle
      rm -rf "$store"
      mkdir -p "$store"
      chmod 777 "$store"
      set_archive "$lethe_archive"
      local seg
      seg=$(switch_and_wait)
      compgen -G "$store/wal/*/$seg*" >/dev/null \
        || { echo "$seg is not in Lethe's archive: is archive_command running lethe wal push?" >&2; exit 1; }
      ;;
    pgbackrest)
      wait_idle
      rm -rf "$work/pgbr/repo"
      mkdir -p "$work/pgbr/repo"
      [ ${#as_pg[@]} -gt 0 ] && chown -R postgres "$work/pgbr"
      "${pgbr[@]}" stanza-create >/dev/null
      set_archive "$pgbr_archive"
      "${pgbr[@]}" check >/dev/null
      ;;
  esac
  sql "CHECKPOINT"
}

# CPU seconds of the cluster's process tree so far: the postmaster, the
# children it reaped (walsenders, backends) and its live children (the
# archiver and the archive_command runs it reaped, the checkpointer, …).
server_cpu() {
  python3 - "$(head -n 1 "$data/postmaster.pid")" <<'PY'
import os, sys
pm = int(sys.argv[1])
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read().rsplit(")", 1)[1].split()
    return int(s[1]), sum(int(x) for x in s[11:15])  # ppid, utime+stime+cutime+cstime
total = stat(pm)[1]
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != pm:
        try:
            ppid, ticks = stat(pid)
        except (OSError, IndexError):
            continue
        if ppid == pm:
            total += ticks
print(total / os.sysconf("SC_CLK_TCK"))
PY
}

# Warm the cache once (this is also the warm-up backup), and measure the data's
# compressibility: the base backup's tar bytes over zstd -3 bytes.
echo "warm-up: pg_basebackup to a file, zstd -3 ratio..." >&2
pg_basebackup -d "$url" -D - -Ft -X none --checkpoint=fast --no-password > "$work/base.tar"
raw_bytes=$(stat -c %s "$work/base.tar")
zst_bytes=$(zstd -q -T2 -3 -c "$work/base.tar" | wc -c)
rm -f "$work/base.tar"

# WAL segments (not history files or sums) under a folder, and their bytes.
wal_in() {
  find "$1" -type f -regextype posix-extended -regex '.*/[0-9A-F]{24}[.-][^/]*' \
    -not -name '*.sha256' -printf '%s\n' | awk '{n++; b+=$1} END {print n+0, b+0}'
}
# One timed run: `wall cpu rss server_cpu backup_bytes wal_segments wal_bytes`
# (the WAL in its store: the preparation's switch and what the backup archived).
run_one() {
  local m s0 s1 backup_b wal_b
  s0=$(server_cpu)
  case "$1" in
    lethe)
      m=$(measure bash -c "'$bin/lethe' --config '$bin/lethe.toml' run create --json > '$work/lethe-run.json'") || {
        echo "lethe run backup.create failed; its report:" >&2
        cat "$work/lethe-run.json" >&2
        exit 1
      }
      ;;
    pg_basebackup) m=$(measure pg_basebackup -d "$url" -D - -Ft -X none --checkpoint=fast --no-password) ;;
    pgbackrest) m=$(measure "${pgbr[@]}" backup --type=full) ;;
  esac
  sleep 0.3 # the walsender and backends exit and are reaped
  s1=$(server_cpu)
  case "$1" in
    lethe)
      backup_b=$(du -cb "$store"/backups/*.base.tar.zst.age | tail -n 1 | cut -f1)
      wal_b=$(wal_in "$store/wal")
      ;;
    pg_basebackup) backup_b=0 wal_b=$(wal_in "$store/wal") ;;
    pgbackrest)
      backup_b=$(du -sb "$(ls -d "$work"/pgbr/repo/backup/bench/*F | sort | tail -n 1)" | cut -f1)
      wal_b=$(wal_in "$work/pgbr/repo/archive")
      ;;
  esac
  echo "$m $(python3 -c "print(f'{$s1 - $s0:.2f}')") $backup_b $wal_b"
}

names=(lethe pgbackrest pg_basebackup)
results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  shift_by=$(( (round - 1) % ${#names[@]} ))
  order=("${names[@]:$shift_by}" "${names[@]:0:$shift_by}")
  for name in "${order[@]}"; do
    echo "round $round: $name" >&2
    prepare "$name"
    r=$(run_one "$name")
    printf '%s %s\n' "$name" "$r" >> "$results"
  done
done

python3 - "$results" "$db_size" "$raw_bytes" "$zst_bytes" "$ROUNDS" "$(pgbackrest version)" <<'PY'
import statistics, sys
path, db, raw, zst, rounds, pgbr_version = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
runs = {}
for line in open(path):
    name, *v = line.split()
    runs.setdefault(name, []).append([float(x) for x in v])
mib = 2**20
print(f"database {db/mib:,.0f} MiB; base backup (tar) {raw/mib:,.0f} MiB, zstd -3 ratio {raw/zst:.2f}x; "
      f"{rounds} rotating rounds; {pgbr_version}")
print(f"{'':14s} {'median s':>9s} {'min–max s':>13s} {'CPU s':>6s} {'server CPU s':>12s} "
      f"{'tree RSS MiB':>12s} {'stored MiB':>10s} {'+ WAL segments, KiB':>19s}")
med = {}
for name in ("lethe", "pgbackrest", "pg_basebackup"):
    r = runs[name]
    walls = [x[0] for x in r]
    med[name] = statistics.median(walls)
    col = lambda i: statistics.median(x[i] for x in r)
    stored = f"{col(4)/mib:10.1f}" if col(4) else f"{'—':>10s}"
    print(f"{name:14s} {med[name]:9.2f} {min(walls):6.2f}–{max(walls):<6.2f} {col(1):6.2f} {col(3):12.2f} "
          f"{max(x[2] for x in r):12.0f} {stored} {col(5):10.0f}, {col(6)/1024:6.0f}")
print("per round, s: " + "; ".join(f"{n} " + " ".join(f"{x[0]:.2f}" for x in runs[n]) for n in ("lethe", "pgbackrest", "pg_basebackup")))
print("CPU s: the command's process tree (client); server CPU s: the cluster's processes, archive_command included")
ratio = med["lethe"] / med["pgbackrest"]
print(f"lethe / pgbackrest: {ratio:.2f}x (median wall time; target ≤ 1.10x: {'met' if ratio <= 1.10 else 'not met'})")
print(f"lethe / pg_basebackup: {med['lethe'] / med['pg_basebackup']:.2f}x")
print(f"pgbackrest / pg_basebackup: {med['pgbackrest'] / med['pg_basebackup']:.2f}x")
PY
