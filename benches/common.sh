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
