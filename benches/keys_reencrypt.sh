#!/usr/bin/env bash
# Benchmark: `keys.reencrypt` of N encrypted values on PostgreSQL against a
# plain `UPDATE customers_baseline SET nik = nik` over an identical copy of
# the same rows, in one cluster and one script.
#
# N values in the lethe1 format (NIK-like 16-digit numbers and phone numbers),
# spread over ORGS orgs, are sealed under each org's DEK version 1 (the local
# keyring; keys created by `lethe keys rotate`), loaded with COPY into a
# pristine table, then every org gets version 2, so every value is stale.
# Each measurement starts from a copy of the pristine table, VACUUM ANALYZEd,
# after a CHECKPOINT; product and baseline alternate for PAIRS pairs.
# Prints rows/s per pair, medians and min-max, the ratio, the longest rewrite
# transaction, and the peak RSS of `lethe run` at N/4 and at N.
#
# Usage: benches/keys_reencrypt.sh [N]   (default 1000000: ~3 min on 2 cores, 3 pairs)
# Env:   ORGS (default 1000), PAIRS (default 3), BATCH (batch_size, default 5000 as the job),
#        WRITERS (the job's `writers`, default 2 as the job),
#        PROFILE=DIR: record each product run with `perf record` into DIR (CPU profile, not timed fairly)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
ORGS="${ORGS:-1000}"
PAIRS="${PAIRS:-3}"
BATCH="${BATCH:-5000}"
WRITERS="${WRITERS:-2}"
QUARTER=$((N / 4))
bench_start=$(date +%s.%N)

source scripts/test-servers
work=""
trap 'lethe_servers_stop; rm -rf "${work:-}"' EXIT INT TERM
lethe_servers_start >/dev/null

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lethe/target}"
cargo build --release --quiet
LETHE="$CARGO_TARGET_DIR/release/lethe"
PY="$LETHE_TEST_PYTHON"   # has cryptography and psycopg
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$LETHE_TEST_PG_URL")
work=$(mktemp -d)
mkdir -p "$work/jobs"
: > "$work/app.db"   # unused: the application database is PostgreSQL

cat > "$work/lethe.toml" <<TOML
[database]
url = "$LETHE_TEST_PG_URL"
[store]
url = "sqlite://lethe.db"
[mail]
from = "Lethe <lethe@bench.example>"
transport = "file"
dir = "mail"
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
keys = { table = "org_data_keys" }
[keys]
provider = "local"
dek_rotation = "3s"
kek_rotation = "1000d"
[[data_map]]
table = "customers"
class = "customer_pii"
org = "org_id"
encrypted = ["nik"]
TOML
cat > "$work/jobs/reencrypt.toml" <<TOML
kind = "keys.reencrypt"
schedule = "0 0 3 * * *"
enabled = false
max_attempts = 1
timeout = "4h"
[params]
batch_size = $BATCH
writers = $WRITERS
TOML
lethe() { "$LETHE" --config "$work/lethe.toml" "$@"; }

"${PSQL[@]}" <<SQL
CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT);
CREATE TABLE orgs (id BIGINT PRIMARY KEY, closed_at TIMESTAMPTZ);
INSERT INTO orgs SELECT g, NULL FROM generate_series(1, $ORGS) g;
CREATE TABLE org_data_keys (org_id BIGINT NOT NULL, version INTEGER NOT NULL,
  wrapped_key TEXT NOT NULL, kms_key_id TEXT NOT NULL, state TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (org_id, version));
CREATE TABLE customers (id BIGINT PRIMARY KEY, org_id BIGINT NOT NULL, nik VARCHAR(200));
CREATE TABLE customers_pristine (LIKE customers INCLUDING ALL);
CREATE TABLE customers_baseline (LIKE customers INCLUDING ALL);
SQL
lethe migrate >/dev/null
echo "creating $ORGS KEKs and DEK version 1 (local keyring)..." >&2
lethe keys rotate --json > "$work/rotate1.json"
rotated_at=$(date +%s.%N)

echo "sealing $N values under version 1 and loading them with COPY..." >&2
gen_start=$(date +%s.%N)
"$PY" - "$LETHE_TEST_PG_URL" "$work/keyring.json" "$N" <<'PY'
import base64, os, random, struct, sys
sys.path.insert(0, "tests/reference_app")
import app  # the reference application: unwrap_local, aad (the documented format)
import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

