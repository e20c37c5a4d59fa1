//! retention.purge where a row's physical position is not unique: PostgreSQL
//! tables with declarative partitions and with table inheritance repeat the
//! same ctid in every partition and child. Every slicing path (time windows,
//! a window over the transaction limit redone in row batches, row batches for
//! a table with two rules) must delete exactly the expired rows. And a purge
//! never deletes more than its plan: a statement that would is rolled back and
//! the run fails (both databases).

use std::time::{Duration, Instant};

use crate::common::{app_exec, app_i64, run_ok, stdout_json, ConfigDir};
use serde_json::Value;

const TWO_RULES: &str = r#"
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

/// Orgs 1–3 open, 4 closed two years ago, 5 closed 20 days ago; users 1–10.
const PG_APP: &str = r#"
CREATE TABLE orgs (id int PRIMARY KEY, name text NOT NULL, closed_at timestamptz);
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE);
INSERT INTO orgs VALUES (1, 'a', NULL), (2, 'b', NULL), (3, 'c', NULL),
    (4, 'gone', now() - interval '2 years'), (5, 'leaving', now() - interval '20 days');
INSERT INTO users SELECT g, 'user' || g || '@x.example' FROM generate_series(1, 10) g;
"#;

/// Per org and user one event at each age 1, 50, 100, 200, 400 days, one old row without org.
const PG_ROWS: &str = r#"
INSERT INTO events (org_id, user_id, created_at, body)
    SELECT o, u, now() - make_interval(days => d), 'secret'
    FROM generate_series(1, 5) o, generate_series(1, 10) u, unnest(ARRAY[1, 50, 100, 200, 400]) d;
INSERT INTO events (org_id, user_id, created_at, body) VALUES (NULL, NULL, now() - interval '400 days', 'orphan');
"#;

/// Monthly range partitions from 15 months ago to next month, and a default one.
const PARTITIONED: &str = r#"
CREATE TABLE events (id bigserial, org_id int, user_id int, created_at timestamptz NOT NULL, body text)
    PARTITION BY RANGE (created_at);
DO $$ BEGIN FOR m IN -1..15 LOOP
  EXECUTE format('CREATE TABLE events_m%s PARTITION OF events FOR VALUES FROM (%L) TO (%L)', m + 1,
     date_trunc('month', now()) - make_interval(months => m),
     date_trunc('month', now()) - make_interval(months => m - 1));
END LOOP; END $$;
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_created_at ON events (created_at);
"#;

/// A parent holding the youngest rows, a child with the 50-day rows, a child with the expired ones.
const INHERITED: &str = r#"
CREATE TABLE events (id bigserial PRIMARY KEY, org_id int, user_id int, created_at timestamptz NOT NULL, body text);
CREATE TABLE events_recent () INHERITS (events);
CREATE TABLE events_old () INHERITS (events);
CREATE INDEX ON events (created_at);
CREATE INDEX ON events_recent (created_at);
CREATE INDEX ON events_old (created_at);
"#;

const INHERITED_ROWS: &str = r#"
INSERT INTO events (org_id, user_id, created_at, body)
    SELECT o, u, now() - interval '1 day', 'secret' FROM generate_series(1, 5) o, generate_series(1, 10) u;
INSERT INTO events_recent (org_id, user_id, created_at, body)
    SELECT o, u, now() - interval '50 days', 'secret' FROM generate_series(1, 5) o, generate_series(1, 10) u;
INSERT INTO events_old (org_id, user_id, created_at, body)
    SELECT o, u, now() - make_interval(days => d), 'secret'
    FROM generate_series(1, 5) o, generate_series(1, 10) u, unnest(ARRAY[100, 200, 400]) d;
INSERT INTO events_old (org_id, user_id, created_at, body) VALUES (NULL, NULL, now() - interval '400 days', 'orphan');
"#;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Partitioned,
    Inherited,
}

struct App {
    c: ConfigDir,
    url: String,
}

impl App {
    async fn count(&self, filter: &str) -> i64 {
        app_i64(
            &self.url,
            &format!("SELECT count(*) FROM events WHERE {filter}"),
        )
        .await
    }

    fn purge(&self) -> Value {
        let v = stdout_json(&run_ok(self.c.lethe().args(["run", "purge", "--json"])));
        assert_eq!(v["status"], "succeeded", "{v}");
        v
    }
}

fn job(params: &str) -> String {
    format!("kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\n[params]\n{params}\n")
}

