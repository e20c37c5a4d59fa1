//! retention.purge on SQLite and PostgreSQL: expiry by age and by org
//! closure, per-org overrides, legal holds, dry run, evidence, crash resume,
//! and bad data maps. Every case runs against both databases.

use std::time::{Duration, Instant};

use crate::common::{run_ok, stdout_json, ConfigDir};
use serde_json::Value;

const DATA_MAP: &str = r#"
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }

[[data_map]]
table = "events"
class = "events"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
retention = ["90d", "org_closed+1y"]
"#;

const JOB: &str =
    "kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\n[params]\nbatch_size = 7\n";

/// Orgs 1–3 open, 4 closed two years ago, 5 closed 20 days ago; users 1–10;
/// per org and user one event at each age 1, 50, 100, 200, 400 days; one old row without org.
const PG_FIXTURE: &str = r#"
CREATE TABLE orgs (id int PRIMARY KEY, name text NOT NULL, closed_at timestamptz);
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE events (id bigserial PRIMARY KEY, org_id int, user_id int, created_at timestamptz NOT NULL, body text);
CREATE INDEX events_created_at ON events (created_at);
INSERT INTO orgs VALUES (1, 'a', NULL), (2, 'b', NULL), (3, 'c', NULL),
    (4, 'gone', now() - interval '2 years'), (5, 'leaving', now() - interval '20 days');
INSERT INTO users SELECT g, 'user' || g || '@x.example' FROM generate_series(1, 10) g;
INSERT INTO events (org_id, user_id, created_at, body)
    SELECT o, u, now() - make_interval(days => d), 'secret'
    FROM generate_series(1, 5) o, generate_series(1, 10) u, unnest(ARRAY[1, 50, 100, 200, 400]) d;
INSERT INTO events (org_id, user_id, created_at, body) VALUES (NULL, NULL, now() - interval '400 days', 'orphan');
"#;

const SQLITE_FIXTURE: &str = r#"
CREATE TABLE orgs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, closed_at TEXT);
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
CREATE TABLE events (id INTEGER PRIMARY KEY, org_id INTEGER, user_id INTEGER, created_at TEXT NOT NULL, body TEXT);
CREATE INDEX events_created_at ON events (created_at);
INSERT INTO orgs VALUES (1, 'a', NULL), (2, 'b', NULL), (3, 'c', NULL),
    (4, 'gone', datetime('now', '-730 days')), (5, 'leaving', datetime('now', '-20 days'));
WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < 10)
    INSERT INTO users SELECT g, 'user' || g || '@x.example' FROM n;
WITH RECURSIVE o(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM o WHERE i < 5),
     u(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM u WHERE j < 10),
     d(k) AS (VALUES (1), (50), (100), (200), (400))
    INSERT INTO events (org_id, user_id, created_at, body)
    SELECT i, j, datetime('now', '-' || k || ' days'), 'secret' FROM o, u, d;
INSERT INTO events (org_id, user_id, created_at, body) VALUES (NULL, NULL, datetime('now', '-400 days'), 'orphan');
"#;

struct Fixture {
    c: ConfigDir,
    app_url: String,
}

impl Fixture {
    async fn sql<T>(&self, q: &str) -> T
    where
        T: Send + Unpin,
        for<'r> (T,):
            sqlx::FromRow<'r, sqlx::postgres::PgRow> + sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
    {
        if self.app_url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(&self.app_url).await.unwrap();
            sqlx::query_as::<_, (T,)>(q)
                .fetch_one(&pool)
                .await
                .unwrap()
                .0
        } else {
            let pool = sqlx::SqlitePool::connect(&self.app_url).await.unwrap();
            sqlx::query_as::<_, (T,)>(q)
                .fetch_one(&pool)
                .await
                .unwrap()
                .0
        }
    }

    async fn count(&self, filter: &str) -> i64 {
        self.sql::<i64>(&format!("SELECT count(*) FROM events WHERE {filter}"))
            .await
    }

    /// SQL for "older than N days" in this dialect.
    fn older(&self, days: u32) -> String {
        if self.app_url.starts_with("postgres") {
            format!("created_at < now() - interval '{days} days'")
        } else {
            format!("created_at < datetime('now', '-{days} days')")
        }
    }

    fn lethe(&self) -> std::process::Command {
        let mut cmd = self.c.lethe();
        // Subject holds name the subject in evidence by its keyed pseudonym.
        cmd.env("LETHE_PSEUDONYM_KEY", "retention-test-pseudonym-key-0123");
        cmd
    }
}

