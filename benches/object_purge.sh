#!/usr/bin/env bash
# Benchmark: `[[object_retention]]` purging N expired identity-capture frames
# from a versioned S3 bucket (moto) with `lethe run retention.purge`, against
# what an `aws s3api` user writes in boto3 (benches/object_purge_baseline.py:
# list every version, delete the expired ones in requests of 1,000) over an
# identical bucket, in one server and one script.
#
# The S3 server is moto with request counting by operation and in-process
# bucket filling (benches/object_purge_server.py; read it for the one change
# to moto, which makes its ListObjectVersions copies shallow: STOCK_MOTO=1
# turns it off). Each bucket: N frames under frames/{org}/{subject}/, 100
# orgs, 10 % with an older version, 1 % with a delete marker between two;
# 5 % recent (kept), the frames of 2 orgs under a legal hold (kept), the rest
# 100-400 days old against a 90-day rule. Each run gets a fresh copy;
# product and baseline alternate for PAIRS pairs, then each run is checked
# with ListObjectVersions: every expired version gone, every kept one there.
#
# Prints per pair: wall time, requests per operation, peak RSS; medians and
# min-max; the issue's bound (DeleteObjects <= 1.05 x ceil(V/1000), V the
# versions and delete markers deleted: exit 1 if not met); peak RSS of
# `lethe run` at N/4 and at N.
#
# Usage: benches/object_purge.sh [N]   (default 100000)
# Env:   PAIRS (default 3), STOCK_MOTO=1 (moto as released: its listing then
#        costs ~0.2 ms per version in the bucket per call, hours at N=100k)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
PAIRS="${PAIRS:-3}"
QUARTER=$((N / 4))
HELD="7,42"
DAYS=90
bench_start=$(date +%s.%N)

source scripts/test-servers   # the cached Python venv (moto, boto3), free ports
work=""
server_pid=""
trap 'if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi; rm -rf "${work:-}"' EXIT INT TERM
lethe_ensure_venv
PY="$LETHE_VENV/bin/python"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lethe/target}"
cargo build --release --quiet
LETHE="$CARGO_TARGET_DIR/release/lethe"
work=$(mktemp -d)
port=$(lethe_free_port)
"$PY" benches/object_purge_server.py "$port" > "$work/server.log" 2>&1 &
server_pid=$!
lethe_wait_tcp 127.0.0.1 "$port" "moto (benches/object_purge_server.py)"
S3="http://127.0.0.1:$port"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1

ctl() { curl -sf -X POST "$S3/_bench/$1"; }

# How long the buckets would take to fill over HTTP (PUTs from a thread pool),
# measured on 2,000 objects; the runs' buckets are filled in-process instead.
"$PY" - "$S3" "$N" > "$work/upload.txt" <<'PY'
import sys, time, boto3
from concurrent.futures import ThreadPoolExecutor
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="testing",
                  aws_secret_access_key="testing", config=Config(max_pool_connections=16))
s3.create_bucket(Bucket="upload-probe")
s3.put_bucket_versioning(Bucket="upload-probe", VersioningConfiguration={"Status": "Enabled"})
body = b"\xff\xd8\xff\xe0" + bytes(1020)
start = time.time()
with ThreadPoolExecutor(8) as ex:
    list(ex.map(lambda i: s3.put_object(Bucket="upload-probe", Key=f"frames/1/u{i:07d}/0.jpg", Body=body), range(2000)))
rate = 2000 / (time.time() - start)
print(f"{rate:.0f} {int(sys.argv[2]) / rate:.0f}")
PY
ctl "drop?bucket=upload-probe" > /dev/null

# The application database: 100 open orgs (the rule is by age).
: > "$work/app.db"
"$PY" - "$work/app.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);"
                 "CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at TEXT);")
db.executemany("INSERT INTO orgs VALUES (?, NULL)", [(i,) for i in range(1, 101)])
db.commit()
PY

seed() { # bucket n → fills it; prints the seed time
  local start; start=$(date +%s.%N)
  ctl "seed?bucket=$1&n=$2&seed=42&held=$HELD&expect=$work/expect-$1.json" > "$work/seed-$1.json"
  python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')"
}