async fn pg_app(kind: Kind, map: &str, params: &str) -> Option<App> {
    let url = crate::common::fresh_pg_db().await?;
    let (table, rows) = match kind {
        Kind::Partitioned => (PARTITIONED, PG_ROWS),
        Kind::Inherited => (INHERITED, INHERITED_ROWS),
    };
    app_exec(&url, &format!("{PG_APP}{table}{rows}")).await;
    let c = ConfigDir::full(Some(&url), Some(&url), "", "", map);
    c.job("purge", &job(params));
    run_ok(c.lethe().arg("migrate"));
    Some(App { c, url })
}

fn one_rule() -> String {
    TWO_RULES.replace(
        "retention = [\"90d\", \"org_closed+1y\"]",
        "retention = \"90d\"",
    )
}

const YOUNG: &str = "created_at >= now() - interval '90 days'";

/// Evidence places every deleted row under its org: none "changed during the run".
fn assert_all_placed(v: &Value, deleted: i64) {
    assert_eq!(v["result"]["deleted"], deleted, "{v}");
    let by_org = v["result"]["items"][0]["by_org"].as_object().unwrap();
    assert!(!by_org.contains_key("(rows changed during the run)"), "{v}");
}

/// One age rule: PostgreSQL deletes in windows of the timestamp.
async fn windows_delete_only_expired_rows(kind: Kind) {
    let Some(app) = pg_app(kind, &one_rule(), "batch_size = 7").await else {
        return;
    };
    let v = app.purge();
    assert_all_placed(&v, 151);
    assert_eq!(app.count(YOUNG).await, 100, "{kind:?}: young rows all kept");
    assert_eq!(app.count("1 = 1").await, 100);
}

/// Two rules: row batches. Before the fix a batch's ctids matched rows at the
/// same position in every partition or child, expired or not.
async fn row_batches_delete_only_expired_rows(kind: Kind) {
    let Some(app) = pg_app(kind, TWO_RULES, "batch_size = 7").await else {
        return;
    };
    let v = app.purge();
    assert_all_placed(&v, 171);
    // Young rows of every org but 4 (closed two years ago) stay.
    assert_eq!(
        app.count(&format!("{YOUNG} AND org_id <> 4")).await,
        80,
        "{kind:?}: young rows all kept"
    );
    assert_eq!(app.count("1 = 1").await, 80);
}

/// A window blocked by a row lock hits `max_transaction_ms` and is redone in row batches.
async fn redone_windows_delete_only_expired_rows(kind: Kind) {
    let params = "batch_size = 1000\nmax_transaction_ms = 200";
    let Some(app) = pg_app(kind, &one_rule(), params).await else {
        return;
    };
    // A row no partition takes but the default one (or the parent itself):
    // it is deleted row by row, never with a partition removed whole.
    app_exec(&app.url, "INSERT INTO events (org_id, user_id, created_at, body) VALUES (1, 1, now() - interval '3 years', 'x')").await;
    let pool = sqlx::PgPool::connect(&app.url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT id FROM events WHERE created_at < now() - interval '2 years' LIMIT 1 FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        tx.rollback().await.unwrap();
    });
    let v = app.purge();
    release.await.unwrap();
    assert!(
        v["result"]["windows_redone"].as_u64().unwrap() >= 1,
        "the blocked window hit the limit: {v}"
    );
    assert_all_placed(&v, 152);
    assert_eq!(app.count(YOUNG).await, 100, "{kind:?}: young rows all kept");
    assert_eq!(app.count("1 = 1").await, 100);
}

macro_rules! kinds {
    ($($case:ident),* $(,)?) => {
        mod partitioned { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(super::Kind::Partitioned).await })* }
        mod inherited { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(super::Kind::Inherited).await })* }
    };
}

kinds!(
    windows_delete_only_expired_rows,
    row_batches_delete_only_expired_rows,
    redone_windows_delete_only_expired_rows,
    check_accepts_the_table_and_names_unindexed_children,
    a_partition_detached_mid_run_keeps_its_rows,
);