url, keyring, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = psycopg.connect(url)
keys = {}
for org, kms_key_id, wrapped in conn.execute(
        "SELECT org_id, kms_key_id, wrapped_key FROM org_data_keys WHERE version = 1 AND state = 'active'"):
    keys[org] = AESGCM(app.unwrap_local(keyring, kms_key_id, base64.b64decode(wrapped)))
orgs = sorted(keys)
header = bytes([1]) + struct.pack(">I", 1)
aads = {org: app.aad("customers", "nik", org, header) for org in orgs}
rng = random.Random(42)
with conn.cursor() as cur, cur.copy("COPY customers_pristine (id, org_id, nik) FROM STDIN") as cp:
    for i in range(1, n + 1):
        org = orgs[rng.randrange(len(orgs))]
        if rng.random() < 0.75:  # NIK: region (6) + birth date DDMMYY (women +40) + serial (4)
            plain = "%02d%02d%02d%02d%02d%02d%04d" % (
                rng.randint(11, 94), rng.randint(1, 79), rng.randint(1, 40),
                rng.randint(1, 28) + rng.choice((0, 40)), rng.randint(1, 12),
                rng.randint(0, 99), rng.randint(1, 9999))
        else:  # Indonesian mobile number
            plain = "+628%d%0*d" % (rng.randint(11, 99), rng.choice((7, 8)), rng.randrange(10 ** 7))
        nonce = os.urandom(12)
        ct = keys[org].encrypt(nonce, plain.encode(), aads[org])
        cp.write_row((i, org, app.PREFIX + base64.b64encode(header + nonce + ct).decode()))
conn.commit()
PY
"${PSQL[@]}" -c "INSERT INTO customers SELECT * FROM customers_pristine" -c "VACUUM ANALYZE"
gen_s=$(python3 -c "print(f'{$(date +%s.%N) - $gen_start:.1f}')")
echo "generated in $gen_s s" >&2

# Past dek_rotation since the first rotate: every org gets version 2, so
# every value (under version 1, which stays active: values still use it) is stale.
sleep "$(python3 -c "print(max(0.0, 3.5 - ($(date +%s.%N) - $rotated_at)))")"
lethe keys rotate --json > "$work/rotate2.json"
"$PY" - "$work/rotate2.json" "$ORGS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["orgs"] == int(sys.argv[2]) and r["deks_created"] == int(sys.argv[2]), {k: r[k] for k in ("orgs", "deks_created")}
PY
"${PSQL[@]}" -At -c "SELECT version, state, count(*) FROM org_data_keys GROUP BY 1, 2 ORDER BY 1" >&2

# Version 1 headers are base64 `AQAAAA` then one of E-H; version 2, I-L.
count_under() { # version → values whose header names it
  local re; if [ "$1" = 1 ]; then re='[EFGH]'; else re='[IJKL]'; fi
  "${PSQL[@]}" -At -c "SELECT count(*) FROM customers WHERE nik ~ '^lethe1:AQAAAA$re'"
}
[ "$(count_under 1)" = "$N" ] || { echo "FAIL: not all $N values are under version 1 before the runs" >&2; exit 1; }

restore() { # table [rows] → a fresh copy of the pristine rows (all, or the first [rows] ids)
  local where=""; if [ -n "${2:-}" ]; then where="WHERE id <= $2"; fi
  "${PSQL[@]}" -c "TRUNCATE $1" -c "INSERT INTO $1 SELECT * FROM customers_pristine $where ORDER BY id" \
    -c "VACUUM ANALYZE $1" -c "CHECKPOINT"
}