async fn fixture(pg: bool, runner: &str, data_map: &str) -> Option<Fixture> {
    let (c, app_url) = if pg {
        let url = crate::common::fresh_pg_db().await?;
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(PG_FIXTURE).execute(&pool).await.unwrap();
        (
            ConfigDir::full(Some(&url), Some(&url), runner, "", data_map),
            url,
        )
    } else {
        let c = ConfigDir::full(None, None, runner, "", data_map);
        let url = format!("sqlite://{}", c.path().join("app.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::raw_sql(SQLITE_FIXTURE).execute(&pool).await.unwrap();
        (c, url)
    };
    c.job("purge", JOB);
    run_ok(c.lethe().arg("migrate"));
    Some(Fixture { c, app_url })
}

fn purge(f: &Fixture, extra: &[&str]) -> Value {
    let out = run_ok(f.lethe().args(["run", "purge", "--json"]).args(extra));
    let v = stdout_json(&out);
    assert_eq!(v["status"], "succeeded", "{v}");
    v
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(true).await })* }
    };
}

both!(
    purges_expired_rows_keeps_young_ones_and_records_evidence,
    dry_run_reports_per_org_and_deletes_nothing,
    legal_holds_keep_rows_until_released,
    per_org_overrides_shorten_or_lengthen_retention,
    crash_mid_purge_resumes_without_redoing_or_skipping_rows,
    bad_data_maps_exit_2_naming_the_entry,
    keyset_slices_handle_many_rows_sharing_one_timestamp,
);

/// Injects: an application transaction holding a row lock on an expired row
/// for 2 s. Must hold: the purge's window waits at most `max_transaction_ms`,
/// is rolled back and redone in row batches, and every expired row still goes.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_window_over_the_transaction_limit_is_redone_in_row_batches() {
    let map = DATA_MAP.replace(
        "retention = [\"90d\", \"org_closed+1y\"]",
        "retention = \"90d\"",
    );
    let Some(f) = fixture(true, "", &map).await else {
        return;
    };
    f.c.job(
        "purge",
        "kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\n[params]\nbatch_size = 1000\nmax_transaction_ms = 200\n",
    );
    let pool = sqlx::PgPool::connect(&f.app_url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT id FROM events WHERE created_at < now() - interval '300 days' LIMIT 1 FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        tx.rollback().await.unwrap();
    });
    let v = purge(&f, &[]);
    release.await.unwrap();
    assert!(
        v["result"]["windows_redone"].as_u64().unwrap() >= 1,
        "the blocked window hit the limit: {v}"
    );
    assert_eq!(v["result"]["deleted"], 151, "{v}");
    assert_eq!(f.count(&f.older(90)).await, 0);
}

async fn keyset_slices_handle_many_rows_sharing_one_timestamp(pg: bool) {
    // One age rule: the purge walks the timestamp index in slices. The fixture gives
    // 50 rows each the very same timestamp, far more than a batch of 7.
    let map = DATA_MAP.replace(
        "retention = [\"90d\", \"org_closed+1y\"]",
        "retention = \"90d\"",
    );
    let Some(f) = fixture(pg, "", &map).await else {
        return;
    };
    let v = purge(&f, &[]);
    assert_eq!(v["result"]["deleted"], 5 * 30 + 1, "{v}");
    assert_eq!(f.count(&f.older(90)).await, 0);
    assert_eq!(f.count("1 = 1").await, 251 - 151);
    assert!(
        v["result"]["batches"].as_u64().unwrap() >= 3,
        "several slices: {v}"
    );
    // With holds the slices skip held rows and still end.
    let Some(f) = fixture(pg, "", &map).await else {
        return;
    };
    run_ok(
        f.lethe()
            .args(["hold", "add", "--org", "2", "--reason", "audit"]),
    );
    let v = purge(&f, &[]);
    assert_eq!(v["result"]["deleted"], 4 * 30 + 1);
    assert_eq!(
        f.count(&format!("org_id = 2 AND {}", f.older(90))).await,
        30
    );
}