verify() { # bucket → every expired entry gone, every kept one there (ListObjectVersions)
  "$PY" - "$S3" "$1" "$work/expect-$1.json" <<'PY' >&2
import json, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
kept = json.load(open(sys.argv[3]))["kept"]
left = {}
for page in s3.get_paginator("list_object_versions").paginate(Bucket=sys.argv[2]):
    for e in page.get("Versions", []) + page.get("DeleteMarkers", []):
        left[e["Key"]] = left.get(e["Key"], 0) + 1
extra = {k: n for k, n in left.items() if kept.get(k) != n}
missing = [k for k in kept if k not in left]
if extra or missing:
    sys.exit(f"FAIL {sys.argv[2]}: {len(extra)} keys with entries that should be gone or changed "
             f"(e.g. {list(extra.items())[:3]}), {len(missing)} kept keys missing (e.g. {missing[:3]})")
print(f"verified {sys.argv[2]}: {sum(left.values())} entries of {len(left)} kept keys remain, nothing else")
PY
}

run_product() { # bucket tag → "seconds peak-RSS-kB"; the run's JSON in $work/run-TAG.json
  local dir="$work/lethe-$2" start end
  mkdir -p "$dir/jobs"
  cat > "$dir/lethe.toml" <<TOML
[database]
url = "sqlite://$work/app.db"
[store]
url = "sqlite://lethe.db"
[mail]
from = "Lethe <lethe@bench.example>"
transport = "file"
dir = "mail"
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
[object_stores.captures]
url = "s3://$1"
endpoint = "$S3"
region = "us-east-1"
path_style = true
[[object_retention]]
store = "captures"
keys = "frames/{org}/{subject}/"
class = "identity_frames"
retention = "${DAYS}d"
TOML
  cat > "$dir/jobs/purge.toml" <<TOML
kind = "retention.purge"
schedule = "0 0 3 * * *"
enabled = false
max_attempts = 1
timeout = "2h"
TOML
  "$LETHE" --config "$dir/lethe.toml" migrate > /dev/null
  for org in ${HELD//,/ }; do
    "$LETHE" --config "$dir/lethe.toml" hold add --org "$org" --reason litigation > /dev/null
  done
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$dir/time.txt" "$LETHE" --config "$dir/lethe.toml" run purge --json > "$work/run-$2.json" \
    || echo "lethe run exited with status $?" >&2
  end=$(date +%s.%N)
  curl -sf "$S3/_bench/counts?bucket=$1" > "$work/counts-$2.json"
  python3 -c "print($end - $start, $(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.txt"))"
}

run_baseline() { # bucket tag → "seconds peak-RSS-kB"
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$work/time-$2.txt" "$PY" benches/object_purge_baseline.py "$S3" "$1" "$HELD" "$DAYS" \
    > "$work/run-$2.json"
  end=$(date +%s.%N)
  curl -sf "$S3/_bench/counts?bucket=$1" > "$work/counts-$2.json"
  python3 -c "print($end - $start, $(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time-$2.txt"))"
}

echo "product run at N/4 = $QUARTER objects (peak RSS)..." >&2
seed_q=$(seed quarter "$QUARTER")
run_product quarter quarter > "$work/measured"
read -r quarter_s quarter_rss < "$work/measured"
verify quarter
ctl "drop?bucket=quarter" > /dev/null

: > "$work/pairs.txt"
seeds=""
for i in $(seq 1 "$PAIRS"); do
  order="product baseline"
  if [ $((i % 2)) = 0 ]; then order="baseline product"; fi
  for side in $order; do
    bucket="$side-$i"
    s=$(seed "$bucket" "$N"); seeds="$seeds $s"
    echo "pair $i: $side over $N objects (filled in $s s)..." >&2
    if [ "$side" = product ]; then
      run_product "$bucket" "p$i" > "$work/measured"; read -r p_s p_rss < "$work/measured"
    else
      run_baseline "$bucket" "b$i" > "$work/measured"; read -r b_s b_rss < "$work/measured"
    fi
    verify "$bucket"
    ctl "drop?bucket=$bucket" > /dev/null
  done
  echo "$i $p_s $p_rss $b_s $b_rss" >> "$work/pairs.txt"
  echo "pair $i: product $p_s s, baseline $b_s s" >&2
done
total_s=$(python3 -c "print($(date +%s.%N) - $bench_start)")