run_product() { # expected count, tag → "seconds peak-RSS-kB"; checks the run's result
  local rss_kb
  local out="$work/run-$2.json" start end
  start=$(date +%s.%N)
  if [ -x /usr/bin/time ]; then
    local perf=()
    if [ -n "${PROFILE:-}" ]; then mkdir -p "$PROFILE"; perf=(perf record -q -F 1999 -o "$PROFILE/perf-$2.data" --); fi
    /usr/bin/time -v -o "$work/time-$2.txt" "${perf[@]}" "$LETHE" --config "$work/lethe.toml" run reencrypt --json > "$out" \
      || echo "lethe run exited with status $?" >&2
    end=$(date +%s.%N)
    rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time-$2.txt")
  else # poll the peak (VmHWM) until the process exits
    "$LETHE" --config "$work/lethe.toml" run reencrypt --json > "$out" &
    local pid=$! hwm=0 v
    while kill -0 "$pid" 2>/dev/null; do
      v=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      if [ -n "$v" ] && [ "$v" -gt "$hwm" ]; then hwm=$v; fi
      sleep 0.05
    done
    wait "$pid" || echo "lethe run exited with status $?" >&2
    end=$(date +%s.%N)
    rss_kb=$hwm
  fi
  "$PY" - "$out" "$1" <<'PY' >&2 || { echo "FAIL: product run $2 did not do what it must" >&2; exit 1; }
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[2]); res = r.get("result") or {}
got = {k: res.get(k) for k in ("reencrypted", "unreadable", "undecryptable", "changed_meanwhile")}
assert r["status"] == "succeeded", r
assert got == {"reencrypted": n, "unreadable": 0, "undecryptable": 0, "changed_meanwhile": 0}, got
PY
  python3 -c "print($end - $start, $rss_kb)"
}

# A sample of rewritten values opens under version 2 to what version 1 held.
verify_sample() {
  "$PY" - "$LETHE_TEST_PG_URL" "$work/keyring.json" <<'PY'
import base64, struct, sys
sys.path.insert(0, "tests/reference_app")
import app, psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
conn = psycopg.connect(sys.argv[1]); keyring = sys.argv[2]
keys = {(o, v): AESGCM(app.unwrap_local(keyring, k, base64.b64decode(w))) for o, v, k, w in
        conn.execute("SELECT org_id, version, kms_key_id, wrapped_key FROM org_data_keys")}
def plain(org, text):
    raw = base64.b64decode(text[len(app.PREFIX):])
    v = struct.unpack(">I", raw[1:5])[0]
    return v, AESGCM.decrypt(keys[(org, v)], raw[5:17], raw[17:], app.aad("customers", "nik", org, raw[:5])).decode()
rows = conn.execute("SELECT p.org_id, p.nik, c.nik FROM customers_pristine p JOIN customers c USING (id) "
                    "ORDER BY random() LIMIT 2000").fetchall()
for org, old, new in rows:
    (v1, a), (v2, b) = plain(org, old), plain(org, new)
    assert (v1, v2) == (1, 2) and a == b, (org, v1, v2)
print(f"verified {len(rows)} sampled values: version 1 -> 2, same plaintext", file=sys.stderr)
PY
}

run_baseline() { # → seconds
  local start end tag
  start=$(date +%s.%N)
  tag=$(psql -X -v ON_ERROR_STOP=1 "$LETHE_TEST_PG_URL" -c "UPDATE customers_baseline SET nik = nik")
  end=$(date +%s.%N)
  [ "$tag" = "UPDATE $N" ] || { echo "FAIL: baseline said '$tag'" >&2; exit 1; }
  python3 -c "print($end - $start)"
}

restore customers
restore customers_baseline
"${PSQL[@]}" -At -F ' ' -c "SELECT c, pg_relation_size(c) / 1048576.0, pg_total_relation_size(c) / 1048576.0
  FROM unnest(array['customers', 'customers_baseline']::regclass[]) c" > "$work/sizes.txt"
avg_len=$("${PSQL[@]}" -At -c "SELECT round(avg(length(nik)), 1) FROM customers")

# The peak RSS at N/4 first (its values are rewritten; the full restore below brings them back).
echo "product run at N/4 = $QUARTER values (peak RSS)..." >&2
restore customers "$QUARTER"
run_product "$QUARTER" quarter > "$work/measured"
read -r quarter_s quarter_rss < "$work/measured"
cp "$work/run-quarter.json" "$work/quarter.json"