async fn purges_expired_rows_keeps_young_ones_and_records_evidence(pg: bool) {
    let Some(f) = fixture(pg, "", DATA_MAP).await else {
        return;
    };
    let v = purge(&f, &[]);
    // 30 rows per open org (ages 100, 200, 400), all 50 of org 4 (closed 2y ago), 30 of org 5, one orphan.
    assert_eq!(v["result"]["deleted"], 171, "{v}");
    let by_org = &v["result"]["items"][0]["by_org"];
    assert_eq!(by_org["1"], 30);
    assert_eq!(
        by_org["4"], 50,
        "org closed over a year ago loses even young rows"
    );
    assert_eq!(
        by_org["5"], 30,
        "org closed 20 days ago keeps its young rows"
    );
    assert_eq!(by_org[""], 1, "rows without an org are purged by age too");
    assert_eq!(
        f.count(&f.older(90)).await,
        0,
        "nothing older than 90 days remains"
    );
    assert_eq!(f.count("org_id = 4").await, 0);
    assert_eq!(f.count("org_id = 5").await, 20);
    assert_eq!(f.count("1 = 1").await, 251 - 171);
    assert!(
        v["result"]["batches"].as_u64().unwrap() >= 171 / 7,
        "deleted in batches of 7"
    );

    // Evidence: counts and cutoffs in the chain, never the values.
    let audit = String::from_utf8(run_ok(f.lethe().args(["audit", "export"])).stdout).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("retention.purged"))
        .expect("evidence event");
    let e: Value = serde_json::from_str(line).unwrap();
    assert_eq!(e["details"]["deleted"], 171);
    assert_eq!(e["details"]["rules"][0]["rule"], "90d");
    assert!(e["details"]["rules"][0]["cutoff"].is_string());
    assert!(
        !audit.contains("secret") && !audit.contains("orphan"),
        "deleted values never reach evidence"
    );
    let file = f.c.path().join("audit.jsonl");
    std::fs::write(&file, &audit).unwrap();
    run_ok(f.lethe().args(["audit", "verify"]).arg(&file));

    // A second run finds nothing more.
    assert_eq!(purge(&f, &[])["result"]["deleted"], 0);
}

async fn dry_run_reports_per_org_and_deletes_nothing(pg: bool) {
    let Some(f) = fixture(pg, "", DATA_MAP).await else {
        return;
    };
    let v = purge(&f, &["--dry-run"]);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["result"]["would_delete"], 171);
    assert_eq!(v["result"]["items"][0]["by_org"]["4"], 50);
    assert_eq!(f.count("1 = 1").await, 251, "a dry run deletes nothing");
    let audit = String::from_utf8(run_ok(f.lethe().args(["audit", "export"])).stdout).unwrap();
    assert!(
        !audit.contains("retention.purged"),
        "a dry run changes nothing, so it leaves no purge evidence"
    );
}