"$PY" - "$work" "$N" "$QUARTER" "$quarter_s" "$quarter_rss" "$total_s" "$seeds" "$seed_q" <<'PY'
import json, math, statistics, sys
work, n, quarter = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
quarter_s, quarter_rss, total_s = float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
seeds = [float(x) for x in sys.argv[7].split()]
rate, upload_s = open(f"{work}/upload.txt").read().split()
load = lambda name: json.load(open(f"{work}/{name}"))
OPS = ["ListObjectsV2", "ListObjectVersions", "DeleteObjects", "other"]
summary = load("seed-product-1.json")
print("[[object_retention]] purge on a versioned S3 bucket (moto): lethe run retention.purge vs a boto3 script")
print(f"N = {n:,} objects, {summary['versions']:,} versions and delete markers; expired {summary['expired_objects']:,} "
      f"objects = {summary['expired_versions']:,} entries; kept {summary['kept_objects']:,} (recent or held)")
print(f"filling a bucket in-process: median {statistics.median(seeds):.1f} s; over HTTP it would take "
      f"~{upload_s} s ({rate} PUT/s measured on 2,000 objects, 8 threads)")
rows, failures = [], []
for line in open(f"{work}/pairs.txt"):
    i, p_s, p_rss, b_s, b_rss = line.split()
    run, pc, bc, base = load(f"run-p{i}.json"), load(f"counts-p{i}.json"), load(f"counts-b{i}.json"), load(f"run-b{i}.json")
    res = run.get("result") or {}
    if run["status"] != "succeeded":
        failures.append(f"pair {i}: lethe run {run['status']}")
    frames = res.get("objects", {}).get("identity_frames", {})
    deleted_v = sum(t["versions"] for t in frames.values())
    deleted_o = sum(t["objects"] for t in frames.values())
    if (deleted_o, deleted_v) != (summary["expired_objects"], summary["expired_versions"]):
        failures.append(f"pair {i}: lethe deleted {deleted_o} objects / {deleted_v} versions")
    if base["deleted"] != summary["expired_versions"]:
        failures.append(f"pair {i}: the baseline deleted {base['deleted']}")
    rows.append(dict(i=i, p_s=float(p_s), p_rss=int(p_rss), b_s=float(b_s), b_rss=int(b_rss), pc=pc, bc=bc, v=deleted_v))
print(f"{'pair':>4} {'side':>8} {'seconds':>8} {'peak RSS MB':>11} " + " ".join(f"{o:>18}" for o in OPS))
for r in rows:
    for side, s, rss, c in (("lethe", r["p_s"], r["p_rss"], r["pc"]), ("baseline", r["b_s"], r["b_rss"], r["bc"])):
        print(f"{r['i']:>4} {side:>8} {s:8.1f} {rss / 1024:11.1f} " + " ".join(f"{c.get(o, 0):>18,}" for o in OPS))
def show(name, xs, fmt):
    print(f"{name}: median {fmt(statistics.median(xs))} (min {fmt(min(xs))} - max {fmt(max(xs))})")
show("lethe seconds   ", [r["p_s"] for r in rows], lambda x: f"{x:.1f}")
show("baseline seconds", [r["b_s"] for r in rows], lambda x: f"{x:.1f}")
show("time ratio lethe/baseline", [r["p_s"] / r["b_s"] for r in rows], lambda x: f"{x:.2f}x")
req = lambda c: sum(c.values())
show("requests lethe/baseline  ", [req(r["pc"]) / req(r["bc"]) for r in rows], lambda x: f"{x:.2f}x")
r0 = rows[0]
bound = 1.05 * math.ceil(r0["v"] / 1000)
worst = max(r["pc"].get("DeleteObjects", 0) for r in rows)
ok = all(r["pc"].get("DeleteObjects", 0) <= 1.05 * math.ceil(r["v"] / 1000) for r in rows)
print(f"bound: DeleteObjects <= 1.05 x ceil(V/1000) = {bound:.2f} for V = {r0['v']:,}: lethe sent {worst} at most: "
      f"{'met' if ok else 'NOT met'}; listing pages: {r0['pc'].get('ListObjectsV2', 0)} ListObjectsV2 + "
      f"{r0['pc'].get('ListObjectVersions', 0)} ListObjectVersions (one listing a key would be {summary['expired_objects']:,})")
print(f"peak RSS of lethe run: N/4 = {quarter:,}: {quarter_rss / 1024:.1f} MB ({quarter_s:.1f} s); "
      f"N = {n:,}: {max(r['p_rss'] for r in rows) / 1024:.1f} MB (max over runs); "
      f"baseline at N: {max(r['b_rss'] for r in rows) / 1024:.1f} MB")
print(f"total wall time: {total_s:.0f} s")
if failures or not ok:
    print("FAIL: " + "; ".join(failures or ["the DeleteObjects bound"]))
    sys.exit(1)
PY