: > "$work/pairs.txt"
for i in $(seq 1 "$PAIRS"); do
  # Alternate which side goes first, so neither always runs on a warmer cluster.
  order="product baseline"
  if [ $((i % 2)) = 0 ]; then order="baseline product"; fi
  for side in $order; do
    if [ "$side" = product ]; then
      restore customers
      [ "$(count_under 1)" = "$N" ] || { echo "FAIL: restore left values not under version 1" >&2; exit 1; }
      echo "pair $i: keys.reencrypt of $N values..." >&2
      run_product "$N" "$i" > "$work/measured"
      read -r p_s p_rss < "$work/measured"
      [ "$(count_under 2)" = "$N" ] || { echo "FAIL: after run $i not all $N values are under version 2" >&2; exit 1; }
      if [ "$i" = 1 ]; then verify_sample; fi
    else
      restore customers_baseline
      echo "pair $i: UPDATE customers_baseline SET nik = nik..." >&2
      b_s=$(run_baseline)
    fi
  done
  lbm=$("$PY" -c "import json; print(json.load(open('$work/run-$i.json'))['result']['longest_batch_ms'])")
  echo "$i $p_s $b_s $lbm $p_rss" >> "$work/pairs.txt"
  echo "pair $i: product $p_s s, baseline $b_s s, longest batch $lbm ms, peak RSS $p_rss kB" >&2
done

"${PSQL[@]}" -c "DROP TABLE customers, customers_pristine, customers_baseline" -c "CHECKPOINT"
total_s=$(python3 -c "print($(date +%s.%N) - $bench_start)")

python3 - "$work/pairs.txt" "$work/sizes.txt" "$N" "$ORGS" "$BATCH" "$QUARTER" "$quarter_s" "$quarter_rss" \
  "$work/quarter.json" "$avg_len" "$gen_s" "$total_s" <<'PY'
import json, statistics, sys
pairs = [l.split() for l in open(sys.argv[1]) if l.strip()]
sizes = [l.split() for l in open(sys.argv[2]) if l.strip()]
n, orgs, batch, quarter = map(int, sys.argv[3:7])
quarter_s, quarter_rss = float(sys.argv[7]), int(sys.argv[8])
quarter_lbm = json.load(open(sys.argv[9]))["result"]["longest_batch_ms"]
avg_len, gen_s, total_s = sys.argv[10], float(sys.argv[11]), float(sys.argv[12])
print(f"keys.reencrypt vs UPDATE customers_baseline SET nik = nik (PostgreSQL, same cluster)")
print(f"N = {n:,} values, {orgs} orgs, batch_size {batch}, avg stored value {avg_len} chars")
for name, heap, total in sizes:
    print(f"table {name}: heap {float(heap):.1f} MB, with index {float(total):.1f} MB")
print(f"data generation (seal + COPY): {gen_s:.1f} s")
p_rate, b_rate, ratio, lbms, rss = [], [], [], [], []
print(f"{'pair':>4} {'product s':>10} {'rows/s':>10} {'baseline s':>11} {'rows/s':>10} {'ratio':>6} {'longest tx ms':>14} {'peak RSS MB':>12}")
for i, p, b, lbm, r in pairs:
    p, b = float(p), float(b)
    p_rate.append(n / p); b_rate.append(n / b); ratio.append(b / p); lbms.append(int(lbm)); rss.append(int(r))
    print(f"{i:>4} {p:10.2f} {n/p:10,.0f} {b:11.2f} {n/b:10,.0f} {b/p:6.3f} {int(lbm):14,} {int(r)/1024:12.1f}")
def show(name, xs, fmt):
    print(f"{name}: median {fmt(statistics.median(xs))}  (min {fmt(min(xs))} - max {fmt(max(xs))})")
show("product rows/s ", p_rate, lambda x: f"{x:,.0f}")
show("baseline rows/s", b_rate, lambda x: f"{x:,.0f}")
show("ratio product/baseline", ratio, lambda x: f"{x:.3f}x")
print(f"longest rewrite transaction (product, max over runs): {max(lbms):,} ms; baseline: one transaction of the whole UPDATE")
print(f"peak RSS of lethe run: N/4 = {quarter:,}: {quarter_rss/1024:.1f} MB ({quarter/quarter_s:,.0f} rows/s, longest tx {quarter_lbm} ms); "
      f"N = {n:,}: {max(rss)/1024:.1f} MB (max over runs)")
print(f"target: ratio >= 0.5x: {'met' if statistics.median(ratio) >= 0.5 else 'NOT met'}; "
      f"no transaction over 1 s: {'met' if max(lbms + [quarter_lbm]) <= 1000 else 'NOT met'}")
print(f"total wall time: {total_s:.0f} s")
PY