async fn legal_holds_keep_rows_until_released(pg: bool) {
    let Some(f) = fixture(pg, "", DATA_MAP).await else {
        return;
    };
    let org_hold = stdout_json(&run_ok(f.lethe().args([
        "hold",
        "add",
        "--org",
        "4",
        "--reason",
        "litigation 2026-17",
        "--json",
    ])));
    run_ok(f.lethe().args([
        "hold",
        "add",
        "--subject",
        "USER3@x.example",
        "--reason",
        "regulator inquiry",
    ]));
    let bad = f
        .lethe()
        .args(["hold", "add", "--org", "999", "--reason", "x"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "holds name orgs that exist");
    let bad = f
        .lethe()
        .args(["hold", "add", "--subject", "not-an-email", "--reason", "x"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    let v = purge(&f, &[]);
    // Org 4 is held entirely; user 3's 3 expired rows in each of orgs 1, 2, 3, 5 are held.
    assert_eq!(v["result"]["deleted"], 171 - 50 - 4 * 3, "{v}");
    assert_eq!(f.count("org_id = 4").await, 50);
    assert_eq!(
        f.count(&format!("user_id = 3 AND {}", f.older(90))).await,
        5 * 3
    );
    let skipped = v["result"]["items"][0]["skipped_for_holds"]
        .as_array()
        .unwrap();
    let org_skip = skipped
        .iter()
        .find(|s| s["hold_id"] == org_hold["id"])
        .expect("org hold reported");
    assert_eq!(org_skip["rows"], 50);
    assert!(org_skip["reason"]
        .as_str()
        .unwrap()
        .contains("litigation 2026-17"));
    assert!(skipped
        .iter()
        .any(|s| s["rows"] == 12 && s["reason"].as_str().unwrap().contains("regulator")));

    let list = stdout_json(&run_ok(f.lethe().args(["hold", "list", "--json"])));
    assert_eq!(list["holds"].as_array().unwrap().len(), 2);
    let id = org_hold["id"].as_i64().unwrap().to_string();
    run_ok(
        f.lethe()
            .args(["hold", "release", &id, "--reason", "case closed"]),
    );
    let again = f
        .lethe()
        .args(["hold", "release", &id, "--reason", "twice"])
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "a released hold cannot be released again"
    );
    let v = purge(&f, &[]);
    // Org 4's rows go, except user 3's five there: the subject hold still stands.
    assert_eq!(v["result"]["deleted"], 45);
    assert_eq!(
        f.count(&format!("user_id = 3 AND {}", f.older(90))).await,
        5 * 3
    );
    assert_eq!(f.count("org_id = 4").await, 5);
}

async fn per_org_overrides_shorten_or_lengthen_retention(pg: bool) {
    let Some(f) = fixture(pg, "", DATA_MAP).await else {
        return;
    };
    run_ok(f.lethe().args([
        "retention",
        "set",
        "--class",
        "events",
        "--org",
        "1",
        "--period",
        "30d",
        "--reason",
        "customer asked",
    ]));
    run_ok(f.lethe().args([
        "retention",
        "set",
        "--class",
        "events",
        "--org",
        "2",
        "--period",
        "1y",
        "--reason",
        "contract 7.2",
    ]));
    let bad = f
        .lethe()
        .args([
            "retention",
            "set",
            "--class",
            "nope",
            "--org",
            "1",
            "--period",
            "30d",
            "--reason",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let bad = f
        .lethe()
        .args([
            "retention",
            "set",
            "--class",
            "events",
            "--org",
            "1",
            "--period",
            "30 days",
            "--reason",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown unit"));
    let listed = stdout_json(&run_ok(f.lethe().args(["retention", "list", "--json"])));
    assert_eq!(listed["overrides"].as_array().unwrap().len(), 2);

    let v = purge(&f, &[]);
    // Org 1 (30d): ages 50, 100, 200, 400 go → 40. Org 2 (1y): only 400 → 10. Org 3 default: 30.
    assert_eq!(f.count("org_id = 1").await, 10);
    assert_eq!(f.count("org_id = 2").await, 40);
    assert_eq!(f.count("org_id = 3").await, 20);
    assert_eq!(v["result"]["deleted"], 40 + 10 + 30 + 50 + 30 + 1, "{v}");
    let items = v["result"]["items"].as_array().unwrap();
    let org1 = items
        .iter()
        .find(|i| i["orgs"] == serde_json::json!(["1"]))
        .expect("override item for org 1");
    assert_eq!(org1["rules"][0]["rule"], "30d");

    run_ok(f.lethe().args([
        "retention",
        "unset",
        "--class",
        "events",
        "--org",
        "2",
        "--reason",
        "contract ended",
    ]));
    let v = purge(&f, &[]);
    assert_eq!(v["result"]["deleted"], 20, "org 2 back to 90d");
}

async fn crash_mid_purge_resumes_without_redoing_or_skipping_rows(pg: bool) {
    // Two rules: row batches on both databases.
    crash_and_resume(pg, DATA_MAP, 171, 60).await;
    // One age rule: time windows on PostgreSQL (row batches on SQLite).
    let map = DATA_MAP.replace(
        "retention = [\"90d\", \"org_closed+1y\"]",
        "retention = \"90d\"",
    );
    crash_and_resume(pg, &map, 151, 400).await;
}

/// Injects: SIGKILL of the `lethe serve` running the purge once 40 rows are
/// gone. Must hold: another `serve` rescues the run, which ends with exactly
/// `expected` rows deleted, each counted once, under its org.
async fn crash_and_resume(pg: bool, map: &str, expected: i64, pause_ms: u64) {
    let runner =
        "lease = \"1s\"\nretry_base = \"100ms\"\nretry_max = \"200ms\"\npoll_interval = \"100ms\"";
    let Some(f) = fixture(pg, runner, map).await else {
        return;
    };
    // Disabled: serve must not enqueue a scheduled purge of its own; it only rescues ours.
    f.c.job(
        "purge",
        &format!("kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\nenabled = false\n[params]\nbatch_size = 5\npause_ms = {pause_ms}\n"),
    );
    // A `serve` takes the queued run; it is SIGKILLed after a few batches committed.
    let mut a = crate::common::spawn_serve(f.lethe(), &f.c.path().join("serve-a.log"), &[]);
    run_ok(f.lethe().args(["run", "purge", "--detach"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.count("1 = 1").await > 251 - 40 {
        assert!(
            Instant::now() < deadline,
            "the purge never started deleting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crate::common::signal(&a, libc::SIGKILL);
    a.wait().unwrap();
    let left = f.count("1 = 1").await;
    assert!(left > 251 - expected, "killed mid-way: {left} rows left");

    // Another serve rescues the run (lease lapsed) and finishes the same plan.
    let mut serve = crate::common::spawn_serve(f.lethe(), &f.c.path().join("serve-b.log"), &[]);
    let run = crate::common::wait_run_end(|| f.lethe(), "purge", 40);
    crate::common::signal(&serve, libc::SIGTERM);
    crate::common::wait_exit(&mut serve, 30);

    assert_eq!(run["attempts"], 2);
    assert_eq!(run["result"]["resumed"], true);
    assert_eq!(
        run["result"]["deleted"], expected,
        "evidence counts every row once across the crash: {run}"
    );
    let by_org = run["result"]["items"][0]["by_org"].as_object().unwrap();
    assert_eq!(
        by_org.values().map(|n| n.as_i64().unwrap()).sum::<i64>(),
        expected,
        "and places each under its org: {run}"
    );
    assert_eq!(
        f.count("1 = 1").await,
        251 - expected,
        "exactly the planned rows are gone"
    );
    assert_eq!(f.count(&f.older(90)).await, 0);
}

async fn bad_data_maps_exit_2_naming_the_entry(pg: bool) {
    let Some(f) = fixture(pg, "", DATA_MAP).await else {
        return;
    };
    let cases = [
        (
            DATA_MAP.replace("table = \"events\"", "table = \"evnets\""),
            "`evnets` does not exist",
        ),
        (
            DATA_MAP.replace("timestamp = \"created_at\"", "timestamp = \"created\""),
            "timestamp column `created` does not exist",
        ),
        (
            DATA_MAP.replace("subject = \"user_id\"", "subject = \"uid\""),
            "subject column `uid`",
        ),
        (DATA_MAP.replace("\"90d\"", "\"90 days\""), "unknown unit"),
        (
            DATA_MAP.replace("timestamp = \"created_at\"\n", ""),
            "needs a `timestamp` column",
        ),
        (
            DATA_MAP.replace("closed_at = \"closed_at\" ", ""),
            "needs [app.orgs] with `closed_at`",
        ),
    ];
    let config = f.c.config();
    let original = std::fs::read_to_string(&config).unwrap();
    for (map, hint) in cases {
        std::fs::write(&config, original.replace(DATA_MAP, &map)).unwrap();
        for args in [vec!["check"], vec!["run", "purge"]] {
            let out = f.lethe().args(&args).output().unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(2), "{args:?} with {hint}: {all}");
            assert!(all.contains(hint), "{args:?}: expected `{hint}` in {all}");
            assert!(
                all.contains("lethe.toml:"),
                "{args:?}: the entry's file and line are named: {all}"
            );
        }
    }
    std::fs::write(&config, &original).unwrap();
    let h = stdout_json(&run_ok(f.lethe().args(["jobs", "history", "--json"])));
    assert_eq!(
        h["runs"].as_array().unwrap().len(),
        0,
        "no run was recorded for bad config"
    );
    assert_eq!(f.count("1 = 1").await, 251, "nothing was deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_when_the_timestamp_column_has_no_index() {
    let Some(f) = fixture(true, "", DATA_MAP).await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&f.app_url).await.unwrap();
    sqlx::query("DROP INDEX events_created_at")
        .execute(&pool)
        .await
        .unwrap();
    let v = stdout_json(&f.lethe().args(["check", "--json"]).output().unwrap());
    let warn = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "data map")
        .unwrap()
        .clone();
    assert_eq!(warn["status"], "warn");
    assert!(warn["detail"]
        .as_str()
        .unwrap()
        .contains("CREATE INDEX ON \"events\" (\"created_at\")"));
}
