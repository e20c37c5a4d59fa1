# Sourced by benchmark scripts (from the repository's root): the test rig's
# PostgreSQL, moto and SMTP sink started now and stopped on exit, a release
# build of Lethe in $LETHE, a work folder $work removed on exit, and
# `measure CMD…` (benches/measure.py: wall s, CPU s, peak tree RSS MiB).
source scripts/test-servers
trap 'lethe_servers_stop; rm -rf "${work:-}"' EXIT INT TERM
lethe_servers_start >/dev/null
export PATH="$LETHE_PG_BIN:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lethe/target}"
cargo build --release --quiet
LETHE="$CARGO_TARGET_DIR/release/lethe"
work=$(mktemp -d /var/tmp/lethe-bench.XXXXXX)
chmod 755 "$work"
measure() { python3 benches/measure.py "$@"; }

# `bench_cluster ARCHIVE_COMMAND [SOCKET_DIR]`: a cluster of the bench's own
# in $work/pgdata (run as postgres when we are root: `as_pg`), archiving with
# ARCHIVE_COMMAND, its socket in SOCKET_DIR (default: the data folder); sets
# $data, $port and $url; stopped on exit.
bench_cluster() {
  as_pg=()
  [ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
  data="$work/pgdata"
  local sock="${2:-$data}"
  mkdir -p "$data" "$sock"
  if [ ${#as_pg[@]} -gt 0 ]; then chown postgres "$data" "$sock"; fi
  "${as_pg[@]}" initdb -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  port=$(lethe_free_port)
  cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
wal_level = replica
archive_mode = on
archive_command = '$1'
max_wal_size = 4GB
CONF
  "${as_pg[@]}" pg_ctl -D "$data" -l "$data/server.log" -w start >/dev/null
  trap '"${as_pg[@]}" pg_ctl -D "$data" -m immediate -w stop >/dev/null 2>&1 || true; lethe_servers_stop; rm -rf "$work"' EXIT INT TERM
  url="postgres://postgres@127.0.0.1:$port/postgres"
}
