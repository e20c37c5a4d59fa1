#!/usr/bin/env bash
# Benchmark: DSR erasure throughput on PostgreSQL with N users (default
# 1,000,000) across demo-like tables (memberships, API logs, audit logs,
# documents, LLM logs; subject columns indexed as an application would).
# R verified erasure requests (default 2000) are processed by one
# `lethe run dsr.process`; prints requests/min and per-request median/p95.
# Usage: benches/dsr_erasure.sh [N] [R]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"; R="${2:-2000}"
source scripts/test-servers
trap 'lethe_servers_stop; rm -rf "${work:-}"' EXIT INT TERM
lethe_servers_start >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lethe/target}"
cargo build --release --quiet
LETHE="$CARGO_TARGET_DIR/release/lethe"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 "$LETHE_TEST_PG_URL")
echo "generating $N users and their rows..." >&2
"${PSQL[@]}" <<SQL
CREATE TABLE orgs (id int PRIMARY KEY, closed_at timestamptz);
INSERT INTO orgs SELECT g, NULL FROM generate_series(1, 10000) g;
CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE NOT NULL, name text);
INSERT INTO users SELECT g, 'user' || g || '@bench.example', 'User ' || g FROM generate_series(1, $N) g;
CREATE TABLE memberships (org_id int, user_id int, role text);
INSERT INTO memberships SELECT (g % 10000) + 1, g, CASE WHEN g <= 20000 THEN 'owner' ELSE 'member' END FROM generate_series(1, $N) g;
CREATE INDEX ON memberships (user_id); CREATE INDEX ON memberships (org_id);
CREATE TABLE api_request_logs (id bigserial PRIMARY KEY, org_id int, user_id int, path text, created_at timestamptz);
INSERT INTO api_request_logs (org_id, user_id, path, created_at)
  SELECT (u % 10000) + 1, u, '/v1/x', now() - (k || ' days')::interval FROM generate_series(1, $N) u, generate_series(1, 3) k;
CREATE INDEX ON api_request_logs (user_id);
CREATE TABLE audit_logs (id bigserial PRIMARY KEY, org_id int, actor_user_id int, ip text, created_at timestamptz);
INSERT INTO audit_logs (org_id, actor_user_id, ip, created_at) SELECT (u % 10000) + 1, u, '203.0.113.1', now() FROM generate_series(1, $N) u;
CREATE INDEX ON audit_logs (actor_user_id);
CREATE TABLE documents (id bigserial PRIMARY KEY, org_id int, owner_user_id int, body text, updated_at timestamptz);
INSERT INTO documents (org_id, owner_user_id, body, updated_at) SELECT (u % 10000) + 1, u, 'notes', now() FROM generate_series(1, $N, 2) u;
CREATE INDEX ON documents (owner_user_id);
CREATE TABLE llm_interactions (id bigserial PRIMARY KEY, org_id int, user_id int, prompt text, created_at timestamptz);
INSERT INTO llm_interactions (org_id, user_id, prompt, created_at) SELECT (u % 10000) + 1, u, 'hi', now() FROM generate_series(1, $N) u;
CREATE INDEX ON llm_interactions (user_id);
VACUUM ANALYZE;
SQL
work=$(mktemp -d)
mkdir -p "$work/jobs"
cat > "$work/lethe.toml" <<'TOML'
[database]
url = "postgres://placeholder/app"
[mail]
from = "Lethe <lethe@bench.example>"
transport = "file"
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
memberships = { table = "memberships", org = "org_id", subject = "user_id", role = "role" }
[[data_map]]
table = "users"
class = "account"
subject = "id"
erasure = "anonymize"
anonymize = { email = "hmac", name = "fixed:Deleted user" }
[[data_map]]
table = "memberships"
class = "account"
org = "org_id"
subject = "user_id"
[[data_map]]
table = "api_request_logs"
class = "api_logs"
org = "org_id"
subject = "user_id"
[[data_map]]
table = "audit_logs"
class = "audit"
org = "org_id"
subject = "actor_user_id"
erasure = "anonymize"
anonymize = { ip = "null" }
[[data_map]]
table = "documents"
class = "content"
org = "org_id"
subject = "owner_user_id"
[[data_map]]
table = "llm_interactions"
class = "llm"
org = "org_id"
subject = "user_id"
TOML
printf 'kind = "dsr.process"\nschedule = "0 0 3 * * *"\ntimeout = "2h"\n' > "$work/jobs/process.toml"
export LETHE_DATABASE_URL="$LETHE_TEST_PG_URL" LETHE_PSEUDONYM_KEY=bench-key
"$LETHE" --config "$work/lethe.toml" migrate >/dev/null
# R plain members (ids above the owners), queued as verified GDPR erasures.
"${PSQL[@]}" -c "INSERT INTO lethe.dsr_requests (kind, subject, jurisdiction, state, source, received_at, due_at, updated_at)
  SELECT 'erasure', 'user' || (50000 + g * 37) || '@bench.example', 'gdpr', 'verified', 'bench', now(), now() + interval '1 month', now()
  FROM generate_series(1, $R) g"
python3 - "$LETHE" "$work/lethe.toml" "$R" <<'PY'
import json, subprocess, sys, time
t = time.monotonic()
out = subprocess.run([sys.argv[1], "--config", sys.argv[2], "run", "process", "--param", f"limit={sys.argv[3]}", "--json"],
                     check=True, capture_output=True, text=True).stdout
dt = time.monotonic() - t
r = json.loads(out)["result"]
n = len(r["completed"])
assert n == int(sys.argv[3]), (n, r.get("rejected"))
p = r["per_request_ms"]
print(f"erasures: {n} in {dt:.1f} s = {n / dt * 60:,.0f} requests/min; per request median {p['median']} ms, p95 {p['p95']} ms, max {p['max']:.1f} ms")
PY