/// `check` reads partitioned and inherited tables, and names the partitions or
/// children whose timestamp has no index (a parent's index does not cover them).
async fn check_accepts_the_table_and_names_unindexed_children(kind: Kind) {
    let Some(app) = pg_app(kind, TWO_RULES, "").await else {
        return;
    };
    let v = stdout_json(&run_ok(app.c.lethe().args(["check", "--json"])));
    let checks = v["checks"].as_array().unwrap();
    assert!(
        checks.iter().all(|c| c["status"] != "error"),
        "{kind:?}: {v}"
    );
    assert!(
        checks.iter().any(|c| c["name"] == "timestamp form"
            && c["detail"]
                .as_str()
                .unwrap()
                .contains("`events`.`created_at`: native")),
        "{v}"
    );
    let child = match kind {
        Kind::Partitioned => {
            app_exec(&app.url, "CREATE TABLE events_extra (LIKE events); ALTER TABLE events ATTACH PARTITION events_extra FOR VALUES FROM ('1900-01-01') TO ('1901-01-01');").await;
            // Attaching adds the partitioned index; a plain child of an inherited table has none.
            "events_extra"
        }
        Kind::Inherited => {
            app_exec(&app.url, "DROP INDEX events_old_created_at_idx").await;
            "events_old"
        }
    };
    let v = stdout_json(&run_ok(app.c.lethe().args(["check", "--json"])));
    let warned = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "warn" && c["detail"].as_str().unwrap().contains(child));
    match kind {
        Kind::Partitioned => assert!(!warned, "an attached partition gets the index: {v}"),
        Kind::Inherited => assert!(warned, "the unindexed child is named: {v}"),
    }
}

