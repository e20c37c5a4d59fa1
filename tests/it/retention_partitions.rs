//! retention.purge on a table range-partitioned by its timestamp
//! (PostgreSQL): partitions wholly before the cutoff are detached and dropped
//! whole, with exact per-org evidence; the partition straddling the cutoff
//! and the default partition take the row path; a hold keeps its rows'
//! partitions; a grace period keeps them detached until a later run; a crash
//! between detach and drop is finished by the retry.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::common::{app_exec, app_i64, app_strings, run_ok, stdout_json, ConfigDir};

const MAP: &str = r#"
[app]
subjects = { table = "users", id = "id", email = "email" }

[[data_map]]
table = "events"
class = "events"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
retention = "90d"
"#;

/// Monthly partitions from seven months back to next month (each bound kept
/// in `bounds`), one row per org 1–3, user 1–5 and age in days.
const APP: &str = r#"
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE);
INSERT INTO users SELECT g, 'user' || g || '@x.example' FROM generate_series(1, 5) g;
CREATE TABLE events (id bigserial, org_id int, user_id int, created_at timestamptz NOT NULL, body text)
    PARTITION BY RANGE (created_at);
CREATE TABLE bounds (name text, lower timestamptz, upper timestamptz);
DO $$ BEGIN FOR m IN -1..7 LOOP
  EXECUTE format('CREATE TABLE events_m%s PARTITION OF events FOR VALUES FROM (%L) TO (%L)', m + 1,
     date_trunc('month', now()) - make_interval(months => m),
     date_trunc('month', now()) - make_interval(months => m - 1));
  INSERT INTO bounds VALUES ('events_m' || (m + 1), date_trunc('month', now()) - make_interval(months => m),
                             date_trunc('month', now()) - make_interval(months => m - 1));
END LOOP; END $$;
CREATE INDEX ON events (created_at);
INSERT INTO events (org_id, user_id, created_at, body)
    SELECT o, u, now() - make_interval(days => d), 'secret'
    FROM generate_series(1, 3) o, generate_series(1, 5) u, unnest(ARRAY[1, 50, 100, 130, 160, 190]) d;
-- A row per org early in every partition up to now: none of them is empty.
INSERT INTO events (org_id, user_id, created_at, body)
    SELECT o, 1, b.lower + interval '1 hour', 'early' FROM bounds b, generate_series(1, 3) o
    WHERE b.lower + interval '1 hour' < now();
"#;

/// A crashed run's lease lapses within a second: the retry comes quickly.
const RUNNER: &str =
    "lease = \"1s\"\nretry_base = \"100ms\"\nretry_max = \"300ms\"\npoll_interval = \"100ms\"";

const OLD: &str = "created_at < now() - interval '90 days'";

struct App {
    c: ConfigDir,
    url: String,
}

async fn app(extra_sql: &str, params: &str) -> Option<App> {
    let url = crate::common::fresh_pg_db().await?;
    app_exec(&url, &format!("{APP}{extra_sql}")).await;
    let c = ConfigDir::full(Some(&url), Some(&url), RUNNER, "", MAP);
    c.job(
        "purge",
        &format!("kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\nmax_attempts = 3\n[params]\nbatch_size = 7\n{params}\n"),
    );
    run_ok(c.lethe().arg("migrate"));
    Some(App { c, url })
}

impl App {
    async fn count(&self, filter: &str) -> i64 {
        app_i64(
            &self.url,
            &format!("SELECT count(*) FROM events WHERE {filter}"),
        )
        .await
    }

    /// Partitions whose upper bound is at or before the cutoff, oldest first.
    async fn wholly_expired(&self) -> Vec<String> {
        app_strings(
            &self.url,
            "SELECT name FROM bounds WHERE upper <= now() - interval '90 days' ORDER BY upper",
        )
        .await
    }

    async fn exists(&self, table: &str) -> bool {
        app_i64(
            &self.url,
            &format!("SELECT count(*) FROM pg_class WHERE relname = '{table}'"),
        )
        .await
            == 1
    }

    async fn attached(&self, table: &str) -> bool {
        app_i64(&self.url, &format!("SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relname = '{table}'")).await == 1
    }

    /// Rows per org in one partition.
    async fn by_org(&self, table: &str) -> BTreeMap<String, i64> {
        app_strings(
            &self.url,
            &format!("SELECT org_id || ':' || count(*) FROM ONLY \"{table}\" GROUP BY org_id"),
        )
        .await
        .into_iter()
        .map(|s| {
            let (o, n) = s.split_once(':').unwrap();
            (o.to_string(), n.parse().unwrap())
        })
        .collect()
    }

    fn purge(&self, args: &[&str]) -> Value {
        let v = stdout_json(&run_ok(
            self.c.lethe().args(["run", "purge", "--json"]).args(args),
        ));
        assert_eq!(v["status"], "succeeded", "{v}");
        v
    }

    /// The audit chain's events of one action, their details.
    fn events(&self, action: &str) -> Vec<Value> {
        let out =
            String::from_utf8(run_ok(self.c.lethe().args(["audit", "export"])).stdout).unwrap();
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["action"] == action)
            .map(|e| e["details"].clone())
            .collect()
    }
}

fn names(v: &Value) -> Vec<String> {
    v["result"]["items"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["partition"].as_str().unwrap().to_string())
        .collect()
}

fn outcomes(v: &Value) -> Vec<String> {
    v["result"]["items"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"].as_str().unwrap().to_string())
        .collect()
}

fn counts(v: &Value) -> BTreeMap<String, i64> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_i64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn wholly_expired_partitions_are_dropped_and_the_straddler_is_row_deleted() {
    let Some(app) = app("", "").await else {
        return;
    };
    let expired = app.wholly_expired().await;
    assert!(expired.len() >= 3, "{expired:?}");
    let mut before = BTreeMap::new();
    for p in &expired {
        before.insert(p.clone(), app.by_org(p).await);
    }
    let (old, young) = (
        app.count(OLD).await,
        app.count(&format!("NOT ({OLD})")).await,
    );

    let dry = app.purge(&["--dry-run"]);
    let mut planned = names(&dry);
    planned.sort();
    let mut want = expired.clone();
    want.sort();
    assert_eq!(planned, want, "the dry run names the partitions: {dry}");
    assert!(
        outcomes(&dry).iter().all(|o| o == "would be dropped"),
        "{dry}"
    );
    assert_eq!(app.count(OLD).await, old, "a dry run changes nothing");
    assert!(app.attached(&expired[0]).await);

    let v = app.purge(&[]);
    assert_eq!(v["result"]["deleted"], old, "{v}");
    assert_eq!(
        (app.count(OLD).await, app.count("true").await),
        (0, young),
        "only expired rows went"
    );
    assert!(outcomes(&v).iter().all(|o| o == "dropped"), "{v}");
    for p in &expired {
        assert!(!app.exists(p).await, "{p} was dropped");
    }
    // Evidence per partition, counted once it could not change any more.
    let dropped = app.events("retention.partition_dropped");
    assert_eq!(dropped.len(), expired.len(), "{dropped:?}");
    for e in &dropped {
        let p = e["partition"].as_str().unwrap();
        assert_eq!(counts(&e["by_org"]), before[p], "{e}");
    }
    // The item's per-org evidence covers the dropped partitions and the row path alike.
    let by_org = counts(&v["result"]["items"][0]["by_org"]);
    assert_eq!(by_org.values().sum::<i64>(), old, "{v}");
    assert!(!by_org.contains_key("(rows changed during the run)"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn held_rows_keep_their_partition_and_the_rest_goes_row_by_row() {
    let Some(app) = app("", "").await else {
        return;
    };
    run_ok(
        app.c
            .lethe()
            .args(["hold", "add", "--org", "2", "--reason", "litigation"]),
    );
    let expired = app.wholly_expired().await;
    let old_of_2 = app.count(&format!("{OLD} AND org_id = 2")).await;
    let mut held = Vec::new();
    for p in &expired {
        if !app.by_org(p).await.is_empty() {
            held.push(p.clone());
        }
    }
    assert!(held.len() >= 3, "{held:?}");
    let v = app.purge(&[]);
    assert!(
        names(&v).iter().all(|n| !held.contains(n)),
        "every partition with rows holds org 2's: {v}"
    );
    let notes = v["result"]["items"][0]["partition_notes"].to_string();
    assert!(notes.contains("legal hold"), "{notes}");
    for p in &held {
        assert!(app.attached(p).await, "{p} stays");
    }
    assert_eq!(
        app.count(OLD).await,
        old_of_2,
        "only the held org's expired rows are left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grace_period_keeps_partitions_detached_until_a_later_run_drops_them() {
    let Some(app) = app("", "detach_grace = \"2s\"").await else {
        return;
    };
    let expired = app.wholly_expired().await;
    let old = app.count(OLD).await;
    let v = app.purge(&[]);
    assert_eq!(
        (v["result"]["deleted"].as_i64(), app.count(OLD).await),
        (Some(old), 0),
        "{v}"
    );
    for p in &expired {
        assert!(
            app.exists(p).await && !app.attached(p).await,
            "{p} is kept detached"
        );
        let note = app_strings(
            &app.url,
            &format!("SELECT obj_description('\"{p}\"'::regclass, 'pg_class')"),
        )
        .await;
        assert!(
            note[0].starts_with("lethe: detached from events by retention.purge run"),
            "{note:?}"
        );
    }
    assert_eq!(
        app.events("retention.partition_detached").len(),
        expired.len()
    );
    assert!(app.events("retention.partition_dropped").is_empty());

    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let later = app.purge(&[]);
    assert_eq!(
        later["result"]["partitions_dropped_after_grace"]
            .as_array()
            .unwrap()
            .len(),
        expired.len(),
        "{later}"
    );
    for p in &expired {
        assert!(!app.exists(p).await, "{p} dropped after its grace period");
    }
    assert_eq!(
        app.events("retention.partition_dropped").len(),
        expired.len()
    );
}

/// A default partition: the detach is a plain one (PostgreSQL refuses a
/// concurrent detach then); the default partition's expired rows go row by row.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_default_partition_the_detach_is_plain_and_its_rows_go_row_by_row() {
    // Bounds at ±infinity read as unbounded (never dropped) or as the old end they are.
    let extra = "CREATE TABLE events_default PARTITION OF events DEFAULT;
        CREATE TABLE events_far PARTITION OF events
            FOR VALUES FROM (date_trunc('month', now()) + interval '2 months') TO ('infinity');
        CREATE TABLE events_ancient PARTITION OF events
            FOR VALUES FROM ('-infinity') TO (date_trunc('month', now()) - interval '8 months');
        INSERT INTO events (org_id, user_id, created_at, body)
        SELECT o, 1, now() - interval '3 years', 'ancient' FROM generate_series(1, 3) o;";
    let Some(app) = app(extra, "").await else {
        return;
    };
    let expired = app.wholly_expired().await;
    let (old, young) = (
        app.count(OLD).await,
        app.count(&format!("NOT ({OLD})")).await,
    );
    let v = app.purge(&[]);
    assert_eq!(v["result"]["deleted"], old, "{v}");
    assert_eq!((app.count(OLD).await, app.count("true").await), (0, young));
    assert!(app.exists("events_default").await && app.attached("events_default").await);
    assert!(
        app.attached("events_far").await,
        "an unbounded partition stays"
    );
    assert!(
        !app.exists("events_ancient").await,
        "the -infinity partition lies before the cutoff"
    );
    for p in &expired {
        assert!(!app.exists(p).await, "{p} was dropped");
    }
}

/// Partitioned on another column: no partition is removed whole, and the
/// plan says why; the rows still go, exactly.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_partitioned_on_another_column_goes_row_by_row() {
    let Some(url) = crate::common::fresh_pg_db().await else {
        return;
    };
    let sql = APP
        .replace(
            "PARTITION BY RANGE (created_at);",
            "PARTITION BY LIST (org_id);",
        )
        .replace(
            "DO $$ BEGIN FOR m IN -1..7 LOOP",
            "CREATE TABLE events_o1 PARTITION OF events FOR VALUES IN (1);
             CREATE TABLE events_rest PARTITION OF events DEFAULT;
             DO $$ BEGIN FOR m IN 1..0 LOOP",
        );
    app_exec(&url, &sql).await;
    let c = ConfigDir::full(Some(&url), Some(&url), "", "", MAP);
    c.job(
        "purge",
        "kind = \"retention.purge\"\nschedule = \"0 15 2 * * *\"\n[params]\nbatch_size = 7\n",
    );
    run_ok(c.lethe().arg("migrate"));
    let app = App { c, url };
    let (old, young) = (
        app.count(OLD).await,
        app.count(&format!("NOT ({OLD})")).await,
    );
    let v = app.purge(&[]);
    assert!(names(&v).is_empty(), "{v}");
    let notes = v["result"]["items"][0]["partition_notes"].to_string();
    assert!(notes.contains("partitioned by list on org_id"), "{notes}");
    assert_eq!(
        (v["result"]["deleted"].as_i64(), app.count("true").await),
        (Some(old), young)
    );
}

/// A crash after the plan detached and counted the partitions, before the
/// first was dropped: the retry drops them and records each once, with the
/// plan's counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_detach_and_drop_is_finished_by_the_retry() {
    let Some(app) = app("", "").await else {
        return;
    };
    // The oldest partition with rows: the first that is detached and counted
    // (an empty one before it is dropped first).
    let mut first = String::new();
    for p in app.wholly_expired().await {
        if !app.by_org(&p).await.is_empty() {
            first = p;
            break;
        }
    }
    let before = app.by_org(&first).await;
    let old = app.count(OLD).await;
    run_ok(app.c.lethe().args(["run", "purge", "--detach"]));
    let mut crashed = crate::common::spawn_serve(
        {
            let mut cmd = app.c.lethe();
            cmd.env("LETHE_TEST_CRASH_AT", "partition_planned");
            cmd
        },
        &app.c.path().join("serve-a.log"),
        &[],
    );
    crate::common::wait_exit(&mut crashed, 30);
    let log = std::fs::read_to_string(app.c.path().join("serve-a.log")).unwrap_or_default();
    assert!(
        app.exists(&first).await && !app.attached(&first).await,
        "{first} detached, not dropped: {log}"
    );

    let mut b = crate::common::spawn_serve(app.c.lethe(), &app.c.path().join("serve-b.log"), &[]);
    let run = crate::common::wait_run_end(|| app.c.lethe(), "purge", 60);
    crate::common::signal(&b, libc::SIGTERM);
    crate::common::wait_exit(&mut b, 30);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert!(!app.exists(&first).await);
    assert_eq!(app.count(OLD).await, 0);
    let events: Vec<Value> = app
        .events("retention.partition_dropped")
        .into_iter()
        .filter(|e| e["partition"] == first.as_str())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(counts(&events[0]["by_org"]), before);
    assert_eq!(run["result"]["deleted"], old, "{run}");
}

/// Starts a purge that waits `ms` between its plan (which detached the
/// partitions) and its first drop.
fn paused_purge(app: &App, ms: u32) -> std::process::Child {
    app.c
        .lethe()
        .args(["run", "purge", "--json"])
        .env("LETHE_TEST_PAUSE_AT", format!("before_drop:{ms}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A hold placed after the plan, before the detach: the partition is
/// attached back and kept; the held org's rows stay, the others go row by row.
#[tokio::test(flavor = "multi_thread")]
async fn a_hold_placed_after_the_plan_attaches_the_partition_back() {
    let Some(app) = app("", "").await else {
        return;
    };
    let expired = app.wholly_expired().await;
    let old_of_2 = app.count(&format!("{OLD} AND org_id = 2")).await;
    let child = paused_purge(&app, 3000);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    run_ok(
        app.c
            .lethe()
            .args(["hold", "add", "--org", "2", "--reason", "late subpoena"]),
    );
    let v = stdout_json(&child.wait_with_output().unwrap());
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        app.count(OLD).await,
        old_of_2,
        "only the held org's expired rows stay: {v}"
    );
    let kept: Vec<String> = outcomes(&v)
        .into_iter()
        .filter(|o| o.starts_with("kept"))
        .collect();
    assert!(!kept.is_empty(), "{v}");
    for p in &expired {
        if !app.by_org(p).await.is_empty() {
            assert!(app.attached(p).await, "{p} attached back");
        }
    }
    assert!(
        app.events("retention.partition_dropped")
            .iter()
            .all(|e| counts(&e["by_org"]).is_empty()),
        "only empty partitions were dropped"
    );
}

/// The application holds a lock on the table: a plain detach (there is a
/// default partition) is not granted within max_transaction_ms, so every
/// partition stays and the rows go row by row.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_the_application_keeps_locked_is_purged_row_by_row() {
    let extra = "CREATE TABLE events_default PARTITION OF events DEFAULT;";
    let Some(app) = app(extra, "max_transaction_ms = 300").await else {
        return;
    };
    let expired = app.wholly_expired().await;
    let (old, young) = (
        app.count(OLD).await,
        app.count(&format!("NOT ({OLD})")).await,
    );
    let pool = sqlx::PgPool::connect(&app.url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT id FROM events WHERE created_at > now() - interval '10 days' LIMIT 1 FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let v = app.purge(&[]);
    tx.rollback().await.unwrap();
    assert!(names(&v).is_empty(), "{v}");
    let notes = v["result"]["items"][0]["partition_notes"].to_string();
    assert!(notes.contains("held a lock"), "{notes}");
    assert_eq!(
        (
            v["result"]["deleted"].as_i64(),
            app.count(OLD).await,
            app.count("true").await
        ),
        (Some(old), 0, young)
    );
    for p in &expired {
        assert!(app.attached(p).await, "{p} stays attached");
    }
}