/// Injects: the 200- and 400-day rows' partition (or child) leaves the table
/// while the purge runs. Must hold: no row outside the plan is deleted, the
/// detached rows are all still there, the evidence total is what went.
async fn a_partition_detached_mid_run_keeps_its_rows(kind: Kind) {
    let Some(app) = pg_app(kind, TWO_RULES, "batch_size = 5\npause_ms = 100").await else {
        return;
    };
    // The detached table: the partition holding the oldest org-1 row, or the old child.
    let part = match kind {
        Kind::Partitioned => {
            let oid = app_i64(
                &app.url,
                "SELECT tableoid::int8 FROM events WHERE created_at < now() - interval '300 days' LIMIT 1",
            )
            .await;
            sqlx::query_scalar::<_, String>(
                "SELECT relname::text FROM pg_class WHERE oid = $1::oid",
            )
            .bind(oid)
            .fetch_one(&sqlx::PgPool::connect(&app.url).await.unwrap())
            .await
            .unwrap()
        }
        Kind::Inherited => "events_old".to_string(),
    };
    let in_part = app_i64(&app.url, &format!("SELECT count(*) FROM \"{part}\"")).await;
    let child = app
        .c
        .lethe()
        .args(["run", "purge", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.count("1 = 1").await > 251 - 10 {
        assert!(
            Instant::now() < deadline,
            "the purge never started deleting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let detach = match kind {
        Kind::Partitioned => format!("ALTER TABLE events DETACH PARTITION \"{part}\""),
        Kind::Inherited => format!("ALTER TABLE \"{part}\" NO INHERIT events"),
    };
    app_exec(&app.url, &detach).await;
    let left_in_part = app_i64(&app.url, &format!("SELECT count(*) FROM \"{part}\"")).await;
    let out = child.wait_with_output().unwrap();
    let v = stdout_json(&out);
    assert!(left_in_part > 0 && left_in_part <= in_part);
    assert_eq!(
        app_i64(&app.url, &format!("SELECT count(*) FROM \"{part}\"")).await,
        left_in_part,
        "nothing is deleted from a table once it left: {v}"
    );
    assert_eq!(
        app.count(&format!("{YOUNG} AND org_id <> 4")).await,
        80,
        "{kind:?}: young rows all kept: {v}"
    );
    assert_eq!(v["status"], "succeeded", "{v}");
    let gone = 251 - app.count("1 = 1").await - left_in_part;
    assert_eq!(
        v["result"]["deleted"], gone,
        "evidence counts what went: {v}"
    );
}

// ---- The plan's budget (both databases) ----

const SQLITE_APP: &str = r#"
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

async fn plain_app(pg: bool, map: &str, params: &str) -> Option<App> {
    let (c, url) = if pg {
        let url = crate::common::fresh_pg_db().await?;
        let table = "CREATE TABLE events (id bigserial PRIMARY KEY, org_id int, user_id int, created_at timestamptz NOT NULL, body text);
                     CREATE INDEX events_created_at ON events (created_at);";
        app_exec(&url, &format!("{PG_APP}{table}{PG_ROWS}")).await;
        (ConfigDir::full(Some(&url), Some(&url), "", "", map), url)
    } else {
        let c = ConfigDir::full(None, None, "", "", map);
        let url = format!("sqlite://{}", c.path().join("app.db").display());
        app_exec(&url, SQLITE_APP).await;
        (c, url)
    };
    c.job("purge", &job(params));
    run_ok(c.lethe().arg("migrate"));
    Some(App { c, url })
}

/// Injects: the application inserts 20 already-expired rows while the purge
/// runs (after the plan counted 171). Must hold: the purge does not delete
/// beyond its plan — the statement that would is rolled back, the run fails
/// (exit 1) naming the table and the counts, and no row outside the plan goes.
async fn rows_beyond_the_plan_stop_the_purge(pg: bool, map: &str, planned: i64, old_age: u32) {
    let Some(app) = plain_app(pg, map, "batch_size = 7\npause_ms = 150").await else {
        return;
    };
    let child = app
        .c
        .lethe()
        .args(["run", "purge", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.count("1 = 1").await == 251 {
        assert!(
            Instant::now() < deadline,
            "the purge never started deleting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ts = if pg {
        format!("now() - interval '{old_age} days'")
    } else {
        format!("datetime('now', '-{old_age} days')")
    };
    app_exec(
        &app.url,
        &format!(
            "INSERT INTO events (org_id, user_id, created_at, body)
             SELECT 1, 1, {ts}, 'late' FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) a,
                  (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5) b"
        ),
    )
    .await;
    let out = child.wait_with_output().unwrap();
    let v = stdout_json(&out);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_ne!(v["status"], "succeeded", "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("`events`") && error.contains(&format!("plan {planned}")),
        "the error names the table and the counts: {v}"
    );
    let deleted = 251 + 20 - app.count("1 = 1").await;
    assert!(
        deleted <= planned,
        "never more than the plan: {deleted} rows went, plan {planned}"
    );
    // What went before the stop is in the audit chain.
    let audit = String::from_utf8(run_ok(app.c.lethe().args(["audit", "export"])).stdout).unwrap();
    let stopped: Value = audit
        .lines()
        .filter(|l| l.contains("retention.purge_stopped"))
        .map(|l| serde_json::from_str(l).unwrap())
        .next()
        .expect("a retention.purge_stopped event");
    assert_eq!(stopped["details"]["deleted"], deleted, "{stopped}");
    assert_eq!(stopped["details"]["planned"], planned, "{stopped}");
    assert_eq!(
        app.count(&format!(
            "body = 'secret' AND org_id <> 4 AND NOT ({})",
            older(pg, 90)
        ))
        .await,
        80,
        "young rows all kept"
    );
}

fn older(pg: bool, days: u32) -> String {
    if pg {
        format!("created_at < now() - interval '{days} days'")
    } else {
        format!("created_at < datetime('now', '-{days} days')")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_row_batches_beyond_the_plan_stop_the_purge() {
    rows_beyond_the_plan_stop_the_purge(false, TWO_RULES, 171, 400).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_row_batches_beyond_the_plan_stop_the_purge() {
    rows_beyond_the_plan_stop_the_purge(true, TWO_RULES, 171, 400).await;
}

/// Windows go oldest first: rows inserted just past the cutoff land in the last window.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_windows_beyond_the_plan_stop_the_purge() {
    rows_beyond_the_plan_stop_the_purge(true, &one_rule(), 151, 91).await;
}

/// Injects: a legal hold on org 2 added while the purge deletes org 2's rows.
/// Must hold: from the next statement on, no held row is deleted, and the run
/// still succeeds (fewer rows than planned is not an error).
async fn a_hold_added_mid_run_stops_deletes_at_once(pg: bool, map: &str) {
    let Some(app) = plain_app(pg, map, "batch_size = 3\npause_ms = 150").await else {
        return;
    };
    let child = app
        .c
        .lethe()
        .args(["run", "purge", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.count("1 = 1").await == 251 {
        assert!(
            Instant::now() < deadline,
            "the purge never started deleting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run_ok(
        app.c
            .lethe()
            .args(["hold", "add", "--org", "2", "--reason", "subpoena"]),
    );
    // One statement may have been under way when the hold was written.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let org2 = app.count("org_id = 2").await;
    let out = child.wait_with_output().unwrap();
    let v = stdout_json(&out);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        app.count("org_id = 2").await,
        org2,
        "no row of the held org went after the hold: {v}"
    );
    assert!(org2 > 20, "the hold came early enough to matter: {org2}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_a_hold_added_mid_run_stops_deletes_at_once() {
    a_hold_added_mid_run_stops_deletes_at_once(false, TWO_RULES).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_hold_added_mid_run_stops_deletes_at_once() {
    a_hold_added_mid_run_stops_deletes_at_once(true, TWO_RULES).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_windows_a_hold_added_mid_run_stops_deletes_at_once() {
    a_hold_added_mid_run_stops_deletes_at_once(true, &one_rule()).await;
}
